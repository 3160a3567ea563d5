"""The gateway's Prometheus metrics, in a registry of its own so that several gateways can share a process."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics:
    def __init__(self, observer_queues: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        if observer_queues is not None:
            r.register(_ObserverQueues(observer_queues))
        self.received = Counter("emergency_gateway_received", "Device messages received", ["stream"], registry=r)
        self.stored = Counter(
            "emergency_gateway_stored", "Messages committed for the first time", ["stream"], registry=r
        )
        self.duplicates = Counter(
            "emergency_gateway_duplicates",
            "Messages already stored (retransmissions)",
            ["stream"],
            registry=r,
        )
        self.not_owned = Counter(
            "emergency_gateway_not_owned",
            "Messages for another partition's unit, left unacknowledged for the device to resend to their owner",
            registry=r,
        )
        self.rejected = Counter("emergency_gateway_rejected", "Messages rejected and recorded", ["stream"], registry=r)
        self.acks = Counter(
            "emergency_gateway_acks_published",
            "Ack messages published to devices (one per unit and flush, with every stream of the unit)",
            registry=r,
        )
        self.store_errors = Counter(
            "emergency_gateway_store_errors", "Failed commits (retried)", ["retryable"], registry=r
        )
        self.link_events = Counter("emergency_gateway_link_events", "Link events recorded", ["kind"], registry=r)
        self.commit_seconds = Histogram(
            "emergency_gateway_commit_seconds",
            "Time to commit one batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "emergency_gateway_batch_messages",
            "Messages per committed batch",
            buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.lag_seconds = BatchHistogram(
            "emergency_gateway_receive_to_commit_seconds",
            "From receipt at the gateway to commit",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # The device's own timestamp of a message to its commit: publish→commit where the device's clock is the
        # center's (a skewed clock shifts it by its offset). bench/scale.py reads the commit target from it.
        self.device_to_commit_seconds = BatchHistogram(
            "emergency_gateway_device_to_commit_seconds",
            "From the device's timestamp of a message to its commit (the device clock's offset included)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.loop_lag_seconds = Histogram(
            "emergency_gateway_loop_lag_seconds",
            "How late the event loop ran a timer: how long ingest, alerting and commits waited for the process",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.reader_wait_seconds = Counter(
            "emergency_gateway_reader_wait_seconds",
            "Time a session's reader waited for room in a commit lane, by kind (clinical, twelve_lead): while it "
            "waits, the broker holds what comes next in that session",
            ["kind"],
            registry=r,
        )
        self.pending = Gauge("emergency_gateway_pending_messages", "Received, not yet committed", registry=r)
        self.units = Gauge("emergency_gateway_units", "Units heard from since start", registry=r)
        self.units_silent = Gauge("emergency_gateway_units_silent", "Units currently silent", registry=r)
        self.gaps_open = Gauge("emergency_gateway_seq_gaps_open", "Streams with an open seq gap", registry=r)
        self.mqtt_connected = Gauge("emergency_gateway_mqtt_connected", "1 when connected to the broker", registry=r)


class _ObserverQueues(Collector):
    """The observer's (the clinical loop's) queues, read when /metrics is scraped: nothing is counted per message."""

    def __init__(self, queues: Callable[[], Mapping[str, int]]) -> None:
        self._queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "emergency_gateway_observer_queued",
            "What waits in the clinical loop's own queues, by queue: care_writes (records for the store, written one "
            "after another), care_snapshots (records for the consoles, until the broker has them), held_alerts "
            "(alerts waiting for an id while the store is away)",
            labels=["queue"],
        )
        for name, length in self._queues().items():
            family.add_metric([name], length)
        yield family


class BatchHistogram(Collector):
    """A Prometheus histogram observed a batch of values at a time. prometheus_client's `Histogram.observe` takes
    one value and two locks per call: once per message, that was ~2 % of the gateway. Exposed through the library's
    own collector interface, so /metrics shows it as any other histogram. Not thread-safe: the gateway observes and
    serves /metrics from one event loop."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry) -> None:
        self._name, self._documentation = name, documentation
        self._bounds = [*sorted(buckets), math.inf]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds, total = self._counts, self._bounds, 0.0
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1  # the first bucket whose upper bound holds it (le)
            total += value
        self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, count in zip(self._bounds, self._counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(self._name, self._documentation, buckets=buckets, sum_value=self._sum)
