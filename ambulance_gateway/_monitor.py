"""Which units have gone silent: pure bookkeeping on the center's receive clock."""

from __future__ import annotations

from dataclasses import dataclass

from emergency.bus import LinkCondition


@dataclass(slots=True)
class _Unit:
    last_rx_mono: float
    last_rx_us: int
    silent: bool = False


@dataclass(frozen=True, slots=True)
class LinkChange:
    unit: str
    condition: LinkCondition
    last_rx_us: int


class SilenceMonitor:
    """A unit is silent when nothing valid arrived from it for `silence_after_s`; it resumes on the next message."""

    def __init__(self, silence_after_s: float) -> None:
        self._silence_after_s = silence_after_s
        self._units: dict[str, _Unit] = {}

    def heard(self, unit: str, now_mono: float, now_us: int) -> LinkChange | None:
        """Record a message from `unit`; returns a change when the unit was silent (or never heard of)."""
        state = self._units.get(unit)
        if state is None:
            self._units[unit] = _Unit(now_mono, now_us)
            return LinkChange(unit, LinkCondition.LIVE, now_us)
        state.last_rx_mono, state.last_rx_us = now_mono, now_us
        if state.silent:
            state.silent = False
            return LinkChange(unit, LinkCondition.LIVE, now_us)
        return None

    def sweep(self, now_mono: float) -> list[LinkChange]:
        """Units that have just gone silent."""
        changes = []
        for unit, state in self._units.items():
            if not state.silent and now_mono - state.last_rx_mono >= self._silence_after_s:
                state.silent = True
                changes.append(LinkChange(unit, LinkCondition.SILENT, state.last_rx_us))
        return changes

    def silent_count(self) -> int:
        return sum(1 for s in self._units.values() if s.silent)

    def unit_count(self) -> int:
        return len(self._units)
