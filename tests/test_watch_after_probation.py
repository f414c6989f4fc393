"""The watch after probation, end to end: a confirmed version keeps being judged one window at a
time; a sustained breach becomes a `model_watch` alert that the uplink carries to central, which
stores it; the version keeps serving."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from central_sync.config import CentralConfig
from central_sync.service import CentralService
from edge_agent.buffer import Buffer
from edge_agent.config import ProcessPipelineConfig, UplinkConfig
from edge_agent.deployment.deployer import Deployer
from edge_agent.kernel.contract import DeployCommand, ModelWatchPayload, Topics
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.model_store import ModelStore
from edge_agent.pipelines.process import ProcessPipeline
from edge_agent.sources.opcua import TagValue
from edge_agent.uplink import Uplink
from tests.helpers import (
    SAMPLE_METADATA,
    TEST_SIGNER,
    TEST_VERIFIER,
    db_rows,
    manifest_for,
    wait_until_async,
    write_test_keys,
)

FEATURES = ["zone1_temp_c", "zone2_temp_c", "zone3_temp_c", "melt_pressure_bar",
            "screw_speed_rpm", "ambient_humidity_pct"]
TYPICAL = [178.0, 184.0, 190.0, 150.0, 60.0, 45.0]


def nan_model(path: Path) -> Path:
    """features [N,6] -> scrap_rate_pct [N,1] = sum(x / x): 6 for typical inputs, NaN for 0."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["features", "features"], ["ratio"]),
         helper.make_node("ReduceSum", ["ratio", "axes"], ["scrap_rate_pct"], keepdims=1)],
        "nan-on-zero",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 6])],
        [helper.make_tensor_value_info("scrap_rate_pct", TensorProto.FLOAT, [None, 1])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_sustained_breach_after_probation_reaches_central_and_nothing_rolls_back(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        config = CentralConfig.model_validate({
            "database_url": f"sqlite:///{tmp_path}/central.db",
            "artifact_dir": str(tmp_path / "artifacts"), "web": {"port": 0},
            "signing_key_path": str(write_test_keys(tmp_path / "keys")[0])})
        broker = MemoryBroker()
        central = CentralService(config, MemoryTransport(broker))
        await central.start()
        device = MemoryTransport(broker)
        await device.start()
        store = ModelStore(tmp_path / "gw" / "models")
        buffer = Buffer(tmp_path / "gw" / "buffer.db", 10**8)
        deployer = Deployer("gw1", Topics(), device, store, buffer, TEST_VERIFIER)
        await deployer.start()
        uplink = Uplink("gw1", Topics(), device, buffer, UplinkConfig(batch_size=50))
        latest: dict[str, TagValue] = {}
        pipeline = ProcessPipeline(
            ProcessPipelineConfig(name="scrap", source="line1", model="extruder-scrap",
                                  features=FEATURES), latest, store, buffer, deployer.watch)
        values = list(TYPICAL)

        async def line() -> None:
            while True:
                now = time.time()
                for tag, value in zip(FEATURES, values, strict=True):
                    latest[tag] = TagValue(value, True, now, now)
                await pipeline.tick()
                await asyncio.sleep(0.01)

        async def watch_records() -> list[ModelWatchPayload]:
            rows = await central.db_call(
                db_rows, central.db, "SELECT payload FROM records WHERE type = 'model_watch' "
                "ORDER BY seq")
            return [ModelWatchPayload.model_validate_json(r["payload"]) for r in rows]

        # Sum of x / x: 6 for the typical inputs, NaN once the line's tags read 0.
        model = nan_model(tmp_path / "nan.onnx")
        metadata: dict[str, Any] = {
            **json.loads(SAMPLE_METADATA.read_text()),
            "golden": {"input": [TYPICAL], "output": [[6.0]]},
            "probation": {"duration_s": 0.5, "min_observations": 3},
            "watch": {"interval_s": 0.3, "breaches": 2}}
        manifest = manifest_for(model, version="1.1.0", metadata=metadata)
        store.install(manifest, model)  # fetched earlier: the chunks are not this test's matter
        tasks = [asyncio.create_task(line()), asyncio.create_task(uplink.run())]
        await deployer.deploy_and_watch(TEST_SIGNER.signed(
            DeployCommand(device_id="gw1", manifest=manifest)))
        assert store.active("extruder-scrap").manifest.version == "1.1.0"

        healthy = await wait_until_async(
            lambda: _first(watch_records, lambda r: r.inferences > 0), 20,
            what="a window of the confirmed version stored by central")
        assert healthy.breaches == [] and healthy.consecutive == 0 and not healthy.alert
        assert healthy.model.version == "1.1.0" and healthy.nonfinite == 0
        assert healthy.latency_p99_ms is not None

        values[:] = [0.0] * len(FEATURES)  # the line stops: every output is NaN from now on
        alert = await wait_until_async(lambda: _first(watch_records, lambda r: r.alert), 20,
                                       what="a sustained breach stored by central")
        assert alert.consecutive == 2 and alert.nonfinite > 0
        assert alert.breaches == [f"{alert.nonfinite} of {alert.inferences} outputs were NaN "
                                  "or infinite (at most 0 tolerated)"]
        records = await watch_records()
        before = records[records.index(alert) - 1]
        assert before.consecutive == 1 and before.breaches and not before.alert
        # Reported, not acted on: the version still serves, no rollback was attempted.
        assert store.active("extruder-scrap").manifest.version == "1.1.0"
        steps = [json.loads(r["payload"])["step"] for r in await central.db_call(
            db_rows, central.db, "SELECT payload FROM records WHERE type = 'deployment_event'")]
        assert "confirmed" in steps and "rolled_back" not in steps

        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await deployer.stop()
        await buffer.close()
        await central.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


async def _first(records: Any, match: Any) -> ModelWatchPayload | None:
    return next((r for r in await records() if match(r)), None)
