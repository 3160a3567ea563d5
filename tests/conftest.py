"""Session fixtures: one real PostgreSQL cluster and one real mosquitto for the whole run."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio

from emergency.settings import MqttEndpoint
from emergency.stack import CONSOLE_ACCOUNT, GATEWAY_ACCOUNT, Broker, PostgresCluster, provision_unit


async def received_topics(client: aiomqtt.Client, within_s: float) -> list[str]:
    """The topics of every message `client` receives within `within_s` seconds."""
    topics: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            async for message in client.messages:
                topics.append(message.topic.value)
    return topics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def stack_root() -> Iterator[Path]:
    """A 0755 directory (pytest's own tmp dirs are 0700, which PostgreSQL's unprivileged account cannot enter)."""
    root = Path(tempfile.mkdtemp(prefix="emergency-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def postgres(stack_root: Path) -> AsyncIterator[PostgresCluster]:
    async with PostgresCluster(stack_root / "pg", free_port(), timescaledb=False) as cluster:
        yield cluster


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def broker(stack_root: Path) -> AsyncIterator[Broker]:
    async with Broker(stack_root / "broker", free_port()) as running:
        yield running


@pytest.fixture(scope="session")
def gateway_endpoint(broker: Broker) -> MqttEndpoint:
    return broker.internal_endpoint(GATEWAY_ACCOUNT)


@pytest.fixture(scope="session")
def console_endpoint(broker: Broker) -> MqttEndpoint:
    return broker.internal_endpoint(CONSOLE_ACCOUNT)


_unit_numbers = itertools.count(1)


@pytest.fixture
def make_unit(broker: Broker, request: pytest.FixtureRequest) -> Callable[[], Awaitable[tuple[str, MqttEndpoint]]]:
    """Provision a fresh unit on the session broker; returns (unit id, its endpoint)."""

    async def make() -> tuple[str, MqttEndpoint]:
        unit = f"T{next(_unit_numbers):04d}"
        password = provision_unit(broker.root, unit)
        return unit, broker.endpoint_for(unit, password)

    return make
