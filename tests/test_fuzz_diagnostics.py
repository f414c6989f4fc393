"""Random bytes and mutated contract messages at central's diagnostics handler, through the
same subscription and dispatch as in production: it never raises, and keeps only rows the
contract accepts, for requests central issued to that gateway."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from edge_agent.kernel.contract import (
    ClockReply,
    DiagnosticReply,
    LogBatch,
    LogLine,
    Topics,
    encode,
)
from tests.test_fuzz_handlers import (
    DEEPLY_NESTED,
    DEVICE,
    FUZZ,
    CentralWorld,
    _errors,
    payloads,
    spliced,
)

TOPIC = Topics().diagnostics(DEVICE)
REQUESTS = {"logs": "req-logs", "diagnose": "req-diagnose", "restart": "req-restart"}


@pytest.fixture
def central(tmp_path: Path, database_url: str) -> Any:
    world = CentralWorld(tmp_path, database_url)
    db = world.service.db
    assert db is not None
    now = time.time()
    for action, request_id in REQUESTS.items():
        world.loop.run(world.service.db_call(
            db.record_diagnostic_request, request_id, DEVICE, action, now, "fuzz",
            now + 600 if action == "logs" else None))
    yield world
    world.close()


def messages() -> list[Any]:
    line = LogLine(at=1.7e9, level="INFO", logger="edge_agent.app", message="started")
    return [
        LogBatch(device_id=DEVICE, request_id=REQUESTS["logs"], lines=[line, line], dropped=2),
        DiagnosticReply(device_id=DEVICE, request_id=REQUESTS["diagnose"], action="diagnose",
                        ok=True, report={"agent_version": "1.0.0", "buffer": {"depth": 1}}),
        DiagnosticReply(device_id=DEVICE, request_id=REQUESTS["restart"], action="restart",
                        ok=False, detail="no pipeline x"),
        ClockReply(device_id=DEVICE, probe_id="a-b", central_sent_at=1.7e9, device_time=1.7e9),
    ]


def _only_valid_rows(central: CentralWorld) -> None:
    for row in central.rows("SELECT * FROM device_logs"):
        assert row["device_id"] == DEVICE and row["request_id"] == REQUESTS["logs"], row
        LogLine(at=row["at"], level=row["level"], logger=row["logger"], message=row["message"])
    for row in central.rows("SELECT * FROM device_diagnoses"):
        assert row["device_id"] == DEVICE and row["request_id"] == REQUESTS["diagnose"], row
        assert isinstance(json.loads(row["report"]), dict)
    for row in central.rows("SELECT * FROM diagnostic_requests"):
        assert row["device_id"] == DEVICE and row["request_id"] in REQUESTS.values(), row
    for row in central.rows("SELECT clock_offset_s FROM devices"):
        assert row["clock_offset_s"] is None, row  # no probe was sent: no reading taken


def test_the_diagnostics_handler_survives_fuzzing_and_stores_only_valid_rows(
        central: CentralWorld, caplog: pytest.LogCaptureFixture) -> None:
    def deliver_and_check(payload: bytes) -> None:
        central.deliver(TOPIC, payload)
        assert _errors(caplog) == []

    batch, diagnosis, *_ = messages()
    for known in (DEEPLY_NESTED, spliced(batch, ("lines", 0, "at"), "NaN"),
                  spliced(diagnosis, ("report", "x"), "1e400")):
        deliver_and_check(known)
    FUZZ(given(payload=payloads(messages()))(deliver_and_check))()
    central.settle()
    assert _errors(caplog) == []
    assert central.service.stats.rejected["diagnostics"] > 0
    _only_valid_rows(central)
    assert central.loop.unhandled_errors() == []


def test_the_fuzz_path_reaches_the_diagnostics_handler(central: CentralWorld) -> None:
    for message in messages()[:2]:
        central.deliver(TOPIC, encode(message))
    central.settle()
    assert central.service.stats.log_lines_stored == 1  # the same line twice is one line
    assert central.service.stats.diagnostic_replies == 1
    assert math.isfinite(central.rows("SELECT at FROM device_diagnoses")[0]["at"])
