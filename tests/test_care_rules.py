"""The clinical loop's pure parts: rules over the patient state, the alert lifecycle, lateness and skew, aliases."""

from __future__ import annotations

import itertools

from emergency.care._alerts import AlertBook, AlertEvent, AlertPolicy
from emergency.care._alias import alias_for
from emergency.care._clock import ClockTracker
from emergency.care._model import AlertKind, AlertState, Severity
from emergency.care._rules import PatientState, Thresholds, evaluate
from emergency.protocol import DeviceEvent, EventKind, Vitals

S = 1_000_000
T0 = 1_800_000_000 * S


def vitals(ts: int, **values: float) -> Vitals:
    return Vitals("U1", 1, ts // S, ts, **values)  # type: ignore[arg-type]


def finding(ts: int, code: str, text: str = "x", value: float | None = None, at: int | None = None) -> DeviceEvent:
    detail: dict[str, str | int | float | bool] = {"code": code, "text": text}
    if value is not None:
        detail["value"] = value
    if at is not None:
        detail["at"] = at
    return DeviceEvent("U1", 1, 1000 + ts // S, ts, EventKind.FINDING, detail)


STABLE = {"hr": 72.0, "sbp": 125.0, "spo2": 97.0, "rr": 16.0, "temp": 36.8}


def test_stable_patient_holds_no_condition() -> None:
    """A stable adult's vitals raise nothing."""
    state = PatientState()
    state.observe_vitals(vitals(T0, **STABLE))
    assert evaluate(state, Thresholds()) == {}


def test_shock_raises_shock_index_vital_band_and_news2() -> None:
    """HR 135 / SBP 80 is a shock index above 1.0, a low-pressure band breach and a NEWS2 alert."""
    state = PatientState()
    state.observe_vitals(vitals(T0, hr=135, sbp=80, spo2=95, rr=24, temp=36.5))
    conditions = evaluate(state, Thresholds())
    assert conditions[AlertKind.SHOCK_INDEX].severity is Severity.CRITICAL  # 1.69 ≥ 1.4
    assert "SBP 80" in conditions[AlertKind.VITAL_THRESHOLD].summary
    assert conditions[AlertKind.NEWS2].detail["partial"] is True  # consciousness and oxygen not yet recorded


def test_crew_consciousness_completes_news2_and_qsofa() -> None:
    """New confusion recorded by the crew completes NEWS2 and, with RR ≥ 22 and SBP ≤ 100, makes qSOFA positive."""
    state = PatientState()
    state.observe_vitals(vitals(T0, hr=118, sbp=95, spo2=92, rr=26, temp=39.2))
    state.observe_event(finding(T0 + S, "avpu", "C"))
    state.observe_event(finding(T0 + S, "supplemental_o2", value=0))
    conditions = evaluate(state, Thresholds())
    assert conditions[AlertKind.NEWS2].detail == {
        "total": 14, "partial": False, "missing": [], "risk": "high", "high_risk": True,
    }  # fmt: skip
    assert conditions[AlertKind.QSOFA].detail["score"] == 3


def test_race_above_four_is_a_large_vessel_occlusion_alert_with_last_known_well() -> None:
    """RACE 7 raises the LVO alert carrying the last-known-well time and a thrombectomy recommendation."""
    state = PatientState()
    state.observe_event(finding(T0, "last_known_well", at=T0 - 45 * 60 * S))
    state.observe_event(finding(T0 + S, "race", value=7))
    lvo = evaluate(state, Thresholds())[AlertKind.LVO_STROKE]
    assert lvo.detail["last_known_well_at"] == T0 - 45 * 60 * S
    assert lvo.detail["recommendation"] == "thrombectomy-capable centre"


def test_replayed_older_vitals_do_not_overwrite_the_present() -> None:
    """A vitals message older than the newest known is ignored for the patient's state now."""
    state = PatientState()
    state.observe_vitals(vitals(T0 + 10 * S, **STABLE))
    assert not state.observe_vitals(vitals(T0, hr=30.0))
    assert state.vitals["hr"] == 72.0


def _book() -> AlertBook:
    return AlertBook(AlertPolicy(repeat_after_s=120, escalate_after_repeats=1, clear_after_s=60))


def test_a_persisting_condition_is_one_alert_that_updates() -> None:
    """Fifty frames showing the same condition raise one alert; a changed reading updates it, never re-raises it."""
    book, state = _book(), PatientState()
    events = []
    for i in range(50):
        state.observe_vitals(vitals(T0 + i * S, hr=135 if i < 25 else 140, sbp=80, spo2=97, rr=16, temp=36.8))
        conditions = evaluate(state, Thresholds())
        events += book.reconcile("U1", 7, conditions, at=T0 + i * S, now=T0 + i * S, backlog=False)
    kinds = [(c.event, c.alert.kind) for c in events]
    assert kinds.count((AlertEvent.RAISED, AlertKind.SHOCK_INDEX)) == 1
    assert (AlertEvent.UPDATED, AlertKind.SHOCK_INDEX) in kinds
    assert len(events) < 10


def test_unacknowledged_critical_alert_repeats_then_escalates_and_stops_when_acknowledged() -> None:
    """A critical alert repeats every 2 minutes and escalates to the second role; acknowledgement stops it."""
    book, state = _book(), PatientState()
    state.observe_vitals(vitals(T0, hr=135, sbp=70, spo2=97, rr=16, temp=36.8))
    book.reconcile("U1", 7, evaluate(state, Thresholds()), at=T0, now=T0, backlog=False)
    assert book.due(T0 + 60 * S) == []
    first = [c for c in book.due(T0 + 121 * S) if c.alert.kind is AlertKind.SHOCK_INDEX]
    assert first[0].event is AlertEvent.ESCALATED and first[0].alert.escalation == 1
    assert book.policy.roles(first[0].alert) == ("ed_physician",)
    again = [c for c in book.due(T0 + 242 * S) if c.alert.kind is AlertKind.SHOCK_INDEX]
    assert again[0].event is AlertEvent.REPEATED and again[0].alert.repeats == 2
    alert = book.open_alert("U1", AlertKind.SHOCK_INDEX)
    assert alert is not None
    book.merge_external(
        type(alert)(**{**{f: getattr(alert, f) for f in alert.__dataclass_fields__}, "state": AlertState.ACKNOWLEDGED})
    )
    assert [c for c in book.due(T0 + 400 * S) if c.alert.kind is AlertKind.SHOCK_INDEX] == []


def test_condition_resolves_only_after_it_stays_absent() -> None:
    """A reading-based alert resolves after its condition has been absent for clear_after_s of device time."""
    book, state = _book(), PatientState()
    state.observe_vitals(vitals(T0, hr=135, sbp=80, spo2=97, rr=16, temp=36.8))
    book.reconcile("U1", 7, evaluate(state, Thresholds()), at=T0, now=T0, backlog=False)
    state.observe_vitals(vitals(T0 + S, **STABLE))
    assert book.reconcile("U1", 7, evaluate(state, Thresholds()), at=T0 + S, now=T0 + S, backlog=False) == []
    later = book.reconcile("U1", 7, evaluate(state, Thresholds()), at=T0 + 62 * S, now=T0 + 62 * S, backlog=False)
    assert {c.alert.kind for c in later if c.event is AlertEvent.RESOLVED} >= {AlertKind.SHOCK_INDEX}


def test_a_units_evaluation_and_its_encounters_end_leave_other_units_alerts_alone() -> None:
    """The book keeps open alerts by unit: one unit's stable readings, or its encounter closing, never resolve
    another's alert; the other's repeats stay due."""
    book, shock, stable = _book(), PatientState(), PatientState()
    shock.observe_vitals(vitals(T0, hr=135, sbp=70, spo2=97, rr=16, temp=36.8))
    stable.observe_vitals(vitals(T0, **STABLE))
    raised = book.reconcile("U1", 7, evaluate(shock, Thresholds()), at=T0, now=T0, backlog=False)
    assert raised
    for at in range(T0 + S, T0 + 120 * S, S):
        assert book.reconcile("U2", 8, evaluate(stable, Thresholds()), at=at, now=at, backlog=False) == []
    assert book.close_unit("U2", at=T0 + 120 * S) == []
    assert {a.unit for a in book} == {"U1"} and len(list(book)) == len(raised)
    assert {c.alert.unit for c in book.due(T0 + 121 * S)} == {"U1"}
    assert {c.event for c in book.close_unit("U1", at=T0 + 122 * S)} == {AlertEvent.RESOLVED}
    assert list(book) == []


def test_backlog_condition_is_recorded_silently_and_goes_live_with_live_data() -> None:
    """A condition seen only in late data is a backlog alert (never repeated); live data makes it a live alert."""
    book, state = _book(), PatientState()
    state.observe_vitals(vitals(T0, hr=135, sbp=80, spo2=97, rr=16, temp=36.8))
    raised = book.reconcile("U1", 7, evaluate(state, Thresholds()), at=T0, now=T0 + 600 * S, backlog=True)
    assert all(c.alert.backlog for c in raised)
    assert book.due(T0 + 3600 * S) == []
    live = book.reconcile("U1", 7, evaluate(state, Thresholds()), at=T0 + 601 * S, now=T0 + 601 * S, backlog=False)
    assert {c.event for c in live} == {AlertEvent.RAISED} and not any(c.alert.backlog for c in live)


def test_replay_after_an_outage_is_late_but_a_skewed_clock_is_adopted_and_flagged() -> None:
    """A backlog draining fast is late; a steady 10-minute offset is adopted as skew after settling; a device
    ahead of the center is adopted at once."""
    replay = ClockTracker(late_after_s=30, settle_s=20)
    verdicts = [replay.observe(T0 + i * S, T0 + 600 * S + i * S // 50) for i in range(600)]
    assert all(v.late for v in verdicts[:500]) and replay.skew_us == 0

    behind = ClockTracker(late_after_s=30, settle_s=20)
    verdicts = [behind.observe(T0 + i * S - 600 * S, T0 + i * S) for i in range(40)]
    assert verdicts[0].late
    adopted = [v for v in verdicts if v.skew_adopted_s is not None]
    assert adopted and round(adopted[0].skew_adopted_s or 0) == -600
    assert not verdicts[-1].late

    ahead = ClockTracker(late_after_s=30, settle_s=20)
    first = ahead.observe(T0 + 600 * S, T0)
    assert not first.late and round(first.skew_adopted_s or 0) == 600


def test_the_centers_own_backlog_is_late_data_not_a_device_clock_skew() -> None:
    """While the gateway is behind, every unit's messages arrive with the same steady delay; that is not adopted as
    the device's skew (they are late), and once the center has caught up the readings are live again."""
    clock = ClockTracker(late_after_s=30, settle_s=20)
    backlog = [clock.observe(T0 + i * S - 40 * S, T0 + i * S, center_behind=True) for i in range(60)]
    assert all(v.late and v.skew_adopted_s is None for v in backlog) and clock.skew_us == 0
    caught_up = clock.observe(T0 + 60 * S, T0 + 60 * S)
    assert not caught_up.late and caught_up.skew_adopted_s is None


def test_aliases_are_unique_and_consecutive_ones_differ_in_the_first_word() -> None:
    """Aliases never repeat and two patients registered one after the other are told apart by their first word."""
    aliases = [alias_for(i) for i in range(1, 100_001)]
    assert len(set(aliases)) == len(aliases)
    assert all(a.split()[0] != b.split()[0] for a, b in itertools.pairwise(aliases[:1001]))


def test_a_hospitals_thresholds_file_replaces_bands_sign_by_sign(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A thresholds file changes the signs it names and keeps the defaults for the others; a malformed one is
    refused with a reason."""
    import json

    import pytest
    from pydantic import ValidationError

    from emergency.care._rules import load_thresholds

    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"vitals": {"hr": {"low": 50, "high": 120}}, "news2_critical": 6}))
    t = load_thresholds(path)
    assert t.vitals["hr"].high == 120 and t.vitals["sbp"].critical_low == 80 and t.news2_critical == 6
    state = PatientState()
    state.observe_vitals(vitals(T0, hr=125.0, sbp=125.0, spo2=97.0, rr=16.0, temp=36.8))
    assert "HR 125" in evaluate(state, t)[AlertKind.VITAL_THRESHOLD].summary
    path.write_text(json.dumps({"vitals": {"hr": {"low": "fast"}}}))
    with pytest.raises(ValidationError):
        load_thresholds(path)


def test_a_device_clock_jumping_back_mid_stream_is_adopted_as_skew_after_settling() -> None:
    """A clock that jumps ten minutes back while streaming makes its next readings look late until the new offset
    has held steady; then it is adopted (and reported) and readings count as live again."""
    clock = ClockTracker(late_after_s=30, settle_s=20)
    before = [clock.observe(T0 + i * S, T0 + i * S) for i in range(30)]
    assert not any(v.late for v in before)
    after = [clock.observe(T0 + (30 + i) * S - 600 * S, T0 + (30 + i) * S) for i in range(40)]
    assert after[0].late
    adopted = [v for v in after if v.skew_adopted_s is not None]
    assert len(adopted) == 1 and round(adopted[0].skew_adopted_s or 0) == -600
    assert not after[-1].late
