"""The device's on-disk outbox: every message is written here before it is published, and leaves only when acked.

SQLite in WAL mode with synchronous=NORMAL: a committed row survives the process being killed (what the fault tests
do); on real firmware with power-loss risk, synchronous=FULL would be the setting.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
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


def plan_drops(oldest: dict[Stream, Sequence[tuple[int, int]]], excess: int) -> list[DropRange]:
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


class Outbox:
    def __init__(self, path: Path, max_rows: int = 200_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (stream TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, "
            "payload BLOB NOT NULL, sent_at REAL NOT NULL DEFAULT 0, PRIMARY KEY (stream, boot, seq))"
        )
        self._rows = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return self._rows

    def put(self, messages: Iterable[Pending]) -> list[DropRange]:
        """Store messages durably (one transaction). Returns the ranges given up to stay within max_rows."""
        rows = [(m.stream.value, m.boot, m.seq, m.payload) for m in messages]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO outbox (stream, boot, seq, payload) VALUES (?,?,?,?)", rows)
        self._rows += len(rows)
        excess = self._rows - self.max_rows
        return self._shed(excess) if excess > 0 else []

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
        return drops

    def settle(self, stream: Stream, boot: int, upto: int) -> list[int]:
        """Remove everything of (stream, boot) with seq ≤ upto; returns the seqs removed."""
        with self._db:
            self._db.execute("BEGIN")
            seqs = [
                r[0]
                for r in self._db.execute(
                    "SELECT seq FROM outbox WHERE stream = ? AND boot = ? AND seq <= ?", (stream.value, boot, upto)
                )
            ]
            self._db.execute(
                "DELETE FROM outbox WHERE stream = ? AND boot = ? AND seq <= ?", (stream.value, boot, upto)
            )
        self._rows -= len(seqs)
        return seqs

    def unsent_or_older_than(self, age_s: float, limit: int = 1000) -> list[Pending]:
        """Rows never published, or published more than `age_s` ago without an ack, in (stream, boot, seq) order."""
        cutoff = time.time() - age_s
        rows = self._db.execute(
            "SELECT stream, boot, seq, payload FROM outbox WHERE sent_at < ? ORDER BY stream, boot, seq LIMIT ?",
            (cutoff, limit),
        ).fetchall()
        return [Pending(Stream(s), b, q, p) for s, b, q, p in rows]

    def all_pending(self, after: tuple[str, int, int] | None = None, limit: int = 1000) -> list[Pending]:
        """Every row in (stream, boot, seq) order, paged: pass the last row's key as `after`."""
        if after is None:
            rows = self._db.execute(
                "SELECT stream, boot, seq, payload FROM outbox ORDER BY stream, boot, seq LIMIT ?", (limit,)
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT stream, boot, seq, payload FROM outbox WHERE (stream, boot, seq) > (?, ?, ?) "
                "ORDER BY stream, boot, seq LIMIT ?",
                (*after, limit),
            ).fetchall()
        return [Pending(Stream(s), b, q, p) for s, b, q, p in rows]

    def mark_sent(self, messages: Iterable[Pending]) -> None:
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE outbox SET sent_at = ? WHERE stream = ? AND boot = ? AND seq = ?",
                [(now, m.stream.value, m.boot, m.seq) for m in messages],
            )
