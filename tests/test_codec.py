"""Wire protocol v1 codec: round trips, rejections, and that no input yields anything but our own error."""

from __future__ import annotations

import gc

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emergency.codec import (
    MAX_TS_US,
    MIN_TS_US,
    RejectedMessage,
    Topic,
    _decode_fast,
    _decode_full,
    decode_acks,
    decode_device_message,
    encode_acks,
    encode_device_message,
    parse_topic,
)
from emergency.protocol import (
    MAX_PAYLOAD_BYTES,
    Ack,
    DeviceEvent,
    EcgFrame,
    EventKind,
    GpsFix,
    Stream,
    Vitals,
)

TS = 1_795_000_000_000_000


def _ecg(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "v": 1,
        "unit": "A1",
        "boot": 3,
        "seq": 7,
        "ts": TS,
        "fs": 500,
        "leads": ["I", "II"],
        "lsb_uv": 2.5,
        "n": 2,
        "data": b"\x01\x00" * 4,
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize(
    "message",
    [
        EcgFrame("A1", 1, 0, TS, 500.0, ("I", "II", "III", "V1"), 2.5, 125, bytes(2 * 4 * 125)),
        Vitals("A1", 1, 1, TS, hr=72.0, spo2=97.0, sbp=121.0, dbp=80.0, map=94.0, nibp_ts=TS - 5),
        GpsFix("amb_7-x", 0, 2**32 - 1, TS, 31.23, 121.47, speed=12.5, heading=270.0, acc=4.0),
        DeviceEvent("A1", 1, 5, TS, EventKind.STATUS, {"status": "en_route"}),
        DeviceEvent(
            "A1",
            1,
            6,
            TS,
            EventKind.OUTBOX_DROP,
            {"stream": "ecg", "of_boot": 1, "first_seq": 10, "last_seq": 20, "reason": "outbox_full"},
        ),
    ],
)
def test_round_trip(message: object) -> None:
    """Every message type survives encode → decode unchanged."""
    topic = f"ems/v1/{message.unit}/{message.stream.value}"  # type: ignore[attr-defined]
    assert decode_device_message(topic, encode_device_message(message)) == message  # type: ignore[arg-type]


def test_ack_round_trip() -> None:
    """A unit's acks, one per stream, survive encode → decode unchanged and in order, in one message."""
    acks = [Ack(boot=4, stream=Stream.VITALS, upto=99, rejected=(3, 17)), Ack(boot=4, stream=Stream.ECG, upto=0)]
    assert decode_acks(encode_acks(acks)) == acks


def test_held_ranges_round_trip_and_an_ack_without_them_is_as_before() -> None:
    """Ranges settled above a missing seq travel in `held`; an ack with none carries no such key, so the usual ack
    is byte for byte what devices that predate held ranges read."""
    held = Ack(boot=4, stream=Stream.ECG, upto=9, rejected=(12,), held=((11, 14), (20, 20)))
    assert decode_acks(encode_acks([held])) == [held]
    plain = msgpack.unpackb(encode_acks([Ack(boot=4, stream=Stream.ECG, upto=9)]))
    assert plain == {"v": 1, "acks": [{"boot": 4, "stream": "ecg", "upto": 9, "rejected": []}]}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"v": 2, "acks": [{"boot": 1, "stream": "ecg", "upto": 3}]}, "protocol version"),
        ({"v": 1, "boot": 1, "stream": "ecg", "upto": 3}, "'acks' must be a non-empty list"),
        ({"v": 1, "acks": []}, "'acks' must be a non-empty list"),
        ({"v": 1, "acks": [7]}, "must be a map"),
        ({"v": 1, "acks": [{"boot": 1, "stream": "ekg", "upto": 3}]}, "unknown stream"),
        ({"v": 1, "acks": [{"boot": 1, "stream": "ecg", "upto": -1}]}, "out of range"),
        ({"v": 1, "acks": [{"boot": 1, "stream": "ecg", "upto": 3, "rejected": ["2"]}]}, "list of seqs"),
        ({"v": 1, "acks": [{"boot": 1, "stream": "ecg", "upto": 3, "held": [5, 6]}]}, "seq ranges"),
        ({"v": 1, "acks": [{"boot": 1, "stream": "ecg", "upto": 3, "held": [[6, 5]]}]}, "seq ranges"),
        ({"v": 1, "acks": [{"boot": 1, "stream": "ecg", "upto": 3, "held": [[4, 5]]}]}, "after a missing seq"),
        ({"v": 1, "acks": [{"boot": 1, "stream": "ecg", "upto": 3, "held": [[5, 6], [7, 8]]}]}, "after a missing"),
        ({"v": 1, "acks": [{"boot": 1, "stream": "ecg", "upto": 3, "held": [[8, 9], [5, 6]]}]}, "ascend"),
    ],
)
def test_malformed_acks_are_rejected(body: dict[str, object], reason: str) -> None:
    with pytest.raises(RejectedMessage, match=reason):
        decode_acks(msgpack.packb(body, use_bin_type=True))


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        ("ems/v1/A1/ecg", _ecg(unit="B2"), "differs from topic"),
        ("ems/v1/A1/ecg", _ecg(data=b"\x00" * 7), "expected 2*2*2=8"),
        ("ems/v1/A1/ecg", _ecg(leads=["I", "X9"]), "unknown lead"),
        ("ems/v1/A1/ecg", _ecg(leads=["I", "I"]), "twice"),
        ("ems/v1/A1/ecg", _ecg(fs=50), "out of range"),
        ("ems/v1/A1/ecg", _ecg(seq=-1), "out of range"),
        ("ems/v1/A1/ecg", _ecg(seq="7"), "must be an integer"),
        ("ems/v1/A1/ecg", _ecg(boot=True), "must be an integer"),
        ("ems/v1/A1/ecg", _ecg(v=2), "protocol version"),
        ("ems/v1/A1/ecg", _ecg(ts=MAX_TS_US + 1), "out of range"),
        ("ems/v1/A1/ecg", {k: v for k, v in _ecg().items() if k != "data"}, "must be bin"),
        ("ems/v1/A1/vitals", {"v": 1, "unit": "A1", "boot": 1, "seq": 1, "ts": TS}, "no vital sign"),
        ("ems/v1/A1/vitals", {"v": 1, "unit": "A1", "boot": 1, "seq": 1, "ts": TS, "spo2": 140}, "out of range"),
        ("ems/v1/A1/vitals", {"v": 1, "unit": "A1", "boot": 1, "seq": 1, "ts": TS, "hr": float("nan")}, "range"),
        ("ems/v1/A1/gps", {"v": 1, "unit": "A1", "boot": 1, "seq": 1, "ts": TS, "lat": 95, "lon": 0}, "range"),
        ("ems/v1/A1/event", {"v": 1, "unit": "A1", "boot": 1, "seq": 1, "ts": TS, "kind": "dance"}, "kind"),
        ("ems/v1/A1/event", {"v": 1, "unit": "A1", "boot": 1, "seq": 1, "ts": TS, "kind": "status"}, "missing"),
        (
            "ems/v1/A1/event",
            {"v": 1, "unit": "A1", "boot": 1, "seq": 1, "ts": TS, "kind": "chief_complaint", "text": "chest\x00pain"},
            "NUL",
        ),
        ("ems/v1/A1/ack", _ecg(), "ack stream"),
        ("ems/v1/A.1/ecg", _ecg(), "does not match"),
        ("ems/v2/A1/ecg", _ecg(), "is not"),
        ("ems/v1/A1/blood", _ecg(), "unknown stream"),
    ],
)
def test_rejections_name_their_reason(topic: str, body: dict[str, object], reason: str) -> None:
    """Each kind of invalid message is rejected whole with a reason that says what is wrong."""
    with pytest.raises(RejectedMessage) as info:
        decode_device_message(topic, msgpack.packb(body, use_bin_type=True))
    assert reason in info.value.reason


def test_rejection_carries_the_seq_it_settles() -> None:
    """A rejected message whose header is readable names its unit, stream, boot and seq."""
    with pytest.raises(RejectedMessage) as info:
        decode_device_message("ems/v1/A1/ecg", msgpack.packb(_ecg(data=b""), use_bin_type=True))
    assert (info.value.unit, info.value.stream, info.value.boot, info.value.seq) == ("A1", Stream.ECG, 3, 7)


def test_oversized_and_hostile_payloads_are_rejected() -> None:
    """Oversized payloads, ext types, deep nesting and huge length headers are refused, never decoded."""
    hostile = [
        b"\x00" * (MAX_PAYLOAD_BYTES + 1),
        msgpack.packb(msgpack.ExtType(1, b"x")),
        b"\x91" * 5000 + b"\x00",  # 5000 nested arrays
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 G elements
        b"\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
        b"\xdf\x00\x01\x00\x00",  # map32 with 65 536 entries and no bytes
        msgpack.packb({1: 2}),  # non-string key
        b"",
    ]
    for payload in hostile:
        with pytest.raises(RejectedMessage):
            decode_device_message("ems/v1/A1/ecg", payload)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=64),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        "v",
        "unit",
        "boot",
        "seq",
        "ts",
        "fs",
        "leads",
        "lsb_uv",
        "n",
        "data",
        "hr",
        "lat",
        "lon",
        "kind",
        "status",
        "stream",
        "first_seq",
        "last_seq",
        "of_boot",
    ]
)
_topics = st.sampled_from(
    ["ems/v1/A1/ecg", "ems/v1/A1/vitals", "ems/v1/A1/gps", "ems/v1/A1/event", "ems/v1/A1/ack", "x"]
)


@settings(max_examples=400, deadline=None)
@given(topic=_topics, payload=st.binary(max_size=256))
def test_arbitrary_bytes_only_raise_rejected_message(topic: str, payload: bytes) -> None:
    """Arbitrary bytes either decode or raise RejectedMessage — never any other exception."""
    try:
        decode_device_message(topic, payload)
    except RejectedMessage:
        pass


@settings(max_examples=400, deadline=None)
@given(topic=_topics, body=st.dictionaries(st.one_of(_keys, st.text(max_size=6)), _values, max_size=12))
def test_arbitrary_maps_only_raise_rejected_message(topic: str, body: dict[str, object]) -> None:
    """Arbitrary maps with plausible keys either decode or raise RejectedMessage — never anything else."""
    try:
        payload = msgpack.packb(body, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    try:
        decode_device_message(topic, payload)
    except RejectedMessage:
        pass


@settings(max_examples=200, deadline=None)
@given(
    seq=st.integers(0, 2**32 - 1),
    ts=st.integers(MIN_TS_US, MAX_TS_US),
    hr=st.floats(0, 350),
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
)
def test_valid_messages_always_round_trip(seq: int, ts: int, hr: float, lat: float, lon: float) -> None:
    """Any in-range vitals and GPS message decodes to exactly what was encoded."""
    vitals = Vitals("U", 0, seq, ts, hr=hr)
    fix = GpsFix("U", 0, seq, ts, lat, lon)
    assert decode_device_message("ems/v1/U/vitals", encode_device_message(vitals)) == vitals
    assert decode_device_message("ems/v1/U/gps", encode_device_message(fix)) == fix


def test_coverage_guided_fuzzing_finds_no_crash(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A bounded atheris (libFuzzer) session over the decoder finds no input that raises anything but the codec's
    own rejection."""
    import subprocess
    import sys
    from pathlib import Path

    target = Path(__file__).parent / "fuzz" / "codec_target.py"
    result = subprocess.run(
        [sys.executable, str(target), "-runs=30000", "-seed=1", f"-artifact_prefix={tmp_path}/"],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _parsed(topic: str) -> Topic:
    return parse_topic(topic)


_VALID_BODIES = {
    "ems/v1/A1/ecg": _ecg(),
    "ems/v1/A1/vitals": {"v": 1, "unit": "A1", "boot": 3, "seq": 7, "ts": TS, "hr": 72, "spo2": 97.5, "nibp_ts": TS},
    "ems/v1/A1/gps": {"v": 1, "unit": "A1", "boot": 3, "seq": 7, "ts": TS, "lat": 31.2, "lon": 121.5, "acc": 4},
}


def test_the_fast_path_takes_valid_telemetry() -> None:
    """Valid 12-lead frames, vitals and GPS fixes — what devices send all day — take the fast path, and come out as
    the full decoder makes them."""
    for topic, body in _VALID_BODIES.items():
        payload = msgpack.packb(body, use_bin_type=True)
        fast = _decode_fast(_parsed(topic), payload)
        assert fast is not None and fast == _decode_full(_parsed(topic), payload)
    for message in (
        EcgFrame("A1", 1, 0, TS, 500.0, ("I", "II", "III", "V1"), 2.5, 125, bytes(2 * 4 * 125)),
        Vitals("A1", 1, 1, TS, hr=72.0, spo2=97.0, sbp=121.0, dbp=80.0, map=94.0, nibp_ts=TS - 5),
        GpsFix("A1", 0, 2**32 - 1, TS, 31.23, 121.47, speed=12.5, heading=270.0, acc=4.0),
        Vitals("A1", 1, 2, TS, hr=80.0),  # the optional fields absent
        GpsFix("A1", 1, 3, TS, 31.23, 121.47),
    ):
        assert _decode_fast(_parsed(f"ems/v1/A1/{message.stream.value}"), encode_device_message(message)) == message


def test_decoded_12_lead_frames_are_left_out_of_the_garbage_collectors_walks() -> None:
    """The care loop keeps each unit's recent 12-lead frames; neither a frame nor its lead list (one tuple shared by
    every frame naming the same leads) is an object the collector walks (decision 41), by either decoder."""
    payloads = [msgpack.packb(_ecg(seq=seq), use_bin_type=True) for seq in (1, 2)]
    for decode in (_decode_fast, _decode_full):
        first, second = (decode(_parsed("ems/v1/A1/ecg"), payload) for payload in payloads)
        assert isinstance(first, EcgFrame) and isinstance(second, EcgFrame)
        assert first.leads == ("I", "II") and first.leads is second.leads
        assert not gc.is_tracked(first)
    gc.collect()
    assert not gc.is_tracked(first.leads)


def _check_fast_against_full(topic: str, payload: bytes) -> None:
    """Where the fast path accepts, the full decoder accepts too and makes the same message."""
    parsed = _parsed(topic)
    if not payload or len(payload) > MAX_PAYLOAD_BYTES:
        return
    fast = _decode_fast(parsed, payload)
    if fast is not None:
        assert _decode_full(parsed, payload) == fast


# Values near what the fields hold: bounds, non-finite floats, sample bytes of other lengths, lead lists, units.
_field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 5000),
    st.sampled_from([2**32 - 1, 2**32, MIN_TS_US - 1, MIN_TS_US, TS, MAX_TS_US, MAX_TS_US + 1]),
    st.floats(-200, 1100),
    st.sampled_from([float("nan"), float("inf"), -0.0, 0.01, 100.0, 125.0, 1000.0, 1000.5]),
    st.binary(max_size=24),
    st.lists(st.sampled_from(["I", "II", "III", "V1", "aVR", "X", ""]), max_size=13),
    st.sampled_from(["A1", "A2", "a1", "", "A1\x00"]),
)
_mutated = st.sampled_from(sorted(_VALID_BODIES)).flatmap(
    lambda topic: st.tuples(
        st.just(topic),
        st.dictionaries(st.sampled_from(sorted(_VALID_BODIES[topic])), _field_values, min_size=1, max_size=2),
    )
)


@settings(max_examples=1500, deadline=None)
@given(case=_mutated)
def test_the_fast_path_never_accepts_what_the_full_decoder_refuses(case: tuple[str, dict[str, object]]) -> None:
    """Valid messages with one or two fields given other values, in range or not, of the right type or not: the fast
    path either declines or agrees with the full decoder exactly."""
    topic, replaced = case
    _check_fast_against_full(topic, msgpack.packb({**_VALID_BODIES[topic], **replaced}, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(
    topic=st.sampled_from(sorted(_VALID_BODIES)),
    removed=st.sets(st.sampled_from(["v", "unit", "boot", "seq", "ts", "fs", "leads", "lsb_uv", "n", "data", "hr",
                                      "spo2", "nibp_ts", "lat", "lon", "acc"]), max_size=2),
    added=st.dictionaries(st.one_of(_keys, st.text(max_size=6)), _values, max_size=2),
)  # fmt: skip
def test_the_fast_path_leaves_missing_and_unknown_fields_to_the_full_decoder(
    topic: str, removed: set[str], added: dict[str, object]
) -> None:
    """Fields removed or others added (of any shape): the fast path declines or agrees with the full decoder."""
    body = {**_VALID_BODIES[topic], **added}
    for key in removed:
        body.pop(key, None)
    try:
        payload = msgpack.packb(body, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    _check_fast_against_full(topic, payload)


@settings(max_examples=800, deadline=None)
@given(
    fs=st.one_of(st.floats(0, 1100), st.integers(0, 1100)),
    leads=st.lists(st.sampled_from(["I", "II", "III", "V1", "V6", "aVR", "V4R", "X", ""]), max_size=14),
    n=st.integers(-1, 4100),
    lsb_uv=st.floats(0, 120),
)
def test_the_fast_path_checks_a_12_lead_frame_as_a_whole(fs: float, leads: list[str], n: int, lsb_uv: float) -> None:
    """12-lead frames whose samples match their leads and length, with any rate, leads, length and scale: the fast
    path declines or agrees with the full decoder (unknown or repeated leads, frames over 2 s, out-of-range values)."""
    body = _ecg(fs=fs, leads=leads, n=n, lsb_uv=lsb_uv, data=bytes(2 * len(leads) * max(n, 0)))
    _check_fast_against_full("ems/v1/A1/ecg", msgpack.packb(body, use_bin_type=True))


@settings(max_examples=400, deadline=None)
@given(topic=st.sampled_from(sorted(_VALID_BODIES)), cut=st.integers(0, 200), extra=st.binary(max_size=8))
def test_the_fast_path_declines_truncated_or_padded_payloads(topic: str, cut: int, extra: bytes) -> None:
    """Bytes cut off a valid payload, or appended to it, never slip through the fast path."""
    payload = msgpack.packb(_VALID_BODIES[topic], use_bin_type=True)
    _check_fast_against_full(topic, payload[: len(payload) - cut] + extra if cut else payload + extra)
