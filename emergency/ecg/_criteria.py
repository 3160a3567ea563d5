"""STEMI criteria of the Fourth Universal Definition of Myocardial Infarction (Thygesen et al., 2018), as a pure
function of per-lead J-point ST deviations.

New ST elevation at the J point in at least two contiguous leads:
* ≥ 0.1 mV in every lead other than V2–V3;
* in V2–V3 ≥ 0.2 mV in men ≥ 40, ≥ 0.25 mV in men < 40, ≥ 0.15 mV in women;
* posterior leads V7–V9 ≥ 0.05 mV (≥ 0.1 mV in men < 40); right-sided V3R–V5R ≥ 0.05 mV (≥ 0.1 mV in men < 30).
When sex or age is not given, the highest threshold that could apply is used, and the reasons say so.

Contiguity: the limb leads in the Cabrera sequence aVL, I, −aVR, II, aVF, III (−aVR is aVR inverted); the chest
leads in their order round the chest, V5R, V4R, V3R, V1 … V6, V7, V8, V9. A lead that is missing or unreadable
breaks a run. Reciprocal ST depression is ≥ 0.05 mV in the leads facing the injured wall.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

LIMB_SEQUENCE = ("aVL", "I", "-aVR", "II", "aVF", "III")
CHEST_SEQUENCE = ("V5R", "V4R", "V3R", "V1", "V2", "V3", "V4", "V5", "V6", "V7", "V8", "V9")
CONTIGUOUS_SEQUENCES = (LIMB_SEQUENCE, CHEST_SEQUENCE)

RECIPROCAL_DEPRESSION_MV = 0.05
DEFAULT_ELEVATION_MV = 0.10

# Walls and the leads that face them; "-aVR" faces the inferolateral wall between I and II.
_WALLS: tuple[tuple[str, frozenset[str]], ...] = (
    ("septal", frozenset({"V1", "V2"})),
    ("anterior", frozenset({"V3", "V4"})),
    ("lateral", frozenset({"I", "aVL", "V5", "V6"})),
    ("inferior", frozenset({"II", "III", "aVF"})),
    ("right ventricular", frozenset({"V3R", "V4R", "V5R"})),
    ("posterior", frozenset({"V7", "V8", "V9"})),
)
# Leads where a wall's injury shows as ST depression.
_RECIPROCAL: dict[str, tuple[str, ...]] = {
    "inferior": ("aVL", "I"),
    "lateral": ("III", "aVF", "II"),
    "anterior": ("III", "aVF", "II"),
    "septal": ("III", "aVF", "II"),
    "posterior": ("V1", "V2", "V3"),
    "right ventricular": (),
}


@dataclass(frozen=True, slots=True)
class StemiAssessment:
    stemi: bool
    territory: str | None
    elevated: list[str]  # leads in a qualifying run, "-aVR" as such
    reciprocal_depression: list[str]
    reasons: list[str]


def _v2_v3_threshold(sex: str | None, age: int | None) -> tuple[float, str]:
    if sex == "female":
        return 0.15, "0.15 mV in V2–V3 (women)"
    if sex == "male" and age is not None:
        return (0.20, "0.20 mV in V2–V3 (men ≥ 40)") if age >= 40 else (0.25, "0.25 mV in V2–V3 (men < 40)")
    if sex == "male":
        return 0.25, "0.25 mV in V2–V3: age not given, so the threshold for men < 40 (the highest) is used"
    if age is not None and age >= 40:
        return 0.20, "0.20 mV in V2–V3: sex not given, so the higher of the thresholds for men ≥ 40 and women is used"
    return 0.25, "0.25 mV in V2–V3: sex or age not given, so the most conservative threshold (men < 40) is used"


def elevation_threshold_mv(lead: str, sex: str | None, age: int | None) -> float:
    """The J-point ST elevation (mV) that counts towards STEMI in `lead` for this patient."""
    if lead in ("V2", "V3"):
        return _v2_v3_threshold(sex, age)[0]
    could_be_male = sex in ("male", None)
    if lead in ("V7", "V8", "V9"):
        return 0.10 if could_be_male and (age is None or age < 40) else 0.05
    if lead in ("V3R", "V4R", "V5R"):
        return 0.10 if could_be_male and (age is None or age < 30) else 0.05
    return DEFAULT_ELEVATION_MV


def _runs(sequence: tuple[str, ...], member: set[str]) -> list[list[str]]:
    """Maximal runs of consecutive sequence entries that are all in `member`."""
    runs: list[list[str]] = []
    current: list[str] = []
    for lead in sequence:
        if lead in member:
            current.append(lead)
        else:
            if current:
                runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def _territory(walls: list[str]) -> str:
    hit = set(walls)
    parts: list[str] = []
    if {"septal", "anterior", "lateral"} <= hit:
        parts.append("extensive anterior")
    elif {"septal", "anterior"} <= hit:
        parts.append("anteroseptal")
    elif {"anterior", "lateral"} <= hit:
        parts.append("anterolateral")
    elif "anterior" in hit:
        parts.append("anterior")
    elif "septal" in hit:
        parts.append("septal")
    if "inferior" in hit:
        parts.append("inferolateral" if "lateral" in hit and not parts else "inferior")
    elif "lateral" in hit and not parts:
        parts.append("lateral")
    if "posterior" in hit:
        if parts == ["inferior"]:
            parts = ["inferoposterior"]
        else:
            parts.append("posterior")
    if "right ventricular" in hit:
        parts.append("right ventricular")
    return " and ".join(parts)


def _fmt(leads: list[str]) -> str:
    return ", ".join(lead.replace("-aVR", "−aVR") for lead in leads)


def assess_stemi(st_mv: Mapping[str, float], sex: str | None, age: int | None) -> StemiAssessment:
    """STEMI or not from J-point ST deviations (mV) of the readable leads; missing leads count as unreadable."""
    values = dict(st_mv)
    if "aVR" in values:
        values["-aVR"] = -values["aVR"]
    reasons: list[str] = []
    pairs = [run for seq in CONTIGUOUS_SEQUENCES for run in _runs(seq, set(values)) if len(run) >= 2]
    if not pairs:
        given = _fmt(sorted(st_mv)) or "none"
        reasons.append(f"ST-elevation assessment needs at least two contiguous leads; readable leads: {given}")
        return StemiAssessment(False, None, [], [], reasons)

    elevated_set = {lead for lead, st in values.items() if st >= elevation_threshold_mv(lead.lstrip("-"), sex, age)}
    qualifying = [run for seq in CONTIGUOUS_SEQUENCES for run in _runs(seq, elevated_set) if len(run) >= 2]
    elevated = [lead for run in qualifying for lead in run]
    if {"V2", "V3"} & set(values):
        threshold_note = _v2_v3_threshold(sex, age)[1]
    else:
        threshold_note = ""

    if not qualifying:
        positive = {lead: st for lead, st in values.items() if lead != "-aVR"}
        top = max(positive, key=lambda lead: positive[lead]) if positive else None
        if top is not None and positive[top] > 0.0:
            detail = f" (largest ST elevation {positive[top]:.2f} mV in {top})"
        else:
            detail = ""
        reasons.append(f"no ST elevation meeting STEMI criteria in two contiguous leads{detail}")
        if threshold_note:
            reasons.append(f"threshold used: {threshold_note}")
        if all(lead not in values for lead in ("V7", "V8", "V9")):
            depressed = {lead for lead in ("V1", "V2", "V3") if values.get(lead, 0.0) <= -RECIPROCAL_DEPRESSION_MV}
            if any(len(run) >= 2 for run in _runs(("V1", "V2", "V3"), depressed)):
                reasons.append("ST depression in V1–V3 may be a posterior MI: record V7–V9")
        return StemiAssessment(False, None, [], [], reasons)

    walls = [name for name, leads in _WALLS if leads & set(elevated)]
    if "-aVR" in elevated and not walls:
        walls = ["inferior", "lateral"]
    territory = _territory(walls)
    reciprocal: list[str] = []
    for wall in walls:
        for lead in _RECIPROCAL[wall]:
            facing_injury = lead in elevated
            if not facing_injury and lead not in reciprocal and values.get(lead, 0.0) <= -RECIPROCAL_DEPRESSION_MV:
                reciprocal.append(lead)
    biggest = max(values[lead] for lead in elevated)
    text = f"ST elevation up to {biggest:.2f} mV in {_fmt(elevated)} ({territory})"
    if reciprocal:
        text += f"; reciprocal depression in {_fmt(reciprocal)}"
    reasons.append(text)
    reasons.append("meets the STEMI criteria of the 4th Universal Definition of MI if the elevation is new")
    if threshold_note:
        reasons.append(f"threshold used: {threshold_note}")
    return StemiAssessment(True, territory, elevated, reciprocal, reasons)
