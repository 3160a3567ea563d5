"""QRS detection across all leads, after Pan & Tompkins (1985), run offline over the whole record.

The 5–15 Hz band of every lead is differentiated and squared, the squares are summed over leads (the square of a
spatial velocity, so a beat that is small in one lead is still seen in the others) and integrated over 150 ms.
Peaks of that envelope are judged in time order against an adaptive threshold between a running signal level and
a running noise level. Three rules keep T waves and noise out and missed beats in:

* a refractory period of 200 ms, within which no second QRS can occur;
* a peak within 360 ms of the previous QRS whose steepest slope is under half of that QRS's is a T wave. Slopes
  are taken from the leads up to 40 Hz, not from the 5–15 Hz band: the band passes much of a T wave and little of a
  QRS's steepest part, so a 1.5 mV T wave (bradycardia, hyperkalaemia) reached half a QRS's slope there and was
  counted as a beat, where broadband it stays under a third;
* if no QRS has been found for 1.66 mean RR intervals, the largest peak in the gap above half the threshold is
  taken (searchback).
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from emergency.ecg._signal import FloatArray, IntArray

REFRACTORY_S = 0.200
T_WAVE_WINDOW_S = 0.360
INTEGRATION_S = 0.150
SEARCHBACK_RR = 1.66
_LEARNING_S = 2.0


def _moving_mean(x: FloatArray, width: int) -> FloatArray:
    width = max(width, 1)
    smoothed: FloatArray = np.convolve(x, np.ones(width) / width, mode="same")
    return smoothed


def detect_qrs(band: FloatArray, fs: float, broadband: FloatArray | None = None) -> IntArray:
    """Sample indices of QRS complexes in `band` (leads × samples, already in the QRS band), increasing.

    `broadband` is the same leads with more bandwidth (up to about 40 Hz), used for the T-wave rule's slopes; without
    it the band's slopes are used. The index is the sample of greatest slope energy within the complex, a stable
    point to align beats on.
    """
    n = band.shape[1]
    if n < 3:
        return np.zeros(0, dtype=np.int64)
    slope_energy = (np.gradient(band, axis=1) * fs) ** 2
    energy = slope_energy.sum(axis=0)
    envelope = _moving_mean(energy, round(INTEGRATION_S * fs))
    refractory = max(round(REFRACTORY_S * fs), 1)
    candidates, _ = signal.find_peaks(envelope, distance=refractory)
    if len(candidates) == 0 or not np.isfinite(envelope).all() or envelope.max() <= 0.0:
        return np.zeros(0, dtype=np.int64)
    heights = envelope[candidates]
    # The steepest spatial slope (mV/s) within ±75 ms of each candidate, for the T-wave rule.
    half = round(0.075 * fs)
    slope_energy = energy if broadband is None else ((np.gradient(broadband, axis=1) * fs) ** 2).sum(axis=0)
    slopes = np.sqrt([slope_energy[max(c - half, 0) : c + half + 1].max() for c in candidates])

    learning = envelope[: max(round(_LEARNING_S * fs), 1)]
    signal_level = 0.33 * float(learning.max())
    noise_level = 0.5 * float(learning.mean())
    accepted: list[int] = []  # indices into candidates
    rr: list[int] = []
    t_window = round(T_WAVE_WINDOW_S * fs)

    def threshold() -> float:
        return noise_level + 0.25 * (signal_level - noise_level)

    def accept(i: int, searchback: bool) -> None:
        nonlocal signal_level
        weight = 0.25 if searchback else 0.125
        signal_level = weight * float(heights[i]) + (1.0 - weight) * signal_level
        if accepted:
            rr.append(int(candidates[i] - candidates[accepted[-1]]))
            del rr[:-8]
        accepted.append(i)

    def search_back(now: int, until: int) -> None:
        # Missed beats hide in a long gap: take the biggest peak in it above half the threshold, then look again.
        while accepted and len(rr) >= 2:
            last = accepted[-1]
            if now - candidates[last] <= SEARCHBACK_RR * float(np.mean(rr)):
                return
            gap = [
                j
                for j in range(last + 1, until)
                if candidates[j] - candidates[last] >= refractory and heights[j] > 0.5 * threshold()
            ]
            if not gap:
                return
            accept(max(gap, key=lambda j: float(heights[j])), searchback=True)

    for i in range(len(candidates)):
        search_back(int(candidates[i]), i)
        if heights[i] > threshold():
            if (
                accepted
                and candidates[i] - candidates[accepted[-1]] < t_window
                and slopes[i] < 0.5 * slopes[accepted[-1]]
            ):
                noise_level = 0.125 * float(heights[i]) + 0.875 * noise_level
                continue
            accept(i, searchback=False)
        else:
            noise_level = 0.125 * float(heights[i]) + 0.875 * noise_level
    search_back(n, len(candidates))

    # Move each beat to its point of steepest slope energy, smoothed over 20 ms, within ±75 ms of the envelope peak.
    smoothed = _moving_mean(energy, round(0.020 * fs))
    peaks: list[int] = []
    for i in accepted:
        c = int(candidates[i])
        lo, hi = max(c - half, 0), min(c + half + 1, n)
        p = lo + int(np.argmax(smoothed[lo:hi]))
        if not peaks or p - peaks[-1] >= refractory:
            peaks.append(p)
    return np.array(peaks, dtype=np.int64)
