"""The operator alerts central sends a device: round trip, limits, and no device speaks for
another one's topic."""

from __future__ import annotations

import json

import pytest

from edge_agent.kernel.contract import (
    DEVICE_TOPICS,
    MAX_OPERATOR_ALERTS,
    DeviceAlerts,
    OperatorAlert,
    Rejection,
    Topics,
    decode,
    encode,
    topic_table_markdown,
)


def alert(number: int = 1, **fields) -> OperatorAlert:
    return OperatorAlert(**{"alert_id": f"a{number}", "rule": "source-down",
                            "severity": "critical", "summary": "camera cam1 down on gw-a",
                            "fired_at": 1700000000.0 + number, "devices": ["gw-a"], **fields})


def test_device_alerts_round_trip() -> None:
    message = DeviceAlerts(device_id="gw-a", alerts=[alert(1), alert(2, acked=True)])
    payload = encode(message)
    assert json.loads(payload)["kind"] == "device_alerts"
    assert decode(payload, expect=(DeviceAlerts,), topic_device_id="gw-a") == message


def test_alerts_for_another_device_are_refused() -> None:
    forged = encode(DeviceAlerts(device_id="gw-b", alerts=[alert()]))
    result = decode(forged, expect=(DeviceAlerts,), topic_device_id="gw-a")
    assert isinstance(result, Rejection)
    assert "does not match topic device 'gw-a'" in result.reason


@pytest.mark.parametrize(("change", "reason"), [
    ({"severity": "fatal"}, "severity"),
    ({"summary": "x" * 301}, "summary"),
    ({"alert_id": "../a1"}, "alert_id"),
    ({"fired_at": float("inf")}, "fired_at"),
])
def test_malformed_alerts_are_rejected_with_a_reason(change: dict, reason: str) -> None:
    body = json.loads(encode(DeviceAlerts(device_id="gw-a", alerts=[alert()])))
    body["alerts"][0].update(change)
    result = decode(json.dumps(body).replace("Infinity", "1e400"), expect=(DeviceAlerts,))
    assert isinstance(result, Rejection) and reason in result.reason


def test_at_most_fifty_alerts_travel() -> None:
    body = json.loads(encode(DeviceAlerts(device_id="gw-a")))
    body["alerts"] = [alert(n).model_dump() for n in range(MAX_OPERATOR_ALERTS + 1)]
    assert isinstance(decode(json.dumps(body)), Rejection)


def test_alerts_topic_is_retained_from_central_and_documented() -> None:
    spec = next(s for s in DEVICE_TOPICS if s.leaf == "alerts")
    assert (spec.direction, spec.qos, spec.retained, spec.message) == \
        ("central → agent", 1, True, "DeviceAlerts")
    assert Topics("plant7").alerts("gw-a") == "plant7/devices/gw-a/alerts"
    assert "`edge-mlops/devices/{device_id}/alerts` | central → agent | 1 | yes" in \
        topic_table_markdown()
