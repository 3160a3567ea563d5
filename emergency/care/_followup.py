"""Outcome follow-up after discharge: the schedule, the worklist, and the summary the crew gets back.

Pure functions, no I/O, no clock: the store keeps the tasks (`FollowUp`), the console calls these.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from emergency.care._model import Disposition, FollowUp, FollowUpState

DAY_US = 86_400 * 1_000_000
DEFAULT_PLAN: tuple[int, ...] = (7, 30)  # days after discharge: early readmission and the 30-day MACE window


def follow_up_label(days: int) -> str:
    return f"{days} day" if days == 1 else f"{days} days"


def schedule_follow_ups(
    encounter_id: int, discharge_at_us: int, disposition: Disposition, *, plan: Sequence[int] = DEFAULT_PLAN
) -> list[tuple[str, int]]:
    """The follow-ups of a discharged encounter as (label, due time in µs), earliest first: one per distinct day
    count of `plan` after discharge. None when the patient died. Patients transferred or who left against advice
    are followed like the others (their outcome is the one most often lost). `encounter_id` names the encounter
    in errors; a day count below 1 is a ValueError."""
    if disposition == Disposition.DIED:
        return []
    if any(days < 1 for days in plan):
        raise ValueError(f"encounter {encounter_id}: follow-up days must be at least 1, got {list(plan)}")
    return [(follow_up_label(days), discharge_at_us + days * DAY_US) for days in sorted(set(plan))]


def due_follow_ups(follow_ups: Iterable[FollowUp], now_us: int, *, lead_us: int = 0) -> list[FollowUp]:
    """The worklist: follow-ups still to do (state `due`) whose due time is at most `lead_us` ahead of `now_us`,
    the longest overdue first (by due time, then encounter and id, so the order is stable). Done and unreachable
    ones are not on it."""
    horizon = now_us + lead_us
    open_ = [f for f in follow_ups if f.state == FollowUpState.DUE and f.due_at <= horizon]
    return sorted(open_, key=lambda f: (f.due_at, f.encounter_id, f.id))


def is_overdue(follow_up: FollowUp, now_us: int) -> bool:
    return follow_up.state == FollowUpState.DUE and follow_up.due_at < now_us


def _outcome(follow_up: FollowUp) -> str:
    if follow_up.state == FollowUpState.UNREACHABLE:
        return "unreachable"
    if follow_up.state == FollowUpState.DUE:
        return "pending"
    if follow_up.alive is False:
        return "died"
    parts = ["alive" if follow_up.alive else "vital status unknown"]
    if follow_up.readmitted:
        parts.append("readmitted")
    if follow_up.mace is not None:
        parts.append("MACE" if follow_up.mace else "no MACE")
    return ", ".join(parts)


def outcome_summary(follow_ups: Iterable[FollowUp]) -> str:
    """One line for the crew, in due order: "7 days: alive, no MACE; 30 days: pending". A readmission is named only
    when it happened; MACE only when it was recorded either way."""
    ordered = sorted(follow_ups, key=lambda f: (f.due_at, f.id))
    if not ordered:
        return "no follow-up scheduled"
    return "; ".join(f"{f.label}: {_outcome(f)}" for f in ordered)
