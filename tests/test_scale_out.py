"""Past one process: two gateway processes each owning a partition of the units, two console processes fed from
the bus — the same guarantees as one of each."""

from __future__ import annotations

import asyncio
import collections
import secrets
from pathlib import Path

import aiohttp
from conftest import free_port, login_to, ws_connect
from ledger import assert_ledger_matches_store, settle

from ambulance_gateway import lane_of, partition_of
from emergency.protocol import DEVICE_STREAMS
from emergency.stack import Broker, PostgresCluster, provision_units
from emergency.stack.component import ComponentProcess
from emergency.store import Store
from firmware_sim import DeviceConfig, Fleet


def test_the_units_of_each_partition_spread_over_every_commit_lane() -> None:
    """A partition's units are split among its gateway's commit lanes (decision 38), none left idle or overfull,
    whatever the number of partitions (the lane hash takes the partition's share out first)."""
    units = [f"U{i:04d}" for i in range(600)]
    for partitions in (1, 2, 3):
        for lanes in (2, 3):
            for index in range(partitions):
                mine = [u for u in units if partition_of(u, partitions) == index]
                counts = collections.Counter(lane_of(u, partitions, lanes) for u in mine)
                assert set(counts) == set(range(lanes))
                assert min(counts.values()) > len(mine) / lanes / 2


async def _received(http: aiohttp.ClientSession, metrics_url: str) -> float:
    async with http.get(metrics_url) as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("emergency_gateway_received_total")
    )


async def _sees_every_unit(url: str, units: set[str], login: aiohttp.ClientSession) -> None:
    """A console's websocket delivers live positions of every unit."""
    seen: set[str] = set()
    async with ws_connect(url, login) as ws:
        async with asyncio.timeout(30):
            while not units <= seen:
                message = await ws.message()
                if message["type"] == "gps":
                    seen.add(message["unit"])


async def test_two_gateways_split_the_units_and_two_consoles_both_see_all(
    postgres: PostgresCluster, broker: Broker, tmp_path: Path
) -> None:
    """With two gateway partitions every unit is ingested by exactly one gateway process (no message received
    twice across them), everything is acknowledged and stored once, and both console processes show every unit."""
    pg = postgres
    credentials = {f"SCL{i}": secrets.token_urlsafe(12) for i in range(6)}
    provision_units(broker.root, credentials)
    assert {partition_of(u, 2) for u in credentials} == {0, 1}  # both partitions own units
    base = {"EMERGENCY_DATA_DIR": str(broker.root), "EMERGENCY_MQTT_PORT": str(broker.port),
            "EMERGENCY_STORE__DSN": pg.dsn}  # fmt: skip
    gateway_ports = [free_port(), free_port()]
    console_ports = [free_port(), free_port()]
    gateways = [
        ComponentProcess(
            "gateway",
            broker.root,
            f"http://127.0.0.1:{port}/healthz",
            env={
                **base,
                "EMERGENCY_GATEWAY__PARTITION_COUNT": "2",
                "EMERGENCY_GATEWAY__PARTITION_INDEX": str(i),
                "EMERGENCY_GATEWAY__HTTP_PORT": str(port),
                "EMERGENCY_GATEWAY__CLIENT_ID": f"gw-scale-{i}",
            },
            name=f"gateway-scale-{i}",
        )
        for i, port in enumerate(gateway_ports)
    ]
    consoles = [
        ComponentProcess(
            "console",
            broker.root,
            f"http://127.0.0.1:{port}/healthz",
            env={**base, "EMERGENCY_HTTP_PORT": str(port), "EMERGENCY_CONSOLE__CLIENT_ID": f"console-scale-{i}"},
            name=f"console-scale-{i}",
        )
        for i, port in enumerate(console_ports)
    ]
    configs = [DeviceConfig(u, p, backoff_cap_s=3.0) for u, p in credentials.items()]
    async with (
        Store.open(pg.dsn) as store,
        gateways[0],
        gateways[1],
        consoles[0],
        consoles[1],
        Fleet(configs, broker.host, broker.port, tmp_path / "sim") as fleet,
        aiohttp.ClientSession() as http,
    ):
        # One login, made at the first console, holds at the second: the session lives in the shared store.
        async with await login_to(f"http://127.0.0.1:{console_ports[0]}/", store, "dispatcher") as login:
            await asyncio.gather(
                *(_sees_every_unit(f"http://127.0.0.1:{port}/", set(credentials), login) for port in console_ports)
            )
        await asyncio.sleep(5)
        await settle(fleet)
        for device in fleet.devices:
            await assert_ledger_matches_store(store, device)
        generated = sum(sum(device.next_seq(s) for s in DEVICE_STREAMS) for device in fleet.devices)
        received = [await _received(http, f"http://127.0.0.1:{port}/metrics") for port in gateway_ports]
        assert all(r > 0 for r in received)
        # Each message reached one gateway (retransmissions may add a few); unpartitioned, it would be twice.
        assert generated <= sum(received) < 1.2 * generated
