"""The city-scale load generator (bench/_loadgen.py) sends what real devices send, through a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import msgspec
import pytest

from bench._loadgen import (
    GPS_REST,
    SHARED_ACCOUNT,
    SHARED_ACL,
    VITALS_REST,
    Fleet,
    MqttConnection,
    PayloadTemplate,
    Unit,
    Window,
    _stamps_of,
    ecg_frames,
    ecg_rest,
    mqtt_str,
    read_varint,
    varint,
)
from console._hub import Outgoing, frame_texts
from console._state import FleetState, ecg_json
from emergency.codec import decode_device_message, encode_acks
from emergency.protocol import (
    STANDARD_LEADS,
    Ack,
    DeviceEvent,
    EcgFrame,
    EventKind,
    GpsFix,
    Stream,
    Vitals,
    device_topic,
)
from emergency.stack import Broker
from emergency.stack.provision import _write_accounts
from tests.conftest import free_port


def test_payload_templates_decode_to_the_messages_devices_send() -> None:
    """A template filled with seq and ts decodes, through the gateway's codec, to the device message it stands for."""
    frame = ecg_frames(1)[0]
    cases = [
        (
            Stream.ECG,
            ecg_rest(frame),
            EcgFrame("B00001", 7, 41, 1_700_000_000_123_456, 500.0, STANDARD_LEADS, 2.5, 125, frame),
        ),
        (Stream.VITALS, VITALS_REST, Vitals("B00001", 7, 41, 1_700_000_000_123_456, hr=80.0, spo2=97.0, rr=16.0)),
        (Stream.GPS, GPS_REST, GpsFix("B00001", 7, 41, 1_700_000_000_123_456, 31.23, 121.47, speed=10.0)),
    ]
    for stream, rest, expected in cases:
        payload = PayloadTemplate.of("B00001", 7, rest).fill(41, 1_700_000_000_123_456)
        assert decode_device_message(device_topic("B00001", stream), payload) == expected


def test_console_clients_read_the_type_and_ts_of_every_message_in_a_frame() -> None:
    """The console clients' cheap reading of a frame made by the console's hub finds the type and device ts of each
    message that has a ts, in order, as parsing the frame's JSON would."""
    ts = 1_700_000_000_123_456
    fleet = FleetState()
    messages = [
        {"type": "care", "kind": "alert", "record": {"id": 1, "unit": "B00001", "raised_at": ts}},
        fleet.apply(Vitals("B00002", 7, 41, ts + 1, hr=80.0, spo2=97.0, rr=16.0, nibp_ts=ts - 5), ts + 90),
        ecg_json(EcgFrame("B00001", 7, 42, ts + 2, 500.0, STANDARD_LEADS, 2.5, 125, ecg_frames(1)[0]), ts + 91),
        {"type": "link", "unit": "B00003", "condition": "silent", "since": ts, "last_rx": ts},
        fleet.apply(GpsFix("B00003", 7, 43, ts + 3, 31.23, 121.47, speed=10.0), ts + 92),
    ]
    [frame] = frame_texts([Outgoing(m) for m in messages if m is not None])
    assert _stamps_of(frame) == [(m["type"], m["ts"]) for m in json.loads(frame) if "ts" in m]
    assert [kind for kind, _ in _stamps_of(frame)] == ["vitals", "ecg", "gps"]


def test_remaining_length_round_trips_at_every_width() -> None:
    """MQTT's variable-length integers encode and decode at their 1- to 4-byte boundaries."""
    for n in (0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455):
        assert read_varint(b"\x30" + varint(n), 1) == (n, 1 + len(varint(n)))


@pytest.mark.asyncio(loop_scope="session")
async def test_shared_account_publishes_for_many_units_and_reads_their_acks(tmp_path: Path) -> None:
    """With the benchmark's shared account one connection publishes QoS 1 for two units, the gateway's account
    receives both, and the acks published to each unit come back on that connection."""
    root = tmp_path / "stack"
    async with Broker(root, free_port()) as broker:
        _write_accounts(root, {SHARED_ACCOUNT: "shared-secret-1"})
        with (root / "mosquitto" / "acl").open("a") as acl:
            acl.write(SHARED_ACL)
        os.kill(int(broker.pid_file.read_text()), signal.SIGHUP)  # reload accounts and ACL
        await asyncio.sleep(0.5)

        seen: list[bytes] = []
        acks: list[bytes] = []
        both_arrived = asyncio.Event()

        def arrived(into: list[bytes], topic: bytes) -> None:
            into.append(topic)
            if len(seen) == 2 and len(acks) == 2:
                both_arrived.set()

        gateway_password = (root / "secrets" / "center.gateway.password").read_text().strip()
        gateway = await MqttConnection.open(
            broker.host,
            broker.port,
            "t-gw",
            "center.gateway",
            gateway_password,
            on_message=lambda t, p: arrived(seen, t),
        )
        await gateway.subscribe(["ems/v1/+/ecg"], qos=1)
        fleet = await MqttConnection.open(
            broker.host,
            broker.port,
            "t-fleet",
            SHARED_ACCOUNT,
            "shared-secret-1",
            on_message=lambda t, p: arrived(acks, t),
        )
        await fleet.subscribe(["ems/v1/B00001/ack", "ems/v1/B00002/ack"], qos=1)
        frame = ecg_frames(1)[0]
        for unit in ("B00001", "B00002"):
            fleet.publish(mqtt_str(f"ems/v1/{unit}/ecg"), PayloadTemplate.of(unit, 1, ecg_rest(frame)).fill(0, 1))
        fleet.flush()
        for unit in ("B00001", "B00002"):
            ack = encode_acks([Ack(boot=1, stream=Stream.ECG, upto=0)])
            gateway.publish(mqtt_str(f"ems/v1/{unit}/ack"), ack)
        gateway.flush()
        async with asyncio.timeout(10):
            await both_arrived.wait()
        assert sorted(seen) == [b"ems/v1/B00001/ecg", b"ems/v1/B00002/ecg"]
        assert sorted(acks) == [b"ems/v1/B00001/ack", b"ems/v1/B00002/ack"]
        assert fleet.refused == 0
        for conn in (gateway, fleet):
            assert conn.transport is not None
            conn.transport.close()


def test_the_generator_reads_every_stream_of_a_units_ack_message() -> None:
    """One ack message carries a unit's acks of several streams (docs/protocol.md): each moves its own stream, and
    each newly covered message of the window gives one publish→ack latency."""
    fleet = Fleet("B", 0, boot=7, window=Window(0, 2**62))
    unit = Unit(
        "B00000",
        None,  # type: ignore[arg-type]  # never publishes here
        (b"", b"", b""),
        fleet.ecg.template("B00000", 7),
        0,
        PayloadTemplate.of("B00000", 7, VITALS_REST),
        PayloadTemplate.of("B00000", 7, GPS_REST),
    )
    fleet.units.append(unit)
    fleet.by_topic[b"ems/v1/B00000/ack"] = unit
    for stream in unit.sent:
        stream.extend([100, 200, 300])
    acks = [Ack(7, Stream.ECG, 1), Ack(7, Stream.GPS, 2, rejected=(1,)), Ack(6, Stream.VITALS, 2)]  # boot 6: not ours
    fleet.on_ack(b"ems/v1/B00000/ack", encode_acks(acks))
    assert unit.acked == [1, -1, 2]
    assert unit.rejected == 1
    assert len(fleet.ack_ms) == 5


def test_a_template_for_another_unit_decodes_to_that_units_message_and_shares_its_samples() -> None:
    """`PayloadTemplate.for_unit` gives the same message from another unit and boot, without copying the samples."""
    frame = ecg_frames(1)[0]
    template = PayloadTemplate.of("B00001", 7, ecg_rest(frame))
    other = template.for_unit("P0042", 9)
    expected = EcgFrame("P0042", 9, 3, 1_700_000_000_123_456, 500.0, STANDARD_LEADS, 2.5, 125, frame)
    assert decode_device_message(device_topic("P0042", Stream.ECG), other.fill(3, 1_700_000_000_123_456)) == expected
    assert other.suffix is template.suffix


def test_the_alert_benchmarks_payloads_are_the_codecs_encoding_for_every_unit() -> None:
    """bench/alert_latency.py's payloads, made for one unit and then for another, each checked byte for byte against
    the codec as they are made; filled, they decode to that unit's messages (its violating vitals among them)."""
    from bench.alert_latency import VIOLATING_VITALS, Payloads

    frames = [EcgFrame("-", 7, 0, 0, 500.0, STANDARD_LEADS, 2.5, 125, frame) for frame in ecg_frames(2)]
    payloads = Payloads.of("B00001", 7, frames).for_unit("P0042", 9, frames[0])
    ts = 1_700_000_000_123_456
    violating = decode_device_message(device_topic("P0042", Stream.VITALS), payloads.violating.fill(5, ts))
    assert violating == msgspec.structs.replace(VIOLATING_VITALS, unit="P0042", boot=9, seq=5, ts=ts)
    second = decode_device_message(device_topic("P0042", Stream.ECG), payloads.ecg[1].fill(6, ts))
    assert second == msgspec.structs.replace(frames[1], unit="P0042", boot=9, seq=6, ts=ts)


class _Wire:
    """What a bench device writes to, kept: its publishes in order."""

    def __init__(self) -> None:
        self.published: list[tuple[bytes, bytes]] = []
        self.inflight, self.waiting, self.transport = 0, [], self

    def is_closing(self) -> bool:
        return False

    def publish(self, topic: bytes, payload: bytes) -> None:
        self.published.append((topic, payload))

    def flush(self) -> None:
        pass


def test_the_alert_benchmarks_devices_resend_what_stays_unacknowledged_as_first_sent() -> None:
    """A bench device resends, 30 s on, each stream's messages above its ack, byte for byte as it first sent them
    (the violating vitals among them), and not again within the next 30 s; after a late ack that stream waits twice
    that ack's delay instead (decision 51)."""
    from bench.alert_latency import ECG, RESEND_AFTER_US, VITALS, LeanDevice, Payloads

    frames = [EcgFrame("-", 7, 0, 0, 500.0, STANDARD_LEADS, 2.5, 125, frame) for frame in ecg_frames(2)]
    device = LeanDevice("P0042", Payloads.of("P0042", 7, frames), ecg_every=1, vitals_every=2)
    wire = _Wire()
    device.connection = wire  # type: ignore[assignment]
    device.publish_event(DeviceEvent("P0042", 7, 0, 0, EventKind.PATIENT_CONTACT, {"age": 60}))
    for tick in range(6):  # 12-lead every tick, vitals and GPS every other: the second vitals violates
        device.publish_tick(violating=tick == 2)

    def sent(published: list[tuple[bytes, bytes]]) -> dict[tuple[str, int], bytes]:
        topics = (decode_device_message(t[2:].decode(), p) for t, p in published)  # topics are length-prefixed
        return {(m.stream.value, m.seq): p for m, (_, p) in zip(topics, published, strict=True)}

    first = sent(wire.published)
    wire.published.clear()
    device.acked[ECG], device.acked[VITALS] = 3, 0
    later = max(max(times) for times in device.sent) + RESEND_AFTER_US
    device.resend_stale(later)
    again = sent(wire.published)
    assert list(again) == [
        ("ecg", 4), ("ecg", 5), ("vitals", 1), ("vitals", 2), ("gps", 0), ("gps", 1), ("gps", 2), ("event", 0)
    ]  # fmt: skip
    assert all(first[key] == payload for key, payload in again.items())
    assert device.violating_seq == 1 and device.resent == len(again)
    wire.published.clear()
    device.resend_stale(later + RESEND_AFTER_US - 1)
    assert wire.published == []

    # An ack 50 s after its message (a center behind but alive): that stream's next resend waits twice that
    # (decision 51), the others' do not.
    device.acknowledged(ECG, 4, [], device.sent[ECG][4] + 50_000_000)
    device.resend_stale(later + 2 * RESEND_AFTER_US)
    assert ("ecg", 5) not in sent(wire.published) and ("vitals", 1) in sent(wire.published)
    wire.published.clear()
    device.resend_stale(later + 100_000_000)
    again = sent(wire.published)
    assert ("ecg", 4) not in again and again[("ecg", 5)] == first[("ecg", 5)]


def test_the_alert_benchmarks_devices_resend_only_what_no_held_range_names_and_count_each_seq_settled_once() -> None:
    """An ack's held ranges settle seqs above the watermark: a bench device does not resend them, and a seq counts as
    acknowledged once, at the first ack that settles it, whether a held range or the watermark passing it."""
    from bench.alert_latency import ECG, RESEND_AFTER_US, LeanDevice, Payloads

    frames = [EcgFrame("-", 7, 0, 0, 500.0, STANDARD_LEADS, 2.5, 125, frame) for frame in ecg_frames(2)]
    device = LeanDevice("P0042", Payloads.of("P0042", 7, frames), ecg_every=1, vitals_every=100)
    wire = _Wire()
    device.connection = wire  # type: ignore[assignment]
    for _ in range(8):
        device.publish_tick(violating=False)
    now = max(device.sent[ECG]) + 1
    assert device.acknowledged(ECG, 0, [[2, 3], [5, 5]], now) == [0, 2, 3, 5]
    assert device.acknowledged(ECG, 0, [[2, 3], [5, 6]], now) == [6]
    wire.published.clear()
    device.resend_stale(now + RESEND_AFTER_US)
    resent = [decode_device_message(t[2:].decode(), p).seq for t, p in wire.published if t.endswith(b"ecg")]
    assert resent == [1, 4, 7]
    assert device.acknowledged(ECG, 3, [[5, 6]], now) == [1]
    assert device.acknowledged(ECG, 7, [], now) == [4, 7]


async def test_a_counted_flood_sends_the_standard_mix_in_two_parts(tmp_path: Path) -> None:
    """`flood --warmup W --count N` (bench/gateway_cost.py's publisher) sends W messages, waits for SIGUSR1, then N
    more: each unit's streams numbered 0, 1, 2… without a gap or repeat across the two parts, in the standard mix."""
    root = tmp_path / "stack"
    async with Broker(root, free_port()) as broker:
        _write_accounts(root, {SHARED_ACCOUNT: "shared-secret-2"})
        with (root / "mosquitto" / "acl").open("a") as acl:
            acl.write(SHARED_ACL)
        os.kill(int(broker.pid_file.read_text()), signal.SIGHUP)
        await asyncio.sleep(0.5)
        seqs: dict[tuple[str, str], list[int]] = {}
        expected, enough = [15], asyncio.Event()

        def arrived(topic: bytes, payload: bytes) -> None:
            _, _, unit, stream = topic.decode().split("/")
            seqs.setdefault((unit, stream), []).append(decode_device_message(topic.decode(), payload).seq)
            if sum(map(len, seqs.values())) >= expected[0]:
                enough.set()

        password = (root / "secrets" / "center.gateway.password").read_text().strip()
        sink = await MqttConnection.open(
            broker.host, broker.port, "t-sink", "center.gateway", password, on_message=arrived
        )
        await sink.subscribe(["ems/v1/+/+"], qos=1)
        (tmp_path / "password").write_text("shared-secret-2")
        flood = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).parent.parent / "bench" / "_loadgen.py"), "flood",
            "--port", str(broker.port), "--password-file", str(tmp_path / "password"), "--units", "5",
            "--connections", "2", "--warmup", "15", "--count", "45", stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert flood.stdout is not None
        async with asyncio.timeout(30):
            while (await flood.stdout.readline()).strip() != b"warmed":
                pass
            await enough.wait()
            await asyncio.sleep(0.3)
            assert sum(map(len, seqs.values())) == 15  # nothing more until told
            flood.send_signal(signal.SIGUSR1)
            result = json.loads((await flood.stdout.read()).decode().strip().splitlines()[-1])
            expected[0] = 60
            enough.clear()
            if sum(map(len, seqs.values())) < 60:
                await enough.wait()
        assert result["published"] == 60
        counts = {
            stream: sum(len(s) for (_, st), s in seqs.items() if st == stream) for stream in ("ecg", "vitals", "gps")
        }
        assert counts == {"ecg": 40, "vitals": 10, "gps": 10}
        assert all(sorted(s) == list(range(len(s))) for s in seqs.values())
        assert sink.transport is not None
        sink.transport.close()


def test_the_scale_benchmark_refuses_a_run_whose_rows_would_not_fit_on_the_disk() -> None:
    """A soak that would fill the disk is refused before it starts, saying how much it needs and how much is free."""
    from bench.scale import enough_disk

    enough_disk(1, 1.0)  # a unit for a second fits anywhere
    with pytest.raises(SystemExit, match=r"need about \d+ GiB .* GiB are free"):
        enough_disk(10**9, 3600.0)


def test_the_scale_benchmark_bounds_publish_to_commit_by_the_share_committed_within_each_bucket() -> None:
    """The commit target is read from the gateway's device→commit histogram over the run's timeline: the shares of
    messages committed within 0.5 s and 1 s, intervals with nothing committed left out; no timeline, no figure."""
    from bench.scale import commit_bounds

    tracked = [
        {"device_to_commit": {"n": 600, "within_0_5s": 300, "within_1s": 594}},
        {"device_to_commit": {"n": 0, "within_0_5s": 0, "within_1s": 0}},
        {"device_to_commit": {"n": 400, "within_0_5s": 400, "within_1s": 400}},
        {"t_s": 10},  # a row from before the histogram existed
    ]
    assert commit_bounds(tracked) == {"n": 1000, "share_within_0_5s": 0.7, "share_within_1s": 0.994}
    assert commit_bounds([]) is None


async def test_the_copy_baseline_writes_the_standard_mix_into_the_stores_own_tables() -> None:
    """The PostgreSQL COPY baseline of bench/scale.py puts the same messages, as rows, into the tables the gateway
    commits to (a real cluster, native partitions), and reports a rate."""
    from bench.scale import store_baseline

    result = await store_baseline(timescaledb=False, seconds=1.0, writers=1, batch=60, copy=True)
    assert result["method"] == "copy"
    assert result["msgs_per_s"] > 0
