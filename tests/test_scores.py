"""Clinical early-warning scores: every NEWS2 band edge, risk rules, missing parameters, shock index, qSOFA, RACE."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emergency.protocol import Vitals
from emergency.scores import (
    ClinicalRisk,
    Consciousness,
    News2Inputs,
    News2Parameter,
    ScoreInputError,
    SpO2Scale,
    news2,
    qsofa,
    race,
    shock_index,
)

P = News2Parameter

# Every printed edge of each chart row, plus values between two printed bands (scored with the worse neighbour).
RESPIRATION_RATE_EDGES = [
    (0, 3), (8, 3), (8.5, 3), (9, 1), (11, 1), (11.5, 1), (12, 0), (20, 0), (20.5, 2), (21, 2), (24, 2),
    (24.5, 3), (25, 3), (60, 3),
]  # fmt: skip
SPO2_SCALE_1_EDGES = [
    (0, 3), (91, 3), (91.5, 3), (92, 2), (93, 2), (93.5, 2), (94, 1), (95, 1), (95.5, 1), (96, 0), (100, 0),
]  # fmt: skip
# (spo2, on_oxygen, points). Below 93 % scale 2 scores the same on air and oxygen, so both are listed.
SPO2_SCALE_2_EDGES = [
    *[
        (spo2, on_oxygen, points)
        for on_oxygen in (False, True)
        for spo2, points in [
            (0, 3), (83, 3), (83.5, 3), (84, 2), (85, 2), (85.5, 2), (86, 1), (87, 1), (87.5, 1), (88, 0), (92, 0),
        ]
    ],
    (92.5, False, 0), (93, False, 0), (97, False, 0), (100, False, 0),
    (92.5, True, 1), (93, True, 1), (94, True, 1), (94.5, True, 2), (95, True, 2), (96, True, 2), (96.5, True, 3),
    (97, True, 3), (100, True, 3),
]  # fmt: skip
SYSTOLIC_BP_EDGES = [
    (0, 3), (90, 3), (90.5, 3), (91, 2), (100, 2), (100.5, 2), (101, 1), (110, 1), (110.5, 1), (111, 0), (219, 0),
    (219.5, 3), (220, 3), (300, 3),
]  # fmt: skip
PULSE_EDGES = [
    (0, 3), (40, 3), (40.5, 3), (41, 1), (50, 1), (50.5, 1), (51, 0), (90, 0), (90.5, 1), (91, 1), (110, 1),
    (110.5, 2), (111, 2), (130, 2), (130.5, 3), (131, 3), (250, 3),
]  # fmt: skip
TEMPERATURE_EDGES = [
    (25.0, 3), (35.0, 3), (35.05, 3), (35.1, 1), (36.0, 1), (36.05, 1), (36.1, 0), (38.0, 0), (38.05, 1),
    (38.1, 1), (39.0, 1), (39.05, 2), (39.1, 2), (42.0, 2),
]  # fmt: skip

NORMAL = News2Inputs(
    respiration_rate=16,
    spo2=98,
    on_oxygen=False,
    systolic_bp=125,
    pulse=72,
    consciousness=Consciousness.ALERT,
    temperature=37.0,
)


def _with(**changes: Any) -> News2Inputs:
    return dataclasses.replace(NORMAL, **changes)


@pytest.mark.parametrize(("rr", "points"), RESPIRATION_RATE_EDGES)
def test_respiration_rate_bands(rr: float, points: int) -> None:
    """Respiration rate scores as the NEWS2 chart row, with in-between rates taking the worse band."""
    assert news2(_with(respiration_rate=rr)).parameter_scores[P.RESPIRATION_RATE] == points


@pytest.mark.parametrize("on_oxygen", [False, True])
@pytest.mark.parametrize(("spo2", "points"), SPO2_SCALE_1_EDGES)
def test_spo2_scale_1_bands(spo2: float, points: int, on_oxygen: bool) -> None:
    """SpO2 scale 1 scores as the chart row, regardless of air or oxygen."""
    result = news2(_with(spo2=spo2, on_oxygen=on_oxygen))
    assert result.parameter_scores[P.SPO2] == points


@pytest.mark.parametrize(("spo2", "on_oxygen", "points"), SPO2_SCALE_2_EDGES)
def test_spo2_scale_2_bands(spo2: float, on_oxygen: bool, points: int) -> None:
    """SpO2 scale 2 scores as the chart row; from 93 % it scores 0 on air and 1–3 on oxygen."""
    result = news2(_with(spo2=spo2, on_oxygen=on_oxygen, spo2_scale=SpO2Scale.SCALE_2))
    assert result.parameter_scores[P.SPO2] == points


@pytest.mark.parametrize(("on_oxygen", "points"), [(False, 0), (True, 2)])
def test_air_or_oxygen(on_oxygen: bool, points: int) -> None:
    """Room air scores 0 and any supplemental oxygen scores 2."""
    assert news2(_with(on_oxygen=on_oxygen)).parameter_scores[P.AIR_OR_OXYGEN] == points


@pytest.mark.parametrize(("sbp", "points"), SYSTOLIC_BP_EDGES)
def test_systolic_bp_bands(sbp: float, points: int) -> None:
    """Systolic BP scores as the chart row, including 3 points at 220 mmHg and above."""
    assert news2(_with(systolic_bp=sbp)).parameter_scores[P.SYSTOLIC_BP] == points


@pytest.mark.parametrize(("pulse", "points"), PULSE_EDGES)
def test_pulse_bands(pulse: float, points: int) -> None:
    """Pulse scores as the chart row, with in-between rates taking the worse band."""
    assert news2(_with(pulse=pulse)).parameter_scores[P.PULSE] == points


@pytest.mark.parametrize(
    ("consciousness", "points"),
    [
        (Consciousness.ALERT, 0),
        (Consciousness.NEW_CONFUSION, 3),
        (Consciousness.VOICE, 3),
        (Consciousness.PAIN, 3),
        (Consciousness.UNRESPONSIVE, 3),
    ],
)
def test_consciousness(consciousness: Consciousness, points: int) -> None:
    """Alert scores 0; new confusion, voice, pain or unresponsive each score 3."""
    assert news2(_with(consciousness=consciousness)).parameter_scores[P.CONSCIOUSNESS] == points


@pytest.mark.parametrize(("temperature", "points"), TEMPERATURE_EDGES)
def test_temperature_bands(temperature: float, points: int) -> None:
    """Temperature scores as the chart row at 0.1 °C resolution, in-between values taking the worse band."""
    assert news2(_with(temperature=temperature)).parameter_scores[P.TEMPERATURE] == points


def test_all_normal_scores_zero() -> None:
    """A normal observation set on air scores 0, low risk, with the routine-monitoring response."""
    result = news2(NORMAL)
    assert result.total == 0
    assert result.clinical_risk is ClinicalRisk.LOW
    assert not result.any_single_3
    assert result.complete and result.missing == ()
    assert "12-hourly" in result.response
    assert dict(result.parameter_scores) == dict.fromkeys(P, 0)


@pytest.mark.parametrize(
    ("changes", "total", "risk", "single_3"),
    [
        ({"pulse": 95}, 1, ClinicalRisk.LOW, False),
        ({"pulse": 95, "on_oxygen": True, "temperature": 38.5}, 4, ClinicalRisk.LOW, False),
        ({"consciousness": Consciousness.NEW_CONFUSION}, 3, ClinicalRisk.LOW_MEDIUM, True),
        ({"respiration_rate": 26, "pulse": 95}, 4, ClinicalRisk.LOW_MEDIUM, True),
        ({"respiration_rate": 22, "on_oxygen": True, "pulse": 95}, 5, ClinicalRisk.MEDIUM, False),
        ({"systolic_bp": 88, "pulse": 115}, 5, ClinicalRisk.MEDIUM, True),
        ({"systolic_bp": 95, "pulse": 115, "temperature": 38.5}, 5, ClinicalRisk.MEDIUM, False),
        ({"systolic_bp": 95, "pulse": 115, "temperature": 39.5}, 6, ClinicalRisk.MEDIUM, False),
        ({"respiration_rate": 26, "systolic_bp": 95, "pulse": 115}, 7, ClinicalRisk.HIGH, True),
        ({"respiration_rate": 22, "spo2": 93, "on_oxygen": True, "pulse": 95}, 7, ClinicalRisk.HIGH, False),
    ],
)
def test_totals_and_risk(changes: dict[str, object], total: int, risk: ClinicalRisk, single_3: bool) -> None:
    """Total 0–4 is low, a single 3 with total 0–4 is low-medium, 5–6 medium and 7 or more high."""
    result = news2(_with(**changes))
    assert result.total == total == sum(result.parameter_scores.values())
    assert result.clinical_risk is risk
    assert result.any_single_3 is single_3


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"pulse": 95}, "4–6-hourly"),
        ({"consciousness": Consciousness.VOICE}, "Urgent ward-based response"),
        ({"systolic_bp": 88, "pulse": 115}, "Key threshold for urgent response"),
        ({"respiration_rate": 26, "systolic_bp": 95, "pulse": 115}, "Urgent or emergency response"),
    ],
)
def test_response_follows_risk(changes: dict[str, object], phrase: str) -> None:
    """Each risk band carries the chart's clinical response."""
    assert phrase in news2(_with(**changes)).response


def test_maximum_total_is_20() -> None:
    """The worst possible observation set scores 20, the chart's maximum."""
    worst = News2Inputs(
        respiration_rate=40,
        spo2=80,
        on_oxygen=True,
        systolic_bp=60,
        pulse=160,
        consciousness=Consciousness.UNRESPONSIVE,
        temperature=33.0,
    )
    result = news2(worst)
    assert result.total == 20
    assert result.clinical_risk is ClinicalRisk.HIGH


def test_missing_parameters_give_partial_score() -> None:
    """Unmeasured parameters are listed as missing and the total covers only what was measured."""
    result = news2(News2Inputs(respiration_rate=26, pulse=115))
    assert result.total == 5
    assert set(result.parameter_scores) == {P.RESPIRATION_RATE, P.PULSE}
    assert set(result.missing) == {P.SPO2, P.AIR_OR_OXYGEN, P.SYSTOLIC_BP, P.CONSCIOUSNESS, P.TEMPERATURE}
    assert not result.complete
    assert result.clinical_risk is ClinicalRisk.MEDIUM


def test_nothing_measured() -> None:
    """With no parameter measured the score is 0 with every parameter missing, not a made-up normal set."""
    result = news2(News2Inputs())
    assert result.total == 0
    assert result.parameter_scores == {}
    assert result.missing == tuple(P)


@pytest.mark.parametrize(("spo2", "scored"), [(86, 1), (92, 0), (93, None), (98, None)])
def test_scale_2_without_oxygen_status(spo2: float, scored: int | None) -> None:
    """On scale 2 without air/oxygen known, SpO2 ≤ 92 % is scored and ≥ 93 % is left missing, never guessed."""
    result = news2(_with(spo2=spo2, on_oxygen=None, spo2_scale=SpO2Scale.SCALE_2))
    assert P.AIR_OR_OXYGEN in result.missing
    assert result.parameter_scores.get(P.SPO2) == scored
    assert (P.SPO2 in result.missing) is (scored is None)


def test_parameter_scores_are_read_only() -> None:
    """A result cannot be altered after the fact."""
    result = news2(NORMAL)
    with pytest.raises(TypeError):
        result.parameter_scores[P.PULSE] = 3  # type: ignore[index]


@pytest.mark.parametrize(
    ("changes", "parameter"),
    [
        ({"respiration_rate": -1}, P.RESPIRATION_RATE),
        ({"spo2": 101}, P.SPO2),
        ({"spo2": math.nan}, P.SPO2),
        ({"systolic_bp": math.inf}, P.SYSTOLIC_BP),
        ({"pulse": -5}, P.PULSE),
        ({"temperature": math.nan}, P.TEMPERATURE),
        ({"on_oxygen": "yes"}, P.AIR_OR_OXYGEN),
        ({"consciousness": "alert"}, P.CONSCIOUSNESS),
    ],
)
def test_impossible_measurement_raises(changes: dict[str, object], parameter: P) -> None:
    """A value no monitor can produce raises ScoreInputError naming the parameter."""
    with pytest.raises(ScoreInputError) as info:
        news2(_with(**changes))
    assert info.value.parameter == parameter
    assert isinstance(info.value, ValueError)


def test_inputs_from_vitals() -> None:
    """A Vitals message supplies the monitor's parameters; the crew supplies oxygen, ACVPU and scale."""
    vitals = Vitals("A12", 1, 7, 1_700_000_000_000_000, hr=118, sbp=96, spo2=94, rr=23, temp=38.4)
    inputs = News2Inputs.from_vitals(vitals, on_oxygen=True, consciousness=Consciousness.ALERT)
    result = news2(inputs)
    # RR 23 →2, SpO2 94 →1, oxygen →2, SBP 96 →2, pulse 118 →2, alert →0, 38.4 °C →1
    assert result.total == 10
    assert result.complete


_MEASURED = {
    "respiration_rate": st.floats(0, 150),
    "spo2": st.floats(0, 100),
    "systolic_bp": st.floats(0, 350),
    "pulse": st.floats(0, 350),
    "temperature": st.floats(15, 45),
}


@settings(max_examples=400, deadline=None)
@given(
    values=st.fixed_dictionaries({name: st.none() | strategy for name, strategy in _MEASURED.items()}),
    on_oxygen=st.none() | st.booleans(),
    consciousness=st.none() | st.sampled_from(Consciousness),
    scale=st.sampled_from(SpO2Scale),
)
def test_any_possible_inputs_score_0_to_20(
    values: dict[str, float | None], on_oxygen: bool | None, consciousness: Consciousness | None, scale: SpO2Scale
) -> None:
    """Any physiologically possible inputs, each maybe missing, give a consistent total within 0–20."""
    result = news2(News2Inputs(**values, on_oxygen=on_oxygen, consciousness=consciousness, spo2_scale=scale))
    assert 0 <= result.total <= 20
    assert result.total == sum(result.parameter_scores.values())
    assert set(result.parameter_scores) | set(result.missing) == set(P)
    assert not set(result.parameter_scores) & set(result.missing)
    assert result.any_single_3 is any(points == 3 for points in result.parameter_scores.values())


# --- Shock index ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hr", "sbp", "value", "alert", "borderline"),
    [
        (70, 120, 70 / 120, False, False),
        (89, 100, 0.89, False, False),
        (90, 100, 0.9, False, True),
        (100, 100, 1.0, False, True),
        (101, 100, 1.01, True, False),
        (130, 80, 1.625, True, False),
    ],
)
def test_shock_index(hr: float, sbp: float, value: float, alert: bool, borderline: bool) -> None:
    """Shock index is HR/SBP, alerting above 1.0 and borderline from 0.9 to 1.0."""
    result = shock_index(hr, sbp)
    assert result.value == pytest.approx(value)
    assert result.shock_index_alert is alert
    assert result.borderline is borderline
    assert result.reason is None


@pytest.mark.parametrize(("hr", "sbp"), [(100, 0), (100, -10), (None, 100), (100, None), (math.nan, 100)])
def test_shock_index_unusable(hr: float | None, sbp: float | None) -> None:
    """An unusable or missing pressure or rate gives no value, no alert, and a reason."""
    result = shock_index(hr, sbp)
    assert result.value is None
    assert not result.shock_index_alert
    assert result.reason


# --- qSOFA ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rr", "sbp", "gcs", "avpu", "score"),
    [
        (16, 120, 15, Consciousness.ALERT, 0),
        (21.9, 100.1, 15, None, 0),
        (22, 120, 15, None, 1),
        (16, 100, None, Consciousness.ALERT, 1),
        (16, 120, 14, None, 1),
        (16, 120, None, Consciousness.NEW_CONFUSION, 1),
        (16, 120, 15, Consciousness.VOICE, 1),
        (22, 100, 15, Consciousness.ALERT, 2),
        (30, 85, 9, Consciousness.PAIN, 3),
    ],
)
def test_qsofa(rr: float, sbp: float, gcs: int | None, avpu: Consciousness | None, score: int) -> None:
    """qSOFA counts RR ≥ 22, altered mentation (GCS < 15 or not Alert) and SBP ≤ 100; positive at 2 or more."""
    result = qsofa(respiratory_rate=rr, systolic_bp=sbp, gcs=gcs, consciousness=avpu)
    assert result.score == score
    assert result.positive is (score >= 2)
    assert result.missing == ()


def test_qsofa_missing_criteria() -> None:
    """Unjudged criteria are listed; a score of 1 with one missing is indeterminate, not negative."""
    result = qsofa(respiratory_rate=24, systolic_bp=None)
    assert result.score == 1
    assert result.missing == ("altered_mentation", "systolic_bp")
    assert not result.positive and result.indeterminate
    assert not qsofa(respiratory_rate=16, systolic_bp=None, gcs=15).indeterminate


@pytest.mark.parametrize("gcs", [2, 16, True, 14.0])
def test_qsofa_rejects_impossible_gcs(gcs: object) -> None:
    """A GCS that is not an integer 3–15 raises ScoreInputError."""
    with pytest.raises(ScoreInputError):
        qsofa(respiratory_rate=16, systolic_bp=120, gcs=gcs)  # type: ignore[arg-type]


# --- RACE ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "total", "lvo"),
    [
        ({"facial_palsy": 0, "arm_motor": 0, "leg_motor": 0, "head_gaze_deviation": 0, "aphasia": 0}, 0, False),
        ({"facial_palsy": 1, "arm_motor": 1, "leg_motor": 1, "head_gaze_deviation": 0, "aphasia": 1}, 4, False),
        ({"facial_palsy": 1, "arm_motor": 2, "leg_motor": 1, "head_gaze_deviation": 0, "agnosia": 1}, 5, True),
        ({"facial_palsy": 2, "arm_motor": 2, "leg_motor": 2, "head_gaze_deviation": 1, "aphasia": 2}, 9, True),
        ({"facial_palsy": 2, "arm_motor": 2, "leg_motor": 2, "head_gaze_deviation": 1, "agnosia": 2}, 9, True),
    ],
)
def test_race(items: dict[str, int], total: int, lvo: bool) -> None:
    """RACE sums its five items to 0–9 and suspects large-vessel occlusion above 4."""
    result = race(**items)
    assert result.total == total
    assert result.lvo_suspected is lvo


@pytest.mark.parametrize(
    "items",
    [
        {"facial_palsy": 3, "arm_motor": 0, "leg_motor": 0, "head_gaze_deviation": 0, "aphasia": 0},
        {"facial_palsy": 0, "arm_motor": -1, "leg_motor": 0, "head_gaze_deviation": 0, "aphasia": 0},
        {"facial_palsy": 0, "arm_motor": 0, "leg_motor": 3, "head_gaze_deviation": 0, "aphasia": 0},
        {"facial_palsy": 0, "arm_motor": 0, "leg_motor": 0, "head_gaze_deviation": 2, "aphasia": 0},
        {"facial_palsy": 0, "arm_motor": 0, "leg_motor": 0, "head_gaze_deviation": 0, "aphasia": 3},
        {"facial_palsy": 0, "arm_motor": 0, "leg_motor": 0, "head_gaze_deviation": 0, "agnosia": 3},
        {"facial_palsy": 1.5, "arm_motor": 0, "leg_motor": 0, "head_gaze_deviation": 0, "aphasia": 0},
        {"facial_palsy": 0, "arm_motor": 0, "leg_motor": 0, "head_gaze_deviation": 0},
        {"facial_palsy": 0, "arm_motor": 0, "leg_motor": 0, "head_gaze_deviation": 0, "aphasia": 1, "agnosia": 1},
    ],
)
def test_race_rejects_invalid_items(items: dict[str, object]) -> None:
    """An item out of range, a non-integer, or not exactly one of aphasia/agnosia raises ValueError."""
    with pytest.raises(ValueError):
        race(**items)  # type: ignore[arg-type]
