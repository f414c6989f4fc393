"""Forged and stale commands over a real Mosquitto change nothing on the gateway: a deployment
under way and a version on probation go on as if they had not come, and each is refused with
its reason on the deployment topic. The gateway verifies first and acts after."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.deployment import transfer
from edge_agent.kernel.contract import DeployCommand, RollbackCommand
from edge_agent.kernel.signing import Signer
from edge_agent.sources.opcua import TagValue
from tests.conftest import Mosquitto
from tests.helpers import SAMPLE_MODEL, TEST_SIGNER, manifest_for, wait_until_async
from tests.test_bad_updates import (
    DEVICE,
    FEATURES,
    MODEL,
    NO_PROBATION,
    TYPICAL,
    Plant,
    chunks_of,
    command_for,
    metadata,
    nan_model,
    with_plant,
)

TWO_DAYS_S = 2 * 24 * 3600.0


def forgeries() -> list[tuple[DeployCommand | RollbackCommand, str]]:
    """Well-formed commands that would supersede or undo the running deployment, each with
    the reason it must be refused."""
    newer = manifest_for(SAMPLE_MODEL, version="9.0.0")
    stranger = Signer.generate()
    stale = TEST_SIGNER.signed(DeployCommand(device_id=DEVICE, manifest=newer,
                                             issued_at=time.time() - TWO_DAYS_S))
    return [
        (DeployCommand(device_id=DEVICE, manifest=newer), "deploy command is unsigned"),
        (command_for(stranger.signed(newer), signer=stranger), f"signed by key {stranger.key_id}"),
        (stale, "command issued 48.0 h ago"),
        (RollbackCommand(device_id=DEVICE, model_name=MODEL), "rollback command is unsigned"),
    ]


async def send_and_see_refused(plant: Plant) -> None:
    """Send every forgery; wait until the gateway has refused each, with its reason."""
    sent = forgeries()
    for command, _ in sent:
        await plant.send(command)
    for command, reason in sent:
        refused = await plant.final_event(command.command_id, timeout_s=10)
        assert refused.step == "failed" and reason in refused.detail, refused


def test_forged_commands_do_not_cancel_a_deployment_under_way(
        tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    # The transfer asks again for chunks not served yet when overdue: after 1 s here, not 5.
    monkeypatch.setattr(transfer, "CHUNK_WAIT_S", 1.0)

    async def scenario(plant: Plant) -> None:
        manifest = manifest_for(plant.variant, version="1.1.0", metadata=metadata(**NO_PROBATION))
        command = command_for(manifest)
        await plant.send(command)  # nobody serves its chunks yet: the transfer waits
        await wait_until_async(lambda: plant.requested, 10, what="the transfer under way")

        await send_and_see_refused(plant)

        plant.rogue_chunks[manifest.sha256] = chunks_of(plant.variant.read_bytes(), manifest)
        final = await plant.final_event(command.command_id)
        assert final.step == "activated", plant.events
        assert plant.store.active(MODEL).manifest.version == "1.1.0"

    with_plant(tmp_path, mosquitto, scenario)


def test_forged_commands_do_not_end_a_probation(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario(plant: Plant) -> None:
        meta = metadata(probation={"duration_s": 60, "min_observations": 3})
        meta["golden"] = {"input": [TYPICAL], "output": [[6.0]], "tolerance": 1e-4}
        await plant.publish(nan_model(tmp_path / "nan.onnx"), "1.1.0", meta)
        activated = await plant.deploy("1.1.0")
        assert activated is not None and activated.step == "activated", plant.events

        await send_and_see_refused(plant)

        now = time.time()
        for tag in FEATURES:  # the line stops: all zeros, 0/0 = NaN, which probation catches
            plant.latest[tag] = TagValue(0.0, True, now, now)
        await plant.pipeline.tick()
        final = await plant.final_event(activated.command_id,
                                        steps=("confirmed", "rolled_back", "failed"))
        assert final.step == "rolled_back" and "NaN" in final.detail, final
        assert plant.store.active(MODEL).manifest.version == "1.0.0"

    with_plant(tmp_path, mosquitto, scenario)
