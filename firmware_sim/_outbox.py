"""The device's on-disk outbox: every message is written here before it is published, and leaves only when acked.

SQLite in WAL mode with synchronous=NORMAL: a committed row survives the process being killed (what the fault tests
do); on real firmware with power-loss risk, synchronous=FULL would be the setting.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from emergency.protocol import Stream

# What a full outbox gives up first: waveform is the least valuable to keep, events are never given up.
DROP_ORDER: tuple[Stream, ...] = (Stream.ECG, Stream.GPS, Stream.VITALS)


@dataclass(frozen=True, slots=True)
class Pending:
    stream: Stream
    boot: int
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class DropRange:
    """A contiguous run of one stream and boot that the outbox gave up."""

    stream: Stream
    boot: int
    first_seq: int
    last_seq: int


def plan_drops(oldest: Mapping[Stream, Sequence[tuple[int, int]]], excess: int) -> list[DropRange]:
    """Which rows to give up to shed `excess` rows. `oldest[stream]` lists (boot, seq) oldest first.

    Pure: the policy in one place. Streams in DROP_ORDER; never `event`; contiguous seqs become one range.
    """
    ranges: list[DropRange] = []
    for stream in DROP_ORDER:
        if excess <= 0:
            break
        victims = list(oldest.get(stream, ()))[:excess]
        excess -= len(victims)
        for boot, seq in victims:
            last = ranges[-1] if ranges else None
            if last and last.stream is stream and last.boot == boot and last.last_seq + 1 == seq:
                ranges[-1] = DropRange(stream, boot, last.first_seq, seq)
            else:
                ranges.append(DropRange(stream, boot, seq, seq))
    return ranges


def followed_delay(current_s: float, sample_s: float) -> float:
    """The center's ack delay as a device follows it (decision 51): a longer sample at once, a shorter one by an
    eighth of the difference, so that one quick ack after a slow stretch does not bring the retransmissions back."""
    return sample_s if sample_s > current_s else current_s + (sample_s - current_s) / 8


def retransmit_after(base_s: float, ack_delay_s: float) -> float:
    """How long a published message stays unacknowledged before it is sent again (protocol v1, decision 51): the
    base (30 s), or twice the center's ack delay when that is longer, so that a center that is behind but alive is
    not sent everything twice."""
    return max(base_s, 2 * ack_delay_s)


class Outbox:
    """Rows keyed by (stream, boot, seq), each the exact payload that was (or will be) published.

    Bound: `max_rows`. A `put` that takes the outbox past it gives rows up by `plan_drops` until `max_rows -
    shed_margin` remain; the margin makes shedding (and so the device's `outbox_drop` notices) happen in chunks
    rather than one row per new message. Rows put with `shed=False` (those notices) may exceed the bound by
    their own number; `event` rows are never given up, so an outbox of nothing but events is not bounded here.

    When each row was last published is kept in memory only: after a restart every row is published again anyway,
    and not writing it saves a transaction per publish. That map holds at most one entry per row (plus entries of
    rows settled while their publish was in flight, removed at the next retransmission scan), so it shares the
    outbox's bound.
    """

    def __init__(self, path: Path, max_rows: int = 200_000, shed_margin: int = 0) -> None:
        if not 0 <= shed_margin < max_rows:
            raise ValueError(f"shed_margin {shed_margin} must be in [0, max_rows={max_rows})")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self.shed_margin = shed_margin
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (stream TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, "
            "payload BLOB NOT NULL, PRIMARY KEY (stream, boot, seq))"
        )
        self._rows: int = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        # (stream, boot, seq) → time.monotonic() of its last publish; insertion order is publish order.
        self._sent_at: dict[tuple[str, int, int], float] = {}
        # How far behind the center is, per stream (it commits the vitals before the 12-lead, decision 48): from the
        # last publish of the newest row an ack settled to that ack, followed by `followed_delay`. It sets how long a
        # row of the stream waits before it is sent again (`retransmit_after`).
        self._ack_delay_s: dict[str, float] = {}

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return self._rows

    def put(self, messages: Iterable[Pending], *, shed: bool = True) -> list[DropRange]:
        """Store messages durably (one committed transaction) and return the ranges given up to make room.

        A row whose key is already present is kept as it was (a retransmission must be byte-identical).
        """
        rows = [(m.stream.value, m.boot, m.seq, m.payload) for m in messages]
        with self._db:
            self._db.execute("BEGIN")
            cur = self._db.executemany(
                "INSERT OR IGNORE INTO outbox (stream, boot, seq, payload) VALUES (?,?,?,?)", rows
            )
        self._rows += cur.rowcount
        if not shed or self._rows <= self.max_rows:
            return []
        return self._shed(self._rows - (self.max_rows - self.shed_margin))

    def _shed(self, excess: int) -> list[DropRange]:
        oldest = {
            stream: self._db.execute(
                "SELECT boot, seq FROM outbox WHERE stream = ? ORDER BY boot, seq LIMIT ?", (stream.value, excess)
            ).fetchall()
            for stream in DROP_ORDER
        }
        drops = plan_drops(oldest, excess)
        with self._db:
            self._db.execute("BEGIN")
            for d in drops:
                cur = self._db.execute(
                    "DELETE FROM outbox WHERE stream = ? AND boot = ? AND seq BETWEEN ? AND ?",
                    (d.stream.value, d.boot, d.first_seq, d.last_seq),
                )
                self._rows -= cur.rowcount
        for d in drops:
            for seq in range(d.first_seq, d.last_seq + 1):
                self._sent_at.pop((d.stream.value, d.boot, seq), None)
        return drops

    def settle(self, stream: Stream, boot: int, upto: int, held: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Remove everything of (stream, boot) with seq ≤ upto or in one of the `held` ranges (settled above a seq the
        center is missing: what stays is resent); returns the seqs removed, ascending."""
        with self._db:
            self._db.execute("BEGIN")
            seqs = sorted(
                r[0]
                for first, last in ((0, upto), *held)
                for r in self._db.execute(
                    "DELETE FROM outbox WHERE stream = ? AND boot = ? AND seq BETWEEN ? AND ? RETURNING seq",
                    (stream.value, boot, first, last),
                )
            )
        self._rows -= len(seqs)
        if seqs and (sent_at := self._sent_at.get((stream.value, boot, seqs[-1]))) is not None:
            self._ack_delay_s[stream.value] = followed_delay(self.ack_delay_s(stream), time.monotonic() - sent_at)
        for seq in seqs:
            self._sent_at.pop((stream.value, boot, seq), None)
        return seqs

    def ack_delay_s(self, stream: Stream) -> float:
        """How far behind the center is on `stream`, as followed from its acks (0 before the first)."""
        return self._ack_delay_s.get(stream.value, 0.0)

    def mark_sent(self, messages: Iterable[Pending]) -> None:
        """Note that these rows were just published (the broker acknowledged them)."""
        now = time.monotonic()
        for m in messages:
            key = (m.stream.value, m.boot, m.seq)
            self._sent_at.pop(key, None)  # re-insert: the map stays in publish order
            self._sent_at[key] = now

    def sent_before(self, age_s: float | Mapping[Stream, float], limit: int = 1000) -> list[Pending]:
        """Rows published more than `age_s` ago (or their stream's age in it) and still not settled, oldest publish
        first."""
        now = time.monotonic()
        ages = age_s if isinstance(age_s, Mapping) else dict.fromkeys(Stream, age_s)
        cutoffs = {stream.value: now - age for stream, age in ages.items()}
        latest = max(cutoffs.values(), default=now)
        stale: list[Pending] = []
        gone: list[tuple[str, int, int]] = []
        for key, sent_at in self._sent_at.items():
            if sent_at >= latest or len(stale) >= limit:
                break
            if sent_at >= cutoffs.get(key[0], now):
                continue  # a stream the center is further behind on waits longer
            row = self._db.execute(
                "SELECT payload FROM outbox WHERE stream = ? AND boot = ? AND seq = ?", key
            ).fetchone()
            if row is None:
                gone.append(key)  # settled while its publish was in flight
            else:
                stale.append(Pending(Stream(key[0]), key[1], key[2], row[0]))
        for key in gone:
            del self._sent_at[key]
        return stale

    def unsent(self, after: tuple[str, int, int] | None = None, limit: int = 1000) -> list[Pending]:
        """Rows never published since the outbox was opened, in (stream, boot, seq) order, paged like `all_pending`."""
        found: list[Pending] = []
        while len(found) < limit and (page := self.all_pending(after, limit)):
            found += [p for p in page if (p.stream.value, p.boot, p.seq) not in self._sent_at]
            last = page[-1]
            after = (last.stream.value, last.boot, last.seq)
        return found[:limit]

    def all_pending(self, after: tuple[str, int, int] | None = None, limit: int = 1000) -> list[Pending]:
        """Every row in (stream, boot, seq) order, paged: pass the last row's key as `after`."""
        rows = self._db.execute(
            "SELECT stream, boot, seq, payload FROM outbox WHERE (stream, boot, seq) > (?, ?, ?) "
            "ORDER BY stream, boot, seq LIMIT ?",
            (*(after or ("", -1, -1)), limit),
        ).fetchall()
        return [Pending(Stream(s), b, q, p) for s, b, q, p in rows]

    def keys(self) -> list[tuple[str, int, int]]:
        """Every (stream, boot, seq) held, in order (for tests and diagnostics)."""
        return [(s, b, q) for s, b, q in self._db.execute("SELECT stream, boot, seq FROM outbox ORDER BY 1, 2, 3")]
