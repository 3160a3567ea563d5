"""The patient monitor's numerics: continuous signs every second, a cuff blood pressure every few minutes.

Pure and deterministic for a seed: `VitalsMonitor.second(now_us)` advances one second of simulated time and returns
what the monitor shows. Each sign is a baseline plus a deviation; the deviation is a mean-reverting random walk (an
Ornstein–Uhlenbeck process) bounded to a few standard deviations, so a sign drifts slowly and plausibly but never
wanders off to an impossible value. The baseline is the patient's condition: a stable adult by default, moved
linearly to new values by `drift_to` (a clinical scenario's vitals targets), reset by `new_patient`.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

# Every sign a target may name. Heart rate is the rate the ECG beats at; the cuff gives sbp and dbp.
SIGN_NAMES = frozenset({"hr", "sbp", "dbp", "spo2", "rr", "temp", "etco2"})


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
    baseline: float  # a stable adult's value
    spread: float  # stationary standard deviation of the deviation from the baseline
    time_constant_s: float  # how quickly the deviation returns towards zero
    bound: float  # the deviation never exceeds ±bound
    lo: float  # what the monitor can show, whatever the baseline
    hi: float
    digits: int


# The deviation bounds keep a stable patient inside the NEWS2 zero bands (SpO2 ≥ 96 at a 98.5 baseline, RR 12–20 at
# 16), so a routine call scores 0 on every reading, and a critical one never drifts out of its alert.
_SIGNS: dict[str, _Drift] = {
    "spo2": _Drift(97.0, 0.8, 60.0, 2.4, 50.0, 100.0, 0),
    "rr": _Drift(16.0, 1.5, 45.0, 4.0, 4.0, 60.0, 0),
    "temp": _Drift(36.8, 0.15, 600.0, 0.45, 33.0, 42.0, 1),
    "etco2": _Drift(37.0, 2.0, 60.0, 6.0, 10.0, 80.0, 0),
}
_HR = _Drift(72.0, 2.0, 30.0, 8.0, 30.0, 250.0, 0)
# Cuff readings: each reading's deviation keeps half the previous one plus fresh scatter, bounded.
_NIBP_SCATTER_MMHG, _NIBP_BOUND_MMHG = 4.0, 15.0
_PULSE_PRESSURE_MIN_MMHG = 10.0


@dataclass(frozen=True, slots=True)
class _Ramp:
    """A baseline moving linearly from `start` to `target` over `duration_s` from monitor second `begin_s`."""

    start: float
    target: float
    begin_s: int
    duration_s: float

    def at(self, elapsed_s: int) -> float:
        if self.duration_s <= 0 or elapsed_s >= self.begin_s + self.duration_s:
            return self.target
        f = max(0.0, (elapsed_s - self.begin_s) / self.duration_s)
        return self.start + (self.target - self.start) * f


class VitalsMonitor:
    """Numerics for one patient. `hr_baseline` is set from the ECG model so the monitor's HR matches the trace."""

    def __init__(self, seed: int, hr_baseline: float = 72.0, nibp_interval_s: float = 180.0) -> None:
        self._rng = random.Random(seed)
        self.nibp_interval_s = nibp_interval_s
        self._elapsed_s = 0  # seconds advanced; ramps are timed in these, never by a clock
        self._ramps: dict[str, _Ramp] = {}
        self._baseline: dict[str, float] = {}
        self._deviation = dict.fromkeys(("hr", *_SIGNS), 0.0)
        self._nibp_deviation = 0.0
        self._since_nibp_s = nibp_interval_s  # the first cuff reading is taken at start, as crews do
        self.new_patient(hr_baseline)

    # -- the patient's condition ---------------------------------------------------------------------------------

    def new_patient(self, hr_baseline: float = _HR.baseline) -> None:
        """A stable adult from now on (a new call): default baselines, this heart rate, a blood pressure of their own.

        Deviations carry on from where they are, so the numbers do not jump more than a stable patient's would.
        """
        self._ramps.clear()
        self._baseline = {name: drift.baseline for name, drift in _SIGNS.items()}
        self._baseline["hr"] = hr_baseline
        sbp = self._rng.uniform(115.0, 135.0)
        self._baseline["sbp"], self._baseline["dbp"] = sbp, sbp * self._rng.uniform(0.60, 0.66)

    @property
    def hr_baseline(self) -> float:
        return self.baseline("hr")

    @hr_baseline.setter
    def hr_baseline(self, value: float) -> None:
        """Set at once (the ECG model changed); ends a heart-rate ramp in progress."""
        self._ramps.pop("hr", None)
        self._baseline["hr"] = value

    def baseline(self, name: str) -> float:
        """The sign's baseline now: where its value centres, the target once a ramp has run its course."""
        ramp = self._ramps.get(name)
        return ramp.at(self._elapsed_s) if ramp is not None else self._baseline[name]

    def drift_to(self, targets: Mapping[str, float], over_s: float) -> None:
        """Move each named sign's baseline linearly from where it is now to its target over `over_s` monitor seconds
        (0: at once). Names are those of `SIGN_NAMES`; a sign not named keeps its baseline or its ramp."""
        unknown = set(targets) - SIGN_NAMES
        if unknown:
            raise ValueError(f"no such vital sign: {', '.join(sorted(unknown))}")
        for name, target in targets.items():
            self._ramps[name] = _Ramp(self.baseline(name), float(target), self._elapsed_s, max(0.0, over_s))

    def measure_nibp_now(self) -> None:
        """Take a cuff reading in the next second (a crew cycles the cuff at first contact)."""
        self._since_nibp_s = self.nibp_interval_s

    # -- one second ----------------------------------------------------------------------------------------------

    def _step(self, name: str, drift: _Drift) -> float:
        # Euler step of dx = -x/τ dt + σ·√(2/τ) dW for the deviation x, with dt = 1 s, kept within ±bound.
        x = self._deviation[name]
        kick = drift.spread * math.sqrt(2.0 / drift.time_constant_s) * self._rng.gauss(0.0, 1.0)
        x = min(drift.bound, max(-drift.bound, x - x / drift.time_constant_s + kick))
        self._deviation[name] = x
        return min(drift.hi, max(drift.lo, self.baseline(name) + x))

    def heart_rate(self) -> float:
        """The rate the heart beats at now (/min); the device feeds this to the ECG model."""
        return min(_HR.hi, max(_HR.lo, self.baseline("hr") + self._deviation["hr"]))

    def second(self, now_us: int) -> VitalSigns:
        """Advance one second; returns the numerics, with a cuff reading when one is due."""
        self._elapsed_s += 1
        for name, ramp in list(self._ramps.items()):
            if self._elapsed_s >= ramp.begin_s + ramp.duration_s:
                self._baseline[name] = ramp.target
                del self._ramps[name]
        self._step("hr", _HR)
        shown = {name: float(round(self._step(name, drift), drift.digits)) for name, drift in _SIGNS.items()}
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
        scatter = self._nibp_deviation * 0.5 + self._rng.gauss(0.0, _NIBP_SCATTER_MMHG)
        self._nibp_deviation = min(_NIBP_BOUND_MMHG, max(-_NIBP_BOUND_MMHG, scatter))
        sbp = float(round(min(260.0, max(40.0, self.baseline("sbp") + self._nibp_deviation))))
        dbp = self.baseline("dbp") + 0.5 * self._nibp_deviation + self._rng.gauss(0.0, 2.0)
        dbp = float(round(min(sbp - _PULSE_PRESSURE_MIN_MMHG, max(20.0, dbp))))
        mean = float(round((sbp + 2 * dbp) / 3))
        return dataclasses.replace(continuous, sbp=sbp, dbp=dbp, map=mean, nibp_ts=now_us)
