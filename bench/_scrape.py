"""What the benchmarks read from outside the stack: the gateway's /metrics (through prometheus_client's own parser)
and the machine's busy CPU time."""

from __future__ import annotations

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


async def scrape(url: str) -> list[Sample]:
    """Every sample /metrics exposes now (histograms as their _bucket, _sum and _count samples)."""
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def busy_cpu_seconds() -> float:
    """CPU time used by everything on the machine so far (all cores)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0))
