"""The simulated device's link against a real mosquitto, with the test as the center: order, acks, replay, boots."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import firmware_sim._device
from emergency.codec import decode_device_message, encode_acks
from emergency.mqtt import mqtt_client
from emergency.protocol import (
    Ack,
    DeviceEvent,
    DeviceMessage,
    EcgFrame,
    EventKind,
    GpsFix,
    OutboxDrop,
    Stream,
    UnitStatus,
    Vitals,
    device_topic,
)
from emergency.settings import MqttEndpoint
from firmware_sim import Device, DeviceConfig, Drive, Fleet, Ledger, VitalsMonitor, backoff_delay
from firmware_sim._route import CITY_CENTRE, bearing_deg, distance_m

Key = tuple[str, int, int]
_center_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class Received:
    key: Key
    payload: bytes
    message: DeviceMessage


class FakeCenter:
    """The center's side of one unit, reduced to what these tests need: read its streams, send acks by hand."""

    def __init__(self, endpoint: MqttEndpoint, unit: str) -> None:
        self.unit = unit
        self.received: list[Received] = []
        self._client = mqtt_client(endpoint, identifier=f"fake-center-{unit}-{next(_center_ids)}")
        self._changed = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> FakeCenter:
        await self._stack.enter_async_context(self._client)
        await self._client.subscribe(f"ems/v1/{self.unit}/+", qos=1)
        reader = asyncio.create_task(self._read(), name=f"fake-center[{self.unit}]")
        self._stack.callback(reader.cancel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _read(self) -> None:
        async for m in self._client.messages:
            if m.topic.matches(device_topic(self.unit, Stream.ACK)):
                continue
            payload = m.payload if isinstance(m.payload, bytes) else b""
            message = decode_device_message(str(m.topic), payload)  # the codec is the judge
            self.received.append(Received((message.stream.value, message.boot, message.seq), payload, message))
            self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], within_s: float = 20) -> None:
        async with asyncio.timeout(within_s):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def ack(self, stream: Stream, boot: int, upto: int, rejected: tuple[int, ...] = ()) -> None:
        await self._client.publish(
            device_topic(self.unit, Stream.ACK), encode_acks([Ack(boot, stream, upto, rejected)]), qos=1
        )

    async def ack_everything_received(self) -> None:
        """Ack, per (stream, boot), up to the highest seq received."""
        highest: dict[tuple[str, int], int] = {}
        for r in self.received:
            stream, boot, seq = r.key
            highest[(stream, boot)] = max(seq, highest.get((stream, boot), -1))
        for (stream, boot), upto in highest.items():
            await self.ack(Stream(stream), boot, upto)

    def keys(self, stream: Stream | None = None) -> list[Key]:
        return [r.key for r in self.received if stream is None or r.key[0] == stream.value]

    def count(self, stream: Stream) -> int:
        return len(self.keys(stream))


@contextlib.asynccontextmanager
async def unit_and_center(
    make_unit: Callable[[], Any], gateway_endpoint: MqttEndpoint
) -> AsyncIterator[tuple[DeviceConfig, MqttEndpoint, FakeCenter]]:
    unit, endpoint = await make_unit()
    config = DeviceConfig(unit, endpoint.password.get_secret_value(), backoff_base_s=0.05, backoff_cap_s=0.5)
    async with FakeCenter(gateway_endpoint, unit) as center:
        yield config, endpoint, center


async def eventually(condition: Callable[[], bool], within_s: float = 10) -> None:
    """Poll device-side state that has no event of its own to wait on."""
    async with asyncio.timeout(within_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


def seqs_per_stream(keys: list[Key]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for stream, _boot, seq in keys:
        out.setdefault(stream, []).append(seq)
    return out


async def test_messages_arrive_in_order_with_consecutive_seqs_from_zero(
    make_unit: Callable[[], Any], gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """Each stream arrives in seq order 0, 1, 2, … without gaps or repeats; the first event is device_start."""
    async with unit_and_center(make_unit, gateway_endpoint) as (config, endpoint, center):
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            await center.wait_for(lambda: center.count(Stream.ECG) >= 12 and center.count(Stream.GPS) >= 3)
            boot = device.boot
        for stream, seqs in seqs_per_stream(center.keys()).items():
            assert seqs == list(range(len(seqs))), stream
        assert {r.key[1] for r in center.received} == {boot}
        first_event = center.received[[r.key[0] for r in center.received].index("event")].message
        assert isinstance(first_event, DeviceEvent)
        assert (first_event.seq, first_event.kind) == (0, EventKind.DEVICE_START)
        assert first_event.detail["firmware"] == config.firmware
        frames = [r.message for r in center.received if isinstance(r.message, EcgFrame)]
        # ts is the first sample's time: consecutive frames are exactly n/fs apart, and close to the wall clock.
        assert all(b.ts - a.ts == 250_000 for a, b in itertools.pairwise(frames))
        assert abs(frames[-1].ts - time.time_ns() // 1000) < 5_000_000
        assert all(f.n == 125 and f.fs == 500.0 and len(f.leads) == 12 for f in frames)
        vitals = [r.message for r in center.received if isinstance(r.message, Vitals)]
        assert vitals[0].sbp is not None and vitals[0].nibp_ts is not None  # a cuff reading at start
        assert all(v.hr is not None and 30 <= v.hr <= 200 and v.spo2 is not None for v in vitals)
        fixes = [r.message for r in center.received if isinstance(r.message, GpsFix)]
        lat, lon = CITY_CENTRE  # the demo city's streets
        assert all(abs(f.lat - lat) < 0.05 and abs(f.lon - lon) < 0.05 and f.acc for f in fixes)


async def test_acked_rows_leave_the_outbox_and_enter_the_ledger(
    make_unit: Callable[[], Any], gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """An ack removes exactly its (boot, stream) rows with seq ≤ upto and records them as stored or rejected."""
    async with unit_and_center(make_unit, gateway_endpoint) as (config, endpoint, center):
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            await center.wait_for(lambda: center.count(Stream.ECG) >= 8)
            await device.stop_generating()
            assert device.outbox is not None
            before = set(device.outbox.keys())
            await center.ack(Stream.ECG, device.boot, 5, rejected=(2,))
            await center.ack(Stream.GPS, device.boot + 7, 100)  # another boot: settles nothing
            await center.ack(Stream.EVENT, device.boot, 0)
            expected_gone = {("ecg", device.boot, s) for s in range(6)} | {("event", device.boot, 0)}
            await eventually(lambda: set(device.outbox.keys()) == before - expected_gone)  # type: ignore[union-attr]
            assert device.ledger.acked_stored == {("ecg", device.boot, s) for s in (0, 1, 3, 4, 5)} | {
                ("event", device.boot, 0)
            }
            assert device.ledger.rejected == {("ecg", device.boot, 2)}
            assert device.pending() == len(before) - 7
            await center.ack_everything_received()
            await device.drained(10)
            assert device.pending() == 0
            in_memory = device.ledger
        on_disk = Ledger.load(tmp_path / config.unit / "ledger.jsonl")
        assert on_disk.acked_stored == in_memory.acked_stored
        assert on_disk.rejected == in_memory.rejected
        assert on_disk.settled() == set(center.keys())


async def test_unacked_messages_are_resent_in_order_after_a_forced_disconnect(
    make_unit: Callable[[], Any], gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """After the network is cut and restored, everything unacked is resent in (stream, boot, seq) order first."""
    async with unit_and_center(make_unit, gateway_endpoint) as (config, endpoint, center):
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            await center.wait_for(lambda: center.count(Stream.ECG) >= 6)
            async with device.offline():
                await asyncio.sleep(1.0)
                assert not device.is_connected
                assert device.outbox is not None
                unacked = device.outbox.keys()
                seen = len(center.received)
            assert len(unacked) >= 10
            await center.wait_for(lambda: set(unacked) <= set(center.keys()[seen:]))
            replay = center.keys()[seen:]
            # The replay comes first and in key order; what follows is new data, in seq order per stream.
            assert replay[: len(unacked)] == sorted(unacked)
            for stream, seqs in seqs_per_stream(replay).items():
                assert seqs == sorted(set(seqs)), stream
            # Resent payloads are byte-identical to the first transmission.
            first = {r.key: r.payload for r in center.received[:seen]}
            assert all(first[r.key] == r.payload for r in center.received[seen:] if r.key in first)
            await center.ack_everything_received()
            await device.stop_generating()
            await center.wait_for(lambda: all(k in set(center.keys()) for k in device.outbox.keys()))  # type: ignore[union-attr]
            await center.ack_everything_received()
            await device.drained(10)
            assert device.connects == 2


async def test_device_reconnects_by_itself_when_the_broker_drops_it(
    make_unit: Callable[[], Any], gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """When the broker drops the device's session (a client takes over its id), it reconnects and replays."""
    async with unit_and_center(make_unit, gateway_endpoint) as (config, endpoint, center):
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            await device.connected()
            await center.wait_for(lambda: center.count(Stream.ECG) >= 4)
            first = device.connects
            # Counted before the takeover: the replay can arrive before the test sees the reconnect.
            seen = len(center.received)
            async with mqtt_client(endpoint, identifier=f"device-{config.unit}"):
                # Wait for the reconnect itself: on a busy machine the disconnected moment can be too short to see.
                await eventually(lambda: device.connects > first or not device.is_connected, 30)
            await device.connected(30)
            await eventually(lambda: device.connects > first, 30)
            await center.wait_for(lambda: ("ecg", device.boot, 0) in center.keys()[seen:])


async def test_boot_increments_across_restarts_and_old_rows_keep_their_boot(
    make_unit: Callable[[], Any], gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """Each start counts one more boot with seqs from 0; rows left from the last boot are resent unchanged."""
    async with unit_and_center(make_unit, gateway_endpoint) as (config, endpoint, center):
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            await center.wait_for(lambda: center.count(Stream.ECG) >= 4)
            first_boot = device.boot
            await device.stop_generating()
            assert device.outbox is not None
            left_over = device.outbox.keys()
        first_payloads = {r.key: r.payload for r in center.received}
        assert (tmp_path / config.unit / "boot").read_text().strip() == str(first_boot)
        seen = len(center.received)
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            assert device.boot == first_boot + 1
            await center.wait_for(lambda: set(left_over) <= set(center.keys()[seen:]))
            await center.wait_for(lambda: ("event", device.boot, 0) in center.keys())
            again = [r for r in center.received[seen:] if r.key[1] == first_boot]
            assert all(r.payload == first_payloads[r.key] for r in again)
            new_start = next(r.message for r in center.received if r.key == ("event", device.boot, 0))
            assert isinstance(new_start, DeviceEvent) and new_start.kind is EventKind.DEVICE_START
            await center.ack_everything_received()
            await eventually(lambda: all(boot != first_boot for _, boot, _ in device.outbox.keys()))  # type: ignore[union-attr]
            assert {k for k in device.ledger.acked_stored if k[1] == first_boot} == set(left_over)
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            assert device.boot == first_boot + 2


async def test_full_outbox_gives_up_oldest_ecg_and_declares_every_range(
    make_unit: Callable[[], Any], gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """Offline with a small outbox, only ECG is given up, and outbox_drop events declare exactly what is missing."""
    unit, endpoint = await make_unit()
    config = DeviceConfig(unit, endpoint.password.get_secret_value(), outbox_max_rows=40, backoff_base_s=0.05)
    async with FakeCenter(gateway_endpoint, unit) as center:
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            device.go_offline()
            await eventually(lambda: len(device.ledger.dropped) >= 3, 30)
            await device.stop_generating()
            device.go_online()
            await center.wait_for(lambda: set(device.outbox.keys()) <= set(center.keys()))  # type: ignore[union-attr]
            await center.ack_everything_received()
            await device.drained(10)
            generated = {s: device.next_seq(s) for s in Stream if s is not Stream.ACK}
            boot = device.boot
    drops = [
        OutboxDrop.from_event(r.message)
        for r in center.received
        if isinstance(r.message, DeviceEvent) and r.message.kind is EventKind.OUTBOX_DROP
    ]
    assert drops and all(d.stream is Stream.ECG and d.of_boot == boot and d.reason == "outbox_full" for d in drops)
    declared = [seq for d in drops for seq in range(d.first_seq, d.last_seq + 1)]
    received_ecg = {seq for _, _, seq in center.keys(Stream.ECG)}
    assert len(declared) == len(set(declared))
    assert received_ecg.isdisjoint(declared)
    assert received_ecg | set(declared) == set(range(generated[Stream.ECG]))
    for stream in (Stream.VITALS, Stream.GPS, Stream.EVENT):
        assert {seq for _, _, seq in center.keys(stream)} == set(range(generated[stream])), stream


async def test_fleet_runs_devices_in_named_tasks_and_all_connect(
    make_unit: Callable[[], Any], gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """A fleet starts every device (staggered) in a task named sim.device[unit], and each one streams."""
    units = [await make_unit() for _ in range(3)]
    configs = [DeviceConfig(unit, ep.password.get_secret_value()) for unit, ep in units]
    endpoint = units[0][1]
    async with contextlib.AsyncExitStack() as stack:
        centers = [await stack.enter_async_context(FakeCenter(gateway_endpoint, unit)) for unit, _ in units]
        async with Fleet(configs, endpoint.host, endpoint.port, tmp_path) as fleet:
            names = {t.get_name() for t in asyncio.all_tasks()}
            assert {f"sim.device[{unit}]" for unit, _ in units} <= names
            assert [d.boot for d in fleet.devices] == [0, 0, 0]
            for center in centers:
                await center.wait_for(lambda c=center: c.count(Stream.ECG) >= 2)  # type: ignore[misc]
    assert not any(t.get_name().startswith("sim.device[") for t in asyncio.all_tasks())


def test_backoff_is_jittered_and_capped() -> None:
    """Reconnect delays are uniform in [0, min(cap, base·1.5^attempt)]: spread out, growing, never above the cap."""
    rng = random.Random(1)
    for attempt in (1, 3, 10, 10_000):
        delays = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(500)]
        bound = min(30.0, 1.5 ** min(attempt, 64))
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > 0.8 * bound and min(delays) < 0.2 * bound


async def test_device_unreachable_broker_keeps_buffering(tmp_path: Path) -> None:
    """With no broker at all the device keeps generating into its outbox and keeps retrying."""
    config = DeviceConfig("NOBROKER1", "x", backoff_base_s=0.05, backoff_cap_s=0.2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        async with Device(config, "127.0.0.1", port, tmp_path) as device:
            await asyncio.sleep(1.6)
            assert not device.is_connected
            assert device.pending() >= 2 + 6 + 2 + 2  # two boot events, ECG at 4/s, vitals and GPS at 1/s


async def test_an_overflowing_send_queue_loses_and_repeats_nothing(
    make_unit: Callable[[], Any], gateway_endpoint: MqttEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a send queue of one, the link catches up from the outbox: every stream still arrives once, in order."""
    monkeypatch.setattr(firmware_sim._device, "_SEND_QUEUE_MAX", 1)
    async with unit_and_center(make_unit, gateway_endpoint) as (config, endpoint, center):
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            await center.wait_for(lambda: center.count(Stream.VITALS) >= 3)
            await device.stop_generating()
            generated = {s: device.next_seq(s) for s in (Stream.ECG, Stream.VITALS, Stream.GPS, Stream.EVENT)}
            await center.wait_for(lambda: all(center.count(s) == n for s, n in generated.items()))
        for stream, seqs in seqs_per_stream(center.keys()).items():
            assert seqs == list(range(generated[Stream(stream)])), stream


async def test_unacknowledged_messages_are_retransmitted_while_connected(
    make_unit: Callable[[], Any], gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """A message left unacknowledged for retransmit_after_s on a live link is published again, byte-identical."""
    unit, endpoint = await make_unit()
    config = DeviceConfig(unit, endpoint.password.get_secret_value(), retransmit_after_s=1.0)
    async with FakeCenter(gateway_endpoint, unit) as center:
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            await center.wait_for(lambda: center.count(Stream.EVENT) >= 2)
            await device.stop_generating()
            start = ("event", device.boot, 0)
            await center.wait_for(lambda: center.keys().count(start) >= 2, within_s=10)
            copies = {r.payload for r in center.received if r.key == start}
            assert len(copies) == 1
            await center.ack_everything_received()
            await device.drained(10)


async def test_clock_skew_shifts_every_timestamp(
    make_unit: Callable[[], Any], gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """A device with clock_skew_s stamps every message that far from the true time, ECG included."""
    unit, endpoint = await make_unit()
    config = DeviceConfig(unit, endpoint.password.get_secret_value(), clock_skew_s=-3600.0)
    async with FakeCenter(gateway_endpoint, unit) as center:
        async with Device(config, endpoint.host, endpoint.port, tmp_path):
            await center.wait_for(lambda: center.count(Stream.ECG) >= 4 and center.count(Stream.GPS) >= 1)
        now_us = time.time_ns() // 1000
        for r in center.received:
            assert abs(now_us - 3600 * 1_000_000 - r.message.ts) < 10_000_000, r.key


def test_route_speed_and_heading_agree_with_the_movement() -> None:
    """Over three hours of duty cycle the unit moves at road speeds, in the direction it reports, within the city."""
    drive = Drive.start(21)
    statuses: list[UnitStatus] = []
    last = drive.position
    stopped_at_destination = 0
    for _ in range(3 * 3600):
        status = drive.step(1.0)
        if status is not None:
            statuses.append(status)
        fix = drive.fix()
        moved = distance_m(last, drive.position)
        assert 0 <= fix.speed <= 80 / 3.6 + 0.01
        assert moved <= fix.speed * 1.0 + 0.01
        if moved > 3:
            turn = abs((bearing_deg(last, drive.position) - fix.heading + 180) % 360 - 180)
            assert turn < 2.0
        if drive.status in (UnitStatus.ON_SCENE, UnitStatus.AT_DESTINATION):
            assert fix.speed == 0
            stopped_at_destination += 1
        assert distance_m(CITY_CENTRE, drive.position) < 15_000
        last = drive.position
    cycle = [UnitStatus.EN_ROUTE, UnitStatus.ON_SCENE, UnitStatus.TRANSPORTING, UnitStatus.AT_DESTINATION]
    assert statuses[:4] == cycle and statuses[4] is UnitStatus.AVAILABLE and statuses[5:9] == cycle
    assert stopped_at_destination > 0


def test_vitals_drift_plausibly_with_a_cuff_reading_every_three_minutes() -> None:
    """An hour of numerics stays physiological, HR follows its baseline, and the cuff reads every 180 s."""
    monitor = VitalsMonitor(seed=3, hr_baseline=90)
    readings = [monitor.second(1_795_000_000_000_000 + i * 1_000_000) for i in range(3600)]
    assert all(82 <= v.hr <= 98 for v in readings)
    assert all(88 <= v.spo2 <= 100 and 8 <= v.rr <= 30 and 35.5 <= v.temp <= 38.5 for v in readings)
    cuffed = [i for i, v in enumerate(readings) if v.sbp is not None]
    assert cuffed[0] == 0 and all(b - a == 180 for a, b in itertools.pairwise(cuffed))
    for i in cuffed:
        v = readings[i]
        assert v.dbp is not None and v.map is not None and v.sbp is not None
        assert v.dbp < v.map < v.sbp and v.nibp_ts == 1_795_000_000_000_000 + i * 1_000_000
    # Slow drift: consecutive seconds differ by little, but the hour is not flat.
    assert max(abs(a.spo2 - b.spo2) for a, b in itertools.pairwise(readings)) <= 2
    assert len({v.rr for v in readings}) > 3


async def test_ledger_file_is_bounded_by_rotation(
    make_unit: Callable[[], Any], gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """Past ledger_max_bytes the ledger file rotates to ledger.jsonl.1, so neither file grows past the bound."""
    unit, endpoint = await make_unit()
    config = DeviceConfig(unit, endpoint.password.get_secret_value(), ledger_max_bytes=300)
    async with FakeCenter(gateway_endpoint, unit) as center:
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            await center.wait_for(lambda: center.count(Stream.ECG) >= 12)
            await device.stop_generating()
            for upto in range(12):
                await center.ack(Stream.ECG, device.boot, upto)
            await eventually(lambda: device.ledger.stored_seqs(Stream.ECG, device.boot) == list(range(12)))
    current, previous = tmp_path / unit / "ledger.jsonl", tmp_path / unit / "ledger.jsonl.1"
    assert previous.exists()
    longest_line = max(len(line) for f in (current, previous) for line in f.read_bytes().splitlines(keepends=True))
    assert all(f.stat().st_size <= 300 + longest_line for f in (current, previous))
