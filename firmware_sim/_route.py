"""A unit driving its duty cycle on city streets: base → incident → hospital → base, at road speeds."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from emergency.protocol import UnitStatus

EARTH_RADIUS_M = 6_371_000.0
# Around People's Square, Shanghai: ambulance bases, hospitals, and the street grid's spacing.
CITY_CENTRE = (31.2304, 121.4737)
HOSPITALS = (
    (31.2198, 121.4595),  # Ruijin
    (31.2003, 121.4370),  # Zhongshan
    (31.2420, 121.4870),  # Renji (east)
    (31.2690, 121.4550),  # north
)
BLOCK_M = 450.0


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def bearing_deg(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    y = math.sin(lon2 - lon1) * math.cos(lat2)
    x = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(lon2 - lon1)
    return math.degrees(math.atan2(y, x)) % 360.0


def _offset(origin: tuple[float, float], north_m: float, east_m: float) -> tuple[float, float]:
    lat = origin[0] + math.degrees(north_m / EARTH_RADIUS_M)
    lon = origin[1] + math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(origin[0]))))
    return lat, lon


def street_path(a: tuple[float, float], b: tuple[float, float], rng: random.Random) -> list[tuple[float, float]]:
    """A Manhattan-style path: alternate north-south and east-west legs, turning at block corners."""
    points = [a]
    here = a
    while distance_m(here, b) > BLOCK_M:
        north = distance_m((here[0], b[1]), b) * (1 if b[0] > here[0] else -1)
        east = distance_m((b[0], here[1]), b) * (1 if b[1] > here[1] else -1)
        leg = min(BLOCK_M * rng.randint(1, 4), max(abs(north), abs(east)))
        if abs(north) >= abs(east) if rng.random() < 0.7 else abs(north) < abs(east):
            here = _offset(here, math.copysign(min(leg, abs(north)), north), 0)
        else:
            here = _offset(here, 0, math.copysign(min(leg, abs(east)), east))
        points.append(here)
    points.append(b)
    return points


@dataclass(frozen=True, slots=True)
class Fix:
    lat: float
    lon: float
    speed: float
    heading: float


@dataclass(slots=True)
class Drive:
    """Where the unit is on its duty cycle, advanced by `step(dt)`; status changes are reported by `step`."""

    rng: random.Random
    base: tuple[float, float]
    status: UnitStatus = UnitStatus.AVAILABLE
    position: tuple[float, float] = CITY_CENTRE
    speed: float = 0.0
    heading: float = 0.0
    path: list[tuple[float, float]] = field(default_factory=list)
    dwell_s: float = 0.0
    cruise: float = 14.0
    # Where the next transport goes; a clinical scenario sets it to a hospital that can treat its patient.
    destination: tuple[float, float] | None = None

    @classmethod
    def start(cls, seed: int) -> Drive:
        rng = random.Random(seed)
        base = _offset(CITY_CENTRE, rng.uniform(-5000, 5000), rng.uniform(-5000, 5000))
        drive = cls(rng=rng, base=base, position=base, dwell_s=rng.uniform(5, 40))
        return drive

    def fix(self) -> Fix:
        return Fix(self.position[0], self.position[1], self.speed, self.heading)

    def step(self, dt: float) -> UnitStatus | None:
        """Advance `dt` seconds; returns the new status when it changed."""
        if self.dwell_s > 0:
            self.dwell_s -= dt
            self.speed = 0.0
            return self._next_leg() if self.dwell_s <= 0 else None
        if not self.path:
            return self._arrive()
        target = self.path[0]
        remaining = distance_m(self.position, target)
        corner = len(self.path) > 1
        # Accelerate towards cruise speed, brake for the corner or the stop ahead.
        limit = min(self.cruise, math.sqrt(2 * 2.5 * remaining) + (5.0 if corner else 0.0))
        self.speed += max(-4.0 * dt, min(2.5 * dt, limit - self.speed))
        self.speed = max(self.speed, 1.0)
        travel = self.speed * dt
        self.heading = bearing_deg(self.position, target)
        if travel >= remaining:
            self.position = target
            self.path.pop(0)
        else:
            f = travel / remaining
            self.position = (
                self.position[0] + (target[0] - self.position[0]) * f,
                self.position[1] + (target[1] - self.position[1]) * f,
            )
        return None

    def _go(self, destination: tuple[float, float], status: UnitStatus) -> UnitStatus:
        self.path = street_path(self.position, destination, self.rng)[1:]
        self.cruise = self.rng.uniform(9.0, 22.0)  # 30–80 km/h
        self.status = status
        return status

    def _next_leg(self) -> UnitStatus | None:
        if self.status is UnitStatus.AVAILABLE:
            incident = _offset(self.base, self.rng.uniform(-4000, 4000), self.rng.uniform(-4000, 4000))
            return self._go(incident, UnitStatus.EN_ROUTE)
        if self.status is UnitStatus.ON_SCENE:
            destination, self.destination = self.destination or self.rng.choice(HOSPITALS), None
            return self._go(destination, UnitStatus.TRANSPORTING)
        if self.status is UnitStatus.AT_DESTINATION:
            self._go(self.base, UnitStatus.AVAILABLE)
            return UnitStatus.AVAILABLE
        return None

    def _arrive(self) -> UnitStatus | None:
        self.speed = 0.0
        if self.status is UnitStatus.EN_ROUTE:
            self.status, self.dwell_s = UnitStatus.ON_SCENE, self.rng.uniform(60, 180)
            return self.status
        if self.status is UnitStatus.TRANSPORTING:
            self.status, self.dwell_s = UnitStatus.AT_DESTINATION, self.rng.uniform(30, 90)
            return self.status
        self.dwell_s = self.rng.uniform(20, 60)  # back at base, available
        return None
