"""City-scale benchmark (issue 6): this machine's limits and the whole system at increasing fleet sizes, side by side.

    .venv/bin/python bench/scale.py --units 100,250,500,1000,2000 --partitions 1,2 --seconds 60 --update-docs

One command measures, in order:

1. Baselines with the same payloads: the broker alone (bench/_loadgen.py `flood`, publishing the standard mix at
   QoS 1 as fast as mosquitto acknowledges, → one QoS 1 subscriber on loopback, the same mosquitto configuration as
   the stack's) and PostgreSQL alone (the gateway's `Store.commit`: INSERT … SELECT FROM unnest … ON CONFLICT,
   the ack watermarks saved every few seconds beside, in batches like the gateway's; one and two writers).
2. The whole system (`emergency up`, 1 and 2 gateway partitions) at each fleet size: the fleet from one generator
   process over a few MQTT connections (see bench/_loadgen.py for the shared benchmark account this needs), and N
   console websocket clients in one more process, each watching the ECG of two units and receiving the fleet's
   updates. Offered and stored messages/s, lost and doubled, publish→ack and publish→console p50/p99, CPU and peak
   memory of every process, memory per 1 000 units, and our throughput as a ratio of each baseline. A ladder stops
   early when a size saturates (messages left unacknowledged).
3. Storage: bytes per unit-hour of the time-series tables after each run, and (with TimescaleDB) after
   `compress_chunk` on every chunk.
4. A plot of latency against units (docs/img/latency-vs-units.svg with `--update-docs`, else beside the `--out`
   file; when matplotlib is installed: `pip install -e '.[bench]'`).
5. With `--timeline N`, a row every N s of each run (cores and memory per process, the machine's busy cores, the
   gateway's backlog, commit time and event-loop lag, PostgreSQL's checkpoints, WAL, autovacuum and TimescaleDB
   jobs) and latency percentiles by when the message was made: what a slow minute of a long run coincided with.

The PostgreSQL flavour is TimescaleDB when the extension is installed (`--no-timescaledb` measures the native
partitions instead); every table says which. `--update-docs` rewrites the generated part of the "City scale" section
of docs/benchmarks.md (between its markers); the JSON of every run goes to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "bench" / "_loadgen.py"
sys.path.insert(0, str(ROOT / "bench"))

from _loadgen import SHARED_ACCOUNT, SHARED_ACL, ecg_frames  # noqa: E402
from _scrape import busy_cpu_seconds, scrape  # noqa: E402

from emergency.protocol import STANDARD_LEADS, EcgFrame, GpsFix, Stream, Vitals  # noqa: E402
from emergency.settings import GatewaySettings, StoreSettings  # noqa: E402
from emergency.stack import Broker, PostgresCluster, provision_units  # noqa: E402
from emergency.stack.postgres import pg_bindir, timescaledb_available  # noqa: E402
from emergency.stack.provision import _write_accounts  # noqa: E402
from emergency.store import IngestBatch, Received, Store, Watermark, from_us  # noqa: E402

MSGS_PER_UNIT_S = 6  # 4 ECG frames + 1 vitals + 1 GPS
TIME_SERIES = ("ecg_frames", "vitals", "gps_fixes", "device_events")
DOCS = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "img" / "latency-vs-units.svg"
BEGIN, END = "<!-- scale.py:begin -->", "<!-- scale.py:end -->"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def private_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="emergency-scale-"))
    root.chmod(0o755)  # PostgreSQL runs as nobody when we are root
    return root


def grant_shared_account(root: Path) -> Path:
    """Give the stack's broker the benchmark's shared publishing account; returns its password file."""
    password = secrets.token_urlsafe(18)
    path = root / "secrets" / f"{SHARED_ACCOUNT}.password"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600)
    path.write_text(password)
    _write_accounts(root, {SHARED_ACCOUNT: password})
    return path


def allow_shared_account(root: Path) -> None:
    """Append the shared account's ACL to a running broker's (rewritten at each start) and make it reload."""
    acl = root / "mosquitto" / "acl"
    if SHARED_ACCOUNT not in acl.read_text():
        with acl.open("a") as f:
            f.write(SHARED_ACL)
    pid = int((root / "mosquitto" / "mosquitto.pid").read_text().strip())
    os.kill(pid, signal.SIGHUP)


# -- child processes ------------------------------------------------------------------------------------------


class Child:
    """A bench/_loadgen.py process: started, waited on until it says `connected`, its JSON read at the end."""

    def __init__(self, mode: str, *args: str) -> None:
        self.mode, self.args = mode, args
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(LOADGEN), self.mode, *self.args, stdout=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(120):
            while (line := await self._line()) != "connected":
                if line is None:
                    raise RuntimeError(f"{self.mode} exited before connecting")

    async def _line(self) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            return None
        line = raw.decode().strip()
        self.lines.append(line)
        return line

    async def result(self, within_s: float) -> dict[str, Any]:
        assert self.proc is not None
        async with asyncio.timeout(within_s):
            while await self._line() is not None:
                pass
            await self.proc.wait()
        for line in reversed(self.lines):
            if line.startswith("{"):
                return dict(json.loads(line))
        raise RuntimeError(f"{self.mode} gave no result (exit {self.proc.returncode})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()


# -- process sampling -----------------------------------------------------------------------------------------


@dataclass
class Sampler:
    """CPU (cores over the window) and memory of processes, by role. PostgreSQL backends share their buffers, so
    its memory is the sum of unique memory (USS); everything else is RSS. Our child processes are looked for again
    at every sample: a backend that PostgreSQL starts during the window (a pool opening a second connection) counts
    from its start."""

    roles: dict[int, str] = field(default_factory=dict)
    cpu_start: dict[int, float] = field(default_factory=dict)
    cpu_end: dict[int, float] = field(default_factory=dict)
    system_start: dict[int, float] = field(default_factory=dict)  # the kernel's share of the CPU above
    system_end: dict[int, float] = field(default_factory=dict)
    memory: dict[str, list[int]] = field(default_factory=dict)  # role → samples of the role's total
    stack_pid: int | None = None
    window_started: float | None = None  # epoch s of `reset_cpu`

    def discover(self, stack_pid: int | None, named: dict[int, str]) -> None:
        self.roles.update(named)
        if stack_pid is not None:
            self.stack_pid = stack_pid
        me = psutil.Process()
        for proc in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if proc.pid in self.roles:
                    continue
                name, cmdline = proc.name(), " ".join(proc.cmdline())
                if name == "postgres" or "postgres" in cmdline.split(" ")[0]:
                    self.roles[proc.pid] = "postgres"
                elif "mosquitto" in name:
                    self.roles[proc.pid] = "mosquitto"
                elif "emergency.cli console" in cmdline:
                    self.roles[proc.pid] = "console"
                elif "emergency.cli gateway" in cmdline:
                    self.roles[proc.pid] = "gateway"
                else:
                    continue
                if self.window_started is not None and proc.create_time() >= self.window_started:
                    self.cpu_start[proc.pid] = 0.0  # born in the window: all of its CPU is the window's
                    self.system_start[proc.pid] = 0.0
        if self.stack_pid is not None:
            self.roles[self.stack_pid] = "gateway"

    def sample(self) -> dict[str, int]:
        self.discover(None, {})
        totals: dict[str, int] = {}
        for pid, role in list(self.roles.items()):
            try:
                proc = psutil.Process(pid)
                used = proc.memory_full_info().uss if role == "postgres" else proc.memory_info().rss
                times = proc.cpu_times()
            except psutil.Error:
                continue
            totals[role] = totals.get(role, 0) + used
            self.cpu_start.setdefault(pid, times.user + times.system)
            self.cpu_end[pid] = times.user + times.system
            self.system_start.setdefault(pid, times.system)
            self.system_end[pid] = times.system
        for role, used in totals.items():
            self.memory.setdefault(role, []).append(used)
        return totals

    def reset_cpu(self) -> None:
        self.cpu_start.clear()
        self.cpu_end.clear()
        self.system_start.clear()
        self.system_end.clear()
        self.window_started = time.time()
        self.sample()

    def cpu_cores(self, seconds: float) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.per_role(self.cpu_end, self.cpu_start, seconds).items()}

    def system_cores(self, seconds: float) -> dict[str, float]:
        """The part of `cpu_cores` spent in the kernel (system calls, and the loopback network they drive)."""
        return {k: round(v, 2) for k, v in self.per_role(self.system_end, self.system_start, seconds).items()}

    def per_role(self, end: dict[int, float], start: dict[int, float], seconds: float) -> dict[str, float]:
        """Cores by role between two readings of CPU seconds by pid (a pid missing from `start` counts from `end`)."""
        used: dict[str, float] = {}
        for pid, at_end in end.items():
            role = self.roles[pid]
            used[role] = used.get(role, 0.0) + (at_end - start.get(pid, at_end)) / seconds
        return used


async def sample_window(sampler: Sampler, until: float) -> tuple[float, dict[str, int], dict[str, int], float]:
    """Sample every second until `until` (epoch s); returns the elapsed time, memory at start and end, and the cores
    that processes not ours used meanwhile (other work on a shared machine: the noise in every figure)."""
    started, busy, own = time.monotonic(), busy_cpu_seconds(), time.process_time()
    sampler.reset_cpu()
    first = sampler.sample()
    last = first
    while time.time() < until:
        await asyncio.sleep(min(1.0, max(0.0, until - time.time())))
        last = sampler.sample()
    elapsed = time.monotonic() - started
    ours = sum(sampler.cpu_cores(elapsed).values()) + (time.process_time() - own) / elapsed
    other = max(0.0, (busy_cpu_seconds() - busy) / elapsed - ours)
    return elapsed, first, last, round(other, 2)


_COMMITTED_WITHIN = {
    "n": "device_to_commit_seconds_count",
    "within_0_5s": "device_to_commit_le_0.5",
    "within_1s": "device_to_commit_le_1.0",
}


def commit_bounds(tracked: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Over a run's timeline (`--timeline`): the messages committed, and the share of them committed within 0.5 s
    and 1 s of their device timestamp, from the gateway's histogram (its buckets bound the p99: a share of at least
    0.99 within 1 s is a p99 of at most 1 s)."""
    rows = [row["device_to_commit"] for row in tracked if row.get("device_to_commit", {}).get("n")]
    n = sum(row["n"] for row in rows)
    if not n:
        return None
    return {
        "n": n,
        "share_within_0_5s": round(sum(row["within_0_5s"] for row in rows) / n, 4),
        "share_within_1s": round(sum(row["within_1s"] for row in rows) / n, 4),
    }


def histogram_mean_ms(now: dict[str, float], then: dict[str, float], metric: str) -> float | None:
    """The mean of a Prometheus histogram between two readings, in ms."""
    count = now.get(f"{metric}_count", 0.0) - then.get(f"{metric}_count", 0.0)
    total = now.get(f"{metric}_sum", 0.0) - then.get(f"{metric}_sum", 0.0)
    return round(1000 * total / count) if count else None


async def track(
    sampler: Sampler, info: dict[str, Any], timescaledb: bool, until: float, every: float
) -> list[dict[str, Any]]:
    """Every `every` s until `until`: what each process used, the gateway's backlog and commit time, and what
    PostgreSQL did meanwhile (checkpoints, WAL written, autovacuum, TimescaleDB jobs), to place a slow minute of a
    long run beside its cause. Reads what `sample_window` samples; adds one database connection and two HTTP GETs."""
    conn = await asyncpg.connect(info["postgres_dsn"])
    rows: list[dict[str, Any]] = []
    try:

        async def database() -> dict[str, Any]:
            stats = await conn.fetchrow(
                "SELECT checkpoints_timed + checkpoints_req AS checkpoints, checkpoints_req, buffers_checkpoint, "
                "buffers_backend, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal FROM pg_stat_bgwriter"
            )
            vacuums = await conn.fetch(
                "SELECT query FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' AND query <> ''"
            )
            jobs: list[str] = []
            if timescaledb:
                jobs = [
                    f"{r['proc_name']} {r['hypertable_name'] or ''}".strip()
                    for r in await conn.fetch(
                        "SELECT j.proc_name, j.hypertable_name FROM timescaledb_information.jobs j "
                        "JOIN timescaledb_information.job_stats s USING (job_id) WHERE s.job_status = 'Running'"
                    )
                ]
            return {
                **dict(stats),
                "autovacuum": [r["query"].removeprefix("autovacuum: ") for r in vacuums],
                "jobs": jobs,
            }

        async def gateway() -> dict[str, float]:
            try:
                samples = await scrape(info["gateway_metrics_url"])
            except aiohttp.ClientError:
                return {}
            wanted = ("emergency_gateway_pending_messages", "emergency_gateway_commit_seconds_sum",
                      "emergency_gateway_commit_seconds_count", "emergency_gateway_receive_to_commit_seconds_sum",
                      "emergency_gateway_receive_to_commit_seconds_count", "emergency_gateway_loop_lag_seconds_sum",
                      "emergency_gateway_loop_lag_seconds_count",
                      "emergency_gateway_device_to_commit_seconds_count")  # fmt: skip
            values = {}
            for sample in samples:
                name = sample.name.removeprefix("emergency_gateway_")
                if sample.name in wanted:
                    values[name] = sample.value
                elif name == "device_to_commit_seconds_bucket" and sample.labels.get("le") in ("0.5", "1.0"):
                    # the commit target's bounds: how many were committed within 0.5 s and 1 s
                    values[f"device_to_commit_le_{sample.labels['le']}"] = sample.value
            return values

        started = time.time()
        before_db, before_gw = await database(), await gateway()
        before_cpu, before_system = dict(sampler.cpu_end), dict(sampler.system_end)
        before_busy = busy_cpu_seconds()
        intervals = 0
        # Each row at its own deadline from the start: sleeping `every` after each row's reads would drift, and a
        # ten-minute run lose its last minute.
        while started + (intervals + 1) * every <= until + 0.5:
            intervals += 1
            await asyncio.sleep(max(0.0, started + intervals * every - time.time()))
            db, gw, busy = await database(), await gateway(), busy_cpu_seconds()
            cpu, system = dict(sampler.cpu_end), dict(sampler.system_end)
            # A process born since the last row counts from its start in the window.
            cores = sampler.per_role(cpu, {**sampler.cpu_start, **before_cpu}, every)
            system_cores = sampler.per_role(system, {**sampler.system_start, **before_system}, every)
            # Messages committed in this interval, and of them how many within 0.5 s and 1 s of their device
            # timestamp (publish→commit; the generator's clock is the gateway's).
            committed = {
                key: round(gw.get(metric, 0.0) - before_gw.get(metric, 0.0))
                for key, metric in _COMMITTED_WITHIN.items()
            }
            rows.append({
                "t_s": round(time.time() - started),
                "machine_cores": round((busy - before_busy) / every, 2),
                "cores": {k: round(v, 2) for k, v in cores.items()},
                "system_cores": {k: round(v, 2) for k, v in system_cores.items()},
                "rss_mib": {k: round(v[-1] / 2**20) for k, v in sampler.memory.items()},
                "gateway_pending": gw.get("pending_messages"),
                "commit_ms_mean": histogram_mean_ms(gw, before_gw, "commit_seconds"),
                "receive_to_commit_ms_mean": histogram_mean_ms(gw, before_gw, "receive_to_commit_seconds"),
                "loop_lag_ms_mean": histogram_mean_ms(gw, before_gw, "loop_lag_seconds"),
                "device_to_commit": committed,
                "checkpoints": db["checkpoints"] - before_db["checkpoints"],
                "checkpoints_requested": db["checkpoints_req"] - before_db["checkpoints_req"],
                "wal_mib": round((db["wal"] - before_db["wal"]) / 2**20),
                "buffers_written_by_backends": db["buffers_backend"] - before_db["buffers_backend"],
                "autovacuum": db["autovacuum"],
                "timescaledb_jobs": db["jobs"],
            })  # fmt: skip
            before_db, before_gw, before_cpu, before_system, before_busy = db, gw, cpu, system, busy
    finally:
        await conn.close()
    return rows


# -- baselines -------------------------------------------------------------------------------------------------


async def broker_baseline(seconds: float, connections: int) -> dict[str, Any]:
    """mosquitto alone: the standard mix published at QoS 1 as fast as it is acknowledged, one QoS 1 subscriber."""
    root = private_root()
    try:
        async with Broker(root, free_port()) as broker:
            password_file = grant_shared_account(root)
            allow_shared_account(root)
            await asyncio.sleep(0.5)
            start = time.time() + 3
            window = (start + 2, start + 2 + seconds)
            common = ["--port", str(broker.port), "--from", str(window[0]), "--until", str(window[1])]
            sink = Child(
                "sink", *common, "--username", "center.gateway",
                "--password-file", str(root / "secrets" / "center.gateway.password"),
            )  # fmt: skip
            flood = Child(
                "flood", *common, "--password-file", str(password_file), "--start", str(start),
                "--units", "1000", "--connections", str(connections),
            )  # fmt: skip
            await sink.start()
            await flood.start()
            sampler = Sampler()
            sampler.discover(None, {sink.proc.pid: "subscriber", flood.proc.pid: "publisher"})  # type: ignore[union-attr]
            await asyncio.sleep(max(0.0, window[0] - time.time()))
            elapsed, _, _, other_cpu = await sample_window(sampler, window[1])
            published, received = await flood.result(60), await sink.result(60)
            return {
                "published_acked_msgs_per_s": published["acked_msgs_per_s"],
                "received_msgs_per_s": received["received_msgs_per_s"],
                "received_mbytes_per_s": received["received_mbytes_per_s"],
                "cpu_cores": sampler.cpu_cores(elapsed),
                "other_cpu_cores": other_cpu,
                "connections": connections,
                "receive_max": published["receive_max"],
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def standard_batches(writer: int, units: int, batch: int, count: int) -> list[list[Received]]:
    """`count` batches of `batch` messages of the standard mix (4 ECG : 1 vitals : 1 GPS) over `units` units."""
    frames = ecg_frames()
    boot = 1000 + writer
    seqs = {(u, s): 0 for u in range(units) for s in range(3)}
    out: list[list[Received]] = []
    base = time.time_ns() // 1000
    i = 0
    for _ in range(count):
        items: list[Received] = []
        while len(items) < batch:
            u, tick = i % units, i // units
            unit = f"P{writer}{u:05d}"
            ts = base + i * 100
            kinds = [0] if tick % 4 else [0, 1, 2]
            for k in kinds:
                seq = seqs[(u, k)]
                seqs[(u, k)] += 1
                message: EcgFrame | Vitals | GpsFix
                if k == 0:
                    message = EcgFrame(unit, boot, seq, ts, 500.0, STANDARD_LEADS, 2.5, 125, frames[seq % len(frames)])
                elif k == 1:
                    message = Vitals(unit, boot, seq, ts, hr=80.0, spo2=97.0, rr=16.0)
                else:
                    message = GpsFix(unit, boot, seq, ts, 31.23, 121.47, speed=10.0)
                items.append(Received(message, ts + 1000))
            i += 1
        out.append(items)
    return out


class WatermarkSaver:
    """The ack watermarks a gateway saves beside its commits: each key's highest committed seq, every
    `watermark_save_interval_s` (decision 40)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._marks: dict[tuple[str, int, Stream], int] = {}

    def committed(self, items: list[Received]) -> None:
        for r in items:
            self._marks[(r.message.unit, r.message.boot, r.message.stream)] = r.message.seq

    async def save_forever(self) -> None:
        while True:
            await asyncio.sleep(GatewaySettings().watermark_save_interval_s)
            marks, self._marks = self._marks, {}
            await self._store.save_watermarks([Watermark(*key, upto) for key, upto in marks.items()])


_COPY_COLUMNS = {
    "ecg_frames": ("unit", "boot", "seq", "ts", "rx_ts", "fs", "leads", "lsb_uv", "n", "data"),
    "vitals": ("unit", "boot", "seq", "ts", "rx_ts", "hr", "spo2", "rr"),
    "gps_fixes": ("unit", "boot", "seq", "ts", "rx_ts", "lat", "lon", "speed"),
}


def copy_rows(items: list[Received]) -> dict[str, list[tuple[Any, ...]]]:
    """A batch of the standard mix as COPY rows per table (`_COPY_COLUMNS`), times as datetimes."""
    rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _COPY_COLUMNS}
    for item in items:
        m = item.message
        key = (m.unit, m.boot, m.seq, from_us(m.ts), from_us(item.rx_ts))
        if isinstance(m, EcgFrame):
            rows["ecg_frames"].append((*key, m.fs, list(m.leads), m.lsb_uv, m.n, m.data))
        elif isinstance(m, Vitals):
            rows["vitals"].append((*key, m.hr, m.spo2, m.rr))
        else:
            assert isinstance(m, GpsFix)
            rows["gps_fixes"].append((*key, m.lat, m.lon, m.speed))
    return rows


async def store_baseline(
    timescaledb: bool, seconds: float, writers: int, batch: int, copy: bool = False
) -> dict[str, Any]:
    """PostgreSQL alone, `writers` concurrent writers (one per partition): through the gateway's own commit path,
    or (`copy`) by plain binary COPY of the same messages into the same tables, one transaction per batch — the
    database's own limit for these rows, with no deduplication and nothing of ours in the way."""
    root = private_root()
    try:
        async with (
            PostgresCluster(root, free_port(), timescaledb=timescaledb) as pg,
            Store.open(pg.dsn, StoreSettings()) as store,
        ):
            # Prepared beforehand (enough for the window at several times the expected rate): every message new, so
            # each is inserted, not skipped as a duplicate; making them is not part of what is measured.
            rate = 60_000 if copy else 30_000
            prepared = [standard_batches(w, 1000, batch, round(seconds * rate / batch)) for w in range(writers)]
            rows = [[copy_rows(items) for items in batches] for batches in prepared] if copy else []
            sampler = Sampler()
            sampler.discover(None, {os.getpid(): "writer (the gateway's code, this process)"})
            committed = [0] * writers
            deadline = time.time() + seconds
            saver = WatermarkSaver(store)

            async def writer(w: int) -> None:
                for items in prepared[w]:
                    if time.time() >= deadline:
                        return
                    await store.commit(IngestBatch(received=items))
                    saver.committed(items)
                    committed[w] += len(items)
                log(f"  writer {w} used every prepared batch before the deadline")

            async def copier(w: int) -> None:
                async with store.pool.acquire() as conn:
                    for by_table in rows[w]:
                        if time.time() >= deadline:
                            return
                        async with conn.transaction():
                            for table, records in by_table.items():
                                await conn.copy_records_to_table(table, records=records, columns=_COPY_COLUMNS[table])
                        committed[w] += sum(len(records) for records in by_table.values())
                log(f"  writer {w} used every prepared batch before the deadline")

            started, busy = time.monotonic(), busy_cpu_seconds()
            sampler.reset_cpu()
            saving = asyncio.create_task(saver.save_forever())
            await asyncio.gather(*((copier if copy else writer)(w) for w in range(writers)))
            elapsed = time.monotonic() - started
            saving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saving  # a save that failed fails the baseline instead of vanishing with its task
            sampler.sample()
            cpu = sampler.cpu_cores(elapsed)
            return {
                "method": "copy" if copy else "commit",
                "writers": writers,
                "batch": batch,
                "msgs_per_s": round(sum(committed) / elapsed),
                "cpu_cores": cpu,
                "other_cpu_cores": round(max(0.0, (busy_cpu_seconds() - busy) / elapsed - sum(cpu.values())), 2),
                "timescaledb": pg.timescaledb,
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the whole system ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def system(root: Path, partitions: int, timescaledb: bool) -> AsyncIterator[dict[str, Any]]:
    """PostgreSQL (ours, so that its flavour is chosen here) and `emergency up` with `partitions` gateways."""
    async with PostgresCluster(root, free_port(), timescaledb=timescaledb) as pg:
        http_base = free_port()
        env = {
            **os.environ,
            "EMERGENCY_DATA_DIR": str(root / "data"),
            "EMERGENCY_MQTT_PORT": str(free_port()),
            "EMERGENCY_MQTT_TLS_PORT": str(free_port()),
            "EMERGENCY_HTTP_PORT": str(free_port()),
            "EMERGENCY_GATEWAY__HTTP_PORT": str(http_base),
            "EMERGENCY_GATEWAY__PARTITION_COUNT": str(partitions),
            "EMERGENCY_STORE__DSN": pg.dsn,
            "EMERGENCY_LOG_LEVEL": "WARNING",
        }
        stack = await asyncio.create_subprocess_exec(sys.executable, "-m", "emergency.cli", "up", env=env)
        try:
            info_path = root / "data" / "stack.json"
            async with asyncio.timeout(180):
                while not info_path.exists():
                    if stack.returncode is not None:
                        raise RuntimeError(f"emergency up exited with {stack.returncode}")
                    await asyncio.sleep(0.2)
            info = json.loads(info_path.read_text())
            info["stack_pid"] = stack.pid
            info["env"] = env
            yield info
        finally:
            if stack.returncode is None:
                stack.terminate()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(60):
                        await stack.wait()
            if stack.returncode is None:
                stack.kill()


async def console_cookie(info: dict[str, Any]) -> str:
    """The console's session cookie when it requires a login (a user made with `emergency user add`), else ''."""
    url = info["console_url"]
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "api/fleet") as response:
            if response.status == 200:
                return ""
        password = secrets.token_urlsafe(18)
        user = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "emergency.cli", "user", "add", "bench-watcher", "--role", "ed_nurse"],
            input=password + "\n" + password + "\n", text=True, capture_output=True, env=info["env"],
        )  # fmt: skip
        if user.returncode != 0:
            raise RuntimeError(f"console needs a login and `emergency user add` failed: {user.stderr.strip()}")
        async with http.post(
            url + "api/login",
            json={"username": "bench-watcher", "password": password},
            headers={"Origin": url.rstrip("/")},
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"console login failed: {response.status} {await response.text()}")
            cookie = response.cookies.output(attrs=[], header="").strip()
            return cookie


async def storage(dsn: str, timescaledb: bool, compress: bool) -> dict[str, Any]:
    """Bytes of the time-series tables (indexes and TOAST included) and how many messages they hold."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
        messages = 0
        for table in TIME_SERIES:
            messages += await conn.fetchval(f"SELECT count(*) FROM {table}")
        hypertables = set()
        if timescaledb:
            rows = await conn.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
            hypertables = {r["hypertable_name"] for r in rows} & set(TIME_SERIES)
        if compress:
            for table in sorted(hypertables):
                await conn.execute(f"SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('{table}') c")
        total = 0
        for table in TIME_SERIES:
            if table in hypertables:
                total += await conn.fetchval("SELECT hypertable_size($1::regclass)", table)
            else:
                total += await conn.fetchval(
                    "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree($1::regclass)", table
                )
        total = int(total)  # numeric sums come back as Decimal
        unit_hours = messages / MSGS_PER_UNIT_S / 3600
        return {
            "bytes": total,
            "messages": messages,
            "bytes_per_unit_hour": round(total / unit_hours) if unit_hours else None,
        }
    finally:
        await conn.close()


async def count_stored(dsn: str, units: list[str], window: tuple[float, float]) -> tuple[int, int, int]:
    """Rows stored, distinct (unit, boot, seq) among them, and rows the gateway received within the window.

    Counted unit by unit (one indexed aggregate each, in one statement): a distinct count over a whole table sorts
    all of its rows, and after a long run at city scale that sort spilled more temp files than the disk had left."""
    conn = await asyncpg.connect(dsn)
    try:
        stored = distinct = in_window = 0
        lo, hi = (dt.datetime.fromtimestamp(t, dt.UTC) for t in window)
        for table in ("ecg_frames", "vitals", "gps_fixes"):
            row = await conn.fetchrow(
                "SELECT coalesce(sum(c.n), 0)::bigint AS n, coalesce(sum(c.d), 0)::bigint AS d,"
                " coalesce(sum(c.w), 0)::bigint AS w "
                "FROM unnest($1::text[]) AS u(unit) CROSS JOIN LATERAL ("
                "  SELECT count(*) AS n, count(DISTINCT (boot, seq)) AS d,"
                f"   count(*) FILTER (WHERE rx_ts >= $2 AND rx_ts < $3) AS w FROM {table} t WHERE t.unit = u.unit"
                ") AS c",
                units,
                lo,
                hi,
            )
            stored += row["n"]
            distinct += row["d"]
            in_window += row["w"]
        return stored, distinct, in_window
    finally:
        await conn.close()


async def profile(pid: int, seconds: float, out: Path) -> list[tuple[str, float]]:
    """py-spy over one process for `seconds`: the functions with most own time (share of samples)."""
    tool = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(tool).exists():
        return []
    proc = await asyncio.create_subprocess_exec(
        tool, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50", "--format", "raw",
        "--output", str(out), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await proc.wait()
    own: dict[str, float] = {}
    total = 0.0
    if not out.exists():
        return []
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        own[leaf] = own.get(leaf, 0.0) + float(count)
        total += float(count)
    return [(name, round(100 * n / total, 1)) for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:12]]


async def gateway_health(info: dict[str, Any]) -> dict[str, Any]:
    try:
        async with aiohttp.ClientSession() as http, http.get(info["gateway_health_url"]) as response:
            return dict(await response.json())
    except (aiohttp.ClientError, ValueError) as exc:
        return {"error": str(exc)}


async def system_run(
    units: int,
    partitions: int,
    seconds: float,
    clients: int,
    timescaledb: bool,
    warmup: float,
    profile_dir: Path | None,
    keep_logs: Path | None,
    timeline_s: float = 0.0,
    compress: bool = True,
) -> dict[str, Any]:
    root = private_root()
    prefix = "S"
    try:
        (root / "data").mkdir(mode=0o700)
        names = {f"{prefix}{i:05d}": secrets.token_urlsafe(12) for i in range(units)}
        provision_units(root / "data", names)  # the registry the partitioned gateways follow
        password_file = grant_shared_account(root / "data")
        async with system(root, partitions, timescaledb) as info:
            allow_shared_account(root / "data")
            await asyncio.sleep(1 + (2 if partitions > 1 else 0))  # the other gateways subscribe
            cookie = await console_cookie(info)
            sampler = Sampler()
            sampler.discover(info["stack_pid"], {})
            idle = sampler.sample()
            start = time.time() + 3
            window = (start + warmup, start + warmup + seconds)
            timing = ["--from", str(window[0]), "--until", str(window[1]), "--timeline", str(timeline_s)]
            ws_url = info["console_url"].replace("http", "ws", 1) + "ws"
            consoles = Child(
                "consoles", *timing, "--url", ws_url, "--cookie", cookie, "--clients", str(clients),
                "--prefix", prefix, "--units", str(units),
            )  # fmt: skip
            fleet = Child(
                "fleet", *timing, "--port", str(info["mqtt"]["port"]), "--password-file", str(password_file),
                "--prefix", prefix, "--units", str(units), "--start", str(start),
                "--connections", str(min(8, max(2, units // 100))),
            )  # fmt: skip
            await consoles.start()
            await fleet.start()
            assert fleet.proc is not None and consoles.proc is not None
            sampler.discover(
                info["stack_pid"], {fleet.proc.pid: "load generator", consoles.proc.pid: "console clients"}
            )
            await asyncio.sleep(max(0.0, window[0] - time.time()))
            profiles: dict[str, list[tuple[str, float]]] = {}
            profiling = []
            if profile_dir is not None:
                for role in ("gateway", "console"):
                    pid = next(p for p, r in sampler.roles.items() if r == role)
                    out = profile_dir / f"{role}-{units}u-{partitions}p.txt"
                    profiling.append((role, asyncio.create_task(profile(pid, min(seconds, 20), out))))
            tracking = (
                asyncio.create_task(track(sampler, info, timescaledb, window[1], timeline_s)) if timeline_s else None
            )
            elapsed, at_start, at_end, other_cpu = await sample_window(sampler, window[1])
            tracked = await tracking if tracking is not None else []
            for role, task in profiling:
                profiles[role] = await task
            health = await gateway_health(info)
            generated = await fleet.result(600)  # its drain, then percentiles over every message
            watched = await consoles.result(300)
            # What the database holds. A failure here (a full disk after a long soak) must not cost the run's
            # latency, memory and timeline figures: it is recorded beside them instead.
            counted: tuple[int, int, int] | None = None
            plain = compressed = None
            measure_error = None
            try:
                counted = await count_stored(info["postgres_dsn"], list(names), window)
                plain = await storage(info["postgres_dsn"], timescaledb, compress=False)
                if timescaledb and compress:
                    compressed = await storage(info["postgres_dsn"], timescaledb, compress=True)
            except (asyncpg.PostgresError, OSError) as exc:
                measure_error = f"{type(exc).__name__}: {exc}"
                log(f"  counting what was stored failed: {measure_error}")
            stored, distinct, received_in_window = counted or (None, None, None)
            peak = {role: max(v) for role, v in sampler.memory.items()}
            return {
                "units": units,
                "partitions": partitions,
                "load_average_1min_after": round(os.getloadavg()[0], 1),
                "seconds": round(elapsed, 1),
                "console_clients": clients,
                "timescaledb": info["timescaledb"],
                "login": bool(cookie),
                "offered_msgs_per_s": generated["offered_msgs_per_s"],
                # What the gateways received (and stored) within the window, per second.
                "stored_msgs_per_s": (
                    round(received_in_window / (window[1] - window[0])) if received_in_window is not None else None
                ),
                "other_cpu_cores": other_cpu,
                "sent": generated["sent"],
                "acked": generated["acked"],
                "stored": stored,
                "lost": generated["sent"] - distinct if distinct is not None else None,
                "doubled": stored - distinct if stored is not None and distinct is not None else None,
                "measure_error": measure_error,
                "rejected": generated["rejected"],
                "refused_by_broker": generated["refused_by_broker"],
                "generator_outbox_left": generated["outbox_left"],
                "generator_late_slots": generated["late_slots"],
                "publish_to_ack_ms": generated["publish_to_ack_ms"],
                "publish_to_console_ecg_ms": watched["publish_to_console_ecg_ms"],
                "publish_to_console_update_ms": watched["publish_to_console_update_ms"],
                "console_frames_per_client_s": watched.get("frames_per_client_s"),
                "console_clients_closed": watched["closed_count"],
                "console_close_reasons": watched["closed_by_console"],
                "cpu_cores": sampler.cpu_cores(elapsed),
                "system_cores": sampler.system_cores(elapsed),
                "memory_mib_idle": {k: round(v / 2**20, 1) for k, v in idle.items()},
                "memory_mib_peak": {k: round(v / 2**20, 1) for k, v in peak.items()},
                "memory_mib_window_start": {k: round(v / 2**20, 1) for k, v in at_start.items()},
                "memory_mib_window_end": {k: round(v / 2**20, 1) for k, v in at_end.items()},
                "storage": plain,
                "storage_compressed": compressed,
                "profiles": profiles,
                "gateway_health_at_window_end": health,
                "publish_to_commit": commit_bounds(tracked),
                "timeline": {
                    "every_s": timeline_s,
                    "system": tracked,
                    "publish_to_ack_ms": generated["publish_to_ack_timeline"],
                    "publish_to_console_update_ms": watched["publish_to_console_update_timeline"],
                },
            }
    finally:
        if keep_logs is not None:
            with contextlib.suppress(OSError):
                shutil.copytree(root / "data" / "logs", keep_logs / f"logs-{units}u-{partitions}p", dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)


# -- report ---------------------------------------------------------------------------------------------------


def _n(x: float | int | None) -> str:
    if x is None or x != x:
        return "–"
    if isinstance(x, float) and abs(x) < 100:
        return f"{x:g}"
    return f"{round(x):,}".replace(",", " ")


def per_1000(run: dict[str, Any], role: str) -> str:
    peak, idle = run["memory_mib_peak"].get(role), run["memory_mib_idle"].get(role)
    if peak is None or idle is None:
        return "–"
    return f"{_n(peak)} ({_n(round((peak - idle) / run['units'] * 1000, 1))})"


def markdown(results: dict[str, Any]) -> str:
    base, runs = results["baselines"], results["runs"]
    broker = base["broker"] or {"received_msgs_per_s": 0, "published_acked_msgs_per_s": 0,
                                "received_mbytes_per_s": "–", "cpu_cores": {}, "connections": "–"}  # fmt: skip
    commits = base["store"]
    ours = [c["msgs_per_s"] for c in commits if c.get("method", "commit") == "commit"]
    copies = [c["msgs_per_s"] for c in commits if c.get("method") == "copy"]
    store_best = max(ours) if ours else None
    copy_best = max(copies) if copies else None
    flavour = "TimescaleDB" if results["timescaledb"] else "native partitions (no TimescaleDB)"
    lines = [
        f"Command: `{results['command']}` ({results['date']}, commit `{results['commit']}`; PostgreSQL flavour: "
        f"{flavour}; {results['cpus']} cores).",
        "",
        "**Baselines** (same payloads, same machine, same run):",
        "",
        "| what | msg/s | MB/s | CPU cores | other work on the machine, cores |",
        "|---|---|---|---|---|",
        f"| broker alone: publisher ({broker['connections']} QoS 1 connections) → mosquitto → one QoS 1 subscriber "
        f"| {_n(broker['received_msgs_per_s'])} received ({_n(broker['published_acked_msgs_per_s'])} acknowledged "
        f"to the publisher) | {broker['received_mbytes_per_s']} | "
        + ", ".join(f"{k} {v}" for k, v in broker["cpu_cores"].items())
        + f" | {broker.get('other_cpu_cores', '–')} |",
    ]
    for c in commits:
        what = (
            "PostgreSQL COPY alone (binary COPY of the same rows, no deduplication)"
            if c.get("method") == "copy"
            else "PostgreSQL alone: `Store.commit` (INSERT … unnest … ON CONFLICT; watermarks saved every 5 s)"
        )
        lines.append(
            f"| {what}, {c['writers']} writer(s), {c['batch']}-message batches, one transaction each | "
            f"{_n(c['msgs_per_s'])} | – | "
            + ", ".join(f"{k} {v}" for k, v in c["cpu_cores"].items())
            + f" | {c.get('other_cpu_cores', '–')} |"
        )
    lines += [
        "",
        "**The whole system** (`emergency up`; one load-generator process; the console websocket clients in one more "
        "process, each watching two units' ECG and receiving every unit's updates):",
        "",
        "| units | gateways | console clients | offered msg/s "
        "| stored msg/s (÷ broker / ÷ PostgreSQL COPY alone / ÷ `Store.commit` alone) "
        "| lost / doubled "
        "| publish→ack p50 / p99 ms | publish→console ECG p50 / p99 ms | console updates p50 / p99 ms "
        "| CPU cores: gateways / console / postgres / mosquitto / generator / console clients "
        "| memory MiB peak (per 1 000 units): gateways / console | other work on the machine, cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        cpu = r["cpu_cores"]
        stored = r["stored_msgs_per_s"]
        ratios = (
            " / ".join(
                f"{stored / limit:.2f}" if limit else "–"
                for limit in (broker["received_msgs_per_s"], copy_best, store_best)
            )
            if stored
            else "–"
        )
        lost = f"{_n(r['lost'])} / {_n(r['doubled'])}"
        if r["acked"] < r["sent"]:
            lost += f" ({_n(r['sent'] - r['acked'])} unacked)"
        lines.append(
            f"| {r['units']} | {r['partitions']} | {r['console_clients']} | {_n(r['offered_msgs_per_s'])} | "
            f"{_n(stored)} ({ratios}) | {lost} | "
            f"{_n(r['publish_to_ack_ms']['p50'])} / {_n(r['publish_to_ack_ms']['p99'])} | "
            f"{_n(r['publish_to_console_ecg_ms']['p50'])} / {_n(r['publish_to_console_ecg_ms']['p99'])} | "
            f"{_n(r['publish_to_console_update_ms']['p50'])} / {_n(r['publish_to_console_update_ms']['p99'])} | "
            + " / ".join(
                str(cpu.get(k, "–"))
                for k in ("gateway", "console", "postgres", "mosquitto", "load generator", "console clients")
            )
            + f" | {per_1000(r, 'gateway')} / {per_1000(r, 'console')} | {r.get('other_cpu_cores', '–')} |"
        )
    lines += [
        "",
        "**Storage** after each run (time-series tables with indexes; bytes per unit-hour at the standard load):",
        "",
        "| units | gateways | messages | as written | after compress_chunk |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        s, c = r["storage"], r["storage_compressed"]
        if s is None:
            lines.append(f"| {r['units']} | {r['partitions']} | – | not measured: {r.get('measure_error')} | – |")
            continue
        lines.append(
            f"| {r['units']} | {r['partitions']} | {_n(s['messages'])} | {_n(s['bytes_per_unit_hour'])} B "
            f"({s['bytes_per_unit_hour'] / 2**20:.1f} MiB) | "
            + (
                f"{_n(c['bytes_per_unit_hour'])} B ({c['bytes_per_unit_hour'] / 2**20:.1f} MiB)"
                if c and c["bytes_per_unit_hour"]
                else ("– (not measured)" if results["timescaledb"] else "– (no TimescaleDB)")
            )
            + " |"
        )
    # The profile of the largest run of each console-client count (with and without the console's fan-out).
    largest: dict[int, dict[str, Any]] = {}
    for r in runs:
        if r.get("profiles") and r["units"] * 10 + r["partitions"] >= largest.get(r["console_clients"], {}).get(
            "units", 0
        ) * 10 + largest.get(r["console_clients"], {}).get("partitions", 0):
            largest[r["console_clients"]] = r
    for clients, r in sorted(largest.items()):
        lines += [
            "",
            f"**Profile** (py-spy over one gateway process and the console, {r['units']} units, {r['partitions']} "
            f"gateway(s), {clients} console clients; share of samples, idle included, top functions by own time):",
            "",
        ]
        for role, top in r["profiles"].items():
            lines.append(f"- {role}: " + "; ".join(f"`{name}` {share} %" for name, share in top[:8]))
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return False
    fig, ax = plt.subplots(figsize=(11, 5))
    for partitions, clients in sorted({(r["partitions"], r["console_clients"]) for r in results["runs"]}):
        runs = sorted(
            (r for r in results["runs"] if (r["partitions"], r["console_clients"]) == (partitions, clients)),
            key=lambda r: r["units"],
        )
        x = [r["units"] for r in runs]
        style = "-" if partitions == 1 else "--"
        if clients == 0:
            style = ":" if partitions == 1 else "-."
        for key, label, color in (
            ("publish_to_console_ecg_ms", "publish→console ECG", "tab:blue"),
            ("publish_to_ack_ms", "publish→ack", "tab:red"),
        ):
            for q, marker in (("p50", "o"), ("p99", "^")):
                if all(r[key][q] != r[key][q] for r in runs):
                    continue  # no console clients: nothing reached a console
                ax.plot(
                    x, [r[key][q] for r in runs], style, marker=marker, color=color,
                    label=f"{label} {q}, {partitions} gw, {clients} clients",
                )  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("units at the standard load (6 messages/s each)")
    ax.set_ylabel("latency, ms (log)")
    ax.axhline(50, color="tab:blue", lw=0.8, ls=":", label="target: publish→console p99 50 ms")
    ax.axhline(1000, color="tab:red", lw=0.8, ls=":", label="target: publish→commit p99 1 s")
    ax.set_title("Latency against fleet size on one 2-core machine")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylim(bottom=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return True


def update_docs(text: str) -> None:
    doc = DOCS.read_text()
    if BEGIN not in doc:
        raise SystemExit(f"{DOCS} has no {BEGIN} … {END} markers (in its City scale section)")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(head + BEGIN + "\n" + text + END + tail)


async def wait_for_quiet(threshold: float, max_wait_s: float) -> float:
    """Wait (bounded) until the machine's 1-minute load average is below `threshold`; returns it."""
    deadline = time.monotonic() + max_wait_s
    announced = False
    while (load := os.getloadavg()[0]) >= threshold and time.monotonic() < deadline:
        if not announced:
            log(f"  waiting for other work to calm down (load {load:.1f} ≥ {threshold:g}) …")
            announced = True
        await asyncio.sleep(5)
    return round(load, 2)


_HOLD = """
import sys
size = int(sys.argv[1])
held = bytearray(size)
held[::4096] = b"\\x01" * len(range(0, size, 4096))  # a byte in every page, so that each is really the process's
print("held", flush=True)
sys.stdin.read()  # until the benchmark ends (or dies: its end of the pipe closes)
"""


# As written, the time-series tables take ~60 MiB per unit-hour (docs/benchmarks.md, "Storage"); the WAL, the
# indexes' growth between checkpoints and the count afterwards want room beside it.
DISK_PER_UNIT_HOUR = 64 * 2**20
DISK_SPARE = 4 * 2**30


def enough_disk(units: int, seconds: float) -> None:
    """Refuse a run whose rows would not fit on the disk the private cluster lives on (better than a soak that
    fills it and loses its count at the end)."""
    need = units * seconds / 3600 * DISK_PER_UNIT_HOUR + DISK_SPARE
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < need:
        raise SystemExit(
            f"{units} units for {seconds:g} s need about {need / 2**30:.0f} GiB on {tempfile.gettempdir()}; "
            f"{free / 2**30:.0f} GiB are free"
        )


def add_hold_memory_option(parser: argparse.ArgumentParser) -> None:
    """`--hold-memory GIB`, for each benchmark that runs PostgreSQL long enough to meet the VM's memory."""
    parser.add_argument(
        "--hold-memory", type=float, default=0.0, metavar="GIB",
        help="hold this much memory while measuring, as a server's page cache would (bench/scale.py held_memory)",
    )  # fmt: skip


@contextlib.contextmanager
def held_memory(gib: float) -> Iterator[None]:
    """Hold `gib` GiB of written memory in a child process while the benchmark runs.

    The benchmark machine is a VM whose host takes back the guest's free memory (virtio-balloon free page reporting):
    every page PostgreSQL's page cache takes from free memory is then first faulted in by the host, which shows as
    system time of whichever process wrote it, growing until the page cache fills the machine. A database server
    that has run for a while has its memory in use, and its page cache recycles its own pages; holding most of the
    free memory puts the benchmark in that state from the start (docs/benchmarks.md, "PostgreSQL over time")."""
    if gib <= 0:
        yield
        return
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(int(gib * 2**30))], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        if holder.stdout.readline().strip() != b"held":
            raise RuntimeError(f"could not hold {gib:g} GiB of memory")
        log(f"holding {gib:g} GiB of memory; {psutil.virtual_memory().available / 2**30:.1f} GiB available")
        yield
    finally:
        holder.stdin.close()
        holder.wait()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    timescaledb = timescaledb_available(pg_bindir()) and not args.no_timescaledb
    commit = await asyncio.to_thread(
        subprocess.run, ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    results: dict[str, Any] = {
        "command": "bench/scale.py " + " ".join(sys.argv[1:]),
        "date": dt.date.today().isoformat(),
        "commit": commit.stdout.strip() or "?",
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
        "hold_memory_gib": args.hold_memory,
        "timescaledb": timescaledb,
        "baselines": {"broker": None, "store": []},
        "runs": [],
    }
    for _ in range(0 if args.no_baselines else 1):
        await wait_for_quiet(args.quiet_load, args.quiet_wait)
        log("baseline: broker alone")
        results["baselines"]["broker"] = await broker_baseline(args.baseline_seconds, connections=4)
        log(f"  {results['baselines']['broker']}")
    for copy in () if args.no_baselines else (True, False):
        for writers in (1, 2):
            await wait_for_quiet(args.quiet_load, args.quiet_wait)
            log(f"baseline: PostgreSQL alone ({'COPY' if copy else 'Store.commit'}), {writers} writer(s)")
            store = await store_baseline(timescaledb, args.baseline_seconds, writers, args.batch, copy)
            results["baselines"]["store"].append(store)
            log(f"  {store}")
    profile_dir = Path(args.out).with_suffix("") if args.profile or args.profile_all else None
    Path(args.out).with_suffix("").mkdir(parents=True, exist_ok=True)  # logs and profiles of every run
    for partitions in args.partitions:
        for units in args.units:
            load = await wait_for_quiet(args.quiet_load, args.quiet_wait)
            enough_disk(units, args.seconds + args.warmup)
            log(f"system: {units} units, {partitions} gateway(s), {args.seconds:g} s")
            run = await system_run(
                units, partitions, args.seconds, args.clients, timescaledb, args.warmup,
                profile_dir if units == max(args.units) or args.profile_all else None,
                Path(args.out).with_suffix(""), args.timeline, not args.no_compress,
            )  # fmt: skip
            run["load_average_1min_before"] = load
            results["runs"].append(run)
            log(
                f"  offered {run['offered_msgs_per_s']}/s stored {run['stored_msgs_per_s']}/s lost {run['lost']} "
                f"ack {run['publish_to_ack_ms']} commit {run['publish_to_commit']} "
                f"console {run['publish_to_console_ecg_ms']} cpu {run['cpu_cores']}"
            )
            Path(args.out).write_text(json.dumps(results, indent=2))
            if run["acked"] < run["sent"] * 0.99 or (run["stored_msgs_per_s"] or 0) < 0.95 * run["offered_msgs_per_s"]:
                log("  saturated (over 1 % unacknowledged, or stored under 95 % of offered): no larger fleets")
                break
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",")]

    parser.add_argument("--units", type=ints, default=[100, 250, 500, 1000, 2000])
    parser.add_argument("--partitions", type=ints, default=[1, 2])
    parser.add_argument("--seconds", type=float, default=60, help="measured window of each system run")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--clients", type=int, default=50, help="console websocket clients")
    parser.add_argument("--baseline-seconds", type=float, default=15)
    parser.add_argument("--batch", type=int, default=600, help="messages per commit in the PostgreSQL baseline")
    parser.add_argument("--no-timescaledb", action="store_true")
    parser.add_argument("--no-baselines", action="store_true", help="only the system runs (no ratios)")
    parser.add_argument(
        "--no-compress", action="store_true", help="skip compress_chunk after each run (long soaks: tens of GiB)"
    )
    parser.add_argument("--quiet-load", type=float, default=1.0, help="wait for a 1-min load average below this …")
    parser.add_argument("--quiet-wait", type=float, default=600, help="… but at most this many seconds per step")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway and console in the largest run")
    parser.add_argument("--profile-all", action="store_true", help="... in every run")
    parser.add_argument(
        "--timeline", type=float, default=0.0,
        help="seconds per row of a timeline of each run (latency, CPU, memory, gateway backlog, database work)",
    )  # fmt: skip
    add_hold_memory_option(parser)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "scale.json"))
    parser.add_argument("--update-docs", action="store_true", help="rewrite the generated part of docs/benchmarks.md")
    parser.add_argument(
        "--from-json", nargs="+", help="only report (tables and plot) from earlier --out files (runs merged)"
    )
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(Path(args.from_json[0]).read_text())
        for more in args.from_json[1:]:
            extra = json.loads(Path(more).read_text())
            results["runs"] += extra["runs"]
            results["command"] += "` and `" + extra["command"]
            results["commit"] += "`, `" + extra["commit"]
    else:
        with held_memory(args.hold_memory):
            results = asyncio.run(bench(args))
        Path(args.out).write_text(json.dumps(results, indent=2))
    text = markdown(results)
    print(text)
    # The docs' plot changes only with their tables; otherwise it goes beside the results.
    results_file = Path(args.from_json[0] if args.from_json else args.out)
    plot_path = PLOT if args.update_docs else results_file.with_suffix(".svg")
    if plot(results, plot_path):
        log(f"plot: {plot_path}")
    if args.update_docs:
        update_docs(text)
        log(f"tables written into {DOCS}")


if __name__ == "__main__":
    main()
