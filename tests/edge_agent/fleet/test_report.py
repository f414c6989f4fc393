"""The diagnose report's pure parts: secrets redacted by their key and out of URLs, values made
plain JSON, and a report too large for a reply cut down by its largest sections."""

from __future__ import annotations

import json
import math

from pydantic import SecretStr

from edge_agent.fleet.report import bounded, json_safe, redact_secrets
from edge_agent.kernel.contract import MAX_REPORT_BYTES, DiagnosticReply


def test_secret_values_are_redacted_by_their_key_and_url_credentials_anywhere() -> None:
    document = {
        "broker": {"username": "gw1", "password": "hunter2-long", "password_file": "/etc/pw",
                   "key_file": "/etc/tls/gw1.key"},
        "ui": {"token": SecretStr("tok-123-456-789"), "password": None},
        "sources": [{"url": "rtsp://admin:Cam-Pass@10.0.0.5/live?token=t0k", "password_env":
                     "CAM_PASSWORD", "allow_insecure_password": True,
                     "private_key": "/etc/opcua/key.pem"}],
        "notes": ["see http://user:pw@wiki/page"],
        "api_key": 1234,
        "bypass_mode": "on",
    }
    redacted = redact_secrets(document)
    assert redacted["broker"] == {"username": "gw1", "password": "***",
                                  "password_file": "/etc/pw", "key_file": "/etc/tls/gw1.key"}
    assert redacted["ui"] == {"token": "***", "password": None}
    source = redacted["sources"][0]
    assert source["url"] == "rtsp://admin:***@10.0.0.5/live?token=***"
    assert source["password_env"] == "CAM_PASSWORD" and source["allow_insecure_password"]
    assert source["private_key"] == "***"
    assert redacted["notes"] == ["see http://user:***@wiki/page"]
    assert redacted["api_key"] == "***" and redacted["bypass_mode"] == "on"
    text = json.dumps(redacted)
    for secret in ("hunter2-long", "tok-123-456-789", "Cam-Pass", "t0k", ":pw@"):
        assert secret not in text


def test_values_become_plain_json() -> None:
    safe = json_safe({"nan": math.nan, "inf": [math.inf, 1.5], 3: ("a", None, True)})
    assert safe == {"nan": None, "inf": [None, 1.5], "3": ["a", None, True]}
    json.dumps(safe, allow_nan=False)


def test_a_report_too_large_for_a_reply_loses_its_largest_sections_first() -> None:
    huge = {f"tag{n}": "x" * 100 for n in range(MAX_REPORT_BYTES // 100)}
    report = bounded({"agent_version": "1.0", "effective_config": huge,
                      "sources": {"cam": {"state": "connected"}}})
    assert report["agent_version"] == "1.0"
    assert report["sources"] == {"cam": {"state": "connected"}}
    assert "more than a report holds" in report["effective_config"]["omitted"]
    DiagnosticReply(device_id="gw1", request_id="r1", action="diagnose", ok=True,
                    report=report)
