"""One simulated ambulance: monitor, GPS and crew tablet behind one protocol-v1 MQTT connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import aiomqtt

from emergency.codec import RejectedMessage, decode_ack, encode_device_message
from emergency.mqtt import NO_DELAY
from emergency.protocol import (
    DeviceEvent,
    DeviceMessage,
    EcgFrame,
    EventKind,
    GpsFix,
    Stream,
    UnitStatus,
    Vitals,
    device_topic,
)
from firmware_sim._ecg import EcgModel, EcgSynth
from firmware_sim._outbox import DropRange, Outbox, Pending
from firmware_sim._route import Drive

log = logging.getLogger(__name__)

FIRMWARE = "emergency-sim/1"
ECG_FS = 500.0
ECG_FRAME_S = 0.25
RETRANSMIT_AFTER_S = 30.0
_BACKOFF_CAP_EXPONENT = 10
# New messages waiting for the link task. Bounded; on overflow the newest are not queued — they are already in the
# outbox, which the link task sends again on reconnect or after RETRANSMIT_AFTER_S.
_SEND_QUEUE_MAX = 2_000


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    unit: str
    password: str
    ecg_leads: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    outbox_max_rows: int = 200_000
    clock_skew_s: float = 0.0
    seed: int | None = None


@dataclass(slots=True)
class Ledger:
    """What the center acknowledged to this device: (stream, boot, seq) stored, and rejected."""

    acked_stored: set[tuple[str, int, int]] = field(default_factory=set)
    rejected: set[tuple[str, int, int]] = field(default_factory=set)
    dropped: list[DropRange] = field(default_factory=list)


def read_and_increment_boot(path: Path) -> int:
    """Persist the boot counter before the first message of this boot (write, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boot = int(path.read_text().strip()) + 1 if path.exists() else 0
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        f.write(f"{boot}\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return boot


class Device:
    """`async with Device(config, host, port, state_dir) as device:` generates, buffers, sends, and replays."""

    def __init__(self, config: DeviceConfig, host: str, port: int, state_dir: Path) -> None:
        self.config = config
        self.unit = config.unit
        self._host, self._port = host, port
        self._dir = state_dir / config.unit
        seed = config.seed if config.seed is not None else zlib.crc32(config.unit.encode())
        self.ecg = EcgSynth(EcgModel(), fs=ECG_FS, leads=config.ecg_leads, seed=seed)
        self.drive = Drive.start(seed)
        self._rng = random.Random(seed)
        self.boot = -1
        self._seq: dict[Stream, int] = dict.fromkeys((Stream.ECG, Stream.VITALS, Stream.GPS, Stream.EVENT), 0)
        self.ledger = Ledger()
        self.outbox: Outbox | None = None
        self._send_queue: asyncio.Queue[Pending] = asyncio.Queue(maxsize=_SEND_QUEUE_MAX)
        self._online = asyncio.Event()
        self._online.set()
        self._empty = asyncio.Event()
        self._connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._generator: asyncio.Task[None] | None = None
        self._link: asyncio.Task[None] | None = None
        self.published = 0
        self._vitals_state = {"hr": 78.0, "spo2": 97.0, "rr": 16.0, "temp": 36.8, "etco2": 37.0}
        self._last_nibp = 0.0

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.boot = read_and_increment_boot(self._dir / "boot")
        self.outbox = Outbox(self._dir / "outbox.sqlite3", self.config.outbox_max_rows)
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._record(self._event(EventKind.DEVICE_START, {"firmware": FIRMWARE}))  # seq 0 of the event stream
        self._record(self._event(EventKind.STATUS, {"status": self.drive.status.value}))
        self._generator = self._tasks.create_task(self._generate_forever(), name=f"sim.device[{self.unit}].generate")
        self._link = self._tasks.create_task(self._link_forever(), name=f"sim.device[{self.unit}].link")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in (self._generator, self._link):
            if task is not None:
                task.cancel()
        try:
            if self._tasks is not None:
                await self._tasks.__aexit__(None, None, None)
        finally:
            self._tasks = None
            if self.outbox is not None:
                self.outbox.close()

    # -- test controls ----------------------------------------------------------------------------------------

    def go_offline(self) -> None:
        """Cut the network: disconnect and do not reconnect until go_online(); generation goes on."""
        self._online.clear()
        if self._link is not None and self._tasks is not None:
            self._link.cancel()
            self._link = self._tasks.create_task(self._link_forever(), name=f"sim.device[{self.unit}].link")

    def go_online(self) -> None:
        self._online.set()

    @contextlib.asynccontextmanager
    async def offline(self) -> AsyncIterator[None]:
        self.go_offline()
        try:
            yield
        finally:
            self.go_online()

    def pending(self) -> int:
        return len(self.outbox) if self.outbox is not None else 0

    async def drained(self, within_s: float = 60) -> None:
        """Wait until the outbox is empty (everything acknowledged)."""
        async with asyncio.timeout(within_s):
            await self._empty.wait()

    async def stop_generating(self) -> None:
        """Stop producing new messages (the link keeps sending and receiving acks)."""
        if self._generator is not None:
            self._generator.cancel()
            await asyncio.gather(self._generator, return_exceptions=True)
            self._generator = None

    async def connected(self, within_s: float = 30) -> None:
        async with asyncio.timeout(within_s):
            await self._connected.wait()

    # -- generation -------------------------------------------------------------------------------------------

    def _now_us(self) -> int:
        return time.time_ns() // 1000 + int(self.config.clock_skew_s * 1_000_000)

    def _next_seq(self, stream: Stream) -> int:
        seq = self._seq[stream]
        self._seq[stream] = seq + 1
        return seq

    def _event(self, kind: EventKind, detail: dict[str, str | int | float | bool]) -> DeviceEvent:
        return DeviceEvent(self.unit, self.boot, self._next_seq(Stream.EVENT), self._now_us(), kind, detail)

    def _record(self, *messages: DeviceMessage) -> None:
        """Outbox first (durable), then hand to the link task."""
        assert self.outbox is not None
        pending = [Pending(m.stream, m.boot, m.seq, encode_device_message(m)) for m in messages]
        drops = self.outbox.put(pending)
        self._empty.clear()
        for item in pending:
            try:
                self._send_queue.put_nowait(item)
            except asyncio.QueueFull:
                break  # stays in the outbox; replayed on reconnect or retransmission
        if drops:
            self.ledger.dropped.extend(drops)
            notices = [
                self._event(
                    EventKind.OUTBOX_DROP,
                    {
                        "stream": d.stream.value,
                        "of_boot": d.boot,
                        "first_seq": d.first_seq,
                        "last_seq": d.last_seq,
                        "reason": "outbox_full",
                    },
                )
                for d in drops
            ]
            log.warning("%s: outbox full, gave up %d ranges", self.unit, len(drops))
            self._record(*notices)

    async def _generate_forever(self) -> None:
        frame_n = round(ECG_FS * ECG_FRAME_S)
        tick = 0
        next_at = time.monotonic()
        while True:
            ts = self._now_us()
            data = self.ecg.frame_bytes(frame_n)
            messages: list[DeviceMessage] = [
                EcgFrame(
                    self.unit,
                    self.boot,
                    self._next_seq(Stream.ECG),
                    ts,
                    ECG_FS,
                    self.ecg.leads,
                    self.ecg.lsb_uv,
                    frame_n,
                    data,
                )
            ]
            if tick % 4 == 0:
                messages += self._second(ts)
            self._record(*messages)
            tick += 1
            next_at += ECG_FRAME_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def _second(self, ts: int) -> list[DeviceMessage]:
        out: list[DeviceMessage] = []
        status = self.drive.step(1.0)
        if status is not None:
            out.append(self._event(EventKind.STATUS, {"status": status.value}))
            if status is UnitStatus.ON_SCENE:
                out.append(self._event(EventKind.PATIENT_CONTACT, {}))
        fix = self.drive.fix()
        out.append(
            GpsFix(
                self.unit,
                self.boot,
                self._next_seq(Stream.GPS),
                ts,
                fix.lat,
                fix.lon,
                speed=fix.speed,
                heading=fix.heading,
                acc=round(self._rng.uniform(2, 6), 1),
            )
        )
        v = self._vitals_state
        for key, (lo, hi, step) in {
            "hr": (55, 120, 0.8),
            "spo2": (90, 100, 0.2),
            "rr": (10, 26, 0.3),
            "temp": (36.0, 38.5, 0.01),
            "etco2": (30, 45, 0.3),
        }.items():
            v[key] = min(hi, max(lo, v[key] + self._rng.uniform(-step, step)))
        model = self.ecg.model
        if abs(model.heart_rate_bpm - v["hr"]) >= 2:
            self.ecg.set_model(
                EcgModel(round(v["hr"]), model.st_vector_mv, model.rr_jitter, model.noise_mv, model.wander_mv)
            )
        vitals = {k: round(val, 1) for k, val in v.items()}
        vitals["hr"] = float(round(self.ecg.model.heart_rate_bpm))
        cuff: dict[str, float | int] = {}
        if time.monotonic() - self._last_nibp > 180:  # a cuff reading every 3 minutes
            self._last_nibp = time.monotonic()
            sbp = round(self._rng.uniform(105, 145))
            dbp = round(sbp * self._rng.uniform(0.55, 0.7))
            cuff = {"sbp": float(sbp), "dbp": float(dbp), "map": round((sbp + 2 * dbp) / 3, 1), "nibp_ts": ts}
        out.append(Vitals(self.unit, self.boot, self._next_seq(Stream.VITALS), ts, **vitals, **cuff))  # type: ignore[arg-type]
        return out

    # -- link -------------------------------------------------------------------------------------------------

    async def _link_forever(self) -> None:
        attempt = 0
        while True:
            await self._online.wait()
            try:
                async with aiomqtt.Client(
                    self._host,
                    self._port,
                    username=self.unit,
                    password=self.config.password,
                    identifier=f"device-{self.unit}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    timeout=10,
                    keepalive=15,
                    socket_options=NO_DELAY,
                ) as client:
                    client.pending_calls_threshold = _SEND_QUEUE_MAX  # a replay publishes many at once
                    self._client, attempt = client, 0
                    await client.subscribe(device_topic(self.unit, Stream.ACK), qos=1)
                    self._connected.set()
                    async with asyncio.TaskGroup() as link:
                        link.create_task(self._read_acks(client), name=f"sim.device[{self.unit}].acks")
                        link.create_task(self._send(client), name=f"sim.device[{self.unit}].send")
            except* aiomqtt.MqttError as group:
                log.debug("%s: link down (%s)", self.unit, group.exceptions[0])
            finally:
                self._client = None
                self._connected.clear()
            attempt += 1
            await asyncio.sleep(self._rng.uniform(0, min(30.0, 1.5 ** min(_BACKOFF_CAP_EXPONENT, attempt))))

    async def _send(self, client: aiomqtt.Client) -> None:
        assert self.outbox is not None
        # Everything not yet covered by an ack goes first, in order; new messages queued meanwhile are in the
        # outbox too, so the queue is cleared rather than sent twice.
        while not self._send_queue.empty():
            self._send_queue.get_nowait()
        after: tuple[str, int, int] | None = None
        while page := self.outbox.all_pending(after):
            await self._publish(client, page)
            last = page[-1]
            after = (last.stream.value, last.boot, last.seq)
        retransmit_at = time.monotonic() + RETRANSMIT_AFTER_S
        while True:
            try:
                async with asyncio.timeout(max(0.0, retransmit_at - time.monotonic())):
                    item = await self._send_queue.get()
                batch = [item]
                while not self._send_queue.empty() and len(batch) < 100:
                    batch.append(self._send_queue.get_nowait())
                await self._publish(client, batch)
            except TimeoutError:
                # Unacknowledged for too long while connected (the center restarted, or the broker dropped it).
                stale = self.outbox.unsent_or_older_than(RETRANSMIT_AFTER_S)
                if stale:
                    log.info("%s: retransmitting %d unacknowledged messages", self.unit, len(stale))
                    await self._publish(client, stale)
                retransmit_at = time.monotonic() + RETRANSMIT_AFTER_S / 3

    async def _publish(self, client: aiomqtt.Client, items: list[Pending]) -> None:
        assert self.outbox is not None
        for item in items:
            await client.publish(device_topic(self.unit, item.stream), item.payload, qos=1)
        self.outbox.mark_sent(items)
        self.published += len(items)

    async def _read_acks(self, client: aiomqtt.Client) -> None:
        assert self.outbox is not None
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                ack = decode_ack(payload)
            except RejectedMessage as exc:
                log.warning("%s: malformed ack ignored: %s", self.unit, exc)
                continue
            settled = self.outbox.settle(ack.stream, ack.boot, ack.upto)
            if not len(self.outbox):
                self._empty.set()
            rejected = set(ack.rejected)
            for seq in settled:
                key = (ack.stream.value, ack.boot, seq)
                (self.ledger.rejected if seq in rejected else self.ledger.acked_stored).add(key)
            if rejected & set(settled):
                log.warning("%s: center rejected %s seqs %s", self.unit, ack.stream.value, sorted(rejected))
