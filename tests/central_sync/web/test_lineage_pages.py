"""Lineage on central's pages, on SQLite and PostgreSQL: a defect or sample record leads to the
model version it names (and whether its sha256 is the one central published), the version to
its dataset version, evaluation and approver, and the dataset page counts its items per class
and split."""

from __future__ import annotations

from pathlib import Path

import pytest
from central_helpers import make_onnx_model
from dataset_helpers import labelled_line, payload, sample_image, store
from fastapi.testclient import TestClient
from model_page_helpers import PASSWORD, add_evaluation, add_users

from central_sync.datasets import DatasetSelection, create_dataset
from central_sync.db import CentralDB
from central_sync.registry import publish_model
from central_sync.web import create_app
from tests.helpers import TEST_SIGNER


@pytest.fixture
def site(db: CentralDB, tmp_path: Path) -> TestClient:
    labelled_line(db, "line1-gw1")  # defects 1-5, samples 6-8 by surface-defects 1.0.0
    dataset = create_dataset(db, "surface-labels", DatasetSelection(), by="quinn")
    manifest = publish_model(
        db, tmp_path / "artifacts", make_onnx_model(tmp_path / "m.onnx"), "surface-defects",
        "1.0.0", signer=TEST_SIGNER, published_by="erin",
        metadata={"lineage": {"dataset": dataset.ref, "dataset_id": dataset.dataset_id,
                              "code_revision": "a1b2c3d"}})
    record = payload("scratch", sample_image("scratch_0"), seq=9)
    record["model"]["sha256"] = manifest.sha256  # this one ran the bytes central published
    store(db, "line1-gw1", {9: record})
    evaluation = add_evaluation(db, "surface-defects", "1.0.0", dataset=dataset.ref)
    db.approve_model("surface-defects", "1.0.0", "bob")
    add_users(db, val="viewer")
    client = TestClient(create_app(db, 120), follow_redirects=False)
    client.post("/login", data={"username": "val", "password": PASSWORD})
    client.evaluation_id = evaluation.evaluation_id  # type: ignore[attr-defined]
    client.dataset_id = dataset.dataset_id  # type: ignore[attr-defined]
    client.sha256 = manifest.sha256  # type: ignore[attr-defined]
    return client


def test_a_defect_leads_to_its_version_dataset_evaluation_and_approver(site: TestClient) -> None:
    assert 'href="/review/records/line1-gw1/9"' in site.get("/review").text
    page = site.get("/review/records/line1-gw1/9").text
    assert 'href="/models/surface-defects/1.0.0"' in page
    assert site.sha256 in page and "the bytes central published" in page  # type: ignore[attr-defined]
    assert 'href="/datasets/surface-labels/1"' in page and site.dataset_id in page  # type: ignore[attr-defined]
    assert site.evaluation_id in page and "by bob" in page  # type: ignore[attr-defined]
    version = site.get("/models/surface-defects/1.0.0").text
    assert 'href="/datasets/surface-labels/1"' in version and site.dataset_id in version  # type: ignore[attr-defined]
    assert "a1b2c3d" in version and "by bob" in version
    assert 'href="/audit?subject=surface-defects%401.0.0"' in version
    trail = site.get("/audit?subject=surface-defects%401.0.0").text
    assert "model.publish" in trail and "model.approve" in trail


def test_a_record_whose_bytes_central_did_not_publish_says_so(site: TestClient) -> None:
    page = site.get("/review/records/line1-gw1/3").text  # relabelled, sha256 'aaa…'
    assert "not what central published" in page and "relabelled as stain" in page
    sample = site.get("/review/records/line1-gw1/7").text
    assert "Sample line1-gw1/7" in sample and "labelled pit by quality-eng" in sample
    assert site.get("/review/records/line1-gw1/99").status_code == 404


def test_the_dataset_page_counts_items_per_class_and_split(site: TestClient,
                                                          db: CentralDB) -> None:
    found = db.get_dataset("surface-labels", 1)
    assert found is not None
    page = site.get("/datasets/surface-labels/1").text
    assert site.dataset_id in page and 'href="/models/surface-defects/1.0.0"' in page  # type: ignore[attr-defined]
    total = sum(sum(by_label.values()) for by_label in found.manifest.counts.values())
    assert f"<td>{total}</td></tr>\n</table>" in page
    for label in found.manifest.labels:
        assert f"<tr><th>{label}</th>" in page
    assert site.get("/datasets/surface-labels/2").status_code == 404
    assert site.get("/datasets/nope/x").status_code == 422
