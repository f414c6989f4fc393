"""The MLOps loop end to end on real parts: Mosquitto, central (in this process, SQLite) and a
real agent whose vision pipeline runs the shipped sample model on a camera.

The line's camera is out of focus, so the shipped model gets about one frame in five wrong.
Its defects and samples reach central; a quality engineer labels them; they are frozen as
dataset surface-labels@1; a data scientist retrains the model's head on it and publishes the
new version with that dataset; central evaluates it beside the version serving now; it cannot
be deployed until a second account approves it; then it is deployed and becomes active on the
gateway, its lineage leading back to the dataset and the evaluation.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from central_sync.config import CentralConfig
from central_sync.datasets import DatasetSelection, create_dataset
from central_sync.db import CentralDB, ModelStateError, NotApproved
from central_sync.deployments import deploy
from central_sync.evaluation import evaluate_model
from central_sync.registry import publish_model
from central_sync.service import CentralService
from central_sync.training.sources import train_on_dataset
from edge_agent.app import Agent
from edge_agent.config import AgentConfig
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.conftest import Mosquitto
from tests.helpers import TEST_SIGNER, db_rows, wait_until_async, write_test_keys
from tests.training_helpers import (
    LABELS,
    SHIPPED_METADATA,
    SHIPPED_MODEL,
    labelled_patches,
    write_folder,
)

pytestmark = pytest.mark.slow
DEVICE = "line2-gw1"
MODEL = "surface-defects"
PER_CLASS = 30
SCIENTIST, ENGINEER, APPROVER = "dana", "quinn", "erik"


@dataclass
class Plant:
    tmp: Path
    config: CentralConfig
    central: CentralService
    agent: Agent

    @property
    def db(self) -> CentralDB:
        assert self.central.db is not None
        return self.central.db

    def active(self) -> str | None:
        installed = self.agent.store.active(MODEL)
        return installed.manifest.version if installed else None

    async def deploy(self, version: str) -> None:
        await deploy(self.db, self.central.transport, TEST_SIGNER, MODEL, version, DEVICE,
                     ENGINEER, self.central.topics, approval_required=True)
        await wait_until_async(lambda: self.active() == version, 30,
                               what=f"{MODEL} {version} active on {DEVICE}")


def agent_config(tmp: Path, port: int, frames: Path, public_key: Path) -> AgentConfig:
    """A gateway whose camera is a folder of frames (read once, in order, each frame judged)
    and whose vision pipeline keeps every frame: a defect record, or a sample."""
    return AgentConfig.model_validate({
        "device_id": DEVICE, "data_dir": str(tmp / "agent"), "broker": {"port": port},
        "ui": {"port": 0}, "security": {"central_public_key": str(public_key)},
        "status_interval_s": 0.5,
        "sources": [{"type": "camera", "name": "strip-camera", "url": str(frames),
                     "loop": False, "native_rate": False, "reconnect_max_backoff_s": 0.5}],
        "pipelines": [{
            "type": "vision", "name": "surface", "source": "strip-camera", "model": MODEL,
            "defects": {"classes": ["scratch", "pit", "stain"], "min_confidence": 0.0,
                        "min_consecutive": 1, "cooldown_s": 0},
            "evidence": {"annotated": False},
            "sampling": {"uncertain_band": None, "normal_share": 1.0, "per_hour": 10_000,
                         "per_day": 10_000}}],
    })


def records_at_central(db: CentralDB) -> int:
    return db_rows(db, "SELECT (SELECT COUNT(*) FROM defects) + (SELECT COUNT(*) FROM "
                       "samples) AS n")[0]["n"]


def label_like_a_reviewer(db: CentralDB, truth: list[str]) -> None:
    """Every defect and sample of the line labelled with its true class: frames are judged
    in order, one record each, so the n-th record by seq is the n-th frame."""
    records = db_rows(db, "SELECT 'defect' AS origin, seq, label FROM defects WHERE "
                          "device_id = ? UNION ALL SELECT 'sample', seq, label FROM samples "
                          "WHERE device_id = ? ORDER BY seq", (DEVICE, DEVICE))
    assert len(truth) - 1 <= len(records) <= len(truth)
    for record, true_label in zip(records, truth, strict=False):
        if record["origin"] == "sample":
            db.label_sample(DEVICE, record["seq"], true_label, ENGINEER)
        elif true_label == record["label"]:
            db.label_defect(DEVICE, record["seq"], "confirmed", ENGINEER)
        elif true_label == "ok":
            db.label_defect(DEVICE, record["seq"], "false_alarm", ENGINEER)
        else:
            db.label_defect(DEVICE, record["seq"], "relabelled", ENGINEER, true_label)


async def start_plant(tmp: Path, mosquitto: Mosquitto, frames: Path) -> Plant:
    private, public = write_test_keys(tmp / "keys")
    config = CentralConfig(database_url=f"sqlite:///{tmp / 'central.db'}",
                           artifact_dir=tmp / "artifacts", web={"port": 0},
                           broker=BrokerConfig(port=mosquitto.port), signing_key_path=private)
    central = CentralService(config, MqttTransport(config.broker, "central"))
    await central.start()
    assert central.db is not None
    central.db.add_broker_account(DEVICE, "device", ["line-2"], "unused", by="test")
    agent = Agent(agent_config(tmp, mosquitto.port, frames, public))
    return Plant(tmp, config, central, agent)


def test_labels_become_a_dataset_a_retrained_version_and_after_approval_the_line_s_model(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    patches = labelled_patches(PER_CLASS, seed=21)
    # The pipeline hands on a frame's result once the next frame has come (one frame is in
    # flight while the next is prepared): a copy of the last frame closes the folder.
    frames_shown = [*patches, patches[-1]]
    truth = [label for label, _ in frames_shown]
    staged = tmp_path / "staged"
    write_folder(staged, frames_shown)
    frames = tmp_path / "frames"  # appears once the shipped model serves, so no frame is lost

    async def scenario(plant: Plant, stop: asyncio.Event) -> None:
        db = plant.db
        await wait_until_async(lambda: any(d.device_id == DEVICE and d.state == "online"
                                           for d in db.list_devices()), 20, what="agent online")
        # The shipped model, published, evaluated and approved as any version must be.
        await asyncio.to_thread(publish_model, db, plant.config.artifact_dir, SHIPPED_MODEL,
                                metadata=SHIPPED_METADATA, signer=TEST_SIGNER,
                                published_by=SCIENTIST)
        await asyncio.to_thread(evaluate_model, db, plant.config.artifact_dir, MODEL, "1.0.0",
                                None, SCIENTIST)
        db.approve_model(MODEL, "1.0.0", APPROVER)
        await plant.deploy("1.0.0")

        shutil.move(staged, frames)
        await wait_until_async(lambda: records_at_central(db) >= len(patches), 30,
                               what=lambda: f"{len(patches)} defect and sample records at "
                                            f"central, {records_at_central(db)} so far")

        await asyncio.to_thread(label_like_a_reviewer, db, truth)
        dataset = await asyncio.to_thread(create_dataset, db, "surface-labels",
                                          DatasetSelection(device_id=DEVICE), ENGINEER)
        assert dataset.ref == "surface-labels@1"
        assert len(dataset.manifest.items) == records_at_central(db)
        assert set(dataset.manifest.labels) == set(LABELS)

        trained = await asyncio.to_thread(train_on_dataset, db, plant.config.artifact_dir,
                                          MODEL, "surface-labels@1", by=SCIENTIST)
        assert trained.version == "1.1.0"
        assert trained.metadata["lineage"]["base_model"] == "surface-defects@1.0.0"
        model_path, metadata_path = trained.write(plant.tmp / "trained")
        manifest = await asyncio.to_thread(
            publish_model, db, plant.config.artifact_dir, model_path, metadata=metadata_path,
            signer=TEST_SIGNER, published_by=SCIENTIST)
        assert manifest.meta.lineage.dataset == "surface-labels@1"
        assert manifest.meta.lineage.dataset_id == dataset.dataset_id

        with pytest.raises(NotApproved):
            await plant.deploy("1.1.0")
        evaluation = await asyncio.to_thread(evaluate_model, db, plant.config.artifact_dir,
                                             MODEL, "1.1.0", "surface-labels@1", SCIENTIST)
        report = evaluation.report
        assert evaluation.dataset_id == dataset.dataset_id
        assert evaluation.baseline_version == "1.0.0"
        assert report["candidate"]["accuracy"] > report["baseline"]["accuracy"], report
        with pytest.raises(ModelStateError, match="cannot also approve it"):
            db.approve_model(MODEL, "1.1.0", SCIENTIST)
        db.approve_model(MODEL, "1.1.0", APPROVER)

        await plant.deploy("1.1.0")
        await wait_until_async(
            lambda: [m.version for d in db.list_devices() if d.device_id == DEVICE
                     for m in d.active_models if m.name == MODEL] == ["1.1.0"], 20,
            what="central's fleet view showing 1.1.0 active on the gateway")
        state = db.model_state(MODEL, "1.1.0")
        assert state.state == "approved" and state.approved_by == APPROVER
        assert state.evaluation_id == evaluation.evaluation_id
        # Each step is in the audit log, who and what: the chain an auditor follows.
        steps = {(e["action"], e["subject"], e["actor"]) for e in db.list_audit(limit=1000)}
        assert {("dataset.create", "surface-labels@1", ENGINEER),
                ("model.evaluate", "surface-defects@1.1.0", SCIENTIST),
                ("model.approve", "surface-defects@1.1.0", APPROVER),
                ("model.deploy", "surface-defects@1.1.0", ENGINEER)} <= steps
        stop.set()

    async def main() -> None:
        plant = await start_plant(tmp_path, mosquitto, frames)
        stop = asyncio.Event()
        agent_task = asyncio.create_task(plant.agent.run(stop))
        try:
            await scenario(plant, stop)
        finally:
            stop.set()
            await agent_task
            await plant.central.stop()

    asyncio.run(asyncio.wait_for(main(), 90))
