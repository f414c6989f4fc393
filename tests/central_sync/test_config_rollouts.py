"""Rollouts of configurations: started from the registry (no approval, but the version must
exist), carried out by central's rollout engine with each gateway's signed configuration
command, halted and sent back when a wave fails; gateways answer as the agent does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from central_helpers import make_onnx_model, run
from config_helpers import line_body

from central_sync.config import CentralConfig
from central_sync.configs import publish_config
from central_sync.db import CentralDB, Rollout
from central_sync.registry import publish_model
from central_sync.rollouts import RolloutError, start_rollout
from central_sync.service import CentralService
from edge_agent.kernel.contract import (
    Command,
    ConfigDeployCommand,
    ConfigRollbackCommand,
    DeploymentEvent,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import TEST_SIGNER, TEST_VERIFIER, wait_until_async

TOPICS = Topics()
Answer = Callable[[str, ConfigDeployCommand], list[tuple[str, str]]]


def _start(db: CentralDB, devices: list[str], name: str = "line-3", version: str = "1",
           **options: object) -> Rollout:
    return start_rollout(db, name, version, devices, f"devices {', '.join(devices)}", "alice",
                         kind="config", **{"canary": 0, **options})  # type: ignore[arg-type]


def test_a_config_rollout_needs_the_version_and_no_approval(db: CentralDB) -> None:
    with pytest.raises(RolloutError, match=r"line-3@1 is not in the registry .*no "
                                           "configuration is named line-3"):
        _start(db, ["gw1"])
    publish_config(db, TEST_SIGNER, "line-3", line_body(5), "alice")
    rollout = _start(db, ["gw1"], signer=TEST_SIGNER)  # approval_required is on by default
    assert (rollout.kind, rollout.what) == ("config", "configuration line-3@1")
    assert db.get_rollout(rollout.rollout_id) == rollout
    with pytest.raises(RolloutError, match="not a number"):
        _start(db, ["gw2"], version="1.0.0")


def test_one_config_rollout_per_name_and_per_gateway_beside_model_rollouts(
        db: CentralDB, tmp_path: Path) -> None:
    publish_config(db, TEST_SIGNER, "line-3", line_body(5), "alice")
    publish_config(db, TEST_SIGNER, "line-3-night", line_body(9), "alice")
    first = _start(db, ["gw1", "gw2"])
    with pytest.raises(RolloutError, match=f"rollout {first.rollout_id} of configuration "
                                           "line-3@1 is still running; abort it first"):
        _start(db, ["gw3"])
    with pytest.raises(RolloutError, match="is still running on gw2; abort it first"):
        _start(db, ["gw2", "gw3"], name="line-3-night")
    assert _start(db, ["gw3"], name="line-3-night").state == "running"
    publish_model(db, tmp_path / "artifacts", make_onnx_model(tmp_path / "m.onnx"), "line-3",
                  "1.0.0", signer=TEST_SIGNER)
    model = start_rollout(db, "line-3", "1.0.0", ["gw1"], "devices gw1", "alice", canary=0,
                          approval_required=False)
    assert model.kind == "model", "a model rollout runs beside the gateway's config rollout"
    db.update_rollout(first.rollout_id, "alice", "aborted", "abort by alice")
    assert _start(db, ["gw2"]).state == "running"


class FakeGateways:
    """Gateways on the memory broker answering configuration commands as the agent does:
    `answer(device, command)` gives the steps (step, detail) each deploy command gets; a
    rollback is confirmed."""

    def __init__(self, broker: MemoryBroker, devices: list[str], answer: Answer) -> None:
        self.broker, self.devices, self.answer = broker, devices, answer
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

    def _handler(self, transport: MemoryTransport, device: str):
        async def handle(_topic: str, payload: bytes) -> None:
            command = decode(payload, expect=(ConfigDeployCommand, ConfigRollbackCommand),
                             topic_device_id=device)
            assert isinstance(command, ConfigDeployCommand | ConfigRollbackCommand)
            TEST_VERIFIER.verify(command, "command")
            self.received.append(command)
            if isinstance(command, ConfigDeployCommand):
                TEST_VERIFIER.verify(command.document, "configuration")
                name, version = command.document.name, str(command.document.version)
                steps = self.answer(device, command)
            else:
                name, version = command.name, "1"  # as the agent answers a rollback
                steps = [("rolled_back", "from line-3@1 to the gateway's own file")]
            for step, detail in steps:
                event = DeploymentEvent(device_id=device, command_id=command.command_id,
                                        subject="config", model_name=name, version=version,
                                        step=step, detail=detail)
                await transport.publish(TOPICS.deployment(device), encode(event), qos=1)

        return handle

    def sent_to(self, device: str, kind: type) -> list[Command]:
        return [c for c in self.received if c.device_id == device and isinstance(c, kind)]


def _confirm(device: str, command: ConfigDeployCommand) -> list[tuple[str, str]]:
    return [("received", ""), ("activated", "switched"), ("confirmed", "probation passed")]


def _fleet(config: CentralConfig, devices: list[str], answer: Answer,
           scenario: Callable[[CentralService, FakeGateways], object]) -> None:
    async def main() -> None:
        broker = MemoryBroker()
        service = CentralService(config, MemoryTransport(broker))
        gateways = FakeGateways(broker, devices, answer)
        await service.start()
        await gateways.start()
        try:
            await scenario(service, gateways)  # type: ignore[misc]
        finally:
            await gateways.stop()
            await service.stop()

    run(main(), timeout_s=30)


async def _ended(service: CentralService, rollout_id: str) -> Rollout:
    assert service.db is not None
    db = service.db

    async def ended() -> bool:
        rollout = await service.db_call(db.get_rollout, rollout_id)
        return rollout.state in ("completed", "halted")

    await wait_until_async(ended, 15, what=f"rollout {rollout_id} to end")
    return db.get_rollout(rollout_id)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the engine, not SQL
def test_a_config_rollout_goes_wave_by_wave_to_completion(central_config: CentralConfig) -> None:
    async def scenario(service: CentralService, gateways: FakeGateways) -> None:
        db = service.db
        assert db is not None
        publish_config(db, TEST_SIGNER, "line-3", line_body(5), "alice")
        rollout = _start(db, ["gw1", "gw2"], canary_devices=["gw1"])
        done = await _ended(service, rollout.rollout_id)
        assert done.state == "completed", done.detail
        assert "configuration line-3@1 confirmed on 2 device(s)" in done.detail
        first, second = (gateways.sent_to(d, ConfigDeployCommand)[0] for d in ("gw1", "gw2"))
        assert first.issued_at <= second.issued_at, "the canary goes first"
        deployments = {d["device_id"]: d for d in db.list_deployments()}
        assert {d: (row["kind"], row["state"]) for d, row in deployments.items()} == {
            "gw1": ("config", "confirmed"), "gw2": ("config", "confirmed")}
        assert not gateways.sent_to("gw1", ConfigRollbackCommand)

    _fleet(central_config, ["gw1", "gw2"], _confirm, scenario)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_wave_that_rolls_back_halts_and_sends_its_successes_back(
        central_config: CentralConfig) -> None:
    def answer(device: str, command: ConfigDeployCommand) -> list[tuple[str, str]]:
        if device == "gw2":
            return [("received", ""), ("activated", ""),
                    ("rolled_back", "pipeline scrap produced only errors in probation")]
        return _confirm(device, command)

    async def scenario(service: CentralService, gateways: FakeGateways) -> None:
        db = service.db
        assert db is not None
        publish_config(db, TEST_SIGNER, "line-3", line_body(5), "alice")
        rollout = _start(db, ["gw1", "gw2", "gw3"], waves="50%,100%")  # gw1+gw2, then gw3
        done = await _ended(service, rollout.rollout_id)
        assert done.state == "halted"
        assert "gw2: rolled_back: pipeline scrap produced only errors" in done.detail
        await wait_until_async(lambda: gateways.sent_to("gw1", ConfigRollbackCommand), 10,
                               what="gw1, which confirmed, sent back")
        [back] = gateways.sent_to("gw1", ConfigRollbackCommand)
        assert (back.name, back.to_version) == ("line-3", None)
        assert not gateways.sent_to("gw3", ConfigDeployCommand), "the next wave never started"
        rollbacks = [d for d in db.list_deployments("gw1") if d["version"] == "previous"]
        assert [(d["kind"], d["model_name"]) for d in rollbacks] == [("config", "line-3")]
        await wait_until_async(
            lambda: db.get_deployment(back.command_id)["state"] == "rolled_back", 10,
            what="gw1's rollback step accepted")

    _fleet(central_config, ["gw1", "gw2", "gw3"], answer, scenario)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_version_altered_in_the_database_halts_the_rollout_unsent(
        central_config: CentralConfig) -> None:
    async def scenario(service: CentralService, gateways: FakeGateways) -> None:
        db = service.db
        assert db is not None
        published = publish_config(db, TEST_SIGNER, "line-3", line_body(5), "alice")
        forged = published.model_copy(update={"notes": "altered"})
        db._db.execute("DROP TRIGGER configs_are_immutable")  # someone with the database
        db._db.execute("UPDATE configs SET document = ?", (forged.model_dump_json(),))
        rollout = _start(db, ["gw1"])  # without central's signer: checked when sent
        done = await _ended(service, rollout.rollout_id)
        assert done.state == "halted" and "cannot be vouched for" in done.detail
        assert gateways.received == []
        assert db.list_deployments() == []

    _fleet(central_config, ["gw1"], _confirm, scenario)
