"""How every component of ours opens an MQTT connection: MQTT 5, credentials from settings, Nagle off."""

from __future__ import annotations

import socket
from typing import Any

import aiomqtt

from emergency.settings import MqttEndpoint

# paho leaves Nagle's algorithm on; small telemetry messages would then wait for the previous segment's ACK.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def mqtt_client(endpoint: MqttEndpoint, **options: Any) -> aiomqtt.Client:
    """An aiomqtt client for `endpoint`; `options` are passed through (identifier, clean_start, ...)."""
    options.setdefault("protocol", aiomqtt.ProtocolVersion.V5)
    options.setdefault("timeout", 10)
    return aiomqtt.Client(
        endpoint.host,
        endpoint.port,
        username=endpoint.username,
        password=endpoint.password.get_secret_value() if endpoint.password else None,
        socket_options=NO_DELAY,
        **options,
    )
