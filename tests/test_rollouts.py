"""Staged rollouts over a real Mosquitto: real agents (four in this process) and a real central.

Each agent is the agent's own `Agent` class (deployer, uplink, status with the labels it
reports); central is `CentralService` with its rollout engine, and the devices' groups come from
their provisioning. Rollouts are started and steered through the same functions the
`central-sync rollout` commands call.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.registry import publish_model
from central_sync.rollouts import (
    RolloutError,
    change_rollout,
    choose_canaries,
    group_devices,
    parse_waves,
    plan_waves,
    start_rollout,
)
from central_sync.service import CentralService
from edge_agent.app import Agent
from edge_agent.config import AgentConfig
from edge_agent.kernel.contract import DeploymentEvent, Topics, encode
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.conftest import Mosquitto
from tests.helpers import (
    SAMPLE_METADATA,
    SAMPLE_MODEL,
    TEST_SIGNER,
    wait_until_async,
    write_test_keys,
)

MODEL = "extruder-scrap"
DEVICES = ["gw1", "gw2", "gw3", "gw4"]


def metadata(**extra: object) -> dict:
    return {**json.loads(SAMPLE_METADATA.read_text()), "probation": {"duration_s": 0}, **extra}


@dataclass
class Fleet:
    tmp: Path
    config: CentralConfig
    central: CentralService | None
    agents: dict[str, tuple[Agent, asyncio.Event, asyncio.Task[None]]]

    @property
    def db(self) -> CentralDB:
        assert self.central is not None and self.central.db is not None
        return self.central.db

    async def start_central(self) -> None:
        self.central = CentralService(self.config, MqttTransport(self.config.broker, "central"))
        await self.central.start()

    async def stop_central(self) -> None:
        assert self.central is not None
        await self.central.stop()
        self.central = None

    def start_agent(self, device_id: str, reports: tuple[str, ...] = ("line-3",)) -> None:
        _, public = write_test_keys(self.tmp / "keys")
        config = AgentConfig.model_validate({
            "device_id": device_id, "data_dir": str(self.tmp / device_id),
            "labels": list(reports), "broker": {"port": self.config.broker.port},
            "ui": {"port": 0}, "security": {"central_public_key": str(public)},
            "status_interval_s": 0.5})
        agent = Agent(config)
        stop = asyncio.Event()
        self.agents[device_id] = (agent, stop, asyncio.create_task(agent.run(stop)))

    async def stop_agents(self) -> None:
        for _, stop, task in self.agents.values():
            stop.set()
            await task

    def online(self) -> set[str]:
        now = time.time()
        return {d.device_id for d in self.db.list_devices()
                if d.presence(now, self.config.offline_after_s) == "online"}

    def active(self, device_id: str) -> str | None:
        installed = self.agents[device_id][0].store.active(MODEL)
        return installed.manifest.version if installed else None

    async def publish(self, version: str, meta: dict) -> None:
        await asyncio.to_thread(publish_model, self.db, self.config.artifact_dir, SAMPLE_MODEL,
                                MODEL, version, metadata=meta, chunk_size_bytes=16 * 1024,
                                signer=TEST_SIGNER)

    async def roll_out(self, version: str, devices: list[str], **options: object) -> str:
        rollout = start_rollout(self.db, MODEL, version, devices, "group line-3", "test",
                                approval_required=False, **options)  # type: ignore[arg-type]
        return rollout.rollout_id

    async def ended(self, rollout_id: str, timeout_s: float = 60) -> str:
        done = ("completed", "halted", "aborted", "rolled_back")
        await wait_until_async(lambda: self.db.get_rollout(rollout_id).state in done, timeout_s,
                               what=f"rollout {rollout_id} to end")
        rollout = self.db.get_rollout(rollout_id)
        assert rollout is not None
        return rollout.state


async def start_fleet(tmp: Path, mosquitto: Mosquitto, devices: list[str] = DEVICES) -> Fleet:
    config = CentralConfig(database_url=f"sqlite:///{tmp / 'central.db'}",
                           artifact_dir=tmp / "artifacts", web={"port": 0},
                           models={"require_approval": False},
                           broker=BrokerConfig(port=mosquitto.port),
                           signing_key_path=write_test_keys(tmp / "keys")[0])
    fleet = Fleet(tmp, config, None, {})
    await fleet.start_central()
    for device in devices:  # as `central-sync device add ID --labels line-3` does
        fleet.db.add_broker_account(device, "device", ["line-3"], "unused", by="test")
        fleet.start_agent(device)
    await wait_until_async(lambda: fleet.online() >= set(devices), 20,
                           what="every agent online")
    await fleet.publish("1.0.0", metadata())
    first = await fleet.roll_out("1.0.0", devices, canary=0)
    assert await fleet.ended(first) == "completed"
    return fleet


async def stop_fleet(fleet: Fleet) -> None:
    await fleet.stop_agents()
    if fleet.central is not None:
        await fleet.stop_central()


def run_fleet(tmp: Path, mosquitto: Mosquitto, scenario, devices: list[str] = DEVICES) -> None:
    async def main() -> None:
        fleet = await start_fleet(tmp, mosquitto, devices)
        try:
            await scenario(fleet)
        finally:
            await stop_fleet(fleet)

    asyncio.run(asyncio.wait_for(main(), 120))


def test_waves_are_planned_from_canary_and_cumulative_shares() -> None:
    devices = [f"gw{i:02d}" for i in range(20)]
    plan = plan_waves(devices, ["gw07"], parse_waves("25%,100%"))
    assert [len(w) for w in plan] == [1, 4, 15]
    assert plan[0] == ["gw07"] and plan[1] == ["gw00", "gw01", "gw02", "gw03"]
    assert sorted(d for w in plan for d in w) == devices
    assert [len(w) for w in plan_waves(devices[:3], [], [1.0])] == [3]
    with pytest.raises(RolloutError, match="canary gw99 is not one of the rollout's devices"):
        plan_waves(devices, ["gw99"], [1.0])
    with pytest.raises(RolloutError, match="must grow and end at 100%"):
        parse_waves("50%,25%")
    with pytest.raises(RolloutError, match="not a share"):
        parse_waves("half")


def test_canary_is_drawn_among_healthy_devices_not_by_name() -> None:
    devices = ["gw1", "gw2", "gw3", "gw4"]
    healthy = ["gw3", "gw4"]  # gw1 offline, gw2 with a failed source
    drawn = {choose_canaries(devices, healthy, 1, random.Random(seed))[0] for seed in range(20)}
    assert drawn == {"gw3", "gw4"}, "only healthy devices, and not always the first by name"
    assert sorted(choose_canaries(devices, healthy, 2, random.Random(0))) == ["gw3", "gw4"]
    with pytest.raises(RolloutError, match=r"needs 3 healthy device.*--canary-device"):
        choose_canaries(devices, healthy, 3, random.Random(0))


def test_a_device_reporting_another_line_s_label_is_not_in_its_rollout_nor_its_canary(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario(fleet: Fleet) -> None:
        # gw0 has valid credentials, was provisioned without labels, and says it is on line 3;
        # by name it would come first.
        fleet.db.add_broker_account("gw0", "device", [], "unused", by="test")
        fleet.start_agent("gw0", reports=("line-3",))
        await wait_until_async(lambda: "gw0" in fleet.online(), 20, what="gw0 online")
        assert fleet.db.devices_labelled("line-3") == DEVICES
        group = group_devices(fleet.db, ["line-3"])
        assert group == DEVICES
        await fleet.publish("1.1.0", metadata())
        rollout = start_rollout(fleet.db, MODEL, "1.1.0", group, "group line-3", "test",
                                canary=1, waves="100%", approval_required=False)
        devices = fleet.db.rollout_devices(rollout.rollout_id)
        assert "gw0" not in {d.device_id for d in devices}
        assert await fleet.ended(rollout.rollout_id) == "completed"
        assert fleet.active("gw0") is None and all(fleet.active(d) == "1.1.0" for d in DEVICES)
        assert not [d for d in fleet.db.list_deployments("gw0")]

    run_fleet(tmp_path, mosquitto, scenario)


def test_a_deployment_step_sent_by_gw2_for_gw1_s_command_is_refused(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario(fleet: Fleet) -> None:
        await fleet.publish("1.1.0", metadata())
        rollout_id = await fleet.roll_out("1.1.0", ["gw1"], canary=0)
        assert await fleet.ended(rollout_id) == "completed"
        [device] = fleet.db.rollout_devices(rollout_id)
        assert device.command_id is not None
        forged = DeploymentEvent(device_id="gw2", command_id=device.command_id,
                                 model_name=MODEL, version="1.1.0", step="failed",
                                 detail="forged by gw2", at=time.time() + 3600)
        gw2 = MqttTransport(fleet.config.broker, "gw2-forger")
        await gw2.start()
        assert await gw2.wait_connected(10)
        try:  # on gw2's own topic, which its ACL allows
            await gw2.publish(Topics().deployment("gw2"), encode(forged))
        finally:
            await gw2.stop()
        assert fleet.central is not None
        stats = fleet.central.stats
        await wait_until_async(
            lambda: stats.rejected["deployment"] >= 1 or any(
                e["detail"] == "forged by gw2" for e in fleet.db.deployment_events(
                    device.command_id)), 20, what="central to handle the forged step")
        assert "issued to gw1" in stats.last_rejection
        assert fleet.db.get_deployment(device.command_id)["state"] == "confirmed"
        assert "forged by gw2" not in {e["detail"] for e in fleet.db.deployment_events(
            device.command_id)}
        assert fleet.db.get_rollout(rollout_id).state == "completed"

    run_fleet(tmp_path, mosquitto, scenario, devices=["gw1", "gw2"])


def test_rollout_goes_canary_then_waves_and_completes(tmp_path: Path,
                                                      mosquitto: Mosquitto) -> None:
    async def scenario(fleet: Fleet) -> None:
        await fleet.publish("1.1.0", metadata())
        rollout_id = await fleet.roll_out("1.1.0", DEVICES, canary=1, waves="50%,100%")
        assert await fleet.ended(rollout_id) == "completed"
        assert all(fleet.active(d) == "1.1.0" for d in DEVICES)
        devices = fleet.db.rollout_devices(rollout_id)
        assert [d.wave for d in devices] == [0, 1, 2, 2]
        assert {d.state for d in devices} == {"succeeded"}
        actions = [a["action"] for a in fleet.db.list_audit()]
        assert {"rollout.start", "rollout.completed", "model.deploy"} <= set(actions)

    run_fleet(tmp_path, mosquitto, scenario)


def test_failed_canary_halts_the_rollout_before_other_devices(tmp_path: Path,
                                                              mosquitto: Mosquitto) -> None:
    async def scenario(fleet: Fleet) -> None:
        await fleet.publish("1.1.0", metadata(latency_budget_ms=0.0001))  # too slow anywhere
        rollout_id = await fleet.roll_out("1.1.0", DEVICES, canary_devices=["gw1"],
                                          waves="100%")
        assert await fleet.ended(rollout_id) == "halted"
        rollout = fleet.db.get_rollout(rollout_id)
        assert "wave 1 of 2 (canary) failed" in rollout.detail
        assert "over the budget" in rollout.detail
        devices = {d.device_id: d.state for d in fleet.db.rollout_devices(rollout_id)}
        assert devices == {"gw1": "failed", "gw2": "pending", "gw3": "pending", "gw4": "pending"}
        assert all(fleet.active(d) == "1.0.0" for d in DEVICES)
        assert "rollout.halted" in {a["action"] for a in fleet.db.list_audit()}

    run_fleet(tmp_path, mosquitto, scenario)


def test_wave_that_times_out_is_halted_and_rolled_back(tmp_path: Path,
                                                       mosquitto: Mosquitto) -> None:
    async def scenario(fleet: Fleet) -> None:
        await fleet.publish("1.1.0", metadata())
        _, stop, task = fleet.agents["gw4"]
        stop.set()  # gw4 goes dark: its wave cannot pass
        await task
        rollout_id = await fleet.roll_out("1.1.0", DEVICES, canary_devices=["gw1"],
                                          waves="50%,100%", wave_timeout_s=4)
        assert await fleet.ended(rollout_id) == "halted"
        assert "wave 3 of 3 timed out" in fleet.db.get_rollout(rollout_id).detail
        await wait_until_async(lambda: fleet.active("gw3") == "1.0.0", 20, what="gw3 rolled back")

        def states() -> dict[str, str]:
            return {d.device_id: d.state for d in fleet.db.rollout_devices(rollout_id)}

        # The engine records the rollback once the command is out; the device may be faster.
        await wait_until_async(lambda: states()["gw3"] == "rolled_back", 10,
                               what="gw3 marked rolled back")
        assert states() == {"gw1": "succeeded", "gw2": "succeeded", "gw3": "rolled_back",
                            "gw4": "sent"}
        assert [fleet.active(d) for d in ("gw1", "gw2")] == ["1.1.0", "1.1.0"]

    run_fleet(tmp_path, mosquitto, scenario)


def test_paused_rollout_survives_a_central_restart_then_resumes_and_rolls_back(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def scenario(fleet: Fleet) -> None:
        await fleet.publish("1.1.0", metadata())
        await fleet.stop_central()
        db = CentralDB(fleet.config.database_url)
        rollout = start_rollout(db, MODEL, "1.1.0", ["gw1", "gw2"], "devices gw1, gw2", "ann",
                                canary=1, approval_required=False)
        change_rollout(db, rollout.rollout_id, "pause", "ann")
        db.close()
        await fleet.start_central()
        await wait_until_async(lambda: fleet.central and fleet.central.rollouts
                               and fleet.central.rollouts.leading, 20,
                               what="the restarted central leading the rollouts")
        await asyncio.sleep(1.5)  # what is checked is that nothing happens: a few engine steps
        assert fleet.db.get_rollout(rollout.rollout_id).state == "paused"
        assert {d.state for d in fleet.db.rollout_devices(rollout.rollout_id)} == {"pending"}
        change_rollout(fleet.db, rollout.rollout_id, "resume", "ann")
        assert await fleet.ended(rollout.rollout_id) == "completed"
        assert [fleet.active(d) for d in DEVICES] == ["1.1.0", "1.1.0", "1.0.0", "1.0.0"]
        change_rollout(fleet.db, rollout.rollout_id, "rollback", "bob")
        assert await fleet.ended(rollout.rollout_id) == "rolled_back"
        await wait_until_async(lambda: fleet.active("gw1") == fleet.active("gw2") == "1.0.0", 20,
                               what="gw1 and gw2 back on 1.0.0")
        audit = [(a["actor"], a["action"]) for a in fleet.db.list_audit()]
        assert {("ann", "rollout.paused"), ("ann", "rollout.running"),
                ("bob", "rollout.rolling_back")} <= set(audit)

    run_fleet(tmp_path, mosquitto, scenario)
