"""The store on both of its paths: native partitions always, TimescaleDB whenever the extension is installed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import free_port, fresh_database

from emergency.protocol import DeviceEvent, EcgFrame, EventKind, GpsFix, Stream, Vitals
from emergency.settings import StoreSettings
from emergency.stack import PostgresCluster, timescaledb_available
from emergency.stack.postgres import pg_bindir
from emergency.store import (
    IngestBatch,
    LinkEvent,
    Received,
    Rejection,
    SettledRecord,
    Store,
    StoreError,
    Watermark,
    _migrations,
    to_us,
)
from emergency.store._migrations import MIGRATIONS, partitions_of

HAS_TIMESCALEDB = timescaledb_available(pg_bindir())
FLAVOURS = [
    "postgresql",
    pytest.param(
        "timescaledb",
        marks=[
            pytest.mark.timescaledb,
            pytest.mark.skipif(
                not HAS_TIMESCALEDB,
                reason="the timescaledb extension is not installed for this PostgreSQL (Debian does not package it)",
            ),
        ],
    ),
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def timescale_cluster(stack_root: Path) -> AsyncIterator[PostgresCluster | None]:
    if not HAS_TIMESCALEDB:
        yield None
        return
    async with PostgresCluster(stack_root / "pg-timescaledb", free_port(), timescaledb=True) as cluster:
        yield cluster


@pytest_asyncio.fixture(params=FLAVOURS, loop_scope="session")
async def store(request: pytest.FixtureRequest, postgres: PostgresCluster, timescale_cluster) -> AsyncIterator[Store]:  # type: ignore[no-untyped-def]
    cluster = timescale_cluster if request.param == "timescaledb" else postgres
    async with Store.open(cluster.dsn, StoreSettings(retention_days=7)) as opened:
        assert opened.timescaledb == (request.param == "timescaledb")
        yield opened


def _ecg(unit: str, seq: int, ts: int) -> EcgFrame:
    return EcgFrame(unit, 1, seq, ts, 500.0, ("I", "II", "III"), 2.5, 4, bytes(range(24)))


async def test_migrations_are_idempotent(store: Store) -> None:
    """Opening the store again applies nothing twice and keeps its flavour."""
    async with Store.open(store._dsn) as again:
        assert again.timescaledb == store.timescaledb
    assert await store.pool.fetchval("SELECT count(*) FROM schema_migrations") == len(MIGRATIONS)


async def test_commit_stores_once_and_keeps_raw_samples(store: Store) -> None:
    """A batch committed twice stores each message once; ECG bytes, lead names, event details and every time (to the
    µs) come back as sent."""
    unit, now = f"S{time.monotonic_ns() % 10**8}", time.time_ns() // 1000
    batch = IngestBatch(
        received=[Received(_ecg(unit, seq, now + seq), now) for seq in range(3)]
        + [
            Received(Vitals(unit, 1, 0, now, hr=60.0, nibp_ts=now - 10), now),
            Received(Vitals(unit, 1, 1, now + 1, hr=61.0), now + 7),
            Received(GpsFix(unit, 1, 0, now, 31.0, 121.0), now),
            Received(DeviceEvent(unit, 1, 0, now, EventKind.FINDING, {"code": "gcs", "value": 14}), now),
        ],
        rejections=[Rejection(now, f"ems/v1/{unit}/ecg", "bad", b"xx", 2, unit, Stream.ECG, 1, 3)],
    )
    first = await store.commit(batch)
    second = await store.commit(batch)
    assert first.stored == {Stream.ECG: 3, Stream.VITALS: 2, Stream.GPS: 1, Stream.EVENT: 1}
    assert second.stored == {Stream.ECG: 0, Stream.VITALS: 0, Stream.GPS: 0, Stream.EVENT: 0}
    assert second.duplicates == {Stream.ECG: 3, Stream.VITALS: 2, Stream.GPS: 1, Stream.EVENT: 1}
    assert await store.pool.fetchval("SELECT data FROM ecg_frames WHERE unit = $1 AND seq = 1", unit) == bytes(
        range(24)
    )
    assert await store.pool.fetchval("SELECT leads FROM ecg_frames WHERE unit = $1 AND seq = 1", unit) == [
        "I",
        "II",
        "III",
    ]
    kind, detail = await store.pool.fetchrow("SELECT kind, detail FROM device_events WHERE unit = $1", unit)
    assert (kind, json.loads(detail)) == ("finding", {"code": "gcs", "value": 14})
    assert await store.rejected_seqs(unit, 1, Stream.ECG, 0, 10) == [3]
    times = await store.pool.fetch("SELECT seq, ts, rx_ts, nibp_ts FROM vitals WHERE unit = $1 ORDER BY seq", unit)
    assert [(r["seq"], to_us(r["ts"]), to_us(r["rx_ts"])) for r in times] == [(0, now, now), (1, now + 1, now + 7)]
    assert [None if r["nibp_ts"] is None else to_us(r["nibp_ts"]) for r in times] == [now - 10, None]
    ecg_times = await store.pool.fetch("SELECT ts FROM ecg_frames WHERE unit = $1 ORDER BY seq", unit)
    assert [to_us(r["ts"]) for r in ecg_times] == [now, now + 1, now + 2]


async def test_watermarks_of_many_keys_save_together_and_never_move_back(store: Store) -> None:
    """One save moves many keys' watermarks; a key named twice keeps the higher, and a lower one later changes
    nothing (a gateway restarted from the database never acknowledges less than it already did)."""
    unit = f"W{time.monotonic_ns() % 10**8}"
    keys = [(unit, boot, stream) for boot in (1, 2) for stream in (Stream.ECG, Stream.VITALS, Stream.GPS)]
    marks = [Watermark(u, b, s, 10 * i) for i, (u, b, s) in enumerate(keys)]
    await store.save_watermarks([*marks, Watermark(unit, 1, Stream.ECG, 7), Watermark(unit, 1, Stream.ECG, 5)])
    assert await store.watermarks(keys) == {(unit, 1, Stream.ECG): 7} | {k: 10 * i for i, k in enumerate(keys) if i}
    await store.save_watermarks([Watermark(unit, 1, Stream.ECG, 6), Watermark(unit, 2, Stream.GPS, 99)])
    assert (await store.watermarks(keys))[(unit, 1, Stream.ECG)] == 7
    assert (await store.watermarks(keys))[(unit, 2, Stream.GPS)] == 99


async def test_the_record_above_a_watermark_names_stored_rejected_and_declared_lost_seqs(store: Store) -> None:
    """What a gateway derives a watermark from (decision 40): per key, the seqs above the given one that were stored
    or rejected (the lowest so many of each), and the declared losses reaching above it. Other boots, other streams
    and seqs at or below the watermark are not named."""
    unit, now = f"R{time.monotonic_ns() % 10**8}", time.time_ns() // 1000
    await store.commit(
        IngestBatch(
            received=[Received(_ecg(unit, seq, now + seq), now) for seq in (0, 1, 2, 5)]
            + [Received(Vitals(unit, 1, seq, now + seq, hr=60.0), now) for seq in (0, 1)]
            + [Received(Vitals(unit, 2, 0, now, hr=60.0), now)],
            rejections=[
                Rejection(now, f"ems/v1/{unit}/ecg", "bad", b"x", 1, unit, Stream.ECG, 1, 3),
                Rejection(now, f"ems/v1/{unit}/vitals", "bad", b"x", 1, unit, Stream.VITALS, 1, 2),
            ],
            link_events=[
                LinkEvent(now, unit, "data_loss", Stream.ECG, 1, 6, 9),
                LinkEvent(now, unit, "data_loss", Stream.ECG, 1, 0, 0),  # at or below the watermark
                LinkEvent(now, unit, "seq_gap", Stream.ECG, 1, 10, 12),  # an observation, not a declaration
            ],
        )
    )
    record = await store.settled_above({(unit, 1, Stream.ECG): 1, (unit, 1, Stream.VITALS): -1}, per_key=100)
    assert sorted((s.stream, s.seq, s.rejected) for s in record.settled) == [
        (Stream.ECG, 2, False),
        (Stream.ECG, 3, True),
        (Stream.ECG, 5, False),
        (Stream.VITALS, 0, False),
        (Stream.VITALS, 1, False),
        (Stream.VITALS, 2, True),
    ]
    assert {(s.unit, s.boot) for s in record.settled} == {(unit, 1)}
    assert [(x.unit, x.boot, x.stream, x.first, x.last) for x in record.losses] == [(unit, 1, Stream.ECG, 6, 9)]
    lowest = await store.settled_above({(unit, 1, Stream.ECG): -1}, per_key=2)
    assert sorted((s.seq, s.rejected) for s in lowest.settled) == [(0, False), (1, False), (3, True)]
    assert await store.settled_above({}, per_key=100) == SettledRecord([], [])


async def test_a_connection_given_back_to_the_pool_costs_no_reset_statement(store: Store) -> None:
    """The pool gives a connection back without asyncpg's reset query (decision 50): nothing the store's borrowers
    do outlives their transaction. A transaction left open is still rolled back by asyncpg."""
    seen: list[str] = []
    async with store.pool.acquire() as conn:
        conn.add_query_logger(lambda record: seen.append(record.query))
        await conn.execute("SELECT 1")
        await conn.execute("BEGIN")
    assert seen == ["SELECT 1", "BEGIN", "ROLLBACK"]


async def test_a_commit_in_several_statements_counts_every_row_and_is_still_all_or_nothing(store: Store) -> None:
    """A stream's rows go in by `insert_chunk_rows` at a time (decision 44): every chunk's stored rows and duplicates
    are counted, and a row the database refuses in the last chunk takes the earlier chunks back with it."""
    unit, now = f"K{time.monotonic_ns() % 10**8}", time.time_ns() // 1000
    async with Store.open(store._dsn, StoreSettings(insert_chunk_rows=2)) as chunked:
        await chunked.commit(IngestBatch(received=[Received(_ecg(unit, seq, now + seq), now) for seq in (1, 3)]))
        result = await chunked.commit(
            IngestBatch(received=[Received(_ecg(unit, seq, now + seq), now) for seq in range(7)])
        )
        assert (result.stored, result.duplicates) == ({Stream.ECG: 5}, {Stream.ECG: 2})
        seqs = await store.pool.fetch("SELECT seq FROM ecg_frames WHERE unit = $1 ORDER BY seq", unit)
        assert [r["seq"] for r in seqs] == list(range(7))

        refused = [Received(_ecg(unit, seq, now + seq), now) for seq in range(10, 15)]
        refused.append(Received(_ecg(unit + "\x00", 15, now), now))  # text PostgreSQL cannot hold
        with pytest.raises(StoreError) as caught:
            await chunked.commit(IngestBatch(received=refused))
        assert not caught.value.retryable
        assert await store.pool.fetchval("SELECT count(*) FROM ecg_frames WHERE unit = $1 AND seq >= 10", unit) == 0


async def test_commits_making_new_chunks_with_streams_in_opposite_orders_both_commit(store: Store) -> None:
    """Two commit lanes at once, their batches holding 12-lead and vitals in opposite orders, each making new
    TimescaleDB chunks (as at start, and when a day begins): both commit, because every commit takes the stream
    tables in one order (a chunk's creation locks its hypertable until the commit)."""
    run, now = time.monotonic_ns() % 10**8, time.time_ns() // 1000
    day_us = 86_400_000_000
    first = to_us(dt.datetime(2031, 1, 1, tzinfo=dt.UTC))
    for day in range(0, 6, 2):  # new chunks of both tables each time
        ts = first + day * day_us
        a, b = f"DA{run}-{day}", f"DB{run}-{day}"
        vitals_first = IngestBatch(
            received=[Received(Vitals(a, 1, 0, ts, hr=80.0), now), Received(_ecg(a, 0, ts), now)]
        )
        ecg_first = IngestBatch(received=[Received(_ecg(b, 0, ts), now), Received(Vitals(b, 1, 0, ts, hr=80.0), now)])
        results = await asyncio.gather(store.commit(vitals_first), store.commit(ecg_first))
        assert [r.stored for r in results] == [{Stream.VITALS: 1, Stream.ECG: 1}] * 2


async def test_numbers_are_stored_as_given(store: Store) -> None:
    """Numeric columns travel as array literals (decision 37): a `double precision` column gives back the same double,
    a `real` one the float nearest to it, integers and µs times come back to the unit, and a missing value as NULL."""
    unit, now = f"N{time.monotonic_ns() % 10**8}", time.time_ns() // 1000
    floats = [0.1 + 0.2, 1 / 3, 1.2e-38, 3.4e38, -0.0, 2.5e-7, 123456789.123456789, 37.2]
    vitals = [
        Vitals(unit, 2**40, seq, now + seq, hr=f, sbp=None if seq % 2 else -f, nibp_ts=None if seq % 3 else now - seq)
        for seq, f in enumerate(floats)
    ]
    fix = GpsFix(unit, 2**40, 2**62, now, -33.868820000000003, 5e-324, speed=None, heading=359.99999999999994)
    await store.commit(IngestBatch(received=[Received(v, now + 1) for v in vitals] + [Received(fix, now + 2)]))
    rows = await store.pool.fetch(
        "SELECT boot, seq, ts, hr, sbp, nibp_ts FROM vitals WHERE unit = $1 ORDER BY seq", unit
    )

    def real(x: float | None) -> float | None:
        return None if x is None else struct.unpack("f", struct.pack("f", x))[0]

    assert [(r["boot"], r["seq"], to_us(r["ts"]), r["hr"], r["sbp"]) for r in rows] == [
        (v.boot, v.seq, v.ts, real(v.hr), real(v.sbp)) for v in vitals
    ]
    assert [None if r["nibp_ts"] is None else to_us(r["nibp_ts"]) for r in rows] == [v.nibp_ts for v in vitals]
    assert math.copysign(1, rows[4]["hr"]) == -1  # -0.0 stays negative
    got = await store.pool.fetchrow("SELECT seq, lat, lon, speed, heading FROM gps_fixes WHERE unit = $1", unit)
    assert tuple(got) == (fix.seq, fix.lat, fix.lon, None, real(fix.heading))


async def test_device_time_far_from_now_is_still_stored(store: Store) -> None:
    """A message stamped by a badly wrong device clock (years off) is stored, not refused."""
    unit, now = f"K{time.monotonic_ns() % 10**8}", time.time_ns() // 1000
    long_ago = to_us(dt.datetime(2003, 5, 1, tzinfo=dt.UTC))
    result = await store.commit(IngestBatch(received=[Received(_ecg(unit, 0, long_ago), now)]))
    assert result.stored == {Stream.ECG: 1}


async def test_native_partitions_are_created_ahead_and_expired(store: Store) -> None:
    """Without TimescaleDB, daily partitions exist ahead of time and those past retention are dropped."""
    if store.timescaledb:
        pytest.skip("native partition maintenance does not apply to hypertables")
    today = dt.datetime.now(dt.UTC).date()
    old = today - dt.timedelta(days=20)
    await store.maintain_partitions(today=old)  # as if the system had run back then
    await store.maintain_partitions(today=today)
    names = {
        r["relname"]
        for r in await store.pool.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'ecg_frames'::regclass"
        )
    }
    assert f"ecg_frames_p{today + dt.timedelta(days=3):%Y%m%d}" in names
    assert f"ecg_frames_p{old:%Y%m%d}" not in names
    assert "ecg_frames_default" in names


async def test_timescaledb_hypertables_have_compression_and_retention(store: Store) -> None:
    """With TimescaleDB, the time series are hypertables with compression and retention policies."""
    if not store.timescaledb:
        pytest.skip("plain PostgreSQL path")
    hypertables = {
        r["hypertable_name"]
        for r in await store.pool.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
    }
    assert {"ecg_frames", "vitals", "gps_fixes"} <= hypertables
    jobs = {
        (r["proc_name"], r["hypertable_name"])
        for r in await store.pool.fetch("SELECT proc_name, hypertable_name FROM timescaledb_information.jobs")
    }
    assert ("policy_compression", "ecg_frames") in jobs and ("policy_retention", "ecg_frames") in jobs


async def test_timescaledb_deduplicates_against_compressed_chunks(store: Store) -> None:
    """With TimescaleDB, a retransmission of a message already in a compressed chunk is still stored once."""
    if not store.timescaledb:
        pytest.skip("plain PostgreSQL path")
    unit, now = f"Z{time.monotonic_ns() % 10**8}", time.time_ns() // 1000
    week_ago = now - 7 * 86_400_000_000
    batch = IngestBatch(received=[Received(_ecg(unit, seq, week_ago + seq), now) for seq in range(3)])
    await store.commit(batch)
    await store.pool.execute(
        "SELECT compress_chunk(c, if_not_compressed => true) "
        "FROM show_chunks('ecg_frames', older_than => now() - interval '1 day') c"
    )
    again = await store.commit(batch)
    assert again.stored == {Stream.ECG: 0} and again.duplicates == {Stream.ECG: 3}
    assert await store.pool.fetchval("SELECT count(*) FROM ecg_frames WHERE unit = $1", unit) == 3


async def _toast_rows(store: Store, relation: str) -> int:
    toast = await store.pool.fetchval(
        "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = $1::regclass", relation
    )
    return int(await store.pool.fetchval(f"SELECT count(*) FROM {toast}"))


async def test_a_12_lead_frame_is_stored_inline(store: Store) -> None:
    """A standard 12-lead frame (250 ms at 500 Hz, 3 000 bytes of samples that do not compress) is stored in its
    row: no TOAST rows, no compression attempt (decision 29)."""
    unit, now = f"T{time.monotonic_ns() % 10**8}", time.time_ns() // 1000
    leads = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

    def frame(seq: int) -> EcgFrame:
        return EcgFrame(unit, 1, seq, now + seq, 500.0, leads, 2.5, 125, os.urandom(12 * 125 * 2))

    await store.commit(IngestBatch(received=[Received(frame(0), now)]))
    relation = await store.pool.fetchval("SELECT tableoid::regclass::text FROM ecg_frames WHERE unit = $1", unit)
    before = await _toast_rows(store, relation)
    await store.commit(IngestBatch(received=[Received(frame(seq), now) for seq in range(1, 50)]))
    assert await store.pool.fetchval("SELECT count(*) FROM ecg_frames WHERE unit = $1", unit) == 50
    assert await _toast_rows(store, relation) == before


async def test_an_existing_store_stores_frames_inline_after_the_upgrade(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store made before migration 4 gets the 12-lead table's storage parameters on every existing chunk or
    partition when it is next opened."""
    dsn = await fresh_database(store._dsn, "store")
    with monkeypatch.context() as before_4:
        before_4.setattr(_migrations, "MIGRATIONS", MIGRATIONS[:3])
        async with Store.open(dsn, StoreSettings(retention_days=7)) as old:
            now = time.time_ns() // 1000
            await old.commit(IngestBatch(received=[Received(_ecg("U1", 0, now), now)]))  # a chunk, for TimescaleDB
            # As that version made them: no storage parameters anywhere.
            for relation in await _ecg_relations(old):
                await old.pool.execute(f"ALTER TABLE {relation} RESET (toast_tuple_target)")
            assert not await _relations_with(old, "toast_tuple_target=8160")
    async with Store.open(dsn, StoreSettings(retention_days=7)) as upgraded:
        relations = await _ecg_relations(upgraded)
        assert relations
        assert await _relations_with(upgraded, "toast_tuple_target=8160") == relations


async def test_an_existing_store_stops_vacuuming_12_lead_chunks_for_inserts_after_the_upgrade(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store made before migration 5 gets `autovacuum_vacuum_insert_threshold = -1` on every existing 12-lead
    chunk or partition when it is next opened (decision 32); later ones are made with it."""
    dsn = await fresh_database(store._dsn, "store")
    with monkeypatch.context() as before_5:
        before_5.setattr(_migrations, "MIGRATIONS", MIGRATIONS[:4])
        async with Store.open(dsn, StoreSettings(retention_days=7)) as old:
            now = time.time_ns() // 1000
            await old.commit(IngestBatch(received=[Received(_ecg("U1", 0, now), now)]))
            for relation in await _ecg_relations(old):
                await old.pool.execute(f"ALTER TABLE {relation} RESET (autovacuum_vacuum_insert_threshold)")
            assert not await _relations_with(old, _NO_INSERT_VACUUM)
    async with Store.open(dsn, StoreSettings(retention_days=7)) as upgraded:
        relations = await _ecg_relations(upgraded)
        assert relations and await _relations_with(upgraded, _NO_INSERT_VACUUM) == relations
        # A chunk or partition made from now on has it too.
        if upgraded.timescaledb:
            next_week = now + 7 * 86_400_000_000
            await upgraded.commit(IngestBatch(received=[Received(_ecg("U1", 1, next_week), now)]))
        else:
            await upgraded.maintain_partitions(dt.datetime.now(dt.UTC).date() + dt.timedelta(days=3))
        later = await _ecg_relations(upgraded)
        assert later > relations
        assert await _relations_with(upgraded, _NO_INSERT_VACUUM) == later


async def _ecg_relations(store: Store) -> set[str]:
    """The relations that hold 12-lead rows: the hypertable's chunks or the native partitions."""
    async with store.pool.acquire() as conn:
        return set(await partitions_of(conn, "ecg_frames"))


_NO_INSERT_VACUUM = "autovacuum_vacuum_insert_threshold=-1"


async def _relations_with(store: Store, option: str) -> set[str]:
    """The 12-lead relations that have the storage parameter `option` ("name=value")."""
    relations = await _ecg_relations(store)
    rows = await store.pool.fetch(
        "SELECT oid::regclass::text AS name FROM pg_class WHERE oid = ANY($1::regclass[]) AND $2 = ANY(reloptions)",
        sorted(relations),
        option,
    )
    return {r["name"] for r in rows}


async def test_a_policy_the_scheduler_does_not_run_is_run_by_the_store(store: Store) -> None:
    """With TimescaleDB, a compression policy its background scheduler has let fall behind (here: the scheduler
    stopped and the job overdue by days; on PostgreSQL 15.20 with TimescaleDB 2.28.3 every background run fails) is
    run by the store itself, and the chunks it is due to compress are compressed."""
    if not store.timescaledb:
        pytest.skip("plain PostgreSQL path")
    unit, now = f"P{time.monotonic_ns() % 10**8}", time.time_ns() // 1000
    four_days_ago = now - 4 * 86_400_000_000
    await store.commit(IngestBatch(received=[Received(_ecg(unit, seq, four_days_ago + seq), now) for seq in range(3)]))
    old_chunks = (
        "SELECT count(*) AS chunks, count(*) FILTER (WHERE is_compressed) AS compressed "
        "FROM timescaledb_information.chunks WHERE hypertable_name = 'ecg_frames' "
        "AND range_end < now() - interval '2 days'"
    )
    job = await store.pool.fetchval(
        "SELECT job_id FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_compression' AND hypertable_name = 'ecg_frames'"
    )
    await store.pool.execute("SELECT _timescaledb_functions.stop_background_workers()")
    try:
        await store.pool.execute("SELECT alter_job($1, next_start => now() - interval '2 days')", job)
        before = await store.pool.fetchrow(old_chunks)
        assert before["chunks"] >= 1 and before["compressed"] < before["chunks"]
        assert job in await store.run_stalled_policies()
        after = await store.pool.fetchrow(old_chunks)
        assert after["compressed"] == after["chunks"] >= 1
        assert await store.pool.fetchval("SELECT count(*) FROM ecg_frames WHERE unit = $1", unit) == 3
    finally:
        await store.pool.execute("SELECT _timescaledb_functions.start_background_workers()")
