"""A unit driving its duty cycle on real streets: base → incident → hospital → base, at road speeds.

The streets are emergency.geo's street map of the shipped OpenStreetMap extract (central Helsinki), the sites are
`emergency.sites.DEMO_SITES`. The map is loaded once per process and shared by every simulated unit.
"""

from __future__ import annotations

import functools
import math
import random
import threading
from dataclasses import dataclass, field

from emergency.geo import StreetMap, default_cache_dir, haversine_m
from emergency.protocol import UnitStatus
from emergency.sites import DEMO_SITES

HOSPITALS = tuple(h.position for h in DEMO_SITES.hospitals)
BASES = tuple(b.position for b in DEMO_SITES.bases)
CITY_CENTRE = (
    sum(p[0] for p in HOSPITALS + BASES) / len(HOSPITALS + BASES),
    sum(p[1] for p in HOSPITALS + BASES) / len(HOSPITALS + BASES),
)
ACCELERATION = 2.5  # m/s², and the comfortable braking used to plan a stop or a turn
HARD_BRAKING = 4.0  # m/s², the most the speed may fall in one second
TURN_SPEED_MIN = 4.0  # m/s through a U-turn; straight on, no slowing down (see _corner_speed)
TURN_SPEED_MAX = 14.0

_load_lock = threading.Lock()


@functools.cache
def _load() -> StreetMap:
    return StreetMap.load(default_cache_dir())


def street_map() -> StreetMap:
    """The street map, loaded by the first caller in this process (a fleet of 500 units loads it once)."""
    with _load_lock:
        return _load()


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine)."""
    return haversine_m(a, b)


def bearing_deg(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    y = math.sin(lon2 - lon1) * math.cos(lat2)
    x = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(lon2 - lon1)
    return math.degrees(math.atan2(y, x)) % 360.0


def _corner_speed(a: tuple[float, float], corner: tuple[float, float], b: tuple[float, float]) -> float:
    """How fast a vehicle takes the turn at `corner` from a to b: full speed straight on, slowest for a U-turn."""
    turn = abs((bearing_deg(corner, b) - bearing_deg(a, corner) + 180.0) % 360.0 - 180.0)
    return TURN_SPEED_MIN + (TURN_SPEED_MAX - TURN_SPEED_MIN) * math.cos(math.radians(turn) / 2) ** 2


@dataclass(frozen=True, slots=True)
class Fix:
    lat: float
    lon: float
    speed: float
    heading: float


@dataclass(slots=True)
class Drive:
    """Where the unit is on its duty cycle, advanced by `step(dt)`; status changes are reported by `step`.

    `path` holds the points still ahead on the current leg and `path_speeds[i]` the road speed of the stretch that
    ends at `path[i]`; the unit drives them at `pace` times that speed (traffic), accelerating, braking for turns,
    and stopping at the end.
    """

    rng: random.Random
    base: tuple[float, float]
    status: UnitStatus = UnitStatus.AVAILABLE
    position: tuple[float, float] = CITY_CENTRE
    speed: float = 0.0
    heading: float = 0.0
    path: list[tuple[float, float]] = field(default_factory=list)
    path_speeds: list[float] = field(default_factory=list)
    pace: float = 1.0
    dwell_s: float = 0.0
    # Where the next transport goes; a clinical scenario sets it to a hospital that can treat its patient.
    destination: tuple[float, float] | None = None

    @classmethod
    def start(cls, seed: int) -> Drive:
        rng = random.Random(seed)
        base = rng.choice(BASES)
        return cls(rng=rng, base=base, position=base, dwell_s=rng.uniform(5, 40))

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
        limit = min(self.path_speeds[0] * self.pace, self._braking_limit())
        self.speed += max(-HARD_BRAKING * dt, min(ACCELERATION * dt, limit - self.speed))
        self.speed = max(self.speed, 1.0)
        travel = self.speed * dt
        start = self.position
        # Street nodes are metres apart: one step may pass several of them.
        while self.path and travel > 0:
            target = self.path[0]
            remaining = distance_m(self.position, target)
            if travel >= remaining:
                self.position = target
                self.path.pop(0)
                self.path_speeds.pop(0)
                travel -= remaining
            else:
                f = travel / remaining
                self.position = (
                    self.position[0] + (target[0] - self.position[0]) * f,
                    self.position[1] + (target[1] - self.position[1]) * f,
                )
                travel = 0.0
        if distance_m(start, self.position) > 0.5:
            # Course over ground, as a GPS receiver reports it: the direction of the last second's movement.
            self.heading = bearing_deg(start, self.position)
        return None

    def _braking_limit(self) -> float:
        """The fastest speed from which every turn and the stop within reach can still be made braking gently."""
        limit = math.inf
        ahead = 0.0
        previous = self.position
        for i, point in enumerate(self.path):
            ahead += distance_m(previous, point)
            if i + 1 < len(self.path):
                corner = min(_corner_speed(previous, point, self.path[i + 1]), self.path_speeds[i + 1] * self.pace)
            else:
                corner = 0.0
            limit = min(limit, math.sqrt(corner**2 + 2 * ACCELERATION * ahead))
            if ahead > 80.0:  # far enough to stop from any city speed
                break
            previous = point
        return limit

    def _go(self, destination: tuple[float, float], status: UnitStatus, pace: float) -> UnitStatus:
        route = street_map().route(self.position, destination)
        self.path = list(route.points[1:])
        self.path_speeds = list(route.speeds_mps)
        self.pace = pace
        self.status = status
        return status

    def _next_leg(self) -> UnitStatus | None:
        if self.status is UnitStatus.AVAILABLE:
            streets = street_map()
            incident = streets.node_position(self.rng.randrange(streets.node_count))
            return self._go(incident, UnitStatus.EN_ROUTE, self.rng.uniform(0.75, 1.0))
        if self.status is UnitStatus.ON_SCENE:
            destination, self.destination = self.destination or self.rng.choice(HOSPITALS), None
            return self._go(destination, UnitStatus.TRANSPORTING, self.rng.uniform(0.7, 0.95))
        if self.status is UnitStatus.AT_DESTINATION:
            # Back to base without lights: at the limit at most (the map's speeds allow for an emergency run).
            self._go(self.base, UnitStatus.AVAILABLE, self.rng.uniform(0.6, 0.8))
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
