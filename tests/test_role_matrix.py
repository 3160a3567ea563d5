"""Every role against every permission-guarded route and every websocket message class: allowed or refused (403,
audited), as the role matrix in `emergency.access` says.

Adding a route: add one `Route(method, path, permission, body)` line to `ROUTES` (the permission the handler asks
`require` for; a body that passes the handler's validation, since some handlers validate before they check), or to
`SESSION_ONLY` / `PUBLIC` when it needs no permission. `test_every_route_is_in_the_matrix` fails until you do. A new
websocket message class goes into `console._hub.MESSAGE_NEEDS` or `CARE_NEEDS`, and into `LIVE_MESSAGES` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from console import Console
from emergency.access import ROLE_PERMISSIONS, Permission, Role
from emergency.bus import LinkCondition, LinkState, link_topic
from emergency.codec import encode_device_message
from emergency.mqtt import mqtt_client
from emergency.protocol import DeviceEvent, EventKind, GpsFix, Stream, Vitals, device_topic
from emergency.settings import ConsoleSettings, MqttEndpoint
from emergency.store import Store
from tests.conftest import ConsoleConnection, Devices, login_to, ws_connect

P = Permission
MISSING = 999_999_999  # an id no record has: an allowed call answers 404, a refused one 403 before looking


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    permission: Permission
    body: Any = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ROUTES = [
    Route("GET", "/api/fleet", P.VIEW_FLEET),
    Route("GET", "/api/incidents", P.VIEW_FLEET),
    Route("POST", "/api/incidents", P.MANAGE_INCIDENTS, {"complaint": "role matrix", "priority": 3}),
    Route("POST", f"/api/incidents/{MISSING}/assign", P.MANAGE_INCIDENTS, {"unit": "RM01"}),
    Route("GET", f"/api/incidents/{MISSING}/candidates", P.MANAGE_INCIDENTS),
    Route("GET", "/api/alerts", P.VIEW_ALERTS),
    Route("POST", f"/api/alerts/{MISSING}/acknowledge", P.ACK_ALERT),
    Route("GET", "/api/encounters", P.VIEW_PATIENT_LIVE),
    Route("GET", f"/api/encounters/{MISSING}", P.VIEW_ENCOUNTER),
    Route("PATCH", f"/api/encounters/{MISSING}", P.LINK_IDENTITY, {"patient_id": "MRN-X"}),
    Route("POST", f"/api/encounters/{MISSING}/activations", P.ACTIVATE_TEAM, {"team": "cath_lab"}),
    Route("POST", f"/api/activations/{MISSING}/acknowledge", P.ACK_ACTIVATION),
    Route("POST", f"/api/encounters/{MISSING}/milestones", P.RECORD_MILESTONE, {"name": "door"}),
    Route("PUT", f"/api/encounters/{MISSING}/handoff", P.EDIT_HANDOFF, {"treatment": "x"}),
    Route("POST", f"/api/encounters/{MISSING}/discharge", P.DISCHARGE, {"disposition": "home"}),
    Route("GET", "/api/follow-ups", P.RECORD_OUTCOME),
    Route("POST", f"/api/follow-ups/{MISSING}/outcome", P.RECORD_OUTCOME, {"state": "done"}),
    Route("GET", "/api/quality", P.VIEW_QUALITY),
    Route("GET", "/api/feedback", P.VIEW_FEEDBACK),
    Route("GET", f"/api/encounters/{MISSING}/handoff", P.VIEW_PATIENT_LIVE),
    Route("GET", f"/fhir/Encounter/{MISSING}/$everything", P.EXPORT_FHIR),
    Route("GET", "/api/audit", P.QUERY_AUDIT),
    Route("GET", "/api/users", P.MANAGE_USERS),
    Route("POST", "/api/users", P.MANAGE_USERS, {"username": "x"}),  # 400 (no role) once allowed
    Route("PATCH", "/api/users/nobody-here", P.MANAGE_USERS, {"disabled": False}),
    Route("DELETE", "/api/users/nobody-here/sessions", P.MANAGE_USERS),
]
# Any logged-in user; no patient data.
SESSION_ONLY = {"GET /", "GET /ws", "GET /api/whoami", "POST /api/logout", "GET /static", "GET /api/streets"}
PUBLIC = {"GET /healthz", "POST /api/login"}

# Websocket message classes, each with the bus message that makes the console send it.
LIVE_MESSAGES = {"gps": P.VIEW_FLEET, "status": P.VIEW_FLEET, "link": P.VIEW_FLEET, "vitals": P.VIEW_PATIENT_LIVE,
                 "event": P.VIEW_PATIENT_LIVE}  # fmt: skip


def _canonical(route: Route) -> str:
    path = route.path.replace(str(MISSING), "{id}").replace("nobody-here", "{username}")
    return f"{route.method} {path}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def console(console_endpoint: MqttEndpoint, shared_store: Store) -> AsyncIterator[Console]:
    async with Console(ConsoleSettings(), 0, console_endpoint, shared_store) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def as_role(console: Console, shared_store: Store) -> AsyncIterator[dict[Role, aiohttp.ClientSession]]:
    sessions = {role: await login_to(console.url, shared_store, role) for role in Role}
    yield sessions
    for http in sessions.values():
        await http.close()


def test_every_route_is_in_the_matrix(console: Console) -> None:
    """Every route the console serves is in ROUTES, SESSION_ONLY or PUBLIC: none is left out of the matrix."""
    served = {
        f"{r.method} {r.resource.canonical}"
        for r in console.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    listed = {_canonical(r) for r in ROUTES} | SESSION_ONLY | PUBLIC
    assert served - listed == set(), "add these routes to the role matrix test"


@pytest.mark.parametrize("role", list(Role))
async def test_role_against_every_route(
    role: Role, as_role: dict[Role, aiohttp.ClientSession], shared_store: Store
) -> None:
    """A role holding a route's permission gets past the check; any other is refused 403 and the refusal audited."""
    http = as_role[role]
    held = ROLE_PERMISSIONS[role]
    outcomes = {}
    for route in ROUTES:
        async with http.request(route.method, route.path, json=route.body) as response:
            outcomes[str(route)] = (response.status, await response.text())
    for route in ROUTES:
        status, text = outcomes[str(route)]
        if route.permission in held:
            assert status not in (401, 403) and status < 500, (role, str(route), status, text)
        else:
            assert status == 403, (role, str(route), status, text)
    async with http.get("/api/whoami") as response:
        username = (await response.json())["username"]
    rows = await shared_store.pool.fetch(
        "SELECT DISTINCT detail->>'permission' AS permission FROM audit_log"
        " WHERE action = 'permission_denied' AND result = 'denied' AND username = $1 AND role = $2",
        username, role.value,
    )  # fmt: skip
    assert {r.permission for r in ROUTES if r.permission not in held} <= {r["permission"] for r in rows}


def _now_us() -> int:
    return time.time_ns() // 1000


class Inbox:
    """What one websocket received, and a wake-up for whoever waits on it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def read(self, ws: ConsoleConnection) -> None:
        async for message in ws.messages():
            self.messages.append(message)
            self.arrived.set()

    def has(self, kind: str, unit: str) -> bool:
        return any(m["type"] == kind and m.get("unit") == unit for m in self.messages)

    async def wait_for(self, kind: str, unit: str) -> None:
        async with asyncio.timeout(20):
            while not self.has(kind, unit):
                self.arrived.clear()
                await self.arrived.wait()


async def test_websocket_message_classes_reach_only_roles_that_may_see_them(
    console: Console, as_role: dict[Role, aiohttp.ClientSession], gateway_endpoint: MqttEndpoint, devices: Devices
) -> None:
    """Positions, statuses and link states reach roles with VIEW_FLEET; vitals and events only VIEW_PATIENT_LIVE;
    the connect-time fleet snapshot carries vitals only for VIEW_PATIENT_LIVE; an ECG watch needs it too."""
    unit = "RMWS1"
    inbox = {role: Inbox() for role in Role}
    async with contextlib.AsyncExitStack() as stack:
        sockets_by_role = {
            role: await stack.enter_async_context(ws_connect(console.url, as_role[role])) for role in Role
        }
        readers = [asyncio.create_task(inbox[r].read(ws)) for r, ws in sockets_by_role.items()]
        async with mqtt_client(gateway_endpoint) as bus:
            witness = inbox[Role.ED_PHYSICIAN]  # may see every class: when it has them all, the hub offered them
            telemetry = [
                (device_topic(unit, Stream.GPS), encode_device_message(GpsFix(unit, 1, 0, _now_us(), 31.2, 121.4))),
                (device_topic(unit, Stream.VITALS), encode_device_message(Vitals(unit, 1, 1, _now_us(), hr=88.0))),
                (device_topic(unit, Stream.EVENT), encode_device_message(
                    DeviceEvent(unit, 1, 2, _now_us(), EventKind.STATUS, {"status": "en_route"}))),
                (device_topic(unit, Stream.EVENT), encode_device_message(
                    DeviceEvent(unit, 1, 3, _now_us(), EventKind.FINDING, {"text": "chest pain"}))),
            ]  # fmt: skip
            link = LinkState(unit, LinkCondition.SILENT, _now_us(), _now_us()).encode()
            async with asyncio.timeout(30):
                while not all(witness.has(kind, unit) for kind in LIVE_MESSAGES):
                    for topic, payload in telemetry:
                        await devices.publish(topic, payload, qos=1)
                    await bus.publish(link_topic(unit), link, qos=1)
                    await asyncio.sleep(0.3)
        # Two round trips per socket: what the hub queued before them has been sent (events go before updates
        # within a batch, so the second answer follows the whole batch of the first).
        for role, ws in sockets_by_role.items():
            for barrier in ("RMB01", "RMB02"):
                await ws.send(json.dumps({"type": "unwatch", "unit": barrier}))
                await inbox[role].wait_for("unwatched", barrier)
            await ws.send(json.dumps({"type": "watch", "unit": unit}))
            await ws.send(json.dumps({"type": "fleet"}))
            await ws.send(json.dumps({"type": "unwatch", "unit": "RMB03"}))
            await inbox[role].wait_for("unwatched", "RMB03")
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    for role in Role:
        held = ROLE_PERMISSIONS[role]
        seen = inbox[role].messages
        kinds = {m["type"] for m in seen if m.get("unit") == unit}
        for kind, needs in LIVE_MESSAGES.items():
            assert (kind in kinds) == (needs in held), (role, kind)
        assert ("watched" in kinds) == (P.VIEW_PATIENT_LIVE in held), role
        fleet = [m for m in seen if m["type"] == "fleet"]
        assert bool(fleet) == (P.VIEW_FLEET in held), role
        if fleet:
            ours = next(u for u in fleet[-1]["units"] if u["unit"] == unit)
            assert (ours["vitals"] == {"hr": 88.0}) == (P.VIEW_PATIENT_LIVE in held), role
            assert (ours["lat"] == 31.2) == (P.VIEW_FLEET in held), role
        session = next(m for m in seen if m["type"] == "session")
        assert session["role"] == role.value
