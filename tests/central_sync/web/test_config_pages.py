"""Central's pages with configurations: the rollout pages say what a rollout deploys (a model
version or a configuration version), the fleet and device pages which configuration each
gateway runs and the last one central sent it."""

from __future__ import annotations

import html
import re

from config_helpers import line_body
from fastapi.testclient import TestClient

from central_sync.accounts import hash_password
from central_sync.configs import config_deploy_command, publish_config
from central_sync.db import CentralDB
from central_sync.rollouts import start_rollout
from central_sync.web import create_app
from edge_agent.kernel.contract import DeploymentEvent, DeviceStatus
from tests.helpers import TEST_SIGNER

PASSWORD = "correct horse battery"


def _site(db: CentralDB) -> TestClient:
    db.add_user("otto", hash_password(PASSWORD), "viewer", by="admin")
    site = TestClient(create_app(db, offline_after_s=120))
    site.post("/login", data={"username": "otto", "password": PASSWORD})
    return site


def _text(page: str) -> str:
    """The page's words without its tags, as a reader sees them."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_a_config_rollout_s_pages_say_what_it_deploys(db: CentralDB) -> None:
    publish_config(db, TEST_SIGNER, "line-3", line_body(5), "alice", probation_s=45,
                   notes="camera 2 slower")
    rollout = start_rollout(db, "line-3", "1", ["gw1", "gw2"], "group line-3", "alice",
                            canary=0, kind="config")
    site = _site(db)
    listing = _text(site.get("/rollouts").text)
    assert f"{rollout.rollout_id} configuration line-3@1 group line-3 running" in listing
    page = _text(site.get(f"/rollouts/{rollout.rollout_id}").text)
    assert f"Rollout {rollout.rollout_id}: configuration line-3@1" in page
    assert "sources line1 · pipelines scrap · probation 45 s" in page
    assert "published by alice · camera 2 slower ( central-sync config show line-3@1 )" in page
    assert site.get(f"/api/rollouts/{rollout.rollout_id}").json()["kind"] == "config"


def test_the_fleet_and_device_pages_show_the_configuration_each_gateway_runs(
        db: CentralDB) -> None:
    document = publish_config(db, TEST_SIGNER, "line-3", line_body(5), "alice")
    db.update_status(DeviceStatus(device_id="gw1", state="online", config=document.ref))
    db.update_status(DeviceStatus(device_id="gw2", state="online"))
    command = config_deploy_command(db, TEST_SIGNER, "line-3", 1, "gw2", "alice")
    db.create_config_deployment(command)
    db.record_deployment_event(DeploymentEvent(
        device_id="gw2", command_id=command.command_id, subject="config", model_name="line-3",
        version="1", step="rolled_back", detail="source line1 failed in probation"))
    site = _site(db)
    fleet = site.get("/fleet").text
    assert '<td class="configuration"><span title="sha256 ' + document.sha256 + '">line-3@1' \
        in fleet
    assert '<td class="configuration">local YAML</td>' in fleet
    gw2 = _text(site.get("/devices/gw2").text)
    assert "configuration: local YAML only (none from central) · last sent line-3@1 : " \
           "rolled_back (source line1 failed in probation)" in gw2
    assert "configuration line-3@1 rolled_back alice" in gw2
    gw1 = _text(site.get("/devices/gw1").text)
    assert "configuration: line-3@1" in gw1


def test_a_model_rollout_s_page_links_its_version(db: CentralDB, tmp_path) -> None:
    from central_helpers import make_onnx_model

    from central_sync.registry import publish_model

    publish_model(db, tmp_path / "artifacts", make_onnx_model(tmp_path / "m.onnx"), "line-3",
                  "1.0.0", signer=TEST_SIGNER)
    rollout = start_rollout(db, "line-3", "1.0.0", ["gw1"], "devices gw1", "alice", canary=0,
                            approval_required=False)
    page = _site(db).get(f"/rollouts/{rollout.rollout_id}").text
    assert 'model version <a href="/models/line-3/1.0.0">line-3@1.0.0</a>' in page
