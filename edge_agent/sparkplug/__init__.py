"""Sparkplug B edge node: the agent's pipelines as devices on a SCADA host's MQTT broker."""

from edge_agent.sparkplug.node import EdgeNode

__all__ = ["EdgeNode"]
