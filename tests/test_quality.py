"""Quality indicators: worked examples to the second for each interval and flag, missing and inconsistent times,
the period report's medians, p90s and proportions, and its CSV and JSON forms."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import pytest

from emergency.care import (
    Activation,
    ActivationState,
    Alert,
    AlertKind,
    AlertState,
    Encounter,
    EncounterIndicators,
    EncounterStatus,
    ETime,
    Incident,
    Milestone,
    Priority,
    Severity,
    Team,
    TimeRecord,
    TimeSource,
    aggregate,
    encounter_indicators,
)
from emergency.care._quality import ED_BYPASS_WINDOW_S, INDICATORS

T0 = 1_700_000_000_000_000  # the call, µs
S = 1_000_000  # one second in µs


def at(seconds: float) -> int:
    """A time `seconds` after the call."""
    return T0 + int(seconds * S)


def incident(*, created_by: str = "dispatcher-1", times: tuple[TimeRecord, ...] = ()) -> Incident:
    return Incident(
        id=7, call_received_at=T0, priority=Priority.IMMEDIATE, complaint="chest pain", lat=None, lon=None,
        address=None, unit="A12", created_by=created_by, times=times,
    )  # fmt: skip


def encounter(
    contact_s: float, milestones: dict[Milestone, float], *, encounter_id: int = 3, diagnosis: str | None = None
) -> Encounter:
    times = tuple(TimeRecord(name, at(s), TimeSource.DISPATCHER) for name, s in milestones.items())
    door = milestones.get(Milestone.DOOR)
    return Encounter(
        id=encounter_id, alias="Amber Falcon 27", incident_id=7, unit="A12", status=EncounterStatus.IN_HOSPITAL,
        contact_at=at(contact_s), destination="H1", door_at=at(door) if door is not None else None,
        diagnosis=diagnosis, times=times,
    )  # fmt: skip


def alert(kind: AlertKind, raised_s: float, *, encounter_id: int | None = 3) -> Alert:
    return Alert(
        id=11, unit="A12", encounter_id=encounter_id, kind=kind, severity=Severity.CRITICAL, state=AlertState.RAISED,
        summary=kind.value, detail={}, raised_at=at(raised_s), updated_at=at(raised_s),
    )  # fmt: skip


def activation(
    team: Team, requested_s: float, acknowledged_s: float | None, *, state: ActivationState | None = None
) -> Activation:
    return Activation(
        id=21, encounter_id=3, team=team,
        state=state or (ActivationState.ACKNOWLEDGED if acknowledged_s is not None else ActivationState.REQUESTED),
        reason="", requested_at=at(requested_s), requested_by="center",
        acknowledged_at=at(acknowledged_s) if acknowledged_s is not None else None,
    )  # fmt: skip


# A STEMI: contact 9 min 30 s after the call, first 12-lead 4 min 5 s later, received by the center 7 s after that,
# STEMI called 3 min 20 s after the first ECG, the cath lab called 1 min later and acknowledging after 1 min 35 s,
# door 38 min after contact, in the lab 6 min 10 s after the door and the wire across 41 min 15 s after the door.
FMC_S = 570.0
ECG_S = FMC_S + 245
DOOR_S = FMC_S + 38 * 60
STEMI_MILESTONES = {
    Milestone.FIRST_ECG: ECG_S,
    Milestone.ECG_TRANSMITTED: ECG_S + 7,
    Milestone.STEMI_DIAGNOSIS: ECG_S + 200,
    Milestone.CATH_LAB_ACTIVATED: ECG_S + 260,
    Milestone.DOOR: DOOR_S,
    Milestone.CATH_LAB_ARRIVAL: DOOR_S + 370,
    Milestone.WIRE_CROSSING: DOOR_S + 2475,
}


def stemi_indicators() -> EncounterIndicators:
    return encounter_indicators(
        encounter(FMC_S, STEMI_MILESTONES),
        incident(),
        [alert(AlertKind.STEMI, ECG_S + 200)],
        [activation(Team.CATH_LAB, ECG_S + 260, ECG_S + 355)],
    )


def test_stemi_intervals_to_the_second() -> None:
    """Every STEMI interval is the difference of its two recorded times, in seconds."""
    i = stemi_indicators()
    assert i.stemi and not i.stroke
    assert i.call_to_fmc_s == 570.0
    assert i.fmc_to_first_ecg_s == 245.0
    assert i.first_ecg_to_transmission_s == 7.0
    assert i.first_ecg_to_stemi_diagnosis_s == 200.0
    assert i.fmc_to_door_s == 2280.0
    assert i.door_to_cath_lab_s == 370.0
    assert i.door_to_balloon_s == 2475.0
    assert i.fmc_to_device_s == 2280.0 + 2475.0
    assert i.cath_lab_activation_to_ack_s == 95.0
    assert i.door_at == at(DOOR_S) and i.contact_at == at(FMC_S)
    assert i.inconsistent == ()


def test_stemi_flags() -> None:
    """A STEMI taken to the lab 6 min after the door, with the lab called and the ECG sent before it, bypassed the
    ED, was activated pre-hospital and had its ECG transmitted pre-hospital."""
    i = stemi_indicators()
    assert i.ed_bypass is True
    assert i.prehospital_activation is True
    assert i.ecg_transmitted_prehospital is True


def test_stroke_intervals_and_an_ed_stop() -> None:
    """A stroke scanned 19 min 12 s after the door did not bypass the ED; needle, puncture and stroke team
    acknowledgement are measured to the second."""
    milestones = {
        Milestone.DOOR: 1800.0,
        Milestone.CT_START: 1800.0 + 1152,
        Milestone.NEEDLE: 1800.0 + 2460,
        Milestone.PUNCTURE: 1800.0 + 4440,
    }
    i = encounter_indicators(
        encounter(600.0, milestones),
        incident(),
        [alert(AlertKind.LVO_STROKE, 900.0)],
        [activation(Team.STROKE, 900.0, 1042.5)],
    )
    assert i.stroke and not i.stemi
    assert i.door_to_ct_s == 1152.0
    assert i.door_to_needle_s == 2460.0
    assert i.door_to_puncture_s == 4440.0
    assert i.stroke_activation_to_ack_s == 142.5
    assert i.ed_bypass is False
    assert i.prehospital_activation is None  # no cath lab activation
    assert i.ecg_transmitted_prehospital is False  # a door but no 12-lead sent


def test_ed_bypass_window_edge() -> None:
    """Reaching the lab exactly ED_BYPASS_WINDOW_S after the door is a bypass; one second later is not."""
    for offset, expected in ((ED_BYPASS_WINDOW_S, True), (ED_BYPASS_WINDOW_S + 1, False)):
        e = encounter(0.0, {Milestone.DOOR: 1000.0, Milestone.CATH_LAB_ARRIVAL: 1000.0 + offset})
        assert encounter_indicators(e, incident(), [], []).ed_bypass is expected


def test_missing_ends_give_none() -> None:
    """An encounter with only its contact time has every interval and flag None."""
    i = encounter_indicators(encounter(300.0, {}), incident(), [], [])
    intervals = [f.name for f in dataclasses.fields(i) if f.name.endswith("_s")]
    assert i.call_to_fmc_s == 300.0  # the call and the contact are both known
    assert all(getattr(i, name) is None for name in intervals if name != "call_to_fmc_s")
    assert (i.ed_bypass, i.prehospital_activation, i.ecg_transmitted_prehospital) == (None, None, None)
    assert not i.stemi and not i.stroke and i.door_at is None


def test_an_incident_opened_by_the_crew_has_no_call_to_fmc() -> None:
    """An incident the unit opened at patient contact has no call time, so call-to-FMC is None, not zero."""
    i = encounter_indicators(encounter(0.0, {}), incident(created_by="A12"), [], [])
    assert i.call_to_fmc_s is None


def test_the_recorded_call_received_time_is_preferred() -> None:
    """An eTimes.01 record on the incident is the call time when present."""
    called = (TimeRecord(ETime.CALL_RECEIVED, at(-30), TimeSource.DISPATCHER),)
    i = encounter_indicators(encounter(90.0, {}), incident(times=called), [], [])
    assert i.call_to_fmc_s == 120.0


def test_an_end_before_its_start_is_reported_not_measured() -> None:
    """A wire crossing entered before the door leaves door-to-balloon None and names it as inconsistent."""
    e = encounter(0.0, {Milestone.DOOR: 2000.0, Milestone.WIRE_CROSSING: 1990.0})
    i = encounter_indicators(e, incident(), [], [])
    assert i.door_to_balloon_s is None and i.fmc_to_device_s == 1990.0
    assert i.inconsistent == ("door_to_balloon_s",)


def test_stemi_diagnosis_is_the_earliest_of_alert_and_milestone() -> None:
    """A STEMI alert raised before the recorded diagnosis milestone sets the diagnosis time."""
    e = encounter(0.0, {Milestone.FIRST_ECG: 60.0, Milestone.STEMI_DIAGNOSIS: 400.0})
    i = encounter_indicators(e, incident(), [alert(AlertKind.STEMI, 180.0)], [])
    assert i.first_ecg_to_stemi_diagnosis_s == 120.0


def test_stemi_from_the_discharge_diagnosis_but_not_nstemi() -> None:
    """A STEMI discharge code puts the encounter in the STEMI population; an NSTEMI code does not."""
    assert encounter_indicators(encounter(0.0, {}, diagnosis="I21.1 inferior STEMI"), incident(), [], []).stemi
    assert not encounter_indicators(encounter(0.0, {}, diagnosis="I21.4 NSTEMI"), incident(), [], []).stemi
    assert encounter_indicators(encounter(0.0, {}, diagnosis="I63.5 cerebral infarction"), incident(), [], []).stroke


def test_cancelled_activations_and_other_encounters_records_are_ignored() -> None:
    """A cancelled cath lab activation and another encounter's alert do not count."""
    e = encounter(0.0, {Milestone.DOOR: 1000.0})
    cancelled = activation(Team.CATH_LAB, 500.0, None, state=ActivationState.CANCELLED)
    i = encounter_indicators(e, incident(), [alert(AlertKind.STEMI, 100.0, encounter_id=99)], [cancelled])
    assert not i.stemi
    assert i.prehospital_activation is None and i.cath_lab_activation_to_ack_s is None


def test_activation_after_the_door_is_not_prehospital() -> None:
    """A cath lab called after the door is not a pre-hospital activation; called before a door that was never
    recorded cannot be judged."""
    after = encounter_indicators(
        encounter(0.0, {Milestone.DOOR: 1000.0}), incident(), [], [activation(Team.CATH_LAB, 1000.0, None)]
    )
    assert after.prehospital_activation is False
    unknown = encounter_indicators(encounter(0.0, {}), incident(), [], [activation(Team.CATH_LAB, 500.0, None)])
    assert unknown.prehospital_activation is None


def test_a_cath_lab_milestone_without_an_activation_record_counts() -> None:
    """A cath_lab_activated milestone entered at the console dates the activation when no record exists."""
    e = encounter(0.0, {Milestone.CATH_LAB_ACTIVATED: 700.0, Milestone.DOOR: 1000.0})
    assert encounter_indicators(e, incident(), [], []).prehospital_activation is True


def test_an_ecg_transmitted_after_the_door_is_not_prehospital() -> None:
    """A first 12-lead that reached the center after the door does not count as transmitted pre-hospital."""
    e = encounter(0.0, {Milestone.FIRST_ECG: 1100.0, Milestone.ECG_TRANSMITTED: 1101.0, Milestone.DOOR: 1000.0})
    assert encounter_indicators(e, incident(), [], []).ecg_transmitted_prehospital is False


# -- aggregation ---------------------------------------------------------------------------------------------------

BLANK = encounter_indicators(encounter(0.0, {}), incident(created_by="A12"), [], [])


def row(n: int, **values: object) -> EncounterIndicators:
    """The n-th encounter of a period, FMC n seconds after T0, with the given fields."""
    return dataclasses.replace(BLANK, encounter_id=n, contact_at=at(n), **values)  # type: ignore[arg-type]


def test_aggregate_medians_p90_and_proportions() -> None:
    """Five door-to-balloon times give their median, the inclusive p90, the mean and the share within 90 min."""
    rows = [row(n, stemi=True, door_to_balloon_s=s) for n, s in enumerate((5000.0, 3000.0, 7000.0, 4000.0, 6000.0))]
    report = aggregate(rows, T0, T0 + 3600 * S)
    d2b = report.summary("door_to_balloon")
    assert d2b.count == 5
    assert d2b.median_s == 5000.0
    assert d2b.p90_s == pytest.approx(6600.0)  # 6000 + 0.6 × (7000 − 6000)
    assert d2b.mean_s == 5000.0
    assert (d2b.target_s, d2b.met, d2b.proportion, d2b.required_share) == (5400.0, 3, 0.6, 0.75)


def test_aggregate_even_count_single_value_and_no_value() -> None:
    """An even count's median is the mean of the middle two, one value is its own p90, and no value gives None."""
    report = aggregate([row(0, fmc_to_first_ecg_s=600.0), row(1, fmc_to_first_ecg_s=601.0)], T0, T0 + 10 * S)
    ecg = report.summary("fmc_to_first_ecg")
    assert ecg.median_s == 600.5 and (ecg.met, ecg.proportion) == (1, 0.5)
    single = aggregate([row(0, call_to_fmc_s=42.0)], T0, T0 + 10 * S).summary("call_to_fmc")
    assert (single.count, single.median_s, single.p90_s, single.met, single.proportion) == (1, 42.0, 42.0, None, None)
    empty = report.summary("door_to_puncture")
    assert (empty.count, empty.median_s, empty.p90_s, empty.mean_s, empty.proportion) == (0, None, None, None, None)


def test_rates_count_only_determinable_flags() -> None:
    """A rate is yes over the encounters whose flag could be determined; undeterminable ones are left out."""
    rows = [
        row(0, ed_bypass=True, ecg_transmitted_prehospital=True, prehospital_activation=True),
        row(1, ed_bypass=False, ecg_transmitted_prehospital=False),
        row(2, ed_bypass=None, ecg_transmitted_prehospital=True),
        row(3, ed_bypass=True, ecg_transmitted_prehospital=None, prehospital_activation=False),
    ]
    report = aggregate(rows, T0, T0 + 10 * S)
    assert report.ed_bypass_rate == pytest.approx(2 / 3)
    assert report.ecg_transmission_rate == pytest.approx(2 / 3)
    assert report.prehospital_activation_rate == 0.5
    bypass = report.summary("ed_bypass")
    assert (bypass.count, bypass.met) == (3, 2)


def test_populations_split_door_to_needle_and_restrict_stemi_rates() -> None:
    """Door-to-needle is judged at 30 min for STEMI and 60 min for stroke; the CCPC rates count only STEMI."""
    rows = [
        row(0, stemi=True, door_to_needle_s=1700.0, ecg_transmitted_prehospital=True),
        row(1, stroke=True, door_to_needle_s=3500.0, ecg_transmitted_prehospital=False),
        row(2, stemi=True, stroke=True, door_to_needle_s=100.0),  # which drug for which diagnosis is unknown
        row(3, stemi=True, door_to_balloon_s=4000.0, ed_bypass=True),
        row(4, stemi=True, ed_bypass=False),  # no primary PCI: not in the CCPC bypass population
    ]
    report = aggregate(rows, T0, T0 + 10 * S)
    stemi, stroke = report.summary("door_to_needle_stemi"), report.summary("door_to_needle_stroke")
    assert (stemi.count, stemi.met, stemi.target_s) == (1, 1, 1800.0)
    assert (stroke.count, stroke.met, stroke.target_s) == (1, 1, 3600.0)
    assert report.summary("ecg_transmission_stemi").proportion == 1.0
    assert report.summary("ecg_transmission").proportion == 0.5
    assert (report.summary("ed_bypass_stemi_ppci").count, report.summary("ed_bypass_stemi_ppci").met) == (1, 1)


def test_period_is_half_open_over_fmc() -> None:
    """Encounters with FMC before the start or at the end of the period are left out."""
    rows = [row(n, call_to_fmc_s=float(n)) for n in range(5)]
    report = aggregate(rows, at(1), at(4))
    assert [e.encounter_id for e in report.encounters] == [1, 2, 3]
    assert report.summary("call_to_fmc").count == 3


def test_inconsistent_intervals_are_counted() -> None:
    """An interval whose end preceded its start is counted as inconsistent, not as a value."""
    rows = [row(0, stemi=True, inconsistent=("door_to_balloon_s",)), row(1, stemi=True, door_to_balloon_s=60.0)]
    d2b = aggregate(rows, T0, T0 + 10 * S).summary("door_to_balloon")
    assert (d2b.count, d2b.inconsistent) == (1, 1)


def test_indicators_csv_round_trip() -> None:
    """The indicator CSV has one row per indicator, and DictReader gives back every number and an empty cell for
    every None."""
    rows = [stemi_indicators(), row(1, stemi=True, door_to_balloon_s=6000.0, ed_bypass=False)]
    report = aggregate(rows, T0, T0 + 3600 * S)
    parsed = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert [r["indicator"] for r in parsed] == [spec.key for spec in INDICATORS]
    for summary, line in zip(report.summaries, parsed, strict=True):
        for name in ("count", "met", "inconsistent"):
            value = getattr(summary, name)
            assert line[name] == ("" if value is None else str(value))
        for name in ("median_s", "p90_s", "mean_s", "target_s", "proportion", "required_share"):
            value = getattr(summary, name)
            assert (float(line[name]) if line[name] else None) == value
        assert line["kind"] == summary.kind.value and line["source"] == summary.source
    d2b = next(r for r in parsed if r["indicator"] == "door_to_balloon")
    assert (d2b["count"], d2b["median_s"], d2b["met"], d2b["proportion"]) == ("2", "4237.5", "1", "0.5")


def test_encounters_csv_round_trip() -> None:
    """The encounter CSV has one row per encounter with intervals in seconds, flags as true/false and empty cells
    for what is unknown."""
    report = aggregate([stemi_indicators(), row(1, inconsistent=("door_to_ct_s", "door_to_needle_s"))], T0, at(3600))
    parsed = list(csv.DictReader(io.StringIO(report.encounters_csv())))
    assert [r["encounter_id"] for r in parsed] == ["1", "3"]  # in FMC order
    crew_opened, stemi = parsed
    assert stemi["door_to_balloon_s"] == "2475.0" and float(stemi["fmc_to_device_s"]) == 4755.0
    assert (stemi["ed_bypass"], stemi["stemi"], stemi["stroke"]) == ("true", "true", "false")
    assert crew_opened["call_to_fmc_s"] == "" and crew_opened["ed_bypass"] == ""
    assert crew_opened["inconsistent"] == "door_to_ct_s;door_to_needle_s"


def test_report_json_is_plain_json() -> None:
    """as_json survives json.dumps and carries the period, the rates and one object per indicator."""
    report = aggregate([stemi_indicators()], T0, at(3600))
    decoded = json.loads(json.dumps(report.as_json()))
    assert decoded["period_start_us"] == T0 and decoded["encounters"] == 1
    assert decoded["ed_bypass_rate"] == 1.0 and decoded["ecg_transmission_rate"] == 1.0
    by_key = {i["indicator"]: i for i in decoded["indicators"]}
    assert by_key["door_to_balloon"]["median_s"] == 2475.0 and by_key["door_to_balloon"]["kind"] == "interval"
    assert by_key["ed_bypass"]["kind"] == "rate"
