"""Many simulated devices in one process, one TaskGroup, started staggered so they do not connect in lockstep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from firmware_sim._device import Device, DeviceConfig

log = logging.getLogger(__name__)

_STAGGER_S = 0.05


class Fleet:
    """`async with Fleet(configs, host, port, state_dir) as fleet:` — every device runs until the block exits."""

    def __init__(self, configs: Sequence[DeviceConfig], host: str, port: int, state_dir: Path) -> None:
        self.devices = [Device(config, host, port, state_dir) for config in configs]
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        try:
            for device in self.devices:
                await self._stack.enter_async_context(device)
                await asyncio.sleep(_STAGGER_S)
        except BaseException:
            await self._stack.aclose()
            raise
        log.info("fleet of %d simulated units running", len(self.devices))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    def by_unit(self, unit: str) -> Device:
        return next(d for d in self.devices if d.unit == unit)


async def run_fleet(
    configs: Sequence[DeviceConfig], host: str, port: int, state_dir: Path, stop: asyncio.Event
) -> None:
    async with Fleet(configs, host, port, state_dir):
        await stop.wait()
