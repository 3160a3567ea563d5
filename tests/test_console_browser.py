"""The console page in a real browser (Debian's Chromium driven by Playwright) on live data from simulated units."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from ambulance_gateway import Gateway
from console import Console
from emergency.settings import ConsoleSettings, GatewaySettings, MqttEndpoint
from emergency.stack import Broker, provision_units
from emergency.store import Store
from firmware_sim import DeviceConfig, Fleet
from tests.conftest import TEST_PASSWORD, add_user_to

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No background networking: this machine has no route out, and Chromium would keep trying.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed (./run installs it)")


async def test_page_shows_fleet_board_map_and_a_live_ecg(
    postgres, broker: Broker, gateway_endpoint: MqttEndpoint, console_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """A browser opening the console is sent to the login page; logged in as an ED physician it sees every unit on
    the board and the map, and the watched unit's ECG live."""
    credentials = {f"WEB{i}": secrets.token_urlsafe(12) for i in range(3)}
    provision_units(broker.root, credentials)
    configs = [DeviceConfig(unit, password) for unit, password in credentials.items()]
    async with (
        Store.open(postgres.dsn) as store,
        Gateway(GatewaySettings(http_port=0, client_id="gw-browser"), gateway_endpoint, store),
        Console(ConsoleSettings(), 0, console_endpoint, store) as console,
        Fleet(configs, broker.host, broker.port, tmp_path / "sim"),
        async_playwright() as p,
    ):
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1600, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(console.url)
            assert page.url.endswith("/static/login.html")
            await page.fill("#username", await add_user_to(store, "ed_physician"))
            await page.fill("#password", "not the password")
            await page.click("#submit")
            await page.wait_for_selector("#error:not([hidden])")
            await page.fill("#password", TEST_PASSWORD)
            await page.click("#submit")
            await page.wait_for_url(console.url)
            await page.wait_for_function("document.querySelectorAll('#board-rows tr').length >= 3", timeout=30_000)
            await page.click("#board-rows tr[data-unit='WEB1']")
            await page.wait_for_function("document.getElementById('signal').textContent === 'LIVE'", timeout=30_000)
            assert await page.text_content("#watched") == "WEB1"
            await page.wait_for_function("document.getElementById('v-hr').textContent !== '--'", timeout=15_000)
            # The ECG canvas is drawn on: some pixels are dark trace, not only the pink grid.
            dark = await page.evaluate(
                """() => { const c = document.getElementById('ecg');
                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 80 && d[i+1] < 80) n++; return n; }"""
            )
            assert dark > 1000
            assert await page.text_content("#conn") == "live"
            await page.screenshot(path=str(tmp_path / "console.png"))
            assert not errors, errors
        finally:
            await browser.close()
