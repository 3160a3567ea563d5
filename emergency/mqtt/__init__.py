"""MQTT connections of our components: aiomqtt clients for the light paths, `MqttLink` for the ingest path."""

from emergency.mqtt._aiomqtt import NO_DELAY, RECONNECT_CAP_S, backoff_delay, mqtt_client
from emergency.mqtt._link import MqttLink, MqttLinkError

__all__ = [
    "NO_DELAY",
    "RECONNECT_CAP_S",
    "MqttLink",
    "MqttLinkError",
    "backoff_delay",
    "mqtt_client",
]
