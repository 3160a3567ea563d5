"""The center's internal bus: how the gateway and the clinical loop hand derived state to consoles.

The bus is a set of MQTT topics under `center/v1/` on the same broker, writable only by the center's accounts (see
the broker ACL in emergency/stack/broker.py). Running it on the broker lets several gateway and console processes
share it without either knowing the other.

Live telemetry is not on it: a console subscribes to the devices' own topics (`ems/v1/{unit}/{stream}`, read-only
for its account) and validates each message with the codec the gateway uses, so live data never waits on the
gateway or the database, and the broker carries each message once to each reader (decision 45). A unit's 12-lead
(~97 % of the live bytes) reaches a console only while one of its clients shows that unit: the console subscribes
to that one topic meanwhile.

- `center/v1/link/{unit}`: msgpack `LinkState` when a unit goes silent or resumes (QoS 1, retained, so a console
  that starts later still knows).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgpack

BUS_ROOT = "center/v1"
LINK_FILTER = f"{BUS_ROOT}/link/+"
# The consoles' watch lists, which gateways read before decision 45: a gateway's persistent session may still hold
# the subscription.
FORMER_WATCH_FILTER = f"{BUS_ROOT}/watch/+"
_LINK_PREFIX = f"{BUS_ROOT}/link/"


def link_topic(unit: str) -> str:
    return f"{_LINK_PREFIX}{unit}"


def is_link_topic(topic: str) -> bool:
    return topic.startswith(_LINK_PREFIX)


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
