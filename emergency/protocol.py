"""Wire protocol v1: the typed messages that ambulance devices and the center exchange over MQTT.

These types are the only shapes that cross the wire; `emergency.codec` is the only place that turns bytes into
them and back. The contract is written down for device makers in docs/protocol.md; keep the two in step.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

PROTOCOL_VERSION = 1
TOPIC_ROOT = "ems/v1"
UNIT_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")

MAX_PAYLOAD_BYTES = 64 * 1024
UINT32_MAX = 2**32 - 1


class Stream(enum.StrEnum):
    """The streams of one unit. All but `ack` flow device → center."""

    ECG = "ecg"
    VITALS = "vitals"
    GPS = "gps"
    EVENT = "event"
    ACK = "ack"


DEVICE_STREAMS: tuple[Stream, ...] = (Stream.ECG, Stream.VITALS, Stream.GPS, Stream.EVENT)

# Standard 12 leads, then right-sided and posterior leads (V3R/V4R for right-ventricular infarction,
# V7–V9 for posterior infarction), which crews record when the 12-lead suggests them.
STANDARD_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
EXTRA_LEADS: tuple[str, ...] = ("V3R", "V4R", "V5R", "V7", "V8", "V9")
ALLOWED_LEADS: frozenset[str] = frozenset(STANDARD_LEADS + EXTRA_LEADS)


def device_topic(unit: str, stream: Stream) -> str:
    """The MQTT topic a unit publishes `stream` on (or, for `ack`, the one it reads)."""
    return f"{TOPIC_ROOT}/{unit}/{stream.value}"


# The device messages are frozen msgspec Structs, not frozen dataclasses: one is built per message the gateway takes,
# in 0.1 µs against 1.1 µs for nine fields (decision 37). Compared, hashed and pickled like dataclasses.
class EcgFrame(msgspec.Struct, frozen=True, gc=False):
    """`n` samples per lead; `data` is int16 little-endian, lead-major, exactly as the device sent it.

    Not tracked by the garbage collector (`gc=False`): nothing it holds can lead back to it, so it is in no cycle,
    and the frames a fleet's rings keep would otherwise all be walked by each young collection (decision 41)."""

    unit: str
    boot: int
    seq: int
    ts: int  # device clock, µs since the Unix epoch, of the first sample
    fs: float
    leads: tuple[str, ...]
    lsb_uv: float
    n: int
    data: bytes

    stream = Stream.ECG


class Vitals(msgspec.Struct, frozen=True):
    """One set of vital signs; a field is None when the monitor did not report it."""

    unit: str
    boot: int
    seq: int
    ts: int
    hr: float | None = None
    sbp: float | None = None
    dbp: float | None = None
    map: float | None = None
    spo2: float | None = None
    rr: float | None = None
    temp: float | None = None
    etco2: float | None = None
    nibp_ts: int | None = None  # when the cuff reading (sbp/dbp/map) was taken

    stream = Stream.VITALS


class GpsFix(msgspec.Struct, frozen=True):
    unit: str
    boot: int
    seq: int
    ts: int
    lat: float
    lon: float
    speed: float | None = None  # m/s
    heading: float | None = None  # degrees from true north
    acc: float | None = None  # metres, horizontal

    stream = Stream.GPS


class EventKind(enum.StrEnum):
    """Crew and device events. Each kind's fields: `emergency.codec.EVENT_FIELDS` and docs/protocol.md."""

    DEVICE_START = "device_start"
    STATUS = "status"
    PATIENT_CONTACT = "patient_contact"
    CHIEF_COMPLAINT = "chief_complaint"
    FINDING = "finding"
    TREATMENT = "treatment"
    TRANSFER_OF_CARE = "transfer_of_care"
    DEVICE_ALARM = "device_alarm"
    OUTBOX_DROP = "outbox_drop"


class FindingCode(enum.StrEnum):
    """Finding codes the center reads (others are stored and shown as free text). docs/protocol.md gives each one's
    `text`/`value`/`at` convention."""

    AVPU = "avpu"  # text: A, C (new confusion), V, P or U
    SUPPLEMENTAL_O2 = "supplemental_o2"  # value: litres/min, 0 = off
    SPO2_SCALE_2 = "spo2_scale_2"  # hypercapnic respiratory failure: NEWS2 SpO2 scale 2 applies
    RACE = "race"  # value: RACE score 0–9
    LAST_KNOWN_WELL = "last_known_well"  # at: µs since the epoch
    GCS = "gcs"  # value: 3–15
    TRAUMA_CRITERIA = "trauma_criteria"  # text: the field-triage criterion met
    SYMPTOM_ONSET = "symptom_onset"  # at: µs since the epoch


class UnitStatus(enum.StrEnum):
    AVAILABLE = "available"
    DISPATCHED = "dispatched"
    EN_ROUTE = "en_route"
    ON_SCENE = "on_scene"
    TRANSPORTING = "transporting"
    AT_DESTINATION = "at_destination"
    OUT_OF_SERVICE = "out_of_service"


class DeviceEvent(msgspec.Struct, frozen=True):
    """A crew or device event; `detail` holds the kind's own fields (see `emergency.codec.EVENT_FIELDS`)."""

    unit: str
    boot: int
    seq: int
    ts: int
    kind: EventKind
    detail: Mapping[str, str | int | float | bool] = msgspec.field(default_factory=dict)

    stream = Stream.EVENT


DeviceMessage = EcgFrame | Vitals | GpsFix | DeviceEvent


@dataclass(frozen=True, slots=True)
class OutboxDrop:
    """What a device gave up from its outbox: `first_seq..last_seq` (inclusive) of `stream` in boot `of_boot`."""

    of_boot: int
    stream: Stream
    first_seq: int
    last_seq: int
    reason: str

    @classmethod
    def from_event(cls, event: DeviceEvent) -> OutboxDrop:
        d = event.detail
        return cls(
            of_boot=int(d.get("of_boot", event.boot)),
            stream=Stream(str(d["stream"])),
            first_seq=int(d["first_seq"]),
            last_seq=int(d["last_seq"]),
            reason=str(d.get("reason", "")),
        )


@dataclass(frozen=True, slots=True)
class Ack:
    """Center → device: every message of (unit, boot, stream) with seq ≤ `upto` is settled.

    Settled means durably committed, or rejected and recorded; `rejected` lists the seqs among them that were
    rejected. `upto` is -1 when nothing is settled yet (never sent on the wire, see the codec). `held`: ranges
    (first, last), ascending, of seqs above `upto + 1` settled too while the center waits for a missing one, so that
    the device resends only what is missing (docs/protocol.md, "Held ranges").
    """

    boot: int
    stream: Stream
    upto: int
    rejected: tuple[int, ...] = ()
    held: tuple[tuple[int, int], ...] = ()
