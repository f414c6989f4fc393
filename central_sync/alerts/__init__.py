"""Central's alerting: rule evaluation and notification delivery."""
