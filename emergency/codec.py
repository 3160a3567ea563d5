"""The one place where wire bytes become typed protocol messages, and back.

Decoding is a pure function of (topic, payload). Any input that is not a valid protocol v1 message raises
`RejectedMessage` and nothing else; the exception carries whatever header fields could be read, so the gateway can
settle that seq in its acknowledgement and record the rejection.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgpack
import msgspec

from emergency.protocol import (
    ALLOWED_LEADS,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    TOPIC_ROOT,
    UINT32_MAX,
    UNIT_PATTERN,
    Ack,
    DeviceEvent,
    DeviceMessage,
    EcgFrame,
    EventKind,
    GpsFix,
    Stream,
    UnitStatus,
    Vitals,
)

# Device clocks outside [2000-01-01, 2100-01-01) are not clocks but faults.
MIN_TS_US = 946_684_800 * 1_000_000
MAX_TS_US = 4_102_444_800 * 1_000_000

MAX_LEADS = len(ALLOWED_LEADS)
MAX_TEXT = 1000
# Explicit unpacker limits: nothing in a valid message is larger, so nothing larger is ever allocated.
_UNPACK_LIMITS: dict[str, Any] = {
    "max_bin_len": MAX_PAYLOAD_BYTES,
    "max_str_len": 4096,
    "max_array_len": 1024,
    "max_map_len": 64,
    "max_ext_len": 0,
}


class CodecError(Exception):
    """Base of the codec's errors."""


@dataclass(eq=False)
class RejectedMessage(CodecError):
    """A message that is not valid protocol v1. Header fields are None where they could not be read."""

    reason: str
    unit: str | None = None
    stream: Stream | None = None
    boot: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class Topic:
    unit: str
    stream: Stream


_STREAMS = {stream.value: stream for stream in Stream}


# The fleet's topics repeat with every message: a valid one is parsed once (units × streams of them; the least
# recently seen are forgotten past the bound). An invalid one raises, and an exception is never cached.
@functools.lru_cache(maxsize=16_384)
def parse_topic(topic: str) -> Topic:
    """Split `ems/v1/{unit}/{stream}`; raises RejectedMessage for anything else."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
        raise RejectedMessage(f"topic {topic!r} is not {TOPIC_ROOT}/{{unit}}/{{stream}}")
    unit, stream_name = parts[2], parts[3]
    if not UNIT_PATTERN.fullmatch(unit):
        raise RejectedMessage(f"unit {unit!r} in topic does not match [A-Za-z0-9_-]{{1,32}}")
    stream = _STREAMS.get(stream_name)
    if stream is None:
        raise RejectedMessage(f"unknown stream {stream_name!r}", unit=unit)
    return Topic(unit, stream)


def _unpack_map(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise RejectedMessage(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True, **_UNPACK_LIMITS)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise RejectedMessage(f"not a msgpack document: {type(exc).__name__}") from exc
    if not isinstance(obj, dict):
        raise RejectedMessage(f"payload is a msgpack {type(obj).__name__}, not a map")
    return obj


class _Fields:
    """Typed reads from an untrusted map; every failure is a RejectedMessage naming the field."""

    def __init__(self, obj: Mapping[str, Any], header: RejectedMessage) -> None:
        self._obj = obj
        self._header = header

    def reject(self, reason: str) -> RejectedMessage:
        h = self._header
        return RejectedMessage(reason, unit=h.unit, stream=h.stream, boot=h.boot, seq=h.seq)

    def has(self, key: str) -> bool:
        return self._obj.get(key) is not None

    def integer(self, key: str, lo: int, hi: int, *, required: bool = True) -> int | None:
        value = self._obj.get(key)
        if value is None:
            if required:
                raise self.reject(f"missing field {key!r}")
            return None
        if type(value) is not int:
            raise self.reject(f"field {key!r} must be an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise self.reject(f"field {key!r}={value} out of range [{lo}, {hi}]")
        return value

    def req_int(self, key: str, lo: int, hi: int) -> int:
        value = self.integer(key, lo, hi)
        assert value is not None
        return value

    def num(self, key: str, lo: float, hi: float, *, required: bool = False) -> float | None:
        value = self._obj.get(key)
        if value is None:
            if required:
                raise self.reject(f"missing field {key!r}")
            return None
        if type(value) not in (int, float):
            raise self.reject(f"field {key!r} must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or not lo <= value <= hi:
            raise self.reject(f"field {key!r}={value} out of range [{lo}, {hi}]")
        return float(value)

    def req_num(self, key: str, lo: float, hi: float) -> float:
        value = self.num(key, lo, hi, required=True)
        assert value is not None
        return value

    def text(self, key: str, *, required: bool = True, max_len: int = MAX_TEXT) -> str | None:
        value = self._obj.get(key)
        if value is None:
            if required:
                raise self.reject(f"missing field {key!r}")
            return None
        if type(value) is not str:
            raise self.reject(f"field {key!r} must be a string, got {type(value).__name__}")
        if not value or len(value) > max_len:
            raise self.reject(f"field {key!r} must have 1..{max_len} characters")
        if "\x00" in value:
            # PostgreSQL text and jsonb cannot hold NUL: refuse it here, with a reason, not in the database.
            raise self.reject(f"field {key!r} contains a NUL character")
        return value

    def req_text(self, key: str, *, max_len: int = MAX_TEXT) -> str:
        value = self.text(key, max_len=max_len)
        assert value is not None
        return value

    def boolean(self, key: str) -> bool | None:
        value = self._obj.get(key)
        if value is None:
            return None
        if type(value) is not bool:
            raise self.reject(f"field {key!r} must be a boolean, got {type(value).__name__}")
        return value


# The numeric fields' ranges: the one table that both the full decoder and the fast path read.
ECG_FS_HZ = (125, 1000)
ECG_LSB_UV = (0.01, 100)
ECG_N = (1, 4000)
VITAL_RANGES: dict[str, tuple[float, float]] = {
    "hr": (0, 350),
    "sbp": (0, 350),
    "dbp": (0, 300),
    "map": (0, 300),
    "spo2": (0, 100),
    "rr": (0, 150),
    "temp": (15, 45),
    "etco2": (0, 150),
}
VITAL_FIELDS: tuple[str, ...] = tuple(VITAL_RANGES)
GPS_REQUIRED: dict[str, tuple[float, float]] = {"lat": (-90, 90), "lon": (-180, 180)}
GPS_OPTIONAL: dict[str, tuple[float, float]] = {"speed": (0, 150), "heading": (0, 360), "acc": (0, 100_000)}


def _decode_ecg(f: _Fields, raw: Mapping[str, Any], unit: str, boot: int, seq: int, ts: int) -> EcgFrame:
    fs = f.req_num("fs", *ECG_FS_HZ)
    leads_obj = raw.get("leads")
    if type(leads_obj) is not list or not leads_obj:
        raise f.reject("field 'leads' must be a non-empty list of lead names")
    if len(leads_obj) > MAX_LEADS:
        raise f.reject(f"field 'leads' has {len(leads_obj)} entries, at most {MAX_LEADS}")
    for lead in leads_obj:
        if type(lead) is not str or lead not in ALLOWED_LEADS:
            raise f.reject(f"unknown lead {lead!r}")
    if len(set(leads_obj)) != len(leads_obj):
        raise f.reject("field 'leads' names a lead twice")
    lsb_uv = f.req_num("lsb_uv", *ECG_LSB_UV)
    n = f.req_int("n", *ECG_N)
    if n / fs > 2.0:
        raise f.reject(f"a frame of n={n} at fs={fs} Hz spans more than 2 s")
    data = raw.get("data")
    if type(data) is not bytes:
        raise f.reject(f"field 'data' must be bin, got {type(data).__name__}")
    expected = 2 * len(leads_obj) * n
    if len(data) != expected:
        raise f.reject(f"field 'data' has {len(data)} bytes, expected 2*{len(leads_obj)}*{n}={expected}")
    leads = _known_leads(tuple(leads_obj))
    assert leads is not None  # every lead was checked above, with its reason
    return EcgFrame(unit, boot, seq, ts, fs, leads, lsb_uv, n, data)


def _decode_vitals(f: _Fields, raw: Mapping[str, Any], unit: str, boot: int, seq: int, ts: int) -> Vitals:
    values = {key: f.num(key, lo, hi) for key, (lo, hi) in VITAL_RANGES.items()}
    nibp_ts = f.integer("nibp_ts", MIN_TS_US, MAX_TS_US, required=False)
    if all(value is None for value in values.values()):
        raise f.reject("vitals message carries no vital sign")
    return Vitals(unit, boot, seq, ts, **values, nibp_ts=nibp_ts)


def _decode_gps(f: _Fields, raw: Mapping[str, Any], unit: str, boot: int, seq: int, ts: int) -> GpsFix:
    lat, lon = (f.req_num(key, lo, hi) for key, (lo, hi) in GPS_REQUIRED.items())
    optional = {key: f.num(key, lo, hi) for key, (lo, hi) in GPS_OPTIONAL.items()}
    return GpsFix(unit, boot, seq, ts, lat, lon, **optional)


# Each event kind's fields: name → (reader, required). Unknown keys are ignored, as everywhere in v1.
_EventField = tuple[Callable[[_Fields, str, bool], object], bool]


def _text(f: _Fields, key: str, required: bool) -> object:
    return f.text(key, required=required)


def _uint(f: _Fields, key: str, required: bool) -> object:
    return f.integer(key, 0, UINT32_MAX, required=required)


def _score(f: _Fields, key: str, required: bool) -> object:
    return f.num(key, -1000, 1000, required=required)


def _age(f: _Fields, key: str, required: bool) -> object:
    return f.integer(key, 0, 130, required=required)


def _sex(f: _Fields, key: str, required: bool) -> object:
    value = f.text(key, required=required)
    if value is not None and value not in ("male", "female", "unknown"):
        raise f.reject(f"sex {value!r} is not male, female or unknown")
    return value


def _time(f: _Fields, key: str, required: bool) -> object:
    return f.integer(key, 0, 2**63 - 1, required=required)


def _status(f: _Fields, key: str, required: bool) -> object:
    value = f.text(key, required=required)
    if value is not None and value not in UnitStatus.__members__.values():
        raise f.reject(f"unknown unit status {value!r}")
    return value


def _stream(f: _Fields, key: str, required: bool) -> object:
    value = f.text(key, required=required)
    if value is not None and value not in {s.value for s in Stream if s is not Stream.ACK}:
        raise f.reject(f"unknown stream {value!r}")
    return value


def _priority(f: _Fields, key: str, required: bool) -> object:
    value = f.text(key, required=required)
    if value is not None and value not in ("low", "medium", "high"):
        raise f.reject(f"alarm priority {value!r} is not low, medium or high")
    return value


EVENT_FIELDS: dict[EventKind, dict[str, _EventField]] = {
    EventKind.DEVICE_START: {"firmware": (_text, False)},
    EventKind.STATUS: {"status": (_status, True)},
    EventKind.PATIENT_CONTACT: {"note": (_text, False), "age": (_age, False), "sex": (_sex, False)},
    EventKind.CHIEF_COMPLAINT: {"text": (_text, True), "code": (_text, False)},
    EventKind.FINDING: {"text": (_text, True), "code": (_text, False), "value": (_score, False), "at": (_time, False)},
    EventKind.TREATMENT: {
        "text": (_text, True),
        "code": (_text, False),
        "dose": (_score, False),
        "dose_unit": (_text, False),
    },
    EventKind.TRANSFER_OF_CARE: {"to": (_text, False)},
    EventKind.DEVICE_ALARM: {"alarm": (_text, True), "priority": (_priority, True), "text": (_text, False)},
    EventKind.OUTBOX_DROP: {
        "stream": (_stream, True),
        "of_boot": (_uint, True),
        "first_seq": (_uint, True),
        "last_seq": (_uint, True),
        "reason": (_text, False),
    },
}


def _decode_event(f: _Fields, raw: Mapping[str, Any], unit: str, boot: int, seq: int, ts: int) -> DeviceEvent:
    kind_name = f.req_text("kind")
    try:
        kind = EventKind(kind_name)
    except ValueError:
        raise f.reject(f"unknown event kind {kind_name!r}") from None
    detail: dict[str, str | int | float | bool] = {}
    for key, (read, required) in EVENT_FIELDS[kind].items():
        value = read(f, key, required)
        if value is not None:
            detail[key] = value  # type: ignore[assignment]
    if kind is EventKind.OUTBOX_DROP and int(detail["first_seq"]) > int(detail["last_seq"]):
        raise f.reject("outbox_drop first_seq is greater than last_seq")
    return DeviceEvent(unit, boot, seq, ts, kind, detail)


_DECODERS: dict[Stream, Callable[[_Fields, Mapping[str, Any], str, int, int, int], DeviceMessage]] = {
    Stream.ECG: _decode_ecg,
    Stream.VITALS: _decode_vitals,
    Stream.GPS: _decode_gps,
    Stream.EVENT: _decode_event,
}


def _within(kind: type, bounds: tuple[float, float]) -> Any:
    return Annotated[kind, msgspec.Meta(ge=bounds[0], le=bounds[1])]


def _fast_struct(name: str, fields: list[tuple[Any, ...]], optional: dict[str, tuple[float, float]]) -> Any:
    header = [
        ("v", int),
        ("unit", str),
        ("boot", _within(int, (0, UINT32_MAX))),
        ("seq", _within(int, (0, UINT32_MAX))),
        ("ts", _within(int, (MIN_TS_US, MAX_TS_US))),
    ]
    nullable = [(key, _within(float, bounds) | None, None) for key, bounds in optional.items()]
    # Unknown fields are refused here (the full decoder ignores them): whatever a payload carries besides the
    # protocol's fields, and whatever limits those must respect, is the full decoder's to judge.
    return msgspec.defstruct(name, [*header, *fields, *nullable], forbid_unknown_fields=True, kw_only=True)


_FastEcg = _fast_struct(
    "_FastEcg",
    [
        ("fs", _within(float, ECG_FS_HZ)),
        ("leads", tuple[str, ...]),
        ("lsb_uv", _within(float, ECG_LSB_UV)),
        ("n", _within(int, ECG_N)),
        ("data", bytes),
    ],
    {},
)
_FastVitals = _fast_struct(
    "_FastVitals", [("nibp_ts", _within(int, (MIN_TS_US, MAX_TS_US)) | None, None)], VITAL_RANGES
)
_FastGps = _fast_struct(
    "_FastGps", [(key, _within(float, bounds)) for key, bounds in GPS_REQUIRED.items()], GPS_OPTIONAL
)
_FAST: dict[Stream, msgspec.msgpack.Decoder[Any]] = {
    Stream.ECG: msgspec.msgpack.Decoder(_FastEcg),
    Stream.VITALS: msgspec.msgpack.Decoder(_FastVitals),
    Stream.GPS: msgspec.msgpack.Decoder(_FastGps),
}


@functools.lru_cache(maxsize=64)  # a fleet sends a few lead sets, each in every frame
def _known_leads(leads: tuple[str, ...]) -> tuple[str, ...] | None:
    """The lead set if it has at least one lead, every one known, none repeated; else None.

    What it returns is one tuple for every frame that names the same leads (the first one seen). The care loop keeps
    each unit's recent frames, and a tuple of every frame's own would be ~130 000 objects at 2 000 units for each
    young collection to walk, as the frames replace one another unseen by the collector's count (decision 41)."""
    if leads and ALLOWED_LEADS.issuperset(leads) and len(set(leads)) == len(leads):
        return leads
    return None


def _decode_fast(parsed: Topic, payload: bytes) -> DeviceMessage | None:
    """The common case, typed and range-checked in C (msgspec, decision 36): a 12-lead frame, vitals or a GPS fix
    that is one msgpack map of at most 15 entries, all of them the protocol's fields and valid. None for anything
    else; the full decoder then accepts it or rejects it with its reason. Never accepts what the full decoder
    would reject, and returns what it would return (`tests/test_codec.py` checks both against each other)."""
    decoder = _FAST.get(parsed.stream)
    if decoder is None or not 0x80 <= payload[0] <= 0x8F:  # a fixmap: the full decoder's map limit cannot apply
        return None
    try:
        m = decoder.decode(payload)
    except msgspec.DecodeError:  # includes ValidationError
        return None
    if m.v != PROTOCOL_VERSION or m.unit != parsed.unit:
        return None
    if parsed.stream is Stream.ECG:
        leads = _known_leads(m.leads)
        if leads is None or m.n / m.fs > 2.0 or len(m.data) != 2 * len(leads) * m.n:
            return None
        return EcgFrame(parsed.unit, m.boot, m.seq, m.ts, m.fs, leads, m.lsb_uv, m.n, m.data)
    if parsed.stream is Stream.VITALS:
        signs = (m.hr, m.sbp, m.dbp, m.map, m.spo2, m.rr, m.temp, m.etco2)  # VITAL_FIELDS, in Vitals' order
        if signs.count(None) == len(signs):
            return None
        return Vitals(parsed.unit, m.boot, m.seq, m.ts, *signs, m.nibp_ts)
    return GpsFix(parsed.unit, m.boot, m.seq, m.ts, m.lat, m.lon, m.speed, m.heading, m.acc)


def decode_device_message(topic: str, payload: bytes) -> DeviceMessage:
    """Decode and validate one device → center message; raises only RejectedMessage."""
    parsed = parse_topic(topic)
    if parsed.stream is Stream.ACK:
        raise RejectedMessage("devices may not publish on the ack stream", unit=parsed.unit)
    if payload and len(payload) <= MAX_PAYLOAD_BYTES:
        fast = _decode_fast(parsed, payload)
        if fast is not None:
            return fast
    return _decode_full(parsed, payload)


def _decode_full(parsed: Topic, payload: bytes) -> DeviceMessage:
    """Every check in Python, each failure a RejectedMessage naming its reason and the header fields it could read."""
    header = RejectedMessage("", unit=parsed.unit, stream=parsed.stream)
    try:
        raw = _unpack_map(payload)
    except RejectedMessage as exc:
        exc.unit, exc.stream = parsed.unit, parsed.stream
        raise
    f = _Fields(raw, header)
    # Read boot and seq first, so that any later rejection can name the seq it settles.
    boot = f.integer("boot", 0, UINT32_MAX, required=False)
    header.boot = boot
    seq = f.integer("seq", 0, UINT32_MAX, required=False)
    header.seq = seq
    if boot is None:
        raise f.reject("missing field 'boot'")
    if seq is None:
        raise f.reject("missing field 'seq'")
    version = raw.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise f.reject(f"unsupported protocol version {version!r}")
    unit = f.text("unit", max_len=32)
    if unit != parsed.unit:
        raise f.reject(f"unit {unit!r} in payload differs from topic unit {parsed.unit!r}")
    ts = f.req_int("ts", MIN_TS_US, MAX_TS_US)
    return _DECODERS[parsed.stream](f, raw, parsed.unit, boot, seq, ts)


def _header(msg: DeviceMessage) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "unit": msg.unit, "boot": msg.boot, "seq": msg.seq, "ts": msg.ts}


def encode_device_message(msg: DeviceMessage) -> bytes:
    """Encode a device message as protocol v1 msgpack (what firmware sends)."""
    body = _header(msg)
    if isinstance(msg, EcgFrame):
        body.update(fs=msg.fs, leads=list(msg.leads), lsb_uv=msg.lsb_uv, n=msg.n, data=msg.data)
    elif isinstance(msg, Vitals):
        for key in (*VITAL_FIELDS, "nibp_ts"):
            value = getattr(msg, key)
            if value is not None:
                body[key] = value
    elif isinstance(msg, GpsFix):
        body.update(lat=msg.lat, lon=msg.lon)
        for key in ("speed", "heading", "acc"):
            value = getattr(msg, key)
            if value is not None:
                body[key] = value
    else:
        body["kind"] = msg.kind.value
        body.update(msg.detail)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def encode_acks(acks: Sequence[Ack]) -> bytes:
    """One unit's acks, one per (boot, stream) at most, in one payload (docs/protocol.md, "Acknowledgement")."""
    packed: bytes = msgpack.packb(
        {
            "v": PROTOCOL_VERSION,
            "acks": [_ack_entry(a) for a in acks],
        },
        use_bin_type=True,
    )
    return packed


def _ack_entry(a: Ack) -> dict[str, object]:
    entry: dict[str, object] = {"boot": a.boot, "stream": a.stream.value, "upto": a.upto, "rejected": list(a.rejected)}
    if a.held:  # only while a seq is missing: the usual ack stays as it was
        entry["held"] = [list(r) for r in a.held]
    return entry


def decode_acks(payload: bytes) -> list[Ack]:
    """Decode a center → device ack message; raises RejectedMessage for anything malformed."""
    raw = _unpack_map(payload)
    if raw.get("v") != PROTOCOL_VERSION:
        raise RejectedMessage(f"unsupported protocol version {raw.get('v')!r}", stream=Stream.ACK)
    entries = raw.get("acks")
    if type(entries) is not list or not entries:
        raise RejectedMessage("field 'acks' must be a non-empty list", stream=Stream.ACK)
    return [_decode_ack(entry) for entry in entries]


def _decode_ack(entry: object) -> Ack:
    if type(entry) is not dict:
        raise RejectedMessage("each of 'acks' must be a map", stream=Stream.ACK)
    f = _Fields(entry, RejectedMessage("", stream=Stream.ACK))
    stream_name = f.req_text("stream")
    try:
        stream = Stream(stream_name)
    except ValueError:
        raise f.reject(f"unknown stream {stream_name!r}") from None
    rejected = entry.get("rejected", [])
    if type(rejected) is not list or any(type(s) is not int or not 0 <= s <= UINT32_MAX for s in rejected):
        raise f.reject("field 'rejected' must be a list of seqs")
    upto = f.req_int("upto", 0, UINT32_MAX)
    held = entry.get("held", [])
    if type(held) is not list or not all(_is_range(r) for r in held):
        raise f.reject("field 'held' must be a list of [first, last] seq ranges")
    ranges = [(r[0], r[1]) for r in held]
    missing = upto + 1  # a seq below each range that the center still waits for
    for first, last in ranges:
        if first <= missing:
            raise f.reject("ranges of 'held' must ascend above 'upto' + 1, each after a missing seq")
        missing = last + 1
    return Ack(boot=f.req_int("boot", 0, UINT32_MAX), stream=stream, upto=upto, rejected=tuple(rejected),
               held=tuple(ranges))  # fmt: skip


def _is_range(r: object) -> bool:
    return type(r) is list and len(r) == 2 and all(type(s) is int and 0 <= s <= UINT32_MAX for s in r) and r[0] <= r[1]
