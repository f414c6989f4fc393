"""Publish/subscribe transports: the interface and the broker configuration (no paho needed).

The paho-mqtt client is `edge_agent.kernel.transport.mqtt.MqttTransport`; an in-memory broker
for tests of logic is `edge_agent.kernel.transport.memory`.
"""

from edge_agent.kernel.transport.base import Handler, NotConnected, Transport, Will
from edge_agent.kernel.transport.config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    BrokerConfig,
    BrokerCredentialsError,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "BrokerConfig",
    "BrokerCredentialsError",
    "Handler",
    "NotConnected",
    "Transport",
    "Will",
]
