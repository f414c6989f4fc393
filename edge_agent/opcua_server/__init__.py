"""The agent's OPC-UA server: pipelines' latest values as read-only variables for HMIs."""

from edge_agent.opcua_server.server import NAMESPACE_URI, OpcUaServer

__all__ = ["NAMESPACE_URI", "OpcUaServer"]
