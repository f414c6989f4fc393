"""The topic tree: every topic string of the contract, and what travels on each."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_agent.kernel.contract.fields import (
    DEFAULT_TOPIC_PREFIX,
    ID_PATTERN,
    SHA256_PATTERN,
)


@dataclass(frozen=True)
class TopicSpec:
    leaf: str
    direction: str
    qos: int
    retained: bool
    message: str
    purpose: str


DEVICE_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("status", "agent → central", 1, True, "DeviceStatus",
              "Online state and health; the broker publishes state=offline as last will"),
    TopicSpec("uplink", "agent → central", 1, False,
              "UplinkBatch, CompressedUplinkBatch, RecordChunk",
              "Buffered records (predictions, events), each with its seq; large ones in chunks"),
    TopicSpec("ack", "central → agent", 1, False, "BatchAck",
              "Seqs stored by central; the agent deletes them only now"),
    TopicSpec("commands", "central → agent", 1, False,
              "DeployCommand, RollbackCommand, ConfigDeployCommand, ConfigRollbackCommand, "
              "AgentUpdateCommand, AgentRollbackCommand, LogRequest, DiagnoseRequest, "
              "RestartCommand, ClockProbe",
              "Signed commands: deploy or roll back a model version, a configuration or the "
              "agent; ask for logs or a diagnosis; restart; and the clock probe"),
    TopicSpec("chunk-request", "agent → central", 1, False, "ChunkRequest",
              "Chunks of an artifact the agent still lacks"),
    TopicSpec("deployment", "agent → central", 1, False, "DeploymentEvent",
              "Every step of a deployment (model, configuration, agent) on the device"),
    TopicSpec("diagnostics", "agent → central", 1, False,
              "DiagnosticReply, LogBatch, ClockReply",
              "Answers to central's requests: log lines, diagnosis, restart, the clock"),
    TopicSpec("alerts", "central → agent", 1, True, "DeviceAlerts",
              "Open alerts of the device's line that an operator can act on, shown on its "
              "operator page"),
)
ARTIFACT_TOPIC = TopicSpec("artifacts/{sha256}", "central → agents", 1, False, "ArtifactChunk",
                           "Chunks of a model artifact, shared by every device fetching it")


SHARED_PREFIX = "$share/"


def plain_filter(topic_filter: str) -> str:
    """The topic filter a subscription matches: `$share/{group}/{filter}` matches `filter`."""
    if topic_filter.startswith(SHARED_PREFIX):
        return topic_filter.split("/", 2)[2]
    return topic_filter


class Topics:
    """The topic tree under one prefix: `{prefix}/devices/{device_id}/{leaf}`."""

    def __init__(self, prefix: str = DEFAULT_TOPIC_PREFIX) -> None:
        if not prefix or any(c in prefix for c in "+#") or prefix.startswith("/"):
            raise ValueError(f"topic prefix {prefix!r} must be non-empty, without + # or leading /")
        self.prefix = prefix.rstrip("/")

    def device(self, device_id: str, leaf: str) -> str:
        if not re.fullmatch(ID_PATTERN, device_id):
            raise ValueError(f"device id {device_id!r} is not valid: use letters, digits, . _ -")
        return f"{self.prefix}/devices/{device_id}/{leaf}"

    def status(self, device_id: str) -> str:
        return self.device(device_id, "status")

    def uplink(self, device_id: str) -> str:
        return self.device(device_id, "uplink")

    def ack(self, device_id: str) -> str:
        return self.device(device_id, "ack")

    def commands(self, device_id: str) -> str:
        return self.device(device_id, "commands")

    def chunk_request(self, device_id: str) -> str:
        return self.device(device_id, "chunk-request")

    def deployment(self, device_id: str) -> str:
        return self.device(device_id, "deployment")

    def diagnostics(self, device_id: str) -> str:
        return self.device(device_id, "diagnostics")

    def alerts(self, device_id: str) -> str:
        """The open operator alerts of the device's line, retained (central → agent)."""
        return self.device(device_id, "alerts")

    def alerts_open(self, alert_id: str) -> str:
        """Central's open alert, retained for SCADA; an empty retained payload clears it."""
        if not re.fullmatch(ID_PATTERN, alert_id):
            raise ValueError(f"alert id {alert_id!r} is not valid: use letters, digits, . _ -")
        return f"{self.prefix}/alerts/open/{alert_id}"

    def alerts_events(self, root: str | None = None) -> str:
        """Every change of central's alerts (not retained); under `root` instead of
        `{prefix}/alerts` for an mqtt route that names its own topic."""
        return f"{(root or self.prefix + '/alerts').rstrip('/')}/events"

    def all_alerts(self) -> str:
        """Every alert topic central publishes under the prefix (what a SCADA reader may read)."""
        return f"{self.prefix}/alerts/#"

    def artifact(self, sha256: str) -> str:
        if not re.fullmatch(SHA256_PATTERN, sha256):
            raise ValueError(f"{sha256!r} is not a lower-case hex SHA-256")
        return f"{self.prefix}/artifacts/{sha256}"

    def all_devices(self, leaf: str) -> str:
        """Wildcard subscription for one leaf of every device (central side)."""
        return f"{self.prefix}/devices/+/{leaf}"

    def all_artifacts(self) -> str:
        """Wildcard filter for the chunks of every artifact (the brokers' ACL)."""
        return f"{self.prefix}/artifacts/+"

    @staticmethod
    def shared(topic_filter: str, group: str) -> str:
        """An MQTT shared subscription: each message goes to one subscriber of `group`."""
        return f"{SHARED_PREFIX}{group}/{topic_filter}"

    def parse_device_topic(self, topic: str) -> tuple[str, str] | None:
        """`(device_id, leaf)` for a device topic under this prefix, else None."""
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 2 or not re.fullmatch(ID_PATTERN, parts[0]):
            return None
        return parts[0], parts[1]

