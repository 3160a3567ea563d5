"""One of our own components (`emergency console`, `emergency gateway`) run as a child process of the stack.

Each component gets its own interpreter, so on a multi-core machine the console's fan-out does not compete with the
gateway's ingest for one event loop. The child inherits the settings through the environment, logs to
`data/logs/{component}.log`, and dies with its parent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp

from emergency.stack._process import StackError, start_service, stop_service

log = logging.getLogger(__name__)


class ComponentProcess:
    """`async with ComponentProcess("console", root, health_url) as proc:` — started and healthy, or StackError."""

    def __init__(
        self,
        component: str,
        root: Path,
        health_url: str,
        env: dict[str, str] | None = None,
        *,
        name: str | None = None,  # for the log file, when several processes run the same component
        launcher: Sequence[str] = (),  # a command the component runs under (a profiler, in the benchmarks)
        start_timeout_s: float = 60.0,
    ) -> None:
        self.component = component
        self._launcher = tuple(launcher)
        self._start_timeout_s = start_timeout_s
        self.name = name or component
        self.root = root
        self.health_url = health_url
        self._env = {**os.environ, **(env or {})}
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def __aenter__(self) -> Self:
        log_path = self.root / "logs" / f"{self.name}.log"
        self._proc = await start_service(
            *self._launcher, sys.executable, "-m", "emergency.cli", self.component, log_path=log_path, env=self._env
        )
        try:
            async with asyncio.timeout(self._start_timeout_s):
                await self._wait_healthy()
        except TimeoutError:
            await stop_service(self._proc)
            raise StackError(f"{self.name} did not become healthy; see {log_path}") from None
        log.info("%s process %d healthy at %s", self.name, self._proc.pid, self.health_url)
        return self

    async def _wait_healthy(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                if self._proc is not None and self._proc.returncode is not None:
                    raise StackError(f"{self.component} exited with {self._proc.returncode}")
                try:
                    async with http.get(self.health_url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await stop_service(self._proc, grace_s=20)
        self._proc = None
