"""The ambulance gateway: MQTT in, validated batches into the store, end-to-end acks out, live data onto the bus."""

from ambulance_gateway._gateway import Gateway
from ambulance_gateway._metrics import GatewayMetrics
from ambulance_gateway._partition import Partition, lane_of, partition_of

__all__ = ["Gateway", "GatewayMetrics", "Partition", "lane_of", "partition_of"]
