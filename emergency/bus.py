"""The center's internal bus: how the gateway hands validated data and derived state to consoles.

The bus is a set of MQTT topics under `center/v1/` on the same broker, writable only by the gateway's account and
readable only by the console's (see the broker ACL in emergency/stack/broker.py). Running it on the broker lets
several gateway and console processes share it without either knowing the other.

- `center/v1/live/{unit}/{stream}`: the device's own protocol v1 payload, republished unchanged once the codec has
  validated it, before it is committed (live data never waits on the database). QoS 0: a console that misses a
  live frame shows the next one; nothing durable depends on it.
- `center/v1/link/{unit}`: msgpack `LinkState` when a unit goes silent or resumes (QoS 1, retained, so a console
  that starts later still knows).
- `center/v1/watch/{console}`: the units whose 12-lead a console process shows (msgpack list; QoS 1, retained,
  written by that console, cleared by its will when it goes). The gateway forwards a unit's ECG only while some
  console watches it: ECG is ~97 % of the live bytes, and a waveform nobody shows need not cross the bus.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from emergency.protocol import Stream

BUS_ROOT = "center/v1"
LIVE_FILTER = f"{BUS_ROOT}/live/+/+"
LINK_FILTER = f"{BUS_ROOT}/link/+"
WATCH_FILTER = f"{BUS_ROOT}/watch/+"
_WATCH_PREFIX = f"{BUS_ROOT}/watch/"


def live_topic(unit: str, stream: Stream) -> str:
    return f"{BUS_ROOT}/live/{unit}/{stream.value}"


def link_topic(unit: str) -> str:
    return f"{BUS_ROOT}/link/{unit}"


def watch_topic(console: str) -> str:
    return f"{_WATCH_PREFIX}{console}"


def is_watch_topic(topic: str) -> bool:
    return topic.startswith(_WATCH_PREFIX)


def encode_watch(units: Iterable[str]) -> bytes:
    packed: bytes = msgpack.packb(sorted(units))
    return packed


def decode_watch(payload: bytes) -> frozenset[str]:
    """The units a console watches; an empty payload (the retained message cleared) watches none. Raises ValueError
    on anything else than a msgpack list of strings."""
    if not payload:
        return frozenset()
    try:
        units = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"watch list is not msgpack: {exc}") from exc
    if not isinstance(units, list) or not all(isinstance(u, str) for u in units):
        raise ValueError("watch list is not a list of unit ids")
    return frozenset(units)


class LinkCondition(enum.StrEnum):
    LIVE = "live"
    SILENT = "silent"


@dataclass(frozen=True, slots=True)
class LinkState:
    """A unit's telemetry link as the gateway sees it; `since` is the receive time (µs, center clock)."""

    unit: str
    condition: LinkCondition
    since: int
    last_rx: int

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(
            {
                "unit": self.unit,
                "condition": self.condition.value,
                "since": self.since,
                "last_rx": self.last_rx,
            }
        )
        return packed

    @classmethod
    def decode(cls, payload: bytes) -> LinkState:
        """Decode a bus payload; the bus is written only by the gateway, so malformed input is a bug here."""
        raw = msgpack.unpackb(payload, raw=False)
        return cls(raw["unit"], LinkCondition(raw["condition"]), int(raw["since"]), int(raw["last_rx"]))


def parse_bus_topic(topic: str) -> tuple[str, str, str | None]:
    """`center/v1/live/U/S` → ("live", U, S); `center/v1/link/U` → ("link", U, None)."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[2] == "live":
        return "live", parts[3], parts[4]
    if len(parts) == 4 and parts[2] == "link":
        return "link", parts[3], None
    raise ValueError(f"not a bus topic: {topic!r}")


# -- the clinical loop's records ------------------------------------------------------------------------------------
# `center/v1/care/{kind}/{key}`: JSON snapshots of care records (emergency/care/_model.py), QoS 1, written by the
# clinical loop and by consoles (people's changes), read by both. A snapshot is the whole record as it is now, so a
# reader that missed one is corrected by the next; readers seed from the store when they start.

CARE_FILTER = f"{BUS_ROOT}/care/#"


class CareKind(enum.StrEnum):
    INCIDENT = "incident"
    ENCOUNTER = "encounter"
    ALERT = "alert"
    ACTIVATION = "activation"


def care_topic(kind: CareKind, key: int | str) -> str:
    return f"{BUS_ROOT}/care/{kind.value}/{key}"


def parse_care_topic(topic: str) -> CareKind:
    parts = topic.split("/")
    if len(parts) != 5 or parts[2] != "care":
        raise ValueError(f"not a care topic: {topic!r}")
    return CareKind(parts[3])
