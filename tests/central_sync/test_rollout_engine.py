"""The rollout engine in central's service: a rollout whose step fails fails alone."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from pathlib import Path

import pytest
from central_helpers import make_onnx_model, run
from failing_db import FailingDB
from prometheus_client import generate_latest

import central_sync.service as service_module
from central_sync.config import CentralConfig
from central_sync.db import CentralDB, Rollout
from central_sync.metrics import central_registry
from central_sync.registry import publish_model
from central_sync.rollouts import start_rollout
from central_sync.service import CentralService
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import TEST_SIGNER, Scrape, wait_until_async


def _two_rollouts(config: CentralConfig, folder: Path) -> list[Rollout]:
    """A rollout of each of two models, to one device each, in the order the engine steps
    them."""
    db = CentralDB(config.database_url)
    try:
        for index, (name, device) in enumerate((("model-a", "gw-1"), ("model-b", "gw-2"))):
            model = make_onnx_model(folder / f"{name}.onnx", weight=index + 1.0)
            publish_model(db, config.artifact_dir, model, name, "1.0.0", signer=TEST_SIGNER)
            start_rollout(db, name, "1.0.0", [device], f"devices {device}", "test", canary=0,
                          approval_required=False)
        return db.list_rollouts()
    finally:
        db.close()


def test_a_rollout_whose_step_fails_does_not_stop_the_others(
    central_config: CentralConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing, healthy = _two_rollouts(central_config, tmp_path)
    broken = threading.Event()
    broken.set()
    monkeypatch.setattr(service_module, "CentralDB", functools.partial(
        FailingDB, method="rollout_devices",
        fails=lambda rollout_id: rollout_id == failing.rollout_id and broken.is_set()))
    caplog.set_level(logging.INFO)

    async def scenario() -> tuple[int, str]:
        service = CentralService(central_config, MemoryTransport(MemoryBroker()))
        await service.start()
        assert service.db is not None and service.rollouts is not None
        db = service.db

        async def sent(rollout: Rollout) -> bool:
            devices = await service.db_call(db.rollout_devices, rollout.rollout_id)
            return [d.state for d in devices] == ["sent"]

        try:
            await wait_until_async(lambda: sent(healthy), 10,
                                   what="the healthy rollout's deploy command sent")
            failures = service.rollouts.step_failures[failing.rollout_id]
            registry = central_registry(db, 120.0, health=service.health)
            metrics = (await asyncio.to_thread(generate_latest, registry)).decode()
            broken.clear()  # the database works again: the failed rollout steps next round
            await wait_until_async(lambda: sent(failing), 10,
                                   what="the failed rollout's deploy command sent")
            assert healthy.rollout_id not in service.rollouts.step_failures
        finally:
            await service.stop()
        return failures, metrics

    failures, metrics = run(scenario(), timeout_s=30)

    assert failures >= 1
    assert Scrape(metrics).value("central_sync_rollout_step_failures_total") >= 1
    logged = [r.getMessage() for r in caplog.records
              if r.name == "central_sync.rollouts" and r.levelno == logging.ERROR]
    assert logged and all(f"rollout={failing.rollout_id}" in line for line in logged)
