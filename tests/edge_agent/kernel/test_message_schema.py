"""The wire's shape is a promise to every deployed gateway: the JSON Schema of every message
must not change by accident. `message_schema.json` is the schema as shipped; a deliberate
change of the contract updates it (and usually schema_version) in the same commit."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.kernel.contract import RECORD_PAYLOADS, message_json_schema

SHIPPED = Path(__file__).with_name("message_schema.json")


def test_every_message_has_the_shipped_json_schema() -> None:
    assert message_json_schema() == json.loads(SHIPPED.read_text())


def test_every_record_kind_the_agent_writes_has_a_payload_model() -> None:
    assert set(RECORD_PAYLOADS) >= {
        "prediction", "deployment_event", "eviction", "defect", "sample", "recommendation",
        "recommendation_answer", "recommendation_outcome", "setpoint_write", "source_gap",
        "model_stats"}
