"""The model page in real headless Chromium on SQLite: an engineer uploads a version with a
dataset, central evaluates it in the background, and she cannot approve it herself (the button
says why); a second engineer reads the evaluation beside production's, approves it, starts a
rollout and follows it on the rollout page."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from browser_helpers import logged_in_page
from evaluation_helpers import VISION_METADATA, VISION_MODEL, freeze_samples, publish_vision
from model_page_helpers import PASSWORD, add_users

from central_sync.config import CentralConfig, ModelsConfig
from central_sync.db import CentralDB
from central_sync.evaluation import evaluate_model
from central_sync.service import web_model_actions
from central_sync.web import create_app


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the browser's side
def test_upload_review_approve_and_roll_out_from_the_model_page_in_chromium(
        db: CentralDB, central_config: CentralConfig, tmp_path: Path) -> None:
    config = central_config.model_copy(update={"models": ModelsConfig(require_approval=True)})
    app = create_app(db, 120, model_actions=web_model_actions(config, config.signer()))
    add_users(db, erin="engineer", bob="engineer")
    dataset = freeze_samples(db)
    publish_vision(db, config.artifact_dir, "1.0.0", by="alice")  # in production: approved
    evaluate_model(db, config.artifact_dir, "surface-defects", "1.0.0", dataset.ref, "alice")
    db.approve_model("surface-defects", "1.0.0", "bob")
    version_url = re.compile(r"/models/surface-defects/1\.1\.0")
    with logged_in_page(db, "erin", PASSWORD, "/models", app=app) as (page, sync_api):
        expect = sync_api.expect
        page.set_input_files("input[name=model]", str(VISION_MODEL))
        page.set_input_files("input[name=metadata]", str(VISION_METADATA))
        page.fill("input[name=name]", "surface-defects")
        page.fill("input[name=version]", "1.1.0")
        page.fill("input[name=dataset]", dataset.ref)
        page.fill("input[name=code_revision]", "a1b2c3d")
        page.get_by_role("button", name="Publish").click()
        page.wait_for_url(version_url)
        # The evaluation runs in the background; the page reloads itself until it is stored.
        expect(page.locator("#model-state")).to_have_text("evaluated", timeout=30_000)
        expect(page.locator("#approve")).to_be_disabled()
        expect(page.locator("#approve-why")).to_have_text(
            "you published this version: another engineer or admin approves it")

        page.get_by_role("button", name="Log out").click()
        page.goto(page.url.replace("/login", "/models/surface-defects/1.1.0"))
        page.fill("input[name=username]", "bob")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(version_url)
        report = page.locator("#report-table")
        expect(report).to_contain_text("1.1.0 (candidate)")
        expect(report).to_contain_text("1.0.0 (production)")
        expect(report.locator("tr", has_text="scratch")).to_contain_text("%")
        expect(page.locator("figure.confusion")).to_have_count(2)
        expect(page.locator("#approve")).to_be_enabled()
        page.locator("#approve").click()
        page.wait_for_url(re.compile(r"done=approved$"))
        expect(page.locator("#model-state")).to_have_text("approved")
        expect(page.locator("#approval")).to_contain_text("by bob")

        page.fill("form.rollout input[name=devices]", "gw-1,gw-2")
        page.fill("form.rollout input[name=canary]", "0")
        page.fill("form.rollout input[name=waves]", "50%,100%")
        page.locator("#start-rollout").click()
        page.wait_for_url(re.compile(r"/rollouts/[0-9a-f]{12}$"))
        expect(page.locator("#rollout-state")).to_contain_text("wave 1 of 2")
        expect(page.locator("#rollout-devices")).to_contain_text("gw-2")
        page.screenshot(path=str(tmp_path / "rollout.png"))
        page.goto(page.url.split("/rollouts/")[0] + "/models/surface-defects/1.1.0")
        page.screenshot(path=str(tmp_path / "version.png"), full_page=True)
        shutil.copy(tmp_path / "version.png", "/tmp/central_model_version.png")
    state = db.model_state("surface-defects", "1.1.0")
    assert state is not None and (state.state, state.approved_by) == ("approved", "bob")
    assert [r.created_by for r in db.list_rollouts()] == ["bob"]
