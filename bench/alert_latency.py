"""Alert latency benchmark: a violating vitals message published by a unit → the alert on a console websocket.

Starts a real `emergency up` (PostgreSQL, mosquitto, the gateway with the clinical loop beside it, the console in
its own process), provisions N background units and P probe units, and drives every unit at the standard load —
12-lead ECG at 500 Hz in 250 ms frames, vitals at 1 Hz, GPS at 1 Hz, 6 messages/s — each crew having made patient
contact first (so the clinical loop holds an encounter per unit and analyses its 12-lead, as with a busy fleet).
Once in the measured window each probe unit publishes one vitals message crossing the thresholds (HR 120, SBP 70:
a critical systolic band and a critical shock index) at a moment spread evenly over the window; the next ones are
normal again. One console websocket client, connected like the browser, receives everything a dispatcher's
console receives (every unit's position and vitals, every care record). The latency of a probe is from its
publish (the device `ts`, taken just before the write, on this process's clock) to the first alert for that unit
raised at that `ts` arriving on the websocket.

    .venv/bin/python bench/alert_latency.py --units 500 --probes 60 --seconds 60

Options reduce the load when the machine cannot carry it (`--ecg-every 4`: one 12-lead frame of 1 s per second
instead of four of 250 ms, same samples and bytes; `--no-ecg`: no 12-lead from background units; `--vitals-every N`:
background vitals and GPS every N s); probe units always send the full standard load, and the output says which
reductions were used. The devices are a lean MQTT 5 client written here (pre-encoded packets on raw asyncio sockets,
QoS 1, acks read and acknowledged), so that the load generator costs little beside the stack it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import websockets

from emergency.codec import decode_ack, encode_device_message
from emergency.protocol import (
    STANDARD_LEADS,
    DeviceEvent,
    DeviceMessage,
    EcgFrame,
    EventKind,
    GpsFix,
    Stream,
    Vitals,
    device_topic,
)
from emergency.stack import provision_units
from firmware_sim import EcgSynth

sys.path.insert(0, str(Path(__file__).resolve().parent))
from telemetry import ProcessSampler, now_us, pct, running_stack

FS = 500.0
FRAME_S = 0.25
SLOTS = 25  # units are spread over the 250 ms tick in this many slots, as unsynchronised devices would be
NORMAL = {"hr": 80.0, "sbp": 122.0, "dbp": 76.0, "spo2": 97.0, "rr": 16.0}
VIOLATING = {"hr": 120.0, "sbp": 70.0, "dbp": 40.0, "spo2": 97.0, "rr": 16.0}  # SBP < 80, shock index 1.71


# -- a lean MQTT 5 device ----------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


class LeanDevice(asyncio.Protocol):
    """One unit's MQTT 5 connection: QoS 1 publishes written as bytes, the gateway's acks read and acknowledged.

    In-flight publishes are capped below the broker's receive maximum (mosquitto here: 100); a unit at the cap
    skips its tick (counted in `skipped`) rather than queueing without bound.
    """

    INFLIGHT_MAX = 80

    def __init__(self, unit: str, password: str, boot: int, on_ack: Callable[[LeanDevice, bytes], None]) -> None:
        self.unit, self.password, self.boot = unit, password, boot
        self.on_ack = on_ack
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._pid = 0
        self.inflight: set[int] = set()
        self.seq = {Stream.ECG: 0, Stream.VITALS: 0, Stream.GPS: 0, Stream.EVENT: 0}
        self.topics = {s: device_topic(unit, s).encode() for s in self.seq}
        self.sent: dict[Stream, dict[int, int]] = {s: {} for s in self.seq}
        self.acked: dict[Stream, int] = {s: -1 for s in self.seq}
        self.tick = 0
        self.skipped = 0
        self.ecg_t0 = 0  # device time of the first 12-lead sample: frame ts follow the sample clock from it

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        header = _str(b"MQTT") + bytes([5, 0xC2]) + (60).to_bytes(2, "big") + b"\x00"
        payload = _str(f"bench-{self.unit}".encode()) + _str(self.unit.encode()) + _str(self.password.encode())
        ack_topic = device_topic(self.unit, Stream.ACK).encode()
        subscribe = (1).to_bytes(2, "big") + b"\x00" + _str(ack_topic) + b"\x01"  # packet id 1, QoS 1
        transport.write(_packet(0x10, header + payload) + _packet(0x82, subscribe))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.unit}: connection lost ({exc})"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        while len(buf) >= 2:
            length, shift, i = 0, 0, 1
            while True:
                if i >= len(buf):
                    return
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            if len(buf) < i + length:
                return
            first, body = buf[0], bytes(buf[i : i + length])
            del buf[: i + length]
            self._packet_received(first, body)

    def _packet_received(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 4:  # PUBACK
            self.inflight.discard(int.from_bytes(body[:2], "big"))
        elif kind == 3:  # PUBLISH (an ack from the gateway)
            qos = (first >> 1) & 3
            n = int.from_bytes(body[:2], "big")
            pos = 2 + n
            if qos:
                pid = body[pos : pos + 2]
                pos += 2
                assert self.transport is not None
                self.transport.write(b"\x40\x02" + pid)
            props, shift = 0, 0
            while True:
                byte = body[pos]
                pos += 1
                props |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            self.on_ack(self, body[pos + props :])
        elif kind == 2:  # CONNACK
            if body[1] != 0:
                self.ready.set_exception(ConnectionError(f"{self.unit}: CONNACK reason {body[1]:#x}"))
        elif kind == 9 and not self.ready.done():  # SUBACK
            self.ready.set_result(None)

    def publish(self, messages: list[DeviceMessage]) -> int:
        """Write these messages (one write); returns the device ts they carry, or 0 when the tick was skipped."""
        if self.transport is None or self.transport.is_closing() or len(self.inflight) >= self.INFLIGHT_MAX:
            self.skipped += 1
            return 0
        ts = now_us()
        out = []
        for m in messages:
            # A message built with ts 0 carries the publish time; the 12-lead carries its sample clock.
            m = dataclasses.replace(m, seq=self.seq[m.stream], ts=m.ts or ts)
            self.seq[m.stream] += 1
            self.sent[m.stream][m.seq] = ts
            self._pid = self._pid % 65535 + 1
            self.inflight.add(self._pid)
            body = _str(self.topics[m.stream]) + self._pid.to_bytes(2, "big") + b"\x00" + encode_device_message(m)
            out.append(_packet(0x32, body))
        self.transport.write(b"".join(out))
        return ts

    def ping(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"\xc0\x00")


# -- the measured run --------------------------------------------------------------------------------------------


@dataclass
class Probe:
    device: LeanDevice
    fire_at: float  # monotonic time from which its next vitals message violates
    fired_ts: int = 0  # the device ts of the violating message
    alert_ms: float | None = None
    alert_kind: str = ""


@dataclass
class Stats:
    ack_ms: list[float] = field(default_factory=list)
    rejected: int = 0
    background_alerts: int = 0
    care_messages: int = 0
    updates: int = 0
    probe_alert: asyncio.Event = field(default_factory=asyncio.Event)  # set as each probe's alert arrives


async def console_headers(info: dict[str, Any], login_path: str) -> dict[str, str]:
    """Headers for the console's websocket, as a browser on the console's page sends them: its Origin, and, when
    the console has logins, the session cookie of a user with the ED nurse role (who sees alerts and live vitals),
    created in the store as `emergency user add` does and logged in through the login endpoint."""
    base = info["console_url"]
    origin = {"Origin": base.rstrip("/")}
    async with aiohttp.ClientSession(headers=origin) as http:
        async with http.get(base + "api/alerts") as response:
            if response.status not in (401, 403):
                return origin
        from emergency.access import AccessStore, Role, hash_password  # only where the console has logins
        from emergency.store import Store

        password = "bench-alert-latency-pw-1"
        async with Store.open(info["postgres_dsn"]) as store:
            await AccessStore(store).put_user("bench", Role.ED_NURSE, hash_password(password))
        body = {"username": "bench", "password": password}
        async with http.post(base + login_path.lstrip("/"), json=body) as response:
            response.raise_for_status()
            cookie = "; ".join(f"{c.key}={c.value}" for c in response.cookies.values())
        print("the console has logins: logged in as 'bench' (ED nurse)", file=sys.stderr)
    return {**origin, "Cookie": cookie}


async def watch_alerts(
    url: str, headers: dict[str, str], probes: dict[str, Probe], stats: Stats, stop: asyncio.Event
) -> None:
    async with websockets.connect(url, max_size=None, additional_headers=headers) as ws:
        while not stop.is_set():
            try:
                async with asyncio.timeout(1):
                    raw = await ws.recv()
            except TimeoutError:
                continue
            t = now_us()
            if not isinstance(raw, str):
                continue  # the console sends text frames only
            # A frame is a JSON array of messages (docs/console-api.md). One without a care message (positions and
            # vitals) is counted, not parsed (this process's CPU): each message after the first starts `,{"type":"`.
            if '"type":"care"' not in raw:
                stats.updates += raw.count(',{"type":"') + 1
                continue
            for m in json.loads(raw):
                if m["type"] != "care":
                    stats.updates += 1
                    continue
                stats.care_messages += 1
                if m["kind"] == "alert":
                    _on_alert(m["record"], t, probes, stats)


def _on_alert(record: dict[str, Any], t: int, probes: dict[str, Probe], stats: Stats) -> None:
    """An alert record that reached the console websocket at `t`: a probe's latency, or a background alert."""
    probe = probes.get(record["unit"])
    if probe is None:
        if record["state"] == "raised" and record["repeats"] == 0:
            stats.background_alerts += 1
        return
    if probe.fired_ts and probe.alert_ms is None and record["raised_at"] == probe.fired_ts:
        probe.alert_ms = (t - probe.fired_ts) / 1000
        probe.alert_kind = record["kind"]
        stats.probe_alert.set()


async def bench(
    units: int,
    probes_n: int,
    seconds: float,
    ecg_every: int,
    background_ecg: bool,
    vitals_every: int,
    warmup: float,
    login_path: str,
) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="emergency-alertbench-"))
    root.chmod(0o755)
    try:
        async with running_stack(root) as (info, stack):
            return await _measure(
                info,
                stack,
                root / "data",
                units,
                probes_n,
                seconds,
                ecg_every,
                background_ecg,
                vitals_every,
                warmup,
                login_path,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _measure(
    info: dict[str, Any],
    stack: asyncio.subprocess.Process,
    data: Path,
    units: int,
    probes_n: int,
    seconds: float,
    ecg_every: int,
    background_ecg: bool,
    vitals_every: int,
    warmup: float,
    login_path: str,
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    names = [(f"B{i:04d}", f"pw-{i}-bench") for i in range(units)] + [
        (f"P{i:04d}", f"pw-{i}-probe") for i in range(probes_n)
    ]
    provision_units(data, dict(names))
    await asyncio.sleep(1)
    boot = int(time.time()) % 2**31
    stats = Stats()

    def on_ack(device: LeanDevice, payload: bytes) -> None:
        ack = decode_ack(payload)
        t = now_us()
        sent = device.sent[ack.stream]
        for seq in range(device.acked[ack.stream] + 1, ack.upto + 1):
            if seq in sent:
                stats.ack_ms.append((t - sent.pop(seq)) / 1000)
        device.acked[ack.stream] = max(device.acked[ack.stream], ack.upto)
        stats.rejected += len(ack.rejected)

    devices: list[LeanDevice] = []
    for unit, password in names:
        _, device = await loop.create_connection(
            lambda u=unit, p=password: LeanDevice(u, p, boot, on_ack),  # type: ignore[misc]
            info["mqtt"]["host"],
            info["mqtt"]["port"],
        )
        await asyncio.wait_for(device.ready, 10)
        devices.append(device)
    by_unit = {d.unit: d for d in devices}

    # A continuous 10 s of synthetic 12-lead, cut into frames, replayed in a loop.
    n = round(FS * FRAME_S * ecg_every)
    synth = EcgSynth(seed=1)
    frames = [synth.frame_bytes(n) for _ in range(max(1, round(10 / (FRAME_S * ecg_every))))]

    probes = {d.unit: Probe(d, fire_at=float("inf")) for d in devices if d.unit.startswith("P")}
    headers = await console_headers(info, login_path)
    ws_url = info["console_url"].replace("http", "ws", 1) + "ws"
    stop, ws_stop = asyncio.Event(), asyncio.Event()
    watcher = asyncio.create_task(watch_alerts(ws_url, headers, probes, stats, ws_stop))

    # Every crew makes patient contact before the load starts: an encounter per unit in the clinical loop.
    for i, device in enumerate(devices):
        device.publish([DeviceEvent(device.unit, boot, 0, 0, EventKind.PATIENT_CONTACT, {"age": 60 + i % 30})])
        await asyncio.sleep(0.002)

    def tick_messages(device: LeanDevice, probe: Probe | None, now: float) -> tuple[list[DeviceMessage], bool]:
        """This tick's messages for a unit, and whether its vitals are the probe's violating ones."""
        tick, out, firing = device.tick, [], False
        if (background_ecg or probe is not None) and tick % ecg_every == 0:
            data = frames[(tick // ecg_every) % len(frames)]
            device.ecg_t0 = device.ecg_t0 or now_us()
            ts = device.ecg_t0 + round(tick * FRAME_S * 1e6)
            out.append(EcgFrame(device.unit, boot, 0, ts, FS, STANDARD_LEADS, 2.5, n, data))
        if tick % (4 * (1 if probe is not None else vitals_every)) == 0:
            firing = probe is not None and not probe.fired_ts and now >= probe.fire_at
            out.append(Vitals(device.unit, boot, 0, 0, **(VIOLATING if firing else NORMAL)))
            out.append(GpsFix(device.unit, boot, 0, 0, 31.23, 121.47, speed=10.0))
        device.tick += 1
        return out, firing

    async def drive() -> None:
        slots = [devices[i::SLOTS] for i in range(SLOTS)]
        next_at, k = time.monotonic(), 0
        while not stop.is_set():
            now = time.monotonic()
            for device in slots[k % SLOTS]:
                probe = probes.get(device.unit)
                messages, firing = tick_messages(device, probe, now)
                ts = device.publish(messages)
                if probe is not None and firing and ts:
                    probe.fired_ts = ts
            if k % (SLOTS * 4 * 30) == 0:
                for device in devices:
                    device.ping()
            k += 1
            next_at += FRAME_S / SLOTS
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    driver = asyncio.create_task(drive())
    await asyncio.sleep(warmup)  # the clinical loop takes ids, opens encounters, starts its 12-lead analyses
    stats.ack_ms.clear()
    sampler = ProcessSampler(stack.pid)
    sampler.sample()
    me = psutil.Process()
    loadgen_cpu = sum(me.cpu_times()[:2])
    machine_busy = _busy_s()
    started = time.monotonic()
    for i, probe in enumerate(probes.values()):
        probe.fire_at = started + (i + 0.5) * seconds / max(1, probes_n)
    sent_before = sum(sum(d.seq.values()) for d in devices)
    skipped_before = sum(d.skipped for d in devices)
    while time.monotonic() - started < seconds:
        await asyncio.sleep(1)
        sampler.sample()
    elapsed = time.monotonic() - started
    sent_during = sum(sum(d.seq.values()) for d in devices) - sent_before
    sampler.sample()
    cpu = sampler.cpu_cores(elapsed)
    cpu["load generator (this process)"] = (sum(me.cpu_times()[:2]) - loadgen_cpu) / elapsed
    # The machine is shared: what other processes took in the window says how much of it this run had.
    cpu["other processes on the machine"] = max(0.0, (_busy_s() - machine_busy) / elapsed - sum(cpu.values()))
    # Alerts of the last probes are given up to 10 s to arrive.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while any(p.fired_ts and p.alert_ms is None for p in probes.values()):
                stats.probe_alert.clear()
                await stats.probe_alert.wait()
    stop.set()
    await driver
    ws_stop.set()
    await watcher
    for device in devices:
        if device.transport is not None:
            device.transport.write(b"\xe0\x00")
            device.transport.close()
    del by_unit

    latencies = [p.alert_ms for p in probes.values() if p.alert_ms is not None]
    fired = [p for p in probes.values() if p.fired_ts]
    return {
        "units": units,
        "probes": probes_n,
        "load": {
            "ecg": (f"500 Hz in {FRAME_S * ecg_every * 1000:.0f} ms frames" if background_ecg else "probes only")
            + ("" if ecg_every == 1 and background_ecg else " (reduced)"),
            "background_vitals_and_gps": f"every {vitals_every} s" + (" (reduced)" if vitals_every > 1 else ""),
        },
        "warmup_s": warmup,
        "seconds": round(elapsed, 1),
        "offered_msgs_per_s": round(sent_during / elapsed),
        "ticks_skipped_at_inflight_cap": sum(d.skipped for d in devices) - skipped_before,
        "alert_latency_ms": {
            "n": len(latencies),
            "fired": len(fired),
            "p50": round(pct(latencies, 0.5), 1),
            "p95": round(pct(latencies, 0.95), 1),
            "p99": round(pct(latencies, 0.99), 1),
            "max": round(max(latencies, default=float("nan")), 1),
        },
        "first_alert_kinds": sorted({p.alert_kind for p in probes.values() if p.alert_kind}),
        "background_alerts_raised": stats.background_alerts,
        "console_messages": {"care": stats.care_messages, "updates": stats.updates},
        "publish_to_ack_ms": {
            "p50": round(pct(stats.ack_ms, 0.5), 1),
            "p99": round(pct(stats.ack_ms, 0.99), 1),
        },
        "rejected": stats.rejected,
        "cpu_cores": {k: round(v, 2) for k, v in cpu.items()},
        "peak_rss_mib": {k: round(v / 2**20, 1) for k, v in sampler.peak_rss.items()},
    }


def _busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=500, help="background units at the standard load")
    parser.add_argument("--probes", type=int, default=60, help="probe units, each raising one alert in the window")
    parser.add_argument("--seconds", type=float, default=60, help="measured window (after the warm-up)")
    parser.add_argument(
        "--ecg-every", type=int, default=1, help="reduction: one 12-lead frame every N ticks of 250 ms, N× longer"
    )
    parser.add_argument("--no-ecg", action="store_true", help="reduction: background units send no 12-lead")
    parser.add_argument(
        "--vitals-every", type=int, default=1, help="reduction: background vitals and GPS every N s (probes: 1 s)"
    )
    parser.add_argument(
        "--warmup", type=float, default=10, help="seconds of load before measuring (every crew's contact is taken in)"
    )
    parser.add_argument("--login-path", default="/api/login", help="the console's login endpoint, if it has one")
    args = parser.parse_args()
    result = asyncio.run(
        bench(
            args.units,
            args.probes,
            args.seconds,
            args.ecg_every,
            not args.no_ecg,
            args.vitals_every,
            args.warmup,
            args.login_path,
        )
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
