"""The console on a real broker and a real aiohttp server: live fan-out, watch/unwatch, errors, slow clients.
Clients log in as an ED physician (who may see everything live); role filtering is proved in test_role_matrix.py."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import aiomqtt
import pytest
import pytest_asyncio

from console import Console
from console._care import CareView
from console._hub import FRAME_TEXT_MAX, Outgoing, frame_texts
from console._state import UnitView
from emergency.access import Permission
from emergency.bus import CareKind, LinkCondition, LinkState, care_topic, link_topic
from emergency.care._model import (
    Activation,
    ActivationState,
    Acuity,
    Alert,
    AlertKind,
    AlertState,
    Encounter,
    EncounterStatus,
    Incident,
    Priority,
    Severity,
    Team,
)
from emergency.care._wire import encode_record, record_json
from emergency.codec import encode_device_message
from emergency.mqtt import mqtt_client
from emergency.protocol import EcgFrame, GpsFix, Stream, Vitals, device_topic
from emergency.settings import ConsoleSettings, MqttEndpoint
from emergency.store import Store
from tests.conftest import ConsoleConnect, ConsoleConnection, Devices, console_origin, session_cookie, ws_connect

LoggedIn = Callable[[str, str], Awaitable[aiohttp.ClientSession]]


def _now_us() -> int:
    return time.time_ns() // 1000


@pytest_asyncio.fixture(loop_scope="session")
async def console(console_endpoint: MqttEndpoint, shared_store: Store) -> AsyncIterator[Console]:
    async with Console(ConsoleSettings(), 0, console_endpoint, shared_store) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def http(console: Console, logged_in: LoggedIn) -> aiohttp.ClientSession:
    """A browser session logged in as an ED physician."""
    return await logged_in(console.url, "ed_physician")


@pytest_asyncio.fixture(loop_scope="session")
async def bus(gateway_endpoint: MqttEndpoint) -> AsyncIterator[aiomqtt.Client]:
    """A publisher of link states with the gateway's account, as the gateway would publish."""
    async with mqtt_client(gateway_endpoint) as client:
        yield client


def _ws(console: Console, http: aiohttp.ClientSession) -> ConsoleConnect:
    return ws_connect(console.url, http)


async def _next(ws: ConsoleConnection, kind: str, unit: str | None = None, within_s: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        while True:
            message = await ws.message()
            if message["type"] == kind and (unit is None or message.get("unit") == unit):
                return message


async def _frame_with(ws: ConsoleConnection, unit: str, within_s: float = 10) -> list[dict[str, Any]]:
    """The next whole frame carrying a message about `unit`, read as the browser reads it: one JSON array."""
    async with asyncio.timeout(within_s):
        while True:
            frame = json.loads(await ws.recv())
            assert isinstance(frame, list)
            if any(message.get("unit") == unit for message in frame):
                return frame


async def _publish_until(devices: Devices, topic: str, payload: bytes, done: asyncio.Future[Any]) -> None:
    """Publish repeatedly until `done`: the console subscribes to a unit's ECG asynchronously after a watch."""
    while not done.done():
        await devices.publish(topic, payload, qos=0)
        await asyncio.sleep(0.1)


async def test_watched_unit_receives_ecg_bytes_unchanged(
    console: Console, devices: Devices, http: aiohttp.ClientSession
) -> None:
    """A client watching a unit receives its ECG frames, whose base64 data are the device's exact bytes."""
    frame = EcgFrame("CW1", 1, 0, _now_us(), 500.0, ("I", "II"), 2.5, 125, bytes(range(250)) * 2)
    async with _ws(console, http) as ws:
        await _next(ws, "fleet")
        await ws.send(json.dumps({"type": "watch", "unit": "CW1"}))
        await _next(ws, "watched", "CW1")
        received: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(_next(ws, "ecg", "CW1"))
        await _publish_until(devices, device_topic("CW1", Stream.ECG), encode_device_message(frame), received)
        message = await received
    assert base64.b64decode(message["data"]) == frame.data
    assert (message["fs"], message["leads"], message["n"], message["ts"]) == (500.0, ["I", "II"], 125, frame.ts)


async def test_unwatched_ecg_is_not_sent_but_positions_are(
    console: Console, devices: Devices, http: aiohttp.ClientSession
) -> None:
    """Without a watch a client gets a unit's GPS but never its ECG."""
    frame = EcgFrame("CU1", 1, 0, _now_us(), 500.0, ("I",), 2.5, 125, bytes(250))
    fix = GpsFix("CU1", 1, 0, _now_us(), 31.2, 121.4, speed=3.0)
    async with _ws(console, http) as ws:
        await _next(ws, "fleet")
        for _ in range(3):
            await devices.publish(device_topic("CU1", Stream.ECG), encode_device_message(frame), qos=0)
        await devices.publish(device_topic("CU1", Stream.GPS), encode_device_message(fix), qos=0)
        seen = []
        async with asyncio.timeout(10):
            while True:
                message = await ws.message()
                seen.append(message["type"])
                if message["type"] == "gps" and message["unit"] == "CU1":
                    break
    assert message["lat"] == 31.2
    assert "ecg" not in seen


async def test_a_device_message_the_codec_refuses_is_not_shown_and_is_counted(
    console: Console, devices: Devices, http: aiohttp.ClientSession
) -> None:
    """The console reads devices' own topics (decision 45) and judges each message with the gateway's codec: what
    it refuses (here garbage, and a fix naming another unit) reaches no client, is counted on /healthz, and the unit's
    next valid message is shown as usual."""
    fix = GpsFix("CI1", 1, 0, _now_us(), 31.2, 121.4)
    forged = GpsFix("OTHER", 1, 1, _now_us(), 10.0, 10.0)
    before = console.core.invalid_telemetry
    async with _ws(console, http) as ws:
        await _next(ws, "fleet")
        await devices.publish(device_topic("CI1", Stream.GPS), b"\xc1 not msgpack", qos=1)
        await devices.publish(device_topic("CI1", Stream.GPS), encode_device_message(forged), qos=1)
        await devices.publish(device_topic("CI1", Stream.GPS), encode_device_message(fix), qos=1)
        message = await _next(ws, "gps", "CI1")
    assert (message["lat"], message["lon"]) == (31.2, 121.4)
    async with aiohttp.ClientSession() as anonymous, anonymous.get(console.url + "healthz") as response:
        health = await response.json()
    assert health["invalid_telemetry"] == before + 2


async def test_malformed_client_messages_get_an_error_and_the_connection_survives(
    console: Console, http: aiohttp.ClientSession
) -> None:
    """Garbage, unknown types and invalid unit ids are answered with an error; the socket stays usable."""
    async with _ws(console, http) as ws:
        await _next(ws, "fleet")
        for bad in ("not json", json.dumps({"no": "type"}), json.dumps({"type": "dance"}),
                    json.dumps({"type": "watch", "unit": "../etc"})):  # fmt: skip
            await ws.send(bad)
            assert (await _next(ws, "error"))["reason"]
        await ws.send(json.dumps({"type": "fleet"}))
        assert (await _next(ws, "fleet"))["type"] == "fleet"


async def test_link_state_is_forwarded(console: Console, bus: aiomqtt.Client, http: aiohttp.ClientSession) -> None:
    """A unit going silent on the bus reaches clients as a link update."""
    async with _ws(console, http) as ws:
        await _next(ws, "fleet")
        state = LinkState("CL1", LinkCondition.SILENT, _now_us(), _now_us() - 12_000_000)
        await bus.publish(link_topic("CL1"), state.encode(), qos=1)
        message = await _next(ws, "link", "CL1")
    assert message["condition"] == "silent"


async def test_an_alert_reaches_clients_while_the_fleets_telemetry_waits(
    console: Console, devices: Devices, bus: aiomqtt.Client, http: aiohttp.ClientSession
) -> None:
    """Care records come in a bus session of their own (decision 52): with the console's telemetry connection not read
    at all (its socket paused, as a console far behind on a city's telemetry would leave it), an alert still reaches
    the client; the telemetry held meanwhile follows once the connection is read again."""
    fix = GpsFix("CQ1", 1, 0, _now_us(), 31.2, 121.4)
    alert = Alert(990_001, "CQ1", None, AlertKind.SHOCK_INDEX, Severity.WARNING, AlertState.RAISED, "SI 1.1", {}, 1, 1)
    async with _ws(console, http) as ws:
        await _next(ws, "fleet")
        telemetry = console.core.links["devices"]._transport  # the devices session's socket
        assert telemetry is not None
        telemetry.pause_reading()
        try:
            await devices.publish(device_topic("CQ1", Stream.GPS), encode_device_message(fix), qos=1)
            await bus.publish(care_topic(CareKind.ALERT, "CQ1"), encode_record(alert), qos=1)
            async with asyncio.timeout(10):
                while (message := await ws.message())["type"] != "care" or message["record"]["id"] != alert.id:
                    assert message.get("unit") != "CQ1"
        finally:
            telemetry.resume_reading()
        assert (await _next(ws, "gps", "CQ1"))["lat"] == 31.2


async def test_pending_messages_arrive_in_one_frame_in_order(console: Console, http: aiohttp.ClientSession) -> None:
    """What is pending for a client arrives in one frame, a JSON array: events first, then the latest unit updates
    (an older one replaced), then waveform, whatever the order they were offered in."""
    hub = console.core.hub
    ts = _now_us()
    ecg = {"type": "ecg", "unit": "CO1", "seq": 1, "ts": ts, "data": ""}
    older_fix = {"type": "gps", "unit": "CO1", "ts": ts, "lat": 31.0}
    fix = {"type": "gps", "unit": "CO1", "ts": ts + 1, "lat": 31.2}
    contact = {"type": "event", "unit": "CO1", "ts": ts, "kind": "patient_contact", "detail": {}}
    finding = {"type": "event", "unit": "CO1", "ts": ts + 2, "kind": "finding", "detail": {"text": "pale"}}
    async with _ws(console, http) as ws:
        connect_time = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "watch", "unit": "CO1"}))
        await _frame_with(ws, "CO1")  # watched
        # No await between the offers: all of them are pending when the client's sender next runs.
        hub.send_ecg("CO1", ecg)
        hub.broadcast_updates([(older_fix, Permission.VIEW_PATIENT_LIVE)])
        hub.broadcast_event(contact)
        hub.broadcast_updates([(fix, Permission.VIEW_PATIENT_LIVE)])
        hub.broadcast_event(finding)
        frame = await _frame_with(ws, "CO1")
    assert [m["type"] for m in connect_time] == ["session", "fleet", "care_snapshot"]
    assert [m for m in frame if m.get("unit") == "CO1"] == [contact, finding, fix, ecg]


async def test_a_batch_of_updates_reaches_each_client_as_its_role_allows(console: Console, logged_in: LoggedIn) -> None:
    """Updates offered together (a bus batch) go to each client in one frame, each only where the role holds its
    permission: a dispatcher gets a unit's position and not its vitals; a nurse gets both, and a later update of a
    key replaces the earlier one."""
    ts = _now_us()
    first_fix = {"type": "gps", "unit": "CR1", "ts": ts, "lat": 31.0}
    fix = {"type": "gps", "unit": "CR1", "ts": ts + 1, "lat": 31.1}
    vitals = {"type": "vitals", "unit": "CR1", "ts": ts, "hr": 120}
    async with (
        ws_connect(console.url, await logged_in(console.url, "dispatcher")) as dispatcher,
        ws_connect(console.url, await logged_in(console.url, "ed_nurse")) as nurse,
    ):
        await dispatcher.recv()  # the connect-time frames
        await nurse.recv()
        console.core.hub.broadcast_updates(
            [
                (first_fix, Permission.VIEW_FLEET),
                (vitals, Permission.VIEW_PATIENT_LIVE),
                (fix, Permission.VIEW_FLEET),
            ]
        )
        # Offered with no await between them: whatever a client was given is in its next frame about CR1.
        seen_by_dispatcher = [m for m in await _frame_with(dispatcher, "CR1") if m.get("unit") == "CR1"]
        seen_by_nurse = [m for m in await _frame_with(nurse, "CR1") if m.get("unit") == "CR1"]
    assert seen_by_dispatcher == [fix]
    assert seen_by_nurse == [fix, vitals]


async def test_updates_wait_out_the_send_interval_and_an_event_does_not(
    console_endpoint: MqttEndpoint, shared_store: Store, logged_in: LoggedIn
) -> None:
    """After a send, a client's unit updates wait for the rest of the send interval and go together in one frame; an
    event does not wait, and takes the held updates with it."""
    settings = ConsoleSettings(send_interval_s=600)  # longer than the test: only an event can end the wait
    async with Console(settings, 0, console_endpoint, shared_store) as running:
        hub = running.core.hub
        ts = _now_us()
        first = {"type": "gps", "unit": "CP1", "ts": ts, "lat": 31.0}
        second = {"type": "vitals", "unit": "CP2", "ts": ts, "hr": 80}
        event = {"type": "event", "unit": "CP3", "ts": ts, "kind": "finding", "detail": {"text": "pale"}}
        async with ws_connect(running.url, await logged_in(running.url, "ed_physician")) as ws:
            await ws.recv()  # the connect-time frame: a send, so the interval starts now
            hub.broadcast_updates([(first, Permission.VIEW_PATIENT_LIVE)])
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await ws.recv()  # held: unpaced, `first` would have gone alone by now
            hub.broadcast_updates([(second, Permission.VIEW_PATIENT_LIVE)])
            hub.broadcast_event(event)
            async with asyncio.timeout(30):
                frame = json.loads(await ws.recv())
    assert frame == [event, first, second]


async def test_a_batch_over_the_frame_bound_is_split_in_order(console: Console, http: aiohttp.ClientSession) -> None:
    """A batch longer than FRAME_TEXT_MAX goes in several frames, each within the bound, with every message there
    once and in order."""
    count, detail = 40, "x" * 20_000  # 800 kB in all: about a dozen messages a frame
    async with _ws(console, http) as ws:
        await ws.recv()  # the connect-time frame
        for seq in range(count):
            console.core.hub.broadcast_event({"type": "event", "unit": "CB1", "seq": seq, "detail": detail})
        frames: list[str] = []
        received: list[int] = []
        async with asyncio.timeout(10):
            while len(received) < count:
                text = await ws.recv()
                assert isinstance(text, str)
                frames.append(text)
                received += [m["seq"] for m in json.loads(text) if m.get("unit") == "CB1"]
    assert received == list(range(count))
    assert 1 < len(frames) < count
    assert all(len(text) <= FRAME_TEXT_MAX for text in frames)


def test_a_units_snapshot_object_holds_every_field_of_its_view() -> None:
    """The fleet snapshot's unit object, written out field by field for speed, is what `dataclasses.asdict` gives,
    and a later change of the unit's vitals does not reach one already taken."""
    view = UnitView("CU1", "transporting", 31.2, 121.4, 9.5, 90.0, 1, {"hr": 80.0}, 2, "live", 3, None, "A", True, True)
    view.score()
    taken = view.as_json()
    assert taken == dataclasses.asdict(view)
    view.vitals["hr"] = 150.0
    assert taken["vitals"] == {"hr": 80.0}


def test_the_care_snapshot_is_each_held_record_once_encoded_and_only_the_lists_a_role_may_see() -> None:
    """A care message's text is its record as JSON; the connect-time snapshot, joined from the texts kept as records
    arrive, lists what is held (not a resolved alert) and leaves empty what the role may not see."""
    view = CareView()
    incident = Incident(7, 1, Priority.IMMEDIATE, "chest pain", 31.2, 121.4, "1 Bund Rd", "CS1", "dispatcher")
    encounter = Encounter(8, "Red Fox", 7, "CS1", EncounterStatus.PRE_REGISTERED, 2, "H1", acuity=Acuity.HIGH)
    alert = Alert(9, "CS1", 8, AlertKind.STEMI, Severity.CRITICAL, AlertState.RAISED, "STEMI", {"leads": ["V2"]}, 3, 3)
    resolved = dataclasses.replace(alert, id=10, kind=AlertKind.NEWS2, state=AlertState.RESOLVED)
    activation = Activation(11, 8, Team.CATH_LAB, ActivationState.REQUESTED, "STEMI", 4, "center")
    for record in (incident, encounter, alert, activation, resolved):
        message = view.apply(record)
        assert (
            json.loads(message.text)
            == message.message
            == {
                "type": "care",
                "kind": message.message["kind"],
                "record": record_json(record),
            }
        )
    everything = json.loads(view.snapshot(set(Permission)).text)
    assert everything == {
        "type": "care_snapshot",
        "incidents": [record_json(incident)],
        "encounters": [record_json(encounter)],
        "alerts": [record_json(alert)],
        "activations": [record_json(activation)],
    }
    fleet_only = json.loads(view.snapshot({Permission.VIEW_FLEET}).text)
    assert fleet_only == {**everything, "encounters": [], "alerts": [], "activations": []}


def test_frames_are_filled_in_order_and_an_oversized_message_goes_alone() -> None:
    """Frames are JSON arrays of the batch in its order, as full as the bound allows; a message longer than the
    bound goes in a frame of its own."""
    sizes = [10, 300, 50, 2_000, 40, 40, 900, 5]
    batch = [Outgoing({"seq": seq, "pad": "x" * size}) for seq, size in enumerate(sizes)]
    frames = [[m["seq"] for m in json.loads(text)] for text in frame_texts(batch, text_max=1_000)]
    assert frames == [[0, 1, 2], [3], [4, 5], [6, 7]]


async def test_a_broadcast_is_encoded_once_for_every_client(
    console: Console, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broadcast to several clients is turned into JSON once, and every client receives it."""
    encoded: list[object] = []
    dumps = json.dumps

    def counting_dumps(obj: Any, **kwargs: Any) -> str:
        encoded.append(obj)
        return dumps(obj, **kwargs)

    monkeypatch.setattr(json, "dumps", counting_dumps)
    event = {"type": "event", "unit": "CE1", "ts": _now_us(), "kind": "finding", "detail": {"text": "pale"}}
    async with _ws(console, http) as one, _ws(console, http) as two, _ws(console, http) as three:
        for ws in (one, two, three):
            await _next(ws, "fleet")  # each client is in the hub
        console.core.hub.broadcast_event(event)
        for ws in (one, two, three):
            assert await _next(ws, "event", "CE1") == event
    assert sum(obj is event for obj in encoded) == 1


async def _frozen_client(console: Console, http: aiohttp.ClientSession, request: dict[str, str]) -> socket.socket:
    """A websocket client that sends one request and then never reads again (a frozen browser tab).

    Raw socket with a small receive buffer, so the server's writes back up quickly; the handshake is done by hand
    because client libraries keep reading in the background."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", console.port))
    key = base64.b64encode(os.urandom(16))
    await loop.sock_sendall(
        sock,
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Origin: {console_origin(console.url)}\r\nCookie: {session_cookie(http)}\r\n".encode()
        + b"Sec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += await loop.sock_recv(sock, 1)
    assert response.startswith(b"HTTP/1.1 101")
    payload, mask = json.dumps(request).encode(), os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    await loop.sock_sendall(sock, bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


async def test_stalled_client_does_not_delay_others_and_is_dropped(
    console: Console, devices: Devices, http: aiohttp.ClientSession
) -> None:
    """A client that never reads does not hold up another client, and is eventually disconnected."""
    big = EcgFrame("CS1", 1, 0, _now_us(), 1000.0, tuple(f"V{i}" for i in range(1, 7)), 2.5, 2000, bytes(24_000))
    stalled = await _frozen_client(console, http, {"type": "watch", "unit": "CS1"})
    try:
        async with _ws(console, http) as healthy:
            await _next(healthy, "fleet")
            await healthy.send(json.dumps({"type": "watch", "unit": "CS1"}))
            await _next(healthy, "watched", "CS1")
            got: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(_next(healthy, "ecg", "CS1"))
            await _publish_until(devices, device_topic("CS1", Stream.ECG), encode_device_message(big), got)
            await got
            # Keep the stream going: the healthy client goes on receiving while the stalled one is cut off.
            seq = 0
            async with asyncio.timeout(90):
                while len(console.core.hub.clients) > 1:
                    seq += 1
                    frame = EcgFrame("CS1", 1, seq, _now_us(), 1000.0, big.leads, 2.5, 2000, bytes(24_000))
                    await devices.publish(device_topic("CS1", Stream.ECG), encode_device_message(frame), qos=0)
                    assert (await _next(healthy, "ecg", "CS1"))["seq"] == seq
            assert len(console.core.hub.clients) == 1
    finally:
        stalled.close()


async def test_shutdown_closes_clients_with_going_away(
    console_endpoint: MqttEndpoint, shared_store: Store, logged_in: LoggedIn
) -> None:
    """Stopping the console closes every websocket with 1001 GOING_AWAY."""
    async with Console(ConsoleSettings(), 0, console_endpoint, shared_store) as running:
        ws = await ws_connect(running.url, await logged_in(running.url, "dispatcher"))
        await _next(ws, "fleet")
    async with asyncio.timeout(10):
        await ws.wait_closed()
    assert ws.close_code == 1001


async def test_health_and_fleet_endpoints(console: Console, http: aiohttp.ClientSession) -> None:
    """/healthz (public) reports the bus connection; /api/fleet returns the fleet snapshot and / the page."""
    async with aiohttp.ClientSession() as anonymous, anonymous.get(console.url + "healthz") as response:
        health = await response.json()
    async with http.get("/api/fleet") as response:
        fleet = await response.json()
    async with http.get("/") as response:
        page = await response.text()
    assert health["bus_connected"] is True
    assert isinstance(fleet["units"], list)
    assert '<canvas id="ecg">' in page


async def test_vitals_carry_a_partial_news2(console: Console, devices: Devices, http: aiohttp.ClientSession) -> None:
    """Vitals updates carry NEWS2 from the monitor's values, marked partial until oxygen and consciousness are known."""
    vitals = Vitals("CN1", 1, 0, _now_us(), hr=120.0, rr=26.0, spo2=91.0, sbp=95.0, temp=39.5)
    async with _ws(console, http) as ws:
        await _next(ws, "fleet")
        await devices.publish(device_topic("CN1", Stream.VITALS), encode_device_message(vitals), qos=0)
        message = await _next(ws, "vitals", "CN1")
    # RR 26 → 3, SpO2 91 → 3, SBP 95 → 2, pulse 120 → 2, temp 39.5 → 2 (RCP 2017 chart)
    assert message["news2"] == {
        "total": 12,
        "risk": "high",
        "partial": True,
        "missing": ["air_or_oxygen", "consciousness"],
    }


async def test_crew_findings_complete_the_units_news2(
    console: Console, devices: Devices, http: aiohttp.ClientSession
) -> None:
    """Once the crew records consciousness and oxygen, the unit's NEWS2 is complete, not a lower bound."""
    from emergency.protocol import DeviceEvent, EventKind

    now = _now_us()
    findings = [
        DeviceEvent("CN2", 1, 0, now, EventKind.FINDING, {"code": "avpu", "text": "A"}),
        DeviceEvent("CN2", 1, 1, now, EventKind.FINDING, {"code": "supplemental_o2", "text": "room air", "value": 0}),
    ]
    vitals = Vitals("CN2", 1, 0, now + 1, hr=120.0, rr=26.0, spo2=91.0, sbp=95.0, temp=39.5)
    async with _ws(console, http) as ws:
        await _next(ws, "fleet")
        for event in findings:
            await devices.publish(device_topic("CN2", Stream.EVENT), encode_device_message(event), qos=0)
            await _next(ws, "event", "CN2")
        await devices.publish(device_topic("CN2", Stream.VITALS), encode_device_message(vitals), qos=0)
        message = await _next(ws, "vitals", "CN2")
    assert message["news2"] == {"total": 12, "risk": "high", "partial": False, "missing": []}
