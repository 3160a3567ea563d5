"""Take a screenshot of a running console in Debian's Chromium (for the README and docs/screenshots/).

.venv/bin/python tools/screenshot_console.py http://127.0.0.1:8080/ docs/screenshots/console.png
"""

from __future__ import annotations

import asyncio
import sys

from playwright.async_api import async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def main(url: str, out: str, unit: str | None) -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1800, "height": 1000})
        await page.goto(url)
        await page.wait_for_function("window.__console && window.__console.fleet.units.size > 0")
        if unit:
            await page.evaluate("u => window.__console.select(u)", unit)
        await page.wait_for_function("document.getElementById('signal').textContent === 'LIVE'", timeout=20_000)
        await page.wait_for_timeout(6000)  # let the sweep fill the window
        await page.screenshot(path=out)
        await browser.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
