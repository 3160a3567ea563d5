"""Distances on the ground: great-circle for answers, a local plane for nearest-neighbour search."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import numpy.typing as npt

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)


class _Fenced(Protocol):
    @property
    def lat(self) -> float: ...

    @property
    def lon(self) -> float: ...

    @property
    def geofence_m(self) -> float: ...


def haversine_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres between two (lat, lon) points in degrees."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def haversine_many_m(
    lat: npt.NDArray[np.float64], lon: npt.NDArray[np.float64], lat2: npt.ArrayLike, lon2: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Element-wise great-circle distances in metres."""
    p1, l1 = np.radians(lat), np.radians(lon)
    p2, l2 = np.radians(np.asarray(lat2, dtype=np.float64)), np.radians(np.asarray(lon2, dtype=np.float64))
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    result: npt.NDArray[np.float64] = 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(h)))
    return result


def geofence_contains(hospital: _Fenced, lat: float, lon: float) -> bool:
    """Whether (lat, lon) lies within the hospital's geofence radius (great-circle distance, boundary included)."""
    return haversine_m((hospital.lat, hospital.lon), (lat, lon)) <= hospital.geofence_m


class LocalPlane:
    """An equirectangular projection around one latitude: metres east and north, good to 0.1 % over a city."""

    __slots__ = ("_lat0", "_lon0", "_m_per_deg_lat", "_m_per_deg_lon")

    def __init__(self, lat0: float, lon0: float) -> None:
        self._lat0, self._lon0 = lat0, lon0
        self._m_per_deg_lat = math.radians(1.0) * EARTH_RADIUS_M
        self._m_per_deg_lon = self._m_per_deg_lat * math.cos(math.radians(lat0))

    def project_one(self, lat: float, lon: float) -> tuple[float, float]:
        """(east, north) metres of one point (no array overhead: this is on the per-GPS-fix path)."""
        return (lon - self._lon0) * self._m_per_deg_lon, (lat - self._lat0) * self._m_per_deg_lat

    def project(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(n, 2) array of (east, north) metres."""
        lat_a = np.asarray(lat, dtype=np.float64)
        lon_a = np.asarray(lon, dtype=np.float64)
        return np.stack(
            ((lon_a - self._lon0) * self._m_per_deg_lon, (lat_a - self._lat0) * self._m_per_deg_lat), axis=-1
        )
