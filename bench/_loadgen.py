"""Cheap load for the city-scale benchmark: a fleet of units published by one process over a few MQTT connections,
a broker sink, and many console websocket clients in one process.

Why not one aiomqtt client per unit (bench/telemetry.py): at 250 units that cost 0.8 of a core in paho's per-packet
Python work, so the generator ate the machine it measured. Here every MQTT 5 packet is framed by hand from payload
templates (the device's msgpack encoding with only seq and ts filled in per message, checked against the codec at
start), the packets of one 10 ms slot leave in one write per connection, and QoS 1 flow control honours the broker's
receive maximum (what does not fit waits in the generator: a device outbox, whose wait counts as latency, since
every latency starts at the device timestamp taken when the message was made).

Many units over few connections needs an account allowed to publish for any unit: SHARED_ACCOUNT, added to a
stack's broker by the benchmark only (`grant_shared_account`), with ACL lines for ems/v1/+/{ecg,vitals,gps,event}
(write) and ems/v1/+/ack (read). The gateway is unchanged: it takes the unit from the topic and payload as for any
device, and the units are still provisioned (the partitioned gateways subscribe to them by name).

Run by bench/scale.py as child processes, so that each one's CPU is measured on its own:

    python bench/_loadgen.py fleet    --host H --port P --password-file F --prefix B --units N --from T0 --until T1
    python bench/_loadgen.py flood    --host H --port P --password-file F --until T1 | --count N
                                      (broker baseline; bench/gateway_cost.py)
    python bench/_loadgen.py sink     --host H --port P --username U --password-file F --from T0 --until T1
    python bench/_loadgen.py consoles --url URL [--cookie C] --clients 50 --watch 2 --prefix B --units N ...

Each prints one JSON object on its last line of standard output; `measuring` and `done` lines mark its window.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import resource
import signal
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

SHARED_ACCOUNT = "bench.loadgen"
SHARED_ACL = f"""
# Benchmark only (bench/_loadgen.py): one account publishing for many units over few connections.
user {SHARED_ACCOUNT}
topic write ems/v1/+/ecg
topic write ems/v1/+/vitals
topic write ems/v1/+/gps
topic write ems/v1/+/event
topic read ems/v1/+/ack
"""

SLOT_S = 0.010  # units are spread over the 250 ms frame period in slots of 10 ms
FRAME_S = 0.250
SLOTS = round(FRAME_S / SLOT_S)
ECG_N, FS, LSB_UV = 125, 500.0, 2.5
STREAMS = ("ecg", "vitals", "gps")


def now_us() -> int:
    return time.time_ns() // 1000


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: array[float] | list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def timeline(latencies: array[float], sent_at: array[int], window: Window, bucket_s: float) -> list[dict[str, float]]:
    """Latency per `bucket_s` of the window, by when the message was made: when, in a long run, it was slow."""
    if bucket_s <= 0:
        return []
    bucket_us = round(bucket_s * 1e6)
    buckets: dict[int, array[float]] = collections.defaultdict(lambda: array("d"))
    for ms, ts in zip(latencies, sent_at, strict=True):
        buckets[(ts - window.start_us) // bucket_us].append(ms)
    return [
        {
            "t_s": round(b * bucket_s, 1),
            "n": len(v),
            "p50": percentile(v, 0.5),
            "p99": percentile(v, 0.99),
            "max": round(max(v), 1),
        }
        for b, v in sorted(buckets.items())
    ]


# -- MQTT 5 framing (only what the benchmark needs: CONNECT, SUBSCRIBE, PUBLISH QoS 0/1, PUBACK, PINGREQ) --------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, username: str, password: str, keepalive: int = 60) -> bytes:
    # Clean start, no session kept; Receive Maximum 65535 (property 0x21) for what the broker sends us.
    variable = b"\x00\x04MQTT\x05" + bytes([0x80 | 0x40 | 0x02]) + keepalive.to_bytes(2, "big") + b"\x03\x21\xff\xff"
    payload = mqtt_str(client_id) + mqtt_str(username) + mqtt_str(password)
    return b"\x10" + varint(len(variable) + len(payload)) + variable + payload


def subscribe_packet(packet_id: int, filters: list[str], qos: int) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"\x00" + b"".join(mqtt_str(f) + bytes([qos]) for f in filters)
    return b"\x82" + varint(len(body)) + body


def publish_packet(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH; `topic` is already length-prefixed (mqtt_str)."""
    return b"".join(
        (b"\x32", varint(len(topic) + 3 + len(payload)), topic, packet_id.to_bytes(2, "big"), b"\x00", payload)
    )


_PROPERTY_SIZES = {  # MQTT 5 property id → fixed size in bytes; -1 string/binary, -2 string pair, -3 varint
    **dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), 1),
    **dict.fromkeys((0x13, 0x21, 0x22, 0x23), 2),
    **dict.fromkeys((0x02, 0x11, 0x18, 0x27), 4),
    **dict.fromkeys((0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F), -1),
    0x26: -2,
    0x0B: -3,
}


def read_varint(buf: bytes | bytearray, at: int) -> tuple[int, int] | None:
    """(value, next offset), or None when the buffer ends inside it."""
    value, shift = 0, 0
    while at < len(buf):
        byte = buf[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    return None


def parse_properties(buf: bytes, at: int) -> tuple[dict[int, int | bytes], int]:
    decoded = read_varint(buf, at)
    assert decoded is not None
    length, at = decoded
    end = at + length
    props: dict[int, int | bytes] = {}
    while at < end:
        pid, at = buf[at], at + 1
        size = _PROPERTY_SIZES[pid]
        if size > 0:
            props[pid] = int.from_bytes(buf[at : at + size], "big")
            at += size
        elif size == -3:
            decoded = read_varint(buf, at)
            assert decoded is not None
            props[pid], at = decoded
        else:
            for _ in range(2 if size == -2 else 1):
                n = int.from_bytes(buf[at : at + 2], "big")
                props[pid], at = buf[at + 2 : at + 2 + n], at + 2 + n
    return props, end


class MqttConnection(asyncio.Protocol):
    """One raw MQTT 5 connection. `publish` queues; `flush` writes what the broker's receive maximum admits, in one
    write. Incoming QoS 1 messages are answered with PUBACK at once and handed to `on_message(topic, payload)`."""

    def __init__(self, on_message: Callable[[bytes, bytes], None] | None = None) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.suback = asyncio.Event()
        self.receive_max = 65535
        self.inflight = 0
        self.waiting: collections.deque[bytes] = collections.deque()  # framed but over the window: the outbox
        self.refused = 0  # PUBACK with a reason code >= 0x80 (e.g. not authorised)
        self.puback_count = 0
        self._next_id = 0
        self._buf = bytearray()

    @classmethod
    async def open(
        cls, host: str, port: int, client_id: str, username: str, password: str, **kw: Callable[[bytes, bytes], None]
    ) -> MqttConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(**kw), host, port)
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        sock.setsockopt(6, 1, 1)  # TCP_NODELAY: as devices and the gateway do
        conn.transport.write(connect_packet(client_id, username, password))
        async with asyncio.timeout(10):
            code = await conn.connected
        if code != 0:
            raise ConnectionError(f"CONNACK reason code {code:#x} for {username}")
        return conn

    def packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(f"connection closed before CONNACK: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def subscribe(self, filters: list[str], qos: int = 1) -> None:
        assert self.transport is not None
        for start in range(0, len(filters), 500):
            self.suback.clear()
            self.transport.write(subscribe_packet(self.packet_id(), filters[start : start + 500], qos))
            async with asyncio.timeout(30):
                await self.suback.wait()

    def publish(self, topic: bytes, payload: bytes) -> None:
        self.waiting.append(publish_packet(topic, self.packet_id(), payload))

    def flush(self) -> None:
        room = self.receive_max - self.inflight
        if room <= 0 or not self.waiting or self.transport is None or self.transport.is_closing():
            return
        take = min(room, len(self.waiting))
        out = [self.waiting.popleft() for _ in range(take)]
        self.inflight += take
        self.transport.write(b"".join(out))

    def ping(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"\xc0\x00")

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        at, replies = 0, []
        while True:
            header = read_varint(buf, at + 1) if len(buf) > at + 1 else None
            if header is None:
                break
            length, start = header
            end = start + length
            if end > len(buf):
                break
            kind = buf[at] >> 4
            if kind == 3:  # PUBLISH
                qos = (buf[at] >> 1) & 3
                n = int.from_bytes(buf[start : start + 2], "big")
                topic = bytes(buf[start + 2 : start + 2 + n])
                pos = start + 2 + n
                if qos:
                    replies.append(b"\x40\x02" + bytes(buf[pos : pos + 2]))
                    pos += 2
                decoded = read_varint(buf, pos)
                assert decoded is not None
                plen, pos = decoded
                if self.on_message is not None:
                    self.on_message(topic, bytes(buf[pos + plen : end]))
            elif kind == 4:  # PUBACK of ours
                self.inflight -= 1
                self.puback_count += 1
                if length > 2 and buf[start + 2] >= 0x80:
                    self.refused += 1
            elif kind == 2:  # CONNACK
                props, _ = parse_properties(bytes(buf[start + 2 : end]), 0)
                receive_max = props.get(0x21, 65535)
                self.receive_max = receive_max if isinstance(receive_max, int) else 65535
                if not self.connected.done():
                    self.connected.set_result(buf[start + 1])
            elif kind == 9:  # SUBACK
                codes = buf[end - 1]
                if codes >= 0x80:
                    print(f"subscription refused: {codes:#x}", file=sys.stderr)
                self.suback.set()
            at = end
        del buf[:at]
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))
        self.flush()


# -- the fleet ------------------------------------------------------------------------------------------------


def _packed_pairs(fields: dict[str, object]) -> bytes:
    return b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True) for k, v in fields.items())


@dataclass(slots=True)
class PayloadTemplate:
    """A device message's msgpack with seq and ts left open: prefix + seq + ts + suffix."""

    prefix: bytes
    suffix: bytes

    @classmethod
    def of(cls, unit: str, boot: int, rest: dict[str, object]) -> PayloadTemplate:
        count = 5 + len(rest)
        assert count < 16
        prefix = bytes([0x80 | count]) + _packed_pairs({"v": 1, "unit": unit, "boot": boot})
        return cls(prefix, _packed_pairs(rest))

    def fill(self, seq: int, ts: int, suffix: bytes | None = None) -> bytes:
        """The payload; `suffix` (the msgpack of the same fields as this template's) replaces this template's."""
        rest = self.suffix if suffix is None else suffix
        return b"".join((self.prefix, b"\xa3seq", msgpack.packb(seq), b"\xa2ts", msgpack.packb(ts), rest))

    def for_unit(self, unit: str, boot: int) -> PayloadTemplate:
        """The same message from another unit (or boot); the suffix, which may hold kilobytes of samples, is shared."""
        prefix = bytes([self.prefix[0]]) + _packed_pairs({"v": 1, "unit": unit, "boot": boot})
        return PayloadTemplate(prefix, self.suffix)


def ecg_rest(data: bytes) -> dict[str, object]:
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    return {"fs": FS, "leads": leads, "lsb_uv": LSB_UV, "n": ECG_N, "data": data}


VITALS_REST: dict[str, object] = {"hr": 80.0, "spo2": 97.0, "rr": 16.0}
GPS_REST: dict[str, object] = {"lat": 31.23, "lon": 121.47, "speed": 10.0}


def ecg_frames(count: int = 8) -> list[bytes]:
    """Real-looking 12-lead frames (the simulator's dipole ECG), 3 000 bytes of samples each."""
    from firmware_sim import EcgSynth

    synth = EcgSynth(seed=1)
    return [synth.frame_bytes(ECG_N) for _ in range(count)]


class EcgPool:
    """The fleet's 12-lead payloads: `POOL` distinct consecutive frames (256 s of one synthetic patient, noise and beat
    jitter included), shared by every unit, each unit starting at its own place. A unit repeats a frame only after
    256 s, longer than a compressed batch of TimescaleDB (1 000 rows of one unit), and no two units send the same
    frame at the same time: what the store and its compression see is like recorded 12-leads, not a few frames
    cycled (which compress against each other far better than any recording would)."""

    POOL = 1024

    def __init__(self, count: int = POOL) -> None:
        rests = [ecg_rest(frame) for frame in ecg_frames(count)]
        self.suffixes = [_packed_pairs(rest) for rest in rests]
        self._first = rests[0]

    def template(self, unit: str, boot: int) -> PayloadTemplate:
        """The unit's 12-lead template: fill it with `suffix(...)`."""
        return PayloadTemplate.of(unit, boot, self._first)

    def start(self, index: int) -> int:
        """Where unit number `index` starts in the pool (a prime stride spreads the units over it)."""
        return index * 97 % len(self.suffixes)

    def suffix(self, start: int, frame: int) -> bytes:
        return self.suffixes[(start + frame) % len(self.suffixes)]


def check_templates(unit: str, boot: int) -> None:
    """The hand-built payloads decode to exactly what the codec produces (so the gateway sees real messages)."""
    from emergency.codec import decode_device_message
    from emergency.protocol import Stream, device_topic

    frame = ecg_frames(1)[0]
    for stream, rest in (("ecg", ecg_rest(frame)), ("vitals", VITALS_REST), ("gps", GPS_REST)):
        payload = PayloadTemplate.of(unit, boot, rest).fill(7, 1_700_000_000_000_000)
        message = decode_device_message(device_topic(unit, Stream(stream)), payload)
        assert (message.unit, message.boot, message.seq, message.ts) == (unit, boot, 7, 1_700_000_000_000_000)


@dataclass(slots=True)
class Unit:
    name: str
    connection: MqttConnection
    topics: tuple[bytes, bytes, bytes]
    ecg: PayloadTemplate
    ecg_start: int  # in the fleet's EcgPool
    vitals: PayloadTemplate
    gps: PayloadTemplate
    sent: tuple[array[int], array[int], array[int]] = field(
        default_factory=lambda: (array("q"), array("q"), array("q"))
    )
    acked: list[int] = field(default_factory=lambda: [-1, -1, -1])
    rejected: int = 0


@dataclass(slots=True)
class Window:
    """The measured interval, in µs of the wall clock shared by every process of the benchmark."""

    start_us: int
    end_us: int

    def holds(self, ts: int) -> bool:
        return self.start_us <= ts < self.end_us


class Fleet:
    """N units at the standard load: ECG every 250 ms, vitals and GPS every second, spread evenly in time."""

    def __init__(self, prefix: str, count: int, boot: int, window: Window) -> None:
        self.names = [f"{prefix}{i:05d}" for i in range(count)]
        self.boot = boot
        self.ecg = EcgPool()
        self.window = window
        self.units: list[Unit] = []
        self.by_topic: dict[bytes, Unit] = {}
        self.ack_ms: array[float] = array("d")
        self.ack_sent_at: array[int] = array("q")  # when each message of ack_ms was made
        self.offered_in_window = 0
        self.late_slots = 0

    async def connect(self, host: str, port: int, password: str, connections: int) -> list[MqttConnection]:
        conns = [
            await MqttConnection.open(
                host, port, f"bench-loadgen-{os.getpid()}-{i}", SHARED_ACCOUNT, password, on_message=self.on_ack
            )
            for i in range(connections)
        ]
        for i, name in enumerate(self.names):
            conn = conns[i % connections]
            unit = Unit(
                name,
                conn,
                (mqtt_str(f"ems/v1/{name}/ecg"), mqtt_str(f"ems/v1/{name}/vitals"), mqtt_str(f"ems/v1/{name}/gps")),
                self.ecg.template(name, self.boot),
                self.ecg.start(i),
                PayloadTemplate.of(name, self.boot, VITALS_REST),
                PayloadTemplate.of(name, self.boot, GPS_REST),
            )
            self.units.append(unit)
            self.by_topic[f"ems/v1/{name}/ack".encode()] = unit
        for i, conn in enumerate(conns):
            await conn.subscribe([f"ems/v1/{u.name}/ack" for u in self.units[i::connections]], qos=1)
        return conns

    def on_ack(self, topic: bytes, payload: bytes) -> None:
        unit = self.by_topic.get(topic)
        if unit is None:
            return
        t = now_us()
        for ack in msgpack.unpackb(payload)["acks"]:  # one message per unit, an ack per stream (docs/protocol.md)
            if ack.get("boot") != self.boot:
                continue
            stream = STREAMS.index(ack["stream"]) if ack["stream"] in STREAMS else -1
            if stream < 0:
                continue
            sent, upto, window = unit.sent[stream], min(ack["upto"], len(unit.sent[stream]) - 1), self.window
            for seq in range(unit.acked[stream] + 1, upto + 1):
                ts = sent[seq]
                if window.holds(ts):
                    self.ack_ms.append((t - ts) / 1000)
                    self.ack_sent_at.append(ts)
            unit.acked[stream] = max(unit.acked[stream], upto)
            unit.rejected += len(ack.get("rejected", ()))

    def publish_slot(self, slot: int, cycle: int) -> None:
        ts = now_us()
        measured = self.window.holds(ts)
        for i in range(slot, len(self.units), SLOTS):
            unit = self.units[i]
            ecg = unit.sent[0]
            unit.connection.publish(unit.topics[0], unit.ecg.fill(len(ecg), ts, self.ecg.suffix(unit.ecg_start, cycle)))
            ecg.append(ts)
            n = 1
            if (cycle + i) % 4 == 0:
                vitals, gps = unit.sent[1], unit.sent[2]
                unit.connection.publish(unit.topics[1], unit.vitals.fill(len(vitals), ts))
                unit.connection.publish(unit.topics[2], unit.gps.fill(len(gps), ts))
                vitals.append(ts)
                gps.append(ts)
                n = 3
            if measured:
                self.offered_in_window += n

    async def run(self, conns: list[MqttConnection]) -> None:
        """Publish from now until the window ends, one slot every 10 ms on an absolute schedule."""
        started = time.monotonic()
        step, next_ping = 0, started + 30
        while now_us() < self.window.end_us:
            self.publish_slot(step % SLOTS, step // SLOTS)
            for conn in conns:
                conn.flush()
            step += 1
            delay = started + step * SLOT_S - time.monotonic()
            if delay < -SLOT_S:
                self.late_slots += 1
            if time.monotonic() > next_ping:
                next_ping += 30
                for conn in conns:
                    conn.ping()
            await asyncio.sleep(max(0.0, delay))

    def all_acked(self) -> bool:
        return all(u.acked[s] >= len(u.sent[s]) - 1 for u in self.units for s in range(3))

    def totals(self) -> dict[str, int]:
        return {
            "sent": sum(len(s) for u in self.units for s in u.sent),
            "acked": sum(a + 1 for u in self.units for a in u.acked),
            "rejected": sum(u.rejected for u in self.units),
        }


async def run_fleet(args: argparse.Namespace) -> dict[str, object]:
    window = Window(round(args.from_ * 1e6), round(args.until * 1e6))
    boot = int(time.time()) % 2**31
    check_templates(f"{args.prefix}00000", boot)
    fleet = Fleet(args.prefix, args.units, boot, window)
    password = Path(args.password_file).read_text().strip()
    conns = await fleet.connect(args.host, args.port, password, args.connections)
    print("connected", flush=True)
    # Wait for the start of the warm-up (everything else is already running), then publish.
    await asyncio.sleep(max(0.0, args.start - time.time()))
    cpu_at_start: float | None = None

    async def mark_window() -> None:
        nonlocal cpu_at_start
        await asyncio.sleep(max(0.0, window.start_us / 1e6 - time.time()))
        cpu_at_start = cpu_seconds()
        print("measuring", flush=True)

    marker = asyncio.create_task(mark_window())
    await fleet.run(conns)
    await marker
    cpu = (cpu_seconds() - (cpu_at_start or 0.0)) / ((window.end_us - window.start_us) / 1e6)
    print("done", flush=True)
    # Wait (bounded) for the acks of everything sent; the generator keeps flushing its outbox meanwhile.
    deadline = time.monotonic() + args.drain
    while not fleet.all_acked() and time.monotonic() < deadline:
        for conn in conns:
            conn.flush()
        await asyncio.sleep(0.1)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.write(b"\xe0\x00")  # DISCONNECT
            conn.transport.close()
    seconds = (window.end_us - window.start_us) / 1e6
    return {
        **fleet.totals(),
        "units": args.units,
        "connections": args.connections,
        "receive_max": conns[0].receive_max,
        "offered_msgs_per_s": round(fleet.offered_in_window / seconds),
        "publish_to_ack_ms": {
            "p50": percentile(fleet.ack_ms, 0.5),
            "p99": percentile(fleet.ack_ms, 0.99),
            "n": len(fleet.ack_ms),
        },
        "publish_to_ack_timeline": timeline(fleet.ack_ms, fleet.ack_sent_at, window, args.timeline),
        "refused_by_broker": sum(c.refused for c in conns),
        "outbox_left": sum(len(c.waiting) for c in conns),
        "late_slots": fleet.late_slots,
        "cpu_cores": round(cpu, 3),
    }


# -- broker baseline: publisher flood and sink ----------------------------------------------------------------


async def run_flood(args: argparse.Namespace) -> dict[str, object]:
    """Publish the standard mix (4 ECG : 1 vitals : 1 GPS) for `units` units as fast as the broker acknowledges."""
    boot = int(time.time()) % 2**31
    password = Path(args.password_file).read_text().strip()
    conns = [
        await MqttConnection.open(args.host, args.port, f"bench-flood-{os.getpid()}-{i}", SHARED_ACCOUNT, password)
        for i in range(args.connections)
    ]
    pool = EcgPool()
    names = [f"{args.prefix}{i:05d}" for i in range(args.units)]
    templates = [
        (
            mqtt_str(f"ems/v1/{n}/ecg"),
            mqtt_str(f"ems/v1/{n}/vitals"),
            mqtt_str(f"ems/v1/{n}/gps"),
            pool.template(n, boot),
            PayloadTemplate.of(n, boot, VITALS_REST),
            PayloadTemplate.of(n, boot, GPS_REST),
        )
        for n in names
    ]
    seqs = [[0, 0, 0] for _ in names]

    def mix() -> Iterator[tuple[bytes, bytes]]:
        """The units in turn, each a 12-lead frame, and every fourth turn its vitals and GPS too."""
        for i in itertools.count():
            u = i % len(names)
            ecg_topic, vitals_topic, gps_topic, ecg, vitals, gps = templates[u]
            ts, seq = now_us(), seqs[u]
            yield ecg_topic, ecg.fill(seq[0], ts, pool.suffix(pool.start(u), seq[0]))
            seq[0] += 1
            if (i // len(names)) % 4 == 0:
                yield vitals_topic, vitals.fill(seq[1], ts)
                seq[1] += 1
                yield gps_topic, gps.fill(seq[2], ts)
                seq[2] += 1

    made = mix()
    messages = 0  # published so far

    def make() -> tuple[bytes, bytes]:
        nonlocal messages
        messages += 1
        return next(made)

    def acked() -> int:
        return sum(c.puback_count for c in conns)

    async def publish(more: Callable[[], bool]) -> None:
        while more():
            for conn in conns:
                # Keep two windows queued per connection: the broker, not this loop, sets the pace.
                while len(conn.waiting) + conn.inflight < 2 * conn.receive_max and more():
                    conn.publish(*make())
                conn.flush()
            await asyncio.sleep(0.001)

    async def publish_count(count: int) -> None:
        """`count` more messages, returning once the broker has taken every one."""
        target, first = messages + count, acked()
        await publish(lambda: messages < target)
        while acked() - first < count:
            for conn in conns:
                conn.flush()
            await asyncio.sleep(0.01)

    print("connected", flush=True)
    if args.warmup:
        # Every unit heard from first (a gateway's first message of a unit costs more than the rest); then wait to be
        # told (SIGUSR1) to go on, so that what follows is measured on its own.
        go = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
        await publish_count(args.warmup)
        print("warmed", flush=True)
        await go.wait()
    await asyncio.sleep(max(0.0, args.start - time.time()))
    cpu0, t0 = cpu_seconds(), time.monotonic()
    acks0 = acked()
    if args.count:
        await publish_count(args.count)
    else:
        await publish(lambda: time.time() < args.until)
    elapsed = time.monotonic() - t0
    taken = acked() - acks0
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return {
        "acked_msgs_per_s": round(taken / elapsed),
        "cpu_cores": round((cpu_seconds() - cpu0) / elapsed, 3),
        "receive_max": conns[0].receive_max,
        "connections": args.connections,
        "published": messages,
    }


async def run_sink(args: argparse.Namespace) -> dict[str, object]:
    """One subscriber (QoS 1, like the gateway) counting the device messages it receives in the window."""
    window = Window(round(args.from_ * 1e6), round(args.until * 1e6))
    counts = {"in_window": 0, "bytes": 0}

    def on_message(topic: bytes, payload: bytes) -> None:
        if window.holds(now_us()):
            counts["in_window"] += 1
            counts["bytes"] += len(payload)

    password = Path(args.password_file).read_text().strip()
    conn = await MqttConnection.open(
        args.host, args.port, f"bench-sink-{os.getpid()}", args.username, password, on_message=on_message
    )
    await conn.subscribe([f"ems/v1/+/{s}" for s in STREAMS], qos=1)
    print("connected", flush=True)
    await asyncio.sleep(max(0.0, args.from_ - time.time()))
    cpu0 = cpu_seconds()
    await asyncio.sleep(max(0.0, args.until - time.time()))
    seconds = args.until - args.from_
    return {
        "received_msgs_per_s": round(counts["in_window"] / seconds),
        "received_mbytes_per_s": round(counts["bytes"] / seconds / 1e6, 1),
        "cpu_cores": round((cpu_seconds() - cpu0) / seconds, 3),
    }


# -- console clients --------------------------------------------------------------------------------------------


def _stamps_of(frame: str) -> list[tuple[str, int]]:
    """The type and device `ts` of each message in a console frame (a JSON array of messages, docs/console-api.md),
    without parsing the JSON of its 4 KB ECG messages: each message after the first starts right after
    `,{"type":"` (no nested object of the console's starts with a type), and its first `"ts":` is its own (`ts` comes
    among the first keys, before any nested object). Messages without a `ts` are left out."""
    stamps: list[tuple[str, int]] = []
    if not frame.startswith('[{"type":"'):
        return stamps
    for message in frame[10:].split(',{"type":"'):
        at = message.find('"ts":')
        if at < 0:
            continue
        stop = message.find(",", at)
        digits = message[at + 5 : stop if stop >= 0 else len(message)].rstrip("}]")
        if digits.isdigit():
            stamps.append((message[: message.index('"')], int(digits)))
    return stamps


async def run_consoles(args: argparse.Namespace) -> dict[str, object]:
    import aiohttp

    window = Window(round(args.from_ * 1e6), round(args.until * 1e6))
    latencies: dict[str, array[float]] = {"ecg": array("d"), "update": array("d")}
    sent_at: dict[str, array[int]] = {"ecg": array("q"), "update": array("q")}
    names = [f"{args.prefix}{i:05d}" for i in range(args.units)]
    headers = (
        {"Cookie": args.cookie, "Origin": args.url.replace("ws", "http", 1).removesuffix("ws")} if args.cookie else {}
    )
    closes: list[str] = []
    frames = [0]  # websocket frames received by all clients within the window

    async def client(http: aiohttp.ClientSession, index: int) -> None:
        """Receives every frame; measures the messages of every `--sample-every`th (at 1 500 units each client
        receives ~3 000 updates a second, and timing every one of them cost the benchmark's clients more than the
        console). Frames are picked by count, not content, each client starting at its own offset. aiohttp's
        compiled frame reader, not the websockets library: at 2 000 units the 50 clients read ~2 200 frames a
        second, and the cost per frame is the clients' process's whole cost."""
        watched = [names[(index * args.watch + k) % len(names)] for k in range(args.watch)] if names else []
        countdown = index % args.sample_every
        async with http.ws_connect(args.url, headers=headers, max_msg_size=0) as ws:
            for unit in watched:
                await ws.send_str(json.dumps({"type": "watch", "unit": unit}))
            async for message in ws:  # until the console closes it, or the run cancels this task
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                t = now_us()
                if window.holds(t):
                    frames[0] += 1
                if countdown:
                    countdown -= 1
                    continue
                countdown = args.sample_every - 1
                for kind, ts in _stamps_of(message.data):
                    if not window.holds(ts):
                        continue
                    key = "ecg" if kind == "ecg" else "update" if kind in ("gps", "vitals") else ""
                    if key:
                        latencies[key].append((t - ts) / 1000)
                        sent_at[key].append(ts)
            closes.append(f"client {index}: closed by the console ({ws.close_code})")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        tasks = [asyncio.create_task(client(http, i)) for i in range(args.clients)]
        print("connected", flush=True)
        await asyncio.sleep(max(0.0, args.from_ - time.time()))
        cpu0 = cpu_seconds()
        await asyncio.sleep(max(0.0, args.until - time.time()))
        cpu = (cpu_seconds() - cpu0) / (args.until - args.from_)
        await asyncio.sleep(2)  # the window's last frames
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "clients": args.clients,
        "frames_measured": f"1 in {args.sample_every}",
        "watched_units": min(len(names), args.clients * args.watch),
        "publish_to_console_ecg_ms": {
            "p50": percentile(latencies["ecg"], 0.5),
            "p99": percentile(latencies["ecg"], 0.99),
            "n": len(latencies["ecg"]),
        },
        "publish_to_console_update_ms": {
            "p50": percentile(latencies["update"], 0.5),
            "p99": percentile(latencies["update"], 0.99),
            "n": len(latencies["update"]),
        },
        "publish_to_console_update_timeline": timeline(latencies["update"], sent_at["update"], window, args.timeline),
        "frames_per_client_s": round(frames[0] / max(1, args.clients) / (args.until - args.from_), 1),
        "closed_by_console": closes[:5],
        "closed_count": len(closes),
        "cpu_cores": round(cpu, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    for mode in ("fleet", "flood", "sink", "consoles"):
        p = modes.add_parser(mode)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=18830)
        p.add_argument("--username", default=SHARED_ACCOUNT)
        p.add_argument("--password-file")
        p.add_argument("--prefix", default="B")
        p.add_argument("--units", type=int, default=100)
        p.add_argument("--connections", type=int, default=8)
        p.add_argument("--start", type=float, default=0.0, help="epoch seconds: start publishing")
        p.add_argument("--from", dest="from_", type=float, default=0.0, help="epoch seconds: the window opens")
        p.add_argument("--until", type=float, default=0.0, help="epoch seconds: the window closes")
        p.add_argument("--count", type=int, default=0, help="flood: publish this many messages, not for a time")
        p.add_argument("--warmup", type=int, default=0, help="flood: first this many, then wait for SIGUSR1")
        p.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last acks")
        p.add_argument("--url", default="")
        p.add_argument("--cookie", default="")
        p.add_argument("--clients", type=int, default=50)
        p.add_argument("--watch", type=int, default=2, help="units whose ECG each console client watches")
        p.add_argument("--sample-every", type=int, default=5, help="consoles: measure every Nth frame a client gets")
        p.add_argument("--timeline", type=float, default=0.0, help="seconds per bucket of a latency timeline (0: none)")
    args = parser.parse_args()
    runner = {"fleet": run_fleet, "flood": run_flood, "sink": run_sink, "consoles": run_consoles}[args.mode]
    # SIGTERM from the benchmark ends the process like Ctrl-C would.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with contextlib.suppress(KeyboardInterrupt):
        result = asyncio.run(runner(args))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
