"""Which gateway process owns which unit: a stable hash of the unit id, so one unit's messages always reach the
same process (its ack watermarks, its silence monitor and its clinical-loop state live there).

MQTT topic filters cannot express a hash, and mosquitto's shared subscriptions deal messages round-robin, not by
topic; so a partitioned gateway subscribes to each unit it owns by name, from the provisioning registry, and
picks up newly provisioned units as they appear.

A gateway's broker session is persistent and outlives a change of the partition count, with the subscriptions it
held: so a partitioned gateway leaves, at each connect, the subscriptions of units it no longer owns (and the
unpartitioned gateway's wildcards), and leaves to their owner any message that still reaches it for one of them
(decision 43).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from emergency.codec import RejectedMessage, parse_topic
from emergency.protocol import DEVICE_STREAMS, Stream, device_topic


def _unit_hash(unit: str) -> int:
    """The one hash both splits are made from: partitions across processes, lanes within one."""
    return zlib.crc32(unit.encode())


def partition_of(unit: str, count: int) -> int:
    """The partition of `unit` among `count`; the same in every process and across restarts."""
    return _unit_hash(unit) % count


@functools.lru_cache(maxsize=16_384)
def lane_of(unit: str, partitions: int, lanes: int) -> int:
    """Which of a gateway's `lanes` commit lanes takes `unit` (decision 38): the same hash as the partition, with the
    partition's share taken out first, so that the units of one partition spread over every lane."""
    return _unit_hash(unit) // partitions % lanes


@functools.lru_cache(maxsize=16_384)
def topic_partition(topic: str, count: int) -> int | None:
    """The partition of the unit a device topic names; None for a topic that names none (the codec rejects it)."""
    try:
        return partition_of(parse_topic(topic).unit, count)
    except RejectedMessage:
        return None


@dataclass(frozen=True, slots=True)
class Partition:
    index: int
    count: int
    units: Callable[[], Iterable[str]]  # the provisioning registry

    def owned(self) -> set[str]:
        return {u for u in self.units() if partition_of(u, self.count) == self.index}

    def others(self) -> set[str]:
        """The provisioned units another partition owns."""
        return {u for u in self.units() if partition_of(u, self.count) != self.index}

    def takes(self, topic: str) -> bool:
        """Whether a message on `topic` is this partition's to ingest: its unit's, or no unit's (to be rejected)."""
        return topic_partition(topic, self.count) in (self.index, None)


def unit_filters(units: Iterable[str], streams: Sequence[Stream] = DEVICE_STREAMS) -> list[str]:
    """The device topics of `units` for `streams` (never their ack topic, which the gateway writes)."""
    return [device_topic(unit, stream) for unit in sorted(units) for stream in streams]


def fleet_filters(streams: Sequence[Stream] = DEVICE_STREAMS) -> list[str]:
    """The unpartitioned gateway's subscriptions: every unit's device topics of `streams`."""
    return [device_topic("+", stream) for stream in streams]
