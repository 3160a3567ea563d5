"""Telemetry benchmark: N units at the standard load against a real `emergency up`, measured end to end.

Standard load per unit: 12-lead ECG at 500 Hz in 250 ms frames (3 000 bytes of samples) + vitals 1 Hz + GPS 1 Hz
= 6 messages/s. Reports messages/s stored, publish→ack (commit, then ack) and publish→console-receive latency
p50/p99, what was lost or doubled, and CPU and RSS of each process.

    .venv/bin/python bench/telemetry.py --units 100 --seconds 60

The load generator is one process with one MQTT connection per unit and pre-built ECG payloads, so it costs far
less than the simulator (which keeps an SQLite outbox per device). Publish timestamps are the device `ts`, on the
same clock as the console client, so latencies need no clock sync.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import asyncpg
import psutil
import websockets

from emergency.codec import decode_acks, encode_device_message
from emergency.mqtt import NO_DELAY
from emergency.protocol import STANDARD_LEADS, EcgFrame, GpsFix, Stream, Vitals, device_topic
from emergency.stack import provision_units
from firmware_sim import EcgSynth

ECG_N, FS = 125, 500.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def now_us() -> int:
    return time.time_ns() // 1000


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


@dataclass
class UnitLoad:
    unit: str
    password: str
    sent: dict[Stream, dict[int, int]] = field(
        default_factory=lambda: {s: {} for s in (Stream.ECG, Stream.VITALS, Stream.GPS)}
    )
    acked: dict[Stream, int] = field(default_factory=lambda: {s: -1 for s in (Stream.ECG, Stream.VITALS, Stream.GPS)})
    ack_latency_ms: list[float] = field(default_factory=list)
    rejected: int = 0


async def run_unit(load: UnitLoad, host: str, port: int, frames: list[bytes], stop: asyncio.Event, boot: int) -> None:
    async with aiomqtt.Client(
        host,
        port,
        username=load.unit,
        password=load.password,
        protocol=aiomqtt.ProtocolVersion.V5,
        identifier=f"bench-{load.unit}",
        socket_options=NO_DELAY,
    ) as client:
        client.pending_calls_threshold = 10_000
        await client.subscribe(device_topic(load.unit, Stream.ACK), qos=1)

        async def read_acks() -> None:
            async for message in client.messages:
                t = now_us()
                for ack in decode_acks(message.payload):
                    sent = load.sent[ack.stream]
                    for seq in range(load.acked[ack.stream] + 1, ack.upto + 1):
                        if seq in sent:
                            load.ack_latency_ms.append((t - sent[seq]) / 1000)
                    load.acked[ack.stream] = max(load.acked[ack.stream], ack.upto)
                    load.rejected += len(ack.rejected)
                if stop.is_set() and all(load.acked[s] >= len(load.sent[s]) - 1 for s in load.sent):
                    all_acked.set()

        all_acked = asyncio.Event()
        reader = asyncio.create_task(read_acks())
        seq = {Stream.ECG: 0, Stream.VITALS: 0, Stream.GPS: 0}
        tick, next_at = 0, time.monotonic()
        try:
            while not stop.is_set():
                ts = now_us()
                messages: list[EcgFrame | Vitals | GpsFix] = [
                    EcgFrame(
                        load.unit, boot, seq[Stream.ECG], ts, FS, STANDARD_LEADS, 2.5, ECG_N, frames[tick % len(frames)]
                    )
                ]
                if tick % 4 == 0:
                    messages.append(Vitals(load.unit, boot, seq[Stream.VITALS], ts, hr=80.0, spo2=97.0, rr=16.0))
                    messages.append(GpsFix(load.unit, boot, seq[Stream.GPS], ts, 31.23, 121.47, speed=10.0))
                for m in messages:
                    load.sent[m.stream][m.seq] = ts
                    seq[m.stream] += 1
                    await client.publish(device_topic(load.unit, m.stream), encode_device_message(m), qos=1)
                tick += 1
                next_at += 0.25
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            # Wait for the acks of everything sent (bounded).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    if not all(load.acked[s] >= len(load.sent[s]) - 1 for s in load.sent):
                        await all_acked.wait()
        finally:
            reader.cancel()


async def console_login(info: dict[str, Any], role: str = "ed_physician") -> dict[str, str]:
    """A console user of that role (created in the stack's store) logged in: the headers its websocket needs."""
    from emergency.access import AccessStore, Role, hash_password
    from emergency.store import Store

    username, password = f"bench-{role.replace('_', '-')}-{os.getpid()}", secrets.token_urlsafe(18)
    async with Store.open(info["postgres_dsn"]) as store:
        await AccessStore(store).put_user(username, Role(role), hash_password(password))
    origin = info["console_url"].rstrip("/")
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar, headers={"Origin": origin}) as http:
        async with http.post(origin + "/api/login", json={"username": username, "password": password}) as response:
            response.raise_for_status()
        cookie = "; ".join(f"{c.key}={c.value}" for c in jar)
    return {"Cookie": cookie, "Origin": origin}


async def watch_console(
    url: str, headers: dict[str, str], units: list[str], stop: asyncio.Event, ecg_ms: list[float], upd_ms: list[float]
) -> None:
    async with websockets.connect(url, max_size=None, additional_headers=headers) as ws:
        for unit in units:
            await ws.send(json.dumps({"type": "watch", "unit": unit}))
        while not stop.is_set():
            try:
                async with asyncio.timeout(1):
                    raw = await ws.recv()
            except TimeoutError:
                continue
            t = now_us()
            for m in json.loads(raw):  # a frame is a JSON array of messages (docs/console-api.md)
                if m["type"] == "ecg":
                    ecg_ms.append((t - m["ts"]) / 1000)
                elif m["type"] in ("gps", "vitals"):
                    upd_ms.append((t - m["ts"]) / 1000)


class ProcessSampler:
    """CPU (cores used over the run) and peak RSS of the stack's processes, grouped by role."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.peak_rss: dict[str, int] = {}
        self.cpu_start: dict[int, float] = {}
        self.cpu_end: dict[int, tuple[str, float]] = {}

    def _procs(self) -> list[tuple[str, psutil.Process]]:
        out = [("gateway", self.root)]
        for child in self.root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                name, cmdline = child.name(), " ".join(child.cmdline())
                role = "postgres" if "postgres" in name else "mosquitto" if "mosquitto" in name else name
                if "emergency.cli console" in cmdline:
                    role = "console"
                out.append((role, child))
        return out

    def sample(self) -> None:
        memory: dict[str, int] = {}
        for role, proc in self._procs():
            try:
                # PostgreSQL backends share their buffers: count unique memory (USS), not RSS, to avoid double counting.
                used = proc.memory_full_info().uss if role == "postgres" else proc.memory_info().rss
                times = proc.cpu_times()
            except psutil.Error:
                continue
            memory[role] = memory.get(role, 0) + used
            self.cpu_start.setdefault(proc.pid, times.user + times.system)
            self.cpu_end[proc.pid] = (role, times.user + times.system)
        for role, used in memory.items():
            self.peak_rss[role] = max(self.peak_rss.get(role, 0), used)

    def cpu_cores(self, seconds: float) -> dict[str, float]:
        used: dict[str, float] = {}
        for pid, (role, end) in self.cpu_end.items():
            used[role] = used.get(role, 0.0) + (end - self.cpu_start.get(pid, end)) / seconds
        return used


@contextlib.asynccontextmanager
async def running_stack(root: Path) -> AsyncIterator[tuple[dict[str, Any], asyncio.subprocess.Process]]:
    """`emergency up` in a child process on private ports; yields its stack.json and the process."""
    data = root / "data"
    env = {
        **os.environ,
        "EMERGENCY_DATA_DIR": str(data),
        "EMERGENCY_MQTT_PORT": str(free_port()),
        "EMERGENCY_HTTP_PORT": str(free_port()),
        "EMERGENCY_PG_PORT": str(free_port()),
        "EMERGENCY_MQTT_TLS_PORT": str(free_port()),
        "EMERGENCY_GATEWAY__HTTP_PORT": "0",
        "EMERGENCY_LOG_LEVEL": "WARNING",
    }
    stack = await asyncio.create_subprocess_exec(sys.executable, "-m", "emergency.cli", "up", env=env)
    try:
        for _ in range(600):
            if (data / "stack.json").exists():
                break
            if stack.returncode is not None:
                raise RuntimeError(f"emergency up exited with {stack.returncode}")
            await asyncio.sleep(0.2)
        yield json.loads((data / "stack.json").read_text()), stack
    finally:
        if stack.returncode is None:
            stack.terminate()
            await stack.wait()


async def bench(units: int, seconds: float, watched: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="emergency-bench-"))
    root.chmod(0o755)
    data = root / "data"
    try:
        async with running_stack(root) as (info, stack):
            return await _measure(info, stack, data, units, seconds, watched)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _measure(
    info: dict[str, Any], stack: asyncio.subprocess.Process, data: Path, units: int, seconds: float, watched: int
) -> dict[str, object]:
    loads = [UnitLoad(f"B{i:04d}", f"pw-{i}-bench") for i in range(units)]
    provision_units(data, {u.unit: u.password for u in loads})
    await asyncio.sleep(1)
    synth = EcgSynth(seed=1)
    frames = [synth.frame_bytes(ECG_N) for _ in range(8)]
    stop, ws_stop = asyncio.Event(), asyncio.Event()
    ecg_ms: list[float] = []
    upd_ms: list[float] = []
    ws_url = info["console_url"].replace("http", "ws", 1) + "ws"
    headers = await console_login(info)
    watched_units = [u.unit for u in loads[:watched]]
    watcher = asyncio.create_task(watch_console(ws_url, headers, watched_units, ws_stop, ecg_ms, upd_ms))
    sampler = ProcessSampler(stack.pid)
    boot = int(time.time()) % 2**31
    tasks = []
    for load in loads:
        tasks.append(
            asyncio.create_task(run_unit(load, info["mqtt"]["host"], info["mqtt"]["port"], frames, stop, boot))
        )
        await asyncio.sleep(0.005)
    await asyncio.sleep(3)  # warm-up
    ecg_ms.clear()
    upd_ms.clear()
    for load in loads:
        load.ack_latency_ms.clear()
    sampler.sample()
    me = psutil.Process()
    loadgen_cpu = sum(me.cpu_times()[:2])
    started = time.monotonic()
    sent_before = sum(len(s) for load in loads for s in load.sent.values())
    while time.monotonic() - started < seconds:
        await asyncio.sleep(1)
        # In a thread: reading /proc for every PostgreSQL backend takes 50–200 ms, which on this loop would
        # delay the websocket receipts being timed.
        await asyncio.to_thread(sampler.sample)
    elapsed = time.monotonic() - started
    sent_during = sum(len(s) for load in loads for s in load.sent.values()) - sent_before
    sampler.sample()
    cpu = sampler.cpu_cores(elapsed)
    cpu["load generator (this process)"] = (sum(me.cpu_times()[:2]) - loadgen_cpu) / elapsed
    stop.set()
    await asyncio.gather(*tasks)
    ws_stop.set()
    await watcher
    conn = await asyncpg.connect(info["postgres_dsn"])
    try:
        stored, distinct = 0, 0
        for table in ("ecg_frames", "vitals", "gps_fixes"):
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, count(DISTINCT (unit, boot, seq)) AS d FROM {table} WHERE unit LIKE 'B%'"
            )
            stored += row["n"]
            distinct += row["d"]
    finally:
        await conn.close()
    sent_total = sum(len(s) for load in loads for s in load.sent.values())
    acked_total = sum(load.acked[s] + 1 for load in loads for s in load.acked)
    ack_ms = [x for load in loads for x in load.ack_latency_ms]
    return {
        "units": units,
        "seconds": round(elapsed, 1),
        "offered_msgs_per_s": round(sent_during / elapsed),
        "sent": sent_total,
        "acked": acked_total,
        "stored": stored,
        "lost": sent_total - distinct,
        "doubled": stored - distinct,
        "rejected": sum(load.rejected for load in loads),
        "publish_to_ack_ms": {"p50": round(pct(ack_ms, 0.5), 1), "p99": round(pct(ack_ms, 0.99), 1)},
        "publish_to_console_ecg_ms": {
            "p50": round(pct(ecg_ms, 0.5), 1),
            "p99": round(pct(ecg_ms, 0.99), 1),
            "n": len(ecg_ms),
        },
        "publish_to_console_update_ms": {
            "p50": round(pct(upd_ms, 0.5), 1),
            "p99": round(pct(upd_ms, 0.99), 1),
            "n": len(upd_ms),
        },
        "cpu_cores": {k: round(v, 2) for k, v in cpu.items()},
        "peak_rss_mib": {k: round(v / 2**20, 1) for k, v in sampler.peak_rss.items()},
        "timescaledb": info.get("timescaledb"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--watched", type=int, default=10, help="units whose ECG one console client watches")
    args = parser.parse_args()
    result = asyncio.run(bench(args.units, args.seconds, args.watched))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
