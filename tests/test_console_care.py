"""The console's care actions on the real stack: dispatcher incident → crew contact → alert on the websocket →
acknowledgement → activation → door → discharge → follow-up, each change seen by browsers and by the loop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest_asyncio

from ambulance_gateway import Gateway
from console import Console
from emergency.care._loop import ClinicalLoop
from emergency.protocol import EventKind
from emergency.settings import ConsoleSettings, MqttEndpoint
from emergency.sites import DEMO_SITES
from emergency.store import Store
from tests.conftest import login_to, ws_connect
from tests.test_care_loop import CARE, Crew
from tests.test_gateway import _gateway_settings, connected_device


class RoleSessions:
    """One logged-in console session per role, made on first use; `call` makes a request as a role."""

    def __init__(self, console_url: str, store: Store) -> None:
        self._url, self._store = console_url, store
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    async def __aenter__(self) -> RoleSessions:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for http in self._sessions.values():
            await http.close()

    async def of(self, role: str) -> aiohttp.ClientSession:
        if role not in self._sessions:
            self._sessions[role] = await login_to(self._url, self._store, role)
        return self._sessions[role]

    async def call(self, method: str, path: str, role: str, body: Any = None, status: int = 200) -> Any:
        http = await self.of(role)
        async with http.request(method, path, json=body) as response:
            text = await response.text()
            assert response.status == status, text
            return json.loads(text) if status == 200 else text


@pytest_asyncio.fixture(loop_scope="session")
async def store(postgres) -> AsyncIterator[Store]:  # type: ignore[no-untyped-def]
    async with Store.open(postgres.dsn) as store:
        yield store


async def test_dispatch_to_follow_up_through_the_console(
    store, gateway_endpoint: MqttEndpoint, console_endpoint: MqttEndpoint, make_unit
) -> None:
    """A dispatcher's incident is taken up by the crew's contact; the shock alert reaches a browser; a nurse
    acknowledges it and a physician activates the trauma team; the door time, discharge and the 7/30-day follow-ups
    follow; a role without the permission is refused."""
    unit, endpoint = await make_unit()
    async with (
        ClinicalLoop(CARE, gateway_endpoint, store, DEMO_SITES) as loop,
        Gateway(_gateway_settings(), gateway_endpoint, store, observer=loop),
        Console(ConsoleSettings(), 0, console_endpoint, store) as console,
        RoleSessions(console.url, store) as sessions,
        ws_connect(console.url, await sessions.of("ed_physician")) as ws,
    ):
        seen: list[dict[str, Any]] = []
        arrived = asyncio.Event()

        async def read() -> None:
            async for message in ws.messages():
                if message["type"] == "care":
                    seen.append(message)
                    arrived.set()

        reader = asyncio.create_task(read(), name="test.ws")

        async def care(predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
            async with asyncio.timeout(30):
                while True:
                    for m in seen:
                        if predicate(m):
                            return m
                    arrived.clear()
                    await arrived.wait()

        call = sessions.call

        incident = await call("POST", "/api/incidents", "dispatcher", {"priority": 1, "complaint": "stabbing",
                                                                       "address": "Harbour Rd 4"})  # fmt: skip
        await call("POST", "/api/incidents", "ed_nurse", {"complaint": "x"}, status=403)
        await call("POST", f"/api/incidents/{incident['id']}/assign", "dispatcher", {"unit": unit})
        await care(lambda m: m["kind"] == "incident" and m["record"]["unit"] == unit)
        await asyncio.sleep(0.3)  # the assignment reaches the clinical loop over the bus

        async with connected_device(unit, endpoint) as device:
            crew = Crew(device)
            await crew.event(EventKind.PATIENT_CONTACT, age=30, sex="male")
            await crew.event(EventKind.FINDING, text="penetrating torso injury", code="trauma_criteria")
            await crew.vitals(hr=135.0, sbp=80.0, spo2=96.0, rr=24.0, temp=36.4)
            encounter = (await care(lambda m: m["kind"] == "encounter" and m["record"]["unit"] == unit))["record"]
            assert encounter["incident_id"] == incident["id"]
            shock = (await care(lambda m: m["kind"] == "alert" and m["record"]["kind"] == "shock_index"))["record"]
            await loop.settled()

            await call("POST", f"/api/alerts/{shock['id']}/acknowledge", "dispatcher", status=403)
            acked = await call("POST", f"/api/alerts/{shock['id']}/acknowledge", "ed_nurse")
            assert acked["state"] == "acknowledged" and acked["acknowledged_role"] == "ed_nurse"
            await care(lambda m: m["kind"] == "alert" and m["record"]["id"] == shock["id"]
                       and m["record"]["state"] == "acknowledged")  # fmt: skip

            trauma = await care(lambda m: m["kind"] == "activation" and m["record"]["team"] == "trauma")
            team_ack = await call("POST", f"/api/activations/{trauma['record']['id']}/acknowledge", "ed_physician")
            assert team_ack["state"] == "acknowledged"

            door = await call("POST", f"/api/encounters/{encounter['id']}/milestones", "ed_nurse", {"name": "door"})
            assert door["status"] == "arrived" and door["door_at"] is not None
            await call("PUT", f"/api/encounters/{encounter['id']}/handoff", "ed_nurse", {"treatment": "TXA 1 g"})
            linked = await call("PATCH", f"/api/encounters/{encounter['id']}", "ed_nurse", {"patient_id": "MRN-1"})
            assert linked["patient_id"] == "MRN-1" and linked["alias"] == encounter["alias"]
            await call("POST", f"/api/encounters/{encounter['id']}/discharge", "ed_nurse", {"disposition": "home"},
                       status=403)  # fmt: skip
            handoff = await call("GET", f"/api/encounters/{encounter['id']}/handoff", "ed_physician")
            sections = {section["key"]: section for section in handoff["sections"]}
            assert sections["treatment"]["edited"] == "TXA 1 g" and "30" in sections["age"]["text"]
            await call("GET", f"/fhir/Encounter/{encounter['id']}/$everything", "ed_nurse", status=403)
            bundle = await call("GET", f"/fhir/Encounter/{encounter['id']}/$everything", "ed_physician")
            from emergency.care._fhir import validate_bundle

            validate_bundle(bundle)
            assert {e["resource"]["resourceType"] for e in bundle["entry"]} >= {"Patient", "Encounter", "Composition"}
            record = await call("GET", f"/api/encounters/{encounter['id']}", "followup")
            assert record["encounter"]["handoff_notes"] == {"treatment": "TXA 1 g"}
            assert {a["kind"] for a in record["alerts"]} >= {"shock_index", "trauma"}

        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    audited = {
        (r["role"], r["action"], r["result"])
        for r in await store.pool.fetch(
            "SELECT role, action, result FROM audit_log WHERE encounter_id = $1", encounter["id"]
        )
    }
    assert {("ed_nurse", "acknowledge_alert", "allowed"), ("followup", "read_encounter", "allowed")} <= audited


async def test_the_first_console_delivery_of_an_alert_is_recorded(store) -> None:  # type: ignore[no-untyped-def]
    """Acknowledging an alert that is already acknowledged changes nothing and keeps the first acknowledger."""
    from emergency.care._model import Alert, AlertKind, AlertState, Severity
    from emergency.store._care import CareStore

    records = CareStore(store)
    (alert_id,) = await records.reserve_ids("alerts", 1)
    now = time.time_ns() // 1000
    alert = Alert(alert_id, "ZZ1", None, AlertKind.NEWS2, Severity.CRITICAL, AlertState.RAISED, "NEWS2 9", {}, now, now)
    await records.save_alert_from_rules(alert, "raised", reopen=False)
    delivered = await records.mark_delivered(alert_id, at=now + 1)
    assert delivered is not None and delivered.state is AlertState.DELIVERED
    assert await records.mark_delivered(alert_id, at=now + 2) is None
    events = await store.pool.fetch("SELECT event FROM alert_events WHERE alert_id = $1", alert_id)
    assert sorted(r["event"] for r in events) == ["delivered", "raised"]
    first = await records.acknowledge_alert(alert_id, at=now + 3, by="a", role="ed_nurse")
    second = await records.acknowledge_alert(alert_id, at=now + 4, by="b", role="ed_physician")
    assert first.acknowledged_by == second.acknowledged_by == "a"


async def test_simulated_stemi_from_first_contact_to_follow_up(
    store, broker, gateway_endpoint: MqttEndpoint, console_endpoint: MqttEndpoint, tmp_path
) -> None:
    """The simulator's inferior-STEMI scenario, end to end on the real stack: pre-registration, the STEMI alert on
    a console websocket from the device's own 12-lead, acknowledgement, automatic cath-lab activation and its
    acknowledgement, door time, the handoff naming the STEMI, a FHIR bundle that validates, discharge and the
    follow-up tasks, and an outcome recorded."""
    import secrets

    from emergency.care._fhir import validate_bundle
    from emergency.stack import provision_units
    from firmware_sim import DeviceConfig, Fleet

    unit = "E2ESTEMI"
    password = secrets.token_urlsafe(12)
    provision_units(broker.root, {unit: password})
    async with (
        ClinicalLoop(CARE, gateway_endpoint, store, DEMO_SITES) as loop,
        Gateway(_gateway_settings(), gateway_endpoint, store, observer=loop),
        Console(ConsoleSettings(), 0, console_endpoint, store) as console,
        RoleSessions(console.url, store) as sessions,
        ws_connect(console.url, await sessions.of("ed_physician"), max_size=None) as ws,
        Fleet([DeviceConfig(unit, password)], broker.host, broker.port, tmp_path / "sim") as fleet,
    ):
        seen: list[dict[str, Any]] = []  # every care message so far: a wait may be for one that came earlier

        async def care(kind: str, predicate: Callable[[dict[str, Any]], bool], within_s: float = 90) -> dict[str, Any]:
            async with asyncio.timeout(within_s):
                while True:
                    for message in seen:
                        if message["kind"] == kind and predicate(message["record"]):
                            return dict(message["record"])
                    message = await ws.message()
                    if message["type"] == "care":
                        seen.append(message)

        call = sessions.call

        fleet.devices[0].play("stemi_inferior", time_scale=60)
        encounter = await care("encounter", lambda r: r["unit"] == unit)
        stemi = await care("alert", lambda r: r["unit"] == unit and r["kind"] == "stemi")
        assert "inferior" in stemi["summary"] and stemi["severity"] == "critical"
        activation = await care("activation", lambda r: r["encounter_id"] == encounter["id"])
        assert activation["team"] == "cath_lab" and activation["requested_by"] == "center"
        await loop.settled()
        # Shown to a physician's console, so delivered; then acknowledged.
        await care("alert", lambda r: r["id"] == stemi["id"] and r["state"] == "delivered")
        await call("POST", f"/api/alerts/{stemi['id']}/acknowledge", "ed_physician")
        await call("POST", f"/api/activations/{activation['id']}/acknowledge", "ed_physician")
        await call("POST", f"/api/encounters/{encounter['id']}/milestones", "ed_nurse", {"name": "door"})
        await call("POST", f"/api/encounters/{encounter['id']}/milestones", "ed_physician", {"name": "wire_crossing"})
        handoff = await call("GET", f"/api/encounters/{encounter['id']}/handoff", "ed_physician")
        text = {s["key"]: s["text"] for s in handoff["sections"]}
        assert "STEMI" in text["signs"] and "cath lab" in text["requirements"].lower(), text
        bundle = await call("GET", f"/fhir/Encounter/{encounter['id']}/$everything", "ed_physician")
        validate_bundle(bundle)
        assert any(e["resource"]["resourceType"] == "Observation" and "component" in e["resource"]
                   and len(e["resource"]["component"]) >= 12 for e in bundle["entry"])  # fmt: skip
        discharged = await call(
            "POST", f"/api/encounters/{encounter['id']}/discharge", "ed_physician",
            {"disposition": "home", "diagnosis": "I21.1 inferior STEMI"},
        )  # fmt: skip
        labels = sorted(f["label"] for f in discharged["follow_ups"])
        assert len(labels) == 2
        due = await call("GET", "/api/follow-ups", "followup")
        mine = [f for f in due if f["encounter_id"] == encounter["id"]]
        outcome = await call("POST", f"/api/follow-ups/{mine[0]['id']}/outcome", "followup",
                             {"state": "done", "alive": True, "readmitted": False, "mace": False})  # fmt: skip
        assert outcome["state"] == "done" and outcome["recorded_by"].startswith("followup-")
        quality = await call("GET", "/api/quality", "followup")
        assert quality
        feedback = await call("GET", f"/api/feedback?unit={unit}", "dispatcher")
        assert feedback[0]["alias"] == encounter["alias"] and "7 days: alive" in feedback[0]["outcome"]


async def test_dispatcher_gets_available_units_ranked_by_drive_time(
    store, gateway_endpoint: MqttEndpoint, console_endpoint: MqttEndpoint, make_unit
) -> None:
    """For an incident with a location the console ranks the available, live units by drive time on the street map
    (fastest first, with minutes and metres); a unit busy on another incident is not offered."""
    near, near_endpoint = await make_unit()
    far, far_endpoint = await make_unit()
    scene = DEMO_SITES.hospital("ESP")
    elsewhere = DEMO_SITES.hospital("KAI")
    async with (
        Gateway(_gateway_settings(), gateway_endpoint, store),
        Console(ConsoleSettings(), 0, console_endpoint, store) as console,
        RoleSessions(console.url, store) as sessions,
        connected_device(near, near_endpoint) as near_device,
        connected_device(far, far_endpoint) as far_device,
    ):
        for device, place in ((near_device, scene), (far_device, elsewhere)):
            crew = Crew(device)
            await crew.event(EventKind.STATUS, status="available")
            await crew.fix(place.lat + 0.0005, place.lon)
        incident = await sessions.call(
            "POST", "/api/incidents", "dispatcher",
            {"priority": 2, "complaint": "fall", "lat": scene.lat, "lon": scene.lon},
        )  # fmt: skip
        path = f"/api/incidents/{incident['id']}/candidates"
        for _ in range(300):  # until both units are known live and the street map is loaded
            ranked = await sessions.call("GET", path, "dispatcher")
            if {r["unit"] for r in ranked} >= {near, far} and ranked[0]["drive_time_s"] is not None:
                break
            await asyncio.sleep(0.1)
        assert [r["unit"] for r in ranked if r["unit"] in (near, far)] == [near, far]
        assert 0 < ranked[0]["drive_time_s"] < 600 and ranked[0]["metres"] < 200
        await sessions.call("GET", path, "ed_nurse", status=403)
