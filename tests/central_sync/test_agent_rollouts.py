"""Rollouts of agent releases: refused for a release not published, carried out by central's
rollout engine with each gateway's signed update command, halted and sent back (agent rollback)
when a gateway's new agent does not come up healthy; gateways answer as the agent does."""

from __future__ import annotations

import pytest
from central_helpers import run

from central_sync.config import CentralConfig
from central_sync.db import CentralDB, Rollout
from central_sync.rollouts import RolloutError, start_rollout
from central_sync.service import CentralService
from edge_agent.kernel.contract import (
    AgentPackage,
    AgentRollbackCommand,
    AgentUpdateCommand,
    Command,
    DeploymentEvent,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import TEST_SIGNER, TEST_VERIFIER, wait_until_async

TOPICS = Topics()
VERSION = "1.2.0"


def _release(db: CentralDB) -> AgentPackage:
    package, _ = db.store_agent_package(TEST_SIGNER.signed(AgentPackage(
        version=VERSION, filename=f"edge_mlops-{VERSION}-py3-none-any.whl", sha256="a" * 64,
        size_bytes=1000, chunk_size_bytes=1024, published_by="alice")))
    return package


def _start(db: CentralDB, devices: list[str], **options: object) -> Rollout:
    return start_rollout(db, "edge-agent", VERSION, devices, f"devices {', '.join(devices)}",
                         "alice", kind="agent", signer=TEST_SIGNER,
                         **{"canary": 0, **options})  # type: ignore[arg-type]


def test_an_agent_rollout_needs_a_published_release(db: CentralDB) -> None:
    with pytest.raises(RolloutError, match="is not published"):
        _start(db, ["gw1"])
    _release(db)
    rollout = _start(db, ["gw1"])
    assert (rollout.kind, rollout.what) == ("agent", f"agent release edge-agent@{VERSION}")
    with pytest.raises(RolloutError, match="still running"):
        _start(db, ["gw1"])


class Gateways:
    """Gateways answering agent commands as the agent does; `failing` ones report that the new
    release did not come up healthy."""

    def __init__(self, broker: MemoryBroker, devices: list[str], failing: set[str]) -> None:
        self.broker, self.devices, self.failing = broker, devices, failing
        self.received: list[Command] = []
        self.transports: list[MemoryTransport] = []

    async def start(self) -> None:
        for device in self.devices:
            transport = MemoryTransport(self.broker)
            await transport.start()
            await transport.subscribe(TOPICS.commands(device), self._handler(transport, device))
            self.transports.append(transport)

    async def stop(self) -> None:
        for transport in self.transports:
            await transport.stop()

    def _handler(self, transport: MemoryTransport, device: str):  # type: ignore[no-untyped-def]
        async def handle(_topic: str, payload: bytes) -> None:
            command = decode(payload, expect=(AgentUpdateCommand, AgentRollbackCommand),
                             topic_device_id=device)
            assert isinstance(command, AgentUpdateCommand | AgentRollbackCommand)
            TEST_VERIFIER.verify(command, "command")
            self.received.append(command)
            if isinstance(command, AgentRollbackCommand):
                steps = [("activated", "switched back"), ("rolled_back", "from 1.2.0")]
            elif device in self.failing:
                TEST_VERIFIER.verify(command.package, "agent package")
                steps = [("received", ""), ("activated", ""),
                         ("rolled_back", "release 1.2.0 exited with status 1 before it was "
                          "healthy")]
            else:
                steps = [("received", ""), ("activated", ""), ("confirmed", "online")]
            for step, detail in steps:
                event = DeploymentEvent(device_id=device, command_id=command.command_id,
                                        subject="agent", model_name="edge-agent",
                                        version=VERSION, step=step, detail=detail)
                await transport.publish(TOPICS.deployment(device), encode(event), qos=1)

        return handle

    def sent_to(self, device: str, kind: type) -> list[Command]:
        return [c for c in self.received if c.device_id == device and isinstance(c, kind)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the engine, not SQL
def test_a_wave_whose_new_agent_is_rolled_back_halts_and_sends_the_others_back(
        central_config: CentralConfig) -> None:
    async def main() -> None:
        broker = MemoryBroker()
        service = CentralService(central_config, MemoryTransport(broker))
        gateways = Gateways(broker, ["gw1", "gw2", "gw3"], failing={"gw2"})
        await service.start()
        await gateways.start()
        try:
            db = service.db
            assert db is not None
            _release(db)
            rollout = _start(db, ["gw1", "gw2", "gw3"], waves="50%,100%")  # gw1+gw2, then gw3

            async def ended() -> bool:
                found = await service.db_call(db.get_rollout, rollout.rollout_id)
                return found.state in ("completed", "halted")

            await wait_until_async(ended, 15, what="the rollout to end")
            done = db.get_rollout(rollout.rollout_id)
            assert done.state == "halted", done.detail
            assert "gw2: rolled_back: release 1.2.0 exited with status 1" in done.detail
            await wait_until_async(lambda: gateways.sent_to("gw1", AgentRollbackCommand), 10,
                                   what="gw1, which confirmed, sent back")
            [update] = gateways.sent_to("gw1", AgentUpdateCommand)
            assert update.package.version == VERSION
            assert not gateways.sent_to("gw3", AgentUpdateCommand), "the next wave waits"
            kinds = {(d["kind"], d["model_name"]) for d in db.list_deployments()}
            assert kinds == {("agent", "edge-agent")}
        finally:
            await gateways.stop()
            await service.stop()

    run(main(), timeout_s=30)
