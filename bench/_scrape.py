"""The gateway's /metrics as the benchmarks read it, through prometheus_client's own parser."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


async def scrape(url: str) -> list[Sample]:
    """Every sample /metrics exposes now (histograms as their _bucket, _sum and _count samples)."""
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]
