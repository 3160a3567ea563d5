"""Is a message live, or late? And is the device's clock wrong? Pure per-unit bookkeeping on (device ts, rx time).

A message is *late* when it reached the center much later than the device says it was taken: an outbox replay after
an outage. A late message fills in the record but must not be taken for the patient's state now.

A device clock that is off by minutes looks the same as lateness for a single message. The difference is over time:
a replay catches up — device time runs faster than the center's clock while the backlog drains — whereas a skewed
clock keeps a steady offset while device time advances at the center's rate. So an offset that holds steady for
`settle_s` of center time is adopted as the device's clock skew (and reported); until then the messages count as
late. A device ahead of the center cannot be replaying, so its offset is adopted at once.

The center's own backlog (its gateway behind, the broker holding messages) makes every unit's messages arrive late
with an offset that can hold steady just as a skew does; the gateway says when it is behind, and then no offset is
adopted: those messages are late, which is the truth.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClockVerdict:
    late: bool
    skew_adopted_s: float | None = None  # set on the message that made the tracker adopt a new skew


# The verdicts of nearly every message, made once (the tracker runs for every message the gateway takes).
_ON_TIME, _LATE = ClockVerdict(False), ClockVerdict(True)


@dataclass(slots=True)
class ClockTracker:
    late_after_s: float = 30.0
    settle_s: float = 20.0
    tolerance_s: float = 2.0
    skew_us: int = 0  # adopted offset: device clock = center clock − skew
    _candidate_us: int | None = None
    _candidate_since_rx: int | None = None

    def observe(self, ts: int, rx: int, *, center_behind: bool = False) -> ClockVerdict:
        """`center_behind`: the center itself was behind when it received this (its lateness is not the device's)."""
        lag = rx - ts - self.skew_us
        late_us = self.late_after_s * 1e6
        if abs(lag) <= late_us:
            self._candidate_us = self._candidate_since_rx = None
            return _ON_TIME
        if lag < 0:  # the device is ahead: no replay can explain it
            self.skew_us += lag
            return ClockVerdict(False, self.skew_us / -1e6)
        if center_behind:
            self._candidate_us = self._candidate_since_rx = None
            return _LATE
        steady = self._candidate_us is not None and abs(lag - self._candidate_us) <= self.tolerance_s * 1e6
        if not steady:
            self._candidate_us, self._candidate_since_rx = lag, rx
            return _LATE
        assert self._candidate_since_rx is not None
        if rx - self._candidate_since_rx >= self.settle_s * 1e6:
            self.skew_us += lag
            self._candidate_us = self._candidate_since_rx = None
            return ClockVerdict(False, self.skew_us / -1e6)
        return _LATE
