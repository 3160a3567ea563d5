"""The `emergency` command: run the stack, a demo with a simulated fleet, the simulator alone, provision units,
manage console users."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from emergency.settings import Settings

if TYPE_CHECKING:
    from emergency.care._loop import EtaSource

log = logging.getLogger("emergency")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Per-message chatter from libraries stays out of INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# Young collections after this many net allocations of tracked objects (CPython's default is 700). Messages in
# flight (queued for the commit, held for the 12-lead analysis) then die young instead of being promoted, so the
# full collections that walk every live object become rare.
_GC_YOUNG_THRESHOLD = 20_000


def _settle_heap() -> None:
    """Once a long-running process has started: what it loaded (modules, the street map, sites, seeded state) goes
    to the garbage collector's permanent generation, and young collections run less often.

    Why (decision 26): at 500 units the gateway ran a full collection every ~3 s, each a 100–230 ms stall of ingest
    and alerting (measured with a gc callback). After this, a handful in a minute, and young ones of 10–50 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, 10, 10)


async def _wait_for_stop_signal() -> None:
    _settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("stopping")


def _write_private_json(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    tmp.replace(path)


@contextlib.asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[dict[str, object]]:
    """PostgreSQL, mosquitto, store, gateway and console, started in order and stopped in reverse.

    The gateway runs in this process; the console in a child process of its own (`emergency console`), so that
    the console's fan-out and the gateway's ingest each have an event loop and a core.
    """
    from ambulance_gateway import Gateway, Partition
    from emergency.care import ClinicalLoop
    from emergency.sites import load_sites
    from emergency.stack import GATEWAY_ACCOUNT, Broker, PostgresCluster, provisioned_units
    from emergency.stack.component import ComponentProcess
    from emergency.store import Store

    root = settings.data_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        if settings.store.dsn is None:
            pg = await stack.enter_async_context(PostgresCluster(root, settings.pg_port, settings.pg_os_user))
            dsn = pg.dsn
        else:
            dsn = settings.store.dsn.get_secret_value()
        broker = await stack.enter_async_context(Broker(root, settings.mqtt_port, tls_port=settings.mqtt_tls_port))
        store = await stack.enter_async_context(Store.open(dsn, settings.store))
        # The clinical loop evaluates every unit this gateway ingests, so it lives beside it (per-unit affinity).
        care = await stack.enter_async_context(
            ClinicalLoop(
                settings.care,
                broker.internal_endpoint(GATEWAY_ACCOUNT),
                store,
                load_sites(settings.care.sites_file),
                eta=await _street_eta(root),
            )
        )
        partitions = settings.gateway.partition_count
        gateway = await stack.enter_async_context(
            Gateway(
                settings.gateway.model_copy(update={"partition_index": 0}),
                broker.internal_endpoint(GATEWAY_ACCOUNT),
                store,
                observer=care,
                partition=Partition(0, partitions, lambda: provisioned_units(root)),
            )
        )
        # More partitions: one more gateway process (with its own clinical loop) for each.
        for index in range(1, partitions):
            port = settings.gateway.http_port + index
            await stack.enter_async_context(
                ComponentProcess(
                    "gateway",
                    root,
                    f"http://{settings.gateway.http_host}:{port}/healthz",
                    env={
                        "EMERGENCY_STORE__DSN": dsn,
                        "EMERGENCY_GATEWAY__PARTITION_INDEX": str(index),
                        "EMERGENCY_GATEWAY__HTTP_PORT": str(port),
                        "EMERGENCY_GATEWAY__CLIENT_ID": f"{settings.gateway.client_id}-{index}",
                    },
                    name=f"gateway-{index}",
                )
            )
        console_url = f"http://{settings.console.host}:{settings.http_port}/"
        console = await stack.enter_async_context(
            ComponentProcess("console", root, console_url + "healthz", env={"EMERGENCY_STORE__DSN": dsn})
        )
        info: dict[str, object] = {
            "mqtt": {"host": broker.host, "port": broker.port},
            "mqtt_tls": {"host": broker.host, "port": broker.tls_port, "ca_file": str(broker.ca_file)}
            if broker.tls_port
            else None,
            "console_url": console_url,
            "console_pid": console.pid,
            "gateway_metrics_url": gateway.metrics_url,
            "gateway_health_url": gateway.health_url,
            "postgres_dsn": dsn,
            "timescaledb": store.timescaledb,
            "pid": os.getpid(),
        }
        stack_json = root / "stack.json"
        _write_private_json(stack_json, info)
        stack.callback(stack_json.unlink, missing_ok=True)
        log.info("stack ready: console %s, MQTT %s:%d", console_url, broker.host, broker.port)
        yield info
    log.info("stack stopped")


def _sim_credentials(settings: Settings, count: int) -> dict[str, str]:
    """Provision `sim-001`… once; their passwords are kept (0600) so later runs reuse the same accounts."""
    from emergency.stack import provision_units

    root = settings.data_dir.resolve()
    path = root / "sim" / "credentials.json"
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    wanted = {f"sim-{i:03d}" for i in range(1, count + 1)}
    new = {unit: secrets.token_urlsafe(18) for unit in sorted(wanted - known.keys())}
    if new:
        provision_units(root, new)
        known.update(new)
        _write_private_json(path, known)
    return {unit: known[unit] for unit in sorted(wanted)}


@contextlib.asynccontextmanager
async def simulated_fleet(settings: Settings, count: int, *, clinical_scenarios: bool = False) -> AsyncIterator[object]:
    """The simulated fleet; with `clinical_scenarios` every unit plays the demo mix of calls (`demo_mix`)."""
    from emergency.stack.tls import ensure_ca
    from firmware_sim import DeviceConfig, Fleet, demo_mix

    root = settings.data_dir.resolve()
    credentials = _sim_credentials(settings, count)
    mixes = [demo_mix(i) if clinical_scenarios else None for i in range(count)]
    if settings.mqtt_tls_port is None:
        configs = [
            DeviceConfig(unit=unit, password=password, scenarios=mix)
            for (unit, password), mix in zip(credentials.items(), mixes, strict=True)
        ]
        port = settings.mqtt_port
    else:
        # As real ambulances would: TLS, each unit with its own certificate from the stack's CA.
        from emergency.stack.tls import device_cert

        ca = ensure_ca(root)
        configs = []
        for (unit, password), mix in zip(credentials.items(), mixes, strict=True):
            pair = device_cert(root, unit)
            configs.append(
                DeviceConfig(
                    unit=unit, password=password, tls_ca=ca, tls_cert=pair.cert, tls_key=pair.key, scenarios=mix
                )
            )
        port = settings.mqtt_tls_port
    async with Fleet(configs, "127.0.0.1", port, root / "sim") as fleet:
        yield fleet


async def _up(settings: Settings) -> None:
    async with running_stack(settings):
        await _wait_for_stop_signal()


@contextlib.asynccontextmanager
async def _first_calls_soon(fleet: object) -> AsyncIterator[None]:
    """In the demo, the first units reach their critical patients within the first minutes instead of after a
    drive across the city: one scenario starts every 30 s."""
    from firmware_sim import Fleet
    from firmware_sim._scenario import CRITICAL_SCENARIOS

    assert isinstance(fleet, Fleet)

    async def start() -> None:
        for device, name in zip(fleet.devices, CRITICAL_SCENARIOS, strict=False):
            await asyncio.sleep(30)
            device.play(name)

    task = asyncio.create_task(start(), name="demo.first-calls")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _demo_logins(settings: Settings, dsn: str) -> dict[str, str]:
    """One console user per role, named after it, with a password made once per data directory (kept 0600)."""
    from emergency.access import AccessStore, Role, hash_password
    from emergency.store import Store

    path = settings.data_dir.resolve() / "demo" / "logins.json"
    logins: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if set(logins) != {r.value for r in Role}:
        logins = {role.value: secrets.token_urlsafe(9) for role in Role}
        _write_private_json(path, logins)
    async with Store.open(dsn, settings.store) as store:
        users = AccessStore(store)
        for role in Role:
            await users.put_user(role.value, role, await asyncio.to_thread(hash_password, logins[role.value]))
    return logins


async def _demo(settings: Settings, units: int) -> None:
    async with (
        running_stack(settings) as info,
        simulated_fleet(settings, units, clinical_scenarios=True) as fleet,
        _first_calls_soon(fleet),
    ):
        logins = await _demo_logins(settings, str(info["postgres_dsn"]))
        table = "\n".join(f"    {user:<13} {password}" for user, password in logins.items())
        print(
            f"\n  Emergency center demo is running: open {info['console_url']}\n  ({units} simulated ambulances;"
            f" Ctrl-C stops everything)\n\n  Demo logins (username = role, password):\n{table}\n",
            flush=True,
        )
        await _wait_for_stop_signal()


def _store_dsn(settings: Settings) -> str:
    from emergency.stack.postgres import private_dsn

    if settings.store.dsn is not None:
        return settings.store.dsn.get_secret_value()
    return private_dsn(settings.data_dir.resolve(), settings.pg_port)


async def _street_eta(root: Path) -> EtaSource | None:
    """ETAs by drive time on the street map (loaded in a thread, cached under the data directory); None, and the
    loop's straight-line estimate, when the map cannot be read."""
    from emergency.care._loop import StreetEta
    from emergency.geo import GeoError, StreetMap

    try:
        return StreetEta(await asyncio.to_thread(StreetMap.load, root / "cache"))
    except GeoError as exc:
        log.warning("ETAs by straight line: the street map is not available (%s)", exc)
        return None


async def _gateway(settings: Settings) -> None:
    """A gateway process (with its clinical loop) on a running stack: one partition of the units when
    EMERGENCY_GATEWAY__PARTITION_COUNT > 1, or a restart of the only gateway after a crash."""
    from ambulance_gateway import Gateway, Partition
    from emergency.care import ClinicalLoop
    from emergency.sites import load_sites
    from emergency.stack import GATEWAY_ACCOUNT, internal_endpoint, provisioned_units
    from emergency.store import Store

    root = settings.data_dir.resolve()
    endpoint = internal_endpoint(root, GATEWAY_ACCOUNT, settings.mqtt_port)
    g = settings.gateway
    partition = Partition(g.partition_index, g.partition_count, lambda: provisioned_units(root))
    async with (
        Store.open(_store_dsn(settings), settings.store) as store,
        ClinicalLoop(
            settings.care, endpoint, store, load_sites(settings.care.sites_file), eta=await _street_eta(root)
        ) as care,
        Gateway(g, endpoint, store, observer=care, partition=partition),
    ):
        await _wait_for_stop_signal()


async def _console(settings: Settings) -> None:
    """One more console process on a running stack."""
    from console import Console
    from emergency.stack import CONSOLE_ACCOUNT, internal_endpoint
    from emergency.store import Store

    endpoint = internal_endpoint(settings.data_dir.resolve(), CONSOLE_ACCOUNT, settings.mqtt_port)
    async with (
        Store.open(_store_dsn(settings), settings.store) as store,
        Console(settings.console, settings.http_port, endpoint, store) as console,
    ):
        log.info("console serving %s", console.url)
        await _wait_for_stop_signal()


async def _sim(settings: Settings, units: int) -> None:
    async with simulated_fleet(settings, units):
        log.info("simulating %d units against MQTT 127.0.0.1:%d", units, settings.mqtt_port)
        await _wait_for_stop_signal()


def _unit_add(settings: Settings, unit: str, with_cert: bool) -> int:
    from emergency.stack import StackError, provision_unit
    from emergency.stack.tls import ensure_ca, issue_device_cert

    password: str | None = None
    if not sys.stdin.isatty():
        password = sys.stdin.readline().strip() or None
    try:
        issued = provision_unit(settings.data_dir.resolve(), unit, password)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"unit {unit} provisioned for MQTT 127.0.0.1:{settings.mqtt_port} (username {unit})")
    if password is None:
        print(f"password: {issued}  (shown once; store it on the device)")
    if with_cert:
        pair = issue_device_cert(settings.data_dir.resolve(), unit)
        ca = ensure_ca(settings.data_dir.resolve())
        print(f"TLS on port {settings.mqtt_tls_port}: certificate {pair.cert}, key {pair.key}, broker CA {ca}")
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    password = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != password:
        raise ValueError("the passwords differ")
    return password


async def _user_command(settings: Settings, args: argparse.Namespace) -> int:
    """`emergency user add NAME --role ROLE [--password-stdin]` and `emergency user list`, on the configured store."""
    from emergency.access import (
        AccessStore,
        Role,
        UserExists,
        WeakPassword,
        hash_password,
        normalize_username,
        valid_username,
    )
    from emergency.store import Store, StoreError

    try:
        async with Store.open(_store_dsn(settings), settings.store) as store:
            users = AccessStore(store)
            if args.user_command == "list":
                for user in await users.users():
                    state = "disabled" if user.disabled else "enabled"
                    print(f"{user.username:<24} {user.role.value:<13} {state}")
                return 0
            username = normalize_username(args.username)
            if not valid_username(username):
                print("error: a username is 1–64 of a-z 0-9 . _ -, starting with a letter or digit", file=sys.stderr)
                return 2
            try:
                password_hash = hash_password(_read_password(args.password_stdin))
                await users.add_user(username, Role(args.role), password_hash)
            except (WeakPassword, ValueError, UserExists) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(f"user {username} added with role {args.role}")
            return 0
    except (StoreError, OSError) as exc:
        print(f"error: the store is unavailable ({exc}); is the stack running?", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    from emergency.access import Role

    parser = argparse.ArgumentParser(prog="emergency", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run the whole stack in the foreground")
    demo = commands.add_parser("demo", help="the stack plus a simulated fleet")
    demo.add_argument("--units", type=int, default=8, help="simulated ambulances (default 8)")
    commands.add_parser("gateway", help="a gateway process joining the configured, running stack")
    commands.add_parser("console", help="a console process joining the configured, running stack")
    sim = commands.add_parser("sim", help="a simulated fleet against the configured stack")
    sim.add_argument("--units", type=int, default=8)
    unit = commands.add_parser("unit", help="device accounts")
    unit_commands = unit.add_subparsers(dest="unit_command", required=True)
    add = unit_commands.add_parser("add", help="provision a device (password from stdin, or generated)")
    add.add_argument("unit")
    add.add_argument("--cert", action="store_true", help="also issue a TLS client certificate (CN = unit id)")
    user = commands.add_parser("user", help="console users")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    user_add = user_commands.add_parser("add", help="add a console user (password prompted, or one line on stdin)")
    user_add.add_argument("username")
    user_add.add_argument("--role", required=True, choices=[r.value for r in Role])
    user_add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    user_commands.add_parser("list", help="list console users and their roles")
    args = parser.parse_args(argv)

    settings = Settings()
    configure_logging(settings.log_level)
    if args.command == "unit":
        return _unit_add(settings, args.unit, args.cert)
    if args.command == "user":
        return asyncio.run(_user_command(settings, args))
    from emergency.stack import StackError

    try:
        if args.command == "up":
            asyncio.run(_up(settings))
        elif args.command == "demo":
            asyncio.run(_demo(settings, args.units))
        elif args.command == "sim":
            asyncio.run(_sim(settings, args.units))
        elif args.command == "gateway":
            asyncio.run(_gateway(settings))
        elif args.command == "console":
            asyncio.run(_console(settings))
    except StackError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
