"""End to end on real services: simulated fleet → mosquitto → gateway → PostgreSQL, and → bus → console websocket.

The ledger check: every message a device generated was acknowledged, every acknowledged message is in the database
exactly once, and nothing else is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from ledger import assert_ledger_matches_store, settle

from ambulance_gateway import Gateway
from console import Console
from emergency.settings import ConsoleSettings, GatewaySettings, MqttEndpoint
from emergency.stack import Broker, provision_units
from emergency.store import Store
from firmware_sim import DeviceConfig, Fleet
from tests.conftest import login_to, ws_connect

GATEWAY = GatewaySettings(http_port=0, client_id="gw-e2e", batch_max_delay_s=0.02)


@pytest_asyncio.fixture(loop_scope="session")
async def store(postgres) -> AsyncIterator[Store]:  # type: ignore[no-untyped-def]
    async with Store.open(postgres.dsn) as opened:
        yield opened


def _fleet_configs(broker: Broker, prefix: str, count: int) -> list[DeviceConfig]:
    credentials = {f"{prefix}{i}": secrets.token_urlsafe(12) for i in range(count)}
    provision_units(broker.root, credentials)
    return [DeviceConfig(unit, password) for unit, password in credentials.items()]


@contextlib.asynccontextmanager
async def fleet_of(broker: Broker, tmp_path: Path, prefix: str, count: int) -> AsyncIterator[Fleet]:
    async with Fleet(_fleet_configs(broker, prefix, count), broker.host, broker.port, tmp_path / "sim") as fleet:
        for device in fleet.devices:
            await device.connected()
        yield fleet


async def test_fleet_streams_live_to_console_and_every_ack_is_stored_once(
    store: Store, broker: Broker, gateway_endpoint: MqttEndpoint, console_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """A streaming fleet reaches a console websocket live, and its acked messages are in the database exactly once."""
    async with (
        Gateway(GATEWAY, gateway_endpoint, store),
        Console(ConsoleSettings(), 0, console_endpoint, store) as console,
        fleet_of(broker, tmp_path, "E2E", 4) as fleet,
        await login_to(console.url, store, "ed_physician") as http,
        ws_connect(console.url, http) as ws,
    ):
        watched = fleet.devices[0].unit
        await ws.send(json.dumps({"type": "watch", "unit": watched}))
        kinds: dict[str, set[str]] = {}
        async with asyncio.timeout(30):
            while not ({"ecg", "gps", "vitals"} <= kinds.get(watched, set()) and len(kinds) >= 4):
                message = await ws.message()
                if "unit" in message:
                    kinds.setdefault(message["unit"], set()).add(message["type"])
        assert all("ecg" not in seen for unit, seen in kinds.items() if unit != watched)
        await settle(fleet)
        for device in fleet.devices:
            await assert_ledger_matches_store(store, device)


async def test_device_outage_mid_stream_loses_and_doubles_nothing(
    store: Store, broker: Broker, gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """A device whose link drops for a while replays its outbox afterwards: nothing missing, nothing doubled."""
    async with Gateway(GATEWAY, gateway_endpoint, store), fleet_of(broker, tmp_path, "OUT", 2) as fleet:
        await asyncio.sleep(1.5)
        cut = fleet.devices[0]
        async with cut.offline():
            await asyncio.sleep(4)
            assert cut.pending() >= 16  # four seconds of ECG at least, buffered on the device
        await asyncio.sleep(1.5)
        await settle(fleet)
        for device in fleet.devices:
            await assert_ledger_matches_store(store, device)


async def test_gateway_restart_mid_stream_loses_and_doubles_nothing(
    store: Store, broker: Broker, gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """Restarting the gateway while the fleet streams loses no message and stores none twice."""
    async with fleet_of(broker, tmp_path, "RST", 3) as fleet:
        async with Gateway(GATEWAY, gateway_endpoint, store):
            await asyncio.sleep(2)
        await asyncio.sleep(3)  # devices keep streaming; the broker queues for the gateway's session
        async with Gateway(GATEWAY, gateway_endpoint, store):
            await asyncio.sleep(2)
            await settle(fleet)
        for device in fleet.devices:
            await assert_ledger_matches_store(store, device)
