"""Filters: mains notch and muscle-noise low-pass for measurement, a QRS band for detection, and a baseline that
follows the PR segments so the ST segment keeps its level.

Every filter here is zero-phase (forward-backward), so waves keep their timing and the J point stays where it is.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import numpy.typing as npt
from scipy import interpolate, signal

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MAINS_HZ = (50.0, 60.0)  # the mains frequency is not known at this layer; notching both costs nothing at the ST level
MEASUREMENT_LOWPASS_HZ = 40.0  # ST level is a < 5 Hz quantity; 40 Hz keeps QRS timing and removes muscle noise
DETECTION_BAND_HZ = (5.0, 15.0)  # where QRS energy dominates P, T and baseline (Pan & Tompkins)
CLASSIFICATION_HIGHPASS_HZ = 0.5  # only for beat shapes and timing, never for measurement: it distorts ST
# Every recording is analysed at this rate (the diagnostic-ECG rate), so the J point, the ±2 ms J window and the
# 10 ms quiet rule fall on the same 2 ms grid whatever the device sampled at. Measured on a real cart ECG with a
# terminal QRS notch: at the device's own 250 Hz the J point moved onto the notch and V4–V5 crossed 0.1 mV (a false
# STEMI); resampled to this rate, inputs at 125–1000 Hz agree within 0.005 mV in every lead.
ANALYSIS_FS = 500.0


def to_analysis_rate(leads: FloatArray, fs: float) -> tuple[FloatArray, float]:
    """Rows of `leads` resampled (polyphase, anti-aliased) to about `ANALYSIS_FS`, and the exact new rate."""
    ratio = Fraction(ANALYSIS_FS / fs).limit_denominator(1000)
    if ratio == 1:
        return leads, fs
    resampled: FloatArray = signal.resample_poly(leads, ratio.numerator, ratio.denominator, axis=1, padtype="line")
    return resampled, fs * ratio.numerator / ratio.denominator


def measurement_filter(leads: FloatArray, fs: float) -> FloatArray:
    """Rows of `leads` (mV) without DC, mains hum or muscle noise; the ST level and wave timing are preserved."""
    out = leads - np.median(leads, axis=1, keepdims=True)
    for mains in MAINS_HZ:
        if mains < 0.45 * fs:
            b, a = signal.iirnotch(mains, Q=30.0, fs=fs)
            out = signal.filtfilt(b, a, out, axis=1)
    cutoff = min(MEASUREMENT_LOWPASS_HZ, 0.4 * fs)
    sos = signal.butter(4, cutoff, btype="lowpass", fs=fs, output="sos")
    filtered: FloatArray = signal.sosfiltfilt(sos, out, axis=1)
    return filtered


def detection_band(leads: FloatArray, fs: float) -> FloatArray:
    """The QRS band of every row: P and T waves and baseline wander are mostly gone."""
    sos = signal.butter(2, DETECTION_BAND_HZ, btype="bandpass", fs=fs, output="sos")
    band: FloatArray = signal.sosfiltfilt(sos, leads, axis=1)
    return band


def classification_highpass(leads: FloatArray, fs: float) -> FloatArray:
    """Rows with wander removed by a 0.5 Hz high-pass: good for comparing beat shapes, wrong for ST levels."""
    sos = signal.butter(2, CLASSIFICATION_HIGHPASS_HZ, btype="highpass", fs=fs, output="sos")
    hp: FloatArray = signal.sosfiltfilt(sos, leads, axis=1)
    return hp


def pr_baseline(leads: FloatArray, knots: IntArray, half_width: int) -> FloatArray:
    """The baseline of every row as a cubic spline through the mean level around each PR knot (sample indices).

    Knots must be increasing and at least `half_width` from either end. Before the first knot and after the last
    the baseline holds its end value, so nothing is extrapolated; with one knot it is a constant, with none the
    row median.
    """
    n = leads.shape[1]
    if len(knots) == 0:
        return np.repeat(np.median(leads, axis=1, keepdims=True), n, axis=1)
    levels = np.stack([leads[:, k - half_width : k + half_width + 1].mean(axis=1) for k in knots], axis=1)
    if len(knots) == 1:
        return np.repeat(levels, n, axis=1)
    spline = interpolate.CubicSpline(knots.astype(np.float64), levels, axis=1, bc_type="natural")
    baseline: FloatArray = spline(np.clip(np.arange(n, dtype=np.float64), knots[0], knots[-1]))
    return baseline
