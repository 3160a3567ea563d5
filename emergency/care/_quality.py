"""Quality indicators of the chain of survival: per encounter, then over a period.

`encounter_indicators` turns one encounter's records into intervals (seconds, `None` when either end was not recorded)
and flags; `aggregate` summarises them per indicator (count, median, p90, share meeting the target) with the rates
the China Chest Pain Center accreditation asks for. Both are pure: no I/O, no clock. Targets, populations and their
sources are in docs/quality-indicators.md.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import io
import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from emergency.care._model import (
    Activation,
    ActivationState,
    Alert,
    AlertKind,
    Encounter,
    ETime,
    Incident,
    Milestone,
    Team,
    TimeRecord,
)

MINUTE_S = 60

# A patient taken from the ambulance bay straight to the cath lab or the scanner gets there within minutes; one seen
# in the ED first (triage, 12-lead, physician review) rarely in under 15. Time is the only evidence recorded here of
# where the patient went, so the rule is a proxy for the accreditation's "bypassed the ED" (see the docs).
ED_BYPASS_WINDOW_S = 15 * MINUTE_S

_US_PER_S = 1_000_000
# ICD-10: I21.0–I21.3 are ST-elevation infarctions (I21.4 is NSTEMI); I63 is cerebral infarction.
_STEMI_DIAGNOSIS = re.compile(r"\bI21\.[0-3]|\bSTEMI\b", re.IGNORECASE)
_ISCHAEMIC_STROKE_DIAGNOSIS = re.compile(r"\bI63\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class EncounterIndicators:
    """One encounter's intervals in seconds (`None` when either end is missing, or when the end was recorded before
    the start — then the interval's name is in `inconsistent`) and flags (`None` when they cannot be determined)."""

    encounter_id: int
    incident_id: int
    unit: str
    destination: str | None
    contact_at: int  # first medical contact (FMC), µs
    door_at: int | None
    stemi: bool  # STEMI recognised at any point: alert, STEMI_DIAGNOSIS milestone or a STEMI discharge diagnosis
    stroke: bool  # LVO stroke alert or an ischaemic stroke (I63) discharge diagnosis
    call_to_fmc_s: float | None
    fmc_to_first_ecg_s: float | None
    first_ecg_to_transmission_s: float | None
    first_ecg_to_stemi_diagnosis_s: float | None
    fmc_to_door_s: float | None
    door_to_cath_lab_s: float | None
    door_to_balloon_s: float | None
    fmc_to_device_s: float | None
    door_to_needle_s: float | None
    door_to_ct_s: float | None
    door_to_puncture_s: float | None
    cath_lab_activation_to_ack_s: float | None
    stroke_activation_to_ack_s: float | None
    trauma_activation_to_ack_s: float | None
    ed_bypass: bool | None  # reached the cath lab or CT within ED_BYPASS_WINDOW_S of the door
    prehospital_activation: bool | None  # cath lab activated before the door; None without an activation or a door
    ecg_transmitted_prehospital: bool | None  # the first 12-lead reached the center before the door
    inconsistent: tuple[str, ...] = ()


def _first(times: Iterable[TimeRecord], name: str) -> int | None:
    found = [t.at for t in times if t.name == name]
    return min(found) if found else None


def _earliest(*candidates: int | None) -> int | None:
    present = [c for c in candidates if c is not None]
    return min(present) if present else None


def encounter_indicators(
    encounter: Encounter, incident: Incident, alerts: Iterable[Alert], activations: Iterable[Activation]
) -> EncounterIndicators:
    """The indicators of one encounter. Alerts and activations of other encounters are ignored; cancelled
    activations do not count. Intervals may cross clocks (a device's FMC, the center's call time), as recorded."""
    alerts = [a for a in alerts if a.encounter_id in (None, encounter.id)]
    activations = [a for a in activations if a.encounter_id == encounter.id and a.state != ActivationState.CANCELLED]

    def milestone(name: Milestone) -> int | None:
        return _first(encounter.times, name)

    # An incident opened by the crew's patient contact (created by the unit itself) carries the contact time as its
    # call time: there was no call to measure from.
    call_at = _first(incident.times, ETime.CALL_RECEIVED)
    if call_at is None and incident.created_by != incident.unit:
        call_at = incident.call_received_at
    fmc = encounter.contact_at
    door = _earliest(milestone(Milestone.DOOR), encounter.door_at)
    first_ecg = milestone(Milestone.FIRST_ECG)
    transmitted = milestone(Milestone.ECG_TRANSMITTED)
    stemi_alerts = [a.raised_at for a in alerts if a.kind == AlertKind.STEMI]
    stemi_at = _earliest(milestone(Milestone.STEMI_DIAGNOSIS), *stemi_alerts)
    diagnosis = encounter.diagnosis or ""
    stemi = stemi_at is not None or bool(_STEMI_DIAGNOSIS.search(diagnosis))
    stroke = any(a.kind == AlertKind.LVO_STROKE for a in alerts) or bool(_ISCHAEMIC_STROKE_DIAGNOSIS.search(diagnosis))

    def activated(team: Team) -> tuple[int | None, int | None]:
        mine = sorted((a for a in activations if a.team == team), key=lambda a: a.requested_at)
        if not mine:
            return None, None
        return mine[0].requested_at, mine[0].acknowledged_at

    cath_requested, cath_acknowledged = activated(Team.CATH_LAB)
    # A milestone entered at the console without an activation record still says when the lab was called.
    cath_activated_at = cath_requested if cath_requested is not None else milestone(Milestone.CATH_LAB_ACTIVATED)
    stroke_requested, stroke_acknowledged = activated(Team.STROKE)
    trauma_requested, trauma_acknowledged = activated(Team.TRAUMA)

    inconsistent: list[str] = []

    def interval(name: str, start: int | None, end: int | None) -> float | None:
        if start is None or end is None:
            return None
        if end < start:
            inconsistent.append(name)
            return None
        return (end - start) / _US_PER_S

    door_to_cath_lab = interval("door_to_cath_lab_s", door, milestone(Milestone.CATH_LAB_ARRIVAL))
    door_to_ct = interval("door_to_ct_s", door, milestone(Milestone.CT_START))
    to_lab_or_scanner = [s for s in (door_to_cath_lab, door_to_ct) if s is not None]
    ed_bypass = min(to_lab_or_scanner) <= ED_BYPASS_WINDOW_S if to_lab_or_scanner else None

    prehospital_activation = None
    if cath_activated_at is not None and door is not None:
        prehospital_activation = cath_activated_at < door

    ecg_transmitted_prehospital: bool | None = None
    if transmitted is not None and (door is None or transmitted < door):
        ecg_transmitted_prehospital = True
    elif door is not None:
        ecg_transmitted_prehospital = False

    return EncounterIndicators(
        encounter_id=encounter.id,
        incident_id=incident.id,
        unit=encounter.unit,
        destination=encounter.destination,
        contact_at=fmc,
        door_at=door,
        stemi=stemi,
        stroke=stroke,
        call_to_fmc_s=interval("call_to_fmc_s", call_at, fmc),
        fmc_to_first_ecg_s=interval("fmc_to_first_ecg_s", fmc, first_ecg),
        first_ecg_to_transmission_s=interval("first_ecg_to_transmission_s", first_ecg, transmitted),
        first_ecg_to_stemi_diagnosis_s=interval("first_ecg_to_stemi_diagnosis_s", first_ecg, stemi_at),
        fmc_to_door_s=interval("fmc_to_door_s", fmc, door),
        door_to_cath_lab_s=door_to_cath_lab,
        door_to_balloon_s=interval("door_to_balloon_s", door, milestone(Milestone.WIRE_CROSSING)),
        fmc_to_device_s=interval("fmc_to_device_s", fmc, milestone(Milestone.WIRE_CROSSING)),
        door_to_needle_s=interval("door_to_needle_s", door, milestone(Milestone.NEEDLE)),
        door_to_ct_s=door_to_ct,
        door_to_puncture_s=interval("door_to_puncture_s", door, milestone(Milestone.PUNCTURE)),
        cath_lab_activation_to_ack_s=interval("cath_lab_activation_to_ack_s", cath_requested, cath_acknowledged),
        stroke_activation_to_ack_s=interval("stroke_activation_to_ack_s", stroke_requested, stroke_acknowledged),
        trauma_activation_to_ack_s=interval("trauma_activation_to_ack_s", trauma_requested, trauma_acknowledged),
        ed_bypass=ed_bypass,
        prehospital_activation=prehospital_activation,
        ecg_transmitted_prehospital=ecg_transmitted_prehospital,
        inconsistent=tuple(inconsistent),
    )


# -- aggregation ---------------------------------------------------------------------------------------------------


class IndicatorKind(enum.StrEnum):
    INTERVAL = "interval"  # seconds between two times; summarised by median/p90 and the share within a target
    RATE = "rate"  # a yes/no flag; summarised by the share of yes


@dataclass(frozen=True, slots=True)
class IndicatorSpec:
    """What one report row measures: an `EncounterIndicators` field over a population, and its target if any."""

    key: str
    kind: IndicatorKind
    field: str  # the EncounterIndicators attribute
    description: str
    population: Callable[[EncounterIndicators], bool]
    target_s: float | None = None  # an interval meets the target when it is at most this long
    required_share: float | None = None  # the share the standard asks to meet the target (or to be yes)
    source: str = ""


def _everyone(_: EncounterIndicators) -> bool:
    return True


def _stemi(i: EncounterIndicators) -> bool:
    return i.stemi


def _stemi_only(i: EncounterIndicators) -> bool:
    return i.stemi and not i.stroke


def _stroke(i: EncounterIndicators) -> bool:
    return i.stroke


def _stroke_only(i: EncounterIndicators) -> bool:
    return i.stroke and not i.stemi


def _stemi_ppci(i: EncounterIndicators) -> bool:
    return i.stemi and i.door_to_balloon_s is not None


_CCPC = "China Chest Pain Center accreditation (re-accreditation data requirements)"
_AHA_STROKE = "AHA/ASA acute ischaemic stroke guideline 2019 (≤ 60 min in ≥ 50 %)"

INDICATORS: tuple[IndicatorSpec, ...] = (
    IndicatorSpec("call_to_fmc", IndicatorKind.INTERVAL, "call_to_fmc_s", "call received → first medical contact",
                  _everyone),
    IndicatorSpec("fmc_to_first_ecg", IndicatorKind.INTERVAL, "fmc_to_first_ecg_s", "FMC → first 12-lead ECG",
                  _everyone, 10 * MINUTE_S, 0.75, _CCPC),
    IndicatorSpec("first_ecg_to_transmission", IndicatorKind.INTERVAL, "first_ecg_to_transmission_s",
                  "first ECG → received by the center", _everyone),
    IndicatorSpec("first_ecg_to_stemi_diagnosis", IndicatorKind.INTERVAL, "first_ecg_to_stemi_diagnosis_s",
                  "first ECG → STEMI diagnosis", _stemi, 10 * MINUTE_S, None, _CCPC + " (monthly mean < 10 min)"),
    IndicatorSpec("fmc_to_door", IndicatorKind.INTERVAL, "fmc_to_door_s", "FMC → hospital door", _everyone),
    IndicatorSpec("door_to_cath_lab", IndicatorKind.INTERVAL, "door_to_cath_lab_s", "door → cath lab arrival", _stemi),
    IndicatorSpec("door_to_balloon", IndicatorKind.INTERVAL, "door_to_balloon_s", "door → wire crossing (STEMI)",
                  _stemi, 90 * MINUTE_S, 0.75, _CCPC),
    IndicatorSpec("fmc_to_device", IndicatorKind.INTERVAL, "fmc_to_device_s", "FMC → wire crossing (STEMI)",
                  _stemi, 120 * MINUTE_S, None, "ACC/AHA STEMI guideline 2013 (≤ 120 min when transferred)"),
    IndicatorSpec("door_to_needle_stemi", IndicatorKind.INTERVAL, "door_to_needle_s",
                  "door → fibrinolytic (STEMI)", _stemi_only, 30 * MINUTE_S, None, _CCPC + "; ACC/AHA 2013; ESC 2017"),
    IndicatorSpec("door_to_needle_stroke", IndicatorKind.INTERVAL, "door_to_needle_s",
                  "door → thrombolytic (stroke)", _stroke_only, 60 * MINUTE_S, 0.5, _AHA_STROKE),
    IndicatorSpec("door_to_ct", IndicatorKind.INTERVAL, "door_to_ct_s", "door → CT start (stroke)", _stroke,
                  25 * MINUTE_S, None, "NINDS door-to-CT goal (to completion; here to start)"),
    IndicatorSpec("door_to_puncture", IndicatorKind.INTERVAL, "door_to_puncture_s",
                  "door → arterial puncture (stroke)", _stroke, 90 * MINUTE_S, None,
                  "AHA Target: Stroke Phase III door-to-device goal, direct arrivals (unverified)"),
    IndicatorSpec("cath_lab_activation_to_ack", IndicatorKind.INTERVAL, "cath_lab_activation_to_ack_s",
                  "cath lab activation → team acknowledged", _everyone, 30 * MINUTE_S, None,
                  _CCPC + " (activation < 30 min, measured there to the lab being ready)"),
    IndicatorSpec("stroke_activation_to_ack", IndicatorKind.INTERVAL, "stroke_activation_to_ack_s",
                  "stroke team activation → acknowledged", _everyone),
    IndicatorSpec("trauma_activation_to_ack", IndicatorKind.INTERVAL, "trauma_activation_to_ack_s",
                  "trauma team activation → acknowledged", _everyone),
    IndicatorSpec("ed_bypass", IndicatorKind.RATE, "ed_bypass", "straight to cath lab or CT (all)", _everyone),
    IndicatorSpec("ed_bypass_stemi_ppci", IndicatorKind.RATE, "ed_bypass",
                  "straight to cath lab (STEMI with primary PCI)", _stemi_ppci, None, 0.30, _CCPC),
    IndicatorSpec("prehospital_activation", IndicatorKind.RATE, "prehospital_activation",
                  "cath lab activated before the door", _everyone),
    IndicatorSpec("ecg_transmission", IndicatorKind.RATE, "ecg_transmitted_prehospital",
                  "12-lead transmitted before the door (all)", _everyone),
    IndicatorSpec("ecg_transmission_stemi", IndicatorKind.RATE, "ecg_transmitted_prehospital",
                  "12-lead transmitted before the door (STEMI)", _stemi, None, 0.30, _CCPC),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class IndicatorSummary:
    """One report row. For an interval: `count` encounters of the population with a value, their median, p90 and
    mean, and `met` of them within `target_s`. For a rate: `count` encounters where the flag could be determined and
    `met` of them with yes. `proportion` is met / count (None when count is 0)."""

    indicator: str
    kind: IndicatorKind
    description: str
    count: int
    median_s: float | None
    p90_s: float | None
    mean_s: float | None
    target_s: float | None
    met: int | None
    proportion: float | None
    required_share: float | None
    inconsistent: int  # encounters of the population whose end time preceded the start (left out of count)
    source: str


def _p90(values: list[float]) -> float:
    if len(values) == 1:
        return values[0]
    # "inclusive": linear interpolation between order statistics (numpy's default, Excel's PERCENTILE.INC).
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def _summarise(spec: IndicatorSpec, rows: list[EncounterIndicators]) -> IndicatorSummary:
    population = [r for r in rows if spec.population(r)]
    inconsistent = sum(1 for r in population if spec.field in r.inconsistent)
    if spec.kind == IndicatorKind.RATE:
        flags = [v for r in population if isinstance(v := getattr(r, spec.field), bool)]
        yes = sum(flags)
        return IndicatorSummary(
            spec.key, spec.kind, spec.description, len(flags), None, None, None, None, yes,
            yes / len(flags) if flags else None, spec.required_share, inconsistent, spec.source,
        )  # fmt: skip
    values = sorted(float(v) for r in population if (v := getattr(r, spec.field)) is not None)
    met = None if spec.target_s is None else sum(1 for v in values if v <= spec.target_s)
    return IndicatorSummary(
        indicator=spec.key,
        kind=spec.kind,
        description=spec.description,
        count=len(values),
        median_s=statistics.median(values) if values else None,
        p90_s=_p90(values) if values else None,
        mean_s=statistics.fmean(values) if values else None,
        target_s=spec.target_s,
        met=met,
        proportion=met / len(values) if met is not None and values else None,
        required_share=spec.required_share,
        inconsistent=inconsistent,
        source=spec.source,
    )


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ";".join(str(v) for v in value)
    return str(value)


def _to_csv(header: list[str], rows: Iterable[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class QualityReport:
    """Indicators over the encounters whose first medical contact fell in [period_start_us, period_end_us)."""

    period_start_us: int
    period_end_us: int
    summaries: tuple[IndicatorSummary, ...]
    encounters: tuple[EncounterIndicators, ...]

    def summary(self, indicator: str) -> IndicatorSummary:
        for s in self.summaries:
            if s.indicator == indicator:
                return s
        raise KeyError(indicator)

    @property
    def ed_bypass_rate(self) -> float | None:
        return self.summary("ed_bypass").proportion

    @property
    def prehospital_activation_rate(self) -> float | None:
        return self.summary("prehospital_activation").proportion

    @property
    def ecg_transmission_rate(self) -> float | None:
        return self.summary("ecg_transmission").proportion

    def as_json(self) -> dict[str, Any]:
        """Plain JSON: the period, the encounter count, the three headline rates and one object per indicator."""
        return {
            "period_start_us": self.period_start_us,
            "period_end_us": self.period_end_us,
            "encounters": len(self.encounters),
            "ed_bypass_rate": self.ed_bypass_rate,
            "prehospital_activation_rate": self.prehospital_activation_rate,
            "ecg_transmission_rate": self.ecg_transmission_rate,
            "indicators": [dataclasses.asdict(s) | {"kind": s.kind.value} for s in self.summaries],
        }

    def to_csv(self) -> str:
        """One row per indicator (empty cells for values that do not apply or could not be computed)."""
        header = [f.name for f in dataclasses.fields(IndicatorSummary)]
        return _to_csv(header, ({n: getattr(s, n) for n in header} for s in self.summaries))

    def encounters_csv(self) -> str:
        """One row per encounter; flags as true/false, inconsistent interval names joined by ';'."""
        header = [f.name for f in dataclasses.fields(EncounterIndicators)]
        return _to_csv(header, ({n: getattr(e, n) for n in header} for e in self.encounters))


def aggregate(indicators: Iterable[EncounterIndicators], period_start_us: int, period_end_us: int) -> QualityReport:
    """Summarise the encounters whose FMC is in the half-open period; those outside it are left out."""
    rows = sorted(
        (i for i in indicators if period_start_us <= i.contact_at < period_end_us),
        key=lambda i: (i.contact_at, i.encounter_id),
    )
    return QualityReport(
        period_start_us=period_start_us,
        period_end_us=period_end_us,
        summaries=tuple(_summarise(spec, rows) for spec in INDICATORS),
        encounters=tuple(rows),
    )
