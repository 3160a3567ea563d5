"""The private stack under the data directory: a PostgreSQL cluster, a mosquitto broker and their accounts."""

from emergency.stack._process import StackError
from emergency.stack.broker import Broker
from emergency.stack.postgres import PostgresCluster, timescaledb_available
from emergency.stack.provision import (
    CONSOLE_ACCOUNT,
    GATEWAY_ACCOUNT,
    internal_endpoint,
    provision_unit,
    provision_units,
    provisioned_units,
)

__all__ = [
    "CONSOLE_ACCOUNT",
    "GATEWAY_ACCOUNT",
    "Broker",
    "PostgresCluster",
    "StackError",
    "internal_endpoint",
    "provision_unit",
    "provision_units",
    "provisioned_units",
    "timescaledb_available",
]
