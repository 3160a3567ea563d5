"""The store on both of its paths: native partitions always, TimescaleDB whenever the extension is installed."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import free_port

from emergency.protocol import EcgFrame, GpsFix, Stream, Vitals
from emergency.settings import StoreSettings
from emergency.stack import PostgresCluster, timescaledb_available
from emergency.stack.postgres import pg_bindir
from emergency.store import IngestBatch, Received, Rejection, Store, Watermark
from emergency.store._migrations import MIGRATIONS

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


def _us(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _ecg(unit: str, seq: int, ts: int) -> EcgFrame:
    return EcgFrame(unit, 1, seq, ts, 500.0, ("I", "II", "III"), 2.5, 4, bytes(range(24)))


async def test_migrations_are_idempotent(store: Store) -> None:
    """Opening the store again applies nothing twice and keeps its flavour."""
    async with Store.open(store._dsn) as again:
        assert again.timescaledb == store.timescaledb
    assert await store.pool.fetchval("SELECT count(*) FROM schema_migrations") == len(MIGRATIONS)


async def test_commit_stores_once_and_keeps_raw_samples(store: Store) -> None:
    """A batch committed twice stores each message once; ECG bytes come back exactly as sent."""
    unit, now = f"S{time.monotonic_ns() % 10**8}", time.time_ns() // 1000
    batch = IngestBatch(
        received=[Received(_ecg(unit, seq, now + seq), now) for seq in range(3)]
        + [
            Received(Vitals(unit, 1, 0, now, hr=60.0, nibp_ts=now - 10), now),
            Received(GpsFix(unit, 1, 0, now, 31.0, 121.0), now),
        ],
        rejections=[Rejection(now, f"ems/v1/{unit}/ecg", "bad", b"xx", 2, unit, Stream.ECG, 1, 3)],
        watermarks=[Watermark(unit, 1, Stream.ECG, 3)],
    )
    first = await store.commit(batch)
    second = await store.commit(batch)
    assert first.stored == {Stream.ECG: 3, Stream.VITALS: 1, Stream.GPS: 1}
    assert second.stored == {Stream.ECG: 0, Stream.VITALS: 0, Stream.GPS: 0}
    assert second.duplicates == {Stream.ECG: 3, Stream.VITALS: 1, Stream.GPS: 1}
    assert await store.pool.fetchval("SELECT data FROM ecg_frames WHERE unit = $1 AND seq = 1", unit) == bytes(
        range(24)
    )
    assert await store.rejected_seqs(unit, 1, Stream.ECG, 0, 10) == [3]
    assert await store.watermarks([(unit, 1, Stream.ECG)]) == {(unit, 1, Stream.ECG): 3}
    rx, ts = await store.pool.fetchrow("SELECT rx_ts, ts FROM vitals WHERE unit = $1", unit)
    assert rx is not None and ts is not None


async def test_device_time_far_from_now_is_still_stored(store: Store) -> None:
    """A message stamped by a badly wrong device clock (years off) is stored, not refused."""
    unit, now = f"K{time.monotonic_ns() % 10**8}", time.time_ns() // 1000
    long_ago = _us(dt.datetime(2003, 5, 1, tzinfo=dt.UTC))
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
