"""Pipelines behind one interface: built by their configuration's type, seen through a typed
snapshot (the operator page, `/api/status` and `/metrics` read nothing else)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge_agent.buffer import Buffer
from edge_agent.config import (
    CameraSourceConfig,
    DefectRules,
    OpcUaSourceConfig,
    ProcessPipelineConfig,
    VisionPipelineConfig,
)
from edge_agent.kernel.contract import (
    DeviceStatus,
    ModelRef,
    RecommendationPayload,
    SetpointChange,
)
from edge_agent.lifecycle import ModelWatch
from edge_agent.metrics import AgentSnapshot, agent_metric_families
from edge_agent.model_store import ModelStore
from edge_agent.pipelines.base import PipelineContext
from edge_agent.pipelines.process import ProcessPipeline
from edge_agent.pipelines.registry import build_pipeline
from edge_agent.pipelines.snapshot import PipelineSnapshot
from edge_agent.pipelines.vision import VisionPipeline
from edge_agent.recommendations import RecommendationBoard
from edge_agent.sources.camera import CameraSource
from edge_agent.sources.opcua import TagValue
from tests.edge_agent.pipelines.test_vision_pipeline import GREY, RED, frames, run_frames, setup

TAGS = {"zone2_temp_c": "ns=2;s=zone2_temp_c"}


def tag_source() -> SimpleNamespace:
    """What a process pipeline reads of an OPC-UA source, without a server."""
    now = time.time()

    async def write(tag: str, value: float) -> float | None:
        return None

    return SimpleNamespace(
        config=OpcUaSourceConfig(name="line-1", endpoint="opc.tcp://127.0.0.1:4840",
                                 nodes=TAGS, setpoints=TAGS),
        latest={"zone2_temp_c": TagValue(185.0, True, now, now)}, history={},
        confirmed_at=now, write=write)


def context(tmp_path: Path) -> PipelineContext:
    return PipelineContext(ModelStore(tmp_path / "models"), Buffer(tmp_path / "b.db", 10**7),
                           ModelWatch(), stats_interval_s=60)


def test_each_pipeline_is_built_by_the_kind_its_configuration_names(tmp_path: Path) -> None:
    parts = context(tmp_path)
    process = build_pipeline(ProcessPipelineConfig(
        name="scrap", source="line-1", model="extruder-scrap", features=["zone2_temp_c"]),
        tag_source(), parts)
    camera = CameraSource(CameraSourceConfig(type="camera", name="cam-1", url="usb:0"))
    vision = build_pipeline(VisionPipelineConfig(
        type="vision", name="surface", source="cam-1", model="surface",
        defects=DefectRules(classes=["scratch"])), camera, parts)
    assert isinstance(process, ProcessPipeline) and process.kind == "process"
    assert isinstance(vision, VisionPipeline) and vision.camera is camera
    # The process pipeline reads the source it was built on: without a model it waits.
    assert asyncio.run(process.tick()) is None
    assert process.status.state == "waiting" and "extruder-scrap" in process.status.detail
    asyncio.run(parts.buffer.close())


def test_a_pipeline_type_the_agent_cannot_run_is_refused_naming_those_it_can(
        tmp_path: Path) -> None:
    parts = context(tmp_path)
    with pytest.raises(ValueError, match=r"type 'thermal'.*known types: process, vision"):
        build_pipeline(SimpleNamespace(type="thermal", name="oven"), object(),  # type: ignore[arg-type]
                       parts)
    asyncio.run(parts.buffer.close())


def test_a_process_snapshot_is_what_the_status_api_shows(tmp_path: Path) -> None:
    parts = context(tmp_path)
    pipeline = ProcessPipeline.from_source(ProcessPipelineConfig(
        name="scrap", source="line-1", model="extruder-scrap"), tag_source(), parts)
    snapshot = pipeline.snapshot()
    assert (snapshot.name, snapshot.type, snapshot.state, snapshot.inferences) == \
        ("scrap", "process", "waiting", 0)
    assert snapshot.vision is None and snapshot.process is not None
    assert not snapshot.process.recommends and snapshot.process.trend == ()
    assert snapshot.document() == {
        "name": "scrap", "type": "process", "model": "extruder-scrap", "state": "waiting",
        "detail": "waiting for model extruder-scrap", "predictions": 0, "last_prediction": None,
        "recommendation": None, "recent_answers": [], "search": "", "last_write": None,
        "writes_this_hour": 0}
    asyncio.run(parts.buffer.close())


def test_a_vision_snapshot_carries_the_latest_defects_and_finds_one_by_number(
        tmp_path: Path) -> None:
    pipeline, buffer = setup(tmp_path)
    run_frames(pipeline, frames(GREY, RED, RED))
    asyncio.run(buffer.close())
    snapshot = pipeline.snapshot()
    assert snapshot.process is None and snapshot.vision is not None
    assert (snapshot.inferences, snapshot.vision.defects) == (3, 1)
    assert snapshot.vision.defect(1) is not None and snapshot.vision.defect(2) is None
    document = snapshot.document()
    assert (document["type"], document["camera"], document["frames"]) == ("vision", "cam1", 3)
    assert document["recent_defects"] == [
        {"number": 1, "at": pytest.approx(time.time(), abs=60), "roi": "frame",
         "label": "scratch", "confidence": snapshot.vision.recent_defects[0].confidence}]


def test_metrics_count_defects_and_samples_for_the_pipelines_that_have_them(
        tmp_path: Path) -> None:
    vision, buffer = setup(tmp_path)
    run_frames(vision, frames(GREY, RED, RED))
    asyncio.run(buffer.close())
    process = PipelineSnapshot(name="scrap", type="process", model="m", state="running",
                               detail="", inferences=7)
    snapshot = AgentSnapshot(status=DeviceStatus(device_id="gw-1", state="online"),
                             pipelines=[process, vision.snapshot()], resent_batches=0,
                             rejected_messages={})
    samples = {(family.name, s.labels.get("pipeline")): s.value
               for family in agent_metric_families(snapshot) for s in family.samples}
    assert samples[("edge_agent_pipeline_predictions", "scrap")] == 7
    assert samples[("edge_agent_pipeline_predictions", "surface")] == 3
    assert samples[("edge_agent_vision_defects", "surface")] == 1
    assert ("edge_agent_vision_defects", "scrap") not in samples


def recommendation(id_: str) -> RecommendationPayload:
    now = time.time()
    return RecommendationPayload(
        id=id_, pipeline="scrap", model=ModelRef(name="m", version="1.0.0", sha256="a" * 64),
        target="scrap_rate_pct", objective="minimise scrap_rate_pct",
        changes=[SetpointChange(tag="zone2_temp_c", current=182.0, proposed=188.0)],
        predicted_now=4.0, predicted_after=2.0, inputs={}, created_at=now,
        expires_at=now + 600)


def test_a_board_knows_its_open_and_its_recently_answered_recommendations(
        tmp_path: Path) -> None:
    async def scenario() -> dict[str, bool]:
        buffer = Buffer(tmp_path / "b.db", 10**7)
        board = RecommendationBoard("scrap", buffer)
        await board.offer(recommendation("r1"))
        await board.answer("r1", "rejected", "ana")
        await board.offer(recommendation("r2"))
        known = {r: board.knows(r) for r in ("r1", "r2", "r3")}
        await buffer.close()
        return known

    known: dict[str, Any] = asyncio.run(scenario())
    assert known == {"r1": True, "r2": True, "r3": False}
