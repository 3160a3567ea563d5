"""Ack watermarks: contiguity, rejections, declared losses, replays, and gap reports."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ambulance_gateway._acks import AckTracker, Loss, Settlement, merged
from emergency.protocol import Ack, Stream

KEY = ("A1", 2, Stream.ECG)


def _settle(tracker: AckTracker, *seqs: int, rejected: tuple[int, ...] = ()) -> dict:
    plan = tracker.plan([Settlement(KEY, s, s in rejected) for s in seqs])
    tracker.apply(plan)
    return plan.advanced


def test_watermark_moves_only_over_contiguous_seqs() -> None:
    """The watermark covers 0..k only when every seq up to k is settled."""
    tracker = AckTracker()
    assert _settle(tracker, 0, 1, 3) == {KEY: Ack(2, Stream.ECG, 1, ())}
    assert _settle(tracker, 4) == {}
    assert _settle(tracker, 2) == {KEY: Ack(2, Stream.ECG, 4, ())}


def test_rejected_seqs_are_listed_in_the_ack_that_covers_them() -> None:
    """A rejected seq settles the watermark and is named in the ack, never reported as stored."""
    tracker = AckTracker()
    assert _settle(tracker, 0, 1, 2, rejected=(1,)) == {KEY: Ack(2, Stream.ECG, 2, (1,))}


def test_plan_changes_nothing_until_applied() -> None:
    """A plan whose batch failed to commit leaves the tracker as it was."""
    tracker = AckTracker()
    tracker.plan([Settlement(KEY, 0, False)])
    assert tracker.watermark(KEY) == -1
    tracker.seed(KEY, 4)  # a known key whose batch follows on from its watermark: the usual case
    plan = tracker.plan([Settlement(KEY, 5, False), Settlement(KEY, 6, False)])
    assert plan.advanced == {KEY: Ack(2, Stream.ECG, 6, ())}
    assert tracker.watermark(KEY) == 4
    assert tracker.take_unsaved() == {}
    tracker.apply(plan)
    assert tracker.watermark(KEY) == 6
    assert tracker.take_unsaved() == {KEY: 6}


def test_seeded_watermark_continues_after_restart() -> None:
    """A tracker seeded from a persisted watermark continues from it, and earlier seqs count as replays."""
    tracker = AckTracker()
    tracker.seed(KEY, 41)
    plan = tracker.plan([Settlement(KEY, 40, False), Settlement(KEY, 42, False)])
    assert plan.advanced == {KEY: Ack(2, Stream.ECG, 42, ())}
    assert plan.replayed == {KEY: 40}


def test_moved_watermarks_are_handed_out_for_saving_once_and_kept_if_the_save_fails() -> None:
    """Each key's latest watermark since the last take is handed out once; a failed save hands them back, without
    undoing what moved meanwhile (decision 40)."""
    tracker, other = AckTracker(), ("A1", 2, Stream.GPS)
    _settle(tracker, 0, 1)
    _settle(tracker, 2)
    tracker.apply(tracker.plan([Settlement(other, 0, False)]))
    taken = tracker.take_unsaved()
    assert taken == {KEY: 2, other: 0}
    assert tracker.take_unsaved() == {}
    _settle(tracker, 3)
    tracker.keep_unsaved(taken)
    assert tracker.take_unsaved() == {KEY: 3, other: 0}
    _settle(tracker, 5)  # a gap: the watermark does not move, so nothing is to be saved
    assert tracker.take_unsaved() == {}


def test_declared_loss_moves_the_watermark_past_given_up_seqs() -> None:
    """An outbox_drop range lets the watermark pass seqs the device gave up."""
    tracker = AckTracker()
    _settle(tracker, 0, 1)
    plan = tracker.plan([Settlement(KEY, 10, False)], [Loss(KEY, 2, 9)])
    assert plan.advanced == {KEY: Ack(2, Stream.ECG, 10, ())}


def test_rejections_inside_a_declared_loss_are_still_named() -> None:
    """A rejected seq that a declared loss range jumps over is still listed as rejected in the ack."""
    tracker = AckTracker()
    _settle(tracker, 0, 3, rejected=(3,))
    plan = tracker.plan([], [Loss(KEY, 1, 5)])
    assert plan.advanced == {KEY: Ack(2, Stream.ECG, 5, (3,))}


def test_many_seqs_above_a_gap_then_the_gap_closes() -> None:
    """Thousands of seqs held above a gap are all covered once the missing seq arrives."""
    tracker = AckTracker()
    for start in range(1, 20_001, 1000):
        _settle(tracker, *range(start, start + 1000))
    assert tracker.watermark(KEY) == -1
    assert _settle(tracker, 0) == {KEY: Ack(2, Stream.ECG, 20_000, ())}
    assert tracker.open_gap_count() == 0


def test_open_gap_is_reported_once_after_the_delay() -> None:
    """A gap that stays open past the delay is reported once with its missing range."""
    tracker = AckTracker()
    _settle(tracker, 0, 5)
    assert tracker.open_gaps(now=100.0, older_than=30) == []
    reports = tracker.open_gaps(now=131.0, older_than=30)
    assert [(r.first_missing, r.last_missing) for r in reports] == [(1, 4)]
    assert tracker.open_gaps(now=200.0, older_than=30) == []


def test_seqs_settled_above_a_gap_are_told_as_held_ranges_once_each_time_they_change() -> None:
    """While a seq is missing, the device is told which seqs above it are settled (rejected ones named), so that it
    resends only the missing one; the same ranges are not told twice, and none once the gap is closed."""
    tracker = AckTracker()
    _settle(tracker, 0, 2, 3, 5, rejected=(5,))
    assert tracker.held() == [(KEY, Ack(2, Stream.ECG, 0, (5,), ((2, 3), (5, 5))))]
    assert tracker.held() == []
    _settle(tracker, 6)
    assert tracker.held() == [(KEY, Ack(2, Stream.ECG, 0, (5,), ((2, 3), (5, 6))))]
    assert _settle(tracker, 1) == {KEY: Ack(2, Stream.ECG, 3, ())}
    assert tracker.held() == [(KEY, Ack(2, Stream.ECG, 3, (5,), ((5, 6),)))]
    assert _settle(tracker, 4) == {KEY: Ack(2, Stream.ECG, 6, (5,))}
    assert tracker.held() == []
    _settle(tracker, 8)
    assert tracker.held() == [(KEY, Ack(2, Stream.ECG, 6, (), ((8, 8),)))]


def test_nothing_is_held_while_the_first_seq_is_missing() -> None:
    """`upto` is never -1 on the wire: with seq 0 missing the device resends from it, as without held ranges."""
    tracker = AckTracker()
    _settle(tracker, 1, 2)
    assert tracker.held() == []


def test_merged_acks_keep_the_higher_watermark_every_rejection_and_the_ranges_still_above_it() -> None:
    """Acks queued in one interval leave as one: an advance after a held ack keeps only the ranges above it."""
    held = Ack(2, Stream.ECG, 0, (5,), ((2, 3), (5, 6)))
    advance = Ack(2, Stream.ECG, 3, (1,))
    assert merged(held, advance) == Ack(2, Stream.ECG, 3, (1, 5), ((5, 6),))
    assert merged(advance, Ack(2, Stream.ECG, 3, (5,), ((5, 6),))) == Ack(2, Stream.ECG, 3, (1, 5), ((5, 6),))
    assert merged(held, Ack(2, Stream.ECG, 6, ())) == Ack(2, Stream.ECG, 6, (5,))


def test_old_boots_are_forgotten_when_settled() -> None:
    """Seeding a newer boot forgets the unit's fully settled earlier boots (bounded memory)."""
    tracker = AckTracker()
    _settle(tracker, 0)
    gap = ("A1", 1, Stream.ECG)
    tracker.apply(tracker.plan([Settlement(gap, 2, False)]))  # an earlier boot with a seq held above a gap
    others = [("A2", 2, Stream.ECG), ("A1", 2, Stream.VITALS)]
    for key in others:
        tracker.seed(key, 5)
    tracker.seed(("A1", 3, Stream.ECG), -1)
    assert tracker.unknown([KEY, gap, *others]) == {KEY}
    tracker.seed(("A1", 4, Stream.ECG), -1)  # the boot before is forgotten in its turn
    assert tracker.unknown([("A1", 3, Stream.ECG), ("A1", 4, Stream.ECG)]) == {("A1", 3, Stream.ECG)}


_batch = st.tuples(
    st.lists(st.tuples(st.integers(0, 15), st.booleans()), max_size=6),  # (seq, rejected)
    st.lists(st.tuples(st.integers(0, 15), st.integers(0, 3)), max_size=1),  # a declared loss: (first, length)
)


@given(st.lists(_batch, min_size=1, max_size=12))
# A batch that closes a gap and leaves a seq above the next one; one that jumps a declared loss and does the same.
@example(
    [
        ([(0, False), (1, False), (3, False)], []),
        ([(2, False), (10, False)], []),
        ([(s, False) for s in range(4, 10)], []),
    ]
)
@example(
    [([(0, False)], [(2, 1)]), ([(1, False), (9, False), (10, False)], []), ([(s, False) for s in range(4, 9)], [])]
)
@settings(max_examples=500, deadline=None)
def test_batches_in_any_order_acknowledge_what_a_plain_model_does(batches: list) -> None:
    """Batches of seqs in any order, repeated, rejected or declared lost: every ack moves the watermark to the end of
    the settled (or given up) run from 0 and names each rejected seq it passes, as a plain set-based model says."""
    tracker, settled, lost, upto = AckTracker(), dict[int, bool](), set[int](), -1
    for seqs, losses in batches:
        plan = tracker.plan(
            [Settlement(KEY, seq, rejected) for seq, rejected in seqs],
            [Loss(KEY, first, first + length) for first, length in losses],
        )
        tracker.apply(plan)
        for seq, rejected in seqs:
            if seq > upto:
                settled[seq] = settled.get(seq, False) or rejected
        for first, length in losses:
            lost.update(range(max(first, upto + 1), first + length + 1))
        before = upto
        while upto + 1 in settled or upto + 1 in lost:
            upto += 1
        passed = [seq for seq in range(before + 1, upto + 1) if settled.get(seq)]
        assert tracker.watermark(KEY) == upto
        expected = {KEY: Ack(KEY[1], KEY[2], upto, tuple(passed))} if upto > before else {}
        assert plan.advanced == expected
        assert tracker.open_gap_count() == (1 if any(seq > upto for seq in settled) else 0)
        # What a device is told is held above the gap is settled, and names the rejected among it.
        for _, ack in tracker.held():
            told = [seq for first, last in ack.held for seq in range(first, last + 1)]
            assert told == sorted(seq for seq in settled if seq > upto) and ack.upto == upto
            assert ack.rejected == tuple(seq for seq in told if settled[seq])
