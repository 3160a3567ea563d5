"""One simulated ambulance: monitor, GPS and crew tablet behind one protocol-v1 MQTT connection.

Every message goes to the on-disk outbox (committed) before it is handed to the link; it leaves the outbox only when
an ack covers it. After every (re)connect the link first publishes everything still in the outbox, in
(stream, boot, seq) order, then new messages as they come; new messages keep going to the outbox meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import aiomqtt
from pydantic import SecretStr

from emergency.codec import RejectedMessage, decode_acks, encode_device_message
from emergency.mqtt import mqtt_client
from emergency.protocol import (
    DEVICE_STREAMS,
    STANDARD_LEADS,
    Ack,
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
from emergency.settings import MqttEndpoint
from firmware_sim._ecg import EcgModel, EcgSynth
from firmware_sim._outbox import DropRange, Outbox, Pending, retransmit_after
from firmware_sim._route import Drive
from firmware_sim._scenario import (
    ChangeEcg,
    Cue,
    DriftVitals,
    RecordEvent,
    Scenario,
    ScenarioError,
    ScenarioMix,
    ScenarioRun,
    scenario,
)
from firmware_sim._vitals import VitalsMonitor

log = logging.getLogger(__name__)

FIRMWARE = "emergency-sim/1"
ECG_FS = 500.0
ECG_FRAME_S = 0.25
FRAMES_PER_SECOND = round(1 / ECG_FRAME_S)
# Every network wait (connect, subscribe, a window of publishes) must finish within this, or the link is dropped
# and re-established: a half-open TCP connection must not stall the device for the keepalive's multiple.
NETWORK_TIMEOUT_S = 15.0
# Publishes in flight at once. paho keeps them in order on the socket, so a window keeps per-stream order while
# not paying one round trip per message during a replay.
_PUBLISH_WINDOW = 100
# New messages waiting for the link task. Bounded; on overflow the message is not queued (it is already in the
# outbox) and the link is told to catch up from the outbox before taking from the queue again.
_SEND_QUEUE_MAX = 2_000
_MAX_BACKOFF_EXPONENT = 64  # 1.5**64 is beyond any cap; the bound only keeps the float finite
# Skipping ahead on the drive (the test hook's trip to a scene, leaving a scene or a hospital) takes at most this
# many simulated seconds; a drive that has not changed status by then is a bug, not a long trip.
_SKIP_MAX_S = 24 * 3600


class DeviceError(Exception):
    """Base of the simulator's errors."""


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One unit's identity and behaviour. Defaults are the standard load: 12 leads at 500 Hz, vitals and GPS at 1 Hz."""

    unit: str
    password: str = field(repr=False)
    ecg_leads: tuple[str, ...] = STANDARD_LEADS
    outbox_max_rows: int = 200_000
    clock_skew_s: float = 0.0  # added to every ts: a device clock that is wrong by this much
    seed: int | None = None  # None: derived from the unit id, so a unit behaves the same run after run
    ecg_model: EcgModel = field(default_factory=EcgModel)
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    # Protocol v1: resend what stays unacknowledged this long while connected, or twice the center's ack delay when
    # that is longer (decision 51).
    retransmit_after_s: float = 30.0
    firmware: str = FIRMWARE
    # ledger.jsonl is bounded: past this size it becomes ledger.jsonl.1 (replacing the previous one) and a new file
    # starts, so a demo left running for days does not fill the disk; tests stay far below it.
    ledger_max_bytes: int = 64 * 1024 * 1024
    # TLS: the broker's CA and this unit's client certificate (CN = unit id). With these the device connects to the
    # broker's TLS listener and authenticates by certificate; the password is then not used.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Clinical scenarios, one per arrival on scene (see firmware_sim._scenario); None: a stable patient every call.
    scenarios: ScenarioMix | None = None


@dataclass(slots=True)
class Ledger:
    """What the center settled for this device since it started: (stream, boot, seq) stored, and rejected.

    Only keys that were in the outbox when the ack arrived are recorded (an ack repeated for an already settled
    message adds nothing). `dropped` lists what the outbox gave up for lack of room.
    """

    acked_stored: set[tuple[str, int, int]] = field(default_factory=set)
    rejected: set[tuple[str, int, int]] = field(default_factory=set)
    dropped: list[DropRange] = field(default_factory=list)

    def settled(self) -> set[tuple[str, int, int]]:
        return self.acked_stored | self.rejected

    def stored_seqs(self, stream: Stream | str, boot: int) -> list[int]:
        """The stored seqs of one (stream, boot), ascending."""
        name = Stream(stream).value
        return sorted(seq for s, b, seq in self.acked_stored if s == name and b == boot)

    def record_ack(self, ack: Ack, settled: Iterable[int]) -> dict[str, object] | None:
        """Record what one ack settled; returns its line for the ledger file, or None if it settled nothing."""
        rejected_seqs = set(ack.rejected)
        stored: list[int] = []
        rejected: list[int] = []
        for seq in settled:
            (rejected if seq in rejected_seqs else stored).append(seq)
        if not stored and not rejected:
            return None
        name = ack.stream.value
        self.acked_stored.update((name, ack.boot, seq) for seq in stored)
        self.rejected.update((name, ack.boot, seq) for seq in rejected)
        return {
            "stream": name,
            "boot": ack.boot,
            "upto": ack.upto,
            "stored": _runs(stored),
            "rejected": sorted(rejected),
        }

    def record_drop(self, drop: DropRange) -> dict[str, object]:
        self.dropped.append(drop)
        return {
            "dropped": {
                "stream": drop.stream.value,
                "boot": drop.boot,
                "first_seq": drop.first_seq,
                "last_seq": drop.last_seq,
            }
        }

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """Rebuild a ledger from `ledger.jsonl` (every boot's lines); a torn last line is ignored."""
        ledger = cls()
        with path.open() as lines:
            for text in lines:
                try:
                    line = json.loads(text)
                except json.JSONDecodeError:
                    continue  # the process died mid-write
                if "dropped" in line:
                    d = line["dropped"]
                    ledger.dropped.append(DropRange(Stream(d["stream"]), d["boot"], d["first_seq"], d["last_seq"]))
                    continue
                stream, boot = line["stream"], line["boot"]
                for first, last in line["stored"]:
                    ledger.acked_stored.update((stream, boot, seq) for seq in range(first, last + 1))
                ledger.rejected.update((stream, boot, seq) for seq in line["rejected"])
        return ledger


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Ascending seqs as inclusive [first, last] runs: an ack of 200 frames is one short line."""
    runs: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if runs and runs[-1][1] + 1 == seq:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def read_and_increment_boot(path: Path) -> int:
    """The boot counter for this start, persisted before first use (write, fsync, rename). The first boot is 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boot = int(path.read_text().strip()) + 1 if path.exists() else 0
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        f.write(f"{boot}\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    # The rename itself is durable only once the directory is.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return boot


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full-jitter capped exponential backoff: uniform in [0, min(cap, base · 1.5^attempt)]."""
    return rng.uniform(0.0, min(cap_s, base_s * 1.5 ** min(attempt, _MAX_BACKOFF_EXPONENT)))


class Device:
    """`async with Device(config, host, port, state_dir) as device:` generates, buffers, sends and replays.

    State lives in `state_dir/{unit}/`: `boot` (the boot counter), `outbox.sqlite3`, and `ledger.jsonl` (one line
    per ack that settled something, and one per range given up; rotated to `ledger.jsonl.1` past
    `config.ledger_max_bytes`).
    """

    def __init__(self, config: DeviceConfig, host: str, port: int, state_dir: Path) -> None:
        self.config = config
        self.unit = config.unit
        self.state_dir = state_dir / config.unit
        self._endpoint = MqttEndpoint(
            host=host,
            port=port,
            username=config.unit,
            password=SecretStr(config.password),
            tls_ca=config.tls_ca,
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
        )
        seed = config.seed if config.seed is not None else zlib.crc32(config.unit.encode())
        self.ecg = EcgSynth(config.ecg_model, fs=ECG_FS, leads=config.ecg_leads, seed=seed)
        self.monitor = VitalsMonitor(seed, hr_baseline=config.ecg_model.heart_rate_bpm)
        self.drive = Drive.start(seed)
        self._rng = random.Random(seed)
        mix = config.scenarios
        self._scenario_rng = random.Random(mix.seed if mix is not None and mix.seed is not None else seed)
        self._calls = 0  # arrivals on scene that picked from the mix
        self.scenario_run: ScenarioRun | None = None  # the call being played, from patient contact to available
        self._play_request: tuple[Scenario, float] | None = None
        self._stable_nibp_interval_s = self.monitor.nibp_interval_s
        self.clock_skew_s = config.clock_skew_s  # may be changed while running (clock fault tests)
        self.boot = -1
        self._seq: dict[Stream, int] = dict.fromkeys(DEVICE_STREAMS, 0)  # next seq per stream, this boot
        self.ledger = Ledger()
        self.outbox: Outbox | None = None
        self._ledger_file: IO[str] | None = None
        self._ledger_path = self.state_dir / "ledger.jsonl"
        self._send_queue: asyncio.Queue[Pending] = asyncio.Queue(maxsize=_SEND_QUEUE_MAX)
        self._behind = False  # the send queue overflowed: catch up from the outbox
        self._outbox_full = False  # for logging the start of a shedding episode once
        self._online = asyncio.Event()
        self._online.set()
        self._empty = asyncio.Event()
        self._connected = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._generator: asyncio.Task[None] | None = None
        self._link: asyncio.Task[None] | None = None
        self.published = 0  # publishes completed (PUBACK received), retransmissions included
        self.connects = 0

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tasks is not None:
            raise DeviceError(f"device {self.unit} is already running")
        self.boot = read_and_increment_boot(self.state_dir / "boot")
        self._seq = dict.fromkeys(DEVICE_STREAMS, 0)
        max_rows = self.config.outbox_max_rows
        self.outbox = Outbox(self.state_dir / "outbox.sqlite3", max_rows, shed_margin=max_rows // 20)
        try:
            self._ledger_file = self._ledger_path.open("a", encoding="utf-8")
            if not len(self.outbox):
                self._empty.set()
            self._record(self._event(EventKind.DEVICE_START, {"firmware": self.config.firmware}))  # seq 0, always
            self._record(self._event(EventKind.STATUS, {"status": self.drive.status.value}))
            self._tasks = asyncio.TaskGroup()
            await self._tasks.__aenter__()
        except BaseException:
            self._tasks = None
            await self.__aexit__(None, None, None)
            raise
        self._generator = self._tasks.create_task(self._generate_forever(), name=f"sim.device[{self.unit}].generate")
        self._link = self._tasks.create_task(self._link_forever(), name=f"sim.device[{self.unit}].link")
        log.debug("%s: started, boot %d, %d messages in the outbox", self.unit, self.boot, len(self.outbox))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Stop generating first so nothing is recorded into a closing outbox, then drop the link.
        for task in (self._generator, self._link):
            if task is not None:
                task.cancel()
        try:
            if self._tasks is not None:
                await self._tasks.__aexit__(None, None, None)
        finally:
            self._tasks = self._generator = self._link = None
            self._connected.clear()
            if self.outbox is not None:
                self.outbox.close()
                self.outbox = None
            if self._ledger_file is not None:
                self._ledger_file.close()
                self._ledger_file = None

    # -- controls (tests, fault injection, the command line) ---------------------------------------------------

    def go_offline(self) -> None:
        """Cut the network: disconnect and do not reconnect until go_online(); generation and buffering go on."""
        self._online.clear()
        if self._link is not None and self._tasks is not None:
            self._link.cancel()
            self._link = self._tasks.create_task(self._link_forever(), name=f"sim.device[{self.unit}].link")

    def go_online(self) -> None:
        self._online.set()

    @contextlib.asynccontextmanager
    async def offline(self) -> AsyncIterator[None]:
        """`async with device.offline():` the network is cut inside the block."""
        self.go_offline()
        try:
            yield
        finally:
            self.go_online()

    def pending(self) -> int:
        """Rows in the outbox: generated and not yet covered by an ack."""
        return len(self.outbox) if self.outbox is not None else 0

    async def drained(self, within_s: float = 60) -> None:
        """Wait until the outbox is empty (everything acknowledged); TimeoutError after `within_s`."""
        async with asyncio.timeout(within_s):
            await self._empty.wait()

    async def connected(self, within_s: float = 30) -> None:
        """Wait until the link is up and subscribed to its acks; TimeoutError after `within_s`."""
        async with asyncio.timeout(within_s):
            await self._connected.wait()

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    async def stop_generating(self) -> None:
        """Stop producing new messages (the link keeps sending and receiving acks)."""
        if self._generator is not None:
            self._generator.cancel()
            await asyncio.gather(self._generator, return_exceptions=True)
            self._generator = None

    def next_seq(self, stream: Stream) -> int:
        """The seq the next message of `stream` will carry in this boot (= how many were generated)."""
        return self._seq[stream]

    def set_ecg_model(self, model: EcgModel) -> None:
        """Change the heart (rate, ST vector, noise) from the next beat; the monitor's HR follows the new rate."""
        self.ecg.set_model(model)
        self.monitor.hr_baseline = model.heart_rate_bpm

    def record_event(self, kind: EventKind, detail: dict[str, str | int | float | bool] | None = None) -> DeviceEvent:
        """Record a crew or device event (e.g. a chief complaint) as the tablet would; it is sent like any other."""
        event = self._event(kind, detail or {})
        self._record(event)
        return event

    def play(self, name: str, *, time_scale: float | None = None) -> None:
        """Play the built-in scenario `name` from the device's next second (see firmware_sim._scenario).

        The unit is then on scene: the drive there is skipped (its status changes are still sent, ending with
        `on_scene`), patient contact is made and the timeline runs at `time_scale` (default: the config's mix's, else
        1). A scenario already running is abandoned without a transfer of care. ScenarioError for an unknown name.
        """
        mix = self.config.scenarios
        scale = time_scale if time_scale is not None else mix.time_scale if mix is not None else 1.0
        if not scale > 0 or not math.isfinite(scale):
            raise ScenarioError(f"time_scale must be a positive number, not {scale!r}")
        self._play_request = (scenario(name), scale)

    def fast_forward(self, seconds: int) -> list[DeviceMessage]:
        """Simulate `seconds` of the unit's life at once — movement, crew events, numerics, not the ECG stream —
        and record it like any other message; returns what was recorded. Timestamps stay the real clock, so the
        seconds skipped all carry about now. For tests that should not wait for a drive or a scenario."""
        if self.outbox is None:
            raise DeviceError(f"device {self.unit} is not running")
        recorded: list[DeviceMessage] = []
        for _ in range(seconds):
            messages = self._second()
            self._record(*messages)
            recorded += messages
        return recorded

    # -- generation -------------------------------------------------------------------------------------------

    def _now_us(self) -> int:
        return time.time_ns() // 1000 + round(self.clock_skew_s * 1_000_000)

    def _next_seq(self, stream: Stream) -> int:
        seq = self._seq[stream]
        self._seq[stream] = seq + 1
        return seq

    def _event(self, kind: EventKind, detail: dict[str, str | int | float | bool]) -> DeviceEvent:
        return DeviceEvent(self.unit, self.boot, self._next_seq(Stream.EVENT), self._now_us(), kind, detail)

    def _record(self, *messages: DeviceMessage) -> None:
        """Outbox first (committed), then hand to the link task; declare whatever the outbox gave up."""
        assert self.outbox is not None
        pending = [Pending(m.stream, m.boot, m.seq, encode_device_message(m)) for m in messages]
        drops = self.outbox.put(pending)
        if drops:
            notices = [self._drop_notice(d) for d in drops]
            # Notices are put without shedding: shedding for them would give up more rows, needing more notices.
            notice_rows = [Pending(n.stream, n.boot, n.seq, encode_device_message(n)) for n in notices]
            self.outbox.put(notice_rows, shed=False)
            pending += notice_rows
            self._write_ledger(self.ledger.record_drop(d) for d in drops)
            if not self._outbox_full:
                self._outbox_full = True
                log.warning(
                    "%s: outbox full (%d rows), giving up the oldest waveform first", self.unit, self.outbox.max_rows
                )
            log.debug("%s: gave up %s", self.unit, drops)
        self._empty.clear()
        for item in pending:
            try:
                self._send_queue.put_nowait(item)
            except asyncio.QueueFull:
                self._behind = True
                break

    def _drop_notice(self, drop: DropRange) -> DeviceEvent:
        detail: dict[str, str | int | float | bool] = {
            "stream": drop.stream.value,
            "of_boot": drop.boot,
            "first_seq": drop.first_seq,
            "last_seq": drop.last_seq,
            "reason": "outbox_full",
        }
        return self._event(EventKind.OUTBOX_DROP, detail)

    def _write_ledger(self, lines: Iterable[dict[str, object]]) -> None:
        if self._ledger_file is None:
            return
        # One write per call and a flush, so a test reading the file after the process ends sees every line.
        self._ledger_file.write("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
        self._ledger_file.flush()
        if self._ledger_file.tell() > self.config.ledger_max_bytes:
            self._ledger_file.close()
            self._ledger_path.replace(self._ledger_path.with_name(self._ledger_path.name + ".1"))
            self._ledger_file = self._ledger_path.open("a", encoding="utf-8")

    async def _generate_forever(self) -> None:
        frame_n = round(ECG_FS * ECG_FRAME_S)
        # The ECG clock: sample k was acquired at start + k/fs on the device clock; a frame goes out once its last
        # sample is in, so ts advances by exactly n/fs from frame to frame.
        start_true_us = time.time_ns() // 1000
        start_mono = time.monotonic()
        frame = 0
        while True:
            await asyncio.sleep(max(0.0, start_mono + (frame + 1) * ECG_FRAME_S - time.monotonic()))
            first_sample = self.ecg.samples_emitted
            ts = start_true_us + round(first_sample * 1_000_000 / ECG_FS) + round(self.clock_skew_s * 1_000_000)
            data = self.ecg.frame_bytes(frame_n)
            seq = self._next_seq(Stream.ECG)
            ecg = EcgFrame(self.unit, self.boot, seq, ts, ECG_FS, self.ecg.leads, self.ecg.lsb_uv, frame_n, data)
            messages: list[DeviceMessage] = [ecg]
            if frame % FRAMES_PER_SECOND == 0:
                messages += self._second()
            self._record(*messages)
            frame += 1

    def _second(self) -> list[DeviceMessage]:
        """One second of the unit's life: movement, status changes, the scenario's crew events, a GPS fix and the
        monitor's numerics."""
        ts = self._now_us()
        out: list[DeviceMessage] = []
        begin = self._play_request
        if begin is not None:
            self._play_request = None
            self._end_scenario()  # abandoned: the hook starts a new call whatever the unit was doing
            statuses = [] if self.drive.status is UnitStatus.ON_SCENE else self._skip_until(UnitStatus.ON_SCENE)
        else:
            statuses = self._move()
        for status in statuses:
            out.append(self._event(EventKind.STATUS, {"status": status.value}))
            if status is UnitStatus.ON_SCENE and begin is None:
                begin = self._next_scenario()
                if begin is None:
                    out.append(self._event(EventKind.PATIENT_CONTACT, {}))  # a stable patient, no scenario
            elif status is UnitStatus.AVAILABLE:
                self._end_scenario()
        if begin is not None:
            out += self._begin_scenario(*begin)
        elif self.scenario_run is not None:
            out += self._act_on(self.scenario_run.advance(1.0, self.drive.status))
        fix = self.drive.fix()
        acc = round(self._rng.uniform(2.0, 6.0), 1)
        gps_seq = self._next_seq(Stream.GPS)
        out.append(GpsFix(self.unit, self.boot, gps_seq, ts, fix.lat, fix.lon, fix.speed, fix.heading, acc))
        signs = self.monitor.second(ts)
        model = self.ecg.model
        # The ECG follows the monitor's heart rate in whole beats per minute, so the trace and the number agree.
        if abs(self.monitor.heart_rate() - model.heart_rate_bpm) >= 1.0:
            self.ecg.set_model(dataclasses.replace(model, heart_rate_bpm=float(round(self.monitor.heart_rate()))))
        vitals = Vitals(
            self.unit,
            self.boot,
            self._next_seq(Stream.VITALS),
            ts,
            hr=float(round(self.ecg.model.heart_rate_bpm)),
            sbp=signs.sbp,
            dbp=signs.dbp,
            map=signs.map,
            spo2=signs.spo2,
            rr=signs.rr,
            temp=signs.temp,
            etco2=signs.etco2,
            nibp_ts=signs.nibp_ts,
        )
        out.append(vitals)
        return out

    def _move(self) -> list[UnitStatus]:
        """Drive one second, unless the crew holds the unit on scene or at the hospital; then leave at once when
        they are done (the drive's own dwell there is skipped: the scenario decides how long the crew stays)."""
        run, status = self.scenario_run, self.drive.status
        if run is not None and status in (UnitStatus.ON_SCENE, UnitStatus.AT_DESTINATION):
            return [] if run.holds(status) else self._skip_until(None)
        changed = self.drive.step(1.0)
        return [] if changed is None else [changed]

    def _skip_until(self, wanted: UnitStatus | None) -> list[UnitStatus]:
        """Step the drive a second at a time, at once, until it reaches `wanted` (None: until its status changes);
        returns every status it passed, in order."""
        passed: list[UnitStatus] = []
        for _ in range(_SKIP_MAX_S):
            changed = self.drive.step(1.0)
            if changed is not None:
                passed.append(changed)
                if wanted is None or changed is wanted:
                    return passed
        raise DeviceError(f"{self.unit}: the drive did not reach {wanted or 'a new status'} in {_SKIP_MAX_S} s")

    def _next_scenario(self) -> tuple[Scenario, float] | None:
        mix = self.config.scenarios
        if mix is None:
            return None
        picked = mix.pick(self._scenario_rng, self._calls)
        self._calls += 1
        return picked, mix.time_scale

    def _begin_scenario(self, picked: Scenario, time_scale: float) -> list[DeviceMessage]:
        """Patient contact now, here; the destination is set before the unit can leave the scene."""
        run = ScenarioRun(picked, contact_us=self._now_us(), scene=self.drive.position, time_scale=time_scale)
        self.scenario_run = run
        self.drive.destination = run.destination.position
        self.monitor.nibp_interval_s = run.nibp_interval_s
        self.monitor.measure_nibp_now()  # the crew cycles the cuff at first contact
        log.debug("%s: scenario %s, destination %s", self.unit, picked.name, run.destination.code)
        return self._act_on(run.start())

    def _end_scenario(self) -> None:
        """The patient has left (or the call was abandoned): the monitor and the heart are a stable adult's again."""
        if self.scenario_run is None:
            return
        self.scenario_run = None
        stable = self.config.ecg_model
        self.ecg.set_model(
            dataclasses.replace(self.ecg.model, heart_rate_bpm=stable.heart_rate_bpm, st_vector_mv=stable.st_vector_mv)
        )
        self.monitor.new_patient(stable.heart_rate_bpm)
        self.monitor.nibp_interval_s = self._stable_nibp_interval_s

    def _act_on(self, cues: list[Cue]) -> list[DeviceMessage]:
        events: list[DeviceMessage] = []
        for cue in cues:
            if isinstance(cue, RecordEvent):
                events.append(self._event(cue.kind, dict(cue.detail)))
            elif isinstance(cue, DriftVitals):
                self.monitor.drift_to(cue.targets, cue.over_s)
            elif isinstance(cue, ChangeEcg):
                # The rate stays the monitor's: the ECG follows its heart rate every second.
                self.ecg.set_model(dataclasses.replace(self.ecg.model, st_vector_mv=cue.st_vector_mv))
        return events

    # -- link -------------------------------------------------------------------------------------------------

    async def _link_forever(self) -> None:
        attempt = 0
        while True:
            await self._online.wait()
            try:
                async with contextlib.AsyncExitStack() as stack:
                    client = mqtt_client(self._endpoint, identifier=f"device-{self.unit}", keepalive=15)
                    # A replay publishes a whole window at once; aiomqtt warns above this many pending calls.
                    client.pending_calls_threshold = 2 * _PUBLISH_WINDOW
                    async with asyncio.timeout(NETWORK_TIMEOUT_S):
                        await stack.enter_async_context(client)
                        await client.subscribe(device_topic(self.unit, Stream.ACK), qos=1)
                    attempt = 0
                    self.connects += 1
                    self._connected.set()
                    log.debug("%s: connected (%d rows to replay)", self.unit, self.pending())
                    async with asyncio.TaskGroup() as link:
                        link.create_task(self._read_acks(client), name=f"sim.device[{self.unit}].acks")
                        link.create_task(self._send(client), name=f"sim.device[{self.unit}].send")
            except* (aiomqtt.MqttError, TimeoutError) as group:
                log.debug("%s: link down: %r", self.unit, group.exceptions[0])
            finally:
                self._connected.clear()
            attempt += 1
            await asyncio.sleep(
                backoff_delay(attempt, self.config.backoff_base_s, self.config.backoff_cap_s, self._rng)
            )

    async def _send(self, client: aiomqtt.Client) -> None:
        assert self.outbox is not None
        await self._catch_up(client, everything=True)
        retransmit_every = self.config.retransmit_after_s
        retransmit_at = time.monotonic() + retransmit_every
        while True:
            if self._behind:
                await self._catch_up(client, everything=False)
            try:
                async with asyncio.timeout(max(0.0, retransmit_at - time.monotonic())):
                    item = await self._send_queue.get()
            except TimeoutError:
                # Unacknowledged for too long while connected (the center restarted, or the broker dropped it).
                waits = {s: retransmit_after(retransmit_every, self.outbox.ack_delay_s(s)) for s in DEVICE_STREAMS}
                stale = self.outbox.sent_before(waits)
                if stale:
                    log.debug("%s: retransmitting %d unacknowledged messages", self.unit, len(stale))
                    await self._publish(client, stale)
                retransmit_at = time.monotonic() + retransmit_every / 3
                continue
            batch = [item]
            while not self._send_queue.empty() and len(batch) < _PUBLISH_WINDOW:
                batch.append(self._send_queue.get_nowait())
            await self._publish(client, batch)

    async def _catch_up(self, client: aiomqtt.Client, *, everything: bool) -> None:
        """Publish outbox rows in (stream, boot, seq) order: all of them after a connect, else the never-sent ones.

        Rows of this boot at or past the seqs counted now are left to the send queue, which holds them in order,
        so nothing goes out twice and nothing is skipped.
        """
        assert self.outbox is not None
        self._behind = False
        while not self._send_queue.empty():
            self._send_queue.get_nowait()
        cutoff = {stream.value: seq for stream, seq in self._seq.items()}
        page_of = self.outbox.all_pending if everything else self.outbox.unsent
        after: tuple[str, int, int] | None = None
        while page := page_of(after, _PUBLISH_WINDOW * 10):
            todo = [p for p in page if p.boot != self.boot or p.seq < cutoff[p.stream.value]]
            for start in range(0, len(todo), _PUBLISH_WINDOW):
                await self._publish(client, todo[start : start + _PUBLISH_WINDOW])
            last = page[-1]
            after = (last.stream.value, last.boot, last.seq)

    async def _publish(self, client: aiomqtt.Client, items: list[Pending]) -> None:
        assert self.outbox is not None
        # aiomqtt's own timeout off: the deadline here is the one that counts.
        async with asyncio.timeout(NETWORK_TIMEOUT_S):
            if len(items) == 1:  # the steady state: one frame at a time, not worth a task
                await client.publish(
                    device_topic(self.unit, items[0].stream), items[0].payload, qos=1, timeout=math.inf
                )
            else:
                async with asyncio.TaskGroup() as window:
                    for item in items:
                        topic = device_topic(self.unit, item.stream)
                        window.create_task(client.publish(topic, item.payload, qos=1, timeout=math.inf))
        self.outbox.mark_sent(items)
        self.published += len(items)

    async def _read_acks(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                acks = decode_acks(payload)
            except RejectedMessage as exc:
                log.warning("%s: malformed ack ignored: %s", self.unit, exc)
                continue
            for ack in acks:
                self._settle(ack)

    def _settle(self, ack: Ack) -> None:
        assert self.outbox is not None
        settled = self.outbox.settle(ack.stream, ack.boot, ack.upto, ack.held)
        line = self.ledger.record_ack(ack, settled)
        if line is not None:
            self._write_ledger([line])
            if line["rejected"]:
                # The center found our own message invalid: a firmware bug, worth a line each time.
                log.warning("%s: center rejected %s boot %d seqs %s", self.unit, ack.stream, ack.boot, line["rejected"])
        if len(self.outbox) < self.outbox.max_rows // 2:
            self._outbox_full = False  # the shedding episode is over; the next one is logged again
        if not len(self.outbox):
            self._empty.set()
