"""Devices over TLS: the broker's second listener requires a certificate from the stack's CA, one per device."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio
from conftest import free_port, received_topics, services_dir

from emergency.mqtt import mqtt_client
from emergency.settings import MqttEndpoint
from emergency.stack import GATEWAY_ACCOUNT, Broker
from emergency.stack.tls import issue_device_cert


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tls_broker() -> AsyncIterator[Broker]:
    with services_dir("emergency-tls-") as root:
        async with Broker(root, free_port(), tls_port=free_port()) as broker:
            yield broker


def _device(broker: Broker, unit: str, **overrides: object) -> MqttEndpoint:
    pair = issue_device_cert(broker.root, unit)
    fields: dict[str, object] = {
        "host": "127.0.0.1", "port": broker.tls_port, "tls_ca": broker.ca_file, "tls_cert": pair.cert,
        "tls_key": pair.key,
    }  # fmt: skip
    fields.update(overrides)
    return MqttEndpoint.model_validate(fields)


async def test_device_with_its_certificate_publishes_only_as_itself(tls_broker: Broker) -> None:
    """A device authenticated by its certificate reaches the center on its own topics, not on another unit's."""
    async with (
        mqtt_client(tls_broker.internal_endpoint(GATEWAY_ACCOUNT)) as center,
        mqtt_client(_device(tls_broker, "TLS1"), timeout=5) as device,
    ):
        await center.subscribe("ems/v1/#", qos=1)
        await device.publish("ems/v1/TLS2/gps", b"forged", qos=1)
        await device.publish("ems/v1/TLS1/gps", b"own", qos=1)
        topics = await received_topics(center, 2)
    assert topics == ["ems/v1/TLS1/gps"]


@pytest.mark.parametrize("case", ["no client certificate", "certificate from another CA", "plain MQTT"])
async def test_tls_listener_refuses_what_it_cannot_verify(tls_broker: Broker, case: str, tmp_path: Path) -> None:
    """No certificate, a certificate our CA did not sign, or plain MQTT on the TLS port: the connection fails."""
    if case == "no client certificate":
        endpoint = _device(tls_broker, "TLS3", tls_cert=None, tls_key=None)
    elif case == "certificate from another CA":
        stranger = issue_device_cert(tmp_path, "TLS4")  # a CA of its own under tmp_path
        endpoint = _device(tls_broker, "TLS4", tls_cert=stranger.cert, tls_key=stranger.key)
    else:
        endpoint = MqttEndpoint(host="127.0.0.1", port=tls_broker.tls_port or 0, username="TLS5")
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt_client(endpoint, timeout=5):
            pass


async def test_console_serves_https_when_configured(console_endpoint, shared_store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With a certificate configured the console serves HTTPS only: a client trusting the CA gets through, plain
    HTTP on the same port does not."""
    import ssl

    import aiohttp

    from console import Console
    from emergency.settings import ConsoleSettings
    from emergency.stack.tls import ensure_ca, ensure_server_cert

    root = tmp_path / "tls-root"
    root.mkdir()
    ca = ensure_ca(root)
    pair = ensure_server_cert(root, ["127.0.0.1", "localhost"])
    settings = ConsoleSettings(tls_cert=pair.cert, tls_key=pair.key)
    async with Console(settings, 0, console_endpoint, shared_store) as console, aiohttp.ClientSession() as http:
        assert console.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(ca))
        async with http.get(console.url + "healthz", ssl=trust) as response:
            assert response.status == 200
        try:
            async with http.get(console.url.replace("https", "http") + "healthz") as response:
                assert response.status >= 400
        except aiohttp.ClientError:
            pass  # the TLS listener drops a plain-text request
