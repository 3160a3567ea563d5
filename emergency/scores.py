"""Clinical early-warning scores: NEWS2, shock index, qSOFA and the RACE stroke scale.

Pure functions over frozen dataclasses; no I/O, no clock, no logging. Every function either returns a result value
or raises `ScoreInputError` (a `ValueError`) for an input that cannot be a measurement (NaN, a negative rate, SpO2
above 100 %, a RACE item out of range). A parameter that was not measured is passed as None: it is listed in the
result's `missing` and never replaced by a guessed value. docs/clinical-scores.md says where each band comes from
and how a real-valued measurement that falls between two integer bands of a chart is scored.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from emergency.protocol import Vitals

__all__ = [
    "ClinicalRisk",
    "Consciousness",
    "News2Inputs",
    "News2Parameter",
    "News2Result",
    "QsofaResult",
    "RaceResult",
    "ScoreInputError",
    "ShockIndex",
    "SpO2Scale",
    "news2",
    "qsofa",
    "race",
    "shock_index",
]


class ScoreInputError(ValueError):
    """An input that no patient or monitor can produce; `parameter` names it and `value` is what was given."""

    def __init__(self, parameter: str, value: object, reason: str) -> None:
        super().__init__(f"{parameter}={value!r}: {reason}")
        self.parameter = parameter
        self.value = value
        self.reason = reason


class Consciousness(enum.StrEnum):
    """ACVPU, as NEWS2 spells it: Alert, new Confusion, responds to Voice, to Pain, Unresponsive."""

    ALERT = "A"
    NEW_CONFUSION = "C"
    VOICE = "V"
    PAIN = "P"
    UNRESPONSIVE = "U"


class SpO2Scale(enum.IntEnum):
    """NEWS2 oxygen saturation scale. Scale 2 (target 88–92 %) is only for hypercapnic respiratory failure, chosen
    by a competent clinical decision maker and recorded; it is an input, never inferred."""

    SCALE_1 = 1
    SCALE_2 = 2


class ClinicalRisk(enum.StrEnum):
    LOW = "low"
    LOW_MEDIUM = "low-medium"  # a single red score (3) in one parameter while the total is 0–4
    MEDIUM = "medium"
    HIGH = "high"


class News2Parameter(enum.StrEnum):
    RESPIRATION_RATE = "respiration_rate"
    SPO2 = "spo2"
    AIR_OR_OXYGEN = "air_or_oxygen"
    SYSTOLIC_BP = "systolic_bp"
    PULSE = "pulse"
    CONSCIOUSNESS = "consciousness"
    TEMPERATURE = "temperature"


# --- NEWS2 chart (Royal College of Physicians, 2017, Chart 1) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Band:
    """One cell of the chart: `lo`..`hi` inclusive, as printed, scores `points`."""

    lo: float
    hi: float
    points: int


_INF = math.inf

# Each table is the chart's row verbatim, ascending and covering -inf..inf except for the gaps the chart leaves
# between printed integers (20 | 21) or tenths (36.0 | 36.1). `_chart_points` scores a value in such a gap with the
# worse of its two neighbours, so rounding can never pull an abnormal reading into a calmer band.
_RESPIRATION_RATE = (
    _Band(-_INF, 8, 3),
    _Band(9, 11, 1),
    _Band(12, 20, 0),
    _Band(21, 24, 2),
    _Band(25, _INF, 3),
)
_SPO2_SCALE_1 = (
    _Band(-_INF, 91, 3),
    _Band(92, 93, 2),
    _Band(94, 95, 1),
    _Band(96, _INF, 0),
)
# Scale 2 below 93 % is the same whether on air or oxygen; from 93 % up it depends on supplemental oxygen,
# because a saturation above target on oxygen risks worsening hypercapnia.
_SPO2_SCALE_2_ON_AIR = (
    _Band(-_INF, 83, 3),
    _Band(84, 85, 2),
    _Band(86, 87, 1),
    _Band(88, 92, 0),
    _Band(93, _INF, 0),
)
_SPO2_SCALE_2_ON_OXYGEN = (
    _Band(-_INF, 83, 3),
    _Band(84, 85, 2),
    _Band(86, 87, 1),
    _Band(88, 92, 0),
    _Band(93, 94, 1),
    _Band(95, 96, 2),
    _Band(97, _INF, 3),
)
_SPO2_SCALE_2_OXYGEN_INDEPENDENT_MAX = 92.0  # at or below this, scale 2 scores the same on air and on oxygen
_SYSTOLIC_BP = (
    _Band(-_INF, 90, 3),
    _Band(91, 100, 2),
    _Band(101, 110, 1),
    _Band(111, 219, 0),
    _Band(220, _INF, 3),
)
_PULSE = (
    _Band(-_INF, 40, 3),
    _Band(41, 50, 1),
    _Band(51, 90, 0),
    _Band(91, 110, 1),
    _Band(111, 130, 2),
    _Band(131, _INF, 3),
)
_TEMPERATURE = (
    _Band(-_INF, 35.0, 3),
    _Band(35.1, 36.0, 1),
    _Band(36.1, 38.0, 0),
    _Band(38.1, 39.0, 1),
    _Band(39.1, _INF, 2),
)
_SUPPLEMENTAL_OXYGEN_POINTS = 2
_NOT_ALERT_POINTS = 3
_RED_SCORE = 3

_RESPONSE_TOTAL_ZERO = "Continue routine NEWS monitoring; minimum 12-hourly."
_RESPONSE: Mapping[ClinicalRisk, str] = MappingProxyType(
    {
        ClinicalRisk.LOW: (
            "Minimum 4–6-hourly monitoring; inform a registered nurse, who must assess the patient and decide whether "
            "increased frequency of monitoring and/or escalation of care is required. Ward-based response."
        ),
        ClinicalRisk.LOW_MEDIUM: (
            "Minimum 1-hourly monitoring; registered nurse to inform the medical team caring for the patient, who "
            "will review and decide whether escalation of care is necessary. Urgent ward-based response."
        ),
        ClinicalRisk.MEDIUM: (
            "Minimum 1-hourly monitoring; registered nurse to immediately inform the medical team caring for the "
            "patient; urgent assessment by a clinician or team with core competencies in the care of acutely ill "
            "patients; clinical care in an environment with monitoring facilities. Key threshold for urgent response."
        ),
        ClinicalRisk.HIGH: (
            "Continuous monitoring of vital signs; registered nurse to immediately inform the medical team caring for "
            "the patient, at least at specialist registrar level; emergency assessment by a team with critical-care "
            "competencies, including advanced airway management skills; consider transfer to a level 2 or 3 "
            "clinical care facility. Urgent or emergency response."
        ),
    }
)


def _chart_points(value: float, bands: tuple[_Band, ...]) -> int:
    previous: _Band | None = None
    for band in bands:
        if value < band.lo:
            # In the gap between two printed bands: the worse of the two (see the note above the tables).
            assert previous is not None  # the first band starts at -inf
            return max(previous.points, band.points)
        if value <= band.hi:
            return band.points
        previous = band
    raise AssertionError("chart rows end at +inf")  # pragma: no cover


def _measurement(parameter: str, value: float | None, lo: float = 0.0, hi: float = _INF) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScoreInputError(parameter, value, "must be a number")
    if not math.isfinite(value):
        raise ScoreInputError(parameter, value, "must be finite")
    if not lo <= value <= hi:
        raise ScoreInputError(parameter, value, f"outside [{lo:g}, {hi:g}]")
    return float(value)


@dataclass(frozen=True, slots=True)
class News2Inputs:
    """One observation set for NEWS2. None means not measured; units: breaths/min, %, mmHg, beats/min, °C.

    `on_oxygen` is the "air or oxygen?" row: True for any supplemental oxygen, False for room air.
    """

    respiration_rate: float | None = None
    spo2: float | None = None
    on_oxygen: bool | None = None
    systolic_bp: float | None = None
    pulse: float | None = None
    consciousness: Consciousness | None = None
    temperature: float | None = None
    spo2_scale: SpO2Scale = SpO2Scale.SCALE_1

    @classmethod
    def from_vitals(
        cls,
        vitals: Vitals,
        *,
        on_oxygen: bool | None = None,
        consciousness: Consciousness | None = None,
        spo2_scale: SpO2Scale = SpO2Scale.SCALE_1,
    ) -> News2Inputs:
        """The monitor's part of NEWS2 from one `Vitals` message; oxygen, ACVPU and the scale come from the crew."""
        return cls(
            respiration_rate=vitals.rr,
            spo2=vitals.spo2,
            on_oxygen=on_oxygen,
            systolic_bp=vitals.sbp,
            pulse=vitals.hr,
            consciousness=consciousness,
            temperature=vitals.temp,
            spo2_scale=spo2_scale,
        )


@dataclass(frozen=True, slots=True)
class News2Result:
    """A NEWS2 score. With anything in `missing`, `total` and `clinical_risk` are a lower bound, not the score.

    `parameter_scores` holds a read-only entry for every parameter that was scored and none for a missing one, so
    `total == sum(parameter_scores.values())` always.
    """

    total: int
    parameter_scores: Mapping[News2Parameter, int]
    any_single_3: bool
    clinical_risk: ClinicalRisk
    response: str
    missing: tuple[News2Parameter, ...]

    @property
    def complete(self) -> bool:
        return not self.missing


def news2(inputs: News2Inputs) -> News2Result:
    """Score one observation set on the NEWS2 chart; raises `ScoreInputError` for an impossible measurement."""
    rr = _measurement(News2Parameter.RESPIRATION_RATE, inputs.respiration_rate)
    spo2 = _measurement(News2Parameter.SPO2, inputs.spo2, 0.0, 100.0)
    sbp = _measurement(News2Parameter.SYSTOLIC_BP, inputs.systolic_bp)
    pulse = _measurement(News2Parameter.PULSE, inputs.pulse)
    temperature = _measurement(News2Parameter.TEMPERATURE, inputs.temperature, -_INF, _INF)
    if inputs.on_oxygen is not None and not isinstance(inputs.on_oxygen, bool):
        raise ScoreInputError(News2Parameter.AIR_OR_OXYGEN, inputs.on_oxygen, "must be True (oxygen) or False (air)")
    if inputs.consciousness is not None and not isinstance(inputs.consciousness, Consciousness):
        raise ScoreInputError(News2Parameter.CONSCIOUSNESS, inputs.consciousness, "must be a Consciousness (ACVPU)")
    scale = SpO2Scale(inputs.spo2_scale)

    scores: dict[News2Parameter, int] = {}
    if rr is not None:
        scores[News2Parameter.RESPIRATION_RATE] = _chart_points(rr, _RESPIRATION_RATE)
    if spo2 is not None:
        if scale is SpO2Scale.SCALE_1:
            scores[News2Parameter.SPO2] = _chart_points(spo2, _SPO2_SCALE_1)
        elif inputs.on_oxygen is True:
            scores[News2Parameter.SPO2] = _chart_points(spo2, _SPO2_SCALE_2_ON_OXYGEN)
        elif inputs.on_oxygen is False or spo2 <= _SPO2_SCALE_2_OXYGEN_INDEPENDENT_MAX:
            scores[News2Parameter.SPO2] = _chart_points(spo2, _SPO2_SCALE_2_ON_AIR)
        # else: scale 2 at >= 93 % cannot be scored without knowing air or oxygen, so SpO2 stays missing too.
    if inputs.on_oxygen is not None:
        scores[News2Parameter.AIR_OR_OXYGEN] = _SUPPLEMENTAL_OXYGEN_POINTS if inputs.on_oxygen else 0
    if sbp is not None:
        scores[News2Parameter.SYSTOLIC_BP] = _chart_points(sbp, _SYSTOLIC_BP)
    if pulse is not None:
        scores[News2Parameter.PULSE] = _chart_points(pulse, _PULSE)
    if inputs.consciousness is not None:
        alert = inputs.consciousness is Consciousness.ALERT
        scores[News2Parameter.CONSCIOUSNESS] = 0 if alert else _NOT_ALERT_POINTS
    if temperature is not None:
        scores[News2Parameter.TEMPERATURE] = _chart_points(temperature, _TEMPERATURE)

    total = sum(scores.values())
    any_single_3 = any(points >= _RED_SCORE for points in scores.values())
    if total >= 7:
        risk = ClinicalRisk.HIGH
    elif total >= 5:
        risk = ClinicalRisk.MEDIUM
    elif any_single_3:
        risk = ClinicalRisk.LOW_MEDIUM
    else:
        risk = ClinicalRisk.LOW
    response = _RESPONSE_TOTAL_ZERO if total == 0 else _RESPONSE[risk]
    return News2Result(
        total=total,
        parameter_scores=MappingProxyType(scores),
        any_single_3=any_single_3,
        clinical_risk=risk,
        response=response,
        missing=tuple(p for p in News2Parameter if p not in scores),
    )


# --- Shock index -------------------------------------------------------------------------------------------------

SHOCK_INDEX_ALERT_ABOVE = 1.0
SHOCK_INDEX_BORDERLINE_FROM = 0.9


@dataclass(frozen=True, slots=True)
class ShockIndex:
    """HR / SBP. `value` is None exactly when `reason` says why it could not be computed."""

    value: float | None
    shock_index_alert: bool  # value > 1.0
    borderline: bool  # 0.9 <= value <= 1.0: not an alert, worth watching
    reason: str | None = None


def shock_index(heart_rate: float | None, systolic_bp: float | None) -> ShockIndex:
    """Shock index from heart rate (beats/min) and systolic pressure (mmHg); never raises for a number or None."""
    if heart_rate is None or systolic_bp is None:
        which = "heart rate" if heart_rate is None else "systolic BP"
        return ShockIndex(None, False, False, f"{which} not measured")
    if not (math.isfinite(heart_rate) and math.isfinite(systolic_bp)):
        return ShockIndex(None, False, False, "heart rate and systolic BP must be finite")
    if systolic_bp <= 0:
        return ShockIndex(None, False, False, f"systolic BP {systolic_bp:g} mmHg is not a usable pressure")
    if heart_rate < 0:
        return ShockIndex(None, False, False, f"heart rate {heart_rate:g}/min is negative")
    value = heart_rate / systolic_bp
    alert = value > SHOCK_INDEX_ALERT_ABOVE
    return ShockIndex(value, alert, not alert and value >= SHOCK_INDEX_BORDERLINE_FROM)


# --- qSOFA -------------------------------------------------------------------------------------------------------

QSOFA_RESPIRATORY_RATE_FROM = 22.0
QSOFA_SYSTOLIC_BP_AT_MOST = 100.0


@dataclass(frozen=True, slots=True)
class QsofaResult:
    """qSOFA 0–3 over the criteria that could be judged; `missing` names those that could not.

    `positive` is score >= 2. When it is False but `indeterminate` is True, the missing criteria could still make
    it positive: a False there is not a negative screen.
    """

    score: int
    positive: bool
    respiratory_rate_met: bool | None
    altered_mentation_met: bool | None
    systolic_bp_met: bool | None
    missing: tuple[str, ...]

    @property
    def indeterminate(self) -> bool:
        return not self.positive and self.score + len(self.missing) >= 2


def qsofa(
    *,
    respiratory_rate: float | None,
    systolic_bp: float | None,
    gcs: int | None = None,
    consciousness: Consciousness | None = None,
) -> QsofaResult:
    """qSOFA: RR >= 22/min, altered mentation (GCS < 15, or ACVPU other than Alert), SBP <= 100 mmHg.

    Mentation is altered if either GCS or ACVPU says so; it is missing only when neither is given.
    """
    rr = _measurement("respiratory_rate", respiratory_rate)
    sbp = _measurement("systolic_bp", systolic_bp)
    if gcs is not None and (isinstance(gcs, bool) or not isinstance(gcs, int) or not 3 <= gcs <= 15):
        raise ScoreInputError("gcs", gcs, "Glasgow Coma Scale is an integer 3–15")
    if consciousness is not None and not isinstance(consciousness, Consciousness):
        raise ScoreInputError("consciousness", consciousness, "must be a Consciousness (ACVPU)")

    rr_met = None if rr is None else rr >= QSOFA_RESPIRATORY_RATE_FROM
    sbp_met = None if sbp is None else sbp <= QSOFA_SYSTOLIC_BP_AT_MOST
    mentation_signs = [
        *([] if gcs is None else [gcs < 15]),
        *([] if consciousness is None else [consciousness is not Consciousness.ALERT]),
    ]
    mentation_met = any(mentation_signs) if mentation_signs else None
    criteria = {"respiratory_rate": rr_met, "altered_mentation": mentation_met, "systolic_bp": sbp_met}
    score = sum(1 for met in criteria.values() if met)
    return QsofaResult(
        score=score,
        positive=score >= 2,
        respiratory_rate_met=rr_met,
        altered_mentation_met=mentation_met,
        systolic_bp_met=sbp_met,
        missing=tuple(name for name, met in criteria.items() if met is None),
    )


# --- RACE (Rapid Arterial oCclusion Evaluation) ------------------------------------------------------------------

RACE_LVO_ABOVE = 4


@dataclass(frozen=True, slots=True)
class RaceResult:
    """RACE total 0–9; `lvo_suspected` when the total is above 4 (i.e. 5 or more)."""

    total: int
    lvo_suspected: bool
    facial_palsy: int
    arm_motor: int
    leg_motor: int
    head_gaze_deviation: int
    aphasia: int | None
    agnosia: int | None


def _race_item(name: str, value: int, highest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= highest:
        raise ScoreInputError(name, value, f"RACE item is an integer 0–{highest}")
    return value


def race(
    *,
    facial_palsy: int,
    arm_motor: int,
    leg_motor: int,
    head_gaze_deviation: int,
    aphasia: int | None = None,
    agnosia: int | None = None,
) -> RaceResult:
    """RACE stroke scale. Give `aphasia` (0–2) for a right hemiparesis or `agnosia` (0–2) for a left one, not both:
    the cortical item follows the side of the weakness. Raises `ScoreInputError` (a ValueError) otherwise."""
    items = (
        _race_item("facial_palsy", facial_palsy, 2),
        _race_item("arm_motor", arm_motor, 2),
        _race_item("leg_motor", leg_motor, 2),
        _race_item("head_gaze_deviation", head_gaze_deviation, 1),
    )
    if (aphasia is None) == (agnosia is None):
        raise ScoreInputError(
            "aphasia/agnosia", (aphasia, agnosia), "give exactly one: aphasia (right hemiparesis) or agnosia (left)"
        )
    if aphasia is not None:
        cortical = _race_item("aphasia", aphasia, 2)
    else:
        assert agnosia is not None  # exactly one was given
        cortical = _race_item("agnosia", agnosia, 2)
    total = sum(items) + cortical
    return RaceResult(
        total=total,
        lvo_suspected=total > RACE_LVO_ABOVE,
        facial_palsy=facial_palsy,
        arm_motor=arm_motor,
        leg_motor=leg_motor,
        head_gaze_deviation=head_gaze_deviation,
        aphasia=aphasia,
        agnosia=agnosia,
    )
