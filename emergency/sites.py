"""The places the center knows: receiving hospitals (with what they can do) and ambulance bases.

The demo defaults below describe one city; a deployment replaces them (see `load_sites`).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path


class Capability(enum.StrEnum):
    ED = "ed"
    PCI = "pci"  # 24/7 primary PCI: receives STEMI, cath lab
    STROKE_UNIT = "stroke_unit"  # thrombolysis
    THROMBECTOMY = "thrombectomy"  # large-vessel-occlusion stroke
    TRAUMA_CENTRE = "trauma_centre"


@dataclass(frozen=True, slots=True)
class Hospital:
    code: str
    name: str
    lat: float
    lon: float
    geofence_m: float
    capabilities: frozenset[Capability]

    @property
    def position(self) -> tuple[float, float]:
        return self.lat, self.lon


@dataclass(frozen=True, slots=True)
class Base:
    code: str
    name: str
    lat: float
    lon: float

    @property
    def position(self) -> tuple[float, float]:
        return self.lat, self.lon


@dataclass(frozen=True, slots=True)
class Sites:
    hospitals: tuple[Hospital, ...]
    bases: tuple[Base, ...]

    def hospital(self, code: str) -> Hospital:
        for h in self.hospitals:
            if h.code == code:
                return h
        raise KeyError(code)

    def with_capability(self, capability: Capability) -> tuple[Hospital, ...]:
        return tuple(h for h in self.hospitals if capability in h.capabilities)


_ALL = frozenset(Capability)

DEMO_SITES = Sites(
    hospitals=(
        Hospital("RJ", "Ruijin Hospital", 31.2198, 121.4595, 150.0, _ALL),
        Hospital("ZS", "Zhongshan Hospital", 31.2003, 121.4370, 150.0, frozenset({Capability.ED, Capability.PCI})),
        Hospital(
            "RE",
            "Renji Hospital (East)",
            31.2420,
            121.4870,
            150.0,
            frozenset({Capability.ED, Capability.STROKE_UNIT, Capability.THROMBECTOMY}),
        ),
        Hospital(
            "NH",
            "North District Hospital",
            31.2690,
            121.4550,
            150.0,
            frozenset({Capability.ED, Capability.STROKE_UNIT}),
        ),
    ),
    bases=(
        Base("B1", "Central station", 31.2304, 121.4737),
        Base("B2", "West station", 31.2250, 121.4450),
        Base("B3", "North station", 31.2550, 121.4650),
    ),
)


def load_sites(path: Path | None) -> Sites:
    """The sites in a JSON file (`{"hospitals": [...], "bases": [...]}`, fields as the dataclasses), or the demo's."""
    if path is None:
        return DEMO_SITES
    raw = json.loads(path.read_text())
    return Sites(
        hospitals=tuple(
            Hospital(
                h["code"],
                h["name"],
                float(h["lat"]),
                float(h["lon"]),
                float(h.get("geofence_m", 150.0)),
                frozenset(Capability(c) for c in h["capabilities"]),
            )
            for h in raw["hospitals"]
        ),
        bases=tuple(Base(b["code"], b["name"], float(b["lat"]), float(b["lon"])) for b in raw["bases"]),
    )
