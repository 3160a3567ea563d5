"""The private stack: PostgreSQL as an unprivileged account surviving crashes, mosquitto keeping sessions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import asyncpg
import psutil
import pytest
from conftest import free_port, services_dir, until_authorized
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from emergency.mqtt import mqtt_client
from emergency.stack import GATEWAY_ACCOUNT, Broker, PostgresCluster, StackError, provision_unit


@pytest.fixture
def private_root() -> Iterator[Path]:
    with services_dir("emergency-stack-test-") as root:
        yield root


def _process_tree(pid: int) -> list[psutil.Process]:
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def _gone(processes: list[psutil.Process]) -> bool:
    return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)


async def test_cluster_starts_survives_crash_and_leaves_nothing(private_root: Path) -> None:
    """A fresh cluster serves its DSN, keeps committed rows across an immediate stop, and exits without leftovers."""
    async with PostgresCluster(private_root, free_port(), timescaledb=False) as pg:
        secret = private_root / "secrets" / "postgres-password"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
        if os.geteuid() == 0:
            assert (pg.datadir / "PG_VERSION").stat().st_uid != 0, "PostgreSQL must not run as root"
        assert pg.dsn.startswith(f"postgresql://emergency:{secret.read_text().strip()}@127.0.0.1:{pg.port}/emergency")

        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SHOW fsync") == "on"
            # Tuned for ingest: checkpoints bounded by time, not by a burst of WAL; full-page images compressed.
            assert await conn.fetchval("SHOW max_wal_size") == "4GB"
            assert await conn.fetchval("SHOW wal_compression") in {"lz4", "pglz"}
            await conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        finally:
            await conn.close()

        await pg.stop("immediate")  # crash-like: no checkpoint, recovery from WAL at next start
        with pytest.raises(OSError):
            await asyncpg.connect(pg.dsn, timeout=2)
        await pg.start()
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT x FROM t") == 42
        finally:
            await conn.close()
        assert pg._proc is not None
        tree = _process_tree(pg._proc.pid)
        assert len(tree) > 1  # the postmaster and its background workers
    assert _gone(tree)


async def test_cluster_reopens_with_the_same_password(private_root: Path) -> None:
    """Entering again on the same directory reuses the cluster and its secret instead of initialising anew."""
    port = free_port()
    async with PostgresCluster(private_root, port, timescaledb=False) as pg:
        first_dsn = pg.dsn
        conn = await asyncpg.connect(pg.dsn)
        await conn.execute("CREATE TABLE kept (x int)")
        await conn.close()
    async with PostgresCluster(private_root, port, timescaledb=False) as pg:
        assert pg.dsn == first_dsn
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM kept") == 0
        finally:
            await conn.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to another account")
async def test_cluster_refuses_an_unreachable_directory() -> None:
    """As root, a data directory under a 0700 parent fails with a clear error before anything starts."""
    parent = Path(tempfile.mkdtemp(prefix="emergency-private-"))  # mkdtemp makes it 0700
    try:
        with pytest.raises(StackError, match="not traversable"):
            async with PostgresCluster(parent / "data", free_port(), timescaledb=False):
                pass
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_provision_rejects_bad_unit_ids(broker: Broker) -> None:
    """Unit ids outside the protocol's pattern (e.g. with '/', '+', '#' or '.') are never given an account."""
    for bad in ("a/b", "x+", "#", "center.gateway", ""):
        with pytest.raises(StackError):
            provision_unit(broker.root, bad)


async def test_broker_restart_keeps_persistent_sessions(private_root: Path) -> None:
    """A persistent subscriber's queued QoS 1 message survives a broker restart and is delivered on reconnect."""
    async with Broker(private_root, free_port()) as broker:
        gateway = broker.internal_endpoint(GATEWAY_ACCOUNT)
        unit = "PERSIST1"
        endpoint = broker.endpoint_for(unit, provision_unit(private_root, unit))
        await until_authorized(endpoint)  # the SIGHUP-triggered reload of passwd is asynchronous

        def session() -> aiomqtt.Client:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
            return mqtt_client(endpoint, identifier=unit, clean_start=False, properties=properties)

        async with session() as device:
            await device.subscribe(f"ems/v1/{unit}/ack", qos=1)
        # The device is away; the center acks meanwhile, then the broker restarts cleanly.
        async with mqtt_client(gateway) as center:
            await center.publish(f"ems/v1/{unit}/ack", b"while-away", qos=1)
        await broker.stop(graceful=True)
        await broker.start()

        received: list[bytes] = []
        async with session() as device:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    async for message in device.messages:
                        received.append(bytes(message.payload))  # type: ignore[arg-type]
                        break
        assert received == [b"while-away"]
        assert broker._proc is not None
        pid = broker._proc.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


_ORPHAN_SCRIPT = """
import asyncio, sys
from pathlib import Path
from emergency.stack import Broker, PostgresCluster

async def main():
    root = Path(sys.argv[1])
    async with PostgresCluster(root, int(sys.argv[2]), timescaledb=False) as pg, Broker(root, int(sys.argv[3])) as b:
        print(pg._proc.pid, b._proc.pid, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_services_stop_when_their_owner_is_killed(private_root: Path) -> None:
    """If the process owning the stack dies by SIGKILL, PostgreSQL and mosquitto stop instead of lingering."""
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ORPHAN_SCRIPT,
        str(private_root),
        str(free_port()),
        str(free_port()),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert owner.stdout is not None
        async with asyncio.timeout(60):
            line = await owner.stdout.readline()
        services = [psutil.Process(int(pid)) for pid in line.split()]
        assert len(services) == 2, line
        tree = [p for service in services for p in _process_tree(service.pid)]
    finally:
        owner.kill()
        await owner.wait()
    _, alive = await asyncio.to_thread(psutil.wait_procs, tree, timeout=30)
    for leftover in alive:  # keep a failure of this test from leaving the very processes it is about
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    assert not alive
