"""The places the center knows: receiving hospitals (with what they can do) and ambulance bases.

The demo defaults below describe central Helsinki; a deployment replaces them (see `load_sites`).
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

# The demo city is central Helsinki, the area of the OpenStreetMap extract the street map ships with (emergency.geo:
# about 1.0 × 1.7 km, Kamppi to the Senate Square, Kaartinkaupunki to Kaisaniemi). No hospital lies in it: Helsinki's
# emergency departments (Meilahti Tower Hospital, the Bridge Hospital trauma centre, Haartman) are on the Meilahti
# campus, 2 km north-west. So the demo's receiving hospitals are fictional, marked "(demo)", and stand at the kerb of
# main streets; the Erottaja rescue station is real. A deployment loads its own sites (`load_sites`).
DEMO_SITES = Sites(
    hospitals=(
        Hospital("ESP", "Esplanadi Hospital (demo)", 60.16788, 24.95106, 100.0, _ALL),
        Hospital(
            "KAM",
            "Kamppi Hospital (demo)",
            60.17074,
            24.93744,
            100.0,
            frozenset({Capability.ED, Capability.PCI}),
        ),
        Hospital(
            "KAI",
            "Kaisaniemi Hospital (demo)",
            60.17391,
            24.94972,
            100.0,
            frozenset({Capability.ED, Capability.STROKE_UNIT, Capability.THROMBECTOMY}),
        ),
        Hospital(
            "BUL",
            "Bulevardi Hospital (demo)",
            60.16738,
            24.94201,
            100.0,
            frozenset({Capability.ED, Capability.STROKE_UNIT}),
        ),
    ),
    bases=(
        Base("ERO", "Erottaja rescue station", 60.16514, 24.94522),
        Base("RAU", "Rautatientori standby point (demo)", 60.17038, 24.94387),
        Base("KAA", "Kaartinkaupunki standby point (demo)", 60.16587, 24.94966),
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
