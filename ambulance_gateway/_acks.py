"""End-to-end acknowledgement state: per (unit, boot, stream), the watermark below which every seq is settled.

Pure and synchronous. The gateway plans a batch's effect (`plan`), commits the batch, and only then applies the plan
and publishes the acks — so everything below a watermark is durable before any device hears of it. Watermarks
themselves are saved every few seconds (`take_unsaved`); a gateway restarted from the database derives the rest from
the stored record above the saved one, so it never acknowledges less than it already did (decision 40).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from emergency.protocol import Ack, Stream

Key = tuple[str, int, Stream]  # (unit, boot, stream)

# Settled seqs held above an open gap, per key. A device's outbox bounds what it can send, so this is reached only
# by a misbehaving device; past it, settlements are not held (the rows are stored all the same, and the device's
# later retransmission settles them as duplicates once the gap closes).
MAX_PENDING_PER_KEY = 100_000
# Ranges of settled seqs above a gap named in one ack (the lowest ones): a device resends what no range names, so
# past this it resends more than it needs to, never less.
MAX_HELD_RANGES = 64
_NOT_TOLD = (-1, 0)  # `_Progress.held_told` of a key without a gap


@dataclass(slots=True)
class _Progress:
    upto: int = -1
    pending: dict[int, bool] = field(default_factory=dict)  # seq → rejected, for seqs above upto + 1
    lost: list[tuple[int, int]] = field(default_factory=list)  # ranges the device declared given up
    gap_since: float | None = None  # monotonic time the current gap was first seen
    gap_reported: int | None = None  # the first missing seq of the gap already recorded
    held_told: tuple[int, int] = _NOT_TOLD  # (upto, len(pending)) when the device was last told (`AckTracker.held`)


@dataclass(slots=True)
class _Delta:
    """What one batch would change for one key. Planning never copies `pending`: a batch costs O(batch + advance),
    however many seqs wait above an open gap."""

    progress: _Progress
    additions: dict[int, bool] = field(default_factory=dict)
    lost: list[tuple[int, int]] = field(default_factory=list)
    upto: int = -1
    rejected: list[int] = field(default_factory=list)

    def advance(self) -> None:
        """Move upto over every settled seq contiguous with it, collecting the rejected seqs passed over."""
        additions, pending = self.additions, self.progress.pending
        lost = self.progress.lost + self.lost if self.progress.lost or self.lost else None
        upto = self.progress.upto
        while True:
            nxt = upto + 1
            rejected = additions.get(nxt)
            if rejected is None:
                rejected = pending.get(nxt)
            if rejected is not None:
                if rejected:
                    self.rejected.append(nxt)
                upto = nxt
                continue
            covering = [last for first, last in lost if first <= nxt <= last] if lost else None
            if not covering:
                self.upto = upto
                return
            upto = max(covering)
            # Seqs stored inside a declared loss are settled too; only their rejections need naming.
            for seq, was_rejected in (*pending.items(), *additions.items()):
                if nxt <= seq <= upto and was_rejected and seq not in self.rejected:
                    self.rejected.append(seq)

    def apply(self) -> None:
        p = self.progress
        if not p.pending and not p.lost and not self.lost and self.upto - p.upto == len(self.additions):
            # The usual batch: its seqs follow on from the watermark, and the watermark passed every one of them.
            if self.additions:
                p.gap_since = None
            p.upto = self.upto
            return
        p.pending.update(self.additions)
        advanced = self.upto - p.upto
        if advanced > 0:
            if advanced <= len(p.pending):
                for seq in range(p.upto + 1, self.upto + 1):
                    p.pending.pop(seq, None)
            else:
                p.pending = {seq: r for seq, r in p.pending.items() if seq > self.upto}
            p.gap_since = None
        p.upto = self.upto
        if p.lost or self.lost:
            p.lost = [(first, last) for first, last in p.lost + self.lost if last > p.upto]


@dataclass(slots=True)  # not frozen: one per message (decision 37)
class Settlement:
    key: Key
    seq: int
    rejected: bool


@dataclass(frozen=True, slots=True)
class Loss:
    """A device declared `first..last` of `key` given up (outbox full)."""

    key: Key
    first: int
    last: int


@dataclass(slots=True)
class AckPlan:
    deltas: dict[Key, _Delta]
    runs: dict[Key, tuple[_Progress, int]]  # keys whose batch only follows on from the watermark: the new one
    advanced: dict[Key, Ack]  # keys whose watermark moves, with the ack to publish after commit
    replayed: dict[Key, int]  # keys that saw seqs at or below their watermark: lowest such seq


@dataclass(frozen=True, slots=True)
class GapReport:
    key: Key
    first_missing: int
    last_missing: int


class AckTracker:
    def __init__(self) -> None:
        self._progress: dict[Key, _Progress] = {}
        self._boots: dict[tuple[str, Stream], set[int]] = {}  # the boots tracked of each (unit, stream)
        self._unsaved: dict[Key, int] = {}  # watermarks moved since they were last taken for saving

    def unknown(self, keys: Iterable[Key]) -> set[Key]:
        return {k for k in keys if k not in self._progress}

    def seed(self, key: Key, upto: int) -> None:
        """Start tracking `key` from a persisted watermark (-1: nothing settled yet).

        Keys of the same unit and stream from earlier boots are forgotten once nothing is pending for them: their
        watermark is in the database, and memory stays bounded by units × streams however often devices reboot.
        """
        unit, boot, stream = key
        boots = self._boots.setdefault((unit, stream), set())
        for old in [b for b in boots if b < boot]:
            p = self._progress[(unit, old, stream)]
            if not p.pending and not p.lost:
                del self._progress[(unit, old, stream)]
                boots.discard(old)
        if key not in self._progress:
            self._track(key, _Progress(upto=upto))

    def _track(self, key: Key, progress: _Progress) -> None:
        if key not in self._progress:
            self._boots.setdefault((key[0], key[2]), set()).add(key[1])
        self._progress[key] = progress

    def watermark(self, key: Key) -> int:
        progress = self._progress.get(key)
        return progress.upto if progress else -1

    def plan(self, settlements: Iterable[Settlement], losses: Iterable[Loss] = ()) -> AckPlan:
        """What settling these would do; the tracker itself is unchanged until `apply`."""
        deltas: dict[Key, _Delta] = {}
        runs: dict[Key, int] = {}
        replayed: dict[Key, int] = {}
        known_progress = self._progress

        def of(key: Key) -> _Delta:
            d = deltas.get(key)
            if d is None:
                progress = known_progress.get(key) or _Progress()
                d = deltas[key] = _Delta(progress)
                top = runs.pop(key, None)
                if top is not None:
                    d.additions = dict.fromkeys(range(progress.upto + 1, top + 1), False)
            return d

        # Once per message in every batch: kept to plain dict operations (the writer runs this between reads). The
        # usual key's seqs follow on from its watermark, none rejected, with nothing pending or lost: such a run is
        # its top seq alone, and becomes a `_Delta` only at the first seq that breaks it.
        for s in settlements:
            key, seq = s.key, s.seq
            top = runs.get(key)
            if top is None:
                d = deltas.get(key)
                if d is None:
                    progress = known_progress.get(key)
                    if (
                        progress is not None
                        and seq == progress.upto + 1
                        and not s.rejected
                        and not progress.pending
                        and not progress.lost
                    ):
                        runs[key] = seq
                        continue
                    d = of(key)
            elif seq == top + 1 and not s.rejected:
                runs[key] = seq
                continue
            else:
                d = of(key)
            progress, additions = d.progress, d.additions
            if seq <= progress.upto:
                replayed[key] = min(seq, replayed.get(key, seq))
                continue
            known = additions.get(seq)
            if known is None:
                known = progress.pending.get(seq)
                if known is None and len(progress.pending) + len(additions) >= MAX_PENDING_PER_KEY:
                    continue
            # A seq both stored and rejected (a replay of a rejected message) stays rejected.
            additions[seq] = bool(known) or s.rejected
        for loss in losses:
            d = of(loss.key)
            if loss.last > d.progress.upto:
                d.lost.append((max(loss.first, d.progress.upto + 1), loss.last))
        advanced: dict[Key, Ack] = {key: Ack(key[1], key[2], top, ()) for key, top in runs.items()}
        for key, d in deltas.items():
            d.advance()
            if d.upto > d.progress.upto:
                rejected = tuple(sorted(d.rejected)) if d.rejected else ()
                advanced[key] = Ack(key[1], key[2], d.upto, rejected)
        return AckPlan(deltas, {key: (known_progress[key], top) for key, top in runs.items()}, advanced, replayed)

    def apply(self, plan: AckPlan) -> None:
        """The plan's batch is committed: make its watermarks current."""
        for key, (progress, top) in plan.runs.items():
            self._progress[key] = progress
            self._unsaved[key] = top
            progress.upto = top
            progress.gap_since = None
        for key, delta in plan.deltas.items():
            self._track(key, delta.progress)
            if delta.upto > delta.progress.upto:
                self._unsaved[key] = delta.upto
            delta.apply()

    def take_unsaved(self) -> dict[Key, int]:
        """The watermarks that moved since the last call, to be saved; hand them back with `keep_unsaved` if the
        save fails."""
        unsaved, self._unsaved = self._unsaved, {}
        return unsaved

    def keep_unsaved(self, marks: dict[Key, int]) -> None:
        for key, upto in marks.items():
            if upto > self._unsaved.get(key, -1):
                self._unsaved[key] = upto

    def open_gaps(self, now: float, older_than: float) -> list[GapReport]:
        """Gaps (missing seqs below settled ones) open for longer than `older_than`, each reported once."""
        reports: list[GapReport] = []
        for key, p in self._progress.items():
            if not p.pending:
                p.gap_since = None
                continue
            if p.gap_since is None:
                p.gap_since = now
                continue
            first_missing = p.upto + 1
            if now - p.gap_since >= older_than and p.gap_reported != first_missing:
                p.gap_reported = first_missing
                reports.append(GapReport(key, first_missing, min(p.pending) - 1))
        return reports

    def held(self) -> list[tuple[Key, Ack]]:
        """Acks naming the seqs settled above each open gap, for the keys where more were settled since the device
        was last told: with them a device resends only what is missing, not everything above it (the broker may drop
        one message of a stream and deliver the rest). Not while nothing at all is settled: `upto` is never -1 on
        the wire, and the device then resends from its first message, as without held ranges."""
        acks: list[tuple[Key, Ack]] = []
        for key, p in self._progress.items():
            if not p.pending:
                p.held_told = _NOT_TOLD
                continue
            told = (p.upto, len(p.pending))  # pending only grows while upto stays: the two say whether it changed
            if told == p.held_told or p.upto < 0:
                continue
            p.held_told = told
            ranges: list[tuple[int, int]] = []
            rejected: list[int] = []
            for seq in sorted(p.pending):
                if ranges and ranges[-1][1] + 1 == seq:
                    ranges[-1] = (ranges[-1][0], seq)
                elif len(ranges) < MAX_HELD_RANGES:
                    ranges.append((seq, seq))
                else:
                    break
                if p.pending[seq]:
                    rejected.append(seq)
            acks.append((key, Ack(key[1], key[2], p.upto, tuple(rejected), tuple(ranges))))
        return acks

    def open_gap_count(self) -> int:
        return sum(1 for p in self._progress.values() if p.pending)


def merged(earlier: Ack, later: Ack) -> Ack:
    """One ack saying what two acks of the same (boot, stream) say: the higher watermark, every rejected seq, and the
    held ranges still above the watermark (the later's: an ack is made from the tracker's state at the time)."""
    upto = max(earlier.upto, later.upto)
    rejected = tuple(sorted({*earlier.rejected, *later.rejected})) if earlier.rejected else later.rejected
    held = tuple(r for r in later.held or earlier.held if r[0] > upto + 1)
    return Ack(later.boot, later.stream, upto, rejected, held)
