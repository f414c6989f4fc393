"""The vision pipeline: defect rules, evidence, regions, sampling quotas, and a live camera."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.buffer import Buffer
from edge_agent.config import CameraSourceConfig, VisionPipelineConfig
from edge_agent.kernel.contract import DetectedBox
from edge_agent.model_store import ModelStore
from edge_agent.pipelines.vision import DefectRule, Quota, VisionPipeline
from edge_agent.sources.camera import CameraSource, Frame
from tests.edge_agent.inference.test_vision import (
    CLASSIFIER_META,
    colour_classifier,
    frame,
    yolo_model,
)
from tests.edge_agent.sources.test_camera import write_video
from tests.helpers import manifest_of, wait_until_async

RED, GREY, MILD_RED = (0, 0, 255), (40, 40, 40), (0, 0, 102)


def setup(tmp_path: Path, rois: list[dict] | None = None, model: Path | None = None,
          meta: dict | None = None, **pipeline: object) -> tuple[VisionPipeline, Buffer]:
    path = model or colour_classifier(tmp_path / "c.onnx")
    store = ModelStore(tmp_path / "models")
    manifest = manifest_of(path, meta or CLASSIFIER_META)
    store.install(manifest, path)
    store.activate(manifest.name, manifest.version)
    camera = CameraSource(CameraSourceConfig(type="camera", name="cam1",
                                             url=str(tmp_path / "video.avi"), rois=rois or []))
    buffer = Buffer(tmp_path / "buffer.db", 10**8)
    config = VisionPipelineConfig.model_validate({
        "type": "vision", "name": "surface", "source": "cam1", "model": "surface",
        "defects": {"classes": ["scratch", "pit", "stain"], "min_confidence": 0.6,
                    "min_consecutive": 2, "cooldown_s": 100},
        "sampling": {"uncertain_band": [0.4, 0.6], "normal_share": 0.0, "per_hour": 1},
        **pipeline})
    return VisionPipeline(config, camera, store, buffer, rng=random.Random(1)), buffer


def frames(*colours: tuple[int, int, int]) -> list[Frame]:
    return [Frame(i + 1, frame(c), time.time()) for i, c in enumerate(colours)]


def run_frames(pipeline: VisionPipeline, items: list[Frame]) -> list[list[dict]]:
    async def scenario() -> list[list[dict]]:
        return [await pipeline.process(f) for f in items]

    return asyncio.run(scenario())


def test_defect_needs_consecutive_frames_and_then_stays_quiet_for_the_cooldown(
        tmp_path: Path) -> None:
    pipeline, buffer = setup(tmp_path)
    out = run_frames(pipeline, frames(GREY, RED, RED, RED, GREY, RED, RED))
    assert [len(records) for records in out] == [0, 0, 1, 0, 0, 0, 0]
    record = out[2][0]
    assert (record.label, record.roi, record.camera) == ("scratch", "frame", "cam1")
    assert record.confidence > 0.6 and record.model.name == "surface"
    evidence = cv2.imdecode(np.frombuffer(base64.b64decode(
        record.images["frame"].jpeg_b64), np.uint8), cv2.IMREAD_COLOR)
    assert evidence.shape == (240, 320, 3) and evidence[..., 2].mean() > 200
    assert "annotated" in record.images
    stored = buffer.next_batch_sync(100)
    assert [r.type for r in stored] == ["defect"]
    buffer.close_sync()


def test_rule_counts_each_region_and_class_on_its_own() -> None:
    rule = DefectRule(min_consecutive=2, cooldown_s=5)
    assert rule.observe("left", {"pit"}, 0) == []
    assert rule.observe("right", {"pit"}, 0) == []
    assert rule.observe("left", {"pit", "stain"}, 1) == ["pit"]
    assert rule.observe("left", {"stain"}, 2) == ["stain"]
    assert rule.observe("left", {"pit"}, 3) == []  # streak broken at t=2
    assert rule.observe("left", {"pit"}, 4) == []  # in its cooldown until t=6
    assert rule.observe("left", {"pit"}, 7) == ["pit"]


def test_regions_of_interest_are_judged_separately(tmp_path: Path) -> None:
    rois = [{"name": "left", "x": 0, "y": 0, "width": 160, "height": 240},
            {"name": "right", "x": 160, "y": 0, "width": 160, "height": 240}]
    pipeline, buffer = setup(tmp_path, rois)
    image = frame(GREY)
    image[:, :160] = RED
    out = run_frames(pipeline, [Frame(1, image, 0.0), Frame(2, image, 0.0)])
    [record] = out[1]
    assert record.roi == "left" and record.roi_box == (0, 0, 160, 240)
    assert pipeline.status.last_result["roi"] == "right"
    buffer.close_sync()


def test_unsure_frames_are_sampled_within_the_quota(tmp_path: Path) -> None:
    pipeline, buffer = setup(tmp_path)
    out = run_frames(pipeline, frames(MILD_RED, MILD_RED, GREY))
    assert [len(r) for r in out] == [1, 0, 0]  # per_hour 1
    assert out[0][0].reason == "uncertain" and 0.4 <= out[0][0].confidence <= 0.6
    assert [r.type for r in buffer.next_batch_sync(10)] == ["sample"]
    buffer.close_sync()
    quota = Quota(per_hour=2, per_day=3)
    assert [quota.take(t) for t in (0, 1, 2, 3700, 3800, 7500)] == [
        True, True, False, True, False, False]


def test_detections_become_defects_with_boxes_in_frame_coordinates(tmp_path: Path) -> None:
    rows = np.array([[32.0], [32.0], [16.0], [16.0], [0.9], [0.0]], dtype=np.float32)
    model = yolo_model(tmp_path / "y.onnx", rows)
    meta = {"preprocessing": {"size": [64, 64]},
            "decoder": {"type": "detection", "confidence": 0.3},
            "labels": ["scratch", "ok"]}
    rois = [{"name": "belt", "x": 100, "y": 50, "width": 128, "height": 128}]
    pipeline, buffer = setup(tmp_path, rois, model=model, meta=meta)
    out = run_frames(pipeline, frames(GREY, GREY))
    [record] = out[1]
    # Input 64 -> ROI 128: box 24..40 becomes 48..80, shifted by the ROI's corner.
    assert record.boxes == [DetectedBox(label="scratch", confidence=0.9,
                                        box=(148, 98, 180, 130))]
    buffer.close_sync()


def test_pipeline_runs_on_a_live_camera_with_frames_overlapping_inference(
        tmp_path: Path) -> None:
    path = write_video(tmp_path / "video.avi", frames=20, fps=100)
    pipeline, buffer = setup(tmp_path)
    assert pipeline.camera.config.url == str(path)

    async def scenario() -> None:
        tasks = [asyncio.create_task(pipeline.camera.run()), asyncio.create_task(pipeline.run())]
        await wait_until_async(lambda: pipeline.status.frames >= 15, 20,
                               what=lambda: f"15 frames through the model: {pipeline.status}")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert pipeline.status.state == "running" and pipeline.status.last_result is not None
    buffer.close_sync()


def test_the_last_frame_of_a_video_that_ends_is_judged_too(tmp_path: Path,
                                                           monkeypatch) -> None:
    """Frames overlap inference, so a frame's result waits for the next frame; when none
    comes (the file ended), the pending one is still judged and recorded."""
    monkeypatch.setattr("edge_agent.pipelines.vision.FRAME_WAIT_S", 0.3)
    infer = VisionPipeline._infer

    def slow_infer(prepared):  # slower than the video: the last result is never ready early
        time.sleep(0.1)
        return infer(prepared)

    monkeypatch.setattr(VisionPipeline, "_infer", staticmethod(slow_infer))
    write_video(tmp_path / "video.avi", frames=6, fps=100)
    pipeline, buffer = setup(tmp_path)
    pipeline.camera.config = pipeline.camera.config.model_copy(update={"loop": False})
    judged: list[int] = []
    handle = pipeline._handle

    async def recording_handle(prepared, results):
        judged.append(prepared.frame.index)
        return await handle(prepared, results)

    pipeline._handle = recording_handle  # type: ignore[method-assign]

    async def scenario() -> None:
        tasks = [asyncio.create_task(pipeline.camera.run()), asyncio.create_task(pipeline.run())]
        await wait_until_async(lambda: pipeline.camera.state.state == "stopped", 20,
                               what="the video's end")
        last = pipeline.camera.latest().index
        await wait_until_async(lambda: judged and judged[-1] == last, 20,
                               what=lambda: f"frame {last}, the last, judged: {judged}")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    buffer.close_sync()


def test_pipeline_waits_for_its_model_and_says_so(tmp_path: Path) -> None:
    pipeline, buffer = setup(tmp_path)
    pipeline.config = pipeline.config.model_copy(update={"model": "not-deployed"})
    assert run_frames(pipeline, frames(RED)) == [[]]
    assert "waiting for model not-deployed" in pipeline.status.detail
    buffer.close_sync()


def test_agent_runs_a_camera_pipeline_and_reports_it(tmp_path: Path) -> None:
    from edge_agent.app import Agent
    from edge_agent.config import AgentConfig
    from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
    from tests.helpers import Scrape, write_test_keys

    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 50, (320, 240))
    for _ in range(10):
        writer.write(frame(RED))
    writer.release()
    config = AgentConfig.model_validate({
        "device_id": "cam-gw", "data_dir": str(tmp_path / "agent"), "ui": {"port": 0},
        "security": {"central_public_key": str(write_test_keys(tmp_path / "keys")[1])},
        "sources": [{"type": "camera", "name": "cam1", "url": str(video)}],
        "pipelines": [{"type": "vision", "name": "surface", "source": "cam1",
                       "model": "surface", "defects": {"classes": ["scratch"],
                                                       "min_consecutive": 2}}]})
    agent = Agent(config, transport=MemoryTransport(MemoryBroker()))
    path = colour_classifier(tmp_path / "c.onnx")
    manifest = manifest_of(path, CLASSIFIER_META)
    agent.store.install(manifest, path)
    agent.store.activate("surface", "1.0.0")

    async def scenario() -> tuple[dict, Scrape]:
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        await wait_until_async(lambda: agent.pipelines[0].status.defects >= 1, 20,
                               what=lambda: f"a defect found: {agent.pipelines[0].status}")
        document = await agent.status_document()
        scrape = Scrape((await agent.metrics.exposition()).decode())
        stop.set()
        await running
        return document, scrape

    document, scrape = asyncio.run(scenario())
    [pipeline] = document["pipelines"]
    assert pipeline["type"] == "vision" and pipeline["defects"] >= 1
    assert document["device"]["sources"]["cam1"]["state"] == "connected"
    assert scrape.value("edge_agent_vision_defects_total", pipeline="surface") >= 1


def test_sample_model_finds_the_defects_passing_in_the_sample_line_video(tmp_path: Path) -> None:
    import json

    from tests.helpers import REPO

    model = REPO / "sample_data" / "surface_defects.onnx"
    meta = json.loads((REPO / "sample_data" / "surface_defects.json").read_text())
    rois = [{"name": "inspection", "x": 128, "y": 58, "width": 64, "height": 64}]
    pipeline, buffer = setup(tmp_path, rois, model=model, meta=meta,
                             sampling={"uncertain_band": None, "normal_share": 0},
                             defects={"classes": ["scratch", "pit", "stain"],
                                      "min_confidence": 0.6, "min_consecutive": 2,
                                      "cooldown_s": 0.5})
    capture = cv2.VideoCapture(str(REPO / "sample_data" / "surface_line.mp4"))
    found: list[str] = []

    async def scenario() -> None:
        index = 0
        while True:
            ok, image = capture.read()
            if not ok:
                return
            index += 1
            # Frames are 0.1 s apart on the line: the cooldown counts in line time.
            for record in await pipeline.process(Frame(index, image, index * 0.1)):
                found.append(record.label)
            await asyncio.sleep(0)

    started = time.time()
    asyncio.run(scenario())
    assert pipeline.status.frames == 80
    # The strip carries 10 defects (2 scratches, 4 pits, 4 stains), each seen in 2-4 frames.
    assert 8 <= len(found) <= 10, found
    assert {"scratch", "pit", "stain"} <= set(found), found
    assert time.time() - started < 30
    buffer.close_sync()
