"""Central's diagnostics over a real Mosquitto, with a gateway speaking the contract: signed
requests out, answers stored only for central's own requests, a flooding or lying gateway
bounded, and each gateway's clock measured (records of a skewed one flagged)."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from central_helpers import run
from fake_gateway import FakeGateway, log_lines

from central_sync import diagnostics
from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.db.diagnostics import MAX_LOG_LINES_PER_DEVICE
from central_sync.service import CentralService
from edge_agent.kernel.contract import (
    MAX_PAYLOAD_BYTES,
    ClockProbe,
    ClockReply,
    DiagnoseRequest,
    DiagnosticReply,
    LogBatch,
    LogRequest,
    RestartCommand,
    UplinkBatch,
    UplinkRecord,
    encode,
)
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.helpers import wait_until_async

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def config(central_config: CentralConfig, mosquitto) -> CentralConfig:
    return CentralConfig.model_validate({**central_config.model_dump(),
                                         "broker": {"port": mosquitto.port},
                                         "clock": {"probe_interval_s": 60}})


@pytest.fixture
def gateway(mosquitto) -> Iterator[FakeGateway]:
    fake = FakeGateway(mosquitto.port, "gw-1")
    yield fake
    fake.stop()


async def started(config: CentralConfig) -> CentralService:
    service = CentralService(config, MqttTransport(config.broker, config.central_id))
    await service.start()
    assert await service.transport.wait_connected(10)
    return service


async def online(service: CentralService, gateway: FakeGateway) -> CentralDB:
    gateway.status()
    assert service.db is not None
    db = service.db
    await wait_until_async(lambda: service.stats.statuses, what="the gateway's status")
    return db


async def ask(service: CentralService, command):
    assert service.db is not None
    return await diagnostics.send(service.db, service.transport, service.config.signer(),
                                  service.topics, command)


def test_requests_are_signed_and_the_answers_stored(config: CentralConfig,
                                                    gateway: FakeGateway) -> None:
    async def scenario() -> None:
        service = await started(config)
        db = await online(service, gateway)
        await ask(service, DiagnoseRequest(device_id="gw-1", issued_by="erin"))
        diagnosis = await wait_until_async(lambda: service.db_call(db.device_diagnosis, "gw-1"),
                                           what="the diagnosis")
        assert diagnosis.report["agent_version"] == "1.4.2"
        restart = await ask(service, RestartCommand(device_id="gw-1", issued_by="erin",
                                                    pipeline="surface"))
        answered = await wait_until_async(
            lambda: _answered(service, restart.command_id), what="the restart's reply")
        assert answered.ok and answered.detail == "pipeline surface restarted"
        follow = await ask(service, LogRequest(device_id="gw-1", issued_by="erin",
                                               follow_s=30))
        await wait_until_async(lambda: service.stats.log_lines_stored == 3, what="the tail")
        gateway.follow_lines(log_lines(4, "later"), final=True)
        await wait_until_async(lambda: service.stats.log_lines_stored == 7,
                               what="the followed lines")
        assert (await _answered(service, follow.command_id)).ok
        assert gateway.forged == [] and service.stats.rejected["diagnostics"] == 0
        tail = await service.db_call(db.device_logs, "gw-1")
        assert [line["message"] for line in tail][-2:] == ["later 2", "later 3"]
        await service.stop()

    run(scenario())


async def _answered(service: CentralService, request_id: str):
    assert service.db is not None
    found = await service.db_call(service.db.diagnostic_request, request_id)
    return found if found and found.answered_at else None


def test_a_gateway_cannot_store_answers_central_did_not_ask_it_for(
        config: CentralConfig, gateway: FakeGateway, mosquitto) -> None:
    async def scenario() -> None:
        service = await started(config)
        db = await online(service, gateway)
        other = FakeGateway(mosquitto.port, "gw-2")
        other.answer = False  # the request to gw-2 is in central's records, unanswered
        try:
            request = await ask(service, DiagnoseRequest(device_id="gw-2", issued_by="erin"))
            await wait_until_async(lambda: other.of_kind(DiagnoseRequest), what="gw-2's request")
            lies = [
                DiagnosticReply(device_id="gw-1", request_id="made-up", action="diagnose",
                                ok=True, report={"agent_version": "evil"}),
                DiagnosticReply(device_id="gw-1", request_id=request.command_id,
                                action="diagnose", ok=True, report={"agent_version": "evil"}),
                LogBatch(device_id="gw-1", request_id="made-up", lines=log_lines(5)),
                LogBatch(device_id="gw-1", request_id=request.command_id, lines=log_lines(5)),
                ClockReply(device_id="gw-1", probe_id="a-b", central_sent_at=time.time(),
                           device_time=time.time() + 999),
            ]
            for lie in lies:
                gateway.send(lie)
            await wait_until_async(lambda: service.stats.rejected["diagnostics"] == len(lies),
                                   what="every unsolicited answer refused")
            assert await service.db_call(db.device_diagnosis, "gw-1") is None
            assert await service.db_call(db.device_diagnosis, "gw-2") is None
            assert await service.db_call(db.count_device_logs, "gw-1") == 0
            assert "not one central sent" in service.stats.last_rejection
            assert service.stats.diagnostic_replies == service.stats.log_lines_stored == 0
        finally:
            other.stop()
            await service.stop()

    run(scenario())


def test_a_flood_of_log_batches_is_rate_limited_and_keeps_rows_and_memory_bounded(
        config: CentralConfig, gateway: FakeGateway) -> None:
    async def scenario() -> None:
        service = await started(config)
        db = await online(service, gateway)
        gateway.answer = False
        request = await ask(service, LogRequest(device_id="gw-1", issued_by="erin",
                                                follow_s=600))
        await wait_until_async(lambda: gateway.of_kind(LogRequest), what="the request")
        batch_count = 60
        batches = [encode(LogBatch(device_id="gw-1", request_id=request.command_id,
                                   lines=log_lines(500, f"flood {n}"))) for n in range(batch_count)]
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for payload in batches:
            gateway.send_raw(payload)
        await wait_until_async(
            lambda: service.stats.rejected["diagnostics"] + _batches_stored(service)
            >= batch_count, what="every batch taken or refused", timeout_s=60)
        del batches
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert service.stats.rejected["diagnostics"] >= batch_count // 2  # over the rate
        assert "over the rate" in service.stats.last_rejection
        stored = await service.db_call(db.count_device_logs, "gw-1")
        assert 0 < stored <= MAX_LOG_LINES_PER_DEVICE
        assert held < 4 * 2**20, f"central holds {held} bytes more after the flood"
        await service.stop()

    run(scenario(), timeout_s=90)


def _batches_stored(service: CentralService) -> int:
    return service.stats.log_lines_stored // 500


def test_huge_payloads_are_refused_and_diagnostics_go_on(config: CentralConfig,
                                                         gateway: FakeGateway) -> None:
    async def scenario() -> None:
        service = await started(config)
        db = await online(service, gateway)
        gateway.answer = False
        request = await ask(service, DiagnoseRequest(device_id="gw-1", issued_by="erin"))
        gateway.send_raw(b"{" + b" " * (MAX_PAYLOAD_BYTES + 1) + b"}")
        report = {"blob": "x" * (600 * 1024)}  # more than a report may hold
        gateway.send_raw(json.dumps({
            "schema_version": 1, "kind": "diagnostic_reply", "device_id": "gw-1",
            "request_id": request.command_id, "action": "diagnose", "ok": True,
            "report": report}).encode())
        # The first never reaches the handler (the transport drops a message past
        # max_message_bytes unread); the second is refused by the contract's bound.
        await wait_until_async(lambda: service.stats.rejected["diagnostics"] == 1,
                               what="the oversized report refused")
        assert "more than 524288" in service.stats.last_rejection
        assert await service.db_call(db.device_diagnosis, "gw-1") is None
        gateway.send(DiagnosticReply(device_id="gw-1", request_id=request.command_id,
                                     action="diagnose", ok=True, report={"fine": True}))
        await wait_until_async(lambda: service.db_call(db.device_diagnosis, "gw-1"),
                               what="the genuine reply stored")
        await service.stop()

    run(scenario())


def test_a_skewed_gateway_clock_is_measured_and_its_records_are_flagged(
        config: CentralConfig, mosquitto) -> None:
    skewed = FakeGateway(mosquitto.port, "gw-skewed", skew_s=30.0)
    honest = FakeGateway(mosquitto.port, "gw-honest")

    async def scenario() -> None:
        service = await started(config)
        try:
            db = await online(service, skewed)
            honest.status()

            async def measured(device: str):
                found = await service.db_call(db.device_presence, device)
                return found if found and found["clock_measured_at"] else None

            clock = await wait_until_async(lambda: measured("gw-skewed"), what="the offset")
            assert abs(clock["clock_offset_s"] - 30.0) < 1.0, clock
            assert 0 <= clock["clock_rtt_ms"] < 1000
            honest_clock = await wait_until_async(lambda: measured("gw-honest"),
                                                  what="the other offset")
            assert abs(honest_clock["clock_offset_s"]) < 1.0
            skewed.status()  # within clock.probe_interval_s: no second probe
            await wait_until_async(lambda: service.stats.statuses >= 3, what="the status")
            assert len(skewed.of_kind(ClockProbe)) == 1
            for gateway in (skewed, honest):
                gateway.send(UplinkBatch(device_id=gateway.device_id, records=[UplinkRecord(
                    seq=1, type="note", created_at=time.time() + gateway.skew_s, payload={})]),
                    leaf="uplink")
            await wait_until_async(lambda: service.stats.records_acked == 2, what="both stored")
            assert "+30.0 s off" in await service.db_call(db.suspect_record, "gw-skewed", 1)
            assert await service.db_call(db.suspect_record, "gw-honest", 1) is None
        finally:
            await service.stop()

    try:
        run(scenario())
    finally:
        skewed.stop()
        honest.stop()


def test_requests_need_the_broker(config: CentralConfig) -> None:
    """A request that cannot be sent is closed as not sent, not left open."""
    async def scenario() -> None:
        service = await started(config)
        await service.transport.stop()
        with pytest.raises(diagnostics.NotConnected):
            await ask(service, DiagnoseRequest(device_id="gw-1", issued_by="erin"))
        assert service.db is not None
        [request] = await service.db_call(service.db.diagnostic_requests, "gw-1")
        assert request.ok is False and "not sent" in request.detail
        await service.stop()

    run(scenario())
