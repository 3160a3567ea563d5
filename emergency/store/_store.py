"""The telemetry store: one asyncpg pool, batched ingest (INSERT … unnest), deduplication by unique key."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import asyncpg

from emergency.protocol import DeviceEvent, DeviceMessage, EcgFrame, GpsFix, Stream, Vitals
from emergency.settings import StoreSettings
from emergency.store._migrations import TIME_SERIES_TABLES, migrate, partitions_of

log = logging.getLogger(__name__)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_PARTITION_DAYS_AHEAD = 3
_MAINTENANCE_INTERVAL_S = 3600.0
# The first pass comes soon after start, so that a center restarted more often than hourly still maintains its
# storage, but not at start, where a stalled compression of a large chunk would hold up opening the store.
_MAINTENANCE_FIRST_S = 300.0
# What a lost or refusing database raises through asyncpg: server errors, a dropped connection, a socket error.
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


def from_us(us: int) -> dt.datetime:
    """Exact µs-since-epoch → aware datetime (no float rounding)."""
    return _EPOCH + dt.timedelta(microseconds=us)


def to_us(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // dt.timedelta(microseconds=1)


class StoreError(Exception):
    """The store could not do what was asked; `retryable` says whether trying again may succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(slots=True)  # not frozen: one per message (decision 37)
class Received:
    """A validated device message and when the center received it (µs, center clock)."""

    message: DeviceMessage
    rx_ts: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message the codec refused; `raw` is the payload, already capped."""

    rx_ts: int
    topic: str
    reason: str
    raw: bytes
    raw_len: int
    unit: str | None = None
    stream: Stream | None = None
    boot: int | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """Something the link monitor noticed (silent, resumed, seq_gap, data_loss)."""

    at: int
    unit: str
    kind: str
    stream: Stream | None = None
    boot: int | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Watermark:
    unit: str
    boot: int
    stream: Stream
    upto: int


@dataclass(frozen=True, slots=True)
class Settled:
    """One seq of (unit, boot, stream) that the store holds a record of: stored, or rejected."""

    unit: str
    boot: int
    stream: Stream
    seq: int
    rejected: bool


@dataclass(frozen=True, slots=True)
class DeclaredLoss:
    """A range of (unit, boot, stream) its device declared given up (a recorded `data_loss` link event)."""

    unit: str
    boot: int
    stream: Stream
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class SettledRecord:
    settled: list[Settled]
    losses: list[DeclaredLoss]


@dataclass(slots=True)
class IngestBatch:
    """Everything one gateway commit makes durable, atomically."""

    received: list[Received] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    link_events: list[LinkEvent] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.received) + len(self.rejections)


@dataclass(frozen=True, slots=True)
class CommitResult:
    stored: Mapping[Stream, int]
    duplicates: Mapping[Stream, int]


_STREAM_COLUMNS: dict[Stream, tuple[str, ...]] = {
    Stream.ECG: ("fs", "leads", "lsb_uv", "n", "data"),
    Stream.VITALS: ("hr", "sbp", "dbp", "map", "spo2", "rr", "temp", "etco2", "nibp_ts"),
    Stream.GPS: ("lat", "lon", "speed", "heading", "acc"),
    Stream.EVENT: ("kind", "detail"),
}
_TABLES: dict[Stream, str] = {
    Stream.ECG: "ecg_frames",
    Stream.VITALS: "vitals",
    Stream.GPS: "gps_fixes",
    Stream.EVENT: "device_events",
}
_KEY = ("unit", "boot", "seq", "ts", "rx_ts")
# µs since the epoch → timestamptz, in SQL: `interval * bigint` is exact for |µs| < 2^53.
_FROM_US_SQL = "timestamptz 'epoch' + {} * interval '1 microsecond'"


def _record(item: Received) -> tuple[Any, ...]:
    m = item.message
    key = (m.unit, m.boot, m.seq, m.ts, item.rx_ts)
    if isinstance(m, EcgFrame):
        # The samples stay the device's raw int16 bytes: no per-sample work on the hot path.
        return (*key, m.fs, ",".join(m.leads), m.lsb_uv, m.n, m.data)
    if isinstance(m, Vitals):
        return (*key, m.hr, m.sbp, m.dbp, m.map, m.spo2, m.rr, m.temp, m.etco2, m.nibp_ts)
    if isinstance(m, GpsFix):
        return (*key, m.lat, m.lon, m.speed, m.heading, m.acc)
    assert isinstance(m, DeviceEvent)
    return (*key, m.kind.value, json.dumps(dict(m.detail)))


_STORAGE: dict[str, str] = {table.name: table.storage for table in TIME_SERIES_TABLES}

# A TimescaleDB policy of ours that its background scheduler has not kept: the last run failed, or the job is due
# since more than its interval (the scheduler is stopped, or not loaded). Disabled jobs (`scheduled` false) are left
# alone: an operator turned them off.
_STALLED_POLICIES_SQL = """
SELECT j.job_id, j.proc_name, j.hypertable_name, s.last_run_status,
       (SELECT e.err_message FROM timescaledb_information.job_errors e
        WHERE e.job_id = j.job_id ORDER BY e.start_time DESC LIMIT 1) AS last_error
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s USING (job_id)
WHERE j.scheduled AND j.proc_name IN ('policy_compression', 'policy_retention')
  AND j.hypertable_name = ANY($1::text[])
  AND (s.last_run_status = 'Failed' OR coalesce(s.next_start, j.next_start) < now() - j.schedule_interval)
ORDER BY j.job_id
"""
_POLICY_LOCK = 0x454D5354  # the advisory-lock class of policy jobs run by the store ("EMST")


def _with_storage(table: str) -> str:
    storage = _STORAGE.get(table, "")
    return f" WITH ({storage})" if storage else ""


# Numeric columns travel as PostgreSQL array literals (decision 37).
_LITERAL_TYPES = {"smallint", "integer", "bigint", "real", "double precision", "timestamp with time zone"}


@dataclass(frozen=True, slots=True)
class _Insert:
    statement: str
    literal: tuple[bool, ...]  # per column: sent as one array literal (text), else as a binary array


def _array_literal(column: Sequence[object]) -> str:
    """Numbers (or None) as PostgreSQL's array literal, `{1, 2.5, NULL}`, made by `repr` in C. asyncpg's binary
    array encoder checks every element against three abstract base classes in Python, which cost the gateway more
    than PostgreSQL's parse of the text costs the server. `repr` of a float is the shortest string that reads back
    as the same double, and PostgreSQL's float8 input reads it exactly."""
    return "{" + repr(list(column))[1:-1].replace("None", "NULL") + "}"


async def _insert_statements(conn: asyncpg.Connection) -> dict[Stream, _Insert]:
    """One `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING` per stream: a batch goes in as one array per
    column, typed from the catalog (decision 32). A `text[]` column (the 12-lead's lead names) cannot be one
    element of an array parameter, so it travels as one comma-joined string per row. A time travels as the
    message's own µs since the epoch (`bigint`) and is made a `timestamptz` in the statement: exact below 2^53 µs
    (year 2255), and no datetime is built and taken apart again per message (decision 34). A numeric column
    travels as an array literal (`_array_literal`, decision 37)."""
    statements: dict[Stream, _Insert] = {}
    for stream, table in _TABLES.items():
        columns = (*_KEY, *_STREAM_COLUMNS[stream])
        types = dict(
            await conn.fetch(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
                table,
            )
        )
        arrays, values = [], []
        for n, column in enumerate(columns, start=1):
            if types[column].endswith("[]"):
                arrays.append(f"${n}::text[]")
                values.append(f"string_to_array({column}, ',')::{types[column]}")
            elif types[column] == "timestamp with time zone":
                arrays.append(f"${n}::text::bigint[]")
                values.append(_FROM_US_SQL.format(column))
            elif types[column] in _LITERAL_TYPES:
                arrays.append(f"${n}::text::{types[column]}[]")
                values.append(column)
            else:
                arrays.append(f"${n}::{types[column]}[]")
                values.append(column)
        column_list = ", ".join(columns)
        statements[stream] = _Insert(
            f"INSERT INTO {table} ({column_list}) SELECT {', '.join(values)} "
            f"FROM unnest({', '.join(arrays)}) AS batch ({column_list}) ON CONFLICT DO NOTHING",
            tuple(types[column] in _LITERAL_TYPES for column in columns),
        )
    return statements


async def _session_left_as_found(conn: asyncpg.Connection) -> None:
    """The pool's reset of a connection given back (decision 50). asyncpg first rolls back a transaction left open
    and drops the borrower's listeners, then by default sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN
    *; RESET ALL`: a round trip, and four statements for the server, for every connection given back (a commit lane's
    every commit, a console's every alert delivered). The project's code leaves nothing for it to undo: no `SET`
    outside a transaction, no `LISTEN`, no advisory lock, no cursor held past its transaction."""


class Store:
    """The store; use as `async with Store.open(dsn, settings) as store:`. Migrates on enter."""

    def __init__(self, dsn: str, settings: StoreSettings) -> None:
        self._dsn = dsn
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self.timescaledb = False
        self._inserts: dict[Stream, _Insert] = {}

    @classmethod
    def open(cls, dsn: str, settings: StoreSettings | None = None) -> Self:
        return cls(dsn, settings or StoreSettings())

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not open", retryable=False)
        return self._pool

    async def __aenter__(self) -> Self:
        conn = await asyncpg.connect(self._dsn)
        try:
            self.timescaledb = await migrate(conn, self._settings)
        finally:
            await conn.close()
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=self._settings.pool_min,
            max_size=self._settings.pool_max,
            # A commit's arrays are unnested into rows in memory: a full batch of 12-lead frames is ~6 MB, past the
            # default 4 MB at which PostgreSQL spills them to a temporary file.
            server_settings={"work_mem": "32MB"},
            reset=_session_left_as_found,
        )
        async with self._pool.acquire() as conn:
            self._inserts = await _insert_statements(conn)
        if not self.timescaledb:
            await self.maintain_partitions()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._maintenance = self._tasks.create_task(self._maintenance_loop(), name="store.maintenance")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._maintenance is not None:
                self._maintenance.cancel()
            if self._tasks is not None:
                await self._tasks.__aexit__(None, None, None)
        finally:
            self._tasks = self._maintenance = None
            if self._pool is not None:
                await self._pool.close()
                self._pool = None

    async def _maintenance_loop(self) -> None:
        delay = _MAINTENANCE_FIRST_S
        while True:
            await asyncio.sleep(delay)
            delay = _MAINTENANCE_INTERVAL_S
            try:
                if self.timescaledb:
                    await self.run_stalled_policies()
                else:
                    await self.maintain_partitions()
            except DB_ERRORS as exc:
                log.warning("storage maintenance failed, will retry: %s", exc)

    async def run_stalled_policies(self) -> list[int]:
        """TimescaleDB path: run here, in this session, each compression or retention policy of the time-series tables
        that TimescaleDB's background scheduler has let fall behind — its last run failed, or it is overdue by a whole
        interval (decision 35). Returns the jobs run. One process at a time runs a job (an advisory lock per job)."""
        async with self.pool.acquire() as conn:
            stalled = await conn.fetch(_STALLED_POLICIES_SQL, [table.name for table in TIME_SERIES_TABLES])
            ran: list[int] = []
            for job in stalled:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", _POLICY_LOCK, job["job_id"]):
                    continue  # another process of the center is running it
                try:
                    log.warning(
                        "TimescaleDB %s job %d on %s has not run as scheduled (last run: %s, %s); running it here",
                        job["proc_name"], job["job_id"], job["hypertable_name"], job["last_run_status"] or "never",
                        job["last_error"] or "no error recorded",
                    )  # fmt: skip
                    await conn.execute(f"CALL run_job({int(job['job_id'])})")
                    ran.append(job["job_id"])
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1, $2)", _POLICY_LOCK, job["job_id"])
        return ran

    async def maintain_partitions(self, today: dt.date | None = None) -> None:
        """Native path: make sure daily partitions exist ahead of time; drop those past retention."""
        today = today or dt.datetime.now(dt.UTC).date()
        async with self.pool.acquire() as conn:
            for table in TIME_SERIES_TABLES:
                for offset in range(-1, _PARTITION_DAYS_AHEAD + 1):
                    day = today + dt.timedelta(days=offset)
                    await self._create_partition(conn, table.name, day)
                await self._drop_expired_partitions(conn, table.name, today)

    async def _create_partition(self, conn: asyncpg.Connection, table: str, day: dt.date) -> None:
        name = f"{table}_p{day:%Y%m%d}"
        lo, hi = day.isoformat(), (day + dt.timedelta(days=1)).isoformat()
        try:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "
                f"FOR VALUES FROM ('{lo} 00:00+00') TO ('{hi} 00:00+00'){_with_storage(table)}"
            )
        except asyncpg.CheckViolationError:
            # The default partition already holds rows of that day (a device clock far ahead): they stay
            # there, queryable through the parent; the day simply gets no partition of its own.
            log.warning("partition %s not created: the default partition holds rows of that day", name)

    async def _drop_expired_partitions(self, conn: asyncpg.Connection, table: str, today: dt.date) -> None:
        cutoff = today - dt.timedelta(days=self._settings.retention_days)
        for name in await partitions_of(conn, table):
            suffix = name.rsplit("_p", 1)[-1]
            if len(suffix) != 8 or not suffix.isdigit():
                continue
            if dt.datetime.strptime(suffix, "%Y%m%d").date() < cutoff:
                log.info("retention: dropping partition %s", name)
                await conn.execute(f"DROP TABLE {name}")

    async def commit(self, batch: IngestBatch) -> CommitResult:
        """Make a batch durable in one transaction: rows (duplicates dropped by unique key), rejections and
        link events. Either all of it is committed or none; raises StoreError."""
        # Every commit takes the stream tables in one order, whatever its messages' order: a commit that makes a
        # TimescaleDB chunk locks that hypertable (ShareUpdateExclusiveLock) until it ends, and two commit lanes
        # taking two tables in opposite orders would deadlock (at start, and when a day's chunks begin).
        by_stream: dict[Stream, list[Received]] = {stream: [] for stream in self._inserts}
        for item in batch.received:
            by_stream[item.message.stream].append(item)
        chunk = self._settings.insert_chunk_rows
        stored: Counter[Stream] = Counter()
        duplicates: Counter[Stream] = Counter()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                for stream, items in by_stream.items():
                    # In statements of `chunk` rows (decision 44): between them the loop serves the reader.
                    for start in range(0, len(items), chunk):
                        records = [_record(item) for item in items[start : start + chunk]]
                        inserted = await self._insert_deduplicated(conn, stream, records)
                        stored[stream] += inserted
                        duplicates[stream] += len(records) - inserted
                if batch.rejections:
                    await self._insert_rejections(conn, batch.rejections)
                if batch.link_events:
                    await self._insert_link_events(conn, batch.link_events)
        except (
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.InterfaceError,
            OSError,
        ) as exc:
            raise StoreError(f"database unavailable: {exc}", retryable=True) from exc
        except asyncpg.PostgresError as exc:
            # A deadlock or serialization failure (class 40) rolled back a transaction that would succeed again.
            retryable = isinstance(
                exc,
                asyncpg.exceptions.OperatorInterventionError
                | asyncpg.TooManyConnectionsError
                | asyncpg.exceptions.TransactionRollbackError,
            )
            raise StoreError(f"commit failed: {exc}", retryable=retryable) from exc
        return CommitResult(stored=dict(stored), duplicates=dict(duplicates))

    async def _insert_deduplicated(
        self, conn: asyncpg.Connection, stream: Stream, records: Sequence[tuple[Any, ...]]
    ) -> int:
        insert = self._inserts[stream]
        columns = [
            _array_literal(values) if literal else values
            for values, literal in zip(zip(*records, strict=True), insert.literal, strict=True)
        ]
        status: str = await conn.execute(insert.statement, *columns)
        return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"

    async def _insert_rejections(self, conn: asyncpg.Connection, rejections: Sequence[Rejection]) -> None:
        await conn.executemany(
            "INSERT INTO rejected_messages (rx_ts, topic, unit, stream, boot, seq, reason, raw, raw_len) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            "ON CONFLICT (unit, stream, boot, seq) WHERE unit IS NOT NULL AND stream IS NOT NULL "
            "AND boot IS NOT NULL AND seq IS NOT NULL DO NOTHING",
            [
                (
                    from_us(r.rx_ts),
                    r.topic,
                    r.unit,
                    r.stream.value if r.stream else None,
                    r.boot,
                    r.seq,
                    r.reason,
                    r.raw,
                    r.raw_len,
                )
                for r in rejections
            ],
        )

    async def _insert_link_events(self, conn: asyncpg.Connection, events: Sequence[LinkEvent]) -> None:
        await conn.executemany(
            "INSERT INTO link_events (at, unit, kind, stream, boot, first_seq, last_seq, detail) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [
                (
                    from_us(e.at),
                    e.unit,
                    e.kind,
                    e.stream.value if e.stream else None,
                    e.boot,
                    e.first_seq,
                    e.last_seq,
                    json.dumps(dict(e.detail)),
                )
                for e in events
            ],
        )

    async def record_link_events(self, events: Sequence[LinkEvent]) -> None:
        """Record link events outside an ingest batch (the monitor's own findings)."""
        try:
            async with self.pool.acquire() as conn:
                await self._insert_link_events(conn, events)
        except DB_ERRORS as exc:
            raise StoreError(f"could not record link events: {exc}", retryable=True) from exc

    async def save_watermarks(self, marks: Sequence[Watermark]) -> None:
        """Persist ack watermarks; a watermark never moves back (a key named twice keeps the higher). Raises
        StoreError."""
        if not marks:
            return
        # Statements of `insert_chunk_rows` marks: not one per key (each row of an executemany is a round of its own
        # in the server), nor one for the fleet's thousands, which holds the caller's event loop while it is encoded
        # (decision 44). Each commits on its own and locks its rows in key order: a watermark only moves up, so a
        # save cut short is made good by the next, and two savers of the same keys cannot deadlock.
        chunk = self._settings.insert_chunk_rows
        try:
            async with self.pool.acquire() as conn:
                for start in range(0, len(marks), chunk):
                    part = marks[start : start + chunk]
                    await conn.execute(
                        "INSERT INTO ack_watermarks (unit, boot, stream, upto) "
                        "SELECT unit, boot, stream, max(upto) "
                        "FROM unnest($1::text[], $2::text::bigint[], $3::text[], $4::text::bigint[]) "
                        "AS w (unit, boot, stream, upto) "
                        "GROUP BY unit, boot, stream ORDER BY unit, boot, stream "
                        "ON CONFLICT (unit, boot, stream) DO UPDATE "
                        "SET upto = GREATEST(ack_watermarks.upto, EXCLUDED.upto), updated_at = now()",
                        [w.unit for w in part],
                        _array_literal([w.boot for w in part]),
                        [w.stream.value for w in part],
                        _array_literal([w.upto for w in part]),
                    )
        except DB_ERRORS as exc:
            raise StoreError(f"could not save ack watermarks: {exc}", retryable=True) from exc

    async def watermarks(self, keys: Sequence[tuple[str, int, Stream]]) -> dict[tuple[str, int, Stream], int]:
        """The persisted ack watermark of each (unit, boot, stream) that has one."""
        if not keys:
            return {}
        rows = await self._read(
            self.pool.fetch,
            "SELECT w.unit, w.boot, w.stream, w.upto FROM ack_watermarks w "
            "JOIN unnest($1::text[], $2::bigint[], $3::text[]) AS k(unit, boot, stream) "
            "USING (unit, boot, stream)",
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2].value for k in keys],
        )
        return {(r["unit"], r["boot"], Stream(r["stream"])): r["upto"] for r in rows}

    async def settled_above(self, marks: Mapping[tuple[str, int, Stream], int], per_key: int) -> SettledRecord:
        """What the store holds of each (unit, boot, stream) above the given seq: the lowest `per_key` seqs stored
        and as many rejected, and the ranges declared lost. From these and a saved watermark, the watermark a
        gateway had reached is derived (decision 40). Raises StoreError."""
        settled: list[Settled] = []
        if not marks:
            return SettledRecord(settled, [])
        by_stream: dict[Stream, list[tuple[str, int, int]]] = {}
        for (unit, boot, stream), upto in marks.items():
            by_stream.setdefault(stream, []).append((unit, boot, upto))
        keys = "unnest($1::text[], $2::bigint[], $3::bigint[]) AS k (unit, boot, upto)"
        for stream, group in by_stream.items():
            units, boots, uptos = (list(column) for column in zip(*group, strict=True))
            rows = await self._read(
                self.pool.fetch,
                f"SELECT k.unit, k.boot, d.seq FROM {keys} "
                f"JOIN LATERAL (SELECT seq FROM {_TABLES[stream]} d "
                "WHERE d.unit = k.unit AND d.boot = k.boot AND d.seq > k.upto ORDER BY seq LIMIT $4) d ON true",
                units,
                boots,
                uptos,
                per_key,
            )
            settled += [Settled(r["unit"], r["boot"], stream, r["seq"], rejected=False) for r in rows]
            rows = await self._read(
                self.pool.fetch,
                f"SELECT k.unit, k.boot, r.seq FROM {keys} "
                "JOIN LATERAL (SELECT seq FROM rejected_messages r WHERE r.unit = k.unit AND r.stream = $4 "
                "AND r.boot = k.boot AND r.seq > k.upto ORDER BY seq LIMIT $5) r ON true",
                units,
                boots,
                uptos,
                stream.value,
                per_key,
            )
            settled += [Settled(r["unit"], r["boot"], stream, r["seq"], rejected=True) for r in rows]
        rows = await self._read(
            self.pool.fetch,
            "SELECT k.unit, k.boot, k.stream, l.first_seq, l.last_seq "
            "FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[]) AS k (unit, boot, stream, upto) "
            "JOIN link_events l ON l.unit = k.unit AND l.kind = 'data_loss' AND l.stream = k.stream "
            "AND l.boot = k.boot AND l.last_seq > k.upto",
            [unit for unit, _, _ in marks],
            [boot for _, boot, _ in marks],
            [stream.value for _, _, stream in marks],
            list(marks.values()),
        )
        losses = [DeclaredLoss(r["unit"], r["boot"], Stream(r["stream"]), r["first_seq"], r["last_seq"]) for r in rows]
        return SettledRecord(settled, losses)

    async def rejected_seqs(self, unit: str, boot: int, stream: Stream, lo: int, hi: int) -> list[int]:
        """Seqs of (unit, boot, stream) in [lo, hi] that were rejected (for re-acknowledging a replay)."""
        rows = await self._read(
            self.pool.fetch,
            "SELECT seq FROM rejected_messages WHERE unit = $1 AND stream = $2 AND boot = $3 "
            "AND seq BETWEEN $4 AND $5 ORDER BY seq",
            unit,
            stream.value,
            boot,
            lo,
            hi,
        )
        return [r["seq"] for r in rows]

    async def _read(self, fetch: Callable[..., Awaitable[list[asyncpg.Record]]], *args: Any) -> list[asyncpg.Record]:
        try:
            return await fetch(*args)
        except DB_ERRORS as exc:
            raise StoreError(f"read failed: {exc}", retryable=True) from exc

    async def last_positions(self) -> list[GpsFix]:
        """Each unit's latest stored GPS fix (to seed a console's fleet view at start)."""
        rows = await self._read(
            self.pool.fetch,
            "SELECT DISTINCT ON (unit) unit, boot, seq, ts, lat, lon, speed, heading, acc "
            "FROM gps_fixes WHERE ts > now() - interval '1 day' ORDER BY unit, ts DESC",
        )
        return [
            GpsFix(
                r["unit"],
                r["boot"],
                r["seq"],
                to_us(r["ts"]),
                r["lat"],
                r["lon"],
                r["speed"],
                r["heading"],
                r["acc"],
            )
            for r in rows
        ]
