"""A real agent (sample vision model, cameras on the sample images) takes configurations from
central over the broker: a signed one is applied and confirmed; one that does not validate,
or is unhealthy within its probation, leaves (or puts back) the previous one with its reason;
forged, replayed, stale and downgrade commands change nothing; after a restart the agent runs
its last good configuration, and reports a switch it died in as rolled back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.app import Agent
from edge_agent.config import AgentConfig
from edge_agent.kernel.contract import (
    RECORD_DEPLOYMENT_EVENT,
    ConfigDeployCommand,
    ConfigDocument,
    ConfigRollbackCommand,
)
from edge_agent.kernel.signing import Signer
from edge_agent.kernel.transport import BrokerConfig, Transport
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.conftest import free_port
from tests.edge_agent.fleet.fleet_parts import (
    Central,
    camera,
    deploy,
    document,
    install_surface_model,
    local_config,
    rollback,
    stale,
    vision,
)
from tests.helpers import wait_until_async

GOOD = {"sources": [camera("cam1")], "pipelines": [vision("surface", "cam1")]}
SURFACE_ONLY_PITS = {"sources": [camera("cam1")],
                     "pipelines": [vision("surface", "cam1",
                                          defects={"classes": ["pit"], "min_confidence": 0.7})]}


@contextlib.asynccontextmanager
async def running(config: AgentConfig, transport: Transport) -> AsyncIterator[Agent]:
    agent = Agent(config, transport=transport)
    if agent.store.active("surface-defects") is None:
        install_surface_model(agent.store)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await wait_until_async(lambda: transport.connected, 10)
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def judging(agent: Agent, name: str = "surface") -> None:
    """Wait until the pipeline `name` judged frames since it started."""
    await wait_until_async(
        lambda: any(p.name == name and p.status.frames > 0 for p in agent.pipelines), 20,
        what=lambda: f"{name} judging frames: {[(p.name, p.status) for p in agent.pipelines]}")


async def applied(central: Central, agent: Agent, doc: ConfigDocument) -> None:
    """Deploy `doc` and wait for it to be confirmed."""
    command = deploy(doc)
    await central.send(command)
    outcome = await central.outcome(command.command_id)
    assert outcome.step == "confirmed", outcome
    assert agent.configs.current == doc


def durable_steps(config: AgentConfig, command_id: str) -> list[str]:
    """The steps of a command kept in the buffer for central (whether sent yet or not)."""
    with contextlib.closing(sqlite3.connect(f"file:{config.buffer_path}?mode=ro",
                                            uri=True)) as db:
        rows = db.execute("SELECT payload FROM records WHERE type = ? ORDER BY seq",
                          (RECORD_DEPLOYMENT_EVENT,)).fetchall()
    events = [json.loads(payload) for (payload,) in rows]
    return [e["step"] for e in events if e["command_id"] == command_id]


def play(tmp_path: Path, scenario, **local) -> None:
    """Run `scenario(central, broker, config)` against a memory broker."""
    async def main() -> None:
        broker = MemoryBroker()
        central = Central(MemoryTransport(broker))
        await central.start()
        await scenario(central, broker, local_config(tmp_path, **local))
    asyncio.run(asyncio.wait_for(main(), 90))


@pytest.mark.parametrize("backend", ["memory", "mosquitto"])
def test_signed_configuration_is_applied_watched_and_confirmed(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    local_parts = {"sources": [camera("local-cam")], "pipelines": [vision("local", "local-cam")]}
    if backend == "mosquitto":
        port = request.getfixturevalue("mosquitto").port
        config = local_config(tmp_path, broker={"port": port}, **local_parts)
    else:
        config = local_config(tmp_path, **local_parts)

    async def main() -> None:
        if backend == "mosquitto":
            central = Central(MqttTransport(BrokerConfig(port=config.broker.port), "central"))
            device: Transport = MqttTransport(config.broker, client_id=config.device_id)
        else:
            broker = MemoryBroker()
            central, device = Central(MemoryTransport(broker)), MemoryTransport(broker)
        await central.start()
        async with running(config, device) as agent:
            await judging(agent, "local")
            assert (await agent.status()).config is None, "the local file only, so far"
            doc = document(GOOD)
            command = deploy(doc)
            await central.send(command)
            outcome = await central.outcome(command.command_id)
            assert central.steps(command.command_id) == ["received", "activated", "confirmed"]
            assert outcome.subject == "config" and outcome.model_name == "line-3"
            assert outcome.version == "1" and outcome.detail == "probation passed"
            activated = next(e for e in central.events if e.step == "activated")
            assert activated.detail == "started: surface; stopped: local; sources started: cam1; " \
                "sources stopped: local-cam"
            await judging(agent, "surface")
            assert [p.name for p in agent.pipelines] == ["surface"]
            assert list(agent.sources) == ["cam1"]
            assert agent.effective.pipelines[0].name == "surface"
            assert agent.effective.device_id == config.device_id
            assert (await agent.status()).config == doc.ref
            # Told at once, not at the next status (every 10 s): central sees what runs.
            await wait_until_async(lambda: central.statuses[-1].config == doc.ref, 5)
            folder = config.data_dir / "config"
            assert ConfigDocument.model_validate_json((folder / "current.json").read_text()) \
                == doc
            assert not (folder / "pending.json").exists()
            assert (folder / "versions" / "line-3" / "1.json").exists()
            assert durable_steps(config, command.command_id) == \
                ["received", "activated", "confirmed"]
        await central.transport.stop()

    asyncio.run(asyncio.wait_for(main(), 90))


def test_configuration_that_does_not_validate_fails_and_the_previous_keeps_running(
        tmp_path: Path) -> None:
    async def scenario(central: Central, broker: MemoryBroker, config: AgentConfig) -> None:
        async with running(config, MemoryTransport(broker)) as agent:
            await applied(central, agent, document(GOOD))
            await judging(agent)
            task = agent.workload.task("surface")
            before = (await agent.buffer.health()).depth
            unknown_source = document({**GOOD, "pipelines": [vision("edges", "cam9")]}, 2)
            local_key = document({**GOOD, "broker": {"host": "evil.example"}}, 3)
            for doc, reason in (
                    (unknown_source, "pipeline 'edges' uses source 'cam9', which is not defined "
                                     "(sources: cam1)"),
                    (local_key, "broker: central may not set this; it stays in the gateway's "
                                "own YAML file")):
                command = deploy(doc)
                await central.send(command)
                outcome = await central.outcome(command.command_id)
                assert central.steps(command.command_id) == ["received", "failed"]
                assert reason in outcome.detail and "line-3@1 kept" in outcome.detail
            assert agent.workload.task("surface") is task and not task.done()
            assert (await agent.status()).config == document(GOOD).ref
            assert agent.effective.broker.host == config.broker.host
            assert (await agent.buffer.health()).depth > before, "records still taken, kept"

    play(tmp_path, scenario)


@pytest.mark.parametrize("case", ["missing-video", "unserved-opcua"])
def test_unhealthy_configuration_is_reverted_and_says_why(tmp_path: Path, case: str) -> None:
    if case == "missing-video":
        gone = tmp_path / "gone.mp4"
        unhealthy = {"sources": [camera("cam1", gone)], "pipelines": [vision("surface", "cam1")]}
        reason = f"source cam1 never connected: reconnecting {gone} does not exist"
    else:
        endpoint = f"opc.tcp://127.0.0.1:{free_port()}/line-1"
        unhealthy = {"sources": [{"type": "opcua", "name": "line1", "endpoint": endpoint,
                                  "nodes": {"zone2_temp_c": "ns=2;s=line1.zone2_temp_c"}}],
                     "pipelines": [{"type": "process", "name": "scrap", "source": "line1",
                                    "model": "extruder-scrap"}]}
        reason = "source line1 never connected: reconnecting"

    async def scenario(central: Central, broker: MemoryBroker, config: AgentConfig) -> None:
        async with running(config, MemoryTransport(broker)) as agent:
            await applied(central, agent, document(GOOD))
            command = deploy(document(unhealthy, 2, probation_s=1.5))
            await central.send(command)
            outcome = await central.outcome(command.command_id)
            assert central.steps(command.command_id) == ["received", "activated", "rolled_back"]
            assert outcome.detail.startswith(f"unhealthy within its probation: {reason}")
            assert outcome.detail.endswith("; line-3@1 back")
            assert agent.configs.current == document(GOOD)
            assert (await agent.status()).config == document(GOOD).ref
            await judging(agent)
            assert not (config.data_dir / "config" / "pending.json").exists()

    play(tmp_path, scenario)


def test_unhealthy_first_configuration_goes_back_to_the_gateways_own_file(
        tmp_path: Path) -> None:
    async def scenario(central: Central, broker: MemoryBroker, config: AgentConfig) -> None:
        async with running(config, MemoryTransport(broker)) as agent:
            command = deploy(document({"sources": [camera("cam1", tmp_path / "none.avi")],
                                       "pipelines": [vision()]}))
            await central.send(command)
            outcome = await central.outcome(command.command_id)
            assert outcome.step == "rolled_back"
            assert outcome.detail.endswith("the gateway's own configuration file back")
            await judging(agent, "local")
            assert agent.configs.current is None and (await agent.status()).config is None

    play(tmp_path, scenario, sources=[camera("local-cam")],
         pipelines=[vision("local", "local-cam")])


def test_a_newer_configuration_supersedes_one_on_probation(tmp_path: Path) -> None:
    async def scenario(central: Central, broker: MemoryBroker, config: AgentConfig) -> None:
        async with running(config, MemoryTransport(broker)) as agent:
            await applied(central, agent, document(GOOD))
            slow = deploy(document(SURFACE_ONLY_PITS, 2, probation_s=600))
            await central.send(slow)
            await wait_until_async(lambda: "activated" in central.steps(slow.command_id))
            unhealthy = {"sources": [camera("cam1", tmp_path / "none.avi")],
                         "pipelines": [vision("surface", "cam1")]}
            newer = deploy(document(unhealthy, 3))
            await central.send(newer)
            superseded = await central.outcome(slow.command_id)
            assert superseded.step == "failed"
            assert superseded.detail == "superseded by line-3@3 before its probation ended"
            outcome = await central.outcome(newer.command_id)
            assert outcome.step == "rolled_back"
            assert outcome.detail.endswith("; line-3@1 back"), "the last good, not line-3@2"
            assert agent.configs.current == document(GOOD)
            assert agent.effective.pipelines[0].defects.classes == ["scratch", "pit", "stain"]
            assert not (config.data_dir / "config" / "pending.json").exists()

    play(tmp_path, scenario)


def test_forged_replayed_stale_and_downgrade_commands_change_nothing(tmp_path: Path) -> None:
    intruder = Signer.generate()
    good, newer = document(GOOD), document(SURFACE_ONLY_PITS, 2)

    async def refused(central: Central, agent: Agent, command, reason: str) -> None:
        before = agent.configs.rejected_messages
        await central.send(command)
        outcome = await central.outcome(command.command_id)
        assert outcome.step == "failed" and outcome.detail.startswith("refused: "), outcome
        assert reason in outcome.detail, outcome.detail
        assert agent.configs.rejected_messages == before + 1
        assert agent.configs.current == newer

    async def scenario(central: Central, broker: MemoryBroker, config: AgentConfig) -> None:
        async with running(config, MemoryTransport(broker)) as agent:
            await applied(central, agent, good)
            first = deploy(newer)
            await central.send(first)
            assert (await central.outcome(first.command_id)).step == "confirmed"
            forged = intruder.signed(ConfigDeployCommand(device_id="gw1", document=good))
            await refused(central, agent, forged, f"signed by key {intruder.key_id}")
            altered = deploy(newer.model_copy(update={"probation_s": 0.0, "version": 3}))
            await refused(central, agent, altered, "configuration signature does not match")
            await refused(central, agent, first, "was already carried out (replayed)")
            await refused(central, agent, stale(ConfigDeployCommand, document=document(GOOD, 4)),
                          "command issued 48.0 h ago")
            await refused(central, agent, deploy(good), "line-3@1 is older than line-3@2, "
                          "already applied here; going back needs a signed rollback command")
            await refused(central, agent, stale(ConfigRollbackCommand, name="line-3"),
                          "command issued 48.0 h ago")
            other_body = document({"sources": [camera("cam1")]}, 2)
            await refused(central, agent, deploy(other_body), "line-3@2 was applied here with "
                          "another body")
            # A signed rollback is how to go back.
            back = rollback(to_version=1)
            await central.send(back)
            outcome = await central.outcome(back.command_id)
            assert outcome.step == "rolled_back" and outcome.version == "1"
            assert outcome.detail == "from line-3@2 to line-3@1"
            assert agent.configs.current == good
            assert agent.effective.pipelines[0].defects.classes == ["scratch", "pit", "stain"]
            again = rollback()  # the one before: line-3@2 again
            await central.send(again)
            assert (await central.outcome(again.command_id)).detail == \
                "from line-3@1 to line-3@2"
            missing = rollback(to_version=7)
            await central.send(missing)
            outcome = await central.outcome(missing.command_id)
            assert outcome.step == "failed"
            assert "line-3@7 is not kept here (versions kept: 1, 2)" in outcome.detail

    play(tmp_path, scenario)


def test_restart_during_a_switch_runs_the_last_good_and_reports_the_switch_rolled_back(
        tmp_path: Path) -> None:
    slow = document(SURFACE_ONLY_PITS, 2, probation_s=600)

    async def scenario(central: Central, broker: MemoryBroker, config: AgentConfig) -> None:
        async with running(config, MemoryTransport(broker)) as agent:
            await applied(central, agent, document(GOOD))
            command = deploy(slow)
            await central.send(command)
            await wait_until_async(lambda: "activated" in central.steps(command.command_id))
            assert agent.configs.current == slow
        # The agent went away in the middle of its probation: the switch is still pending.
        pending = config.data_dir / "config" / "pending.json"
        assert json.loads(pending.read_text())["command_id"] == command.command_id
        async with running(config, MemoryTransport(broker)) as again:
            outcome = await central.outcome(command.command_id)
            assert outcome.step == "rolled_back"
            assert outcome.detail == "the agent restarted during the switch; line-3@1 runs"
            assert again.configs.current == document(GOOD)
            assert again.effective.pipelines[0].defects.classes == ["scratch", "pit", "stain"]
            assert (await again.status()).config == document(GOOD).ref
            await judging(again)
            assert not pending.exists()

    play(tmp_path, scenario)


def test_after_a_restart_the_agent_runs_its_last_good_configuration(tmp_path: Path) -> None:
    async def scenario(central: Central, broker: MemoryBroker, config: AgentConfig) -> None:
        async with running(config, MemoryTransport(broker)) as agent:
            await applied(central, agent, document(GOOD))
        events = len(central.events)
        async with running(config, MemoryTransport(broker)) as again:
            assert again.configs.current == document(GOOD)
            assert [p.name for p in again.pipelines] == ["surface"]
            assert (await again.status()).config == document(GOOD).ref
            await judging(again)
        assert len(central.events) == events, "nothing to report"
        # A current.json altered on disk no longer verifies: the gateway's own file runs.
        current = config.data_dir / "config" / "current.json"
        altered = json.loads(current.read_text()) | {"probation_s": 0.0}
        current.write_text(json.dumps(altered))
        async with running(config, MemoryTransport(broker)) as third:
            assert third.configs.current is None
            await judging(third, "local")

    play(tmp_path, scenario, sources=[camera("local-cam")],
         pipelines=[vision("local", "local-cam")])
