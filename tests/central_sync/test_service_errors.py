"""A database error in any of central's MQTT handlers: logged in one line, counted by handler
in /metrics, nothing acked (the device sends again) and nothing raised into the transport."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from central_helpers import Inbox, make_batch, run
from failing_db import FAILURE, FailingDB
from prometheus_client import generate_latest

import central_sync.service as service_module
from central_sync.config import CentralConfig
from central_sync.metrics import central_registry
from central_sync.service import CentralService
from edge_agent.kernel.contract import (
    ChunkRequest,
    DeploymentEvent,
    DeviceStatus,
    DiagnosticReply,
    LogBatch,
    RollbackCommand,
    Topics,
    encode,
    split_record,
)
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import Scrape, wait_until_async

TOPICS = Topics()
DEVICE = "gw-1"


@dataclass(frozen=True)
class Case:
    method: str  # the CentralDB call that fails
    topic: str
    payload: Callable[[], bytes]
    logged: str  # what the log line says was not done


def _record_chunk() -> bytes:
    [chunk] = split_record(DEVICE, 7, "prediction", 1_700_000_000.0, '{"x": 1}', 1024)
    return encode(chunk)


CASES = {
    "uplink-batch": Case("store_batch", TOPICS.uplink(DEVICE),
                         lambda: encode(make_batch(DEVICE)), "batch not stored"),
    "uplink-record-chunk": Case("store_record_chunk", TOPICS.uplink(DEVICE), _record_chunk,
                                "record chunk not stored"),
    "status": Case("update_status", TOPICS.status(DEVICE),
                   lambda: encode(DeviceStatus(device_id=DEVICE, state="online")),
                   "status not stored"),
    "deployment": Case("record_deployment_event", TOPICS.deployment(DEVICE),
                       lambda: encode(DeploymentEvent(
                           device_id=DEVICE, command_id="c1", model_name="scrap-model",
                           version="1.0.0", step="downloading")),
                       "deployment step not stored"),
    "chunk-request": Case("get_model_by_sha256", TOPICS.chunk_request(DEVICE),
                          lambda: encode(ChunkRequest(device_id=DEVICE, sha256="a" * 64,
                                                      indices=[0, 1])),
                          "chunk request not served"),
    "diagnostics-logs": Case("store_log_batch", TOPICS.diagnostics(DEVICE),
                             lambda: encode(LogBatch(device_id=DEVICE, request_id="r1")),
                             "log lines not stored"),
    "diagnostics-reply": Case("store_diagnostic_reply", TOPICS.diagnostics(DEVICE),
                              lambda: encode(DiagnosticReply(
                                  device_id=DEVICE, request_id="r1", action="diagnose",
                                  ok=True)), "diagnostic reply not stored"),
}


@pytest.mark.parametrize("name", CASES)
def test_database_error_is_logged_counted_and_not_acked(
    name: str, central_config: CentralConfig, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    case = CASES[name]
    handler = TOPICS.parse_device_topic(case.topic)[1]  # type: ignore[index]
    monkeypatch.setattr(service_module, "CentralDB",
                        functools.partial(FailingDB, method=case.method))
    caplog.set_level(logging.INFO)

    async def scenario() -> tuple[CentralService, Inbox, str]:
        broker = MemoryBroker()
        service = CentralService(central_config, MemoryTransport(broker))
        await service.start()
        device = MemoryTransport(broker)
        await device.start()
        answers = Inbox()
        await device.subscribe(TOPICS.ack(DEVICE), answers)
        await device.subscribe(TOPICS.all_artifacts(), answers)
        try:
            await device.publish(case.topic, case.payload())
            await wait_until_async(lambda: service.stats.database_errors[handler] == 1,
                                   what=f"the {handler} handler's database error counted")
            registry = central_registry(service.db, 120.0, health=service.health)
            metrics = await asyncio.to_thread(generate_latest, registry)
        finally:
            await device.stop()
            await service.stop()
        return service, answers, metrics.decode()

    service, answers, metrics = run(scenario())

    assert answers.messages == [], "nothing may be acked or answered: the device sends again"
    assert service.stats.store_failures == 1
    scrape = Scrape(metrics)
    assert scrape.value("central_sync_database_errors_total", handler=handler) == 1
    assert scrape.value("central_sync_store_failures_total") == 1
    [line] = [r.getMessage() for r in caplog.records
              if r.name == "central_sync.service" and r.levelno == logging.ERROR]
    assert line.startswith(case.logged)
    for part in (f"handler={handler}", f"topic={case.topic}", f"device={DEVICE}",
                 f"error={FAILURE}"):
        assert part in line
    raised = [r for r in caplog.records if r.name.startswith("edge_agent.kernel.transport")
              and r.levelno >= logging.ERROR]
    assert raised == [], "the handler raised into the transport"


NUL_TEXT = {
    "status": (TOPICS.status(DEVICE),
               lambda: encode(DeviceStatus(device_id=DEVICE, state="online",
                                           agent_version="1.0\x00beta"))),
    "deployment": (TOPICS.deployment(DEVICE),
                   lambda: encode(DeploymentEvent(
                       device_id=DEVICE, command_id="c\x001", model_name="scrap-model",
                       version="1.0.0", step="failed", detail="health check\x00failed"))),
}
# Central takes a device's steps only for a command it issued to that device.
ISSUED = {"deployment": RollbackCommand(device_id=DEVICE, model_name="scrap-model",
                                        command_id="c\x001")}


@pytest.mark.parametrize("leaf", NUL_TEXT)
def test_free_text_with_nul_is_stored_on_every_database(
    leaf: str, central_config: CentralConfig,
) -> None:
    """PostgreSQL refuses NUL in text: such a message would fail on every resend."""
    topic, payload = NUL_TEXT[leaf]

    async def scenario() -> CentralService:
        broker = MemoryBroker()
        service = CentralService(central_config, MemoryTransport(broker))
        await service.start()
        assert service.db is not None
        if leaf in ISSUED:
            await service.db_call(service.db.record_rollback_command, ISSUED[leaf])
        device = MemoryTransport(broker)
        await device.start()
        try:
            await device.publish(topic, payload())
            await wait_until_async(
                lambda: service.stats.statuses + service.stats.deployment_events == 1
                or service.stats.database_errors, what=f"the {leaf} message handled")
        finally:
            await device.stop()
            await service.stop()
        return service

    service = run(scenario())

    assert dict(service.stats.database_errors) == {}
    assert service.stats.statuses + service.stats.deployment_events == 1
