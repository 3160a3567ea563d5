"""The patient monitor's numerics: continuous signs every second, a cuff blood pressure every few minutes.

Pure and deterministic for a seed: `VitalsMonitor.second(now_us)` advances one second of simulated time and returns
what the monitor shows. Each continuous sign is a mean-reverting random walk (an Ornstein–Uhlenbeck process) around
its baseline, so it drifts slowly and plausibly but never wanders off to an impossible value.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VitalSigns:
    """One second's numerics; the cuff fields are None except in the second a cuff reading completes."""

    hr: float
    spo2: float
    rr: float
    temp: float
    etco2: float
    sbp: float | None = None
    dbp: float | None = None
    map: float | None = None
    nibp_ts: int | None = None


@dataclass(frozen=True, slots=True)
class _Drift:
    baseline: float
    spread: float  # stationary standard deviation
    time_constant_s: float  # how quickly it returns towards the baseline
    lo: float
    hi: float
    digits: int


# A stable adult patient. Heart rate is not here: it follows the ECG model's rate (see VitalsMonitor.hr_baseline).
_SIGNS: dict[str, _Drift] = {
    "spo2": _Drift(97.0, 0.8, 60.0, 88.0, 100.0, 0),
    "rr": _Drift(16.0, 1.5, 45.0, 8.0, 30.0, 0),
    "temp": _Drift(36.8, 0.15, 600.0, 35.5, 38.5, 1),
    "etco2": _Drift(37.0, 2.0, 60.0, 28.0, 48.0, 0),
}
_HR = _Drift(0.0, 2.0, 30.0, -8.0, 8.0, 0)  # deviation from the ECG model's rate, /min


class VitalsMonitor:
    """Numerics for one patient. `hr_baseline` is set from the ECG model so the monitor's HR matches the trace."""

    def __init__(self, seed: int, hr_baseline: float = 72.0, nibp_interval_s: float = 180.0) -> None:
        self._rng = random.Random(seed)
        self.hr_baseline = hr_baseline
        self.nibp_interval_s = nibp_interval_s
        self._value = {name: drift.baseline for name, drift in _SIGNS.items()}
        self._hr_deviation = 0.0
        self._since_nibp_s = nibp_interval_s  # the first cuff reading is taken at start, as crews do
        self._sbp = self._rng.uniform(110, 140)

    def _step(self, value: float, drift: _Drift) -> float:
        # Euler step of dx = -(x - baseline)/τ dt + σ·√(2/τ) dW, with dt = 1 s.
        pull = (drift.baseline - value) / drift.time_constant_s
        kick = drift.spread * math.sqrt(2.0 / drift.time_constant_s) * self._rng.gauss(0.0, 1.0)
        return min(drift.hi, max(drift.lo, value + pull + kick))

    def heart_rate(self) -> float:
        """The rate the heart beats at now (/min); the device feeds this to the ECG model."""
        return max(30.0, self.hr_baseline + self._hr_deviation)

    def second(self, now_us: int) -> VitalSigns:
        """Advance one second; returns the numerics, with a cuff reading when one is due."""
        self._hr_deviation = self._step(self._hr_deviation, _HR)
        for name, drift in _SIGNS.items():
            self._value[name] = self._step(self._value[name], drift)
        shown = {name: float(round(self._value[name], _SIGNS[name].digits)) for name in _SIGNS}
        continuous = VitalSigns(
            hr=float(round(self.heart_rate())),
            spo2=shown["spo2"],
            rr=shown["rr"],
            temp=shown["temp"],
            etco2=shown["etco2"],
        )
        self._since_nibp_s += 1.0
        if self._since_nibp_s < self.nibp_interval_s:
            return continuous
        self._since_nibp_s = 0.0
        self._sbp = min(170.0, max(95.0, self._sbp + self._rng.gauss(0.0, 6.0) + (125.0 - self._sbp) * 0.2))
        sbp = float(round(self._sbp))
        dbp = float(round(sbp * self._rng.uniform(0.58, 0.68)))
        mean = float(round((sbp + 2 * dbp) / 3))
        return dataclasses.replace(continuous, sbp=sbp, dbp=dbp, map=mean, nibp_ts=now_us)
