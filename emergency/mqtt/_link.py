"""A batch-oriented MQTT 5 connection for the ingest path, on mqtt5's sans-I/O packet codec (Rust).

Why not aiomqtt here (docs/decisions.md, "The gateway reads MQTT through its own link on the mqtt5 codec"): paho,
under aiomqtt, does Python work per packet (MQTT 5 Properties objects, a message object, a thread lock) and writes
every PUBACK and every publish with its own system call. Receiving alone cost 200 µs per message and saturated one
core at ~1 900 messages/s. This link parses with `mqtt5` (well under a microsecond per packet), hands the reader
every message read since it last took as one list, and writes everything queued during one event-loop iteration
(PUBACKs, live forwards, acks) in one system call.

What it does and does not do, by design:
- QoS 0 and 1 only (the gateway subscribes at QoS 1 at most). A received QoS 1 message is acknowledged when read,
  as paho does; end-to-end delivery is the application's own acks (docs/protocol.md), not MQTT's.
- Outgoing QoS 1 honours the broker's receive maximum; what does not fit waits here, bounded (`OUTBOX_MAX`).
  On reconnect unacknowledged outgoing messages are not resent: every QoS 1 message the gateway publishes (acks,
  link states) is superseded by the next one, and a lost ack costs only a device's retransmission.
- No automatic reconnect: the owner reconnects (with `backoff_delay`), as it does with aiomqtt.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Self

import mqtt5

from emergency.mqtt._aiomqtt import NO_DELAY
from emergency.settings import MqttEndpoint

log = logging.getLogger(__name__)

# Outgoing QoS 1 messages waiting for room in the broker's receive maximum. Past this, `publish_nowait` refuses
# (returns False): its callers treat a publish as best effort.
OUTBOX_MAX = 100_000
# QoS 0 messages are dropped (and counted) while the socket's write buffer is over its high-water mark: a live
# forward that cannot leave now is worthless later, and the buffer must stay bounded.
_WRITE_HIGH_WATER = 4 * 1024 * 1024
# Packet ids kept free of QoS 1 publishes, for SUBSCRIBE/UNSUBSCRIBE, however large the broker's receive maximum.
_IDS_KEPT_FOR_REQUESTS = 1_000
# MQTT 5 reason codes below this are successes (0x10: no matching subscribers). mqtt5's reason codes are compared
# as int(): at run time they are not IntEnums, whatever its stub says.
_SUCCESS_BELOW = 0x80


class MqttLinkError(Exception):
    """The connection failed, was refused or was lost; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Protocol(asyncio.Protocol):
    """Bytes in, packets out: the asyncio side of one link."""

    def __init__(self, link: MqttLink) -> None:
        self._link = link
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        self._link._transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        at, packets = 0, []
        with memoryview(buf) as view:
            while True:
                try:
                    packet, size = mqtt5.read(view[at:])
                except IndexError:  # the buffer ends inside a packet: wait for more
                    break
                except ValueError as exc:
                    self._link._fail(f"malformed packet from the broker: {exc}")
                    return
                packets.append(packet)
                at += size
        del buf[:at]
        self._link._received(packets)

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._lost(exc)

    def pause_writing(self) -> None:
        self._link._writing_paused = True

    def resume_writing(self) -> None:
        self._link._writing_paused = False


class MqttLink:
    """`async with MqttLink(endpoint, client_id=...) as link:` is one connected MQTT 5 session until the block exits.

    Received messages come as lists, each what was read while the reader was busy (`batches()`); publishes are
    queued and leave together at the end of the event-loop iteration. Reading pauses while `max_pending` received
    messages wait for the reader, so a slow reader slows the broker down instead of growing memory (the broker
    queues for the session).
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        client_id: str,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        keep_alive_s: int = 30,
        receive_max: int = 1000,
        max_pending: int = 20_000,
        timeout_s: float = 10.0,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        """`will`: (topic, payload) the broker publishes, QoS 1 and retained, when this link ends — lost, or closed
        by us (the DISCONNECT asks for it): the owner's way to clear what it announced while connected."""
        self._endpoint = endpoint
        self._will = will
        self._connect = mqtt5.ConnectPacket(
            client_id,
            username=endpoint.username,
            password=endpoint.password.get_secret_value().encode() if endpoint.password else None,
            clean_start=clean_start,
            keep_alive=keep_alive_s,
            session_expiry_interval=session_expiry_s,
            receive_max=receive_max,
            will=None
            if will is None
            else mqtt5.Will(will[0], payload=will[1], qos=mqtt5.QoS.AT_LEAST_ONCE, retain=True),
        )
        self._keep_alive_s = keep_alive_s
        self._max_pending = max_pending
        self._timeout_s = timeout_s
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[mqtt5.ConnAckPacket] | None = None
        self._closed: MqttLinkError | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._writing_paused = False
        self._inbox: collections.deque[list[mqtt5.PublishPacket]] = collections.deque()
        self._inbox_messages = 0
        self._reading_paused = False
        self._inbox_ready = asyncio.Event()
        self._next_id = 0
        self._send_max = 65535  # the broker's receive maximum, from its CONNACK
        self._inflight: dict[int, asyncio.Future[int] | None] = {}  # our QoS 1 packet id → who waits for PUBACK
        self._outbox: collections.deque[tuple[str, bytes, bool, asyncio.Future[int] | None]] = collections.deque()
        # QoS 1 publishes started `now` (alerts): sent before the outbox's when the receive window has room.
        self._urgent: collections.deque[tuple[str, bytes, bool, asyncio.Future[int] | None]] = collections.deque()
        # SUBACK / UNSUBACK waiters by packet id: the reason code of each filter.
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._heard = 0.0  # loop time of the last packet from the broker
        self._keeper: asyncio.Task[None] | None = None
        self.session_present = False
        self.dropped_qos0 = 0
        self.refused = 0  # our QoS 1 messages the broker refused (e.g. not authorised), not awaited

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        endpoint = self._endpoint
        try:
            async with asyncio.timeout(self._timeout_s):
                _, _protocol = await loop.create_connection(
                    lambda: _Protocol(self), endpoint.host, endpoint.port, ssl=self._ssl_context()
                )
                assert self._transport is not None
                sock = self._transport.get_extra_info("socket")
                for level, option, value in NO_DELAY:
                    sock.setsockopt(level, option, value)
                self._connack = loop.create_future()
                self._write(self._connect.write())
                connack = await self._connack
        except (OSError, TimeoutError) as exc:
            self._close_transport()
            raise MqttLinkError(f"cannot connect to {endpoint.host}:{endpoint.port}: {exc!r}") from exc
        if int(connack.reason_code) != 0:
            self._close_transport()
            raise MqttLinkError(f"broker refused the connection: {connack.reason_code.name}")
        self.session_present = connack.session_present
        self._send_max = min(connack.receive_max, 65_535 - _IDS_KEPT_FOR_REQUESTS)
        self._heard = loop.time()
        self._keeper = asyncio.create_task(self._keep_alive(), name=f"mqtt.keepalive[{self._connect.client_id}]")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        if self._closed is None and self._transport is not None:
            # A DISCONNECT keeps a persistent session; a normal one drops the will, so ask for it when there is one.
            reason = (
                mqtt5.DisconnectReasonCode.NORMAL_DISCONNECTION
                if self._will is None
                else mqtt5.DisconnectReasonCode.DISCONNECT_WITH_WILL_MESSAGE
            )
            self._write(mqtt5.DisconnectPacket(reason_code=reason).write())
            self.flush()
        self._fail("closed by us")

    def _ssl_context(self) -> ssl.SSLContext | None:
        endpoint = self._endpoint
        if endpoint.tls_ca is None:
            return None
        context = ssl.create_default_context(cafile=str(endpoint.tls_ca))
        if endpoint.tls_cert is not None:
            context.load_cert_chain(str(endpoint.tls_cert), str(endpoint.tls_key) if endpoint.tls_key else None)
        return context

    async def _keep_alive(self) -> None:
        """PINGREQ at half the keep-alive; no word from the broker for 1.5 keep-alives means the link is dead. While
        reading is paused the broker's words wait unread in the socket: silence then says nothing about the broker
        (a reader behind for minutes must not be taken for a dead broker, reconnecting and making things worse)."""
        loop = asyncio.get_running_loop()
        while self._closed is None:
            await asyncio.sleep(self._keep_alive_s / 2)
            if self._reading_paused:
                self._heard = loop.time()
            elif loop.time() - self._heard > 1.5 * self._keep_alive_s:
                self._fail(f"no word from the broker for {1.5 * self._keep_alive_s:.0f} s")
                return
            self._write(mqtt5.PingReqPacket().write())

    # -- receiving ---------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True until the link fails, is lost or is closed."""
        return self._closed is None and self._transport is not None

    @property
    def pending(self) -> int:
        """Received messages not yet taken by the reader (at most `max_pending` plus one socket read)."""
        return self._inbox_messages

    async def batches(self) -> AsyncIterator[list[mqtt5.PublishPacket]]:
        """The messages received, in order: each list holds the socket reads the reader has not yet taken (up to
        half of `max_pending` messages), so that the reader sees what waited while it was busy at once and may
        choose what to handle first. Raises MqttLinkError when the link ends."""
        while True:
            while not self._inbox:
                if self._closed is not None:
                    raise self._closed
                self._inbox_ready.clear()
                await self._inbox_ready.wait()
            batch = self._inbox.popleft()
            while self._inbox and len(batch) + len(self._inbox[0]) <= self._max_pending // 2:
                batch.extend(self._inbox.popleft())
            self._inbox_messages -= len(batch)
            if self._reading_paused and self._inbox_messages <= self._max_pending // 2 and self._transport:
                self._reading_paused = False
                self._transport.resume_reading()
            yield batch

    def _received(self, packets: list[mqtt5.Packet]) -> None:
        self._heard = asyncio.get_running_loop().time()
        messages: list[mqtt5.PublishPacket] = []
        disconnected: mqtt5.DisconnectPacket | None = None
        for packet in packets:
            if isinstance(packet, mqtt5.PublishPacket):
                if packet.qos == mqtt5.QoS.AT_LEAST_ONCE and packet.packet_id is not None:
                    self._write(mqtt5.PubAckPacket(packet.packet_id).write())
                messages.append(packet)
            elif isinstance(packet, mqtt5.PubAckPacket):
                self._acknowledged(packet.packet_id, int(packet.reason_code))
            elif isinstance(packet, mqtt5.SubAckPacket | mqtt5.UnsubAckPacket):
                waiter = self._subacks.pop(packet.packet_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result([int(code) for code in packet.reason_codes])
            elif isinstance(packet, mqtt5.ConnAckPacket):
                if self._connack is not None and not self._connack.done():
                    self._connack.set_result(packet)
            elif isinstance(packet, mqtt5.DisconnectPacket):
                disconnected = packet
            # PINGRESP needs nothing beyond `_heard`; QoS 2 is never subscribed to.
        if messages:
            self._inbox.append(messages)
            self._inbox_messages += len(messages)
            self._inbox_ready.set()
            if self._inbox_messages >= self._max_pending and not self._reading_paused and self._transport:
                self._reading_paused = True
                self._transport.pause_reading()
        if disconnected is not None:  # after the messages before it: the reader still gets those
            self._fail(f"disconnected by the broker: {disconnected.reason_code.name}")

    # -- sending -----------------------------------------------------------------------------------------------

    async def subscribe(self, filters: Sequence[tuple[str, int]], *, no_local: bool = False) -> None:
        """Subscribe to (topic filter, max QoS) pairs; raises MqttLinkError if the broker refuses any of them.
        `no_local`: messages this connection publishes are not delivered back to it."""
        topic_filters = [
            mqtt5.TopicFilter(pattern, max_qos=mqtt5.QoS(qos), no_local=no_local) for pattern, qos in filters
        ]
        codes = await self._request(lambda packet_id: mqtt5.SubscribePacket(packet_id, topic_filters).write())
        self._check_codes("subscription", [pattern for pattern, _ in filters], codes)

    async def unsubscribe(self, patterns: Sequence[str]) -> None:
        """Unsubscribe from topic filters (one not subscribed is no error)."""
        codes = await self._request(lambda packet_id: mqtt5.UnsubscribePacket(packet_id, list(patterns)).write())
        self._check_codes("unsubscription", patterns, codes)

    async def _request(self, packet_for: Callable[[int], bytes]) -> list[int]:
        """Send a SUBSCRIBE or UNSUBSCRIBE and wait for its reason codes."""
        self._check_open()
        packet_id = self._packet_id()
        waiter: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = waiter
        self._write(packet_for(packet_id))
        try:
            async with asyncio.timeout(self._timeout_s):
                return await waiter
        except TimeoutError:
            raise MqttLinkError("no SUBACK/UNSUBACK in time") from None
        finally:
            self._subacks.pop(packet_id, None)

    @staticmethod
    def _check_codes(what: str, patterns: Sequence[str], codes: list[int]) -> None:
        refused = [(p, code) for p, code in zip(patterns, codes, strict=False) if code >= _SUCCESS_BELOW]
        if refused:
            pattern, code = refused[0]
            raise MqttLinkError(f"{what} of {pattern} refused: reason code {code:#x} ({len(refused)} refused)")

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Queue a publish; it leaves at the end of this event-loop iteration. False when it cannot be queued (not
        connected; QoS 0 while the socket is backed up; QoS 1 with `OUTBOX_MAX` waiting): callers treat a publish
        as best effort."""
        if self._closed is not None or self._transport is None:
            return False
        if qos == 0:
            if self._writing_paused:
                self.dropped_qos0 += 1
                return False
            self._write(mqtt5.PublishPacket(topic, payload, retain=retain).write())
            return True
        if len(self._outbox) >= OUTBOX_MAX:
            return False
        self._outbox.append((topic, payload, retain, None))
        self._send_outbox()
        return True

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK; raises MqttLinkError if refused or not answered."""
        await self.acknowledged(self.start_publish(topic, payload, retain=retain), topic)

    def start_publish(
        self, topic: str, payload: bytes, *, retain: bool = False, now: bool = False
    ) -> asyncio.Future[int]:
        """Publish at QoS 1 without waiting for a coroutine's turn: sent with this loop iteration's other writes
        when the broker's receive window has room (else queued in order), or with `now` ahead of everything queued
        and written to the socket before returning (when the window is full, it takes the next free place: an
        alert does not wait behind a burst of other records). Returns the PUBACK's reason code to come; pass it to
        `acknowledged`. Raises MqttLinkError when not connected."""
        self._check_open()
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        # A link lost before the caller awaits this sets an exception nobody may read (the caller was cancelled):
        # not worth asyncio's "never retrieved" error; `acknowledged` still raises it.
        waiter.add_done_callback(lambda done: done.cancelled() or done.exception())
        (self._urgent if now else self._outbox).append((topic, payload, retain, waiter))
        self._send_outbox()
        if now:
            self.flush()
        return waiter

    async def acknowledged(self, waiter: asyncio.Future[int], topic: str, *, patient: bool = False) -> None:
        """Wait for a `start_publish`'s PUBACK; raises MqttLinkError if refused, if the link ends, or, unless
        `patient`, if not answered within the link's timeout. The broker answers every QoS 1 publish of a live
        connection, in order: a patient caller waits out a busy broker instead of sending the message again."""
        try:
            async with asyncio.timeout(None if patient else self._timeout_s):
                code = await waiter
        except TimeoutError:
            raise MqttLinkError(f"no PUBACK in time for {topic}") from None
        if code >= _SUCCESS_BELOW:
            raise MqttLinkError(f"publish to {topic} refused: {mqtt5.PubAckReasonCode(code).name}")

    def _send_outbox(self) -> None:
        while (self._urgent or self._outbox) and len(self._inflight) < self._send_max:
            topic, payload, retain, waiter = (self._urgent or self._outbox).popleft()
            packet_id = self._packet_id()
            self._inflight[packet_id] = waiter
            packet = mqtt5.PublishPacket(
                topic, payload, qos=mqtt5.QoS.AT_LEAST_ONCE, retain=retain, packet_id=packet_id
            )
            self._write(packet.write())

    def _acknowledged(self, packet_id: int, code: int) -> None:
        waiter = self._inflight.pop(packet_id, None)
        if waiter is None:
            if code >= _SUCCESS_BELOW:
                self.refused += 1
        elif not waiter.done():
            waiter.set_result(code)
        self._send_outbox()

    def _packet_id(self) -> int:
        """The next packet id not in use (1..65535)."""
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._inflight and self._next_id not in self._subacks:
                return self._next_id

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued now. Otherwise it is written at the end of this event-loop iteration; a caller that
        queues many publishes in one long step calls this to send the first ones on their way."""
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))

    # -- ending ------------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed
        if self._transport is None:
            raise MqttLinkError("not connected")

    def _lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc!r}" if exc else "connection closed by the broker")

    def _fail(self, reason: str) -> None:
        """End the link (once): wake every waiter with the reason and close the socket."""
        if self._closed is not None:
            return
        error = self._closed = MqttLinkError(reason)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(error)
        queued = (w for *_, w in (*self._urgent, *self._outbox))
        for waiter in [*self._subacks.values(), *self._inflight.values(), *queued]:
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        self._inflight.clear()
        self._urgent.clear()
        self._outbox.clear()
        self._inbox_ready.set()
        self._close_transport()

    def _close_transport(self) -> None:
        if self._transport is not None:
            self.flush()
            self._transport.close()
