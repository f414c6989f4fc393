"""Setpoint write-back against the real line simulator: each node gets its own data type, what it
reads back is compared, and a recommendation failing partway restores what it already wrote."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from asyncua import Client, ua

from edge_agent.buffer import Buffer
from edge_agent.config import RecommendConfig
from edge_agent.kernel.contract import ModelRef, RecommendationPayload, SetpointChange
from edge_agent.pipelines.setpoints import SetpointGuard
from edge_agent.sources.opcua import OpcUaSource, SetpointWriteError
from sample_data.line_simulator import LineSimulator, context_for
from tests.conftest import LineSimulatorProcess, free_port, start_line_simulator
from tests.edge_agent.sources.test_opcua_source import running, source_for
from tests.helpers import wait_until_async

SETPOINTS = {
    "die_temp": "ns=2;s=line1.die_temp_c_sp",  # Float, 205.0 at start
    "recipe_step": "ns=2;s=line1.recipe_step_sp",  # Int32, 3
    "puller_speed": "ns=2;s=line1.puller_speed_sp",  # Double, 12.5, the PLC clamps it to 0..20
    "zone1": "ns=2;s=line1.zone1_temp_c",  # a measurement: the server refuses writes
}
CONTROLS = {
    "die_temp": {"min": 190, "max": 220, "step": 0.1, "max_change": 10},
    "recipe_step": {"min": 1, "max": 9, "step": 1, "max_change": 5},
    "puller_speed": {"min": 0, "max": 30, "step": 0.5, "max_change": 20},
    "zone1": {"min": 100, "max": 300, "step": 1, "max_change": 200},
}


@pytest.fixture
def simulator() -> Iterator[LineSimulatorProcess]:
    """A simulator of its own: these tests change its setpoints."""
    process = start_line_simulator(free_port(), interval_s=1000)
    yield process
    process.kill()


async def served(endpoint: str, node_id: str) -> ua.Variant:
    async with Client(endpoint) as client:
        value = (await client.get_node(node_id).read_data_value()).Value
    assert value is not None
    return value


async def connected(source: OpcUaSource) -> None:
    await wait_until_async(lambda: source.state.state == "connected", 15, what="connection")


def test_each_setpoint_is_written_in_its_nodes_data_type(
        simulator: LineSimulatorProcess) -> None:
    async def scenario() -> None:
        source = source_for(simulator.endpoint, setpoints=SETPOINTS)
        async with running(source):
            await connected(source)
            assert await source.write("die_temp", 206.3) == pytest.approx(205.0)
            assert await source.write("recipe_step", 4.0) == 3.0
            assert await source.write("puller_speed", 13.25) == 12.5
        die = await served(simulator.endpoint, SETPOINTS["die_temp"])
        assert die.VariantType == ua.VariantType.Float
        assert die.Value == pytest.approx(206.3, rel=1e-6)  # a Float keeps ~7 digits
        step = await served(simulator.endpoint, SETPOINTS["recipe_step"])
        assert (step.VariantType, step.Value) == (ua.VariantType.Int32, 4)
        speed = await served(simulator.endpoint, SETPOINTS["puller_speed"])
        assert (speed.VariantType, speed.Value) == (ua.VariantType.Double, 13.25)

    asyncio.run(scenario())


def test_values_an_integer_node_cannot_hold_are_refused_before_writing(
        simulator: LineSimulatorProcess) -> None:
    async def scenario() -> None:
        source = source_for(simulator.endpoint, setpoints=SETPOINTS)
        async with running(source):
            await connected(source)
            with pytest.raises(SetpointWriteError, match=r"Int32, 4\.5 is not a whole number"):
                await source.write("recipe_step", 4.5)
            with pytest.raises(SetpointWriteError, match=r"out of the Int32 range"):
                await source.write("recipe_step", 2.0**31)
            with pytest.raises(SetpointWriteError, match="not a finite number"):
                await source.write("die_temp", float("inf"))
        step = await served(simulator.endpoint, SETPOINTS["recipe_step"])
        assert (step.VariantType, step.Value) == (ua.VariantType.Int32, 3)

    asyncio.run(scenario())


def test_a_value_the_plc_does_not_keep_is_detected_on_read_back(
        simulator: LineSimulatorProcess) -> None:
    async def scenario() -> None:
        source = source_for(simulator.endpoint, setpoints=SETPOINTS)
        async with running(source):
            await connected(source)
            with pytest.raises(SetpointWriteError, match=r"wrote 25.0 \(Double\) but read back "
                                                         r"20.0") as refused:
                await source.write("puller_speed", 25.0)
            assert refused.value.previous == 12.5  # changed anyway: a caller can restore it

    asyncio.run(scenario())


def guard_on(source: OpcUaSource, tmp_path: Path) -> SetpointGuard:
    config = RecommendConfig.model_validate({
        "controls": CONTROLS, "objective": {"type": "minimise"}, "mode": "auto",
        "auto": {"min_interval_s": 0}})
    return SetpointGuard("line1", config, source.write, Buffer(tmp_path / "b.db", 10**7),
                         SETPOINTS)


def recommending(proposed: dict[str, float]) -> RecommendationPayload:
    return RecommendationPayload(
        pipeline="line1", model=ModelRef(name="m", version="1.0.0", sha256="0" * 64),
        target="scrap", objective="minimise scrap", predicted_now=3.0, predicted_after=2.0,
        changes=[SetpointChange(tag=t, current=0.0, proposed=v) for t, v in proposed.items()],
        inputs={}, expires_at=2e9)


async def write_records(guard: SetpointGuard) -> list[dict]:
    batch = await guard._buffer.next_batch(100)
    return [json.loads(r.payload_json) for r in batch if r.type == "setpoint_write"]


@pytest.mark.parametrize(("failing", "value", "why"), [
    ("zone1", 150.0, "BadUserAccessDenied|BadNotWritable"),
    ("puller_speed", 25.0, "read back 20.0"),
])
def test_a_recommendation_failing_partway_restores_the_tags_already_written(
        simulator: LineSimulatorProcess, tmp_path: Path, failing: str, value: float,
        why: str) -> None:
    async def scenario() -> None:
        source = source_for(simulator.endpoint, setpoints=SETPOINTS)
        async with running(source):
            await connected(source)
            guard = guard_on(source, tmp_path)
            current = {"die_temp": 205.0, "recipe_step": 3.0, "puller_speed": 12.5,
                       "zone1": 170.0}
            attempts = await guard.apply(
                recommending({"die_temp": 207.5, "recipe_step": 5.0, failing: value}), current)
            records = await write_records(guard)
        assert [(r["tag"], r["ok"]) for r in records][:3] == [
            ("die_temp", True), ("recipe_step", True), (failing, False)]
        assert records[2]["detail"].startswith(f"writing {failing} failed")
        restored = records[3:]
        expected = ["recipe_step", "die_temp"]
        if failing == "puller_speed":  # the PLC kept 20.0 rather than 25.0: put back too
            expected.insert(0, "puller_speed")
        assert [r["tag"] for r in restored] == expected
        assert all(r["ok"] and r["detail"].startswith("restored after: writing")
                   for r in restored)
        assert {r["tag"]: r["value"] for r in restored} == {
            tag: current[tag] for tag in expected}
        assert len(attempts) == len(records) and not attempts[2].ok
        assert re.search(why, records[2]["detail"]), records[2]["detail"]
        die = await served(simulator.endpoint, SETPOINTS["die_temp"])
        assert (die.VariantType, die.Value) == (ua.VariantType.Float, 205.0)
        step = await served(simulator.endpoint, SETPOINTS["recipe_step"])
        assert (step.VariantType, step.Value) == (ua.VariantType.Int32, 3)
        speed = await served(simulator.endpoint, SETPOINTS["puller_speed"])
        assert speed.Value == 12.5

    asyncio.run(scenario())


def test_simulator_serves_part_lot_and_order_that_follow_the_rows() -> None:
    async def scenario() -> None:
        async with (LineSimulator(port=0, interval_s=None) as simulator,
                    Client(simulator.endpoint) as client):
            nodes = {tag: client.get_node(f"ns=2;s=line1.{tag}")
                     for tag in ("part_id", "lot", "order")}
            first = {tag: await node.read_value() for tag, node in nodes.items()}
            assert first == context_for(0) == {
                "part_id": "P-000000", "lot": "LOT-0000", "order": "ORD-0000"}
            for _ in range(5):
                await simulator.step()
            assert await nodes["part_id"].read_value() == "P-000001"
            assert await nodes["lot"].read_value() == "LOT-0000"
            assert (await client.get_node("ns=2;s=line1.row_index").read_value()) == 5

    asyncio.run(scenario())
