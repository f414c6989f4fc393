"""Credentials taken out of what people and logs see."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge_agent.kernel.contract import DeviceStatus, SourceState
from edge_agent.kernel.redaction import redact_credentials
from tests.helpers import REPO


@pytest.mark.parametrize(("shown", "redacted"), [
    ("rtsp://admin:hunter2@10.0.0.5:554/s1", "rtsp://admin:***@10.0.0.5:554/s1"),
    ("rtsp://admin:p@ss@10.0.0.5/s1", "rtsp://admin:***@10.0.0.5/s1"),
    ("cannot open rtsp://u:pw@cam/s; retrying", "cannot open rtsp://u:***@cam/s; retrying"),
    ("http://cam/snap.jpg?user=admin&password=pw&ch=1",
     "http://cam/snap.jpg?user=admin&password=***&ch=1"),
    ("https://cam/live?Token=abc#x", "https://cam/live?Token=***#x"),
    ("rtsp://admin@10.0.0.5:554/s1", "rtsp://admin@10.0.0.5:554/s1"),
    ("rtsp://10.0.0.5:554/path@2", "rtsp://10.0.0.5:554/path@2"),
    ("opc.tcp://plc:4840/line-1", "opc.tcp://plc:4840/line-1"),
    ("rtsp://admin:***@cam/s", "rtsp://admin:***@cam/s"),
])
def test_passwords_and_secret_query_values_are_replaced(shown: str, redacted: str) -> None:
    assert redact_credentials(shown) == redacted


def test_a_source_state_never_holds_a_password_even_from_an_older_agent() -> None:
    sent = ('{"device_id": "gw-1", "state": "online", "sources": {"cam": {"state": '
            '"connected", "detail": "rtsp://admin:hunter2@10.0.0.5/s1 1920x1080"}}}')
    status = DeviceStatus.model_validate_json(sent)
    assert status.sources["cam"].detail == "rtsp://admin:***@10.0.0.5/s1 1920x1080"
    made = SourceState(state="connecting", detail="rtsp://admin:hunter2@10.0.0.5/s1")
    assert "hunter2" not in made.model_dump_json()


@pytest.mark.parametrize("hostile", ["'a.' * 2**19", "'a://b:c' * 2**17", "'&token' * 2**17"])
def test_a_hostile_detail_of_a_mebibyte_is_redacted_in_linear_time(hostile: str) -> None:
    """Central redacts what any gateway sends: text that made the search quadratic would
    hold its ingest for hours; in linear time this takes well under a second. (A separate
    process: the regular expression engine keeps the GIL, so a thread could not be abandoned.)"""
    script = ("from edge_agent.kernel.redaction import redact_credentials\n"
              f"redact_credentials({hostile})")
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=30)
