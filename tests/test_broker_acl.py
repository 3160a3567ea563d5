"""The broker refuses what a device may not do: other units' topics, other units' acks, anonymity, bad passwords."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiomqtt
import pytest
from conftest import received_topics

from emergency.codec import encode_acks
from emergency.mqtt import mqtt_client
from emergency.protocol import Ack, Stream
from emergency.settings import MqttEndpoint


@contextlib.asynccontextmanager
async def client(endpoint: MqttEndpoint, **overrides: object) -> AsyncIterator[aiomqtt.Client]:
    if overrides:
        endpoint = MqttEndpoint.model_validate({**endpoint.model_dump(), **overrides})
    async with mqtt_client(endpoint, timeout=5) as c:
        yield c


async def test_unit_cannot_publish_as_another_unit(make_unit, gateway_endpoint) -> None:
    """A unit's publish on another unit's topic (or on the bus) never reaches the center; its own does."""
    (a, a_endpoint), (b, _) = await make_unit(), await make_unit()
    async with client(gateway_endpoint) as center, client(a_endpoint) as device:
        await center.subscribe("ems/v1/#", qos=1)
        await center.subscribe("center/v1/#", qos=1)
        await device.publish(f"ems/v1/{b}/ecg", b"forged", qos=1)
        await device.publish(f"ems/v1/{b}/event", b"forged", qos=1)
        await device.publish(f"center/v1/link/{b}", b"forged", qos=1)
        await device.publish(f"ems/v1/{a}/ack", b"forged ack", qos=1)
        await device.publish(f"ems/v1/{a}/gps", b"own", qos=1)
        # Other tests' units may still be talking on the shared broker: look only at these two.
        topics = [t for t in await received_topics(center, 2) if {a, b} & set(t.split("/"))]
    assert topics == [f"ems/v1/{a}/gps"]


async def test_unit_cannot_read_another_units_acks(make_unit, gateway_endpoint) -> None:
    """A unit subscribed to another unit's ack topic, or to everything, receives only its own acks."""
    (a, a_endpoint), (b, _) = await make_unit(), await make_unit()
    ack = encode_acks([Ack(boot=0, stream=Stream.ECG, upto=3)])
    async with client(a_endpoint) as device, client(gateway_endpoint) as center:
        await device.subscribe(f"ems/v1/{b}/ack", qos=1)
        await device.subscribe("ems/v1/#", qos=1)
        await device.subscribe("#", qos=1)
        await device.subscribe(f"ems/v1/{a}/ack", qos=1)
        await center.publish(f"ems/v1/{b}/ack", ack, qos=1)
        await center.publish(f"ems/v1/{a}/ack", ack, qos=1)
        topics = await received_topics(device, 2)
    assert topics and set(topics) == {f"ems/v1/{a}/ack"}  # overlapping subscriptions may repeat it


@pytest.mark.parametrize("who", ["anonymous", "wrong password", "unknown unit"])
async def test_unauthenticated_clients_are_refused(make_unit, who: str) -> None:
    """Anonymous clients, wrong passwords and unknown units cannot connect at all."""
    _, endpoint = await make_unit()
    overrides = {
        "anonymous": {"username": None, "password": None},
        "wrong password": {"password": "not-the-password"},
        "unknown unit": {"username": "NOBODY99"},
    }[who]
    with pytest.raises(aiomqtt.MqttError):
        async with client(endpoint, **overrides):
            pass


async def test_console_account_reads_device_telemetry_but_not_acks_and_writes_neither(
    make_unit, console_endpoint, gateway_endpoint
) -> None:
    """The console's account reads the devices' telemetry (decision 45), never their acks, and can write on no
    device topic."""
    unit, endpoint = await make_unit()
    async with (
        client(console_endpoint) as console,
        client(endpoint) as device,
        client(gateway_endpoint) as center,
    ):
        await console.subscribe("ems/v1/#", qos=1)
        await center.subscribe(f"ems/v1/{unit}/#", qos=1)
        await device.publish(f"ems/v1/{unit}/gps", b"x", qos=1)
        await center.publish(f"ems/v1/{unit}/ack", b"ack", qos=1)
        await console.publish(f"ems/v1/{unit}/vitals", b"forged", qos=1)
        await console.publish(f"ems/v1/{unit}/ack", b"forged", qos=1)
        seen_by_console = [t for t in await received_topics(console, 1.5) if unit in t.split("/")]
        seen_by_center = [t for t in await received_topics(center, 0.5) if unit in t.split("/")]
    assert seen_by_console == [f"ems/v1/{unit}/gps"]
    assert sorted(seen_by_center) == [f"ems/v1/{unit}/ack", f"ems/v1/{unit}/gps"]
