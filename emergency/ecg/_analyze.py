"""`analyze`: from raw leads to findings. The method is described in the package docstring (emergency/ecg)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from emergency.ecg import _beats, _detect, _signal
from emergency.ecg._criteria import assess_stemi
from emergency.ecg._signal import FloatArray
from emergency.protocol import ALLOWED_LEADS

logger = logging.getLogger(__name__)

MIN_FS, MAX_FS = 100.0, 2000.0
MAX_ABS_MV = 1000.0  # a surface ECG is a few mV; anything near a volt was not given in millivolts
MIN_DURATION_S = 2.5
MIN_BEATS = 3
PR_WINDOW_S = (-0.028, -0.008)  # PR baseline: mean over this window relative to QRS onset
J_HALF_WIDTH_S = 0.002  # the J-point level is the mean over ±2 ms, so one noisy sample cannot decide it
J60_S = 0.060
PREMATURE_FRACTION = 0.80  # in a regular rhythm, a beat this much earlier than the median RR is premature
IRREGULAR_SUCCESSIVE_RR = 0.08  # median |ΔRR| / median RR above this: irregularly irregular (sinus ≈ 0.03)
MAX_ST_STANDARD_ERROR_MV = 0.05  # half the 0.1 mV criterion: a lead less certain than this is not used
FLAT_LEAD_MV = 0.02  # peak-to-peak below this: electrode off or lead not connected
MIN_DOMINANT_FRACTION = 0.4
WIDE_QRS_MS = 120.0


@dataclass(frozen=True, slots=True)
class EcgFindings:
    """What the analysis found. ST values are J-point deviations from the PR baseline on the median beat, in mV,
    for the leads that could be read; `heart_rate_bpm` is NaN when fewer than two beats were found."""

    heart_rate_bpm: float
    st_deviation_mv: dict[str, float]
    stemi: bool
    stemi_territory: str | None
    reciprocal_depression: list[str]
    reasons: list[str]
    rr_irregular: bool = False
    beats_detected: int = 0
    beats_used: int = 0
    quality: str = "unusable"  # "good", "noisy" (some leads or beats could not be used) or "unusable"
    st_elevation_leads: list[str] = field(default_factory=list)  # the contiguous leads that met the criteria
    st_j60_mv: dict[str, float] = field(default_factory=dict)  # ST deviation 60 ms after the J point
    unreadable_leads: list[str] = field(default_factory=list)  # flat or too noisy to measure
    qrs_duration_ms: float | None = None
    notes: list[str] = field(default_factory=list)  # remarks that are not reasons for or against STEMI


def _validate(leads: Mapping[str, object], fs: float, sex: str | None, age: int | None) -> tuple[list[str], FloatArray]:
    if not isinstance(leads, Mapping) or not leads:
        raise ValueError("leads must be a non-empty mapping of lead name to samples")
    unknown = sorted(str(name) for name in leads if name not in ALLOWED_LEADS)
    if unknown:
        raise ValueError(f"unknown lead names {unknown}; allowed: {sorted(ALLOWED_LEADS)}")
    if not isinstance(fs, int | float) or not math.isfinite(fs) or not MIN_FS <= fs <= MAX_FS:
        raise ValueError(f"sampling rate {fs!r} Hz is outside {MIN_FS:g}–{MAX_FS:g} Hz")
    if sex not in ("male", "female", None):
        raise ValueError(f"sex must be 'male', 'female' or None, not {sex!r}")
    if age is not None and (isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= 130):
        raise ValueError(f"age must be an integer number of years in 0–130 or None, not {age!r}")
    names = list(leads)
    try:
        rows = [np.asarray(leads[name], dtype=np.float64) for name in names]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"lead samples must be numeric arrays: {exc}") from exc
    if any(row.ndim != 1 for row in rows):
        raise ValueError("every lead must be a one-dimensional array of samples")
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise ValueError(f"all leads must have the same number of samples, got {sorted(lengths)}")
    if lengths == {0}:
        raise ValueError("lead arrays are empty")
    data = np.vstack(rows)
    if not np.isfinite(data).all():
        raise ValueError("lead samples contain NaN or infinity")
    if np.abs(data).max() > MAX_ABS_MV:
        raise ValueError(f"lead samples exceed ±{MAX_ABS_MV:g} mV; samples must be in millivolts")
    return names, data


def _heart_rate(fiducials: np.ndarray, fs: float) -> float:
    if len(fiducials) < 2:
        return math.nan
    return float(60.0 * fs * (len(fiducials) - 1) / (fiducials[-1] - fiducials[0]))


def _irregularly_irregular(rr: np.ndarray) -> bool:
    """Whether successive RR intervals differ by more than IRREGULAR_SUCCESSIVE_RR of the median RR (median of the
    differences), leaving out each premature beat's short interval and the pause after it while they are at most
    half of the intervals: two premature atrial beats in a 10 s strip are ectopy, not atrial fibrillation (MIT-BIH
    record 100, bench/ecg_records_check.py). In fibrillation what remains is still irregular."""
    median_rr = float(np.median(rr))
    early = rr < PREMATURE_FRACTION * median_rr
    left_out = early.copy()
    left_out[1:] |= early[:-1] & (rr[1:] > median_rr)
    rest = rr[~left_out]
    if np.count_nonzero(left_out) <= len(rr) // 2 and len(rest) >= 4:
        rr = rest
    return float(np.median(np.abs(np.diff(rr)))) > IRREGULAR_SUCCESSIVE_RR * median_rr


def _unusable(reason: str, heart_rate: float = math.nan, detected: int = 0, irregular: bool = False) -> EcgFindings:
    return EcgFindings(
        heart_rate_bpm=heart_rate,
        st_deviation_mv={},
        stemi=False,
        stemi_territory=None,
        reciprocal_depression=[],
        reasons=[reason, "no STEMI assessment possible"],
        rr_irregular=irregular,
        beats_detected=detected,
        quality="unusable",
    )


def analyze(
    leads: Mapping[str, np.ndarray], fs: float, *, sex: str | None = None, age: int | None = None
) -> EcgFindings:
    """Heart rate, rhythm regularity, J-point ST deviations and the STEMI call for one recording.

    `leads` maps standard lead names (any subset of I, II, III, aVR, aVL, aVF, V1–V6, V3R–V5R, V7–V9) to samples
    in millivolts, all of the same length, sampled at `fs` Hz (100–2000). Invalid input raises `ValueError`;
    a recording that cannot be assessed (too short, too noisy, too few beats) gives `stemi=False` and says why in
    `reasons`.
    """
    names, raw = _validate(leads, fs, sex, age)
    fs = float(fs)
    duration = raw.shape[1] / fs
    if duration < MIN_DURATION_S:
        return _unusable(f"recording of {duration:.1f} s is too short (need at least {MIN_DURATION_S:g} s)")

    raw, fs = _signal.to_analysis_rate(raw, fs)
    clean = _signal.measurement_filter(raw, fs)
    fiducials = _detect.detect_qrs(_signal.detection_band(clean, fs), fs, broadband=clean)
    heart_rate = _heart_rate(fiducials, fs)
    if len(fiducials) < MIN_BEATS:
        return _unusable(
            f"only {len(fiducials)} QRS complexes found (need at least {MIN_BEATS})", heart_rate, len(fiducials)
        )

    # Shapes and timing from a 0.5 Hz high-passed copy, where wander cannot spoil the comparison.
    pre, post = round(_beats.PRE_S * fs), round(_beats.POST_S * fs)
    shapes, kept = _beats.cut_beats(_signal.classification_highpass(clean, fs), fiducials, pre, post)
    if len(kept) < MIN_BEATS:
        return _unusable(
            f"only {len(kept)} complete beats in the recording (need at least {MIN_BEATS})", heart_rate, len(fiducials)
        )
    shifts, correlation = _beats.align_to_template(shapes, fs, pre)
    aligned = fiducials.copy()
    aligned[kept] = fiducials[kept] + shifts
    dominant = np.zeros(len(fiducials), dtype=bool)
    dominant[kept] = correlation >= _beats.SAME_SHAPE_CORRELATION

    # Rhythm from intervals between consecutive dominant beats, so isolated ectopics do not make it irregular.
    rr = np.diff(fiducials)
    rr_between_dominant = rr[dominant[1:] & dominant[:-1]]
    irregular = len(rr_between_dominant) >= 4 and _irregularly_irregular(rr_between_dominant)
    premature = np.zeros(len(fiducials), dtype=bool)
    if not irregular and len(rr_between_dominant) >= 2:
        premature[1:] = rr < PREMATURE_FRACTION * float(np.median(rr_between_dominant))
    used = dominant & ~premature
    excluded_ectopic = int(np.count_nonzero(~dominant[kept]))
    excluded_premature = int(np.count_nonzero(dominant & premature))

    notes: list[str] = []
    if excluded_ectopic:
        notes.append(f"{excluded_ectopic} beat(s) unlike the dominant beat excluded (ectopic or artefact)")
    if excluded_premature:
        notes.append(f"{excluded_premature} premature beat(s) excluded")
    if irregular:
        notes.append("irregularly irregular RR intervals (atrial fibrillation?)")
    if np.count_nonzero(dominant[kept]) < MIN_DOMINANT_FRACTION * len(kept):
        finding = _unusable("too noisy: most detected beats do not share one shape", heart_rate, len(fiducials))
        return replace(finding, notes=notes)
    if np.count_nonzero(used) < MIN_BEATS:
        reason = f"only {np.count_nonzero(used)} usable beats (need at least {MIN_BEATS})"
        return replace(_unusable(reason, heart_rate, len(fiducials), irregular), notes=notes)

    # QRS onset on the dominant shape, then the baseline through every dominant beat's PR segment.
    template = np.median(_beats.cut_beats(_signal.classification_highpass(clean, fs), aligned[used], pre, post)[0], 0)
    onset_offset = _beats.delineate(template, fs, pre).qrs_onset - pre
    pr_centre = round((PR_WINDOW_S[0] + PR_WINDOW_S[1]) / 2 * fs)
    pr_half = max(round((PR_WINDOW_S[1] - PR_WINDOW_S[0]) / 2 * fs), 1)
    knots = aligned[dominant] + onset_offset + pr_centre
    knots = knots[(knots - pr_half >= 0) & (knots + pr_half < clean.shape[1])]
    levelled = clean - _signal.pr_baseline(clean, knots, pr_half)

    beats, _ = _beats.cut_beats(levelled, aligned[used], pre, post)
    median_beat = np.median(beats, axis=0)
    where = _beats.delineate(median_beat, fs, pre)
    onset, j_point = where.qrs_onset, where.j_point
    pr = slice(max(onset + round(PR_WINDOW_S[0] * fs), 0), max(onset + round(PR_WINDOW_S[1] * fs), 1))
    j_half = round(J_HALF_WIDTH_S * fs)
    j_window = slice(j_point - j_half, j_point + j_half + 1)
    j60 = min(j_point + round(J60_S * fs), median_beat.shape[1] - j_half - 1)
    j60_window = slice(j60 - j_half, j60 + j_half + 1)

    baseline = median_beat[:, pr].mean(axis=1)
    st_j = median_beat[:, j_window].mean(axis=1) - baseline
    st_j60 = median_beat[:, j60_window].mean(axis=1) - baseline
    # How certain each lead's J-point level is, from the spread of the same measurement beat by beat.
    per_beat = beats[:, :, j_window].mean(axis=2) - beats[:, :, pr].mean(axis=2)
    spread = 1.4826 * np.median(np.abs(per_beat - np.median(per_beat, axis=0)), axis=0)
    standard_error = 1.253 * spread / math.sqrt(len(beats))
    peak_to_peak = np.ptp(median_beat, axis=1)

    st_deviation: dict[str, float] = {}
    st_j60_mv: dict[str, float] = {}
    unreadable: list[str] = []
    for row, name in enumerate(names):
        if peak_to_peak[row] < FLAT_LEAD_MV:
            unreadable.append(name)
            notes.append(f"{name} is flat (electrode off?)")
        elif standard_error[row] > MAX_ST_STANDARD_ERROR_MV:
            unreadable.append(name)
            notes.append(f"{name} too noisy to measure ST (±{standard_error[row]:.2f} mV)")
        else:
            st_deviation[name] = round(float(st_j[row]), 3)
            st_j60_mv[name] = round(float(st_j60[row]), 3)

    qrs_ms = 1000.0 * (j_point - onset) / fs
    if qrs_ms >= WIDE_QRS_MS:
        notes.append(f"QRS {qrs_ms:.0f} ms: ST criteria are unreliable with bundle-branch block, paced rhythm or LVH")
    assessment = assess_stemi(st_deviation, sex, age)
    degraded = unreadable or excluded_ectopic > 0.3 * len(kept)
    logger.debug("analysed %d leads, %d beats used, stemi=%s", len(names), len(beats), assessment.stemi)
    return EcgFindings(
        heart_rate_bpm=heart_rate,
        st_deviation_mv=st_deviation,
        stemi=assessment.stemi,
        stemi_territory=assessment.territory,
        reciprocal_depression=assessment.reciprocal_depression,
        reasons=assessment.reasons,
        rr_irregular=irregular,
        beats_detected=len(fiducials),
        beats_used=len(beats),
        quality="noisy" if degraded else "good",
        st_elevation_leads=assessment.elevated,
        st_j60_mv=st_j60_mv,
        unreadable_leads=unreadable,
        qrs_duration_ms=round(qrs_ms, 1),
        notes=notes,
    )
