"""The ATMIST-ER handoff: what the crew reads to the receiving team, composed from the encounter's records.

`compose_handoff` is a pure function of the records it is given and of `now_us`: no clock, no I/O. Every section
has a composed text that is short enough to read aloud; the crew may override any section (the override is kept in
`Encounter.handoff_notes` under the section's key), and the composed text stays available beside it. A fact that is
not known reads "unknown"; nothing is guessed.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from emergency.care._model import (
    Activation,
    ActivationState,
    Alert,
    AlertKind,
    AlertState,
    Encounter,
    Finding,
    Team,
    Treatment,
)
from emergency.ecg import EcgFindings
from emergency.protocol import FindingCode, Vitals
from emergency.scores import (
    Consciousness,
    News2Inputs,
    News2Parameter,
    News2Result,
    ScoreInputError,
    SpO2Scale,
    news2,
)
from emergency.sites import Capability, Hospital

__all__ = ["Handoff", "HandoffSection", "SectionKey", "compose_handoff", "latest_vitals", "news2_for_encounter"]

UNKNOWN = "unknown"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SectionKey(enum.StrEnum):
    """The sections of ATMIST-ER, in the order they are read. The value is the key of a crew override."""

    AGE = "age"
    TIME_OF_ONSET = "time_of_onset"
    MECHANISM = "mechanism"
    INJURIES = "injuries"
    SIGNS = "signs"
    TREATMENT = "treatment"
    ETA = "eta"
    REQUIREMENTS = "requirements"


SECTION_TITLES: dict[SectionKey, str] = {
    SectionKey.AGE: "Age",
    SectionKey.TIME_OF_ONSET: "Time of onset",
    SectionKey.MECHANISM: "Mechanism / complaint",
    SectionKey.INJURIES: "Injuries / illness",
    SectionKey.SIGNS: "Signs",
    SectionKey.TREATMENT: "Treatment given",
    SectionKey.ETA: "ETA",
    SectionKey.REQUIREMENTS: "Requirements on arrival",
}


@dataclass(frozen=True, slots=True)
class HandoffSection:
    """One ATMIST-ER section: the composed `text` and, when the crew overrode it, their `edited` text."""

    key: SectionKey
    title: str
    text: str
    edited: str | None = None

    @property
    def effective(self) -> str:
        """What is read aloud: the crew's text when they wrote one, else the composed text."""
        return self.edited if self.edited is not None else self.text

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key.value,
            "title": self.title,
            "text": self.text,
            "edited": self.edited,
            "effective": self.effective,
        }


@dataclass(frozen=True, slots=True)
class Handoff:
    """An encounter's ATMIST-ER handoff as composed at `composed_at` (µs since the epoch, center clock).

    `sections` holds exactly one section per `SectionKey`, in ATMIST-ER order. `news2` is the score the Signs
    section quotes (None when no vitals were given or the vitals could not be scored).
    """

    encounter_id: int
    alias: str
    composed_at: int
    sections: tuple[HandoffSection, ...]
    news2: News2Result | None = None

    def section(self, key: SectionKey | str) -> HandoffSection:
        for s in self.sections:
            if s.key == key:
                return s
        raise KeyError(key)

    def as_json(self) -> dict[str, Any]:
        """A JSON-compatible dict for the console."""
        return {
            "encounter_id": self.encounter_id,
            "alias": self.alias,
            "composed_at": self.composed_at,
            "sections": [s.as_json() for s in self.sections],
            "news2": None
            if self.news2 is None
            else {
                "total": self.news2.total,
                "partial": not self.news2.complete,
                "missing": [str(m) for m in self.news2.missing],
                "risk": self.news2.clinical_risk.value,
            },
        }

    def as_text(self) -> str:
        """Plain text for read-back: one line per section, "Title: text", crew overrides in place."""
        return "\n".join(f"{s.title}: {s.effective}" for s in self.sections)


# --- reading the encounter --------------------------------------------------------------------------------------


def _latest_finding(encounter: Encounter, code: FindingCode) -> Finding | None:
    found = [f for f in encounter.findings if f.code == code]
    return max(found, key=lambda f: f.at) if found else None


def _consciousness(encounter: Encounter) -> Consciousness | None:
    finding = _latest_finding(encounter, FindingCode.AVPU)
    if finding is None:
        return None
    letter = finding.text.strip().upper()[:1]
    return next((c for c in Consciousness if c.value == letter), None)


def _on_oxygen(encounter: Encounter) -> bool | None:
    finding = _latest_finding(encounter, FindingCode.SUPPLEMENTAL_O2)
    if finding is None or finding.value is None:
        return None
    return finding.value > 0


def spo2_scale_of(encounter: Encounter) -> SpO2Scale:
    """The NEWS2 SpO2 scale the crew recorded for `encounter` (scale 1 unless they recorded scale 2)."""
    # Scale 2 is a recorded clinical decision; it is never inferred, so without the finding scale 1 applies.
    return SpO2Scale.SCALE_2 if _latest_finding(encounter, FindingCode.SPO2_SCALE_2) else SpO2Scale.SCALE_1


_VITAL_FIELDS = ("hr", "sbp", "dbp", "map", "spo2", "rr", "temp", "etco2")


def latest_vitals(vitals: Sequence[Vitals]) -> Vitals | None:
    """The latest known value of every vital sign in `vitals` (any order), as one `Vitals` at the latest time.

    A monitor reports the cuff pressure only when it takes a reading, so the newest message alone usually lacks
    it; this folds the sets in device-time order the way the alerting rules do. The cuff reading keeps its own
    `nibp_ts`. None for no vitals.
    """
    if not vitals:
        return None
    ordered = sorted(vitals, key=lambda v: (v.ts, v.boot, v.seq))
    values: dict[str, float] = {}
    nibp_ts: int | None = None
    for v in ordered:
        for name in _VITAL_FIELDS:
            value = getattr(v, name)
            if value is not None:
                values[name] = value
        if v.sbp is not None or v.dbp is not None or v.map is not None:
            nibp_ts = v.nibp_ts if v.nibp_ts is not None else v.ts
    last = ordered[-1]
    return Vitals(last.unit, last.boot, last.seq, last.ts, nibp_ts=nibp_ts, **values)


def news2_for_encounter(encounter: Encounter, vitals: Vitals | None) -> News2Result | None:
    """NEWS2 from the monitor's `vitals` and the crew's ACVPU, oxygen and SpO2-scale findings on `encounter`.

    None when there are no vitals or they cannot be scored (a value no patient can have). The result is partial
    (`missing` non-empty) while consciousness or oxygen have not been recorded.
    """
    if vitals is None:
        return None
    inputs = News2Inputs.from_vitals(
        vitals,
        on_oxygen=_on_oxygen(encounter),
        consciousness=_consciousness(encounter),
        spo2_scale=spo2_scale_of(encounter),
    )
    try:
        return news2(inputs)
    except ScoreInputError:
        return None


# --- formatting -------------------------------------------------------------------------------------------------


def _clock(at_us: int, tz: tzinfo) -> str:
    return (_EPOCH + timedelta(microseconds=at_us)).astimezone(tz).strftime("%H:%M")


def _minutes(delta_us: int) -> int:
    return round(delta_us / 60_000_000)


def _ago(at_us: int, now_us: int) -> str:
    minutes = _minutes(now_us - at_us)
    if minutes <= 0:
        return "just now"
    return f"{minutes} min ago" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min ago"


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


def _dose(treatment: Treatment) -> str:
    if treatment.dose is None:
        return ""
    return f" {_number(treatment.dose)}{(' ' + treatment.dose_unit) if treatment.dose_unit else ''}"


_TEAM_NAMES = {Team.CATH_LAB: "cath lab", Team.STROKE: "stroke team", Team.TRAUMA: "trauma team"}
_OPEN = frozenset({AlertState.RAISED, AlertState.DELIVERED, AlertState.ACKNOWLEDGED})
_DIAGNOSIS_ALERTS = (AlertKind.STEMI, AlertKind.LVO_STROKE, AlertKind.TRAUMA)
# Findings that are read into NEWS2 or timing, not listed as illness findings.
_NOT_ILLNESS = frozenset(
    {
        FindingCode.AVPU,
        FindingCode.SUPPLEMENTAL_O2,
        FindingCode.SPO2_SCALE_2,
        FindingCode.LAST_KNOWN_WELL,
        FindingCode.SYMPTOM_ONSET,
    }
)


# --- the sections -----------------------------------------------------------------------------------------------


def _age(encounter: Encounter) -> str:
    sex = encounter.sex if encounter.sex in ("male", "female") else None
    if encounter.age is None:
        return f"age {UNKNOWN}, {sex}" if sex else f"age {UNKNOWN}, sex {UNKNOWN}"
    return f"{encounter.age}-year-old {sex}" if sex else f"{encounter.age} years, sex {UNKNOWN}"


def _time_of_onset(encounter: Encounter, now_us: int, tz: tzinfo) -> str:
    parts: list[str] = []
    if encounter.symptom_onset_at is not None:
        at = encounter.symptom_onset_at
        parts.append(f"symptom onset {_clock(at, tz)} ({_ago(at, now_us)})")
    if encounter.last_known_well_at is not None:
        at = encounter.last_known_well_at
        parts.append(f"last known well {_clock(at, tz)} ({_ago(at, now_us)})")
    if not parts:
        parts.append(f"onset {UNKNOWN}")
    parts.append(f"first medical contact {_clock(encounter.contact_at, tz)}")
    return "; ".join(parts)


def _mechanism(encounter: Encounter) -> str:
    complaint = (encounter.chief_complaint or "").strip()
    return complaint or UNKNOWN


def _injuries(encounter: Encounter, ecg: EcgFindings | None, alerts: Sequence[Alert]) -> str:
    items: list[str] = []
    if encounter.diagnosis:
        items.append(encounter.diagnosis.strip())
    if ecg is not None and ecg.stemi:
        items.append(f"STEMI ({ecg.stemi_territory})" if ecg.stemi_territory else "STEMI")
    for alert in sorted(alerts, key=lambda a: a.raised_at):
        if alert.kind in (AlertKind.LVO_STROKE, AlertKind.TRAUMA) and alert.state in _OPEN:
            items.append(alert.summary)
    for finding in sorted(encounter.findings, key=lambda f: f.at):
        if finding.code in _NOT_ILLNESS:
            continue
        if finding.code in (FindingCode.RACE, FindingCode.GCS) and finding.value is not None:
            items.append(f"{'RACE' if finding.code == FindingCode.RACE else 'GCS'} {_number(finding.value)}")
        elif finding.text.strip():
            items.append(finding.text.strip())
    unique = list(dict.fromkeys(i for i in items if i))
    return "; ".join(unique) if unique else UNKNOWN


def _vitals_text(vitals: Vitals) -> str:
    parts: list[str] = []
    if vitals.hr is not None:
        parts.append(f"HR {_number(vitals.hr)}")
    if vitals.sbp is not None:
        parts.append(f"BP {_number(vitals.sbp)}" + (f"/{_number(vitals.dbp)}" if vitals.dbp is not None else ""))
    if vitals.spo2 is not None:
        parts.append(f"SpO2 {_number(vitals.spo2)}%")
    if vitals.rr is not None:
        parts.append(f"RR {_number(vitals.rr)}")
    if vitals.temp is not None:
        parts.append(f"temp {vitals.temp:.1f} °C")
    if vitals.etco2 is not None:
        parts.append(f"EtCO2 {_number(vitals.etco2)} mmHg")
    return ", ".join(parts)


_NEWS2_MISSING_WORDS = {
    News2Parameter.RESPIRATION_RATE: "RR",
    News2Parameter.SPO2: "SpO2",
    News2Parameter.AIR_OR_OXYGEN: "oxygen",
    News2Parameter.SYSTOLIC_BP: "BP",
    News2Parameter.PULSE: "pulse",
    News2Parameter.CONSCIOUSNESS: "ACVPU",
    News2Parameter.TEMPERATURE: "temp",
}


def _news2_text(result: News2Result) -> str:
    if result.complete:
        return f"NEWS2 {result.total} ({result.clinical_risk.value} risk)"
    missing = ", ".join(_NEWS2_MISSING_WORDS[m] for m in result.missing)
    return f"NEWS2 at least {result.total}, partial ({missing} {UNKNOWN})"


def _ecg_text(ecg: EcgFindings) -> str:
    rate = f"rate {ecg.heart_rate_bpm:.0f}" if math.isfinite(ecg.heart_rate_bpm) else f"rate {UNKNOWN}"
    if ecg.quality == "unusable":
        reason = ecg.reasons[0] if ecg.reasons else "no reason given"
        return f"ECG unusable ({reason})"
    if ecg.stemi:
        text = f"ECG {rate}, STEMI {ecg.stemi_territory or ''}".rstrip()
        if ecg.st_elevation_leads:
            leads = ", ".join(lead.replace("-aVR", "−aVR") for lead in ecg.st_elevation_leads)
            text += f", ST elevation in {leads}"
        if ecg.reciprocal_depression:
            text += f", reciprocal depression in {', '.join(ecg.reciprocal_depression)}"
        return text
    detail = ecg.reasons[0] if ecg.reasons else "no STEMI"
    return f"ECG {rate}, {detail}"


def _signs(encounter: Encounter, vitals: Vitals | None, ecg: EcgFindings | None, result: News2Result | None) -> str:
    parts: list[str] = []
    if vitals is not None and (text := _vitals_text(vitals)):
        parts.append(text)
    else:
        parts.append(f"vitals {UNKNOWN}")
    consciousness = _consciousness(encounter)
    if consciousness is not None:
        parts.append(f"ACVPU {consciousness.value}")
    if result is not None:
        parts.append(_news2_text(result))
    parts.append(_ecg_text(ecg) if ecg is not None else f"ECG {UNKNOWN}")
    return "; ".join(parts)


def _treatment(encounter: Encounter, tz: tzinfo) -> str:
    given = sorted(encounter.treatments, key=lambda t: t.at)
    if not given:
        return "none recorded"
    return "; ".join(f"{t.text.strip()}{_dose(t)} at {_clock(t.at, tz)}" for t in given)


def _destination_name(encounter: Encounter, hospital: Hospital | None) -> str | None:
    if hospital is not None:
        return hospital.name
    return encounter.destination


def _eta(encounter: Encounter, hospital: Hospital | None, now_us: int, tz: tzinfo) -> str:
    destination = _destination_name(encounter, hospital)
    if encounter.door_at is not None:
        where = f" at {destination}" if destination else ""
        return f"arrived {_clock(encounter.door_at, tz)}{where}"
    to = f"to {destination}" if destination else f"destination {UNKNOWN}"
    if encounter.eta_at is None:
        return f"{UNKNOWN}, {to}"
    minutes = _minutes(encounter.eta_at - now_us)
    when = f"in {minutes} min" if minutes > 0 else ("now" if minutes == 0 else f"{-minutes} min overdue")
    return f"{_clock(encounter.eta_at, tz)} ({when}) {to}"


def _activation_text(activation: Activation, tz: tzinfo) -> str:
    team = _TEAM_NAMES.get(activation.team, activation.team.value)
    if activation.state is ActivationState.ACKNOWLEDGED and activation.acknowledged_at is not None:
        return f"{team} activated (confirmed {_clock(activation.acknowledged_at, tz)})"
    if activation.state is ActivationState.CANCELLED:
        return f"{team} activation cancelled"
    return f"{team} activation requested {_clock(activation.requested_at, tz)}, awaiting confirmation"


def _requirements(
    alerts: Sequence[Alert],
    activations: Sequence[Activation],
    hospital: Hospital | None,
    tz: tzinfo,
) -> str:
    items = [_activation_text(a, tz) for a in sorted(activations, key=lambda a: a.requested_at)]
    active_teams = {a.team for a in activations if a.state is not ActivationState.CANCELLED}
    for alert in sorted(alerts, key=lambda a: a.raised_at):
        if alert.state not in _OPEN or alert.kind not in _DIAGNOSIS_ALERTS:
            continue
        if alert.kind is AlertKind.STEMI and Team.CATH_LAB not in active_teams:
            items.append("primary PCI: cath lab not yet activated")
        elif alert.kind is AlertKind.LVO_STROKE:
            recommendation = str(alert.detail.get("recommendation") or "thrombectomy-capable centre")
            if hospital is not None and Capability.THROMBECTOMY not in hospital.capabilities:
                recommendation += f" ({hospital.name} cannot do thrombectomy)"
            items.append(recommendation)
            if Team.STROKE not in active_teams:
                items.append("stroke team not yet activated")
        elif alert.kind is AlertKind.TRAUMA and Team.TRAUMA not in active_teams:
            items.append("trauma team not yet activated")
    unique = list(dict.fromkeys(items))
    return "; ".join(unique) if unique else "none"


def compose_handoff(
    encounter: Encounter,
    *,
    vitals: Vitals | None,
    ecg: EcgFindings | None,
    alerts: Sequence[Alert],
    activations: Sequence[Activation],
    hospital: Hospital | None,
    now_us: int,
    tz: str | None = None,
) -> Handoff:
    """The ATMIST-ER handoff of `encounter` as of `now_us` (µs since the epoch).

    `vitals` is the latest set from the monitor, `ecg` the latest 12-lead analysis; `alerts` and `activations` are
    the encounter's. Clock times are HH:MM in UTC, or in the IANA zone `tz` (e.g. "Asia/Shanghai"); an unknown
    zone raises `zoneinfo.ZoneInfoNotFoundError` (a KeyError).
    """
    zone: tzinfo = UTC if tz is None else ZoneInfo(tz)
    score = news2_for_encounter(encounter, vitals)
    texts = {
        SectionKey.AGE: _age(encounter),
        SectionKey.TIME_OF_ONSET: _time_of_onset(encounter, now_us, zone),
        SectionKey.MECHANISM: _mechanism(encounter),
        SectionKey.INJURIES: _injuries(encounter, ecg, alerts),
        SectionKey.SIGNS: _signs(encounter, vitals, ecg, score),
        SectionKey.TREATMENT: _treatment(encounter, zone),
        SectionKey.ETA: _eta(encounter, hospital, now_us, zone),
        SectionKey.REQUIREMENTS: _requirements(alerts, activations, hospital, zone),
    }
    sections = tuple(
        HandoffSection(key, SECTION_TITLES[key], texts[key], encounter.handoff_notes.get(key.value))
        for key in SectionKey
    )
    return Handoff(encounter.id, encounter.alias, now_us, sections, score)
