"""The workload applies a configuration by difference, on real cameras (the sample images) and
the sample vision model: what did not change keeps its task, a changed pipeline is replaced
beside the old one, a changed source restarts with its pipelines."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edge_agent.buffer import Buffer
from edge_agent.config import AgentConfig, effective_config
from edge_agent.fleet.workload import Workload
from edge_agent.lifecycle import ModelWatch
from edge_agent.model_store import ModelStore
from edge_agent.pipelines.vision import VisionPipeline
from tests.edge_agent.fleet.fleet_parts import (
    SURFACE_META,
    SURFACE_MODEL,
    camera,
    install_surface_model,
    local_config,
    vision,
)
from tests.helpers import manifest_of, wait_until_async


def run(tmp_path: Path, body: dict,
        scenario: Callable[[Workload, AgentConfig], Awaitable[None]]) -> None:
    """Start a workload of `body` over the gateway's file, play `scenario`, stop it."""
    local = local_config(tmp_path)
    store = ModelStore(local.model_store_path)
    install_surface_model(store)

    async def main() -> None:
        buffer = Buffer(local.buffer_path, 10**8)
        workload = Workload(effective_config(local, body), store, buffer, ModelWatch())
        await workload.start()
        try:
            await scenario(workload, local)
        finally:
            await workload.stop()
            await buffer.close()

    asyncio.run(asyncio.wait_for(main(), 60))


async def judging(workload: Workload, name: str) -> VisionPipeline:
    """The pipeline `name` once it judged frames."""
    def running() -> VisionPipeline | None:
        pipeline = next((p for p in workload.pipelines if p.name == name), None)
        return pipeline if pipeline is not None and pipeline.status.frames > 0 else None
    return await wait_until_async(running, 20, what=lambda: f"{name} judging frames: "
                                  f"{[(p.name, p.status) for p in workload.pipelines]}")


def test_unchanged_pipeline_keeps_its_task_and_a_changed_one_is_replaced(tmp_path: Path) -> None:
    body = {"sources": [camera()], "pipelines": [vision("surface"), vision("edges")]}

    async def scenario(workload: Workload, local: AgentConfig) -> None:
        surface, edges = await judging(workload, "surface"), await judging(workload, "edges")
        surface_task, edges_task = workload.task("surface"), workload.task("edges")
        source = workload.sources["cam1"]
        changed = vision("edges", defects={"classes": ["pit"], "min_confidence": 0.9})
        change = await workload.apply(effective_config(
            local, {"sources": [camera()], "pipelines": [vision("surface"), changed]}))
        assert change.kept == ("surface",) and change.handed_over == ("edges",)
        assert workload.task("surface") is surface_task and not surface_task.done()
        assert workload.pipelines[0] is surface
        assert workload.sources["cam1"] is source, "an unchanged source is not restarted"
        assert edges_task.cancelled(), "the old pipeline stopped once the new one worked"
        new_edges = workload.pipelines[1]
        assert new_edges is not edges and new_edges.config.defects.classes == ["pit"]
        assert new_edges.status.state != "waiting", "it took over only once it worked"
        assert not workload.problems(final=True)

    run(tmp_path, body, scenario)


def test_changed_source_restarts_with_its_pipelines_and_the_others_run_on(
        tmp_path: Path) -> None:
    body = {"sources": [camera("cam1"), camera("cam2")],
            "pipelines": [vision("surface", "cam1"), vision("edges", "cam2")]}

    async def scenario(workload: Workload, local: AgentConfig) -> None:
        await judging(workload, "surface")
        await judging(workload, "edges")
        surface_task, edges_task = workload.task("surface"), workload.task("edges")
        old_cam2 = workload.sources["cam2"]
        change = await workload.apply(effective_config(local, {
            "sources": [camera("cam1"), camera("cam2", max_fps=5)],
            "pipelines": [vision("surface", "cam1"), vision("edges", "cam2")]}))
        assert change.restarted == ("edges",) and change.sources_started == ("cam2",)
        assert workload.task("surface") is surface_task
        assert edges_task.cancelled() and old_cam2.state.state == "stopped"
        assert workload.sources["cam2"] is not old_cam2
        assert workload.sources["cam2"].config.max_fps == 5
        await judging(workload, "edges")  # the new pipeline reads the new camera

    run(tmp_path, body, scenario)


def test_removed_parts_stop_and_new_ones_start(tmp_path: Path) -> None:
    body = {"sources": [camera("cam1")], "pipelines": [vision("surface", "cam1")]}

    async def scenario(workload: Workload, local: AgentConfig) -> None:
        await judging(workload, "surface")
        old_task, old_camera = workload.task("surface"), workload.sources["cam1"]
        change = await workload.apply(effective_config(local, {
            "sources": [camera("cam2")], "pipelines": [vision("edges", "cam2")]}))
        assert change.stopped == ("surface",) and change.started == ("edges",)
        assert change.sources_stopped == ("cam1",) and change.sources_started == ("cam2",)
        assert old_task.cancelled() and old_camera.state.state == "stopped"
        assert list(workload.sources) == ["cam2"]
        assert [p.name for p in workload.pipelines] == ["edges"]
        await judging(workload, "edges")

    run(tmp_path, body, scenario)


def test_monitoring_interval_change_replaces_every_pipeline(tmp_path: Path) -> None:
    body = {"sources": [camera()], "pipelines": [vision()]}

    async def scenario(workload: Workload, local: AgentConfig) -> None:
        await judging(workload, "surface")
        change = await workload.apply(effective_config(
            local, {**body, "monitoring_interval_s": 60}))
        assert change.handed_over == ("surface",)
        assert workload.pipelines[0].monitor.interval_s == 60

    run(tmp_path, body, scenario)


def test_restart_pipeline_restarts_it_with_its_source_unless_shared(tmp_path: Path) -> None:
    body = {"sources": [camera("cam1"), camera("cam2")],
            "pipelines": [vision("surface", "cam1"), vision("edges", "cam2"),
                          vision("pits", "cam2")]}

    async def scenario(workload: Workload, local: AgentConfig) -> None:
        await judging(workload, "surface")
        task, cam1, cam2 = workload.task("surface"), workload.sources["cam1"], \
            workload.sources["cam2"]
        assert await workload.restart_pipeline("surface") == \
            "pipeline surface restarted with its source cam1"
        assert task.cancelled() and workload.sources["cam1"] is not cam1
        await judging(workload, "surface")
        assert await workload.restart_pipeline("edges") == "pipeline edges restarted"
        assert workload.sources["cam2"] is cam2, "pits still reads it"
        await judging(workload, "edges")
        with pytest.raises(ValueError, match=r"no pipeline 'nope'.*surface, edges, pits"):
            await workload.restart_pipeline("nope")

    run(tmp_path, body, scenario)


def test_problems_name_a_failed_source_and_a_camera_that_never_connects(
        tmp_path: Path) -> None:
    async def scenario(workload: Workload, local: AgentConfig) -> None:
        await workload.apply(effective_config(local, {
            "sources": [camera("locked", "rtsp://viewer@127.0.0.1:9/stream",
                               password_env="EDGE_TEST_UNSET_PASSWORD"),
                        camera("gone", "/nonexistent/line.mp4")],
            "pipelines": [vision("surface", "locked"), vision("edges", "gone")]}))
        found = await wait_until_async(workload.problems, 10)
        assert found == ["source locked failed: environment variable EDGE_TEST_UNSET_PASSWORD "
                         "(password_env of camera locked) is not set; set it to the camera's "
                         "password"]
        final = workload.problems(final=True)
        assert any(p.startswith("source gone never connected: reconnecting "
                                "/nonexistent/line.mp4 does not exist") for p in final), final

    run(tmp_path, {}, scenario)


def test_a_pipeline_that_died_is_a_problem_and_the_others_serve_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: VisionPipeline) -> None:
        raise RuntimeError("decoder exploded")

    async def scenario(workload: Workload, local: AgentConfig) -> None:
        monkeypatch.setattr(VisionPipeline, "run", broken)
        await workload.apply(effective_config(local, {"sources": [camera()],
                                                      "pipelines": [vision("edges")]}))
        found = await wait_until_async(workload.problems, 10)
        assert found == ["pipeline edges stopped: RuntimeError('decoder exploded')"]
        assert workload.pipelines[0].status.state == "error"

    run(tmp_path, {}, scenario)


def test_a_pipeline_producing_only_errors_is_a_problem_at_the_end_of_probation(
        tmp_path: Path) -> None:
    async def scenario(workload: Workload, local: AgentConfig) -> None:
        broken = tmp_path / "broken.onnx"
        broken.write_bytes(b"these bytes are no ONNX model")
        manifest = manifest_of(SURFACE_MODEL, SURFACE_META, name="broken").model_copy(update={
            "sha256": hashlib.sha256(broken.read_bytes()).hexdigest(),
            "size_bytes": broken.stat().st_size})
        store = ModelStore(local.model_store_path)
        store.install(manifest, broken)
        store.activate("broken", "1.0.0")
        await workload.apply(effective_config(local, {
            "sources": [camera()], "pipelines": [vision(model="broken")]}))
        pipeline = workload.pipelines[0]
        await wait_until_async(lambda: pipeline.status.state == "error", 10)
        assert workload.problems() == [], "it may still recover within the probation"
        [problem] = workload.problems(final=True)
        assert problem.startswith("pipeline surface produced only errors: ")

    run(tmp_path, {}, scenario)


def test_a_pipeline_whose_model_is_missing_waits_and_is_no_problem(tmp_path: Path) -> None:
    async def scenario(workload: Workload, local: AgentConfig) -> None:
        await workload.apply(effective_config(local, {
            "sources": [camera()], "pipelines": [vision(model="not-deployed-yet")]}))
        pipeline = workload.pipelines[0]
        await wait_until_async(lambda: "waiting for model not-deployed-yet" in
                               pipeline.status.detail, 10)
        await wait_until_async(lambda: workload.sources["cam1"].state.state == "connected", 10)
        assert workload.problems() == [] and workload.problems(final=True) == []
        assert not workload.task("surface").done()

    run(tmp_path, {}, scenario)
