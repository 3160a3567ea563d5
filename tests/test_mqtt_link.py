"""The ingest path's MQTT link (emergency.mqtt.MqttLink) on the real mosquitto: batches in order, persistent
sessions, PUBACKs, refusals, broker-initiated disconnects and backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator

import pytest

from emergency.mqtt import MqttLink, MqttLinkError, mqtt_client
from emergency.settings import MqttEndpoint
from emergency.stack import GATEWAY_ACCOUNT, Broker
from tests.conftest import free_port, services_dir

_ids = iter(range(1, 10_000))


def client_id() -> str:
    return f"test-link-{next(_ids)}"


async def take(link: MqttLink, count: int, within_s: float = 10) -> list[tuple[str, bytes]]:
    """The next `count` messages the link receives, with how they were batched flattened away."""
    received: list[tuple[str, bytes]] = []
    async with asyncio.timeout(within_s):
        async for batch in link.batches():
            received.extend((m.topic, m.payload) for m in batch)
            if len(received) >= count:
                return received
    return received


async def publish_as_unit(endpoint: MqttEndpoint, unit: str, payloads: list[bytes]) -> None:
    async with mqtt_client(endpoint, identifier=f"{unit}-pub") as device:
        for payload in payloads:
            await device.publish(f"ems/v1/{unit}/vitals", payload, qos=1)


@contextlib.asynccontextmanager
async def linked(endpoint: MqttEndpoint, **options: object) -> AsyncIterator[MqttLink]:
    async with MqttLink(endpoint, **options) as link:  # type: ignore[arg-type]
        yield link


async def test_messages_arrive_complete_in_order_and_in_batches(gateway_endpoint, make_unit) -> None:
    """Messages published at QoS 1 reach the link complete and in order; what waited in the socket while the reader
    was busy comes as one batch of several (here: what the broker kept for the session while the link was away)."""
    unit, endpoint = await make_unit()
    payloads = [f"m{i}".encode() for i in range(500)]
    session = {"client_id": client_id(), "clean_start": False, "session_expiry_s": 600}
    async with linked(gateway_endpoint, **session) as link:
        await link.subscribe([(f"ems/v1/{unit}/vitals", 1)])
    await publish_as_unit(endpoint, unit, payloads)
    batches: list[int] = []
    received: list[bytes] = []
    async with linked(gateway_endpoint, **session) as link:
        time.sleep(0.5)  # noqa: ASYNC251 - a busy event loop, on purpose: the burst waits in the socket
        async with asyncio.timeout(10):
            async for batch in link.batches():
                batches.append(len(batch))
                received.extend(m.payload for m in batch)
                if len(received) >= len(payloads):
                    break
    assert received == payloads
    assert max(batches) > 1


async def test_what_waited_for_the_reader_comes_as_one_batch(gateway_endpoint, make_unit) -> None:
    """Socket reads the reader has not taken yet are handed over together: a reader back from a long step sees all
    that arrived meanwhile at once, and may choose what to handle first (the gateway: 12-lead frames last)."""
    unit, endpoint = await make_unit()
    payloads = [b"m%d" % i for i in range(40)]
    async with linked(gateway_endpoint, client_id=client_id()) as link:
        await link.subscribe([(f"ems/v1/{unit}/vitals", 1)])
        await publish_as_unit(endpoint, unit, payloads)  # one at a time: each waits for its PUBACK, so many reads
        for _ in range(200):
            if link.pending >= len(payloads):
                break
            await asyncio.sleep(0.05)
        batch = await anext(aiter(link.batches()))
    assert [m.payload for m in batch] == payloads


async def test_a_persistent_session_keeps_messages_and_does_not_redeliver_acknowledged_ones(
    gateway_endpoint, make_unit
) -> None:
    """With a persistent session the broker keeps what arrives while the link is away; what the link received
    was acknowledged, so the next connection gets only the new messages."""
    unit, endpoint = await make_unit()
    name = client_id()
    session = {"client_id": name, "clean_start": False, "session_expiry_s": 600}
    async with linked(gateway_endpoint, **session) as link:
        assert not link.session_present
        await link.subscribe([(f"ems/v1/{unit}/vitals", 1)])
    await publish_as_unit(endpoint, unit, [b"while-away-1", b"while-away-2"])
    async with linked(gateway_endpoint, **session) as link:
        assert link.session_present
        assert [p for _, p in await take(link, 2)] == [b"while-away-1", b"while-away-2"]
    await publish_as_unit(endpoint, unit, [b"later"])
    async with linked(gateway_endpoint, **session) as link:
        assert [p for _, p in await take(link, 1)] == [b"later"]
        with pytest.raises(TimeoutError):
            await take(link, 1, within_s=1)


async def test_qos1_publish_waits_for_the_broker_and_reaches_subscribers(gateway_endpoint, console_endpoint) -> None:
    """`publish` returns once the broker acknowledged; `publish_nowait` messages leave in the same order."""
    async with mqtt_client(console_endpoint, identifier=client_id()) as console:
        await console.subscribe("center/v1/live/LINKTEST/#", qos=1)
        async with linked(gateway_endpoint, client_id=client_id()) as link:
            for i in range(3):
                assert link.publish_nowait(f"center/v1/live/LINKTEST/n{i}", b"%d" % i, qos=i % 2)
            await link.publish("center/v1/live/LINKTEST/last", b"last", retain=False)
        topics: list[str] = []
        async with asyncio.timeout(5):
            async for message in console.messages:
                topics.append(message.topic.value)
                if len(topics) == 4:
                    break
    assert topics == [f"center/v1/live/LINKTEST/{t}" for t in ("n0", "n1", "n2", "last")]


async def test_a_publish_started_now_goes_ahead_of_what_waits_for_the_receive_window(
    gateway_endpoint, console_endpoint
) -> None:
    """A QoS 1 publish started `now` (an alert) does not wait behind a burst queued for the broker's receive window:
    it takes the next free place; the rest keep their order."""
    topic = f"center/v1/live/URGENT/{client_id()}"
    async with mqtt_client(console_endpoint, identifier=client_id()) as console:
        await console.subscribe(f"{topic}/#", qos=1)
        async with linked(gateway_endpoint, client_id=client_id()) as link:
            waiters = [link.start_publish(f"{topic}/bulk", b"%d" % i) for i in range(1000)]
            window = len(link._inflight)
            urgent = link.start_publish(f"{topic}/alert", b"alert", now=True)
            for waiter in [*waiters, urgent]:
                await link.acknowledged(waiter, topic)
        order: list[bytes] = []
        async with asyncio.timeout(10):
            async for message in console.messages:
                assert isinstance(message.payload, bytes)
                order.append(message.payload)
                if len(order) == 1001:
                    break
    assert window < 1000 and order.index(b"alert") <= window
    assert [p for p in order if p != b"alert"] == [b"%d" % i for i in range(1000)]


async def test_flush_sends_queued_publishes_before_the_event_loop_turns(gateway_endpoint, console_endpoint) -> None:
    """`publish_nowait` leaves at the end of the loop's iteration; `flush` sends it at once, so a subscriber gets it
    while the publisher's loop is still held (for a caller in one long step; since decision 45 no production caller
    needs it, and the link itself flushes this way at the end of each iteration)."""
    topic = f"center/v1/live/FLUSHTEST/{client_id()}"
    subscribed, arrived = threading.Event(), {b"queued": threading.Event(), b"flushed": threading.Event()}

    async def subscriber() -> None:  # on a loop of its own: it runs while the test's loop is held
        async with mqtt_client(console_endpoint, identifier=client_id()) as console:
            await console.subscribe(topic, qos=1)
            subscribed.set()
            async with asyncio.timeout(20):
                async for message in console.messages:
                    arrived[bytes(message.payload)].set()  # type: ignore[arg-type]
                    if all(event.is_set() for event in arrived.values()):
                        return

    thread = threading.Thread(target=asyncio.run, args=(subscriber(),), daemon=True)
    thread.start()
    assert await asyncio.to_thread(subscribed.wait, 10)
    async with linked(gateway_endpoint, client_id=client_id()) as link:
        assert link.publish_nowait(topic, b"queued")
        # The loop held, as by a long step: what is only queued stays in this process.
        assert not arrived[b"queued"].wait(0.5)
        await asyncio.sleep(0)
        assert await asyncio.to_thread(arrived[b"queued"].wait, 5)
        assert link.publish_nowait(topic, b"flushed")
        link.flush()
        assert arrived[b"flushed"].wait(5)  # the loop still held
    thread.join(10)


async def test_refusals_are_errors_with_the_brokers_reason(broker, console_endpoint, gateway_endpoint) -> None:
    """A wrong password and a forbidden QoS 1 publish each raise MqttLinkError. (mosquitto grants a forbidden
    subscription and filters on delivery, so there is no refused SUBACK to provoke here.)"""
    wrong = gateway_endpoint.model_copy(update={"password": None})
    with pytest.raises(MqttLinkError, match=r"refused|lost|closed"):
        async with linked(wrong, client_id=client_id()):
            pass
    async with linked(console_endpoint, client_id=client_id()) as link:
        with pytest.raises(MqttLinkError, match="NOT_AUTHORIZED"):
            await link.publish("center/v1/live/LINKTEST/ecg", b"forged")


async def test_a_session_taken_over_ends_the_old_link_with_the_reason(gateway_endpoint) -> None:
    """When the broker disconnects the link (here: the same client id connects again), the reader's iteration
    ends with MqttLinkError saying so, and publishing on the dead link is refused."""
    name = client_id()
    async with linked(gateway_endpoint, client_id=name) as first:
        async with linked(gateway_endpoint, client_id=name):
            # MQTT 5 lets the broker say why (SESSION_TAKEN_OVER); this mosquitto just closes the socket.
            with pytest.raises(MqttLinkError, match=r"SESSION_TAKEN_OVER|closed by the broker"):
                await take(first, 1)
            assert not first.publish_nowait("center/v1/live/LINKTEST/x", b"x")


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing(gateway_endpoint, make_unit) -> None:
    """While the reader does not take messages the link stops reading at `max_pending` (the broker holds the rest);
    once it reads again every message arrives, in order."""
    unit, endpoint = await make_unit()
    payloads = [bytes(200) + b"%d" % i for i in range(600)]
    async with linked(gateway_endpoint, client_id=client_id(), max_pending=50, receive_max=20) as link:
        await link.subscribe([(f"ems/v1/{unit}/vitals", 1)])
        await publish_as_unit(endpoint, unit, payloads)
        await asyncio.sleep(1)  # the reader is away
        assert link.pending < 50 + 20 + 1
        received = [p for _, p in await take(link, len(payloads))]
    assert received == payloads


async def test_keep_alive_holds_an_idle_link_open(gateway_endpoint) -> None:
    """An idle link pings the broker, so neither side drops it after the keep-alive."""
    async with linked(gateway_endpoint, client_id=client_id(), keep_alive_s=1) as link:
        await asyncio.sleep(3.5)
        await link.publish("center/v1/live/LINKTEST/alive", b"1")
        assert link.connected
    assert not link.connected


async def test_a_reader_behind_for_longer_than_the_keep_alive_keeps_its_link(gateway_endpoint, make_unit) -> None:
    """Reading paused (the reader behind) for several keep-alives is not taken for a dead broker: the link stays
    connected, and every message arrives once the reader is back."""
    unit, endpoint = await make_unit()
    payloads = [bytes(200) + b"%d" % i for i in range(300)]
    async with linked(gateway_endpoint, client_id=client_id(), max_pending=20, keep_alive_s=1) as link:
        await link.subscribe([(f"ems/v1/{unit}/vitals", 1)])
        await publish_as_unit(endpoint, unit, payloads)
        await asyncio.sleep(3.5)  # the reader is away for over twice 1.5 keep-alives
        received = [p for _, p in await take(link, len(payloads))]
        await link.publish("center/v1/live/LINKTEST/alive", b"1")
    assert received == payloads


async def test_no_local_keeps_a_links_own_publishes_from_coming_back(gateway_endpoint) -> None:
    """Subscribed with no_local (the clinical loop's care bus), a link does not receive what it published itself,
    and still receives what others publish on the same topics."""
    topic = f"center/v1/care/test/{client_id()}"
    async with (
        linked(gateway_endpoint, client_id=client_id()) as mine,
        linked(gateway_endpoint, client_id=client_id()) as other,
    ):
        await mine.subscribe([(topic, 1)], no_local=True)
        await mine.publish(topic, b"from-me")
        await other.publish(topic, b"from-another")
        assert await take(mine, 1) == [(topic, b"from-another")]


async def test_a_patient_wait_takes_a_busy_brokers_late_puback() -> None:
    """The broker answers every QoS 1 publish of a live connection, in order, however late (here it is stopped for
    longer than the link's timeout). An impatient wait fails at the timeout; a patient one takes the late PUBACK, so
    that the care bus does not send a snapshot again while the first is still on its way (decision 49)."""
    with services_dir("emergency-link-") as root:
        async with Broker(root, free_port()) as broker:
            topic, endpoint = "center/v1/care/test", broker.internal_endpoint(GATEWAY_ACCOUNT)
            async with MqttLink(endpoint, client_id=client_id(), timeout_s=0.3) as link:
                pid = int(broker.pid_file.read_text())
                os.kill(pid, signal.SIGSTOP)
                try:
                    impatient = link.start_publish(topic, b"1", now=True)
                    patient = link.start_publish(topic, b"2", now=True)
                    with pytest.raises(MqttLinkError, match="no PUBACK in time"):
                        await link.acknowledged(impatient, topic)
                    waiting = asyncio.create_task(link.acknowledged(patient, topic, patient=True))
                    await asyncio.sleep(0.6)  # twice the timeout
                    assert not waiting.done()
                finally:
                    os.kill(pid, signal.SIGCONT)
                await asyncio.wait_for(waiting, 10)
