"""The drivable street graph: nearest street node, shortest-time routes, drive times to one destination."""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree

from emergency.geo._distance import LocalPlane, haversine_m, haversine_many_m
from emergency.geo._extract import (
    ATTRIBUTION,
    ROAD_CLASSES,
    GeoError,
    StreetSegments,
    cache_file,
    extract_path,
    file_digest,
    load_segments,
    read_extract,
    save_segments,
)
from emergency.geo._layer import street_layer

log = logging.getLogger(__name__)

# An ambulance on an emergency run may exceed the posted limit; in a city it rarely averages more than this much over
# it (junctions, traffic), and never on a street signed 30. Applied to every edge's limit.
EMERGENCY_SPEED_FACTOR = 1.2
# Off the street graph (a driveway, a square, a hospital forecourt, or beyond the extract's edge) the unit is taken to
# cover the straight-line distance at this speed.
APPROACH_SPEED_MPS = 5.0
DRIVE_TIMES_CACHED = 64  # destinations whose drive-time tables are kept (each is two arrays of one value per node)


def default_cache_dir() -> Path:
    """`<EMERGENCY_DATA_DIR>/cache` (default `data/cache`), where street maps built from the extract are kept."""
    return Path(os.environ.get("EMERGENCY_DATA_DIR", "data")) / "cache"


@dataclass(frozen=True, slots=True)
class Route:
    """A drive from one point to another: the points driven through (lat, lon), the first and last being the two
    ends; `speeds_mps[i]` is the speed assumed from points[i] to points[i + 1]."""

    points: tuple[tuple[float, float], ...]
    speeds_mps: tuple[float, ...]
    length_m: float
    drive_time_s: float


@dataclass(frozen=True, slots=True)
class _Snap:
    node: int
    off_street_m: float


class DriveTimes:
    """Drive times from anywhere to one destination, precomputed: `eta_s` is a nearest-node lookup, O(log n)."""

    __slots__ = ("_next_hop", "_seconds", "_streets", "destination", "destination_snap")

    def __init__(
        self,
        streets: StreetMap,
        destination: tuple[float, float],
        snap: _Snap,
        seconds: npt.NDArray[np.float64],
        next_hop: npt.NDArray[np.int32],
    ) -> None:
        self._streets = streets
        self.destination = destination
        self.destination_snap = snap
        self._seconds = seconds
        self._next_hop = next_hop

    def eta_s(self, lat: float, lon: float) -> float:
        """Seconds to drive from (lat, lon) to the destination: off-street to the nearest street node, the fastest
        streets, then off-street to the destination."""
        snap = self._streets._snap(lat, lon)
        return float(self._total_s(snap.off_street_m, float(self._seconds[snap.node])))

    def eta_many_s(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """`eta_s` for many points at once."""
        nodes, off = self._streets._snap_many(lat, lon)
        result: npt.NDArray[np.float64] = self._total_s(off, self._seconds[nodes])
        return result

    def _total_s(self, off_street_m: Any, street_s: Any) -> Any:
        return (off_street_m + self.destination_snap.off_street_m) / APPROACH_SPEED_MPS + street_s

    def route_from(self, origin: tuple[float, float]) -> Route:
        """The fastest drive from `origin` to the destination, consistent with `eta_s(origin)`."""
        streets = self._streets
        snap = streets._snap(*origin)
        nodes = [snap.node]
        while nodes[-1] != self.destination_snap.node:
            nodes.append(int(self._next_hop[nodes[-1]]))
        points = [origin]
        speeds = [APPROACH_SPEED_MPS]
        length = snap.off_street_m
        for a, b in itertools.pairwise(nodes):
            metres, seconds = streets._edge(a, b)
            points.append(streets.node_position(a))
            speeds.append(metres / seconds)
            length += metres
        points.append(streets.node_position(nodes[-1]))
        speeds.append(APPROACH_SPEED_MPS)
        points.append(self.destination)
        length += self.destination_snap.off_street_m
        drive_time = self._total_s(snap.off_street_m, float(self._seconds[snap.node]))
        # Drop zero-length steps (a point already on its street node) so that every segment has a direction.
        kept_points, kept_speeds = [points[0]], []
        for point, speed in zip(points[1:], speeds, strict=True):
            if haversine_m(kept_points[-1], point) < 0.01:
                continue
            kept_points.append(point)
            kept_speeds.append(speed)
        if len(kept_points) == 1:
            kept_points.append(self.destination)
            kept_speeds.append(APPROACH_SPEED_MPS)
        return Route(tuple(kept_points), tuple(kept_speeds), length, drive_time)


class StreetMap:
    """The drivable streets of the shipped extract: immutable once built, safe to share between threads.

    Routing runs on the largest strongly connected component (every node of it reaches every other); positions
    anywhere, including beyond the extract, are attached to their nearest node of it by a straight off-street leg
    driven at APPROACH_SPEED_MPS. Edge speeds are the posted limit (or the road class default) times
    EMERGENCY_SPEED_FACTOR.
    """

    def __init__(self, segments: StreetSegments, *, source: str = "") -> None:
        self.source = source
        self._segments = segments
        self._layer: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._drive_times: OrderedDict[int, tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]]] = OrderedDict()

        n = len(segments.node_lat)
        forward = segments.oneway >= 0
        backward = segments.oneway <= 0
        rows = np.concatenate((segments.u[forward], segments.v[backward]))
        cols = np.concatenate((segments.v[forward], segments.u[backward]))
        metres = np.concatenate((segments.length_m[forward], segments.length_m[backward]))
        speed = np.concatenate((segments.limit_kmh[forward], segments.limit_kmh[backward])) / 3.6
        seconds = np.maximum(metres, 0.01) / (speed * EMERGENCY_SPEED_FACTOR)
        keep = rows != cols
        rows, cols, metres, seconds = rows[keep], cols[keep], metres[keep], seconds[keep]

        # Largest strongly connected component, renumbered 0..m-1.
        adjacency = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
        _, labels = connected_components(adjacency, directed=True, connection="strong")
        largest = np.argmax(np.bincount(labels))
        members = np.flatnonzero(labels == largest)
        if len(members) < 2:
            raise GeoError("the street extract has no connected street network")
        renumber = np.full(n, -1, dtype=np.int64)
        renumber[members] = np.arange(len(members))
        inside = (renumber[rows] >= 0) & (renumber[cols] >= 0)
        rows, cols = renumber[rows[inside]], renumber[cols[inside]]
        metres, seconds = metres[inside], seconds[inside]
        # Parallel segments between the same two nodes: keep the fastest (csr_matrix would add them up).
        order = np.lexsort((seconds, cols, rows))
        rows, cols, metres, seconds = rows[order], cols[order], metres[order], seconds[order]
        first = np.ones(len(rows), dtype=bool)
        first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
        rows, cols, metres, seconds = rows[first], cols[first], metres[first], seconds[first]

        m = len(members)
        self._lat = segments.node_lat[members]
        self._lon = segments.node_lon[members]
        self._time = csr_matrix((seconds, (rows, cols)), shape=(m, m))
        self._time.sort_indices()
        self._length = csr_matrix((metres, (rows, cols)), shape=(m, m))
        self._length.sort_indices()
        self._reverse_time = self._time.transpose().tocsr()
        self._reverse_time.sort_indices()
        self._plane = LocalPlane(float(np.mean(self._lat)), float(np.mean(self._lon)))
        self._tree = cKDTree(self._plane.project(self._lat, self._lon))
        for array in (self._lat, self._lon, *(getattr(segments, name) for name in StreetSegments.__slots__)):
            array.setflags(write=False)

    # -- loading --------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, cache_dir: Path | None = None) -> StreetMap:
        """The street map of the shipped extract; with `cache_dir`, read from (or written to) a cache file keyed by
        the extract's SHA-256, so that only the first start reads the extract. Never downloads anything."""
        started = time.perf_counter()
        path = extract_path()
        digest = file_digest(path)
        cached = cache_file(cache_dir, digest) if cache_dir is not None else None
        segments = load_segments(cached) if cached is not None else None
        origin = "cache"
        if segments is None:
            origin = "extract"
            segments = read_extract(path)
            if cached is not None:
                try:
                    save_segments(segments, cached)
                except OSError as exc:  # a read-only data directory costs the next start a few seconds, no more
                    log.warning("cannot cache the street map in %s: %s", cached, exc)
        streets = cls(segments, source=f"{path.name} sha256:{digest[:16]}")
        log.info(
            "street map: %d nodes, %d edges from the %s in %.2f s",
            streets.node_count,
            streets.edge_count,
            origin,
            time.perf_counter() - started,
        )
        return streets

    # -- the graph ------------------------------------------------------------------------------------------------

    @property
    def node_count(self) -> int:
        """Nodes of the routable network (the largest strongly connected component)."""
        return len(self._lat)

    @property
    def edge_count(self) -> int:
        return int(self._time.nnz)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(south, west, north, east) of every drivable node of the extract."""
        s = self._segments
        return (float(s.node_lat.min()), float(s.node_lon.min()), float(s.node_lat.max()), float(s.node_lon.max()))

    @property
    def attribution(self) -> str:
        return ATTRIBUTION

    def node_position(self, node: int) -> tuple[float, float]:
        return float(self._lat[node]), float(self._lon[node])

    def nearest_node(self, lat: float, lon: float) -> int:
        """The routable node nearest (lat, lon)."""
        return self._snap(lat, lon).node

    def _snap(self, lat: float, lon: float) -> _Snap:
        if not (math.isfinite(lat) and math.isfinite(lon)):
            raise ValueError(f"not a position: {lat}, {lon}")
        _, found = self._tree.query(self._plane.project_one(lat, lon))
        node = int(found)
        return _Snap(node, haversine_m((lat, lon), (float(self._lat[node]), float(self._lon[node]))))

    def _snap_many(
        self, lat: npt.ArrayLike, lon: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        lat_a, lon_a = (
            np.atleast_1d(np.asarray(lat, dtype=np.float64)),
            np.atleast_1d(np.asarray(lon, dtype=np.float64)),
        )
        _, nodes = self._tree.query(self._plane.project(lat_a, lon_a))
        nodes = np.asarray(nodes, dtype=np.intp)
        return nodes, haversine_many_m(self._lat[nodes], self._lon[nodes], lat_a, lon_a)

    def _edge(self, a: int, b: int) -> tuple[float, float]:
        """(metres, seconds) of the edge a→b."""
        lo, hi = self._time.indptr[a], self._time.indptr[a + 1]
        at = lo + int(np.searchsorted(self._time.indices[lo:hi], b))
        return float(self._length.data[at]), float(self._time.data[at])

    # -- drive times ----------------------------------------------------------------------------------------------

    def drive_times_to(self, lat: float, lon: float) -> DriveTimes:
        """Drive times from every node to (lat, lon): one Dijkstra on the reversed graph, kept for the last
        DRIVE_TIMES_CACHED destination nodes."""
        snap = self._snap(lat, lon)
        with self._lock:
            tables = self._drive_times.get(snap.node)
            if tables is not None:
                self._drive_times.move_to_end(snap.node)
        if tables is None:
            # Outside the lock: two threads asking for a new destination at once may both compute it, which is
            # cheaper than making every caller wait on one Dijkstra.
            seconds, predecessors = dijkstra(self._reverse_time, indices=snap.node, return_predecessors=True)
            seconds.setflags(write=False)
            next_hop = predecessors.astype(np.int32)
            next_hop.setflags(write=False)
            tables = (seconds, next_hop)
            with self._lock:
                self._drive_times[snap.node] = tables
                while len(self._drive_times) > DRIVE_TIMES_CACHED:
                    self._drive_times.popitem(last=False)
        return DriveTimes(self, (lat, lon), snap, tables[0], tables[1])

    def route(self, a: tuple[float, float], b: tuple[float, float]) -> Route:
        """The fastest drive from a to b (lat, lon), off-street legs at both ends included."""
        return self.drive_times_to(*b).route_from(a)

    def rank_by_drive_time(
        self, to: tuple[float, float], candidates: Mapping[str, tuple[float, float]]
    ) -> list[tuple[str, float]]:
        """The candidates (key → position) by drive time to `to`, fastest first (ties by key), with the seconds."""
        if not candidates:
            return []
        keys = list(candidates)
        positions = np.array([candidates[k] for k in keys], dtype=np.float64)
        seconds = self.drive_times_to(*to).eta_many_s(positions[:, 0], positions[:, 1])
        return sorted(((k, float(s)) for k, s in zip(keys, seconds, strict=True)), key=lambda ks: (ks[1], ks[0]))

    # -- drawing --------------------------------------------------------------------------------------------------

    def street_layer(self) -> dict[str, Any]:
        """Every drivable street of the extract as simplified polylines by road class, for drawing (see _layer)."""
        with self._lock:
            if self._layer is None:
                s = self._segments
                self._layer = street_layer(
                    s.node_lat, s.node_lon, s.u, s.v, s.road_class, ROAD_CLASSES, self.bounds, self.source
                )
            return self._layer
