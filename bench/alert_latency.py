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
raised at that `ts` arriving on the websocket. `--clients N` adds N more console clients in a process of their own
(bench/_loadgen.py consoles, as bench/scale.py runs them), each watching two units' 12-lead, so that the console
fans out to a center's screens while alerts are timed; their own latencies are reported beside.

    .venv/bin/python bench/alert_latency.py --units 500 --probes 60 --seconds 60
    .venv/bin/python bench/alert_latency.py --units 1740 --probes 260 --seconds 120 --clients 49 --hold-memory 18

Options reduce the load when the machine cannot carry it (`--ecg-every 4`: one 12-lead frame of 1 s per second
instead of four of 250 ms, same samples and bytes; `--no-ecg`: no 12-lead from background units; `--vitals-every N`:
background vitals and GPS every N s); probe units always send the full standard load, and the output says which
reductions were used.

How the load is made, so that the generator costs little beside the stack it measures: each unit has its own MQTT 5
connection and account (bench/_loadgen.py's `MqttConnection`: packets framed by hand on a raw asyncio socket, QoS 1,
PUBACKs counted, the gateway's acks read and acknowledged). Every payload sent under load is a `PayloadTemplate` —
the codec's encoding of the message with only seq and ts filled in per message — made at start and checked byte for
byte against `encode_device_message`, each kind for every unit: the 12-lead frames (their samples shared by all
units), normal vitals, the probes' violating vitals, the GPS fix. Units are spread over 25 slots of 10 ms, and each
sends its vitals and GPS in its own quarter of the second, as unsynchronised monitors would; a unit's messages of a
tick leave in one write, and a unit with 80 publishes in flight skips its tick (the broker admits 100). With
`--resend`, a unit sends again what stays unacknowledged for 30 s, as devices do (checked every 10 s, a slot of units
at a time), so that a message the broker dropped at its cap does not hold the stream's ack for the rest of the run;
what an ack names as held above a missing message is not sent again. Without it (the default, as every run before
2026-12-05) nothing is sent twice. A message counts as acknowledged (acks p50 / p99) at the first ack that settles it,
by the watermark or by a held range. The whole fleet
makes patient contact and starts streaming within a few seconds, as after a center's restart; `--ramp 60` spreads
that over a minute before the warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import asyncpg
import msgpack
import msgspec
import psutil
import websockets

from emergency.codec import encode_device_message
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
from emergency.settings import Settings
from emergency.stack import provision_units
from firmware_sim import EcgSynth, followed_delay, retransmit_after

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import MqttConnection, PayloadTemplate, mqtt_str
from _scrape import busy_cpu_seconds, scrape
from scale import Child, add_hold_memory_option, held_memory
from telemetry import ProcessSampler, now_us, pct, running_stack

FS = 500.0
FRAME_S = 0.25
TICK_US = 250_000  # FRAME_S in µs: a unit's tick, and the time one 12-lead frame of the standard load spans
SLOTS = 25  # units are spread over the 250 ms tick in this many slots, as unsynchronised devices would be
RESEND_AFTER_US = 30_000_000  # protocol v1: a device resends what stays unacknowledged this long
RESEND_MAX = 1_000  # messages a device resends at one check, oldest first, as firmware_sim's outbox does
NORMAL_VITALS = Vitals("-", 0, 0, 0, hr=80.0, sbp=122.0, dbp=76.0, spo2=97.0, rr=16.0)
VIOLATING_VITALS = Vitals("-", 0, 0, 0, hr=120.0, sbp=70.0, dbp=40.0, spo2=97.0, rr=16.0)  # SBP < 80, shock index 1.71
GPS_FIX = GpsFix("-", 0, 0, 0, 31.23, 121.47, speed=10.0)
STREAMS = (Stream.ECG, Stream.VITALS, Stream.GPS, Stream.EVENT)
ECG, VITALS, GPS, EVENT = range(4)  # a stream's index in STREAMS and in a device's `topics`, `seq`, `sent`, `acked`
STREAM_INDEX = {s.value: i for i, s in enumerate(STREAMS)}  # by the name an ack gives


# -- payloads from templates ---------------------------------------------------------------------------------------


def checked(template: PayloadTemplate, message: DeviceMessage) -> PayloadTemplate:
    """`template`, once its payload is found byte for byte equal to the codec's encoding of `message` (any seq
    and ts), so that the gateway receives exactly what a device would send."""
    seq, ts = 41, 1_700_000_000_123_456
    if template.fill(seq, ts) != encode_device_message(msgspec.structs.replace(message, seq=seq, ts=ts)):
        raise AssertionError(f"the {message.stream} template of {message.unit} differs from the codec's encoding")
    return template


def newly_held(before: list[list[int]], now: list[list[int]]) -> Iterator[int]:
    """The seqs in `now`'s ranges and in none of `before`'s (an ack's `held`: ascending, apart; what the center holds
    only grows while its watermark stays, so a range of `before` lies inside one of `now` or below them all)."""
    i = 0
    for first, last in now:
        seq = first
        while seq <= last:
            while i < len(before) and before[i][1] < seq:
                i += 1
            if i < len(before) and before[i][0] <= seq:
                seq = before[i][1] + 1
                continue
            end = min(last, before[i][0] - 1) if i < len(before) else last
            yield from range(seq, end + 1)
            seq = end + 1


def template_of(message: DeviceMessage) -> PayloadTemplate:
    """`message`'s payload with seq and ts left open: the codec's own fields, in its order, checked against it."""
    fields = msgpack.unpackb(encode_device_message(message))
    rest = {k: v for k, v in fields.items() if k not in ("v", "unit", "boot", "seq", "ts")}
    return checked(PayloadTemplate.of(message.unit, message.boot, rest), message)


@dataclass(frozen=True, slots=True)
class Payloads:
    """Every payload a unit sends once the load runs, as templates: the 12-lead frames replayed in a loop, normal
    vitals, the probe's violating vitals, and the GPS fix."""

    ecg: list[PayloadTemplate]
    vitals: PayloadTemplate
    violating: PayloadTemplate
    gps: PayloadTemplate

    @classmethod
    def of(cls, unit: str, boot: int, frames: list[EcgFrame]) -> Payloads:
        """The payloads of `unit`; `frames` (any unit, any seq and ts) give the 12-lead's samples."""
        return cls(
            [template_of(msgspec.structs.replace(f, unit=unit, boot=boot)) for f in frames],
            template_of(msgspec.structs.replace(NORMAL_VITALS, unit=unit, boot=boot)),
            template_of(msgspec.structs.replace(VIOLATING_VITALS, unit=unit, boot=boot)),
            template_of(msgspec.structs.replace(GPS_FIX, unit=unit, boot=boot)),
        )

    def for_unit(self, unit: str, boot: int, frame: EcgFrame) -> Payloads:
        """The same payloads from another unit, sharing their bytes of samples; each kind is checked against the
        codec (of the 12-lead, the first frame, `frame`: the other frames differ from it only in shared bytes)."""

        def of(template: PayloadTemplate, message: DeviceMessage) -> PayloadTemplate:
            return checked(template.for_unit(unit, boot), msgspec.structs.replace(message, unit=unit, boot=boot))

        return Payloads(
            [of(self.ecg[0], frame)] + [t.for_unit(unit, boot) for t in self.ecg[1:]],
            of(self.vitals, NORMAL_VITALS),
            of(self.violating, VIOLATING_VITALS),
            of(self.gps, GPS_FIX),
        )


# -- a lean MQTT 5 device ----------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class LeanDevice:
    """One unit on its own MQTT 5 connection (bench/_loadgen.py's `MqttConnection`: packets framed by hand, QoS 1,
    PUBACKs counted, the gateway's acks acknowledged and handed to `on_ack`), publishing payloads from templates.

    A tick's messages leave in one write. In-flight publishes are capped below the broker's receive maximum
    (mosquitto here: 100); a unit at the cap skips its tick (counted in `skipped`) rather than queueing without
    bound. A seq is taken only by a message that is written, so each stream's seqs run from 0 without a gap, as the
    gateway's watermark acks expect. With `--resend`, `resend_stale` sends again what stays unacknowledged, as
    devices do (decision 51): a message the broker dropped at its cap would otherwise hold the stream's watermark
    for the rest of the run. What an ack's held ranges name is settled and not sent again.
    """

    INFLIGHT_MAX: ClassVar[int] = 80

    unit: str
    payloads: Payloads
    ecg_every: int  # ticks from one 12-lead frame to the next; 0: none
    vitals_every: int  # ticks from one vitals message (and GPS fix) to the next
    phase: int = 0  # ticks by which this unit's vitals and GPS are offset: devices are not synchronised
    topics: tuple[bytes, ...] = field(init=False)  # length-prefixed, by stream index
    seq: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # the next seq, by stream index
    sent: tuple[array[int], ...] = field(default_factory=lambda: tuple(array("q") for _ in STREAMS))  # ts by seq
    acked: list[int] = field(default_factory=lambda: [-1, -1, -1, -1])
    tick: int = 0
    skipped: int = 0
    ecg_t0: int = 0  # device time of the first 12-lead sample: frame ts follow the sample clock from it
    ecg_ticks: array[int] = field(default_factory=lambda: array("q"))  # the tick of each 12-lead seq
    violating_seq: int = -1  # the vitals seq that carried the probe's violating values
    events: dict[int, bytes] = field(default_factory=dict)  # event payloads by seq (a few: the patient contact)
    resent_at: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # by stream: when it last resent
    # By stream: the seqs above the watermark the center said it holds (an ack's `held` ranges), and those ranges.
    held: tuple[set[int], ...] = field(default_factory=lambda: tuple(set() for _ in STREAMS))
    held_ranges: list[list[list[int]]] = field(default_factory=lambda: [[] for _ in STREAMS])
    # By stream: how far behind the center is, followed as firmware does (decision 51).
    ack_delay_us: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    resent: int = 0
    connection: MqttConnection = field(init=False)

    def __post_init__(self) -> None:
        self.topics = tuple(mqtt_str(device_topic(self.unit, s)) for s in STREAMS)

    async def connect(self, host: str, port: int, password: str, on_ack: Callable[[LeanDevice, bytes], None]) -> None:
        """Connect as the unit and subscribe to its acks."""
        self.connection = await MqttConnection.open(
            host, port, f"bench-{self.unit}", self.unit, password, on_message=lambda _topic, ack: on_ack(self, ack)
        )
        await self.connection.subscribe([device_topic(self.unit, Stream.ACK)], qos=1)

    def publish_event(self, event: DeviceEvent) -> None:
        """An event (rare, so encoded by the codec) with the next event seq and the publish time as ts."""
        ts = now_us()
        seq = self.seq[EVENT]
        self.seq[EVENT] += 1
        self.sent[EVENT].append(ts)
        payload = encode_device_message(msgspec.structs.replace(event, seq=seq, ts=ts))
        self.events[seq] = payload
        self.connection.publish(self.topics[EVENT], payload)
        self.connection.flush()

    def vitals_due(self) -> bool:
        """Whether the next tick sends vitals (and a GPS fix)."""
        return (self.tick + self.phase) % self.vitals_every == 0

    def publish_tick(self, violating: bool) -> int:
        """Write this tick's messages (the 12-lead frame, vitals and GPS, whichever are due; the violating vitals if
        `violating`) in one write; returns the publish ts they carry, or 0 when the tick was skipped."""
        tick = self.tick
        self.tick += 1
        ecg = self.ecg_every > 0 and tick % self.ecg_every == 0
        vitals = (tick + self.phase) % self.vitals_every == 0
        conn = self.connection
        transport = conn.transport
        if transport is None or transport.is_closing() or conn.inflight + len(conn.waiting) >= self.INFLIGHT_MAX:
            self.skipped += 1
            return 0
        ts = now_us()
        seq, sent, topics, payloads = self.seq, self.sent, self.topics, self.payloads
        if ecg:
            # The 12-lead carries its sample clock (frames back to back from the first); the rest the publish time.
            self.ecg_t0 = self.ecg_t0 or ts - tick * TICK_US
            conn.publish(topics[ECG], self._frame(seq[ECG], tick))
            seq[ECG] += 1
            sent[ECG].append(ts)
            self.ecg_ticks.append(tick)
        if vitals:
            if violating:
                self.violating_seq = seq[VITALS]
            conn.publish(topics[VITALS], (payloads.violating if violating else payloads.vitals).fill(seq[VITALS], ts))
            conn.publish(topics[GPS], payloads.gps.fill(seq[GPS], ts))
            seq[VITALS] += 1
            seq[GPS] += 1
            sent[VITALS].append(ts)
            sent[GPS].append(ts)
        conn.flush()
        return ts

    def _frame(self, seq: int, tick: int) -> bytes:
        frame = self.payloads.ecg[(tick // self.ecg_every) % len(self.payloads.ecg)]
        return frame.fill(seq, self.ecg_t0 + tick * TICK_US)

    def _payload(self, stream: int, seq: int) -> bytes:
        """The payload this unit sent as `seq` of `stream`, made again."""
        ts = self.sent[stream][seq]
        if stream == ECG:
            return self._frame(seq, self.ecg_ticks[seq])
        if stream == VITALS:
            return (self.payloads.violating if seq == self.violating_seq else self.payloads.vitals).fill(seq, ts)
        if stream == GPS:
            return self.payloads.gps.fill(seq, ts)
        return self.events[seq]

    def acknowledged(self, stream: int, upto: int, held: list[list[int]], at: int) -> list[int]:
        """An ack of `stream` up to `upto`, holding the `held` ranges above it, arrived at `at`: the center's ack
        delay followed from it. Returns the seqs it settles that no ack settled before."""
        sent, told, acked = self.sent[stream], self.held[stream], self.acked[stream]
        settled: list[int] = []
        if upto > acked:
            for seq in range(acked + 1, upto + 1):
                if seq in told:
                    told.discard(seq)
                else:
                    settled.append(seq)
            self.acked[stream] = upto
        for seq in newly_held(self.held_ranges[stream], held):
            if upto < seq < len(sent) and seq not in told:
                told.add(seq)
                settled.append(seq)
        self.held_ranges[stream] = held
        if settled:  # the newest message it settles, as the firmware's outbox follows it
            self.ack_delay_us[stream] = followed_delay(self.ack_delay_us[stream], at - sent[max(settled)])
        return settled

    def resend_stale(self, now: int) -> None:
        """Send again, oldest first, what stays unacknowledged for 30 s (or twice the center's ack delay on that
        stream, when that is longer: decision 51) after it was sent, and after this unit last resent that stream,
        skipping what an ack's held ranges name: what is left is what the center is missing (or has not read
        yet)."""
        budget = RESEND_MAX
        for stream in range(len(STREAMS)):
            sent, after = self.sent[stream], retransmit_after(RESEND_AFTER_US, self.ack_delay_us[stream])
            if now - self.resent_at[stream] < after:
                continue
            seq, held, resent = self.acked[stream] + 1, self.held[stream], 0
            while seq < len(sent) and budget and now - sent[seq] >= after:
                if seq not in held:  # the center holds it above a missing one: only what is missing is resent
                    self.connection.publish(self.topics[stream], self._payload(stream, seq))
                    resent += 1
                    budget -= 1
                seq += 1
            if resent:
                self.resent += resent
                self.resent_at[stream] = now
        self.connection.flush()

    def ping(self) -> None:
        self.connection.ping()

    def close(self) -> None:
        if self.connection.transport is not None:
            self.connection.transport.write(b"\xe0\x00")  # DISCONNECT
            self.connection.transport.close()


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
    window_start_us: int = 0
    # Publish → ack, by the minute of the window the message was sent in (a stall shows when it happened).
    ack_ms: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
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
    clients: int = 0,
    harness_nice: int = 0,
    ramp: float = 0.0,
    resend: bool = False,
) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="emergency-alertbench-"))
    root.chmod(0o755)
    try:
        async with running_stack(root) as (info, stack):
            # The stack has started at this process's priority; from here on the devices and the console clients,
            # which stand for machines elsewhere, may take only the CPU the stack leaves them.
            os.nice(harness_nice)
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
                clients,
                ramp,
                resend,
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
    clients: int,
    ramp: float,
    resend: bool,
) -> dict[str, object]:
    # Named as bench/_loadgen.py's console clients name the units they watch: prefix and five digits.
    names = [(f"B{i:05d}", f"pw-{i}-bench") for i in range(units)] + [
        (f"P{i:05d}", f"pw-{i}-probe") for i in range(probes_n)
    ]
    provision_units(data, dict(names))
    # A partitioned stack's gateways follow units provisioned while it runs at their next read of the registry: a
    # unit that streamed before then would lose its first messages at the broker (no subscriber yet), and this
    # generator never sends them again, so each would hold a seq-gap alert open through the run.
    gateway = Settings().gateway
    await asyncio.sleep(1 + (gateway.partition_refresh_s if gateway.partition_count > 1 else 0))
    boot = int(time.time()) % 2**31
    stats = Stats()

    def on_ack(device: LeanDevice, payload: bytes) -> None:
        # Read with msgpack alone, not the codec's validating decode_acks: the gateway sends each unit about two ack
        # messages a second, and at 10 µs each the codec would cost this process more than making the messages does.
        t = now_us()
        for ack in msgpack.unpackb(payload)["acks"]:  # one message per unit, an ack per stream
            stream = STREAM_INDEX.get(ack["stream"])
            if stream is None:
                continue
            sent = device.sent[stream]
            upto = min(ack["upto"], len(sent) - 1)
            for seq in device.acknowledged(stream, upto, ack.get("held", []), t):
                stats.ack_ms[(sent[seq] - stats.window_start_us) // 60_000_000].append((t - sent[seq]) / 1000)
            stats.rejected += len(ack.get("rejected", ()))

    # A continuous 10 s of synthetic 12-lead, cut into frames, replayed in a loop; every payload of the load is a
    # template made (and checked) with the codec here, so that publishing only fills in seq and ts.
    n = round(FS * FRAME_S * ecg_every)
    synth = EcgSynth(seed=1)
    frames = [
        EcgFrame("-", boot, 0, 0, FS, STANDARD_LEADS, 2.5, n, synth.frame_bytes(n))
        for _ in range(max(1, round(10 / (FRAME_S * ecg_every))))
    ]
    payloads = Payloads.of(names[0][0], boot, frames)

    devices: list[LeanDevice] = []
    for unit, password in names:
        is_probe = unit.startswith("P")  # probe units always send the full standard load
        device = LeanDevice(
            unit,
            payloads.for_unit(unit, boot, frames[0]),
            ecg_every=ecg_every if background_ecg or is_probe else 0,
            vitals_every=4 * (1 if is_probe else vitals_every),
            phase=len(devices),
        )
        await device.connect(info["mqtt"]["host"], info["mqtt"]["port"], password, on_ack)
        devices.append(device)

    probes = {d.unit: Probe(d, fire_at=float("inf")) for d in devices if d.unit.startswith("P")}
    headers = await console_headers(info, login_path)
    ws_url = info["console_url"].replace("http", "ws", 1) + "ws"
    stop, ws_stop = asyncio.Event(), asyncio.Event()
    watcher = asyncio.create_task(watch_alerts(ws_url, headers, probes, stats, ws_stop))

    # The units that stream, in their slots of the tick; each joins once its crew has made patient contact.
    slots: list[list[tuple[LeanDevice, Probe | None]]] = [[] for _ in range(SLOTS)]

    async def drive() -> None:
        next_at, k = time.monotonic(), 0
        while not stop.is_set():
            now = time.monotonic()
            for device, probe in slots[k % SLOTS]:
                # A probe's vitals violate once, at the first vitals tick from its fire_at.
                firing = probe is not None and not probe.fired_ts and now >= probe.fire_at and device.vitals_due()
                ts = device.publish_tick(firing)
                if probe is not None and firing and ts:
                    probe.fired_ts = ts
            if resend and k // SLOTS % 40 == 0:  # each unit every 10 s, as firmware_sim checks its outbox
                at = now_us()
                for device, _ in slots[k % SLOTS]:
                    device.resend_stale(at)
            if k % (SLOTS * 4 * 30) == 0:
                for each in devices:
                    each.ping()
            k += 1
            next_at += FRAME_S / SLOTS
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    driver = asyncio.create_task(drive())
    # Every crew makes patient contact, and its unit starts streaming: an encounter per unit in the clinical loop.
    # By default the whole fleet within a few seconds, as after a center's restart; with `ramp`, spread over that
    # many seconds, as a city's crews start their shifts and calls.
    for i, device in enumerate(devices):
        device.publish_event(DeviceEvent(device.unit, boot, 0, 0, EventKind.PATIENT_CONTACT, {"age": 60 + i % 30}))
        slots[i % SLOTS].append((device, probes.get(device.unit)))
        await asyncio.sleep(max(0.002, ramp / len(devices)))
    # More console clients, as a center's screens would be, in a process of their own (bench/_loadgen.py consoles,
    # as bench/scale.py runs them): each watches two background units' 12-lead and receives every unit's updates.
    # Their own window (and CPU) starts once the warm-up is over and ends a little before this one does.
    others: Child | None = None
    if clients:
        window_from = time.time() + warmup + 1
        others = Child(
            "consoles", "--from", str(window_from), "--until", str(window_from + seconds - 2), "--url", ws_url,
            "--cookie", headers.get("Cookie", ""), "--clients", str(clients), "--prefix", "B", "--units", str(units),
        )  # fmt: skip
        await others.start()
    await asyncio.sleep(warmup)  # the clinical loop takes ids, opens encounters, starts its 12-lead analyses
    stats.ack_ms.clear()
    sampler = ProcessSampler(stack.pid)
    sampler.sample()
    me = psutil.Process()
    loadgen_cpu = sum(me.cpu_times()[:2])
    machine_busy = busy_cpu_seconds()
    started = time.monotonic()
    stats.window_start_us = now_us()
    for i, probe in enumerate(probes.values()):
        probe.fire_at = started + (i + 0.5) * seconds / max(1, probes_n)
    lag_before, waited_before = await loop_lag_buckets(info), await reader_waits(info)
    sent_before = sum(sum(d.seq) for d in devices)
    skipped_before = sum(d.skipped for d in devices)
    for second in itertools.count(1):
        await asyncio.sleep(1)
        if time.monotonic() - started >= seconds:
            break
        # Peak memory every 10 s: reading /proc for every PostgreSQL backend takes 50–200 ms (in a thread, so as not
        # to delay the websocket receipts being timed), and each second it was 5 % of this process's CPU.
        if second % 10 == 0:
            await asyncio.to_thread(sampler.sample)
    elapsed = time.monotonic() - started
    lag_after, waited_after = await loop_lag_buckets(info), await reader_waits(info)
    sent_during = sum(sum(d.seq) for d in devices) - sent_before
    sampler.sample()
    cpu = sampler.cpu_cores(elapsed)
    cpu["load generator (this process)"] = (sum(me.cpu_times()[:2]) - loadgen_cpu) / elapsed
    # The machine is shared: what other processes took in the window says how much of it this run had.
    cpu["other processes on the machine"] = max(0.0, (busy_cpu_seconds() - machine_busy) / elapsed - sum(cpu.values()))
    # The last probes are given up to 10 s to fire and for their alerts to arrive: the last one's fire_at is within
    # half a probe interval of the window's end, and it fires at its next vitals tick, up to a second later.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while any(p.alert_ms is None for p in probes.values()):
                stats.probe_alert.clear()
                await stats.probe_alert.wait()
    stop.set()
    await driver
    ws_stop.set()
    await watcher
    more_clients = await others.result(60) if others is not None else None
    if more_clients is not None:  # their CPU over their own window, taken out of the machine's other work
        cpu["more console clients"] = float(more_clients["cpu_cores"])
        other = cpu["other processes on the machine"] - cpu["more console clients"]
        cpu["other processes on the machine"] = max(0.0, other)
    for device in devices:
        device.close()

    latencies = [p.alert_ms for p in probes.values() if p.alert_ms is not None]
    acks = [ms for minute in stats.ack_ms.values() for ms in minute]
    fired = [p for p in probes.values() if p.fired_ts]
    split = await latency_split(info["postgres_dsn"], probes)
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
        "messages_resent": sum(d.resent for d in devices),  # with --resend: unacknowledged too long
        "alert_latency_ms": {
            "n": len(latencies),
            "fired": len(fired),
            "p50": round(pct(latencies, 0.5), 1),
            "p95": round(pct(latencies, 0.95), 1),
            "p99": round(pct(latencies, 0.99), 1),
            "max": round(max(latencies, default=float("nan")), 1),
        },
        # Where each probe's time went: publish → the gateway read it (broker, socket, the gateway's loop), and the
        # gateway read it → the alert on the websocket (clinical loop, care bus, broker, console).
        "alert_latency_split_ms": {
            part: {
                "p50": round(pct(v, 0.5), 1),
                "p99": round(pct(v, 0.99), 1),
                "max": round(max(v, default=float("nan")), 1),
            }
            for part, v in split.items()
        },
        # How late the gateway's event loop ran its 100 ms timer over the window (its /metrics histogram): the
        # upper bound of the bucket holding each quantile.
        "gateway_loop_lag_ms": quantiles_of_buckets(lag_before, lag_after, (0.5, 0.99)),
        # Seconds in the window that each kind's reader waited for room in a commit lane (the gateway's backpressure:
        # meanwhile the broker holds what comes next, and a violating vitals message waits with it).
        "gateway_reader_waited_s": {k: round(v - waited_before.get(k, 0.0), 1) for k, v in waited_after.items()},
        "first_alert_kinds": sorted({p.alert_kind for p in probes.values() if p.alert_kind}),
        "background_alerts_raised": stats.background_alerts,
        "console_messages": {"care": stats.care_messages, "updates": stats.updates},
        "publish_to_ack_ms": {"p50": round(pct(acks, 0.5), 1), "p99": round(pct(acks, 0.99), 1)},
        "by_minute": by_minute(stats, probes),
        # The other console clients' own view (bench/_loadgen.py consoles), over about the same window.
        "more_console_clients": more_clients,
        "rejected": stats.rejected,
        "cpu_cores": {k: round(v, 2) for k, v in cpu.items()},
        "peak_rss_mib": {k: round(v / 2**20, 1) for k, v in sampler.peak_rss.items()},
    }


def by_minute(stats: Stats, probes: dict[str, Probe]) -> list[dict[str, float]]:
    """Each minute of the window: its probes' alert latency and its messages' ack times, so that a long run shows
    when it fell behind and for how long."""
    alerts: dict[int, list[float]] = defaultdict(list)
    for p in probes.values():
        if p.fired_ts and p.alert_ms is not None:
            alerts[(p.fired_ts - stats.window_start_us) // 60_000_000].append(p.alert_ms)
    return [
        {
            "minute": minute,
            "alerts": len(alerts[minute]),
            "alert_p50_ms": round(pct(alerts[minute], 0.5), 1),
            "alert_max_ms": round(max(alerts[minute], default=float("nan")), 1),
            "ack_p50_ms": round(pct(stats.ack_ms[minute], 0.5), 1),
            "ack_max_ms": round(max(stats.ack_ms[minute], default=float("nan")), 1),
        }
        for minute in sorted(set(alerts) | {m for m in stats.ack_ms if m >= 0})
    ]


async def loop_lag_buckets(info: dict[str, Any]) -> dict[float, float]:
    """The gateway's event-loop lag histogram now: cumulative count by upper bound (s)."""
    samples = await scrape(info["gateway_metrics_url"])
    return {float(s.labels["le"]): s.value for s in samples if s.name == "emergency_gateway_loop_lag_seconds_bucket"}


async def reader_waits(info: dict[str, Any]) -> dict[str, float]:
    """Seconds the gateway's readers have waited for room in its commit lanes so far, by kind."""
    samples = await scrape(info["gateway_metrics_url"])
    return {s.labels["kind"]: s.value for s in samples if s.name == "emergency_gateway_reader_wait_seconds_total"}


def quantiles_of_buckets(
    before: dict[float, float], after: dict[float, float], qs: tuple[float, ...]
) -> dict[str, float | None]:
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    result: dict[str, float | None] = {"n": total}
    for q in qs:
        bound = next((b for b, c in zip(bounds, counts, strict=True) if total and c >= q * total), None)
        result[f"p{round(q * 100)}"] = None if bound is None else bound * 1000
    return result


async def latency_split(dsn: str, probes: dict[str, Probe]) -> dict[str, list[float]]:
    """Each alerted probe's latency in two: to the gateway's receipt of the violating vitals (its stored rx_ts, on
    this machine's clock), and from there to the console."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT unit, (extract(epoch FROM ts) * 1e6)::bigint AS ts, "
            "(extract(epoch FROM rx_ts) * 1e6)::bigint AS rx FROM vitals WHERE unit = ANY($1::text[])",
            list(probes),
        )
    finally:
        await conn.close()
    received = {(r["unit"], r["ts"]): r["rx"] for r in rows}
    split: dict[str, list[float]] = {"publish_to_gateway": [], "gateway_to_console": []}
    for unit, probe in probes.items():
        rx = received.get((unit, probe.fired_ts))
        if probe.alert_ms is None or rx is None:
            continue
        to_gateway = (rx - probe.fired_ts) / 1000
        split["publish_to_gateway"].append(to_gateway)
        split["gateway_to_console"].append(probe.alert_ms - to_gateway)
    return split


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
    parser.add_argument(
        "--clients", type=int, default=0,
        help="more console websocket clients beside the one timing alerts (each watching two units' 12-lead)",
    )  # fmt: skip
    parser.add_argument(
        "--harness-nice", type=int, default=0,
        help="run the load generator and the console clients at this nice value once the stack is up (0: as the "
        "stack), so that what stands for devices and browsers elsewhere takes only the CPU the stack leaves",
    )  # fmt: skip
    parser.add_argument(
        "--ramp", type=float, default=0,
        help="seconds over which the crews make patient contact and their units start streaming, before the "
        "warm-up (0: the whole fleet within a few seconds)",
    )  # fmt: skip
    parser.add_argument(
        "--resend", action="store_true",
        help="devices send again what stays unacknowledged for 30 s, as firmware does (default: never twice)",
    )  # fmt: skip
    add_hold_memory_option(parser)
    args = parser.parse_args()
    with held_memory(args.hold_memory):
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
                args.clients,
                args.harness_nice,
                args.ramp,
                args.resend,
            )
        )
    result["hold_memory_gib"] = args.hold_memory
    result["harness_nice"] = args.harness_nice
    result["ramp_s"] = args.ramp
    result["resend"] = args.resend
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
