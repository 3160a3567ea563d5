"""Screenshots of the console in Debian's Chromium (for the README and docs/screenshots/).

One page of a running console, logged in as USER (the password is read from standard input):

    .venv/bin/python tools/screenshot_console.py --user NAME http://127.0.0.1:8080/ docs/screenshots/console.png [UNIT]

The three desks, on a demo-like stack this tool runs itself (private PostgreSQL and mosquitto in a temporary
directory, gateway, clinical loop, console, eight simulated units of which three play critical scenarios, a
dispatcher's calls, a discharge a week ago so that a follow-up is due, one user per role):

    .venv/bin/python tools/screenshot_console.py --desks docs/screenshots

writes desk-dispatch.png, desk-ed.png and desk-followup.png there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1920, "height": 1080}
SCENARIOS = ("stemi_inferior", "trauma_haemorrhagic_shock", "stroke_lvo")


async def log_in(context: BrowserContext, url: str, username: str, password: str) -> None:
    """Log the browser context in, as the login page does (the console's own Origin)."""
    response = await context.request.post(
        f"{url}api/login", data={"username": username, "password": password}, headers={"Origin": url.rstrip("/")}
    )
    if not response.ok:
        raise SystemExit(f"login as {username} failed: {response.status} {await response.text()}")


async def page_screenshot(url: str, out: str, unit: str | None, username: str, password: str) -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1800, "height": 1000})
        await log_in(context, url, username, password)
        page = await context.new_page()
        await page.goto(url)
        await page.wait_for_function("window.__console && window.__console.fleet.units.size > 0")
        if unit:
            await page.evaluate("u => window.__console.select(u)", unit)
            await page.wait_for_function("document.getElementById('signal').textContent === 'LIVE'", timeout=20_000)
            await page.wait_for_timeout(6000)  # let the sweep fill the window
        await page.screenshot(path=out)
        await browser.close()


@contextlib.asynccontextmanager
async def demo_stack(root: Path) -> AsyncIterator[tuple[str, Any, Any]]:
    """The stack with a simulated fleet; yields the console's URL, the fleet and the store."""
    from ambulance_gateway import Gateway
    from console import Console
    from emergency.care._loop import ClinicalLoop
    from emergency.settings import CareSettings, ConsoleSettings, GatewaySettings
    from emergency.sites import DEMO_SITES
    from emergency.stack import CONSOLE_ACCOUNT, GATEWAY_ACCOUNT, Broker, PostgresCluster, provision_units
    from emergency.store import Store
    from firmware_sim import DeviceConfig, Fleet
    from tests.conftest import free_port

    root.chmod(0o755)  # PostgreSQL runs as nobody when started by root
    credentials = {f"A{n:02d}": secrets.token_urlsafe(12) for n in range(1, 9)}
    async with (
        PostgresCluster(root / "pg", free_port(), timescaledb=False) as pg,
        Broker(root / "broker", free_port()) as broker,
    ):
        provision_units(broker.root, credentials)
        gateway_endpoint = broker.internal_endpoint(GATEWAY_ACCOUNT)
        async with (
            Store.open(pg.dsn) as store,
            ClinicalLoop(CareSettings(), gateway_endpoint, store, DEMO_SITES) as loop,
            Gateway(GatewaySettings(http_port=0, client_id="gw-shots"), gateway_endpoint, store, observer=loop),
            Console(ConsoleSettings(), 0, broker.internal_endpoint(CONSOLE_ACCOUNT), store) as console,
            Fleet(
                [DeviceConfig(u, p) for u, p in credentials.items()], broker.host, broker.port, root / "sim"
            ) as fleet,
        ):
            yield console.url, fleet, store


class Staff:
    """One logged-in user per role: HTTP sessions for the set-up, browser contexts for the screenshots."""

    def __init__(self, url: str, store: Any) -> None:
        self.url, self.store = url, store
        self.users: dict[str, str] = {}
        self.sessions: dict[str, aiohttp.ClientSession] = {}

    async def user(self, role: str) -> str:
        from tests.conftest import add_user_to

        if role not in self.users:
            self.users[role] = await add_user_to(self.store, role)
        return self.users[role]

    async def call(self, method: str, path: str, role: str, body: Any = None) -> Any:
        from tests.conftest import login

        if role not in self.sessions:
            self.sessions[role] = await login(self.url, await self.user(role))
        async with self.sessions[role].request(method, path, json=body) as response:
            response.raise_for_status()
            return await response.json()

    async def page(self, browser: Browser, role: str, desk: str) -> Page:
        from tests.conftest import TEST_PASSWORD

        context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        await log_in(context, self.url, await self.user(role), TEST_PASSWORD)
        page = await context.new_page()
        await page.goto(f"{self.url}#{desk}")
        await page.wait_for_function("window.__console !== undefined")
        return page

    async def close(self) -> None:
        for http in self.sessions.values():
            await http.close()


async def until(what: str, check: Any, within_s: int = 180) -> Any:
    for _ in range(within_s):
        if result := await check():
            print(f"  {what}", file=sys.stderr)
            return result
        await asyncio.sleep(1)
    raise TimeoutError(f"not within {within_s} s: {what}")


async def desk_screenshots(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="emergency-shots-") as tmp:
        async with demo_stack(Path(tmp)) as (url, fleet, store):
            staff = Staff(url, store)
            try:
                await shoot(staff, fleet, out_dir)
            finally:
                await staff.close()


async def shoot(staff: Staff, fleet: Any, out_dir: Path) -> None:
    for device, name in zip(fleet.devices, SCENARIOS, strict=False):
        device.play(name, time_scale=20)
    encounters = await until(
        "patients pre-registered",
        lambda: _at_least(staff.call("GET", "/api/encounters", "ed_physician"), len(SCENARIOS)),
    )
    await until("alerts raised", lambda: _at_least(staff.call("GET", "/api/alerts", "ed_physician"), 2))
    # A patient discharged a week ago (entered now): the 7-day follow-up is on today's worklist.
    done = next(e for e in encounters if e["unit"] != fleet.devices[0].unit)
    week_ago = time.time_ns() // 1000 - (7 * 86_400 + 3600) * 1_000_000
    await staff.call("POST", f"/api/encounters/{done['id']}/milestones", "ed_nurse", {"name": "door"})
    await staff.call("POST", f"/api/encounters/{done['id']}/discharge", "ed_physician",
                     {"disposition": "admitted", "diagnosis": "I63.5 ischaemic stroke", "at": week_ago})  # fmt: skip
    for complaint, priority, address in (("unconscious, breathing", 1, "Harbour Rd 4"),
                                         ("fall, hip pain", 3, "Elm St 17")):  # fmt: skip
        await staff.call("POST", "/api/incidents", "dispatcher",
                         {"priority": priority, "complaint": complaint, "address": address})  # fmt: skip

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await staff.page(browser, "dispatcher", "dispatch")
            await page.wait_for_function("window.__console.map.markers.length >= 6", timeout=60_000)
            await page.wait_for_timeout(3000)  # the map eases to the fleet
            box = await page.locator("#map").bounding_box()
            assert box is not None
            await page.fill("#inc-complaint", "chest pain, 58 y")
            await page.fill("#inc-address", "Station Sq 1")
            await page.mouse.click(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.4)
            await page.click("#inc-submit")
            await page.wait_for_selector("#incident-list li button.recommended")
            await page.screenshot(path=str(out_dir / "desk-dispatch.png"))

            page = await staff.page(browser, "ed_physician", "ed")
            await page.wait_for_selector("#ed-rows tr")
            stemi = next(e for e in encounters if e["unit"] == fleet.devices[0].unit)
            await page.click(f"#ed-rows tr[data-encounter='{stemi['id']}']")
            await page.wait_for_function("document.getElementById('signal').textContent === 'LIVE'")
            await page.wait_for_selector("#handoff textarea")
            await page.wait_for_timeout(10_000)  # one full 10 s sweep of the 12-lead
            await page.screenshot(path=str(out_dir / "desk-ed.png"))

            page = await staff.page(browser, "followup", "followup")
            await page.click("#fu-rows tr")
            await page.wait_for_selector("#loop-timeline li")
            await page.screenshot(path=str(out_dir / "desk-followup.png"))
        finally:
            await browser.close()


async def _at_least(records: Any, n: int) -> list[Any] | None:
    found = await records
    return found if len(found) >= n else None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--desks", type=Path, metavar="DIR", help="screenshot the three desks on a demo stack")
    parser.add_argument("url", nargs="?")
    parser.add_argument("out", nargs="?")
    parser.add_argument("unit", nargs="?")
    parser.add_argument("--user", help="log in as this user (password on standard input)")
    args = parser.parse_args()
    if args.desks:
        asyncio.run(desk_screenshots(args.desks))
    elif args.url and args.out and args.user:
        asyncio.run(page_screenshot(args.url, args.out, args.unit, args.user, sys.stdin.readline().strip()))
    else:
        parser.error("give --user NAME URL OUT [UNIT], or --desks DIR")
