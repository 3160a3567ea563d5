"""The alerting rules: a pure function of one unit's patient state, evaluated as each message arrives.

`PatientState` folds device messages (vitals, crew events, ECG findings) into what is known about the patient now,
on the device's clock. `evaluate` turns that state into the set of conditions that hold; the alert book
(`emergency.care._alerts`) turns conditions into alerts with a lifecycle. No I/O, no clock here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from emergency.care._model import AlertKind, Severity
from emergency.ecg import EcgFindings
from emergency.protocol import DeviceEvent, EventKind, FindingCode, Vitals
from emergency.scores import (
    ClinicalRisk,
    Consciousness,
    News2Inputs,
    ScoreInputError,
    SpO2Scale,
    news2,
    qsofa,
    shock_index,
)


@dataclass(frozen=True, slots=True)
class Band:
    """A vital sign's band: outside [low, high] is a warning, outside [critical_low, critical_high] critical."""

    low: float | None = None
    high: float | None = None
    critical_low: float | None = None
    critical_high: float | None = None


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Per-hospital alerting thresholds (settings may override any of them)."""

    vitals: dict[str, Band] = field(
        default_factory=lambda: {
            "hr": Band(low=45, high=130, critical_low=35, critical_high=160),
            "sbp": Band(low=90, high=200, critical_low=80, critical_high=230),
            "spo2": Band(low=90, critical_low=85),
            "rr": Band(low=8, high=28, critical_low=6, critical_high=35),
            "temp": Band(low=35.0, high=39.5, critical_low=34.0, critical_high=41.0),
            "etco2": Band(low=25, high=55, critical_low=15, critical_high=70),
        }
    )
    news2_warning: int = 5  # medium clinical risk (or any single parameter scoring 3)
    news2_critical: int = 7  # high clinical risk
    shock_index_critical: float = 1.4
    race_lvo: int = 4  # RACE above this suggests a large-vessel occlusion


def load_thresholds(path: Path | None) -> Thresholds:
    """A hospital's thresholds from a JSON file shaped like `Thresholds` (vital bands replace the defaults one sign
    at a time), or the defaults. Raises pydantic.ValidationError for a file that does not fit."""
    if path is None:
        return Thresholds()
    raw = json.loads(path.read_text())
    defaults = Thresholds()
    merged = {**{k: dataclasses.asdict(b) for k, b in defaults.vitals.items()}, **raw.get("vitals", {})}
    result: Thresholds = TypeAdapter(Thresholds).validate_python({**raw, "vitals": merged})
    return result


@dataclass(frozen=True, slots=True)
class Condition:
    """Something that holds about the patient now; `at` is the device time of the data that shows it."""

    kind: AlertKind
    severity: Severity
    summary: str
    detail: dict[str, Any]
    at: int


_CONSCIOUSNESS = {c.value: c for c in Consciousness}
# Conditions that are diagnoses, not readings: once shown they hold until the encounter ends.
STICKY: frozenset[AlertKind] = frozenset({AlertKind.STEMI, AlertKind.LVO_STROKE, AlertKind.TRAUMA})


@dataclass(slots=True)
class PatientState:
    """What is known about one unit's patient, each part with the device time it was last seen."""

    vitals: dict[str, float] = field(default_factory=dict)
    vitals_at: int | None = None
    consciousness: Consciousness | None = None
    on_oxygen: bool | None = None
    spo2_scale: SpO2Scale = SpO2Scale.SCALE_1
    gcs: int | None = None
    race: float | None = None
    race_at: int | None = None
    last_known_well_at: int | None = None
    trauma_criteria: list[str] = field(default_factory=list)
    trauma_at: int | None = None
    ecg: EcgFindings | None = None
    ecg_at: int | None = None
    device_alarms: dict[str, tuple[str, int]] = field(default_factory=dict)  # alarm → (text, at), high priority
    age: int | None = None
    sex: str | None = None

    def observe_vitals(self, vitals: Vitals) -> bool:
        """Fold in a vitals message; returns False for one older than what is known (a replay adds nothing now)."""
        if self.vitals_at is not None and vitals.ts < self.vitals_at:
            return False
        for name in ("hr", "sbp", "dbp", "map", "spo2", "rr", "temp", "etco2"):
            value = getattr(vitals, name)
            if value is not None:
                self.vitals[name] = value
        self.vitals_at = vitals.ts
        return True

    def observe_event(self, event: DeviceEvent) -> bool:
        """Fold in a crew or device event; returns whether the patient state changed."""
        d = event.detail
        if event.kind is EventKind.PATIENT_CONTACT:
            self.age = int(d["age"]) if "age" in d else self.age
            self.sex = str(d["sex"]) if d.get("sex") in ("male", "female") else self.sex
            return True
        if event.kind is EventKind.DEVICE_ALARM:
            if d.get("priority") == "high":
                self.device_alarms[str(d["alarm"])] = (str(d.get("text", d["alarm"])), event.ts)
                return True
            return False
        if event.kind is not EventKind.FINDING:
            return False
        code, text, value = d.get("code"), str(d.get("text", "")), d.get("value")
        if code == FindingCode.AVPU:
            self.consciousness = _CONSCIOUSNESS.get(text.strip().upper()[:1], self.consciousness)
        elif code == FindingCode.SUPPLEMENTAL_O2 and isinstance(value, int | float):
            self.on_oxygen = value > 0
        elif code == FindingCode.SPO2_SCALE_2:
            self.spo2_scale = SpO2Scale.SCALE_2
        elif code == FindingCode.GCS and isinstance(value, int | float):
            self.gcs = int(value)
        elif code == FindingCode.RACE and isinstance(value, int | float):
            self.race, self.race_at = float(value), event.ts
        elif code == FindingCode.LAST_KNOWN_WELL and isinstance(d.get("at"), int):
            self.last_known_well_at = int(d["at"])
        elif code == FindingCode.TRAUMA_CRITERIA:
            if text not in self.trauma_criteria:
                self.trauma_criteria.append(text)
            self.trauma_at = self.trauma_at or event.ts
        else:
            return False
        return True

    def observe_ecg(self, findings: EcgFindings, at: int) -> None:
        if self.ecg_at is None or at >= self.ecg_at:
            self.ecg, self.ecg_at = findings, at


def evaluate(state: PatientState, thresholds: Thresholds) -> dict[AlertKind, Condition]:
    """Every condition that holds for this patient state."""
    out: dict[AlertKind, Condition] = {}
    at = state.vitals_at or 0
    v = state.vitals
    for condition in (
        _vital_bands(v, thresholds, at),
        _news2(state, thresholds, at),
        _shock_index(v, thresholds, at),
        _qsofa(state, at),
        _stemi(state),
        _stroke(state, thresholds),
        _trauma(state),
        _device_alarm(state),
    ):
        if condition is not None:
            out[condition.kind] = condition
    return out


def _vital_bands(v: dict[str, float], t: Thresholds, at: int) -> Condition | None:
    breaches: dict[str, float] = {}
    critical = False
    for name, band in t.vitals.items():
        value = v.get(name)
        if value is None:
            continue
        if (band.critical_low is not None and value < band.critical_low) or (
            band.critical_high is not None and value > band.critical_high
        ):
            breaches[name], critical = value, True
        elif (band.low is not None and value < band.low) or (band.high is not None and value > band.high):
            breaches[name] = value
    if not breaches:
        return None
    summary = ", ".join(f"{name.upper()} {value:g}" for name, value in sorted(breaches.items()))
    severity = Severity.CRITICAL if critical else Severity.WARNING
    return Condition(AlertKind.VITAL_THRESHOLD, severity, summary, {"breaches": breaches}, at)


def _news2(state: PatientState, t: Thresholds, at: int) -> Condition | None:
    v = state.vitals
    try:
        result = news2(
            News2Inputs(
                respiration_rate=v.get("rr"),
                spo2=v.get("spo2"),
                on_oxygen=state.on_oxygen,
                systolic_bp=v.get("sbp"),
                pulse=v.get("hr"),
                consciousness=state.consciousness,
                temperature=v.get("temp"),
                spo2_scale=state.spo2_scale,
            )
        )
    except ScoreInputError:
        return None  # the codec's ranges make this unreachable; a score is never worth a crash
    if result.total >= t.news2_critical:
        severity = Severity.CRITICAL
    elif result.total >= t.news2_warning or result.any_single_3:
        severity = Severity.WARNING
    else:
        return None
    partial = bool(result.missing)
    summary = f"NEWS2 {'≥ ' if partial else ''}{result.total} ({result.clinical_risk.value} risk)"
    detail = {
        "total": result.total,
        "partial": partial,
        "missing": [str(m) for m in result.missing],
        "risk": result.clinical_risk.value,
        "high_risk": result.clinical_risk is ClinicalRisk.HIGH,
    }
    return Condition(AlertKind.NEWS2, severity, summary, detail, at)


def _shock_index(v: dict[str, float], t: Thresholds, at: int) -> Condition | None:
    si = shock_index(v.get("hr"), v.get("sbp"))
    if si.value is None or not si.shock_index_alert:
        return None
    severity = Severity.CRITICAL if si.value >= t.shock_index_critical else Severity.WARNING
    return Condition(AlertKind.SHOCK_INDEX, severity, f"shock index {si.value:.2f}", {"value": si.value}, at)


def _qsofa(state: PatientState, at: int) -> Condition | None:
    result = qsofa(
        respiratory_rate=state.vitals.get("rr"),
        systolic_bp=state.vitals.get("sbp"),
        gcs=state.gcs,
        consciousness=state.consciousness,
    )
    if not result.positive:
        return None
    return Condition(AlertKind.QSOFA, Severity.WARNING, f"qSOFA {result.score} (sepsis?)", {"score": result.score}, at)


def _stemi(state: PatientState) -> Condition | None:
    ecg = state.ecg
    if ecg is None or not ecg.stemi or state.ecg_at is None:
        return None
    territory = ecg.stemi_territory or "unspecified"
    detail = {
        "territory": territory,
        "leads": list(ecg.st_elevation_leads),
        "reciprocal": list(ecg.reciprocal_depression),
        "st_mv": {k: round(x, 3) for k, x in ecg.st_deviation_mv.items()},
        "heart_rate": None if ecg.heart_rate_bpm != ecg.heart_rate_bpm else round(ecg.heart_rate_bpm),
        "reasons": list(ecg.reasons),
    }
    summary = f"STEMI, {territory}" + (
        f"; reciprocal {', '.join(ecg.reciprocal_depression)}" if ecg.reciprocal_depression else ""
    )
    return Condition(AlertKind.STEMI, Severity.CRITICAL, summary, detail, state.ecg_at)


def _stroke(state: PatientState, t: Thresholds) -> Condition | None:
    if state.race is None or state.race <= t.race_lvo or state.race_at is None:
        return None
    detail = {
        "race": state.race,
        "last_known_well_at": state.last_known_well_at,
        "recommendation": "thrombectomy-capable centre",
    }
    summary = f"large-vessel-occlusion stroke suspected (RACE {state.race:g})"
    return Condition(AlertKind.LVO_STROKE, Severity.CRITICAL, summary, detail, state.race_at)


def _trauma(state: PatientState) -> Condition | None:
    if not state.trauma_criteria or state.trauma_at is None:
        return None
    summary = "major trauma: " + "; ".join(state.trauma_criteria)
    return Condition(
        AlertKind.TRAUMA, Severity.CRITICAL, summary, {"criteria": list(state.trauma_criteria)}, state.trauma_at
    )


DEVICE_ALARM_HOLD_US = 60_000_000  # a monitor alarm holds for a minute of device time after its last report


def _device_alarm(state: PatientState) -> Condition | None:
    now = state.vitals_at or 0
    for alarm, (_, at) in list(state.device_alarms.items()):
        if now - at > DEVICE_ALARM_HOLD_US:
            del state.device_alarms[alarm]
    if not state.device_alarms:
        return None
    latest = max(at for _, at in state.device_alarms.values())
    summary = "monitor alarm: " + "; ".join(text for text, _ in state.device_alarms.values())
    return Condition(AlertKind.DEVICE_ALARM, Severity.WARNING, summary, {"alarms": sorted(state.device_alarms)}, latest)
