"""The console web application: a factory-built aiohttp app, its bus subscription, and the websocket endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import WSCloseCode, WSMsgType, web

from console._auth import AUTH, Auth, Principal, audit, principal_of, require, setup_auth
from console._care import CareContext, CareView, care_topic_of, setup_care
from console._hub import Client, ClientDropped, Hub, Json, needs_of, visible_units
from console._state import FleetState, ecg_json
from console._streets import STREET_LAYER, setup_streets
from emergency.access import Permission
from emergency.bus import BUS_ROOT, CARE_FILTER, LINK_FILTER, LinkState, is_link_topic
from emergency.care._model import Alert, AlertState
from emergency.care._wire import CareRecord, encode_record
from emergency.codec import RejectedMessage, decode_device_message
from emergency.geo import haversine_m
from emergency.mqtt import MqttLink, MqttLinkError, backoff_delay
from emergency.protocol import UNIT_PATTERN, EcgFrame, Stream, device_topic
from emergency.settings import ConsoleSettings, MqttEndpoint
from emergency.sites import Sites, load_sites
from emergency.store import Store, StoreError
from emergency.store._care import CareStore

log = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("console") / "static"))
# The bus in two sessions (decision 52). The center's own records, few and urgent: care records (QoS 1) and link
# states. Every unit's live data, many: position, vitals and events straight from the devices (decision 45), and the
# 12-lead of each unit someone watches (subscribed per unit while watched, so an unwatched fleet's waveform never
# reaches this process). An alert then never waits behind the fleet's telemetry in one connection's queue.
_CENTER, _DEVICES = "center", "devices"
_SUBSCRIPTIONS = {
    _CENTER: [(CARE_FILTER, 1), (LINK_FILTER, 0)],
    _DEVICES: [(device_topic("+", stream), 0) for stream in (Stream.GPS, Stream.VITALS, Stream.EVENT)],
}


_CARE_PREFIX = f"{BUS_ROOT}/care/"


def now_us() -> int:
    return time.time_ns() // 1000


class ConsoleCore:
    """The console's live state, hub and bus connection; shared by the app through `CORE`."""

    def __init__(self, settings: ConsoleSettings, mqtt: MqttEndpoint, store: Store) -> None:
        self.settings = settings
        self.mqtt = mqtt
        self.store = store
        self.fleet = FleetState()
        self.care = CareView()
        self.hub = Hub(send_interval_s=settings.send_interval_s)
        self.links: dict[str, MqttLink] = {}  # each bus session's link while it is connected
        # This process's name on the broker, kept across reconnects; each session adds its own name to it.
        self.bus_id = f"{settings.client_id}-{random.randrange(16**8):08x}"
        # Device messages the codec refused: the gateway records each as a rejection; a console shows none of them.
        self.invalid_telemetry = 0
        self.bus_ready = asyncio.Event()
        self._deliveries: set[asyncio.Task[None]] = set()  # at most one per raised alert, each short-lived

    def _note_delivery(self, alert: Alert) -> None:
        """A raised alert just went to the consoles: if someone here may acknowledge it, it has been delivered."""
        if alert.state is not AlertState.RAISED or alert.backlog:
            return
        if not any(client.may(Permission.ACK_ALERT) for client in self.hub.clients):
            return
        task = asyncio.create_task(self._mark_delivered(alert.id), name=f"console.deliver[{alert.id}]")
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _mark_delivered(self, alert_id: int) -> None:
        # The clinical loop publishes an alert before writing it, so its row may not exist yet: try a few times.
        # Several consoles may race; the store lets the first one through and tells the others nothing changed.
        records = CareStore(self.store)
        for attempt in range(5):
            try:
                delivered = await records.mark_delivered(alert_id, at=now_us())
            except StoreError as exc:
                log.info("alert %d delivery not recorded (%s)", alert_id, exc)
                return
            if delivered is not None:
                await self.publish_care(delivered)
                return
            await asyncio.sleep(0.2 * (attempt + 1))

    async def seed_from_store(self) -> None:
        try:
            for fix in await self.store.last_positions():
                self.fleet.seed_position(fix)
        except StoreError as exc:
            log.warning("fleet positions not seeded from the store: %s", exc)
        records = CareStore(self.store)
        try:
            for incident in await records.open_incidents():
                self.care.apply(incident)
            for encounter in await records.active_encounters():
                self.care.apply(encounter)
                for activation in await records.activations(encounter.id):
                    self.care.apply(activation)
            for alert in await records.alerts(open_only=True):
                self.care.apply(alert)
        except StoreError as exc:
            log.warning("care records not seeded from the store: %s", exc)

    async def publish_care(self, record: CareRecord) -> None:
        """A person's change: shown here at once, and published so other consoles and the clinical loop see it."""
        message = self.care.apply(record)
        self.hub.broadcast_event(message, needs=needs_of(message.message))
        client = self.bus_client
        if client is None:
            log.warning("bus away: %s %s not published (it is stored; others see it when they reseed)",
                        type(record).__name__, record.id)  # fmt: skip
            return
        try:
            await client.publish(care_topic_of(record), encode_record(record))
        except MqttLinkError as exc:
            log.warning("%s %s not published (%s)", type(record).__name__, record.id, exc)

    @property
    def bus_client(self) -> MqttLink | None:
        """The center session's link while connected: care records are published on it."""
        return self.links.get(_CENTER)

    async def run_bus(self) -> None:
        await asyncio.gather(self._read_bus(_CENTER), self._read_bus(_DEVICES))

    async def _read_bus(self, session: str) -> None:
        """Read one bus session, reconnecting whenever its connection is lost: what arrived meanwhile at a time, so
        that each client's next frame carries all of it (decision 24)."""
        attempt = 0
        while True:
            try:
                async with MqttLink(self.mqtt, client_id=f"{self.bus_id}-{session}") as client:
                    # The devices session also takes the 12-lead of the units watched now (decision 45).
                    watched = self.hub.watched_units() if session == _DEVICES else []
                    await client.subscribe(
                        [*_SUBSCRIPTIONS[session], *((device_topic(u, Stream.ECG), 0) for u in watched)]
                    )
                    self.links[session], attempt = client, 0
                    if len(self.links) == len(_SUBSCRIPTIONS):
                        self.bus_ready.set()
                    log.info("console's %s session connected to %s:%s", session, self.mqtt.host, self.mqtt.port)
                    async for batch in client.batches():
                        self.on_bus_batch((message.topic, message.payload) for message in batch)
            except MqttLinkError as exc:
                log.warning("bus connection of the %s session lost (%s); reconnecting", session, exc)
            finally:
                self.links.pop(session, None)
                self.bus_ready.clear()
            attempt += 1
            await asyncio.sleep(backoff_delay(attempt))

    def on_bus_batch(self, messages: Iterable[tuple[str, bytes]]) -> None:
        """What was read from the broker at once (topic, payload): device telemetry, link states and care records.
        Its unit updates go to the clients together at the end (Hub.broadcast_updates); nothing awaits in between, so
        no client's sender can tell the difference."""
        updates: list[tuple[Json, Permission]] = []
        for topic, payload in messages:
            update = self._on_bus_message(topic, payload)
            if update is not None:
                updates.append((update, needs_of(update)))
        self.hub.broadcast_updates(updates)

    def _on_bus_message(self, topic: str, payload: bytes) -> Json | None:
        """Handle one message from the broker; returns the coalescable unit update it makes, if any, for the batch
        to send."""
        rx = now_us()
        if topic.startswith(_CARE_PREFIX):
            record = self.care.decode(topic, payload)
            if record is not None:
                care_message = self.care.apply(record)
                self.hub.broadcast_event(care_message, needs=needs_of(care_message.message))
                if isinstance(record, Alert):
                    self._note_delivery(record)
            return None
        if is_link_topic(topic):
            try:
                state = LinkState.decode(payload)
            except (ValueError, KeyError) as exc:
                # The link topics are written only by the gateway: this is a bug, not bad input.
                log.error("malformed link state on %s: %s", topic, exc)
                return None
            return self.fleet.apply_link(state)  # VIEW_FLEET
        try:
            # The same judge as the gateway's: a console shows exactly what the gateway accepts.
            message = decode_device_message(topic, payload)
        except RejectedMessage as exc:
            # Bad input from a device, which the gateway records and tells the device about; not shown here.
            self.invalid_telemetry += 1
            log.debug("not shown: %s on %s", exc.reason, topic)
            return None
        if isinstance(message, EcgFrame):
            self.hub.send_ecg(message.unit, ecg_json(message, rx))
            return None
        update = self.fleet.apply(message, rx)
        if update is not None and update["type"] == "event":
            self.hub.broadcast_event(update, needs=needs_of(update))
            return None
        return update  # gps and status: VIEW_FLEET; vitals: VIEW_PATIENT_LIVE

    async def follow_ecg(self, unit: str, on: bool) -> None:
        client = self.links.get(_DEVICES)
        if client is None:
            return  # subscribed on (re)connect from hub.watched_units()
        try:
            if on:
                await client.subscribe([(device_topic(unit, Stream.ECG), 0)])
            else:
                await client.unsubscribe([device_topic(unit, Stream.ECG)])
        except MqttLinkError as exc:
            log.info("ECG subscription for %s not changed now (%s); the reconnect will", unit, exc)


CORE = web.AppKey("core", ConsoleCore)


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _health(request: web.Request) -> web.Response:
    core = request.app[CORE]
    healthy = core.bus_ready.is_set()
    return web.json_response(
        {
            "status": "ok" if healthy else "degraded",
            "bus_connected": healthy,
            "clients": len(core.hub.clients),
            "units": len(core.fleet.units),
            "invalid_telemetry": core.invalid_telemetry,
        },
        status=200 if healthy else 503,
    )


async def _fleet(request: web.Request) -> web.Response:
    principal = await require(request, Permission.VIEW_FLEET)
    if Permission.VIEW_PATIENT_LIVE in principal.permissions:
        await audit(request, "read_fleet_vitals")
    units = visible_units(request.app[CORE].fleet.snapshot(), principal.permissions)
    return web.json_response({"units": units, "server_time": now_us()})


def _fleet_message(core: ConsoleCore, principal: Principal) -> dict[str, object]:
    return {
        "type": "fleet",
        "units": visible_units(core.fleet.snapshot(), principal.permissions),
        "server_time": now_us(),
        "stale_after_s": core.settings.stale_after_s,
    }


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    core = request.app[CORE]
    principal = principal_of(request)  # the session and the Origin were checked by the auth middleware
    await audit(request, "ws_open")
    # No per-message compression: it would cost the server CPU per frame per client, and latency, for base64 ECG.
    ws = web.WebSocketResponse(heartbeat=20, max_msg_size=4096, compress=False)
    await ws.prepare(request)
    peer = request.remote or "?"
    client = Client(ws, peer, principal, core.hub.ecg_frames_max, request.transport, core.hub.send_interval_s)
    core.hub.add(client)
    client.send_now({"type": "session", **principal.as_json()})
    if client.may(Permission.VIEW_FLEET):
        client.send_now(_fleet_message(core, principal))
    client.send_now(core.care.snapshot(principal.permissions))
    sender = asyncio.create_task(_send_or_drop(client), name=f"console.ws[{peer}].send")
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                client.send_now({"type": "error", "reason": "messages must be JSON text"})
                continue
            await _on_client_message(request, client, msg.data)
    finally:
        for unit in core.hub.remove(client):
            await core.follow_ecg(unit, on=False)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    return ws


async def _send_or_drop(client: Client) -> None:
    try:
        await client.run_sender()
    except ClientDropped as exc:
        # Closing ends the handler's read loop too; a socket that accepts nothing is cut after close's timeout.
        log.info("websocket client %s disconnected: %s", client.name, exc)
        if client.closing is not None:
            # It still reads, only too slowly: tell it why, so that it reconnects and starts afresh.
            await client.ws.close(code=client.closing[0], message=str(exc).encode())
        elif client.transport is not None:
            # A socket that accepts nothing cannot take a close frame either: cut it.
            client.transport.abort()


async def _on_client_message(request: web.Request, client: Client, text: str) -> None:
    core, auth = request.app[CORE], request.app[AUTH]
    await auth.websocket_activity(client.principal)
    try:
        asked = json.loads(text)
        kind, unit = asked["type"], asked.get("unit")
    except (ValueError, TypeError, KeyError):
        client.send_now({"type": "error", "reason": "expected a JSON object with a 'type'"})
        return
    if kind in ("watch", "unwatch"):
        if not isinstance(unit, str) or not UNIT_PATTERN.fullmatch(unit):
            client.send_now({"type": "error", "reason": f"{kind} needs a valid 'unit'"})
            return
        if kind == "watch" and unit not in client.watching and not await _may_watch(request, client, unit):
            return
        if kind == "watch" and core.hub.watch(client, unit):
            await core.follow_ecg(unit, on=True)
        if kind == "unwatch" and core.hub.unwatch(client, unit):
            await core.follow_ecg(unit, on=False)
        client.send_now({"type": kind + "ed", "unit": unit})
    elif kind == "fleet":
        if client.may(Permission.VIEW_FLEET):
            client.send_now(_fleet_message(core, client.principal))
        else:
            client.send_now({"type": "error", "reason": f"{client.principal.role} may not VIEW_FLEET"})
    else:
        client.send_now({"type": "error", "reason": f"unknown message type {kind!r}"})


async def _may_watch(request: web.Request, client: Client, unit: str) -> bool:
    """Watching a unit's ECG is a read of its patient's data: VIEW_PATIENT_LIVE, audited once per watch (not per
    frame). Answers the client itself when refused."""
    encounter = next((e.id for e in request.app[CORE].care.encounters.values() if e.unit == unit), None)
    allowed = client.may(Permission.VIEW_PATIENT_LIVE)
    try:
        await audit(request, "watch_ecg", unit=unit, encounter_id=encounter, result="allowed" if allowed else "denied")
    except web.HTTPServiceUnavailable:
        client.send_now({"type": "error", "reason": "watch not possible now (the audit log is unavailable)"})
        return False
    if not allowed:
        client.send_now({"type": "error", "reason": f"{client.principal.role} may not VIEW_PATIENT_LIVE"})
    return allowed


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    core = app[CORE]
    await core.seed_from_store()
    bus = asyncio.create_task(core.run_bus(), name="console.bus")
    yield
    bus.cancel()
    await asyncio.gather(bus, return_exceptions=True)


async def _say_goodbye(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for handlers: close every browser with GOING_AWAY so it reconnects
    # (to this console when it is back, or to another behind the load balancer) instead of being cut.
    await asyncio.gather(
        *(c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"console shutting down") for c in app[CORE].hub.clients),
        return_exceptions=True,
    )


def _unit_ranking(app: web.Application, core: ConsoleCore) -> Callable[[float, float], list[dict[str, Any]]]:
    """Rank the units a dispatcher could send: status available, heard from recently, not on an open incident; by
    drive time on the street map once it is loaded, by straight-line distance until then."""

    def rank(lat: float, lon: float) -> list[dict[str, Any]]:
        now, stale_us = now_us(), core.settings.stale_after_s * 1e6
        busy = {i.unit for i in core.care.incidents.values() if i.unit}
        candidates = {
            u.unit: (u.lat, u.lon)
            for u in core.fleet.units.values()
            if u.status == "available" and u.lat is not None and u.lon is not None and u.link != "silent"
            and u.last_rx is not None and now - u.last_rx < stale_us and u.unit not in busy
        }  # fmt: skip
        here = (lat, lon)
        streets = app[STREET_LAYER].streets
        ranked: list[tuple[str, int | None]]
        if streets is None:
            ranked = [(k, None) for k in sorted(candidates, key=lambda k: haversine_m(here, candidates[k]))]
        else:
            ranked = [(k, round(s)) for k, s in streets.rank_by_drive_time(here, candidates)]
        return [{"unit": k, "drive_time_s": s, "metres": round(haversine_m(here, candidates[k]))} for k, s in ranked]

    return rank


def create_app(
    settings: ConsoleSettings, mqtt: MqttEndpoint, store: Store, *, sites: Sites | None = None
) -> web.Application:
    """The console. The store is mandatory: without it nobody can be authenticated, and nothing is served."""
    if not isinstance(store, Store):
        raise TypeError("the console needs a store: it authenticates every request against it")
    app = web.Application()
    core = app[CORE] = ConsoleCore(settings, mqtt, store)
    auth = Auth(store, settings.auth, core.hub)
    setup_auth(app, auth)
    setup_streets(app)  # GET /api/streets: the street layer under the fleet map
    context = CareContext(
        CareStore(store), sites or load_sites(None), core.care, core.publish_care, _unit_ranking(app, core)
    )
    setup_care(app, context, auth)
    app.router.add_get("/", _index)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/healthz", _health)
    app.router.add_get("/api/fleet", _fleet)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_say_goodbye)
    return app


class Console:
    """`async with Console(settings, http_port, mqtt, store) as console:` serves until the block exits."""

    def __init__(
        self,
        settings: ConsoleSettings,
        http_port: int,
        mqtt: MqttEndpoint,
        store: Store,
        *,
        sites: Sites | None = None,
    ) -> None:
        self.app = create_app(settings, mqtt, store, sites=sites)
        self._host = settings.host
        self._port = http_port
        self._runner: web.AppRunner | None = None
        self.port = http_port
        self._ssl: ssl.SSLContext | None = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
            self._ssl.load_cert_chain(settings.tls_cert, settings.tls_key)

    @property
    def core(self) -> ConsoleCore:
        return self.app[CORE]

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{self._host}:{self.port}/"

    async def __aenter__(self) -> Self:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the bound port, when 0 was asked
        try:
            async with asyncio.timeout(15):
                await self.core.bus_ready.wait()
        except TimeoutError:
            log.warning("console not yet connected to the bus; still trying")
        log.info("console serving %s", self.url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
