"""Central service: model registry, deployments and ingest of gateway data over MQTT."""

__version__ = "0.1.0"
