"""The contract for people and other tools: the topic table and every JSON Schema."""

from __future__ import annotations

import json
from typing import Any

from edge_agent.kernel.contract.codec import (
    _MESSAGE_ADAPTER,
    RECORD_PAYLOADS,
)
from edge_agent.kernel.contract.fields import (
    DEFAULT_TOPIC_PREFIX,
    SCHEMA_VERSION,
)
from edge_agent.kernel.contract.topics import (
    ARTIFACT_TOPIC,
    DEVICE_TOPICS,
)


def topic_table_markdown(prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    rows = [
        "| Topic | Direction | QoS | Retained | Message | Purpose |",
        "|---|---|---|---|---|---|",
    ]
    specs = [(f"{prefix}/devices/{{device_id}}/{s.leaf}", s) for s in DEVICE_TOPICS]
    specs.append((f"{prefix}/{ARTIFACT_TOPIC.leaf}", ARTIFACT_TOPIC))
    for topic, s in specs:
        retained = "yes" if s.retained else "no"
        rows.append(
            f"| `{topic}` | {s.direction} | {s.qos} | {retained} | `{s.message}` | {s.purpose} |"
        )
    return "\n".join(rows)


def message_json_schema() -> dict[str, Any]:
    """The JSON Schema of every message, as one union discriminated by `kind`."""
    return _MESSAGE_ADAPTER.json_schema()


def contract_markdown(prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """The topic table, the JSON Schema of every message and of every record kind's payload,
    for people and other tools."""
    schema = message_json_schema()
    payloads = {kind: model.model_json_schema() for kind, model in RECORD_PAYLOADS.items()}
    return "\n".join(
        [
            f"# MQTT contract (schema version {SCHEMA_VERSION})",
            "",
            "Every payload is a UTF-8 JSON object with `schema_version` and a `kind` field.",
            "",
            topic_table_markdown(prefix),
            "",
            "## JSON Schema",
            "",
            "```json",
            json.dumps(schema, indent=2),
            "```",
            "",
            "## Record payloads",
            "",
            "The `payload` of an uplink record, by its `type` (central stores a record of another",
            "type as it came, and a record whose payload does not fit its type without projecting",
            "it).",
            "",
            "```json",
            json.dumps(payloads, indent=2),
            "```",
        ]
    )
