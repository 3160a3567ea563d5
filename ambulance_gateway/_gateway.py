"""The ambulance gateway: subscribe → validate → batch-commit → acknowledge.

Guarantees (see docs/protocol.md): a message is acknowledged only after it is durably committed (or rejected and
recorded), each (unit, boot, stream, seq) is stored once, and no input can stop the gateway.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from ambulance_gateway._acks import MAX_PENDING_PER_KEY, AckTracker, Key, Loss, Settlement, merged
from ambulance_gateway._metrics import GatewayMetrics
from ambulance_gateway._monitor import LinkChange, SilenceMonitor
from ambulance_gateway._partition import Partition, fleet_filters, lane_of, unit_filters
from emergency.bus import FORMER_WATCH_FILTER, LinkCondition, LinkState, link_topic
from emergency.codec import RejectedMessage, decode_device_message, encode_acks
from emergency.mqtt import MqttLink, MqttLinkError, backoff_delay
from emergency.protocol import (
    DEVICE_STREAMS,
    Ack,
    DeviceEvent,
    DeviceMessage,
    EventKind,
    OutboxDrop,
    Stream,
    device_topic,
)
from emergency.settings import GatewaySettings, MqttEndpoint
from emergency.store import (
    CommitResult,
    IngestBatch,
    LinkEvent,
    Received,
    Rejection,
    Store,
    StoreError,
    Watermark,
)

log = logging.getLogger(__name__)

_SESSION_EXPIRY_S = 24 * 3600
# Link events waiting to be recorded. They are observations about the link, not patient data: if the database is
# unreachable for so long that this fills, the oldest observations are dropped (and counted).
_LINK_EVENTS_MAX = 10_000
_NOT_OWNED_LOGGED_MAX = 1_000  # topics of other partitions logged, once each
_LOOP_PROBE_S = 0.1  # how often the event loop's lag is measured
_SUBSCRIBE_CHUNK = 500  # topic filters per SUBSCRIBE packet when following a partition
_ACK_SLOTS = 10  # the units' acks leave in this many turns per ack interval
_ECG_SUFFIX = "/" + Stream.ECG.value
# 12-lead frames a reader takes in one step of the event loop (~30 µs each): a 12-lead backlog is read in steps of
# a few milliseconds, between which the clinical session's reader and the writers run (decision 46).
_FRAMES_PER_STEP = 250


@dataclass(frozen=True, slots=True)
class _Session:
    """One of the gateway's two persistent broker sessions (decision 46): the 12-lead's, and everything else's, so
    that a vitals message is read, and its alert raised, while the 12-lead waits for the database."""

    name: str
    client_suffix: str  # added to the gateway's client id
    streams: tuple[Stream, ...]
    defers: bool  # when both sessions' readers are woken at once, this one lets the other go first


_CLINICAL = _Session("clinical", "", (Stream.VITALS, Stream.GPS, Stream.EVENT), defers=False)
_TWELVE_LEAD = _Session("12-lead", "-ecg", (Stream.ECG,), defers=True)
_SESSIONS = (_CLINICAL, _TWELVE_LEAD)


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)  # not frozen: per message, and frozen costs 0.6 µs more to make (decision 37)
class _Incoming:
    topic: str
    payload: bytes
    rx_us: int
    rx_mono: float
    outcome: Received | RejectedMessage
    lane: int  # the commit lane of its unit (decision 38); 0 for a rejection naming no unit


class _Lane:
    """One commit lane's hand-off from the readers to its writer (decision 38): a bounded queue per kind. When the
    writer falls behind, each kind's reader waits on its own queue, its link stops reading, and the broker holds the
    rest in that kind's session. The writer takes the clinical streams first (decision 48), so under overload the
    12-lead's storage falls behind, not a vitals message's commit and ack, and the clinical reader keeps reading."""

    def __init__(self, clinical_room: int, ecg_room: int, waited: Counter) -> None:
        self.clinical: asyncio.Queue[_Incoming] = asyncio.Queue(maxsize=clinical_room)
        self.twelve_lead: asyncio.Queue[_Incoming] = asyncio.Queue(maxsize=ecg_room)
        self._waited = (waited.labels("clinical"), waited.labels("twelve_lead"))  # seconds, by kind
        self._arrived = asyncio.Event()
        self._taken = (0, 0)  # of each queue, in the batch its writer holds

    def of(self, *, twelve_lead: bool) -> asyncio.Queue[_Incoming]:
        return self.twelve_lead if twelve_lead else self.clinical

    def qsize(self) -> int:
        return self.clinical.qsize() + self.twelve_lead.qsize()

    async def put(self, item: _Incoming, *, twelve_lead: bool) -> None:
        """Waits only while this kind's queue is full. A coroutine per message costs ~0.5 µs."""
        queue = self.of(twelve_lead=twelve_lead)
        if queue.full():
            since = time.monotonic()
            await queue.put(item)
            self._waited[twelve_lead].inc(time.monotonic() - since)
        else:
            queue.put_nowait(item)
        self._arrived.set()

    async def take(self, max_items: int, delay_s: float) -> list[_Incoming]:
        """The next batch: up to `max_items`, the clinical streams' first. Takes what is there as soon as there is
        something, then, unless that is a whole batch, what comes within `delay_s`. Each stream keeps its order: a
        stream is in one queue only."""
        while not self.qsize():
            self._arrived.clear()
            await self._arrived.wait()
        items: list[_Incoming] = []
        self._move(items, max_items)
        if len(items) < max_items:
            await asyncio.sleep(delay_s)  # let a batch form; under load the queues already hold one
            self._move(items, max_items)
        return items

    def _move(self, items: list[_Incoming], max_items: int) -> None:
        clinical, twelve_lead = self._taken
        while len(items) < max_items and not self.clinical.empty():
            items.append(self.clinical.get_nowait())
            clinical += 1
        while len(items) < max_items and not self.twelve_lead.empty():
            items.append(self.twelve_lead.get_nowait())
            twelve_lead += 1
        self._taken = (clinical, twelve_lead)

    def done(self) -> None:
        """The batch last taken is settled (committed, or left to the devices to resend)."""
        clinical, twelve_lead = self._taken
        for _ in range(clinical):
            self.clinical.task_done()
        for _ in range(twelve_lead):
            self.twelve_lead.task_done()
        self._taken = (0, 0)

    async def join(self) -> None:
        await self.clinical.join()
        await self.twelve_lead.join()


class Observer(Protocol):
    """What the gateway hands every accepted message and link observation to, synchronously and before the commit
    (the clinical loop, `emergency.care.ClinicalLoop`). It must not block; an exception is logged, never fatal."""

    def observe(self, message: DeviceMessage, rx: int, *, center_behind: bool = False) -> None: ...

    def observe_link(self, event: LinkEvent) -> None: ...

    def queues(self) -> Mapping[str, int]:
        """The length of each of its own queues by name, for /metrics (read when scraped)."""
        ...


class Gateway:
    """`async with Gateway(settings, mqtt, store) as gateway:` runs until the block exits."""

    def __init__(
        self,
        settings: GatewaySettings,
        mqtt: MqttEndpoint,
        store: Store,
        *,
        observer: Observer | None = None,
        partition: Partition | None = None,
    ) -> None:
        self._settings = settings
        self._observer = observer
        # None: this gateway takes every unit. Otherwise only the units of its partition, subscribed by name.
        self._partition = partition if partition is not None and partition.count > 1 else None
        self._subscribed_units: dict[_Session, set[str]] = {session: set() for session in _SESSIONS}
        self._not_owned_seen: set[str] = set()  # topics of another partition that reached this one (logged once)
        self._mqtt = mqtt
        self._store = store
        self.metrics = GatewayMetrics(observer.queues if observer is not None else None)
        self._received = {stream: self.metrics.received.labels(stream.value) for stream in Stream}
        self._received_unreported = dict.fromkeys(Stream, 0)  # counted per message, reported per read
        self._tracker = AckTracker()
        self._silence = SilenceMonitor(settings.silence_after_s)
        # Readers → writers hand-off, per commit lane (decision 38) a bounded queue per kind (decision 48). When one
        # is full, its reader waits, its link's inbox fills and it stops reading the socket, so the broker holds the
        # rest in that persistent session (docs/protocol.md). A lane holds `room` 12-lead frames and twice as many
        # messages of the other streams, which its writer takes first: while the clinical reader waits, a violating
        # vitals message waits with it, so its room covers seconds of commits stalled (small messages, ~1 KB each).
        room = max(1, settings.queue_max_messages // settings.commit_lanes)
        self._lanes = [_Lane(2 * room, room, self.metrics.reader_wait_seconds) for _ in range(settings.commit_lanes)]
        self._partitions = partition.count if partition is not None else 1
        self._link_events: collections.deque[LinkEvent] = collections.deque(maxlen=_LINK_EVENTS_MAX)
        self._link_states: dict[str, LinkState] = {}  # the latest told of each unit: bounded by the fleet
        # Committed but not yet announced: at most one ack per (unit, boot, stream), so bounded by the fleet. Units
        # are spread over _ACK_SLOTS, one flushed at a time, so that the fleet's acks do not leave in one burst.
        self._outgoing_acks: list[dict[str, dict[tuple[int, Stream], Ack]]] = [{} for _ in range(_ACK_SLOTS)]
        self._ack_slot = 0  # the slot the next flush sends
        self._links: dict[_Session, MqttLink] = {}  # each session's link while connected
        self._subscribed = {session: asyncio.Event() for session in _SESSIONS}
        self._store_failing = False
        self._tasks: asyncio.TaskGroup | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._background: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.metrics_url = ""

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._start_http()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._readers = [
            self._tasks.create_task(self._read_forever(session), name=f"gateway.mqtt[{session.name}]")
            for session in _SESSIONS
        ]
        self._background = [
            *(
                self._tasks.create_task(self._write_forever(n), name=f"gateway.writer[{n}]")
                for n in range(len(self._lanes))
            ),
            self._tasks.create_task(self._monitor_forever(), name="gateway.monitor"),
            self._tasks.create_task(self._save_watermarks_forever(), name="gateway.watermarks"),
            self._tasks.create_task(self._measure_loop_forever(), name="gateway.loop-lag"),
        ]
        if self._settings.ack_interval_s > 0:
            self._background.append(self._tasks.create_task(self._flush_acks_forever(), name="gateway.acks"))
        if self._partition is not None:
            self._background.append(self._tasks.create_task(self._partition_forever(), name="gateway.partition"))
        try:
            async with asyncio.timeout(30):
                for subscribed in self._subscribed.values():
                    await subscribed.wait()
        except TimeoutError:
            log.warning(
                "gateway not yet connected to the broker at %s:%s; still trying",
                self._mqtt.host,
                self._mqtt.port,
            )
        log.info("gateway started; metrics at %s", self.metrics_url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Order matters: stop taking messages first, then commit what was taken, then stop the rest. Messages
        # still inside the MQTT client were never acknowledged, so devices send them again later.
        try:
            for reader in self._readers:
                reader.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)
            await self._drain()
            for task in self._background:
                task.cancel()
            if self._tasks is not None:
                await self._tasks.__aexit__(None, None, None)
            await self._save_watermarks()  # spares the next start deriving them (decision 40)
        finally:
            self._tasks, self._readers, self._background = None, [], []
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
            log.info("gateway stopped")

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(10):
                for lane in self._lanes:
                    await lane.join()
        except TimeoutError:
            log.warning("gateway stopped with %d messages uncommitted; devices will resend them", self._pending())

    # -- reading -----------------------------------------------------------------------------------------------

    @property
    def _client(self) -> MqttLink | None:
        """The clinical session's link while connected: it also writes acks and link states."""
        return self._links.get(_CLINICAL)

    def _link(self, session: _Session) -> MqttLink:
        # Not aiomqtt: the ingest path reads and writes in batches (docs/decisions.md, emergency/mqtt/_link.py).
        return MqttLink(
            self._mqtt,
            client_id=self._settings.client_id + session.client_suffix,
            clean_start=False,  # a persistent session: the broker queues for us while we restart
            session_expiry_s=_SESSION_EXPIRY_S,
            max_pending=self._settings.queue_max_messages,
        )

    async def _read_forever(self, session: _Session) -> None:
        """Read one session's messages into the commit lanes, reconnecting whenever its connection is lost."""
        attempt = 0
        while True:
            try:
                async with self._link(session) as client:
                    await self._subscribe(client, session)
                    self._links[session] = client
                    attempt = 0
                    self.metrics.mqtt_connected.set(int(len(self._links) == len(_SESSIONS)))
                    self._subscribed[session].set()
                    log.info("gateway's %s session connected to %s:%s", session.name, self._mqtt.host, self._mqtt.port)
                    if session is _CLINICAL:
                        self._publish_link_states(client)
                    async for batch in client.batches():
                        # What waited while the gateway was busy: its 12-lead frames after the rest, so that a
                        # vitals message or a crew event that raises an alert does not wait behind them (decision
                        # 31). Since decision 46 the 12-lead has its own session, whose reader steps back once per
                        # batch so that a clinical batch read in the same moment goes first; within a batch (what a
                        # session's broker queued before then, say) frames still go last. Each stream keeps its order.
                        if session.defers:
                            await asyncio.sleep(0)
                        frames = []
                        for message in batch:
                            topic = message.topic
                            if self._partition is not None and not self._partition.takes(topic):
                                self._not_owned(topic)
                            elif topic.endswith(_ECG_SUFFIX):
                                frames.append(message)
                            else:
                                item = self._take(topic, message.payload)
                                await self._lanes[item.lane].put(item, twelve_lead=False)
                        for n, message in enumerate(frames, start=1):
                            item = self._take(message.topic, message.payload)
                            await self._lanes[item.lane].put(item, twelve_lead=True)
                            if n % _FRAMES_PER_STEP == 0:
                                await asyncio.sleep(0)  # a clinical batch that came meanwhile goes in between
                        self._report_received()
            except MqttLinkError as exc:
                log.warning("broker connection of the %s session lost (%s); reconnecting", session.name, exc)
            finally:
                self._links.pop(session, None)
                self.metrics.mqtt_connected.set(0)
            await asyncio.sleep(backoff_delay(attempt))
            attempt += 1

    async def _subscribe(self, client: MqttLink, session: _Session) -> None:
        """Subscribe `session` to its streams, and leave whatever else its persistent session may hold: another
        session's streams (before decision 46 one session took them all), other partitions' units (decision 43),
        and the consoles' former watch lists (decision 45). Unsubscribing what was never subscribed is no error."""
        others = tuple(s for s in DEVICE_STREAMS if s not in session.streams)
        leave = [FORMER_WATCH_FILTER]
        if self._partition is None:
            await client.unsubscribe([*leave, *fleet_filters(others)])
            await client.subscribe([(f, 1) for f in fleet_filters(session.streams)])
            return
        self._subscribed_units[session] = set()
        await self._follow_partition(client, session)
        leave += fleet_filters() + unit_filters(self._partition.others())
        leave += unit_filters(self._partition.owned(), others)
        for start in range(0, len(leave), _SUBSCRIBE_CHUNK):
            await client.unsubscribe(leave[start : start + _SUBSCRIBE_CHUNK])

    async def _follow_partition(self, client: MqttLink, session: _Session) -> None:
        """Subscribe `session` to the units of this gateway's partition that it does not yet follow."""
        assert self._partition is not None
        new = self._partition.owned() - self._subscribed_units[session]
        filters = unit_filters(new, session.streams)
        for start in range(0, len(filters), _SUBSCRIBE_CHUNK):
            await client.subscribe([(f, 1) for f in filters[start : start + _SUBSCRIBE_CHUNK]])
        if new:
            log.info(
                "partition %d/%d, %s session: following %d more units",
                self._partition.index,
                self._partition.count,
                session.name,
                len(new),
            )
        self._subscribed_units[session] |= new

    def _not_owned(self, topic: str) -> None:
        """A message for another partition's unit, queued in this session before it left that unit's subscription:
        left unacknowledged, for the device to resend to the unit's owner. Counted; logged once per topic."""
        self.metrics.not_owned.inc()
        if topic not in self._not_owned_seen and len(self._not_owned_seen) < _NOT_OWNED_LOGGED_MAX:
            self._not_owned_seen.add(topic)
            log.warning("a message on %s, which another partition owns, reached this one: left to its owner", topic)

    async def _partition_forever(self) -> None:
        """Pick up units provisioned while running (a registry read every few seconds; cheap, and rare to change)."""
        while True:
            await asyncio.sleep(self._settings.partition_refresh_s)
            for session, client in list(self._links.items()):
                try:
                    await self._follow_partition(client, session)
                except MqttLinkError as exc:
                    log.info("partition not refreshed in the %s session (%s); the reconnect will", session.name, exc)

    def _lane_of(self, unit: str | None) -> int:
        if unit is None or len(self._lanes) == 1:
            return 0
        return lane_of(unit, self._partitions, len(self._lanes))

    def _pending(self) -> int:
        """Messages taken and not yet committed, in every lane."""
        return sum(lane.qsize() for lane in self._lanes)

    def _take(self, topic: str, payload: bytes) -> _Incoming:
        rx_us, rx_mono = now_us(), time.monotonic()
        outcome: Received | RejectedMessage
        try:
            decoded = decode_device_message(topic, payload)
        except RejectedMessage as rejection:
            outcome = rejection
            lane = self._lane_of(rejection.unit)
            self.metrics.rejected.labels(rejection.stream.value if rejection.stream else "unknown").inc()
            log.debug("rejected %s: %s", topic, rejection.reason)
        else:
            outcome = Received(decoded, rx_us)
            lane = self._lane_of(decoded.unit)
            self._received_unreported[decoded.stream] += 1
            self._tell_observer(decoded, rx_us, self._lanes[lane], twelve_lead=decoded.stream is Stream.ECG)
            change = self._silence.heard(decoded.unit, rx_mono, rx_us)
            if change is not None:
                self._announce(change, rx_us)
        return _Incoming(topic, payload, rx_us, rx_mono, outcome, lane)

    def _report_received(self) -> None:
        """Counted in a plain dict per message; a Prometheus counter takes a lock per call."""
        for stream, count in self._received_unreported.items():
            if count:
                self._received[stream].inc(count)
                self._received_unreported[stream] = 0

    def _tell_observer(
        self,
        item: DeviceMessage | LinkEvent,
        rx_us: int = 0,
        lane: _Lane | None = None,
        *,
        twelve_lead: bool = False,
    ) -> None:
        if self._observer is None:
            return
        try:
            if isinstance(item, LinkEvent):
                self._observer.observe_link(item)
            else:
                # Behind: the unit's writer has half of this kind's room to commit, and the broker is holding what
                # comes next in this kind's session.
                queue = lane.of(twelve_lead=twelve_lead) if lane is not None else None
                behind = queue is not None and queue.qsize() >= queue.maxsize // 2
                self._observer.observe(item, rx_us, center_behind=behind)
        except Exception:
            # A bug in the clinical loop must not stop ingestion: the data is still stored and acknowledged.
            log.exception("observer failed on %s", item)

    def _link_event(self, event: LinkEvent) -> None:
        self._link_events.append(event)
        self._tell_observer(event)

    def _announce(self, change: LinkChange, at_us: int) -> None:
        """Record a link change and tell the consoles (retained, so a console started later knows too). Queued, not
        awaited: ingest never waits on the broker for it."""
        kind = "silent" if change.condition is LinkCondition.SILENT else "live"
        self._link_event(LinkEvent(at=at_us, unit=change.unit, kind=kind, detail={"last_rx_us": change.last_rx_us}))
        self.metrics.link_events.labels(kind).inc()
        state = self._link_states[change.unit] = LinkState(change.unit, change.condition, at_us, change.last_rx_us)
        client = self._client
        if client is None:
            return  # published with the others once connected; the event is recorded regardless
        if not client.publish_nowait(link_topic(change.unit), state.encode(), qos=1, retain=True):
            log.info("link state of %s not published (connection lost or outbox full)", change.unit)

    def _publish_link_states(self, client: MqttLink) -> None:
        """Every unit's latest link state again, retained, on connecting: one that changed while the gateway was
        disconnected would otherwise be missed until the unit's next change, and so would all of them on a broker
        restarted without its saved state (killed: it saves only when it stops, decision 54)."""
        for state in self._link_states.values():
            client.publish_nowait(link_topic(state.unit), state.encode(), qos=1, retain=True)

    # -- writing -----------------------------------------------------------------------------------------------

    async def _write_forever(self, n: int) -> None:
        """Commit lane `n`'s writer: batches from its queue, committed one after another."""
        lane = self._lanes[n]
        while True:
            items = await lane.take(self._settings.batch_max_messages, self._settings.batch_max_delay_s)
            try:
                await self._settle(items)
            finally:
                lane.done()
            self.metrics.pending.set(self._pending())

    async def _settle(self, items: list[_Incoming]) -> None:
        """Commit `items` (retrying while the database is unavailable), then acknowledge them."""
        received: list[Received] = []
        rejections: list[Rejection] = []
        settlements: list[Settlement] = []
        losses: list[Loss] = []
        loss_events: list[LinkEvent] = []
        cap = self._settings.raw_capture_bytes
        for item in items:
            outcome = item.outcome
            if isinstance(outcome, Received):
                m = outcome.message
                received.append(outcome)
                settlements.append(Settlement((m.unit, m.boot, m.stream), m.seq, rejected=False))
                if isinstance(m, DeviceEvent) and m.kind is EventKind.OUTBOX_DROP:
                    drop = OutboxDrop.from_event(m)
                    losses.append(Loss((m.unit, drop.of_boot, drop.stream), drop.first_seq, drop.last_seq))
                    loss_events.append(
                        LinkEvent(
                            at=item.rx_us,
                            unit=m.unit,
                            kind="data_loss",
                            stream=drop.stream,
                            boot=drop.of_boot,
                            first_seq=drop.first_seq,
                            last_seq=drop.last_seq,
                            detail={"reason": drop.reason},
                        )
                    )
            else:
                rejections.append(
                    Rejection(
                        rx_ts=item.rx_us,
                        topic=item.topic,
                        reason=outcome.reason,
                        raw=item.payload[:cap],
                        raw_len=len(item.payload),
                        unit=outcome.unit,
                        stream=outcome.stream,
                        boot=outcome.boot,
                        seq=outcome.seq,
                    )
                )
                if outcome.unit and outcome.stream and outcome.boot is not None and outcome.seq is not None:
                    key = (outcome.unit, outcome.boot, outcome.stream)
                    settlements.append(Settlement(key, outcome.seq, rejected=True))
        # A batch's preparation is a few milliseconds per phase, more on a busy machine: between the phases the
        # reader takes what arrived, so the clinical loop's alerts do not wait for all of them (decision 44).
        await asyncio.sleep(0)
        await self._seed({s.key for s in settlements} | {loss.key for loss in losses})
        plan = self._tracker.plan(settlements, losses)
        await asyncio.sleep(0)
        observed = self._take_link_events()
        link_events = [*loss_events, *observed]
        batch = IngestBatch(
            received=received,
            rejections=rejections,
            link_events=link_events,
        )
        try:
            result = await self._commit(batch)
        except StoreError as exc:
            if len(items) == 1:
                await self._refuse(items[0], exc)
                return
            # Not retryable: something in this batch is refused by the database. Halve it until the one
            # message responsible is found and recorded as rejected; the rest is committed normally.
            log.error("batch of %d refused by the store (%s); isolating the cause", len(items), exc)
            # The halves take the monitor's observations again and derive their own data losses afresh.
            self._link_events.extendleft(reversed(observed))
            middle = len(items) // 2
            await self._settle(items[:middle])
            await self._settle(items[middle:])
            return
        self._tracker.apply(plan)
        self._record(result, items)
        await asyncio.sleep(0)
        await self._acknowledge(plan.advanced, plan.replayed)

    async def _refuse(self, item: _Incoming, exc: StoreError) -> None:
        """The database refuses this one message: record it as rejected so the device is told, never stall."""
        outcome = item.outcome
        if not isinstance(outcome, Received):
            # Even the record of a rejection is refused: a bug in the store, not bad input. The message stays
            # unacknowledged, so its device sends it again once the bug is fixed.
            log.error("store refused the rejection of %s: %s", item.topic, exc, exc_info=exc)
            return
        m = outcome.message
        log.error("store refused %s seq %d of %s: %s", m.stream.value, m.seq, m.unit, exc, exc_info=exc)
        rejection = RejectedMessage(f"store refused: {exc}", unit=m.unit, stream=m.stream, boot=m.boot, seq=m.seq)
        await self._settle([_Incoming(item.topic, item.payload, item.rx_us, item.rx_mono, rejection, item.lane)])

    async def _seed(self, keys: set[Key]) -> None:
        """Start tracking the keys not yet seen: from the saved watermark, moved over what the store holds above it
        (a watermark is saved only every few seconds; decision 40)."""
        unknown = self._tracker.unknown(keys)
        if not unknown:
            return
        attempt = 0
        while True:
            try:
                saved = await self._store.watermarks(sorted(unknown))
                marks = {key: saved.get(key, -1) for key in unknown}
                record = await self._store.settled_above(marks, per_key=MAX_PENDING_PER_KEY)
                break
            except StoreError as exc:
                log.warning("cannot read ack watermarks (%s); retrying", exc)
            await asyncio.sleep(backoff_delay(attempt))
            attempt += 1
        for key, upto in marks.items():
            self._tracker.seed(key, upto)
        if record.settled or record.losses:
            settlements = [Settlement((s.unit, s.boot, s.stream), s.seq, s.rejected) for s in record.settled]
            losses = [Loss((x.unit, x.boot, x.stream), x.first, x.last) for x in record.losses]
            self._tracker.apply(self._tracker.plan(settlements, losses))

    async def _save_watermarks(self) -> None:
        marks = self._tracker.take_unsaved()
        if not marks:
            return
        try:
            await self._store.save_watermarks([Watermark(*key, upto) for key, upto in marks.items()])
        except StoreError as exc:
            # Nothing is at risk meanwhile: the store's record above the saved watermarks covers these.
            self._tracker.keep_unsaved(marks)
            log.warning("cannot save %d ack watermarks (%s); trying again later", len(marks), exc)
        except asyncio.CancelledError:
            self._tracker.keep_unsaved(marks)
            raise

    async def _save_watermarks_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.watermark_save_interval_s)
            await self._save_watermarks()

    async def _commit(self, batch: IngestBatch) -> CommitResult:
        """Commit, retrying with backoff while the database is unavailable; acks are withheld meanwhile."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                result = await self._store.commit(batch)
            except StoreError as exc:
                self.metrics.store_errors.labels(str(exc.retryable).lower()).inc()
                if not exc.retryable:
                    raise
                if not self._store_failing:
                    log.warning("database unavailable (%s); withholding acks and retrying", exc)
                self._store_failing = True
                await asyncio.sleep(backoff_delay(attempt))
                attempt += 1
                continue
            if self._store_failing:
                log.info("database available again; committed %d held messages", len(batch))
            self._store_failing = False
            self.metrics.commit_seconds.observe(time.monotonic() - started)
            return result

    def _record(self, result: CommitResult, items: list[_Incoming]) -> None:
        for stream, count in result.stored.items():
            self.metrics.stored.labels(stream.value).inc(count)
        for stream, count in result.duplicates.items():
            self.metrics.duplicates.labels(stream.value).inc(count)
        self.metrics.batch_size.observe(len(items))
        done, done_us = time.monotonic(), now_us()
        self.metrics.lag_seconds.observe_many([done - item.rx_mono for item in items])
        self.metrics.device_to_commit_seconds.observe_many(
            [(done_us - r.message.ts) / 1e6 for r in (item.outcome for item in items) if isinstance(r, Received)]
        )

    def _take_link_events(self) -> list[LinkEvent]:
        events = list(self._link_events)
        self._link_events.clear()
        return events

    async def _acknowledge(self, advanced: dict[Key, Ack], replayed: dict[Key, int]) -> None:
        acks = dict(advanced)
        for key, lowest in replayed.items():
            # A replay of settled seqs: the device missed our ack. Answer again, naming every rejection in the
            # range it may still hold, so that no rejected message is ever reported as stored.
            upto = self._tracker.watermark(key)
            try:
                rejected = await self._store.rejected_seqs(key[0], key[1], key[2], lowest, upto)
            except StoreError as exc:  # the device will replay again; no harm in answering later
                log.warning("cannot re-acknowledge %s (%s)", key, exc)
                acks.pop(key, None)
                continue
            acks[key] = Ack(boot=key[1], stream=key[2], upto=upto, rejected=tuple(rejected))
        self._queue_acks(acks.items())

    def _queue_acks(self, acks: Iterable[tuple[Key, Ack]]) -> None:
        for (unit, boot, stream), ack in acks:
            # Acks are cumulative: one per stream per interval carries what several batches settled.
            pending = self._outgoing_acks[hash(unit) % _ACK_SLOTS].setdefault(unit, {})
            earlier = pending.get((boot, stream))
            pending[(boot, stream)] = ack if earlier is None else merged(earlier, ack)
        if self._settings.ack_interval_s == 0:
            for slot in range(_ACK_SLOTS):
                self._flush_acks(slot)

    def _flush_acks(self, slot: int) -> None:
        """Publish the acks of one slot's units: one message per unit, all its streams in it (docs/protocol.md)."""
        by_unit, self._outgoing_acks[slot] = self._outgoing_acks[slot], {}
        client = self._client
        if client is None or not by_unit:
            return  # not connected: devices keep the messages and send them again; nothing is lost
        # Queued, not awaited, and QoS 0: an ack is a cumulative watermark, and a lost one costs only a
        # retransmission, which is answered again (decision 39).
        published = sum(
            client.publish_nowait(device_topic(unit, Stream.ACK), encode_acks(list(acks.values())))
            for unit, acks in by_unit.items()
        )
        self.metrics.acks.inc(published)
        if published < len(by_unit):
            log.info(
                "acks of %d units not queued (connection lost or backed up); devices will resend and be answered again",
                len(by_unit) - published,
            )

    async def _flush_acks_forever(self) -> None:
        """Each unit's acks every `ack_interval_s`; a slot of the units at a time."""
        while True:
            await asyncio.sleep(self._settings.ack_interval_s / _ACK_SLOTS)
            self._flush_acks(self._ack_slot)
            self._ack_slot = (self._ack_slot + 1) % _ACK_SLOTS

    # -- monitoring --------------------------------------------------------------------------------------------

    async def _monitor_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.monitor_interval_s)
            now_mono, at = time.monotonic(), now_us()
            for change in self._silence.sweep(now_mono):
                log.info("unit %s silent since %s", change.unit, change.last_rx_us)
                self._announce(change, at)
            for gap in self._tracker.open_gaps(now_mono, self._settings.gap_open_after_s):
                unit, boot, stream = gap.key
                log.info(
                    "seq gap open on %s/%s boot %d: %d..%d",
                    unit,
                    stream.value,
                    boot,
                    gap.first_missing,
                    gap.last_missing,
                )
                self._link_event(
                    LinkEvent(
                        at=at,
                        unit=unit,
                        kind="seq_gap",
                        stream=stream,
                        boot=boot,
                        first_seq=gap.first_missing,
                        last_seq=gap.last_missing,
                    )
                )
                self.metrics.link_events.labels("seq_gap").inc()
            self._queue_acks(self._tracker.held())
            self.metrics.units.set(self._silence.unit_count())
            self.metrics.units_silent.set(self._silence.silent_count())
            self.metrics.gaps_open.set(self._tracker.open_gap_count())
            if self._link_events and not self._pending():
                # Quiet period: record the observations directly rather than waiting for the next batch.
                events = self._take_link_events()
                try:
                    await self._store.record_link_events(events)
                except StoreError:
                    self._link_events.extendleft(reversed(events))

    async def _measure_loop_forever(self) -> None:
        """Every 100 ms, how late the loop woke us: the time everything in this process (the clinical loop too)
        waited behind the work before it, or behind other processes for the CPU."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + _LOOP_PROBE_S
            await asyncio.sleep(_LOOP_PROBE_S)
            self.metrics.loop_lag_seconds.observe(max(0.0, loop.time() - due))

    # -- HTTP: /metrics and /healthz -------------------------------------------------------------------------

    async def _start_http(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/healthz", self._health_handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.http_host, self._settings.http_port)
        await site.start()
        port = self._runner.addresses[0][1]  # the bound port, when 0 was asked
        self.metrics_url = f"http://{self._settings.http_host}:{port}/metrics"

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health_handler(self, request: web.Request) -> web.Response:
        connected = len(self._links) == len(_SESSIONS)
        healthy = connected and not self._store_failing
        body = {
            "status": "ok" if healthy else "degraded",
            "mqtt_connected": connected,
            "store_available": not self._store_failing,
            "pending_messages": self._pending(),  # taken, waiting for the commit
            "unread_messages": sum(link.pending for link in self._links.values()),  # read, not yet taken
            "units": self._silence.unit_count(),
            "units_silent": self._silence.silent_count(),
            "seq_gaps_open": self._tracker.open_gap_count(),
        }
        return web.json_response(body, status=200 if healthy else 503)

    @property
    def health_url(self) -> str:
        return self.metrics_url.removesuffix("/metrics") + "/healthz"
