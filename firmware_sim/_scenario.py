"""Clinical scenarios: a patient, the hospital they need, and what the crew and the monitor show over time.

A `Scenario` is data: the patient, the capability their destination must have, and a timeline of steps at scenario
seconds after patient contact — crew events (`CrewEvent`: chief complaint, findings with the codes of
docs/protocol.md, treatments), vitals targets the monitor drifts to (`VitalsTarget`) and ECG changes (`EcgChange`,
the ST vector of `EcgModel`; the ECG's rate follows the monitor's heart rate). `SCENARIOS` holds the built-in ones
by name. A `ScenarioRun` plays one scenario as a pure state machine: advanced a second at a time, it returns the
cues the device acts on (record an event, drift the vitals, change the ECG) and says when the crew still holds the
unit on scene or at the hospital.

Timing. Step times, vitals ramps, the time on scene (`on_scene_s`), arrival → transfer of care (`handover_s`) and
transfer of care → back in service (`turnaround_s`) are scenario seconds; `time_scale` plays that many scenario
seconds per real second (10 shows a 15-minute scene in 90 s; tests use 100 or more). History before contact —
symptom onset, last known well — is not scaled: it happened before the simulation began. Driving is never scaled:
the unit moves at road speeds, and device timestamps are always the real clock. Steps still due when the unit
reaches the hospital are played on arrival, in order, before the transfer of care.

Destination: the nearest hospital (straight line from the scene) with the scenario's capability, set as the drive's
destination before the unit leaves the scene.

On a device:

    DeviceConfig("A12", password, scenarios=ScenarioMix((("routine_ankle_fracture", 5), ("stemi_inferior", 1))))
        # every arrival on scene plays the next scenario picked from the mix

    device.play("stemi_inferior", time_scale=100)
        # test hook: from the device's next second the unit is on scene (the drive there is skipped, its status
        # changes still sent), patient contact is made and the scenario runs; one already running is abandoned

Without a mix and without `play` a device makes patient contact with a stable patient, as it always has.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from emergency.protocol import EventKind, FindingCode, UnitStatus
from emergency.sites import DEMO_SITES, Capability, Hospital, Sites

Vector = tuple[float, float, float]
Detail = Mapping[str, str | int | float | bool]

# ST vectors (x left, y inferior, z anterior) that `emergency.ecg.analyze` reads back as the named territory from
# 40 to 150 /min (tests/test_sim_ecg_analysis.py, tests/test_sim_scenario.py).
INFERIOR_STEMI_MV: Vector = (0.0, 0.25, 0.0)  # ST up in II, III, aVF; reciprocal depression in aVL
ANTEROSEPTAL_STEMI_MV: Vector = (-0.08, -0.05, 0.25)  # ST up in V1–V4, V5 below threshold
NO_ST_SHIFT: Vector = (0.0, 0.0, 0.0)


class ScenarioError(ValueError):
    """A scenario or mix that cannot be played (unknown name, steps out of order, no hospital with the capability)."""


@dataclass(frozen=True, slots=True)
class Patient:
    age: int
    sex: str  # as protocol v1's patient_contact: male, female or unknown


@dataclass(frozen=True, slots=True)
class CrewEvent:
    """What the crew records on the tablet at `at_s`: a chief complaint, a finding or a treatment.

    `history_s` becomes the finding's `at`: seconds from patient contact (negative: before it), never scaled.
    """

    at_s: float
    kind: EventKind
    text: str
    code: str | None = None
    value: int | float | None = None
    history_s: float | None = None
    dose: float | None = None
    dose_unit: str | None = None

    def detail(self, contact_us: int) -> dict[str, str | int | float | bool]:
        """The event's protocol-v1 fields for a patient contacted at `contact_us`."""
        detail: dict[str, str | int | float | bool] = {"text": self.text}
        if self.code is not None:
            detail["code"] = self.code
        if self.kind is EventKind.FINDING:
            if self.value is not None:
                detail["value"] = self.value
            if self.history_s is not None:
                detail["at"] = contact_us + round(self.history_s * 1_000_000)
        if self.kind is EventKind.TREATMENT:
            if self.dose is not None:
                detail["dose"] = self.dose
            if self.dose_unit is not None:
                detail["dose_unit"] = self.dose_unit
        return detail


def complaint(at_s: float, text: str, code: str | None = None) -> CrewEvent:
    return CrewEvent(at_s, EventKind.CHIEF_COMPLAINT, text, code)


def finding(
    at_s: float, code: str | None, text: str, value: int | float | None = None, history_s: float | None = None
) -> CrewEvent:
    # A FindingCode is sent as its plain string value.
    return CrewEvent(at_s, EventKind.FINDING, text, None if code is None else str(code), value, history_s)


def treatment(
    at_s: float, text: str, code: str | None = None, dose: float | None = None, dose_unit: str | None = None
) -> CrewEvent:
    return CrewEvent(at_s, EventKind.TREATMENT, text, code, dose=dose, dose_unit=dose_unit)


@dataclass(frozen=True, slots=True)
class VitalsTarget:
    """From `at_s`, the monitor's baselines move linearly to these values over `over_s` (0: at once).

    Units as protocol v1's vitals: /min, mmHg, %, °C, mmHg. A sign left None keeps its baseline (or ramp).
    """

    at_s: float
    over_s: float = 0.0
    hr: float | None = None
    sbp: float | None = None
    dbp: float | None = None
    spo2: float | None = None
    rr: float | None = None
    temp: float | None = None
    etco2: float | None = None

    def targets(self) -> dict[str, float]:
        values = {
            "hr": self.hr,
            "sbp": self.sbp,
            "dbp": self.dbp,
            "spo2": self.spo2,
            "rr": self.rr,
            "temp": self.temp,
            "etco2": self.etco2,
        }
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class EcgChange:
    """From `at_s` (the next beat), the heart's ST vector in mV: see `EcgModel.st_vector_mv`."""

    at_s: float
    st_vector_mv: Vector


Step = CrewEvent | VitalsTarget | EcgChange


@dataclass(frozen=True, slots=True)
class Scenario:
    """One call, as data. Steps are in time order; times in scenario seconds after patient contact."""

    name: str
    title: str
    patient: Patient
    capability: Capability
    timeline: tuple[Step, ...]
    on_scene_s: float = 900.0
    handover_s: float = 300.0  # arrival at the hospital → transfer of care
    turnaround_s: float = 300.0  # transfer of care → back in service
    nibp_interval_s: float = 180.0  # the cuff's cycle while the crew has the patient

    def __post_init__(self) -> None:
        times = [step.at_s for step in self.timeline]
        if any(t < 0 for t in times) or times != sorted(times):
            raise ScenarioError(f"scenario {self.name}: steps must be in time order from 0")


# -- what a run tells the device ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordEvent:
    kind: EventKind
    detail: Detail


@dataclass(frozen=True, slots=True)
class DriftVitals:
    targets: Mapping[str, float]
    over_s: float  # real (monitor) seconds


@dataclass(frozen=True, slots=True)
class ChangeEcg:
    st_vector_mv: Vector


Cue = RecordEvent | DriftVitals | ChangeEcg


def straight_line_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000.0 * math.asin(math.sqrt(h))


def nearest_hospital(position: tuple[float, float], capability: Capability, sites: Sites = DEMO_SITES) -> Hospital:
    """The hospital with `capability` nearest to `position` in a straight line."""
    able = sites.with_capability(capability)
    if not able:
        raise ScenarioError(f"no hospital has capability {capability.value}")
    return min(able, key=lambda h: straight_line_m(position, h.position))


class ScenarioRun:
    """One scenario being played for one patient; pure (no clock, no I/O), advanced by the device every second.

    `start()` gives the cues of patient contact (scenario time 0); `advance(dt_s, status)` those due after `dt_s`
    more real seconds, given where the unit now is. `holds(status)` says whether the crew keeps the unit where it
    is (on scene until `on_scene_s`; at the hospital until `turnaround_s` after the transfer of care).
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        contact_us: int,
        scene: tuple[float, float],
        time_scale: float = 1.0,
        sites: Sites = DEMO_SITES,
    ) -> None:
        if not time_scale > 0 or not math.isfinite(time_scale):
            raise ScenarioError(f"time_scale must be a positive number, not {time_scale!r}")
        self.scenario = scenario
        self.contact_us = contact_us
        self.time_scale = time_scale
        self.destination = nearest_hospital(scene, scenario.capability, sites)
        self.elapsed_s = 0.0  # real seconds since patient contact
        self._next_step = 0
        self._arrived_at_s: float | None = None
        self._handed_over_at_s: float | None = None

    @property
    def nibp_interval_s(self) -> float:
        """The cuff's cycle in real seconds: the scenario's, scaled, at least one second."""
        return max(1.0, self.scenario.nibp_interval_s / self.time_scale)

    @property
    def handed_over(self) -> bool:
        return self._handed_over_at_s is not None

    def start(self) -> list[Cue]:
        """Patient contact and every step at scenario time 0."""
        patient = self.scenario.patient
        contact = RecordEvent(EventKind.PATIENT_CONTACT, {"age": patient.age, "sex": patient.sex})
        return [contact, *self._due(0.0)]

    def advance(self, dt_s: float, status: UnitStatus) -> list[Cue]:
        """`dt_s` more real seconds with the unit in `status`: the cues now due, in timeline order."""
        self.elapsed_s += dt_s
        if status is not UnitStatus.AT_DESTINATION:
            return self._due(self.elapsed_s * self.time_scale)
        cues: list[Cue] = []
        if self._arrived_at_s is None:
            self._arrived_at_s = self.elapsed_s
            cues += self._due(math.inf)  # the crew finishes what the timeline still had for the journey
        if self._handed_over_at_s is None and self._scaled_since(self._arrived_at_s) >= self.scenario.handover_s:
            self._handed_over_at_s = self.elapsed_s
            cues.append(RecordEvent(EventKind.TRANSFER_OF_CARE, {"to": self.destination.name}))
        return cues

    def holds(self, status: UnitStatus) -> bool:
        """Whether the crew keeps the unit where it is this second (the device then does not move it)."""
        if status is UnitStatus.ON_SCENE:
            return self.elapsed_s * self.time_scale < self.scenario.on_scene_s
        if status is UnitStatus.AT_DESTINATION:
            handed = self._handed_over_at_s
            return handed is None or self._scaled_since(handed) < self.scenario.turnaround_s
        return False

    def _scaled_since(self, real_s: float) -> float:
        return (self.elapsed_s - real_s) * self.time_scale

    def _due(self, scenario_s: float) -> list[Cue]:
        cues: list[Cue] = []
        timeline = self.scenario.timeline
        while self._next_step < len(timeline) and timeline[self._next_step].at_s <= scenario_s:
            step = timeline[self._next_step]
            self._next_step += 1
            if isinstance(step, CrewEvent):
                cues.append(RecordEvent(step.kind, step.detail(self.contact_us)))
            elif isinstance(step, VitalsTarget):
                cues.append(DriftVitals(step.targets(), step.over_s / self.time_scale))
            else:
                cues.append(ChangeEcg(step.st_vector_mv))
        return cues


# -- the built-in scenarios --------------------------------------------------------------------------------------

_MIN = 60.0
_AVPU, _O2 = FindingCode.AVPU.value, FindingCode.SUPPLEMENTAL_O2.value

STEMI_INFERIOR = Scenario(
    name="stemi_inferior",
    title="Inferior STEMI",
    patient=Patient(64, "male"),
    capability=Capability.PCI,
    timeline=(
        VitalsTarget(0, hr=58, sbp=118, dbp=72, spo2=96, rr=18, temp=36.6, etco2=35),
        EcgChange(0, INFERIOR_STEMI_MV),
        complaint(15, "central chest pain radiating to the jaw, sweating", "chest_pain"),
        finding(30, FindingCode.SYMPTOM_ONSET, "chest pain began at rest", history_s=-50 * _MIN),
        finding(45, _AVPU, "A"),
        finding(60, _O2, "room air", value=0),
        finding(120, None, "12-lead: ST elevation II, III, aVF with ST depression aVL"),
        finding(180, None, "pain 8/10"),
        treatment(240, "aspirin 300 mg chewed", "aspirin", 300, "mg"),
        treatment(330, "glyceryl trinitrate 0.4 mg sublingual", "nitrates", 0.4, "mg"),
        VitalsTarget(330, over_s=300, hr=62, sbp=108, dbp=68),
        finding(660, None, "pain 5/10 after nitrates"),
        VitalsTarget(1200, over_s=600, hr=64, sbp=110, dbp=70),
    ),
)

STEMI_ANTERIOR = Scenario(
    name="stemi_anterior",
    title="Anterior STEMI",
    patient=Patient(58, "female"),
    capability=Capability.PCI,
    timeline=(
        VitalsTarget(0, hr=96, sbp=146, dbp=90, spo2=95, rr=20, temp=36.8, etco2=34),
        EcgChange(0, ANTEROSEPTAL_STEMI_MV),
        complaint(15, "crushing central chest pain with nausea", "chest_pain"),
        finding(30, FindingCode.SYMPTOM_ONSET, "chest pain began while walking", history_s=-35 * _MIN),
        finding(45, _AVPU, "A"),
        finding(60, _O2, "room air", value=0),
        finding(120, None, "12-lead: ST elevation V1–V4"),
        treatment(240, "aspirin 300 mg chewed", "aspirin", 300, "mg"),
        treatment(330, "glyceryl trinitrate 0.4 mg sublingual", "nitrates", 0.4, "mg"),
        VitalsTarget(330, over_s=300, hr=92, sbp=134, dbp=84),
        finding(660, None, "pain 6/10 after nitrates"),
    ),
)

STROKE_LVO = Scenario(
    name="stroke_lvo",
    title="Large-vessel-occlusion stroke",
    patient=Patient(72, "female"),
    capability=Capability.THROMBECTOMY,
    on_scene_s=600,  # stroke: minimal time on scene
    timeline=(
        VitalsTarget(0, hr=88, sbp=190, dbp=104, spo2=96, rr=16, temp=36.7, etco2=37),
        complaint(10, "sudden left-sided weakness and facial droop", "stroke"),
        finding(30, FindingCode.LAST_KNOWN_WELL, "last seen well by her husband", history_s=-45 * _MIN),
        finding(45, _AVPU, "A"),
        finding(60, "blood_glucose", "blood glucose 6.4 mmol/L", value=6.4),
        finding(90, FindingCode.RACE, "RACE 7: face 2, arm 2, leg 1, gaze 1, agnosia 1", value=7),
        finding(120, _O2, "room air", value=0),
    ),
)

TRAUMA_HAEMORRHAGIC_SHOCK = Scenario(
    name="trauma_haemorrhagic_shock",
    title="Penetrating trauma, haemorrhagic shock",
    patient=Patient(27, "male"),
    capability=Capability.TRAUMA_CENTRE,
    on_scene_s=600,  # load and go
    timeline=(
        VitalsTarget(0, hr=110, sbp=110, dbp=72, spo2=95, rr=24, temp=36.4, etco2=32),
        VitalsTarget(0, over_s=900, hr=135, sbp=80, dbp=50, rr=28, etco2=26),  # bleeding: shock index past 1
        complaint(10, "stab wound to the left upper abdomen", "penetrating_trauma"),
        finding(20, FindingCode.TRAUMA_CRITERIA, "penetrating torso injury"),
        finding(40, FindingCode.GCS, "GCS 13 (E3 V4 M6)", value=13),
        finding(40, _AVPU, "C"),
        finding(60, _O2, "non-rebreather mask 15 L/min", value=15),
        VitalsTarget(60, over_s=120, spo2=97),
        treatment(120, "haemostatic dressing and direct pressure", "haemorrhage_control"),
        treatment(180, "tranexamic acid 1 g IV", "txa", 1, "g"),
        treatment(300, "sodium chloride 0.9 % 250 ml IV bolus", "fluids", 250, "ml"),
        finding(540, _AVPU, "V"),
        finding(540, FindingCode.GCS, "GCS 11 (E3 V3 M5)", value=11),
        treatment(900, "sodium chloride 0.9 % 250 ml IV bolus", "fluids", 250, "ml"),
    ),
)

SEPSIS = Scenario(
    name="sepsis",
    title="Sepsis with new confusion",
    patient=Patient(79, "female"),
    capability=Capability.ED,
    timeline=(
        VitalsTarget(0, hr=118, sbp=95, dbp=55, spo2=92, rr=26, temp=39.2, etco2=30),
        complaint(15, "fever and new confusion, urinary symptoms for two days", "fever"),
        finding(30, _AVPU, "C"),
        finding(45, FindingCode.GCS, "GCS 14 (E4 V4 M6)", value=14),
        finding(60, _O2, "room air", value=0),
        finding(120, _O2, "nasal cannula 2 L/min", value=2),
        VitalsTarget(120, over_s=300, spo2=94),
        finding(180, "blood_glucose", "blood glucose 7.8 mmol/L", value=7.8),
        treatment(240, "sodium chloride 0.9 % 500 ml IV", "fluids", 500, "ml"),
        treatment(300, "paracetamol 1 g IV", "paracetamol", 1, "g"),
    ),
)

ROUTINE_ANKLE_FRACTURE = Scenario(
    name="routine_ankle_fracture",
    title="Ankle fracture, stable",
    patient=Patient(34, "female"),
    capability=Capability.ED,
    on_scene_s=1200,
    timeline=(
        VitalsTarget(0, hr=78, sbp=126, dbp=78, spo2=98.5, rr=15, temp=36.7, etco2=37),
        complaint(15, "twisted right ankle, cannot bear weight", "ankle_injury"),
        finding(30, _AVPU, "A"),
        finding(45, _O2, "room air", value=0),
        finding(60, None, "deformity of the right ankle, foot pulses present, pain 6/10"),
        treatment(120, "methoxyflurane 3 ml inhaled", "analgesia", 3, "ml"),
        VitalsTarget(180, over_s=300, hr=72),
        treatment(300, "vacuum splint, right lower leg", "splint"),
    ),
)

SCENARIOS: Mapping[str, Scenario] = MappingProxyType(
    {
        s.name: s
        for s in (STEMI_INFERIOR, STEMI_ANTERIOR, STROKE_LVO, TRAUMA_HAEMORRHAGIC_SHOCK, SEPSIS, ROUTINE_ANKLE_FRACTURE)
    }
)
CRITICAL_SCENARIOS = ("stemi_inferior", "stroke_lvo", "trauma_haemorrhagic_shock", "sepsis", "stemi_anterior")


def scenario(name: str) -> Scenario:
    """The built-in scenario `name`; ScenarioError naming the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ScenarioError(f"no scenario {name!r}; known: {', '.join(SCENARIOS)}") from None


@dataclass(frozen=True, slots=True)
class ScenarioMix:
    """Which scenario each arrival on scene plays: `first` for the first call if given, then by weight.

    `seed` None: the device's own seed, so a unit plays the same calls run after run.
    """

    weights: tuple[tuple[str, float], ...]
    time_scale: float = 1.0
    seed: int | None = None
    first: str | None = None

    def __post_init__(self) -> None:
        for name in (*(n for n, _ in self.weights), *([self.first] if self.first else [])):
            scenario(name)
        if not self.weights or any(not w > 0 for _, w in self.weights):
            raise ScenarioError("a scenario mix needs at least one scenario, each with a positive weight")
        if not self.time_scale > 0 or not math.isfinite(self.time_scale):
            raise ScenarioError(f"time_scale must be a positive number, not {self.time_scale!r}")

    def pick(self, rng: random.Random, call: int) -> Scenario:
        """The scenario of call number `call` (0 is the first) for a unit drawing from `rng`."""
        if call == 0 and self.first is not None:
            return scenario(self.first)
        names = [name for name, _ in self.weights]
        return scenario(rng.choices(names, weights=[w for _, w in self.weights])[0])


# The demo's calls: half routine, the rest spread over the critical scenarios, at ten times real speed (a STEMI
# spends 90 s on scene). The first five units' first calls are one of each critical scenario, so alerts, activations
# and arrivals show within the first minutes.
DEMO_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("routine_ankle_fracture", 5.0),
    *((name, 1.0) for name in CRITICAL_SCENARIOS),
)
DEMO_TIME_SCALE = 10.0


def demo_mix(unit_index: int) -> ScenarioMix:
    """The mix for the demo fleet's unit number `unit_index` (0-based)."""
    first = CRITICAL_SCENARIOS[unit_index] if unit_index < len(CRITICAL_SCENARIOS) else None
    return ScenarioMix(DEMO_WEIGHTS, time_scale=DEMO_TIME_SCALE, first=first)
