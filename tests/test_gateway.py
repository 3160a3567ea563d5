"""The gateway on a real mosquitto and a real PostgreSQL: store once, ack after commit, reject and record, restart."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator

import aiohttp
import aiomqtt
import pytest_asyncio
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from ambulance_gateway import Gateway, lane_of
from ambulance_gateway._metrics import BatchHistogram
from ambulance_gateway._partition import fleet_filters
from emergency.bus import LinkCondition, LinkState, link_topic
from emergency.codec import decode_acks, encode_device_message
from emergency.mqtt import mqtt_client
from emergency.protocol import (
    Ack,
    DeviceEvent,
    DeviceMessage,
    EcgFrame,
    EventKind,
    GpsFix,
    Stream,
    Vitals,
    device_topic,
)
from emergency.settings import GatewaySettings, MqttEndpoint
from emergency.store import Store


def _now_us() -> int:
    return time.time_ns() // 1000


def ecg(unit: str, boot: int, seq: int) -> EcgFrame:
    return EcgFrame(unit, boot, seq, _now_us(), 500.0, ("I", "II"), 2.5, 125, bytes(range(250)) * 2)


class TestDevice:
    """A minimal protocol-v1 device for driving the gateway directly (the simulator has its own tests)."""

    __test__ = False

    def __init__(self, client: aiomqtt.Client, unit: str) -> None:
        self.client = client
        self.unit = unit
        # Per stream: a lane commits the clinical streams before the 12-lead (decision 48), so their acks may come
        # in either order, and waiting for one stream's must not pass over another's.
        self.acks: collections.defaultdict[Stream, asyncio.Queue[Ack]] = collections.defaultdict(asyncio.Queue)

    async def send(self, message: DeviceMessage) -> None:
        await self.client.publish(device_topic(self.unit, message.stream), encode_device_message(message), qos=1)

    async def send_raw(self, stream: str, payload: bytes) -> None:
        await self.client.publish(f"ems/v1/{self.unit}/{stream}", payload, qos=1)

    async def ack_covering(self, stream: Stream, boot: int, seq: int, within_s: float = 20) -> Ack:
        async with asyncio.timeout(within_s):
            while True:
                ack = await self.acks[stream].get()
                if ack.boot == boot and ack.upto >= seq:
                    return ack


@contextlib.asynccontextmanager
async def connected_device(unit: str, endpoint: MqttEndpoint) -> AsyncIterator[TestDevice]:
    async with mqtt_client(endpoint, identifier=f"test-{unit}") as client:
        device = TestDevice(client, unit)
        await client.subscribe(device_topic(unit, Stream.ACK), qos=1)

        async def read_acks() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                for ack in decode_acks(message.payload):
                    device.acks[ack.stream].put_nowait(ack)

        reader = asyncio.create_task(read_acks(), name=f"test.acks[{unit}]")
        try:
            yield device
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def _gateway_settings(**overrides: object) -> GatewaySettings:
    base: dict[str, object] = {
        "http_port": 0,
        "batch_max_delay_s": 0.02,
        "silence_after_s": 1.5,
        "monitor_interval_s": 0.2,
        "gap_open_after_s": 1.0,
    }
    base.update(overrides)
    return GatewaySettings(client_id=f"gw-test-{time.monotonic_ns()}", **base)  # type: ignore[arg-type]


@pytest_asyncio.fixture(loop_scope="session")
async def store(postgres) -> AsyncIterator[Store]:  # type: ignore[no-untyped-def]
    async with Store.open(postgres.dsn) as store:
        yield store


async def _count(store: Store, table: str, unit: str) -> int:
    value: int = await store.pool.fetchval(f"SELECT count(*) FROM {table} WHERE unit = $1", unit)
    return value


async def _pending_reaches(gateway: Gateway, count: int, within_s: float = 10) -> None:
    """Until the gateway's `/healthz` says `count` messages are taken and waiting for their commit."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(within_s):
        while True:
            async with http.get(gateway.health_url) as response:
                if (await response.json())["pending_messages"] == count:
                    return
            await asyncio.sleep(0.05)


async def test_messages_are_stored_once_and_acknowledged_after_commit(store, gateway_endpoint, make_unit) -> None:
    """Every stream's messages are committed exactly once and then acknowledged up to the last seq."""
    unit, endpoint = await make_unit()
    async with Gateway(_gateway_settings(), gateway_endpoint, store), connected_device(unit, endpoint) as device:
        for seq in range(10):
            await device.send(ecg(unit, 1, seq))
        await device.send(Vitals(unit, 1, 0, _now_us(), hr=88.0, spo2=95.0))
        await device.send(GpsFix(unit, 1, 0, _now_us(), 31.23, 121.47, speed=10.0))
        await device.send(DeviceEvent(unit, 1, 0, _now_us(), EventKind.STATUS, {"status": "en_route"}))
        ack = await device.ack_covering(Stream.ECG, 1, 9)
        assert ack.rejected == ()
        for stream in (Stream.VITALS, Stream.GPS, Stream.EVENT):
            await device.ack_covering(stream, 1, 0)
        assert await _count(store, "ecg_frames", unit) == 10
        assert await _count(store, "vitals", unit) == 1
        assert await _count(store, "gps_fixes", unit) == 1
        assert await _count(store, "device_events", unit) == 1
        raw = await store.pool.fetchval("SELECT data FROM ecg_frames WHERE unit = $1 AND seq = 3", unit)
        assert raw == bytes(range(250)) * 2


async def test_retransmissions_are_stored_once_and_answered_again(store, gateway_endpoint, make_unit) -> None:
    """A replayed message is not stored twice, and the gateway acknowledges it again."""
    unit, endpoint = await make_unit()
    frames = [ecg(unit, 1, seq) for seq in range(5)]
    async with (
        Gateway(_gateway_settings(), gateway_endpoint, store) as gateway,
        connected_device(unit, endpoint) as device,
    ):
        for frame in frames:
            await device.send(frame)
        await device.ack_covering(Stream.ECG, 1, 4)
        for frame in frames:
            await device.send(frame)
        again = await device.ack_covering(Stream.ECG, 1, 4)
        assert again.upto == 4
        assert await _count(store, "ecg_frames", unit) == 5
        duplicates = gateway.metrics.duplicates.labels("ecg")._value.get()
        assert duplicates >= 5


async def test_invalid_message_is_rejected_recorded_and_named_in_the_ack(store, gateway_endpoint, make_unit) -> None:
    """A message failing validation is recorded, listed as rejected, and later messages are still acknowledged."""
    unit, endpoint = await make_unit()
    bad = EcgFrame(unit, 1, 1, _now_us(), 500.0, ("I", "II"), 2.5, 125, b"\x00" * 10)  # wrong data length
    async with Gateway(_gateway_settings(), gateway_endpoint, store), connected_device(unit, endpoint) as device:
        await device.send(ecg(unit, 1, 0))
        await device.send(bad)
        await device.send_raw("ecg", b"\xc1 not msgpack at all")
        await device.send(ecg(unit, 1, 2))
        ack = await device.ack_covering(Stream.ECG, 1, 2)
        assert ack.rejected == (1,)
        assert await _count(store, "ecg_frames", unit) == 2
        reasons = [
            r["reason"]
            for r in await store.pool.fetch("SELECT reason FROM rejected_messages WHERE unit = $1 ORDER BY id", unit)
        ]
        assert any("expected 2*2*125" in r for r in reasons)
        assert any("not a msgpack document" in r for r in reasons)


async def test_replayed_rejection_is_never_reported_as_stored(store, gateway_endpoint, make_unit) -> None:
    """When a device replays a range that contained a rejected message, the new ack lists it as rejected again."""
    unit, endpoint = await make_unit()
    bad = Vitals(unit, 1, 1, _now_us(), hr=999.0)
    good = [Vitals(unit, 1, s, _now_us(), hr=70.0) for s in (0, 2)]
    async with Gateway(_gateway_settings(), gateway_endpoint, store), connected_device(unit, endpoint) as device:
        for message in (good[0], bad, good[1]):
            await device.send(message)
        await device.ack_covering(Stream.VITALS, 1, 2)
        for message in (good[0], bad, good[1]):
            await device.send(message)
        replay_ack = await device.ack_covering(Stream.VITALS, 1, 2)
        assert 1 in replay_ack.rejected
        assert await _count(store, "rejected_messages", unit) == 1


async def test_restarted_gateway_continues_from_the_persisted_watermark(store, gateway_endpoint, make_unit) -> None:
    """Messages published while the gateway is down are stored after its restart and acked past the old watermark."""
    unit, endpoint = await make_unit()
    settings = _gateway_settings()
    async with connected_device(unit, endpoint) as device:
        async with Gateway(settings, gateway_endpoint, store):
            for seq in range(3):
                await device.send(ecg(unit, 7, seq))
            await device.ack_covering(Stream.ECG, 7, 2)
        for seq in range(3, 6):  # the broker queues these for the gateway's persistent session
            await device.send(ecg(unit, 7, seq))
        async with Gateway(settings, gateway_endpoint, store):
            ack = await device.ack_covering(Stream.ECG, 7, 5)
            assert ack.upto == 5
    assert await _count(store, "ecg_frames", unit) == 6


async def test_a_gateway_started_behind_the_saved_watermark_derives_it_from_the_store(
    store, gateway_endpoint, make_unit
) -> None:
    """Watermarks are saved every few seconds, not with each commit (decision 40). A gateway that starts where the
    saved watermark is behind what was acknowledged (here: none saved, as after a crash before the first save) moves
    it over the stored, rejected and declared-lost seqs. The device, which no longer holds what it was acked for,
    has its next message acknowledged."""
    unit, endpoint = await make_unit()
    settings = _gateway_settings(watermark_save_interval_s=3600)
    key = (unit, 7, Stream.ECG)
    bad = EcgFrame(unit, 7, 1, _now_us(), 500.0, ("I", "II"), 2.5, 125, b"\x00" * 10)
    drop = {"stream": "ecg", "of_boot": 7, "first_seq": 3, "last_seq": 4, "reason": "outbox_full"}
    async with connected_device(unit, endpoint) as device:
        async with Gateway(settings, gateway_endpoint, store):
            for message in (ecg(unit, 7, 0), bad, ecg(unit, 7, 2), ecg(unit, 7, 5)):
                await device.send(message)
            await device.send(DeviceEvent(unit, 7, 0, _now_us(), EventKind.OUTBOX_DROP, drop))
            ack = await device.ack_covering(Stream.ECG, 7, 5)
            assert (ack.upto, ack.rejected) == (5, (1,))
            assert await store.watermarks([key]) == {}  # not yet saved
        assert await store.watermarks([key]) == {key: 5}  # saved when the gateway stopped
        await store.pool.execute("DELETE FROM ack_watermarks WHERE unit = $1", unit)
        async with Gateway(settings, gateway_endpoint, store):
            await device.send(ecg(unit, 7, 6))
            ack = await device.ack_covering(Stream.ECG, 7, 6)
            assert (ack.upto, ack.rejected) == (6, ())
    assert await _count(store, "ecg_frames", unit) == 4


async def test_declared_outbox_loss_moves_the_watermark_and_is_recorded(store, gateway_endpoint, make_unit) -> None:
    """An outbox_drop event lets later seqs be acknowledged and records the lost range."""
    unit, endpoint = await make_unit()
    async with Gateway(_gateway_settings(), gateway_endpoint, store), connected_device(unit, endpoint) as device:
        await device.send(ecg(unit, 1, 0))
        await device.send(ecg(unit, 1, 5))
        drop = {"stream": "ecg", "of_boot": 1, "first_seq": 1, "last_seq": 4, "reason": "outbox_full"}
        await device.send(DeviceEvent(unit, 1, 0, _now_us(), EventKind.OUTBOX_DROP, drop))
        ack = await device.ack_covering(Stream.ECG, 1, 5)
        assert ack.upto == 5
        row = await store.pool.fetchrow(
            "SELECT first_seq, last_seq FROM link_events WHERE unit = $1 AND kind = 'data_loss'", unit
        )
        assert (row["first_seq"], row["last_seq"]) == (1, 4)


async def test_a_device_is_told_what_is_stored_above_a_missing_message(store, gateway_endpoint, make_unit) -> None:
    """With seq 1 missing, the gateway names what it holds above it (held ranges), so that the device resends seq 1
    alone; once it does, the watermark covers everything."""
    unit, endpoint = await make_unit()
    async with Gateway(_gateway_settings(), gateway_endpoint, store), connected_device(unit, endpoint) as device:
        for seq in (0, 2, 3, 5):
            await device.send(ecg(unit, 1, seq))
        await _ack_holding(device, upto=0, held=((2, 3), (5, 5)))
        await device.send(ecg(unit, 1, 1))
        await _ack_holding(device, upto=3, held=((5, 5),))
        await device.send(ecg(unit, 1, 4))
        assert (await device.ack_covering(Stream.ECG, 1, 5)).held == ()
        assert await _count(store, "ecg_frames", unit) == 6


async def _ack_holding(device: TestDevice, upto: int, held: tuple[tuple[int, int], ...]) -> None:
    async with asyncio.timeout(20):
        while (ack := await device.acks[Stream.ECG].get()).upto != upto or ack.held != held:
            pass


async def test_open_gap_and_silence_are_recorded(store, gateway_endpoint, make_unit) -> None:
    """A seq gap that stays open and a unit that goes quiet are both recorded as link events."""
    unit, endpoint = await make_unit()
    async with Gateway(_gateway_settings(), gateway_endpoint, store), connected_device(unit, endpoint) as device:
        await device.send(ecg(unit, 1, 0))
        await device.send(ecg(unit, 1, 3))
        await device.ack_covering(Stream.ECG, 1, 0)
        async with asyncio.timeout(20):
            while True:
                kinds = {
                    r["kind"] for r in await store.pool.fetch("SELECT kind FROM link_events WHERE unit = $1", unit)
                }
                if {"seq_gap", "silent"} <= kinds:
                    break
                await asyncio.sleep(0.2)
        gap = await store.pool.fetchrow(
            "SELECT first_seq, last_seq FROM link_events WHERE unit = $1 AND kind = 'seq_gap'", unit
        )
        assert (gap["first_seq"], gap["last_seq"]) == (1, 2)


async def test_the_bus_carries_a_units_link_state_and_no_telemetry(
    store, gateway_endpoint, console_endpoint, make_unit
) -> None:
    """The unit's link state is retained on the bus; its telemetry is not republished there: consoles read the
    devices' own topics (decision 45)."""
    unit, endpoint = await make_unit()
    async with mqtt_client(console_endpoint) as console:
        await console.subscribe("center/v1/#", qos=1)
        async with Gateway(_gateway_settings(), gateway_endpoint, store), connected_device(unit, endpoint) as device:
            await device.send(ecg(unit, 1, 0))
            await device.send(Vitals(unit, 1, 0, _now_us(), hr=80.0))
            await device.ack_covering(Stream.ECG, 1, 0)
            await device.ack_covering(Stream.VITALS, 1, 0)
            seen: list[tuple[str, bytes]] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.5):
                    async for message in console.messages:
                        if unit in message.topic.value.split("/"):
                            assert isinstance(message.payload, bytes)
                            seen.append((message.topic.value, message.payload))
    assert {topic for topic, _ in seen} == {link_topic(unit)}
    # Then silent, once the test's short silence threshold passes.
    assert LinkState.decode(seen[0][1]).condition is LinkCondition.LIVE


async def test_link_states_are_published_again_whenever_the_gateway_connects(
    store, gateway_endpoint, console_endpoint, make_unit
) -> None:
    """A broker restarted without its saved state has lost the retained link states (it saves only when it stops,
    decision 54): the gateway tells every unit's state again each time its session connects."""
    unit, endpoint = await make_unit()
    async with (
        Gateway(_gateway_settings(silence_after_s=600), gateway_endpoint, store) as gateway,
        connected_device(unit, endpoint) as device,
    ):
        await device.send(Vitals(unit, 1, 0, _now_us(), hr=80.0))
        await device.ack_covering(Stream.VITALS, 1, 0)
        async with mqtt_client(gateway_endpoint, identifier="test-forgetful-broker") as broker:
            await broker.publish(link_topic(unit), b"", qos=1, retain=True)  # the retained state is gone
        clinical = next(link for session, link in gateway._links.items() if session.name == "clinical")
        assert clinical._transport is not None
        clinical._transport.abort()  # the session's connection is lost: the gateway connects again
        async with mqtt_client(console_endpoint) as console, asyncio.timeout(20):
            await console.subscribe(link_topic(unit), qos=1)
            async for message in console.messages:
                assert isinstance(message.payload, bytes)
                if message.payload:
                    break
    assert LinkState.decode(message.payload).condition is LinkCondition.LIVE


async def test_metrics_and_health_endpoints(store, gateway_endpoint, make_unit) -> None:
    """/metrics exposes the counters and /healthz says ok while broker and database are reachable."""
    unit, endpoint = await make_unit()
    async with (
        Gateway(_gateway_settings(), gateway_endpoint, store) as gateway,
        connected_device(unit, endpoint) as device,
    ):
        await device.send(ecg(unit, 1, 0))
        await device.ack_covering(Stream.ECG, 1, 0)
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.metrics_url) as response:
                text = await response.text()
            async with http.get(gateway.health_url) as response:
                health = await response.json()
                status = response.status
    assert 'emergency_gateway_stored_total{stream="ecg"}' in text
    assert "emergency_gateway_rejected_total" in text or "emergency_gateway_received_total" in text
    assert "emergency_gateway_loop_lag_seconds_count" in text
    assert status == 200 and health["status"] == "ok" and health["mqtt_connected"]
    assert health["pending_messages"] >= 0 and health["unread_messages"] >= 0


async def test_the_time_from_a_devices_timestamp_to_the_commit_is_measured(store, gateway_endpoint, make_unit) -> None:
    """Each committed message's age at its commit, from the device's own timestamp, goes into a histogram: the
    benchmark's publish→commit (a frame made two seconds before it was sent is two seconds old when committed)."""
    unit, endpoint = await make_unit()
    made = _now_us() - 2_000_000
    async with (
        Gateway(_gateway_settings(), gateway_endpoint, store) as gateway,
        connected_device(unit, endpoint) as device,
    ):
        await device.send(EcgFrame(unit, 1, 0, made, 500.0, ("I", "II"), 2.5, 125, bytes(range(250)) * 2))
        await device.send(ecg(unit, 1, 1))
        await device.ack_covering(Stream.ECG, 1, 1)
        async with aiohttp.ClientSession() as http, http.get(gateway.metrics_url) as response:
            text = await response.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = {
        (s.name, s.labels.get("le")): s.value for s in families["emergency_gateway_device_to_commit_seconds"].samples
    }
    assert samples[("emergency_gateway_device_to_commit_seconds_count", None)] == 2
    assert samples[("emergency_gateway_device_to_commit_seconds_bucket", "1.0")] == 1  # the frame sent at once
    assert samples[("emergency_gateway_device_to_commit_seconds_bucket", "2.5")] == 2
    assert samples[("emergency_gateway_device_to_commit_seconds_sum", None)] >= 2.0


async def test_the_observer_is_told_when_the_gateway_is_behind(store, gateway_endpoint, make_unit) -> None:
    """While commits are held up (here a lock on the table) and the writer's queue fills past half, the gateway tells
    the clinical loop that it is behind, so that the delay is not taken for a device's clock (docs: _clock.py)."""
    unit, endpoint = await make_unit()
    seen: list[bool] = []
    all_seen = asyncio.Event()

    class Recorder:
        def observe(self, message: DeviceMessage, rx: int, *, center_behind: bool = False) -> None:
            seen.append(center_behind)
            if len(seen) == 6:
                all_seen.set()

        def observe_link(self, event: object) -> None:
            pass

        def queues(self) -> dict[str, int]:
            return {}

    async with store.pool.acquire() as blocker:
        held = blocker.transaction()
        await held.start()
        await blocker.execute("LOCK TABLE ecg_frames IN ACCESS EXCLUSIVE MODE")
        async with (
            Gateway(_gateway_settings(queue_max_messages=4), gateway_endpoint, store, observer=Recorder()),
            connected_device(unit, endpoint) as device,
        ):
            for seq in range(6):
                await device.send(ecg(unit, 1, seq))
            await asyncio.wait_for(all_seen.wait(), 10)
            await held.rollback()
            await device.ack_covering(Stream.ECG, 1, 5)
    assert seen[0] is False and seen[-1] is True


async def test_a_vitals_message_is_observed_while_the_12_lead_waits_for_the_database(
    store, gateway_endpoint, make_unit
) -> None:
    """The 12-lead has a broker session of its own (decision 46): while its frames wait for room in the writer's
    queue (here commits are held by a lock on their table), a vitals message is still read and observed at once, so
    its alert is raised. Once the database takes writes again everything is stored and acknowledged."""
    unit, endpoint = await make_unit()
    seen: list[Stream] = []
    vitals_seen = asyncio.Event()

    class Recorder:
        def observe(self, message: DeviceMessage, rx: int, *, center_behind: bool = False) -> None:
            seen.append(message.stream)
            if message.stream is Stream.VITALS:
                vitals_seen.set()

        def observe_link(self, event: object) -> None:
            pass

        def queues(self) -> dict[str, int]:
            return {}

    settings = _gateway_settings(queue_max_messages=4, commit_lanes=1)
    async with store.pool.acquire() as blocker:
        held = blocker.transaction()
        await held.start()
        await blocker.execute("LOCK TABLE ecg_frames IN ACCESS EXCLUSIVE MODE")
        async with (
            Gateway(settings, gateway_endpoint, store, observer=Recorder()) as gateway,
            connected_device(unit, endpoint) as device,
        ):
            for seq in range(20):
                await device.send(ecg(unit, 1, seq))
            await _pending_reaches(gateway, 4)  # the 12-lead's reader waits for room: its lane holds all it may take
            await device.send(Vitals(unit, 1, 0, _now_us(), hr=120.0))
            await asyncio.wait_for(vitals_seen.wait(), 10)
            assert seen.count(Stream.ECG) < 20  # observed before the frames the database held back
            await held.rollback()
            await device.ack_covering(Stream.ECG, 1, 19)
            await device.ack_covering(Stream.VITALS, 1, 0)
    assert await _count(store, "ecg_frames", unit) == 20
    assert await _count(store, "vitals", unit) == 1


async def test_a_vitals_message_is_committed_before_the_12_lead_frames_queued_ahead_of_it(
    store, gateway_endpoint, make_unit
) -> None:
    """A commit lane's writer takes the clinical streams first (decision 48): while commits are held (a lock on the
    12-lead's table), frames fill their queue, then a vitals message arrives; once the database takes writes again
    the vitals message is in the first commit after the one that was waiting, ahead of the queued frames. Read from
    the rows' transaction ids: only the frames of that first, waiting commit were committed before it."""
    unit, endpoint = await make_unit()
    settings = _gateway_settings(queue_max_messages=4, commit_lanes=1, batch_max_messages=2)
    async with store.pool.acquire() as blocker:
        held = blocker.transaction()
        await held.start()
        await blocker.execute("LOCK TABLE ecg_frames IN ACCESS EXCLUSIVE MODE")
        async with (
            Gateway(settings, gateway_endpoint, store) as gateway,
            connected_device(unit, endpoint) as device,
        ):
            for seq in range(10):
                await device.send(ecg(unit, 1, seq))
            await _pending_reaches(gateway, 4)  # a commit waits for the lock, and the frames behind it fill their queue
            await device.send(Vitals(unit, 1, 0, _now_us(), hr=80.0))
            async with asyncio.timeout(10):
                while True:  # read, and queued behind nothing of its own kind
                    if gateway.metrics.received.labels("vitals")._value.get() == 1:
                        break
                    await asyncio.sleep(0.02)
            await held.rollback()
            await device.ack_covering(Stream.ECG, 1, 9)
            await device.ack_covering(Stream.VITALS, 1, 0)
    frames_before = await store.pool.fetchval(
        "SELECT count(*) FROM ecg_frames WHERE unit = $1 "
        "AND xmin::text::bigint < (SELECT xmin::text::bigint FROM vitals WHERE unit = $1)",
        unit,
    )
    assert frames_before <= 2  # the waiting commit's batch; taken in arrival order, every frame queued before it too
    assert await _count(store, "ecg_frames", unit) == 10


async def test_a_session_kept_from_before_the_12_lead_had_its_own_leaves_the_12_lead_to_it(
    store, gateway_endpoint, make_unit
) -> None:
    """Before decision 46 one persistent session, under the gateway's client id, took every device stream. The
    clinical session takes that id and leaves the 12-lead's subscription to the 12-lead's own session: each frame
    reaches the gateway once (none counted twice) and is stored once."""
    unit, endpoint = await make_unit()
    settings = _gateway_settings()
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    async with mqtt_client(
        gateway_endpoint, identifier=settings.client_id, clean_start=False, properties=properties
    ) as former:
        for topic in fleet_filters():
            await former.subscribe(topic, qos=1)
    async with (
        Gateway(settings, gateway_endpoint, store) as gateway,
        connected_device(unit, endpoint) as device,
    ):
        for seq in range(5):
            await device.send(ecg(unit, 1, seq))
        await device.ack_covering(Stream.ECG, 1, 4)
        await asyncio.sleep(0.5)  # a second copy of a frame would come right behind the first
        assert gateway.metrics.received.labels("ecg")._value.get() == 5
        assert gateway.metrics.duplicates.labels("ecg")._value.get() == 0
    assert await _count(store, "ecg_frames", unit) == 5


async def test_a_backlog_is_observed_12_lead_last_and_each_stream_in_order(store, gateway_endpoint, make_unit) -> None:
    """What waited while the gateway was busy (here: its event loop held for a second by the first frame, as by a
    long step) is observed with its 12-lead frames after the rest, so that the vitals message that raises an alert
    does not wait behind them (decision 31); each stream keeps its order, and everything is stored."""
    unit, endpoint = await make_unit()
    seen: list[tuple[Stream, int]] = []
    busy, backlog_sent = threading.Event(), threading.Event()
    backlog: list[DeviceMessage] = [ecg(unit, 1, seq) for seq in range(1, 10)]
    backlog.append(Vitals(unit, 1, 0, _now_us(), hr=120.0))

    class Recorder:
        def observe(self, message: DeviceMessage, rx: int, *, center_behind: bool = False) -> None:
            seen.append((message.stream, message.seq))
            if len(seen) == 1:
                busy.set()
                backlog_sent.wait(10)  # blocking on purpose: the gateway's event loop is busy meanwhile
                time.sleep(0.3)  # the broker forwards what it acknowledged

        def observe_link(self, event: object) -> None:
            pass

        def queues(self) -> dict[str, int]:
            return {}

    def send_backlog() -> None:
        async def send() -> None:
            async with mqtt_client(endpoint, identifier=f"test-{unit}-backlog") as client:
                for message in backlog:
                    await client.publish(device_topic(unit, message.stream), encode_device_message(message), qos=1)

        busy.wait(10)
        asyncio.run(send())
        backlog_sent.set()

    async with (
        Gateway(_gateway_settings(), gateway_endpoint, store, observer=Recorder()),
        connected_device(unit, endpoint) as device,
    ):
        sender = threading.Thread(target=send_backlog)
        sender.start()
        await device.send(ecg(unit, 1, 0))
        await device.ack_covering(Stream.ECG, 1, 9)
        await device.ack_covering(Stream.VITALS, 1, 0)
        sender.join()
    assert seen[1] == (Stream.VITALS, 0)
    assert [seq for stream, seq in seen if stream is Stream.ECG] == list(range(10))
    assert await _count(store, "ecg_frames", unit) == 10


async def test_message_the_database_refuses_is_isolated_rejected_and_the_rest_stored(
    store, gateway_endpoint, make_unit
) -> None:
    """When the database refuses one message of a batch for good (here a trigger standing in for a constraint the
    codec cannot know), the gateway halves the batch until that message is alone, records it as rejected with the
    database's reason, names it in the ack, and stores every other message."""
    unit, endpoint = await make_unit()
    await store.pool.execute(
        f"""CREATE FUNCTION refuse_{unit.lower()}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.unit = '{unit}' AND NEW.hr = 123 THEN RAISE EXCEPTION 'heart rate 123 refused by policy'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_{unit.lower()} BEFORE INSERT ON vitals
                FOR EACH ROW EXECUTE FUNCTION refuse_{unit.lower()}();"""
    )
    try:
        messages = [Vitals(unit, 1, s, _now_us() + s, hr=123.0 if s == 5 else 70.0) for s in range(12)]
        async with (
            Gateway(_gateway_settings(batch_max_delay_s=0.5), gateway_endpoint, store),
            connected_device(unit, endpoint) as device,
        ):
            for message in messages:
                await device.send(message)
            ack = await device.ack_covering(Stream.VITALS, 1, 11)
        assert ack.rejected == (5,)
        assert await _count(store, "vitals", unit) == 11
        reason = await store.pool.fetchval("SELECT reason FROM rejected_messages WHERE unit = $1", unit)
        assert reason.startswith("store refused") and "refused by policy" in reason
    finally:
        await store.pool.execute(f"DROP TRIGGER refuse_{unit.lower()} ON vitals; DROP FUNCTION refuse_{unit.lower()}()")


async def test_units_of_different_lanes_are_committed_beside_each_other(store, gateway_endpoint, make_unit) -> None:
    """With two commit lanes (decision 38), a unit whose commit is held up (here a trigger waiting on a lock the test
    holds) does not hold up a unit of the other lane: that one is stored and acknowledged meanwhile. Once the lock
    is released the held unit's messages are stored, once each, and acknowledged in order."""
    units: dict[int, tuple[str, MqttEndpoint]] = {}
    while len(units) < 2:
        unit, endpoint = await make_unit()
        units.setdefault(lane_of(unit, 1, 2), (unit, endpoint))
    (held, held_endpoint), (free, free_endpoint) = units[0], units[1]
    name = f"hold_{held.lower()}"
    await store.pool.execute(
        f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.unit = '{held}' THEN PERFORM pg_advisory_lock_shared(4242); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER {name} BEFORE INSERT ON vitals FOR EACH ROW EXECUTE FUNCTION {name}();"""
    )
    try:
        async with store.pool.acquire() as lock:
            await lock.execute("SELECT pg_advisory_lock(4242)")
            async with (
                Gateway(_gateway_settings(commit_lanes=2), gateway_endpoint, store),
                connected_device(held, held_endpoint) as held_device,
                connected_device(free, free_endpoint) as free_device,
            ):
                for seq in range(3):
                    await held_device.send(Vitals(held, 1, seq, _now_us(), hr=70.0))
                for seq in range(3):
                    await free_device.send(Vitals(free, 1, seq, _now_us(), hr=70.0))
                await free_device.ack_covering(Stream.VITALS, 1, 2)
                assert await _count(store, "vitals", free) == 3
                assert all(q.empty() for q in held_device.acks.values()) and await _count(store, "vitals", held) == 0
                await lock.execute("SELECT pg_advisory_unlock(4242)")
                ack = await held_device.ack_covering(Stream.VITALS, 1, 2)
        assert ack.upto == 2 and ack.rejected == ()
        assert await _count(store, "vitals", held) == 3
    finally:
        await store.pool.execute(f"DROP TRIGGER {name} ON vitals; DROP FUNCTION {name}()")


def test_a_batch_histogram_exposes_what_prometheus_clients_histogram_would() -> None:
    """The receive-to-commit histogram is observed a batch at a time; /metrics shows the same buckets, count and sum
    as prometheus_client's own Histogram given the same values one by one (values on a bucket's bound included)."""
    values = [0.0, 0.004, 0.005, 0.0051, 0.1, 0.99, 1.0, 7.5, 59.0, 61.0, 1e6]
    buckets = (0.005, 0.1, 1.0, 60.0)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = BatchHistogram("lag_seconds", "lag", buckets, ours)
    batched.observe_many(values[:4])
    batched.observe_many(values[4:])
    reference = Histogram("lag_seconds", "lag", buckets=buckets, registry=theirs)
    for value in values:
        reference.observe(value)

    def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, s.value)
            for m in registry.collect()
            for s in m.samples
            if s.name != "lag_seconds_created"
        ]

    assert samples(ours) == samples(theirs)
