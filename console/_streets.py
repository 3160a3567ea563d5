"""The street layer under the fleet map: `GET /api/streets`, built once per process from the shipped extract.

The layer is loaded in the background at startup (from the street map cache in milliseconds, from the extract in a
few seconds on a first start), so the console is ready at once; until the layer is, the route answers 503 with
Retry-After and the page tries again. The body is the same for every client and changes only with the extract: it is
compressed once, served with a strong ETag, and browsers keep it a week.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from emergency.geo import GeoError, StreetMap, default_cache_dir

log = logging.getLogger(__name__)

STREETS_PATH = "/api/streets"
CACHE_CONTROL = "private, max-age=604800"  # behind the login, so never in a shared cache
RETRY_AFTER_S = 2


@dataclass(frozen=True, slots=True)
class StreetLayerBody:
    json: bytes
    gzipped: bytes
    etag: str

    @classmethod
    def of(cls, layer: object) -> StreetLayerBody:
        body = json.dumps(layer, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(body, gzip.compress(body, compresslevel=9, mtime=0), f'"{hashlib.sha256(body).hexdigest()[:32]}"')


@dataclass(slots=True)
class StreetLayerSlot:
    """Filled once by the startup task; read by every request."""

    cache_dir: Path
    body: StreetLayerBody | None = None
    streets: StreetMap | None = None  # for drive-time rankings, once loaded
    failed: str | None = None


STREET_LAYER = web.AppKey("street_layer", StreetLayerSlot)


def build_street_layer(cache_dir: Path) -> StreetLayerBody:
    return StreetLayerBody.of(StreetMap.load(cache_dir).street_layer())


async def _load(slot: StreetLayerSlot) -> None:
    try:
        streets = await asyncio.to_thread(StreetMap.load, slot.cache_dir)
        slot.body = await asyncio.to_thread(lambda: StreetLayerBody.of(streets.street_layer()))
        slot.streets = streets
    except GeoError as exc:
        # The console works without streets (the map keeps its graticule); say so once.
        slot.failed = str(exc)
        log.warning("no street layer on the map: %s", exc)
    else:
        log.info("street layer ready: %d bytes, %d gzipped", len(slot.body.json), len(slot.body.gzipped))


async def _street_layer(request: web.Request) -> web.Response:
    slot = request.app[STREET_LAYER]
    body = slot.body
    if body is None:
        if slot.failed is not None:
            raise web.HTTPNotFound(reason="no street layer", text=slot.failed)
        raise web.HTTPServiceUnavailable(reason="street layer loading", headers={"Retry-After": str(RETRY_AFTER_S)})
    headers = {"ETag": body.etag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept-Encoding"}
    if body.etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    if "gzip" in request.headers.get("Accept-Encoding", "").lower():
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=body.gzipped, content_type="application/json", headers=headers)
    return web.Response(body=body.json, content_type="application/json", headers=headers)


def setup_streets(app: web.Application, cache_dir: Path | None = None) -> None:
    """Serve the street layer at STREETS_PATH (behind the console's login); the layer is built by a startup task
    from the street map cached under `cache_dir` (default `<EMERGENCY_DATA_DIR>/cache`)."""
    slot = app[STREET_LAYER] = StreetLayerSlot(cache_dir if cache_dir is not None else default_cache_dir())

    async def street_layer_lifecycle(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_load(slot), name="console.streets")
        yield
        task.cancel()  # a load still reading the extract finishes in its thread; nobody waits for it
        await asyncio.gather(task, return_exceptions=True)

    app.router.add_get(STREETS_PATH, _street_layer)
    app.cleanup_ctx.append(street_layer_lifecycle)
