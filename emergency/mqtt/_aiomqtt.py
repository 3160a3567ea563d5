"""How most components open an MQTT connection: an aiomqtt client, MQTT 5, credentials from settings, no Nagle."""

from __future__ import annotations

import random
import socket
from typing import Any

import aiomqtt

from emergency.settings import MqttEndpoint

# paho leaves Nagle's algorithm on; small telemetry messages would then wait for the previous segment's ACK.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def mqtt_client(endpoint: MqttEndpoint, **options: Any) -> aiomqtt.Client:
    """An aiomqtt client for `endpoint`; `options` are passed through (identifier, clean_start, ...)."""
    options.setdefault("protocol", aiomqtt.ProtocolVersion.V5)
    if endpoint.tls_ca is not None:
        options.setdefault(
            "tls_params",
            aiomqtt.TLSParameters(
                ca_certs=str(endpoint.tls_ca),
                certfile=str(endpoint.tls_cert) if endpoint.tls_cert else None,
                keyfile=str(endpoint.tls_key) if endpoint.tls_key else None,
            ),
        )
    options.setdefault("timeout", 10)
    return aiomqtt.Client(
        endpoint.host,
        endpoint.port,
        username=endpoint.username,
        password=endpoint.password.get_secret_value() if endpoint.password else None,
        socket_options=NO_DELAY,
        **options,
    )


# The center's own links reconnect quickly: a minute without the gateway is a minute without live patient data.
RECONNECT_CAP_S = 10.0


def backoff_delay(attempt: int, cap_s: float = RECONNECT_CAP_S) -> float:
    """Capped exponential backoff with full jitter: uniform in [0, min(cap, 1.5^attempt)] seconds."""
    return random.uniform(0, min(cap_s, 1.5 ** min(attempt, 64)))
