"""Agent update and rollback commands over an in-memory broker: a real release wheel fetched in
chunks, installed and put on trial; forged, stale, replayed and downgrading commands refused;
the trial settled at the next start."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_agent.buffer import Buffer
from edge_agent.deployment.transfer import ArtifactFetcher
from edge_agent.kernel.contract import (
    AgentRollbackCommand,
    AgentUpdateCommand,
    ArtifactChunk,
    ChunkRequest,
    DeploymentEvent,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.signing import Signer
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.model_store import ModelStore
from edge_agent.updates.layout import (
    EXIT_RESTART,
    EXIT_UNHEALTHY,
    INSTALLED_MARKER,
    FailedTrial,
    ReleaseLayout,
    Trial,
)
from edge_agent.updates.updater import AgentUpdater
from tests.agent_wheels import GOOD_VERSION, AgentWheels
from tests.edge_agent.updates.helpers import package_for
from tests.helpers import TEST_SIGNER, TEST_VERIFIER, wait_until_async

TOPICS = Topics()
RUNNING = "0.1.0"


@dataclass
class Gateway:
    updater: AgentUpdater
    layout: ReleaseLayout
    buffer: Buffer
    events: list[DeploymentEvent]
    exits: list[int] = field(default_factory=list)
    healthy: list[bool] = field(default_factory=lambda: [False])

    def steps(self) -> list[str]:
        return [event.step for event in self.events]


async def gateway(tmp_path: Path, wheel: Path | None = None, version: str = RUNNING) -> Gateway:
    """An updater as the agent wires it, and central's side: serving `wheel` in chunks."""
    broker = MemoryBroker()
    central = MemoryTransport(broker)
    await central.start()
    events: list[DeploymentEvent] = []

    async def on_event(_topic: str, payload: bytes) -> None:
        events.append(decode(payload))  # type: ignore[arg-type]

    async def on_request(_topic: str, payload: bytes) -> None:
        request = decode(payload, expect=(ChunkRequest,))
        assert isinstance(request, ChunkRequest) and wheel is not None
        data, size = wheel.read_bytes(), 64 * 1024
        for index in request.indices:
            chunk = ArtifactChunk.build(request.sha256, index, -(-len(data) // size),
                                        data[index * size:(index + 1) * size])
            await central.publish(TOPICS.artifact(request.sha256), encode(chunk))

    await central.subscribe(TOPICS.all_devices("deployment"), on_event)
    await central.subscribe(TOPICS.all_devices("chunk-request"), on_request)
    device = MemoryTransport(broker)
    await device.start()
    buffer = Buffer(tmp_path / "buffer.db", 10**7)
    layout = ReleaseLayout(tmp_path)
    fetcher = ArtifactFetcher("gw1", TOPICS, device, ModelStore(tmp_path / "models"), lambda: None)
    exits: list[int] = []
    healthy = [False]
    updater = AgentUpdater("gw1", TOPICS, device, buffer, fetcher, TEST_VERIFIER, layout,
                           lambda code, _reason: exits.append(code), lambda: healthy[-1],
                           version=version)
    return Gateway(updater, layout, buffer, events, exits, healthy)


def update(package_wheel: Path, signer: Signer = TEST_SIGNER, **fields: object,
           ) -> AgentUpdateCommand:
    return signer.signed(AgentUpdateCommand(device_id="gw1", package=package_for(package_wheel),
                                            **fields))  # type: ignore[arg-type]


def test_an_update_is_fetched_installed_put_on_trial_and_switched_to(
        tmp_path: Path, agent_wheels: AgentWheels) -> None:
    async def scenario() -> None:
        g = await gateway(tmp_path, agent_wheels.good)
        command = update(agent_wheels.good, healthy_within_s=45)
        await g.updater.handle(command)
        await wait_until_async(lambda: g.exits, 60, what="the agent asked to restart")
        assert g.exits == [EXIT_RESTART]
        steps = g.steps()
        assert steps[0] == "received" and steps[-1] == "activated", steps
        assert {"downloading", "verifying", "installed"} <= set(steps)
        assert all(e.subject == "agent" and e.model_name == "edge-agent"
                   and e.version == GOOD_VERSION for e in g.events)
        assert g.layout.target(g.layout.current) == g.layout.release(GOOD_VERSION)
        assert g.layout.target(g.layout.previous) is None  # the base install runs now
        trial = g.layout.read_trial()
        assert trial is not None and trial.version == GOOD_VERSION
        assert trial.previous == RUNNING and trial.healthy_within_s == 45
        assert trial.command_id == command.command_id
        durable = [json.loads(r.payload_json)["step"] for r in await g.buffer.next_batch(100)]
        assert durable[-1] == "activated" and "downloading" not in durable
        assert not list(g.layout.downloads.glob("*.part")), "the download is not kept"
        await g.buffer.close()

    asyncio.run(scenario())


def refused(tmp_path: Path, command: AgentUpdateCommand | AgentRollbackCommand,
            version: str = RUNNING) -> str:
    async def scenario() -> str:
        g = await gateway(tmp_path, version=version)
        await g.updater.handle(command)
        await wait_until_async(lambda: g.events, 5, what="the refusal reported")
        assert g.steps() == ["failed"] and g.updater.rejected_messages == 1
        assert not g.exits and g.layout.read_trial() is None
        assert not g.layout.releases.exists() or not any(g.layout.releases.iterdir())
        await g.buffer.close()
        return g.events[0].detail

    return asyncio.run(scenario())


def test_a_command_not_signed_by_central_is_refused(
        tmp_path: Path, agent_wheels: AgentWheels) -> None:
    assert "key" in refused(tmp_path, update(agent_wheels.good, signer=Signer.generate()))


def test_a_package_not_signed_by_central_is_refused_even_in_a_signed_command(
        tmp_path: Path, agent_wheels: AgentWheels) -> None:
    forged = Signer.generate().signed(package_for(agent_wheels.good))
    command = TEST_SIGNER.signed(AgentUpdateCommand(device_id="gw1", package=forged))
    assert "agent package" in refused(tmp_path, command)


def test_a_stale_command_is_refused(tmp_path: Path, agent_wheels: AgentWheels) -> None:
    stale = update(agent_wheels.good, issued_at=time.time() - 3 * 24 * 3600)
    assert "h ago" in refused(tmp_path, stale)


def test_an_older_release_needs_a_rollback_command(
        tmp_path: Path, agent_wheels: AgentWheels) -> None:
    detail = refused(tmp_path, update(agent_wheels.good), version="0.2.0")
    assert "older than 0.2.0" in detail and "agent rollback" in detail


def test_another_devices_command_and_a_rollback_with_nowhere_to_go_are_refused(
        tmp_path: Path, agent_wheels: AgentWheels) -> None:
    other = TEST_SIGNER.signed(AgentUpdateCommand(device_id="gw2",
                                                  package=package_for(agent_wheels.good)))
    assert "gw2" in refused(tmp_path / "a", other)
    rollback = TEST_SIGNER.signed(AgentRollbackCommand(device_id="gw1"))
    assert "no previous release" in refused(tmp_path / "b", rollback)


def test_a_replayed_command_is_ignored(tmp_path: Path, agent_wheels: AgentWheels) -> None:
    async def scenario() -> None:
        g = await gateway(tmp_path, version=GOOD_VERSION)
        command = update(agent_wheels.good)
        await g.updater.handle(command)  # this release already runs: nothing to do
        await wait_until_async(lambda: g.events, 5, what="the answer")
        assert g.steps() == ["confirmed"] and "already running" in g.events[0].detail
        await g.updater.handle(command)
        await asyncio.sleep(0.1)
        assert g.steps() == ["confirmed"] and g.updater.rejected_messages == 1
        await g.buffer.close()

    asyncio.run(scenario())


def test_a_trial_of_this_release_is_confirmed_once_it_is_healthy(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = await gateway(tmp_path, version=GOOD_VERSION)
        g.layout.write_trial(Trial(version=GOOD_VERSION, previous=RUNNING, command_id="c-1",
                                   healthy_within_s=10))
        await g.updater.start()
        await asyncio.sleep(0.3)
        assert g.events == [] and g.layout.read_trial() is not None
        g.healthy.append(True)
        await wait_until_async(lambda: g.events, 5, what="the confirmation")
        assert g.steps() == ["confirmed"] and g.events[0].command_id == "c-1"
        assert g.layout.read_trial() is None and not g.exits
        await g.updater.stop()
        await g.buffer.close()

    asyncio.run(scenario())


def test_a_trial_not_healthy_in_time_makes_the_agent_exit_76(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = await gateway(tmp_path, version=GOOD_VERSION)
        g.layout.write_trial(Trial(version=GOOD_VERSION, previous=RUNNING, command_id="c-1",
                                   healthy_within_s=0.3))
        await g.updater.start()
        await wait_until_async(lambda: g.exits, 5, what="the agent asked to exit")
        assert g.exits == [EXIT_UNHEALTHY] and g.events == []
        assert g.layout.read_trial() is not None, "the launcher settles it"
        await g.buffer.close()

    asyncio.run(scenario())


def test_the_agent_brought_back_reports_the_failed_trial_with_its_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = await gateway(tmp_path)
        trial = Trial(version=GOOD_VERSION, previous=RUNNING, command_id="c-1",
                      healthy_within_s=10)
        g.layout.write_failed_trial(FailedTrial(trial=trial, exit_code=1,
                                                reason="release 0.1.1 exited with status 1"))
        await g.updater.start()
        assert g.steps() == ["rolled_back"] and g.events[0].version == GOOD_VERSION
        assert "exited with status 1" in g.events[0].detail
        assert f"{RUNNING} serving again" in g.events[0].detail
        assert g.layout.read_failed_trial() is None
        durable = await g.buffer.next_batch(10)
        assert json.loads(durable[0].payload_json)["step"] == "rolled_back"
        await g.buffer.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("previous", ["0.0.9", None])
def test_a_rollback_puts_the_previous_release_on_trial_and_it_confirms_as_rolled_back(
        tmp_path: Path, previous: str | None) -> None:
    async def scenario() -> None:
        g = await gateway(tmp_path, version=GOOD_VERSION)
        g.layout.write_base(RUNNING)
        current = g.layout.release(GOOD_VERSION)
        for release in (current, *([g.layout.release(previous)] if previous else [])):
            (release / "bin").mkdir(parents=True)
            (release / "bin" / "python").write_text("")
            (release / INSTALLED_MARKER).write_text("{}")
        g.layout.activate(current, g.layout.release(previous) if previous else None)
        command = TEST_SIGNER.signed(AgentRollbackCommand(device_id="gw1"))
        await g.updater.handle(command)
        await wait_until_async(lambda: g.exits, 5, what="the agent asked to restart")
        back = previous or RUNNING
        assert g.steps() == ["activated"] and g.events[0].version == back
        expected = g.layout.release(previous) if previous else None
        assert g.layout.target(g.layout.current) == expected
        trial = g.layout.read_trial()
        assert trial is not None and trial.action == "rollback" and trial.version == back
        # The release gone back to, at its start:
        restarted = await gateway(tmp_path / "next", version=back)
        restarted.updater.layout = g.layout
        restarted.healthy.append(True)
        await restarted.updater.start()
        await wait_until_async(lambda: restarted.events, 5, what="the rollback confirmed")
        assert restarted.steps() == ["rolled_back"]
        assert f"from {GOOD_VERSION}" in restarted.events[0].detail
        await g.buffer.close()
        await restarted.buffer.close()

    asyncio.run(scenario())


def test_only_the_current_and_previous_releases_are_kept_once_a_trial_is_settled(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        g = await gateway(tmp_path, version=GOOD_VERSION)
        for version in ("0.0.7", "0.0.8", "0.0.9", GOOD_VERSION):
            (g.layout.release(version) / "bin").mkdir(parents=True)
            (g.layout.release(version) / "bin" / "python").write_text("")
        g.layout.activate(g.layout.release(GOOD_VERSION), g.layout.release("0.0.9"))
        g.layout.write_trial(Trial(version=GOOD_VERSION, previous="0.0.9", command_id="c-1",
                                   healthy_within_s=10))
        g.healthy.append(True)
        await g.updater.start()
        await wait_until_async(lambda: g.events, 5, what="the confirmation")
        assert sorted(p.name for p in g.layout.releases.iterdir()) == ["0.0.9", GOOD_VERSION]
        await g.buffer.close()

    asyncio.run(scenario())
