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


def _gateway(
    broker: Broker, base: dict[str, str], index: int, count: int, port: int, client_id: str
) -> ComponentProcess:
    return ComponentProcess(
        "gateway",
        broker.root,
        f"http://127.0.0.1:{port}/healthz",
        env={
            **base,
            "EMERGENCY_GATEWAY__PARTITION_COUNT": str(count),
            "EMERGENCY_GATEWAY__PARTITION_INDEX": str(index),
            "EMERGENCY_GATEWAY__HTTP_PORT": str(port),
            "EMERGENCY_GATEWAY__CLIENT_ID": client_id,
        },
        name=f"{client_id}-of-{count}",
    )


async def _metric(http: aiohttp.ClientSession, metrics_url: str, name: str) -> float:
    async with http.get(metrics_url) as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


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
    gateways = [_gateway(broker, base, i, 2, port, f"gw-scale-{i}") for i, port in enumerate(gateway_ports)]
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
        received = [
            await _metric(http, f"http://127.0.0.1:{port}/metrics", "emergency_gateway_received_total")
            for port in gateway_ports
        ]
        assert all(r > 0 for r in received)
        # Each message reached one gateway (retransmissions may add a few); unpartitioned, it would be twice.
        assert generated <= sum(received) < 1.2 * generated


async def test_a_gateway_restarted_with_another_partition_count_leaves_the_units_it_no_longer_owns(
    postgres: PostgresCluster, broker: Broker, tmp_path: Path
) -> None:
    """One gateway takes every unit, stops while the fleet publishes (the broker queues for its persistent session),
    and comes back, under the same client id, as partition 0 of 2 beside a new partition 1. It leaves the messages
    queued for partition 1's units unacknowledged (counted), unsubscribes what its session held from before, and
    receives none of them afterwards; partition 1 takes them; every unit's record is complete, stored once."""
    pg = postgres
    credentials = {f"PCC{i}": secrets.token_urlsafe(12) for i in range(6)}
    provision_units(broker.root, credentials)
    assert {partition_of(u, 2) for u in credentials} == {0, 1}
    base = {"EMERGENCY_DATA_DIR": str(broker.root), "EMERGENCY_MQTT_PORT": str(broker.port),
            "EMERGENCY_STORE__DSN": pg.dsn}  # fmt: skip
    ports = [free_port(), free_port()]
    configs = [DeviceConfig(u, p, backoff_cap_s=3.0) for u, p in credentials.items()]
    async with (
        Store.open(pg.dsn) as store,
        Fleet(configs, broker.host, broker.port, tmp_path / "sim") as fleet,
        aiohttp.ClientSession() as http,
    ):
        async with _gateway(broker, base, 0, 1, ports[0], "gw-count"):
            await asyncio.sleep(3)
        await asyncio.sleep(3)  # the broker queues every unit's messages for the stopped session
        async with _gateway(broker, base, 0, 2, ports[0], "gw-count"), _gateway(broker, base, 1, 2, ports[1], "gw-1"):
            metrics = f"http://127.0.0.1:{ports[0]}/metrics"
            # Partition 1's messages queued while the session was away reach partition 0 and are left; then no
            # more come, though the fleet goes on publishing (a subscription kept from before would go on).
            counts = [0.0]
            async with asyncio.timeout(60):
                while counts[-1] == 0 or len(counts) < 3 or counts[-1] != counts[-3]:
                    await asyncio.sleep(1)
                    counts.append(await _metric(http, metrics, "emergency_gateway_not_owned_total"))
            await asyncio.sleep(3)
            assert await _metric(http, metrics, "emergency_gateway_not_owned_total") == counts[-1]
            await settle(fleet)
            for device in fleet.devices:
                await assert_ledger_matches_store(store, device)
