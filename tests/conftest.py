"""Session fixtures: one real PostgreSQL cluster and one real mosquitto for the whole run; console users and
logged-in HTTP sessions per role."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import aiomqtt
import asyncpg
import pytest
import pytest_asyncio
import websockets

from emergency.access import AccessStore, Role, hash_password
from emergency.mqtt import mqtt_client
from emergency.settings import MqttEndpoint
from emergency.stack import CONSOLE_ACCOUNT, GATEWAY_ACCOUNT, Broker, PostgresCluster, provision_unit
from emergency.store import Store

TEST_PASSWORD = "correct horse battery staple"


async def received_topics(client: aiomqtt.Client, within_s: float) -> list[str]:
    """The topics of every message `client` receives within `within_s` seconds."""
    topics: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            async for message in client.messages:
                topics.append(message.topic.value)
    return topics


_databases = itertools.count(1)


async def fresh_database(dsn: str, prefix: str) -> str:
    """A new, empty database beside the one at `dsn` (on the same cluster); its DSN."""
    name = f"{prefix}_{next(_databases)}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return dsn.rsplit("/", 1)[0] + f"/{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def services_dir(prefix: str) -> Iterator[Path]:
    """A 0755 directory for a broker's or a cluster's files (pytest's own tmp dirs are 0700, which PostgreSQL's
    unprivileged account cannot enter), removed with everything in it afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def stack_root() -> Iterator[Path]:
    with services_dir("emergency-test-") as root:
        yield root


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
        endpoint = broker.endpoint_for(unit, provision_unit(broker.root, unit))
        await until_authorized(endpoint)  # so that a test may connect as the unit at once
        return unit, endpoint

    return make


async def until_authorized(endpoint: MqttEndpoint) -> None:
    """Until the broker takes `endpoint`'s account (for up to 10 s): it reads a new account when it has handled the
    reload signal, and refuses a connect until then."""
    async with asyncio.timeout(10):
        while True:
            try:
                async with mqtt_client(endpoint, timeout=5):
                    return
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)


class Devices:
    """Publishes as the devices themselves, as consoles read them (decision 45): the unit named in a topic gets a
    broker account and a connection on its first publish."""

    def __init__(self, broker: Broker, stack: contextlib.AsyncExitStack) -> None:
        self._broker = broker
        self._stack = stack
        self._clients: dict[str, aiomqtt.Client] = {}

    async def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        unit = topic.split("/")[2]  # ems/v1/{unit}/{stream}
        client = self._clients.get(unit)
        if client is None:
            endpoint = self._broker.endpoint_for(unit, provision_unit(self._broker.root, unit))
            client = self._clients[unit] = await self._connect(endpoint)
        await client.publish(topic, payload, qos=qos)

    async def _connect(self, endpoint: MqttEndpoint) -> aiomqtt.Client:
        await until_authorized(endpoint)
        return await self._stack.enter_async_context(mqtt_client(endpoint, timeout=5))


@pytest_asyncio.fixture(loop_scope="session")
async def devices(broker: Broker) -> AsyncIterator[Devices]:
    async with contextlib.AsyncExitStack() as stack:
        yield Devices(broker, stack)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_store(postgres: PostgresCluster) -> AsyncIterator[Store]:
    """One store on the session's PostgreSQL, for fixtures that only need to write a few rows."""
    async with Store.open(postgres.dsn) as store:
        yield store


_user_numbers = itertools.count(1)
_test_password_hash: list[str] = []


@pytest.fixture
def make_user(shared_store: Store) -> Callable[..., Awaitable[str]]:
    """Create a console user with a role (and TEST_PASSWORD unless given); returns the username."""

    async def make(role: Role | str, *, password: str = TEST_PASSWORD) -> str:
        return await add_user_to(shared_store, role, password=password)

    return make


async def add_user_to(store: Store, role: Role | str, *, password: str = TEST_PASSWORD) -> str:
    """A new console user of that role in this store; returns the username."""
    # A random part too: this module may be imported twice (as conftest and as tests.conftest), counters and all.
    name = f"{Role(role).value.replace('_', '-')}-{next(_user_numbers)}-{secrets.token_hex(3)}"
    if password == TEST_PASSWORD:
        if not _test_password_hash:
            _test_password_hash.append(hash_password(TEST_PASSWORD))  # argon2id is slow on purpose: once
        password_hash = _test_password_hash[0]
    else:
        password_hash = hash_password(password)
    await AccessStore(store).add_user(name, Role(role), password_hash)
    return name


def console_origin(console_url: str) -> str:
    """The Origin a browser on the console's own page sends: scheme://host:port."""
    return console_url.rstrip("/")


async def login(console_url: str, username: str, password: str = TEST_PASSWORD) -> aiohttp.ClientSession:
    """An HTTP session logged in to the console (its cookie kept; the console's own Origin on every request).
    The caller closes it."""
    http = aiohttp.ClientSession(
        base_url=console_url,
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # the console is on an IP address
        headers={"Origin": console_origin(console_url)},
    )
    async with http.post("/api/login", json={"username": username, "password": password}) as response:
        if response.status != 200:
            await http.close()
            raise AssertionError(f"login as {username} failed: {response.status} {await response.text()}")
    return http


async def login_to(console_url: str, store: Store, role: Role | str) -> aiohttp.ClientSession:
    """A new user of that role in the console's store, logged in; the caller closes the session."""
    return await login(console_url, await add_user_to(store, role))


def session_cookie(http: aiohttp.ClientSession) -> str:
    return "; ".join(f"{c.key}={c.value}" for c in http.cookie_jar)


class ConsoleConnection(websockets.ClientConnection):
    """The console websocket read one message at a time: the console sends frames that are JSON arrays of messages
    (docs/console-api.md), and the rest of a frame waits here for the next read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unread: collections.deque[dict[str, Any]] = collections.deque()

    async def message(self) -> dict[str, Any]:
        """The next message; cancelling the wait loses none."""
        while not self._unread:
            self._unread.extend(json.loads(await self.recv()))
        return self._unread.popleft()

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Every message in order, until the connection closes normally."""
        while True:
            try:
                message = await self.message()
            except websockets.ConnectionClosedOK:
                return
            yield message


class ConsoleConnect(websockets.connect):
    """`websockets.connect` opening a ConsoleConnection, typed as such for `await` and `async with`."""

    def __await__(self) -> Generator[Any, None, ConsoleConnection]:
        return cast("Generator[Any, None, ConsoleConnection]", super().__await__())

    async def __aenter__(self) -> ConsoleConnection:
        return cast(ConsoleConnection, await super().__aenter__())


def ws_connect(console_url: str, http: aiohttp.ClientSession, **kwargs: Any) -> ConsoleConnect:
    """The console websocket as the logged-in `http` session's browser opens it (its cookie, the console's Origin)."""
    url = console_url.replace("http", "ws", 1) + "ws"
    kwargs.setdefault("origin", console_origin(console_url))
    return ConsoleConnect(
        url, additional_headers={"Cookie": session_cookie(http)}, create_connection=ConsoleConnection, **kwargs
    )


@pytest_asyncio.fixture(loop_scope="session")
async def logged_in(
    make_user: Callable[..., Awaitable[str]],
) -> AsyncIterator[Callable[[str, Role | str], Awaitable[aiohttp.ClientSession]]]:
    """`await logged_in(console.url, role)`: a fresh user of that role, logged in; closed after the test."""
    sessions: list[aiohttp.ClientSession] = []

    async def open_as(console_url: str, role: Role | str) -> aiohttp.ClientSession:
        http = await login(console_url, await make_user(role))
        sessions.append(http)
        return http

    yield open_as
    for http in sessions:
        await http.close()
