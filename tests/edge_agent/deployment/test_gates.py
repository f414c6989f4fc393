"""Deployment gates with the real sample models: the operators' rejections in a process model's
probation, and a vision shadow run that compares each region's decision (and fails when it
compared nothing)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import onnx
import pytest

from edge_agent.buffer import Buffer
from edge_agent.config import CameraSourceConfig, ProcessPipelineConfig, VisionPipelineConfig
from edge_agent.kernel.contract import ModelManifest
from edge_agent.pipelines.process import ProcessPipeline
from edge_agent.pipelines.vision import VisionPipeline
from edge_agent.sources.camera import CameraSource
from edge_agent.sources.opcua import TagValue
from tests.edge_agent.deployment.test_deployer import Harness, deploy_command, setup
from tests.helpers import (
    REPO,
    SAMPLE_METADATA,
    SAMPLE_MODEL,
    TEST_SIGNER,
    manifest_for,
    manifest_of,
    wait_until_async,
)

FEATURES = ["zone1_temp_c", "zone2_temp_c", "zone3_temp_c", "melt_pressure_bar",
            "screw_speed_rpm", "ambient_humidity_pct"]
TYPICAL = [178.0, 184.0, 190.0, 150.0, 60.0, 45.0]
RECOMMEND = {"controls": {"zone2_temp_c": {"min": 178, "max": 192, "step": 0.5, "max_change": 3},
                          "screw_speed_rpm": {"min": 50, "max": 70, "step": 1, "max_change": 5}},
             "objective": {"type": "minimise", "output": "scrap_rate_pct"}, "hold_s": 60,
             "outcome_after_s": 0, "candidates": 500, "refine_candidates": 0}
VISION_MODEL = REPO / "sample_data" / "surface_defects.onnx"
VISION_META = json.loads((REPO / "sample_data" / "surface_defects.json").read_text())
VIDEO = REPO / "sample_data" / "surface_line.mp4"
INSPECTION = {"name": "inspection", "x": 128, "y": 58, "width": 64, "height": 64}


def variant(source: Path, path: Path) -> Path:
    """The same model with other bytes (a metadata entry): the same answers, a new sha256."""
    model = onnx.load(source)
    entry = model.metadata_props.add()
    entry.key, entry.value = "retrained", path.name
    onnx.save(model, path)
    return path


# --- probation: the operators' answers --------------------------------------------------------

def test_process_probation_rolls_back_when_operators_reject_its_recommendations(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        candidate = variant(SAMPLE_MODEL, tmp_path / "scrap-1.1.onnx")
        h = await setup(tmp_path, candidate.read_bytes())
        h.store.install(manifest_for(SAMPLE_MODEL), SAMPLE_MODEL)
        h.store.activate("extruder-scrap", "1.0.0")
        clock = [time.time()]
        latest: dict[str, TagValue] = {}
        pipeline = ProcessPipeline(
            ProcessPipelineConfig.model_validate({
                "name": "scrap", "source": "line1", "model": "extruder-scrap",
                "features": FEATURES, "recommend": RECOMMEND}),
            latest, h.store, h.buffer, h.deployer.watch, clock=lambda: clock[0])

        async def answer(decision: str) -> str:
            """One recommendation from the version serving now, answered by the operator."""
            clock[0] += 61  # past hold_s: the same setting may be proposed again
            for tag, value in zip(FEATURES, TYPICAL, strict=True):
                latest[tag] = TagValue(value, True, clock[0], clock[0])
            await pipeline.tick()
            board = pipeline.board
            assert board is not None and board.open is not None, pipeline.status.recommendation
            await board.answer(board.open.id, decision, "ann")  # type: ignore[arg-type]
            return board.recent[0].recommendation.model.version

        assert await answer("rejected") == "1.0.0"  # the previous version's: not counted
        metadata = json.loads(SAMPLE_METADATA.read_text())
        metadata["probation"] = {"duration_s": 60}  # at least 5 answers, at most 50% rejected
        manifest = manifest_for(candidate, version="1.1.0", metadata=metadata)
        deployment = asyncio.create_task(h.deployer.deploy_and_watch(deploy_command(manifest)))
        await wait_until_async(lambda: h.deployer.watch._probations.get("extruder-scrap"),
                               what="1.1.0 on probation")
        answered = [await answer(d) for d in ("accepted", "rejected", "rejected", "rejected")]
        assert not deployment.done()  # 4 answers are not yet enough to judge
        answered.append(await answer("rejected"))
        assert answered == ["1.1.0"] * 5
        await asyncio.wait_for(deployment, 10)  # tripped by the 5th answer, not after 60 s
        last = h.events[-1]
        assert last.step == "rolled_back", h.events
        assert last.detail == ("probation failed: operators rejected 4 of 5 recommendations "
                               "(80%), above the 50% allowed; 1.0.0 serving again")
        assert h.store.active("extruder-scrap").manifest.version == "1.0.0"
        await h.deployer.stop()
        await h.buffer.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


# --- vision shadow runs -----------------------------------------------------------------------

def vision_candidate(path: Path, labels: list[str] | None = None,
                     shadow: dict | None = None) -> ModelManifest:
    metadata = {**VISION_META, "labels": labels or VISION_META["labels"],
                "shadow": shadow or {"predictions": 12, "duration_s": 20},
                "probation": {"duration_s": 0}}
    manifest = manifest_of(path, metadata, name="surface-defects")
    return TEST_SIGNER.signed(manifest.model_copy(
        update={"version": "1.1.0", "chunk_size_bytes": 16 * 1024}))


async def vision_line(tmp_path: Path, candidate: Path, url: str) -> tuple[Harness, list]:
    """1.0.0 serving a camera (its frames from `url`) with one inspection region."""
    h = await setup(tmp_path, candidate.read_bytes())
    active = manifest_of(VISION_MODEL, VISION_META, name="surface-defects")
    h.store.install(active, VISION_MODEL)
    h.store.activate("surface-defects", "1.0.0")
    camera = CameraSource(CameraSourceConfig(type="camera", name="cam1", url=url,
                                             rois=[INSPECTION], reconnect_max_backoff_s=0.5))
    pipeline = VisionPipeline(
        VisionPipelineConfig.model_validate({
            "type": "vision", "name": "surface", "source": "cam1", "model": "surface-defects",
            "defects": {"classes": ["scratch", "pit", "stain"], "min_confidence": 0.6}}),
        camera, h.store, Buffer(tmp_path / "pipeline.db", 10**8), h.deployer.watch)
    return h, [asyncio.create_task(camera.run()), asyncio.create_task(pipeline.run()), pipeline]


async def stop_line(h: Harness, line: list) -> None:
    *tasks, pipeline = line
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await pipeline._buffer.close()
    await h.deployer.stop()
    await h.buffer.close()


@pytest.mark.parametrize("labels", ["same", "swapped"])
def test_vision_shadow_run_compares_each_region_decision(tmp_path: Path, labels: str) -> None:
    async def scenario() -> None:
        file = variant(VISION_MODEL, tmp_path / "surface-1.1.onnx")
        h, line = await vision_line(tmp_path, file, str(VIDEO))
        await wait_until_async(lambda: line[-1].status.frames >= 1, 20,
                               what=lambda: f"1.0.0 judging frames: {line[-1].status}")
        # Swapped labels: what 1.0.0 calls ok, 1.1.0 calls scratch, and so on.
        names = ["scratch", "ok", "stain", "pit"] if labels == "swapped" else None
        activated = await h.deployer.deploy(deploy_command(vision_candidate(file, names)))
        shadow = [e for e in h.events if e.step == "shadow"][-1]
        assert shadow.detail.startswith("agreement ") and \
            "over 12 regions (label and defect classes, 0 failed)" in shadow.detail
        serving = h.store.active("surface-defects").manifest.version
        if labels == "same":
            assert activated and shadow.progress == 1.0 and serving == "1.1.0"
        else:
            assert not activated and shadow.progress == 0.0 and serving == "1.0.0"
            assert h.events[-1].detail.startswith("shadow run: agreement 0% over 12 regions")
        assert h.deployer.watch.shadow_candidate("surface-defects") is None
        await stop_line(h, line)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_vision_shadow_run_that_compared_nothing_fails_and_says_why(tmp_path: Path) -> None:
    async def scenario() -> None:
        file = variant(VISION_MODEL, tmp_path / "surface-1.1.onnx")
        # The camera delivers nothing: its video file is not there.
        h, line = await vision_line(tmp_path, file, str(tmp_path / "unplugged.mp4"))
        manifest = vision_candidate(file, shadow={"predictions": 12, "duration_s": 1})
        assert not await h.deployer.deploy(deploy_command(manifest))
        assert h.events[-1].step == "failed"
        assert h.events[-1].detail == ("shadow run compared 0 regions in 1.0 s (at least 5 "
                                       "needed); is the camera delivering frames?")
        assert h.store.active("surface-defects").manifest.version == "1.0.0"
        await stop_line(h, line)

    asyncio.run(asyncio.wait_for(scenario(), 60))
