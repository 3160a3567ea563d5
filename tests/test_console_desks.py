"""The console's three desks in a real browser (Debian's Chromium driven by Playwright) on the real stack: devices →
mosquitto → gateway → clinical loop → console, each test on a database of its own so that the desks show only its
records, each page logged in as a user of the role that works at the desk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright

from ambulance_gateway import Gateway
from console import Console
from emergency.care._loop import ClinicalLoop
from emergency.protocol import EventKind
from emergency.settings import CareSettings, ConsoleSettings, MqttEndpoint
from emergency.sites import DEMO_SITES
from emergency.stack import PostgresCluster
from emergency.store import Store
from tests.conftest import TEST_PASSWORD, add_user_to, console_origin, fresh_database, login
from tests.test_care_loop import CARE, Crew
from tests.test_console_browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_gateway import _gateway_settings, connected_device

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed (./run installs it)")

WAIT_MS = 30_000  # a condition, not a deadline: generous for a loaded machine


@dataclass
class Desks:
    console: Console
    store: Store
    loop: ClinicalLoop
    browser: Browser
    errors: list[str]
    users: dict[str, str] = field(default_factory=dict)  # role → username
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)  # role → logged-in HTTP session

    async def user(self, role: str) -> str:
        if role not in self.users:
            self.users[role] = await add_user_to(self.store, role)
        return self.users[role]

    async def page(self, role: str, desk: str) -> Page:
        """A browser page logged in as a user of `role`, on `desk`; page errors collected."""
        context = await self.browser.new_context(viewport={"width": 1920, "height": 1080})
        response = await context.request.post(
            f"{self.console.url}api/login",
            data={"username": await self.user(role), "password": TEST_PASSWORD},
            headers={"Origin": console_origin(self.console.url)},
        )
        assert response.ok, await response.text()
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        await page.goto(f"{self.console.url}#{desk}")
        await page.wait_for_function("window.__console !== undefined", timeout=WAIT_MS)
        return page

    async def call(self, method: str, path: str, role: str, body: Any = None) -> Any:
        """An HTTP action as a user of `role` (the same user as that role's pages)."""
        if role not in self.sessions:
            self.sessions[role] = await login(self.console.url, await self.user(role))
        async with self.sessions[role].request(method, path, json=body) as response:
            text = await response.text()
            assert response.status == 200, text
            return json.loads(text)


@contextlib.asynccontextmanager
async def desks(
    postgres: PostgresCluster,
    gateway_endpoint: MqttEndpoint,
    console_endpoint: MqttEndpoint,
    care: CareSettings = CARE,
) -> AsyncIterator[Desks]:
    dsn = await fresh_database(postgres.dsn, "desks")
    async with (
        Store.open(dsn) as store,
        ClinicalLoop(care, gateway_endpoint, store, DEMO_SITES) as loop,
        Gateway(_gateway_settings(), gateway_endpoint, store, observer=loop),
        Console(ConsoleSettings(), 0, console_endpoint, store) as console,
        async_playwright() as p,
    ):
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        d = Desks(console, store, loop, browser, [])
        try:
            yield d
        finally:
            await browser.close()
            for http in d.sessions.values():
                await http.close()
        assert not d.errors, d.errors


@contextlib.asynccontextmanager
async def reporting_positions(crews: dict[Crew, tuple[float, float]]) -> AsyncIterator[None]:
    """Each crew's device sends its fix twice a second, as a live unit does (the gateway marks a unit silent after
    1.5 s without data in these tests)."""

    async def report() -> None:
        while True:
            for crew, (lat, lon) in crews.items():
                await crew.fix(lat, lon)
            await asyncio.sleep(0.5)

    task = asyncio.create_task(report(), name="test.positions")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    (lat1, lon1), (lat2, lon2) = (tuple(map(math.radians, p)) for p in (a, b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371008.8 * math.asin(math.sqrt(h))


async def test_dispatcher_creates_an_incident_on_the_map_and_assigns_the_recommended_unit(
    postgres, gateway_endpoint, console_endpoint, make_unit
) -> None:
    """A dispatcher takes a call in the form, places it with a click on the map, and assigns the unit the desk
    recommends — the nearer of two available units; the incident then shows the unit and its eTimes timeline."""
    (near, near_endpoint), (far, far_endpoint) = await make_unit(), await make_unit()
    base = DEMO_SITES.bases[0]
    positions = {near: (base.lat + 0.004, base.lon + 0.004), far: (base.lat + 0.03, base.lon - 0.03)}
    async with (
        desks(postgres, gateway_endpoint, console_endpoint) as d,
        connected_device(near, near_endpoint) as near_device,
        connected_device(far, far_endpoint) as far_device,
        contextlib.AsyncExitStack() as stack,
    ):
        crews = {Crew(device): positions[device.unit] for device in (near_device, far_device)}
        for crew in crews:
            await crew.event(EventKind.STATUS, status="available")
        await stack.enter_async_context(reporting_positions(crews))
        page = await d.page("dispatcher", "dispatch")
        await page.wait_for_function(
            """units => units.every(u => { const x = window.__console.fleet.units.get(u);
                 return x && x.status === 'available' && x.lat != null; })""",
            arg=[near, far], timeout=WAIT_MS,
        )  # fmt: skip
        await page.fill("#inc-complaint", "chest pain, sweating")
        await page.fill("#inc-address", "Ring Road 12")
        await page.select_option("#inc-priority", "1")
        # Click the map beside the near unit's marker (a click on a marker selects the unit instead).
        await page.wait_for_function(
            "units => units.every(u => window.__console.map.markers.some(m => m.unit === u))", arg=[near, far],
            timeout=WAIT_MS,
        )  # fmt: skip
        marker = await page.evaluate("u => window.__console.map.markers.find(m => m.unit === u)", near)
        box = await page.locator("#map").bounding_box()
        assert box is not None
        await page.mouse.click(box["x"] + marker["x"] + 30, box["y"] + marker["y"] + 30)
        picked = await page.evaluate("window.__console.desks.dispatch.picked")
        assert picked is not None and "Location:" in (await page.text_content("#inc-location") or "")
        assert _metres(tuple(picked), positions[near]) < _metres(tuple(picked), positions[far])
        await page.click("#inc-submit")

        card = page.locator("#incident-list li", has_text="chest pain, sweating")
        recommended = card.locator("button.recommended")
        await recommended.wait_for(timeout=WAIT_MS)
        assert await recommended.get_attribute("data-unit") == near
        await recommended.click()
        await card.locator(".assigned", has_text=f"Unit {near}").wait_for(timeout=WAIT_MS)
        timeline = card.locator("ol.etimes li")
        assert await timeline.count() == 10 and "call" in (await timeline.first.text_content() or "")
        incident_id = int(await card.get_attribute("data-incident") or 0)
        incidents = await d.call("GET", "/api/incidents", "dispatcher")
        mine = next(i for i in incidents if i["id"] == incident_id)
        assert mine["unit"] == near and mine["priority"] == 1 and mine["lat"] == pytest.approx(picked[0])


async def test_ed_desk_shock_alert_banner_keyboard_acknowledgement_cath_lab_and_door(
    postgres, gateway_endpoint, console_endpoint, make_unit
) -> None:
    """A device's shock-range vitals put a critical banner on the ED desk; the `A` key acknowledges it; the cath-lab
    button activates the team and shows "requested"; the door milestone shows the door time; the live 12-lead is
    drawn in the 3×4 layout with its rhythm strip."""
    from firmware_sim import EcgModel

    unit, endpoint = await make_unit()
    base = DEMO_SITES.bases[0]
    async with (
        desks(postgres, gateway_endpoint, console_endpoint) as d,
        connected_device(unit, endpoint) as device,
        contextlib.AsyncExitStack() as stack,
    ):
        page = await d.page("ed_physician", "ed")
        crew = Crew(device)
        await crew.event(EventKind.STATUS, status="on_scene")
        await stack.enter_async_context(reporting_positions({crew: (base.lat, base.lon)}))
        await crew.event(EventKind.PATIENT_CONTACT, age=58, sex="male")
        await crew.event(EventKind.CHIEF_COMPLAINT, text="chest pain, clammy")
        await crew.vitals(hr=135.0, sbp=80.0, dbp=50.0, spo2=93.0, rr=24.0, temp=36.4)

        row = page.locator("#ed-rows tr", has_text="chest pain, clammy")
        await row.wait_for(timeout=WAIT_MS)
        await row.click()
        encounter_id = int(await row.get_attribute("data-encounter") or 0)
        await page.wait_for_function("u => document.getElementById('watched').textContent === u", arg=unit)
        banner = page.locator("#alarm-banner.critical")
        await banner.wait_for(timeout=WAIT_MS)
        alias = await page.text_content("#alias") or ""
        assert alias in (await banner.text_content() or "")
        assert await page.evaluate("window.__console.alarm.sounding")
        await page.locator("#p-alerts li[data-kind='shock_index'] button.ack").wait_for(timeout=WAIT_MS)

        await crew.ecg(EcgModel(heart_rate_bpm=120), seconds=4)
        await page.wait_for_function("document.getElementById('signal').textContent === 'LIVE'", timeout=WAIT_MS)
        assert await page.evaluate("window.__console.ecg.geometry().twelve")

        # Shock-range vitals raise several alerts at once (shock index, NEWS2, thresholds): `A` takes the top one each
        # time, and the banner goes quiet when none is left.
        unacknowledged = "window.__console.care.unacknowledged().length"
        while (waiting := await page.evaluate(unacknowledged)) > 0:
            await page.keyboard.press("a")  # focus is on the patient's row, not in a text field
            await page.wait_for_function(f"n => {unacknowledged} < n", arg=waiting, timeout=WAIT_MS)
        await page.locator("#alarm-banner.quiet").wait_for(timeout=WAIT_MS)
        alert = page.locator("#p-alerts li[data-kind='shock_index']")
        await alert.locator(".state", has_text="ack").wait_for(timeout=WAIT_MS)
        assert not await page.evaluate("window.__console.alarm.sounding")

        await page.click("#activations button[data-team='cath_lab']")
        await page.locator("#activations button[data-team='cath_lab'].requested", has_text="requested").wait_for(
            timeout=WAIT_MS
        )
        await page.click("#milestones button[data-milestone='door']")
        await page.locator("#p-door", has_text="Door").wait_for(timeout=WAIT_MS)
        assert await page.is_disabled("#milestones button[data-milestone='door']")

        record = await d.call("GET", f"/api/encounters/{encounter_id}", "ed_physician")
        assert record["encounter"]["door_at"] is not None
        shock = next(a for a in record["alerts"] if a["kind"] == "shock_index")
        assert shock["state"] == "acknowledged" and shock["acknowledged_by"] == d.users["ed_physician"]
        assert [(a["team"], a["state"]) for a in record["activations"]] == [("cath_lab", "requested")]


async def test_ed_desk_marks_lost_telemetry_on_the_patient_and_the_board(
    postgres, gateway_endpoint, console_endpoint, make_unit
) -> None:
    """When a unit with a patient falls silent, its board row and the patient view carry the striped
    "telemetry lost" banner."""
    unit, endpoint = await make_unit()
    async with desks(postgres, gateway_endpoint, console_endpoint) as d:
        page = await d.page("ed_nurse", "ed")
        async with connected_device(unit, endpoint) as device:
            crew = Crew(device)
            await crew.event(EventKind.PATIENT_CONTACT, age=71, sex="female")
            await crew.event(EventKind.CHIEF_COMPLAINT, text="slurred speech")
            await crew.vitals(hr=92.0, sbp=170.0, spo2=97.0, rr=16.0, temp=36.8)
            row = page.locator("#ed-rows tr", has_text="slurred speech")
            await row.wait_for(timeout=WAIT_MS)
            await row.click()
        # The device is gone: the gateway reports the link silent, and the desk says so.
        await page.locator("#ed-rows tr.stale", has_text="slurred speech").wait_for(timeout=WAIT_MS)
        await page.locator("#telemetry-banner:not([hidden])", has_text="TELEMETRY LOST").wait_for(timeout=WAIT_MS)


async def test_follow_up_desk_lists_a_due_follow_up_and_records_the_outcome(
    postgres, gateway_endpoint, console_endpoint, make_unit
) -> None:
    """After a discharge made over HTTP, the follow-up desk lists the patient's follow-ups; choosing one shows the
    closed loop from the call to discharge, and the outcome form records the outcome."""
    unit, endpoint = await make_unit()
    async with desks(postgres, gateway_endpoint, console_endpoint) as d, connected_device(unit, endpoint) as device:
        crew = Crew(device)
        await crew.event(EventKind.PATIENT_CONTACT, age=66, sex="male")
        await crew.event(EventKind.CHIEF_COMPLAINT, text="palpitations")
        ed = await d.page("ed_physician", "ed")
        row = ed.locator("#ed-rows tr", has_text="palpitations")
        await row.wait_for(timeout=WAIT_MS)
        encounter_id = int(await row.get_attribute("data-encounter") or 0)
        await d.loop.settled()
        await d.call("POST", f"/api/encounters/{encounter_id}/milestones", "ed_nurse", {"name": "door"})
        # Discharged a week and an hour ago (as entered afterwards): the 7-day follow-up is due now.
        week_ago = time.time_ns() // 1000 - (7 * 86_400 + 3600) * 1_000_000
        await d.call(
            "POST", f"/api/encounters/{encounter_id}/discharge", "ed_physician",
            {"disposition": "home", "diagnosis": "I47.1 supraventricular tachycardia", "at": week_ago},
        )  # fmt: skip
        await row.wait_for(state="detached", timeout=WAIT_MS)  # discharged: off the incoming board

        page = await d.page("followup", "followup")
        item = page.locator(f"#fu-rows tr[data-encounter='{encounter_id}']").first
        await item.wait_for(timeout=WAIT_MS)
        label = await item.locator("td").nth(1).text_content()
        assert label == "7 days" and "overdue" in (await item.locator("td").first.text_content() or "")
        await item.click()
        await page.locator("#loop-timeline li", has_text="discharge").wait_for(timeout=WAIT_MS)
        assert await page.locator("#loop-timeline li", has_text="call received").count() == 1
        await page.uncheck("#out-alive")
        await page.check("#out-readmitted")
        await page.fill("#out-notes", "readmitted day 5, died day 6")
        await page.click("#outcome-submit")
        await page.locator("#fu-saved", has_text="recorded").wait_for(timeout=WAIT_MS)
        await page.locator("#loop-timeline li", has_text="died").wait_for(timeout=WAIT_MS)

        follow_ups = (await d.call("GET", f"/api/encounters/{encounter_id}", "followup"))["follow_ups"]
        done = next(f for f in follow_ups if f["label"] == label)
        assert (done["state"], done["alive"], done["readmitted"], done["recorded_by"]) == (
            "done", False, True, d.users["followup"]
        )  # fmt: skip
        assert await page.locator("#quality-table tbody tr").count() > 0


async def test_ed_desk_stemi_from_the_devices_12_lead_is_acknowledged_and_the_cath_lab_activated_by_hand(
    postgres, gateway_endpoint, console_endpoint, make_unit
) -> None:
    """An inferior STEMI read from the device's own 12-lead sounds the critical banner naming it; the physician
    acknowledges it from the keyboard and activates the cath lab with its button (automatic activation off here),
    which then shows "requested"; the unit's arrival (door) shows its time."""
    from firmware_sim import EcgModel

    unit, endpoint = await make_unit()
    base = DEMO_SITES.bases[0]
    manual = CARE.model_copy(update={"auto_activate": False})
    async with (
        desks(postgres, gateway_endpoint, console_endpoint, manual) as d,
        connected_device(unit, endpoint) as device,
        contextlib.AsyncExitStack() as stack,
    ):
        page = await d.page("ed_physician", "ed")
        crew = Crew(device)
        await crew.event(EventKind.STATUS, status="on_scene")
        await stack.enter_async_context(reporting_positions({crew: (base.lat, base.lon)}))
        await crew.event(EventKind.PATIENT_CONTACT, age=64, sex="male")
        await crew.event(EventKind.CHIEF_COMPLAINT, text="crushing central chest pain")
        await crew.event(EventKind.FINDING, text="A", code="avpu")
        await crew.event(EventKind.FINDING, text="room air", code="supplemental_o2", value=0)
        await crew.vitals(hr=80.0, sbp=135.0, dbp=80.0, spo2=97.0, rr=16.0, temp=36.8)
        await crew.ecg(EcgModel(heart_rate_bpm=80, st_vector_mv=(0.0, 0.25, 0.0)), seconds=8)

        row = page.locator("#ed-rows tr", has_text="crushing central chest pain")
        await row.wait_for(timeout=WAIT_MS)
        await row.click()
        banner = page.locator("#alarm-banner.critical", has_text="STEMI")
        await banner.wait_for(timeout=WAIT_MS)
        assert await page.evaluate("window.__console.alarm.sounding")
        await page.keyboard.press("a")
        stemi = page.locator("#p-alerts li[data-kind='stemi']")
        await stemi.locator(".state", has_text="ack").wait_for(timeout=WAIT_MS)
        await page.locator("#alarm-banner.quiet").wait_for(timeout=WAIT_MS)

        assert not await page.locator("#activations button[data-team='cath_lab'].requested").count()
        await page.click("#activations button[data-team='cath_lab']")
        await page.locator("#activations button[data-team='cath_lab'].requested", has_text="requested").wait_for(
            timeout=WAIT_MS
        )
        await page.click("#milestones button[data-milestone='door']")
        await page.locator("#p-door", has_text="Door").wait_for(timeout=WAIT_MS)
        encounter_id = int(await row.get_attribute("data-encounter") or 0)
        record = await d.call("GET", f"/api/encounters/{encounter_id}", "ed_physician")
        acknowledged = next(a for a in record["alerts"] if a["kind"] == "stemi")
        assert acknowledged["state"] == "acknowledged" and acknowledged["acknowledged_role"] == "ed_physician"
        (activation,) = record["activations"]
        assert activation["team"] == "cath_lab" and activation["requested_by"].startswith("ed-physician-")
