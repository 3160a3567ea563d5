"""Outcome follow-up: the 7/30-day schedule (none after death), the worklist order and the crew's summary line."""

from __future__ import annotations

import pytest

from emergency.care import (
    Disposition,
    FollowUp,
    FollowUpState,
    due_follow_ups,
    is_overdue,
    outcome_summary,
    schedule_follow_ups,
)

DISCHARGE = 1_700_000_000_000_000
DAY = 86_400 * 1_000_000


def follow_up(
    follow_up_id: int,
    encounter_id: int,
    label: str,
    due_at: int,
    state: FollowUpState = FollowUpState.DUE,
    **outcome: bool,
) -> FollowUp:
    return FollowUp(id=follow_up_id, encounter_id=encounter_id, label=label, due_at=due_at, state=state, **outcome)


@pytest.mark.parametrize("disposition", [d for d in Disposition if d != Disposition.DIED])
def test_seven_and_thirty_days_after_discharge(disposition: Disposition) -> None:
    """Every living patient gets a follow-up 7 and 30 days after discharge, to the microsecond."""
    assert schedule_follow_ups(5, DISCHARGE, disposition) == [
        ("7 days", DISCHARGE + 7 * DAY),
        ("30 days", DISCHARGE + 30 * DAY),
    ]


def test_no_follow_up_when_the_patient_died() -> None:
    """A patient who died is not scheduled for follow-up."""
    assert schedule_follow_ups(5, DISCHARGE, Disposition.DIED) == []


def test_a_custom_plan_is_ordered_and_deduplicated() -> None:
    """A plan is scheduled earliest first, each day count once, with a singular label for one day."""
    assert schedule_follow_ups(5, DISCHARGE, Disposition.HOME, plan=(90, 1, 90)) == [
        ("1 day", DISCHARGE + DAY),
        ("90 days", DISCHARGE + 90 * DAY),
    ]


def test_a_plan_before_discharge_is_refused() -> None:
    """A follow-up day count below one is a ValueError naming the encounter."""
    with pytest.raises(ValueError, match="encounter 5"):
        schedule_follow_ups(5, DISCHARGE, Disposition.HOME, plan=(0, 30))


def test_worklist_is_due_tasks_longest_overdue_first() -> None:
    """The worklist holds only open tasks due by now, the longest overdue first; done, unreachable and future
    tasks are not on it."""
    now = DISCHARGE + 31 * DAY
    tasks = [
        follow_up(1, 10, "30 days", DISCHARGE + 30 * DAY),
        follow_up(2, 11, "7 days", DISCHARGE + 7 * DAY),
        follow_up(3, 12, "7 days", DISCHARGE + 2 * DAY, FollowUpState.DONE, alive=True),
        follow_up(4, 13, "7 days", DISCHARGE + 3 * DAY, FollowUpState.UNREACHABLE),
        follow_up(5, 14, "30 days", now + 1),
        follow_up(6, 9, "7 days", DISCHARGE + 7 * DAY),  # same due time as 2: the lower encounter id first
        follow_up(7, 15, "7 days", now),  # due exactly now
    ]
    assert [f.id for f in due_follow_ups(tasks, now)] == [6, 2, 1, 7]
    assert [f.id for f in due_follow_ups(tasks, now, lead_us=DAY)] == [6, 2, 1, 7, 5]
    assert is_overdue(tasks[0], now) and not is_overdue(tasks[6], now) and not is_overdue(tasks[2], now)


def test_outcome_summary_for_the_crew() -> None:
    """The summary reads each follow-up in due order: alive with MACE recorded, pending, unreachable, died."""
    seven = follow_up(1, 5, "7 days", DISCHARGE + 7 * DAY, FollowUpState.DONE, alive=True, readmitted=False)
    thirty = follow_up(2, 5, "30 days", DISCHARGE + 30 * DAY, FollowUpState.DONE, alive=True, mace=False)
    assert outcome_summary([thirty]) == "30 days: alive, no MACE"
    assert outcome_summary([thirty, seven]) == "7 days: alive; 30 days: alive, no MACE"
    readmitted = follow_up(2, 5, "30 days", DISCHARGE + 30 * DAY, FollowUpState.DONE, alive=True, readmitted=True,
                           mace=True)  # fmt: skip
    assert outcome_summary([readmitted]) == "30 days: alive, readmitted, MACE"
    assert outcome_summary([follow_up(2, 5, "30 days", DISCHARGE, FollowUpState.DONE, alive=False)]) == "30 days: died"
    assert outcome_summary([follow_up(1, 5, "7 days", DISCHARGE)]) == "7 days: pending"
    unreachable = follow_up(1, 5, "7 days", DISCHARGE, FollowUpState.UNREACHABLE)
    assert outcome_summary([unreachable]) == "7 days: unreachable"
    assert outcome_summary([follow_up(1, 5, "7 days", DISCHARGE, FollowUpState.DONE)]) == "7 days: vital status unknown"
    assert outcome_summary([]) == "no follow-up scheduled"
