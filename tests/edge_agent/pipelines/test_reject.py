"""The reject output against the real line simulator: a confirmed defect of a chosen class pulses
the reject tag (seen by a client of its own), other classes do not, the minimum interval and the
rate limit refuse with a record, and it is off unless configured."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from asyncua import Client, ua
from pydantic import ValidationError

from central_sync.db import CentralDB
from edge_agent.buffer import Buffer
from edge_agent.config import AgentConfig, RejectOutputConfig, VisionPipelineConfig
from edge_agent.kernel.contract import RejectWritePayload, UplinkBatch, UplinkRecord
from edge_agent.lifecycle import ModelWatch
from edge_agent.pipelines.base import PipelineContext
from edge_agent.pipelines.reject import RejectOutput
from edge_agent.pipelines.vision import VisionPipeline
from edge_agent.sources.opcua import OpcUaSource
from tests.conftest import LineSimulatorProcess, free_port, start_line_simulator
from tests.edge_agent.pipelines.test_vision_pipeline import GREY, RED, frames, setup
from tests.edge_agent.sources.test_opcua_source import running, source_for
from tests.helpers import wait_until_async

REJECT_NODE = "ns=2;s=line1.reject"  # Int32, 0 at start


@pytest.fixture
def simulator() -> Iterator[LineSimulatorProcess]:
    """A simulator of its own: these tests write its reject tag."""
    process = start_line_simulator(free_port(), interval_s=1000)
    yield process
    process.kill()


class RejectWatcher:
    """An independent client's subscription to the reject tag: every value it took, in order."""

    def __init__(self) -> None:
        self.values: list[int] = []

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        self.values.append(value)


def reject_config(**overrides: Any) -> dict[str, Any]:
    return {"source": "line", "node": REJECT_NODE, "classes": ["scratch"], "mode": "pulse",
            "pulse_ms": 300, **overrides}


def pipeline_with_reject(tmp_path: Path, source: OpcUaSource,
                         **reject: Any) -> tuple[VisionPipeline, Buffer]:
    """The vision pipeline of the vision tests, built the way the agent builds it."""
    plain, buffer = setup(tmp_path, reject=reject_config(**reject))
    context = PipelineContext(plain._store, buffer, ModelWatch(),
                              node_writers={"line": source.write_node})
    return VisionPipeline.from_source(plain.config, plain.camera, context), buffer


def reject_records(path: Path) -> list[RejectWritePayload]:
    """The reject_write records in the buffer at `path`."""
    buffer = Buffer(path, 10**8)
    try:
        return [RejectWritePayload.model_validate_json(r.payload_json)
                for r in buffer.next_batch_sync(100) if r.type == "reject_write"]
    finally:
        buffer.close_sync()


def test_a_confirmed_defect_of_a_chosen_class_pulses_the_reject_tag(
        tmp_path: Path, simulator: LineSimulatorProcess) -> None:
    async def scenario() -> Buffer:
        source = source_for(simulator.endpoint)
        pipeline, buffer = pipeline_with_reject(tmp_path, source)
        watcher = RejectWatcher()
        async with running(source), Client(simulator.endpoint) as client:
            subscription = await client.create_subscription(50, watcher)
            await subscription.subscribe_data_change(client.get_node(REJECT_NODE))
            await wait_until_async(lambda: watcher.values == [0], 10, what="initial value")
            await wait_until_async(lambda: source.state.state == "connected", 15,
                                   what="connection")
            for item in frames(GREY, RED):
                await pipeline.process(item)
            assert watcher.values == [0]  # one red frame is not yet a confirmed defect
            for item in frames(RED):
                await pipeline.process(item)
            await wait_until_async(lambda: watcher.values == [0, 1, 0], 10,
                                   what=lambda: f"a pulse, saw {watcher.values}")
            assert pipeline.reject is not None
            await pipeline.reject.wait_resets()
        return buffer

    asyncio.run(scenario()).close_sync()
    records = reject_records(tmp_path / "buffer.db")
    assert [(r.action, r.value, r.previous, r.ok) for r in records] == [
        ("pulse", 1, 0, True), ("reset", 0, 1, True)]
    assert (records[0].label, records[0].roi, records[0].node) == ("scratch", "frame", REJECT_NODE)


def test_a_defect_of_a_class_not_chosen_does_not_write(
        tmp_path: Path, simulator: LineSimulatorProcess) -> None:
    async def scenario() -> tuple[int, Buffer]:
        source = source_for(simulator.endpoint)
        pipeline, buffer = pipeline_with_reject(tmp_path, source, classes=["pit"])
        async with running(source):
            await wait_until_async(lambda: source.state.state == "connected", 15,
                                   what="connection")
            written = [await pipeline.process(item) for item in frames(GREY, RED, RED)]
            assert [len(w) for w in written] == [0, 0, 1]  # a scratch defect, recorded
        async with Client(simulator.endpoint) as client:
            return int(await client.get_node(REJECT_NODE).read_value()), buffer

    value, buffer = asyncio.run(scenario())
    assert value == 0
    stored = buffer.next_batch_sync(100)
    assert [r.type for r in stored] == ["defect"]
    buffer.close_sync()


def test_minimum_interval_and_rate_limit_refuse_with_a_record(
        tmp_path: Path, simulator: LineSimulatorProcess) -> None:
    now = [100.0]
    config = RejectOutputConfig.model_validate(reject_config(
        mode="set", min_interval_s=5, max_per_minute=2))

    async def scenario() -> list[RejectWritePayload | None]:
        source = source_for(simulator.endpoint)
        buffer = Buffer(tmp_path / "buffer.db", 10**8)
        output = RejectOutput("surface", config, source.write_node, buffer, clock=lambda: now[0])
        results = []
        async with running(source):
            await wait_until_async(lambda: source.state.state == "connected", 15,
                                   what="connection")
            for at in (100.0, 101.0, 106.0, 112.0, 161.0):
                now[0] = at
                results.append(await output.on_defect("scratch", "frame"))
        buffer.close_sync()
        return results

    results = asyncio.run(scenario())
    assert all(r is not None for r in results)
    assert [r.ok for r in results if r] == [True, False, True, False, True]
    assert "min_interval_s" in results[1].detail  # type: ignore[union-attr]
    assert "max_per_minute" in results[3].detail  # type: ignore[union-attr]
    stored = reject_records(tmp_path / "buffer.db")
    assert [r.ok for r in stored] == [True, False, True, False, True]


def test_a_source_not_connected_is_a_refusal_with_a_record(tmp_path: Path) -> None:
    config = RejectOutputConfig.model_validate(reject_config())
    source = source_for(f"opc.tcp://127.0.0.1:{free_port()}/line-1")  # never started

    async def scenario() -> RejectWritePayload | None:
        buffer = Buffer(tmp_path / "buffer.db", 10**8)
        output = RejectOutput("surface", config, source.write_node, buffer)
        result = await output.on_defect("scratch", "frame")
        await output.wait_resets()
        buffer.close_sync()
        return result

    result = asyncio.run(scenario())
    assert result is not None and not result.ok and "not connected" in result.detail
    [stored] = reject_records(tmp_path / "buffer.db")
    assert not stored.ok

    db = CentralDB(tmp_path / "central.db")  # central keeps the record as it came
    db.store_batch(UplinkBatch(device_id="gw1", records=[UplinkRecord(
        seq=1, type="reject_write", created_at=1.0, payload=stored.model_dump())]))
    [kept] = db.recent_records("reject_write")
    assert RejectWritePayload.model_validate(kept["payload"]) == stored


def test_the_reject_output_is_off_unless_configured(tmp_path: Path) -> None:
    pipeline, buffer = setup(tmp_path)
    assert pipeline.config.reject is None and pipeline.reject is None
    buffer.close_sync()


def test_reject_classes_must_be_defect_classes_and_its_source_an_opcua_source() -> None:
    vision = {"type": "vision", "name": "surface", "source": "cam1", "model": "surface",
              "defects": {"classes": ["scratch"]}}
    with pytest.raises(ValidationError, match=r"not in defects\.classes"):
        VisionPipelineConfig.model_validate({**vision, "reject": reject_config(classes=["pit"])})
    sources = [{"type": "camera", "name": "cam1", "url": "video.avi"}]
    with pytest.raises(ValidationError, match="must name an opcua source"):
        AgentConfig.model_validate({
            "device_id": "gw1", "security": {"verify_signatures": False}, "sources": sources,
            "pipelines": [{**vision, "reject": reject_config(source="cam1")}]})


def test_an_integer_reject_tag_refuses_a_fraction_before_writing(
        tmp_path: Path, simulator: LineSimulatorProcess) -> None:
    config = RejectOutputConfig.model_validate(reject_config(mode="set", value=1.5))

    async def scenario() -> tuple[RejectWritePayload | None, ua.Variant]:
        source = source_for(simulator.endpoint)
        buffer = Buffer(tmp_path / "buffer.db", 10**8)
        output = RejectOutput("surface", config, source.write_node, buffer)
        async with running(source):
            await wait_until_async(lambda: source.state.state == "connected", 15,
                                   what="connection")
            result = await output.on_defect("scratch", "frame")
        async with Client(simulator.endpoint) as client:
            served = (await client.get_node(REJECT_NODE).read_data_value()).Value
        buffer.close_sync()
        assert served is not None
        return result, served

    result, served = asyncio.run(scenario())
    assert result is not None and not result.ok and "Int32" in result.detail
    assert (served.VariantType, served.Value) == (ua.VariantType.Int32, 0)


def test_the_agent_pulses_the_reject_tag_through_its_opcua_source(
        tmp_path: Path, simulator: LineSimulatorProcess) -> None:
    from edge_agent.app import Agent
    from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
    from tests.edge_agent.inference.test_vision import CLASSIFIER_META, colour_classifier, frame
    from tests.helpers import manifest_of, write_test_keys

    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 50, (320, 240))
    for _ in range(10):
        writer.write(frame(RED))
    writer.release()
    config = AgentConfig.model_validate({
        "device_id": "cam-gw", "data_dir": str(tmp_path / "agent"), "ui": {"port": 0},
        "security": {"central_public_key": str(write_test_keys(tmp_path / "keys")[1])},
        "sources": [{"type": "camera", "name": "cam1", "url": str(video)},
                    {"type": "opcua", "name": "line", "endpoint": simulator.endpoint,
                     "nodes": {"row": "ns=2;s=line1.row_index"}}],
        "pipelines": [{"type": "vision", "name": "surface", "source": "cam1",
                       "model": "surface", "defects": {"classes": ["scratch"],
                                                       "min_consecutive": 2, "cooldown_s": 0.5},
                       "reject": reject_config(min_interval_s=0.5)}]})
    agent = Agent(config, transport=MemoryTransport(MemoryBroker()))
    path = colour_classifier(tmp_path / "c.onnx")
    manifest = manifest_of(path, CLASSIFIER_META)
    agent.store.install(manifest, path)
    agent.store.activate("surface", "1.0.0")
    watcher = RejectWatcher()

    async def scenario() -> None:
        stop = asyncio.Event()
        async with Client(simulator.endpoint) as client:
            subscription = await client.create_subscription(50, watcher)
            await subscription.subscribe_data_change(client.get_node(REJECT_NODE))
            running_agent = asyncio.create_task(agent.run(stop))
            try:
                # A defect before the source connected is refused (recorded); the camera loops.
                await wait_until_async(lambda: watcher.values[:3] == [0, 1, 0], 30,
                                       what=lambda: f"a pulse, saw {watcher.values}")
            finally:
                stop.set()
                await running_agent

    asyncio.run(scenario())


def test_a_value_the_plc_does_not_keep_is_a_read_back_refusal(
        tmp_path: Path, simulator: LineSimulatorProcess) -> None:
    # The simulated PLC clamps the puller's setpoint to 0..20: what it reads back differs.
    clamped = "ns=2;s=line1.puller_speed_sp"
    config = RejectOutputConfig.model_validate(reject_config(node=clamped, mode="set", value=25))

    async def scenario() -> RejectWritePayload | None:
        source = source_for(simulator.endpoint)
        buffer = Buffer(tmp_path / "buffer.db", 10**8)
        output = RejectOutput("surface", config, source.write_node, buffer)
        async with running(source):
            await wait_until_async(lambda: source.state.state == "connected", 15,
                                   what="connection")
            result = await output.on_defect("scratch", "frame")
        buffer.close_sync()
        return result

    result = asyncio.run(scenario())
    assert result is not None and not result.ok and "read back 20" in result.detail
    assert [r.ok for r in reject_records(tmp_path / "buffer.db")] == [False]
