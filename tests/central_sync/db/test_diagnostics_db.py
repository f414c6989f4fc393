"""Diagnostics in central's database, on SQLite and PostgreSQL: answers taken only for
central's own requests, log lines bounded per gateway, the newest diagnosis, clock offsets and
records flagged for suspect times at ingest."""

from __future__ import annotations

import time

import pytest
from central_helpers import make_batch

from central_sync.db import CentralDB
from central_sync.db.diagnostics import (
    LOG_BATCH_MARGIN_S,
    MAX_LOG_LINES_PER_DEVICE,
    DiagnosticRefused,
    suspect_reason,
)
from edge_agent.kernel.contract import (
    DeviceStatus,
    DiagnosticReply,
    LogBatch,
    LogLine,
    UplinkBatch,
    UplinkRecord,
)


def logs_request(db: CentralDB, request_id: str = "req-logs", device_id: str = "gw-1",
                 follow_s: float = 0.0, issued_at: float | None = None) -> None:
    issued_at = time.time() if issued_at is None else issued_at
    db.record_diagnostic_request(request_id, device_id, "logs", issued_at, "erin",
                                 follow_until=issued_at + follow_s if follow_s else None)


def lines(count: int, start: float = 1000.0, level: str = "INFO",
          text: str = "line") -> list[LogLine]:
    return [LogLine(at=start + i, level=level, logger="edge_agent.test", message=f"{text} {i}")
            for i in range(count)]


def test_log_lines_are_taken_only_for_the_gateways_own_request(db: CentralDB) -> None:
    logs_request(db, "req-1", "gw-1")
    assert db.store_log_batch(LogBatch(device_id="gw-1", request_id="req-1",
                                       lines=lines(3))) == 3
    with pytest.raises(DiagnosticRefused, match="issued no request"):
        db.store_log_batch(LogBatch(device_id="gw-1", request_id="made-up", lines=lines(2)))
    with pytest.raises(DiagnosticRefused, match="issued to gw-1"):
        db.store_log_batch(LogBatch(device_id="gw-2", request_id="req-1", lines=lines(2)))
    assert db.device_logs("gw-2") == []
    assert [row["message"] for row in db.device_logs("gw-1")] == ["line 0", "line 1", "line 2"]
    request = db.diagnostic_request("req-1")
    assert request is not None and request.answered_at is None


def test_log_lines_after_the_follow_ended_are_refused(db: CentralDB) -> None:
    issued = time.time() - 200
    logs_request(db, "req-follow", follow_s=100, issued_at=issued)
    late = issued + 100 + LOG_BATCH_MARGIN_S + 1
    with pytest.raises(DiagnosticRefused, match="ended"):
        db.store_log_batch(LogBatch(device_id="gw-1", request_id="req-follow",
                                    lines=lines(1)), received_at=late)
    assert db.store_log_batch(LogBatch(device_id="gw-1", request_id="req-follow",
                                       lines=lines(1), final=True),
                              received_at=issued + 150) == 1
    assert db.diagnostic_request("req-follow").ok is True


def test_a_gateway_keeps_only_its_newest_lines_and_a_line_sent_twice_is_stored_once(
        db: CentralDB) -> None:
    logs_request(db, "req-1", "gw-1")
    logs_request(db, "req-2", "gw-2")
    db.store_log_batch(LogBatch(device_id="gw-2", request_id="req-2", lines=lines(5)))
    for batch in range(5):  # 5 x 500 lines, more than a gateway keeps
        db.store_log_batch(LogBatch(device_id="gw-1", request_id="req-1",
                                    lines=lines(500, start=batch * 500.0)))
    assert db.store_log_batch(LogBatch(device_id="gw-1", request_id="req-1",
                                       lines=lines(500, start=2000.0))) == 0  # again
    assert db.count_device_logs("gw-1") == MAX_LOG_LINES_PER_DEVICE
    kept = db.device_logs("gw-1", limit=MAX_LOG_LINES_PER_DEVICE)
    assert kept[0]["at"] == 500.0 and kept[-1]["at"] == 2499.0  # the newest, in order
    assert db.count_device_logs("gw-2") == 5  # another gateway's lines are untouched


def test_the_log_tail_filters_by_level(db: CentralDB) -> None:
    logs_request(db)
    db.store_log_batch(LogBatch(device_id="gw-1", request_id="req-logs", lines=[
        *lines(2, 10.0, "DEBUG", "debug"), *lines(2, 20.0, "INFO", "info"),
        *lines(1, 30.0, "WARNING", "warn"), *lines(1, 40.0, "ERROR", "error")]))
    assert [r["level"] for r in db.device_logs("gw-1", "WARNING")] == ["WARNING", "ERROR"]
    assert len(db.device_logs("gw-1", "DEBUG")) == 6
    assert [r["message"] for r in db.device_logs("gw-1", "DEBUG", limit=2)] == [
        "warn 0", "error 0"]


def test_a_diagnosis_is_stored_once_and_the_newest_is_kept(db: CentralDB) -> None:
    now = time.time()
    db.record_diagnostic_request("diag-1", "gw-1", "diagnose", now, "erin")
    db.record_diagnostic_request("diag-2", "gw-1", "diagnose", now, "erin")
    first = DiagnosticReply(device_id="gw-1", request_id="diag-1", action="diagnose", ok=True,
                            report={"agent_version": "1.0.0"})
    assert db.store_diagnostic_reply(first, received_at=now + 1)
    assert not db.store_diagnostic_reply(first, received_at=now + 2)  # a duplicate
    second = first.model_copy(update={"request_id": "diag-2",
                                      "report": {"agent_version": "1.1.0"}})
    assert db.store_diagnostic_reply(second, received_at=now + 3)
    diagnosis = db.device_diagnosis("gw-1")
    assert diagnosis is not None and diagnosis.report == {"agent_version": "1.1.0"}
    assert diagnosis.request_id == "diag-2" and diagnosis.ok
    assert [r.action for r in db.diagnostic_requests("gw-1")] == ["diagnose", "diagnose"]
    assert [e["action"] for e in db.list_audit(10)][:2] == ["device.diagnose", "device.diagnose"]


def test_a_reply_for_another_gateway_or_action_changes_nothing(db: CentralDB) -> None:
    now = time.time()
    db.record_diagnostic_request("restart-1", "gw-1", "restart", now, "erin")
    forged = DiagnosticReply(device_id="gw-2", request_id="restart-1", action="restart",
                             ok=True)
    with pytest.raises(DiagnosticRefused, match="issued to gw-1"):
        db.store_diagnostic_reply(forged)
    with pytest.raises(DiagnosticRefused, match="asked for restart"):
        db.store_diagnostic_reply(DiagnosticReply(
            device_id="gw-1", request_id="restart-1", action="diagnose", ok=True,
            report={"effective_config": {"x": 1}}))
    assert db.device_diagnosis("gw-1") is None and db.device_diagnosis("gw-2") is None
    assert db.diagnostic_request("restart-1").answered_at is None
    assert db.store_diagnostic_reply(forged.model_copy(update={"device_id": "gw-1",
                                                               "detail": "restarting"}))
    assert db.diagnostic_request("restart-1").detail == "restarting"


def test_clock_offset_is_stored_on_a_known_device(db: CentralDB) -> None:
    assert not db.record_clock("gw-1", 30.0, 4.0, time.time())  # not heard from yet
    db.update_status(DeviceStatus(device_id="gw-1", state="online"))
    assert db.record_clock("gw-1", 30.0, 4.0, time.time())
    [device] = db.list_devices()
    assert (device.clock_offset_s, device.clock_rtt_ms) == (30.0, 4.0)
    assert db.device_presence("gw-1")["clock_offset_s"] == 30.0


def future_batch(device_id: str, seqs: range, ahead_s: float) -> UplinkBatch:
    return UplinkBatch(device_id=device_id, records=[
        UplinkRecord(seq=seq, type="note", created_at=time.time() + ahead_s, payload={})
        for seq in seqs])


def test_records_of_a_skewed_clock_or_from_the_future_are_flagged_at_ingest(
        db: CentralDB) -> None:
    db.store_batch(make_batch("gw-1", range(1, 4)))  # made in the past: fine
    db.store_batch(future_batch("gw-1", range(4, 6), ahead_s=60.0))
    assert db.suspect_record("gw-1", 1) is None
    assert "in central's future" in db.suspect_record("gw-1", 4)
    db.update_status(DeviceStatus(device_id="gw-2", state="online"))
    db.record_clock("gw-2", 30.0, 3.0, time.time())
    db.store_batch(future_batch("gw-2", range(1, 3), ahead_s=30.0))
    assert "+30.0 s off" in db.suspect_record("gw-2", 1)
    assert db.count_suspect_records("gw-2") == 2 and db.count_suspect_records("gw-1") == 2
    db.record_clock("gw-2", 1.0, 3.0, time.time())  # within the threshold: the offset counts
    db.store_batch(future_batch("gw-2", range(3, 4), ahead_s=2.5))
    assert db.suspect_record("gw-2", 3) is None


def test_suspect_reason_allows_the_threshold_and_the_measured_offset() -> None:
    assert suspect_reason(101.9, 100.0, None, 2.0) is None
    assert suspect_reason(102.5, 100.0, None, 2.0) is not None
    assert suspect_reason(103.0, 100.0, 1.5, 2.0) is None
    assert suspect_reason(50.0, 100.0, -2.5, 2.0) is not None


def test_a_gateways_text_with_nul_is_stored_on_every_database(db: CentralDB) -> None:
    """PostgreSQL refuses NUL in text: such an answer would fail every time it came."""
    logs_request(db)
    db.store_log_batch(LogBatch(device_id="gw-1", request_id="req-logs", lines=[
        LogLine(at=1.0, level="INFO", logger="a\x00b", message="bad\x00byte")]))
    assert db.device_logs("gw-1")[0]["message"].startswith("bad")
    db.record_diagnostic_request("diag-1", "gw-1", "diagnose", time.time(), "erin")
    assert db.store_diagnostic_reply(DiagnosticReply(
        device_id="gw-1", request_id="diag-1", action="diagnose", ok=False,
        detail="no\x00pe", report={"k\x00": "v\x00"}))
    assert db.device_diagnosis("gw-1").report == {"k\x00": "v\x00"}
