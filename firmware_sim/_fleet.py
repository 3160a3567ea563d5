"""Many simulated devices in one process and one TaskGroup, started staggered so they do not connect in lockstep.

Capacity, measured against a real mosquitto with an acking center in another process (fleet process CPU over 15 s
of the standard load, 6 messages/s per unit): 100 units ≈ 47 % of one core, 250 units ≈ 89 % — about 0.45 % of a
core per unit, most of it in paho's per-packet work and the outbox's SQLite transactions. So one process carries
about 200 units comfortably; a bigger fleet wants several processes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from firmware_sim._device import Device, DeviceConfig, DeviceError

log = logging.getLogger(__name__)

# Between two units' starts: a fleet of 500 is up in 10 s, and the broker sees at most ~50 connects a second.
STAGGER_S = 0.02
_START_TIMEOUT_S = 30.0  # starting a device is local work (boot file, outbox); only a sick disk takes this long


class Fleet:
    """`async with Fleet(configs, host, port, state_dir) as fleet:` every device runs until the block exits.

    Each device runs in its own named task `sim.device[{unit}]` of the fleet's TaskGroup. Entering returns once
    every device has started (boot counted, outbox open, generating); connecting is each device's own affair.
    A device that fails with a bug takes the fleet down with it rather than dying unnoticed.
    """

    def __init__(
        self, configs: Sequence[DeviceConfig], host: str, port: int, state_dir: Path, *, stagger_s: float = STAGGER_S
    ) -> None:
        units = [config.unit for config in configs]
        if len(set(units)) != len(units):
            raise DeviceError("a unit appears twice in the fleet")
        self.devices = [Device(config, host, port, state_dir) for config in configs]
        self._stagger_s = stagger_s
        self._tasks: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> Self:
        started = [asyncio.Event() for _ in self.devices]
        self._stop.clear()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        for i, (device, event) in enumerate(zip(self.devices, started, strict=True)):
            self._tasks.create_task(self._run(device, i * self._stagger_s, event), name=f"sim.device[{device.unit}]")
        try:
            async with asyncio.timeout(_START_TIMEOUT_S + len(self.devices) * self._stagger_s):
                for event in started:
                    await event.wait()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        log.info("fleet of %d simulated units running", len(self.devices))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Each device's task leaves its `async with`, which stops its tasks and closes its outbox.
        self._stop.set()
        if self._tasks is not None:
            tasks, self._tasks = self._tasks, None
            await tasks.__aexit__(None, None, None)

    async def _run(self, device: Device, delay_s: float, started: asyncio.Event) -> None:
        await asyncio.sleep(delay_s)
        async with device:
            started.set()
            await self._stop.wait()

    def by_unit(self, unit: str) -> Device:
        return next(d for d in self.devices if d.unit == unit)


async def run_fleet(
    configs: Sequence[DeviceConfig], host: str, port: int, state_dir: Path, stop: asyncio.Event
) -> None:
    """Run a fleet until `stop` is set (what `emergency sim` calls)."""
    async with Fleet(configs, host, port, state_dir):
        await stop.wait()
