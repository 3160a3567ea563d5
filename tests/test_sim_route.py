"""The simulated unit's drive: on the real streets of the shipped extract, at road speeds, through its duty cycle."""

from __future__ import annotations

import math
import statistics

import pytest

from emergency.geo import ATTRIBUTION, EMERGENCY_SPEED_FACTOR, StreetMap, geofence_contains, haversine_m
from emergency.protocol import UnitStatus
from emergency.sites import DEMO_SITES
from firmware_sim._route import BASES, CITY_CENTRE, HOSPITALS, Drive, bearing_deg, distance_m, street_map

FASTEST_MPS = 50 / 3.6 * EMERGENCY_SPEED_FACTOR  # the highest limit in the extract, driven on an emergency run


def _segment_distance_m(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance from p to the segment ab, on a local plane (metres)."""
    k = math.cos(math.radians(p[0]))
    ax, ay, bx, by = (a[1] - p[1]) * k, a[0] - p[0], (b[1] - p[1]) * k, b[0] - p[0]
    dx, dy = bx - ax, by - ay
    t = 0.0 if dx == dy == 0 else max(0.0, min(1.0, -(ax * dx + ay * dy) / (dx * dx + dy * dy)))
    return math.hypot(ax + t * dx, ay + t * dy) * math.radians(1.0) * 6_371_008.8


def _street_segments(streets: StreetMap) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    layer = streets.street_layer()
    assert layer["attribution"] == ATTRIBUTION
    return [
        ((line[i], line[i + 1]), (line[i + 2], line[i + 3]))
        for lines in layer["lines"].values()
        for line in lines
        for i in range(0, len(line) - 2, 2)
    ]


def _off_street_m(p: tuple[float, float], segments: list[tuple[tuple[float, float], tuple[float, float]]]) -> float:
    near = [(a, b) for a, b in segments if abs(a[0] - p[0]) < 0.004 or abs(b[0] - p[0]) < 0.004]
    return min(_segment_distance_m(p, a, b) for a, b in near or segments)


def test_route_moves_at_road_speeds_and_cycles_status() -> None:
    """Over two hours the unit never moves faster than the fastest street allows, drives at city speeds, and goes
    through every status of the duty cycle more than once."""
    drive = Drive.start(11)
    statuses: list[UnitStatus] = []
    moving_speeds: list[float] = []
    last = drive.position
    for _ in range(7200):
        status = drive.step(1.0)
        if status is not None:
            statuses.append(status)
        assert distance_m(last, drive.position) <= FASTEST_MPS + 0.01
        assert drive.speed <= FASTEST_MPS + 0.01
        if drive.speed > 1.0:
            moving_speeds.append(drive.speed)
        last = drive.position
    for status in (UnitStatus.EN_ROUTE, UnitStatus.ON_SCENE, UnitStatus.TRANSPORTING, UnitStatus.AT_DESTINATION):
        assert statuses.count(status) >= 2, status
    assert 5.0 <= statistics.median(moving_speeds) <= FASTEST_MPS


def test_positions_stay_on_streets() -> None:
    """Every position of the duty cycle is within 3 m of a drawn street, except the short off-street legs at a
    base or a hospital (within 60 m of one)."""
    segments = _street_segments(street_map())
    sites = BASES + HOSPITALS
    for seed in (1, 2, 3):
        drive = Drive.start(seed)
        for second in range(2400):
            drive.step(1.0)
            if second % 5:
                continue
            near_site = min(haversine_m(drive.position, s) for s in sites) <= 60.0
            assert near_site or _off_street_m(drive.position, segments) <= 3.0, (seed, second, drive.position)


def test_transport_ends_inside_the_chosen_hospitals_geofence() -> None:
    """A transport set to each demo hospital ends at it: the unit is inside its geofence when it reports
    AT_DESTINATION, after a drive no faster than the streets allow."""
    for hospital in DEMO_SITES.hospitals:
        drive = Drive.start(len(hospital.code))
        while drive.status is not UnitStatus.ON_SCENE:
            drive.step(1.0)
        scene = drive.position
        drive.destination = hospital.position
        seconds = 0
        while drive.step(1.0) is not UnitStatus.AT_DESTINATION:
            seconds += 1
            assert seconds < 3600
        assert geofence_contains(hospital, *drive.position)
        if haversine_m(scene, hospital.position) > 100:
            route = street_map().route(scene, hospital.position)
            assert seconds >= route.drive_time_s * 0.9


def test_heading_follows_the_street() -> None:
    """While the unit moves, its reported heading is its course over ground: the bearing of the last second's
    movement, turning with the streets."""
    drive = Drive.start(5)
    headings: set[int] = set()
    for _ in range(2000):
        before = drive.position
        drive.step(1.0)
        if distance_m(before, drive.position) > 3.0:
            assert abs((bearing_deg(before, drive.position) - drive.heading + 180) % 360 - 180) < 1.0
            headings.add(round(drive.heading / 45) % 8)
    assert len(headings) >= 4  # the streets turn: not one straight line


def test_the_fleet_shares_one_street_map() -> None:
    """Five hundred units load the street map once in the process, and start at the demo bases."""
    drives = [Drive.start(seed) for seed in range(500)]
    assert street_map() is street_map()
    assert {d.base for d in drives} == set(BASES)
    assert all(d.position == d.base for d in drives)
    south, west, north, east = street_map().bounds
    assert south <= CITY_CENTRE[0] <= north and west <= CITY_CENTRE[1] <= east


@pytest.mark.parametrize("seed", [21, 22])
def test_incidents_are_street_nodes(seed: int) -> None:
    """The unit goes on scene at a node of the street graph, never in a building or beyond the extract."""
    drive = Drive.start(seed)
    while drive.status is not UnitStatus.ON_SCENE:
        drive.step(1.0)
    streets = street_map()
    assert streets.node_position(streets.nearest_node(*drive.position)) == drive.position
