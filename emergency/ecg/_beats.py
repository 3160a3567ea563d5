"""Beats: cutting them out, telling the dominant shape from ectopics, the median beat and its QRS onset and J point.

Onset and J point are found on the median beat from its spatial velocity (the summed absolute slope of all leads,
smoothed over 8 ms): the QRS is where that velocity exceeds 8 % of the way from its floor to its peak. The onset
is the last sample before the peak, and the J point the first after it, from which the velocity stays under that
level for 10 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emergency.ecg._signal import FloatArray, IntArray

PRE_S = 0.25  # window before the fiducial point: room for PR segment and P wave
POST_S = 0.40  # after it: QRS, J point and J+80 ms with margin
QRS_SHAPE_WINDOW_S = (-0.06, 0.08)  # around the fiducial: where ectopic beats differ most
MAX_ALIGN_SHIFT_S = 0.010
SAME_SHAPE_CORRELATION = 0.90  # below this a beat is not the dominant beat (ectopic, artefact)
_VELOCITY_FRACTION = 0.08
_QUIET_S = 0.010


@dataclass(frozen=True, slots=True)
class Delineation:
    """Sample indices within the median beat window."""

    qrs_onset: int
    j_point: int


def cut_beats(leads: FloatArray, fiducials: IntArray, pre: int, post: int) -> tuple[FloatArray, IntArray]:
    """Windows [f − pre, f + post) of every fiducial whose window lies in the record: (beats, leads, samples), and
    the positions in `fiducials` of the beats kept."""
    n = leads.shape[1]
    kept = np.flatnonzero((fiducials - pre >= 0) & (fiducials + post <= n))
    if len(kept) == 0:
        return np.zeros((0, leads.shape[0], pre + post)), kept.astype(np.int64)
    index = fiducials[kept][:, None] + np.arange(-pre, post)[None, :]
    beats: FloatArray = np.transpose(leads[:, index], (1, 0, 2))
    return beats, kept.astype(np.int64)


def _correlation(shapes: FloatArray, template: FloatArray) -> FloatArray:
    """Pearson correlation of every (leads × window) shape with the template, leads taken together."""
    centred = shapes - shapes.mean(axis=2, keepdims=True)
    ref = template - template.mean(axis=1, keepdims=True)
    num = np.einsum("blt,lt->b", centred, ref)
    den = np.sqrt(np.einsum("blt,blt->b", centred, centred) * float(np.sum(ref * ref)))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr: FloatArray = np.where(den > 0.0, num / np.where(den > 0.0, den, 1.0), 0.0)
    return corr


def align_to_template(beats: FloatArray, fs: float, pre: int) -> tuple[IntArray, FloatArray]:
    """Per beat, the shift (samples, within ±10 ms) that best matches the median QRS shape, and the correlation
    there. Shifts refine the detector's fiducial points; correlations tell the dominant beat from the rest."""
    start = pre + round(QRS_SHAPE_WINDOW_S[0] * fs)
    stop = pre + round(QRS_SHAPE_WINDOW_S[1] * fs)
    max_shift = min(round(MAX_ALIGN_SHIFT_S * fs), start, beats.shape[2] - stop)
    template = np.median(beats[:, :, start:stop], axis=0)
    best_corr = np.full(beats.shape[0], -np.inf)
    best_shift = np.zeros(beats.shape[0], dtype=np.int64)
    for shift in range(-max_shift, max_shift + 1):
        corr = _correlation(beats[:, :, start + shift : stop + shift], template)
        better = corr > best_corr
        best_corr[better] = corr[better]
        best_shift[better] = shift
    return best_shift, best_corr


def spatial_velocity(beat: FloatArray, fs: float) -> FloatArray:
    """Summed absolute slope of all leads (mV/s), smoothed over 8 ms."""
    velocity = np.abs(np.gradient(beat, axis=1)).sum(axis=0) * fs
    width = max(round(0.008 * fs), 1)
    smoothed: FloatArray = np.convolve(velocity, np.ones(width) / width, mode="same")
    return smoothed


def delineate(median_beat: FloatArray, fs: float, fiducial: int) -> Delineation:
    """QRS onset and J point of the median beat (leads × samples) whose QRS is near `fiducial`."""
    velocity = spatial_velocity(median_beat, fs)
    near = slice(max(fiducial - round(0.06 * fs), 0), fiducial + round(0.06 * fs) + 1)
    peak_at = near.start + int(np.argmax(velocity[near]))
    floor = float(np.percentile(velocity, 10))
    level = floor + _VELOCITY_FRACTION * (float(velocity[peak_at]) - floor)
    quiet = max(round(_QUIET_S * fs), 1)
    below = velocity < level

    onset = max(peak_at - round(0.08 * fs), quiet)
    for i in range(peak_at, max(peak_at - round(0.15 * fs), quiet) - 1, -1):
        if below[i - quiet + 1 : i + 1].all():
            onset = i
            break
    j_point = min(peak_at + round(0.08 * fs), len(velocity) - quiet)
    for i in range(peak_at, min(peak_at + round(0.20 * fs), len(velocity) - quiet)):
        if below[i : i + quiet].all():
            j_point = i
            break
    return Delineation(qrs_onset=onset, j_point=j_point)
