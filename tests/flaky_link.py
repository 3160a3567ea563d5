"""A flaky link between devices and the broker: a TCP proxy that delays, jitters, stalls and cuts connections.

The kernel here has no `sch_netem` (`tc qdisc add dev lo root netem ...` answers "Specified qdisc kind is unknown"),
so packet-level loss, duplication and reordering cannot be injected. Over TCP those show up to the application as
what this proxy produces: bursts of delay, jitter, stalls, and connections that break (after which MQTT's QoS 1
redelivery duplicates and the outbox replays). Seeded, so a failing run can be repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkProfile:
    delay_s: float = 0.05  # base one-way delay
    jitter_s: float = 0.15  # extra delay, uniform in [0, jitter_s], per chunk (order is kept)
    stall_probability: float = 0.02  # per chunk: the link freezes for stall_s
    stall_s: float = 2.0
    cut_probability: float = 0.004  # per chunk: the connection breaks


class FlakyLink:
    def __init__(self, upstream: tuple[str, int], profile: LinkProfile, seed: int = 1) -> None:
        self._upstream = upstream
        self._profile = profile
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self.port = 0
        self.cuts = 0

    async def __aenter__(self) -> FlakyLink:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        cut = asyncio.Event()
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, cut), name="flaky.up"),
            asyncio.create_task(self._pump(up_reader, writer, cut), name="flaky.down"),
        ]
        async with _closing(writer), _closing(up_writer):
            _, pending = await asyncio.wait([*pumps, asyncio.create_task(cut.wait())], return_when="FIRST_COMPLETED")
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: asyncio.Event) -> None:
        p = self._profile
        while data := await reader.read(4096):
            if self._rng.random() < p.cut_probability:
                self.cuts += 1
                cut.set()
                return
            pause = p.delay_s + self._rng.uniform(0, p.jitter_s)
            if self._rng.random() < p.stall_probability:
                pause += p.stall_s
            await asyncio.sleep(pause)
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def _closing(writer: asyncio.StreamWriter) -> AsyncIterator[None]:
    try:
        yield
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
