"""`central-sync train`: retrain the sample model's head on a dataset version frozen from
labelled sample records, from the command line (SQLite: the database does not matter here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from central_helpers import write_config

from central_sync.accounts import hash_password
from central_sync.cli import main
from central_sync.db import CentralDB
from central_sync.registry import publish_model
from tests.helpers import TEST_SIGNER
from tests.training_helpers import (
    SHIPPED_METADATA,
    SHIPPED_MODEL,
    freeze_patches,
    labelled_patches,
)


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A central with the shipped model published and dataset surface-labels@1 (160 labelled
    out-of-focus patches); returns its config file."""
    folder = tmp_path_factory.mktemp("central")
    config = write_config(folder, database_url=f"sqlite:///{folder / 'central.db'}")
    db = CentralDB(folder / "central.db")
    try:
        publish_model(db, folder / "var" / "artifacts", SHIPPED_MODEL, metadata=SHIPPED_METADATA,
                      signer=TEST_SIGNER)
        freeze_patches(db, "surface-labels", labelled_patches(40, seed=5), "line2-gw1")
    finally:
        db.close()
    return config


@pytest.fixture(autouse=True)
def in_config_folder(central: Path, monkeypatch) -> None:
    monkeypatch.chdir(central.parent)  # the config's relative paths are from here
    monkeypatch.delenv("CENTRAL_SYNC_USER", raising=False)
    monkeypatch.delenv("CENTRAL_SYNC_PASSWORD", raising=False)


def test_train_has_help_with_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["train", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--dataset surface-labels@3" in out


def test_train_writes_a_version_ready_to_publish_and_says_how(central: Path, tmp_path: Path,
                                                               capsys) -> None:
    code = main(["train", "surface-defects", "--dataset", "surface-labels@1", "--out",
                 str(tmp_path), "--by", "dana", "-c", str(central)])
    out = capsys.readouterr().out
    assert code == 0, out
    model = tmp_path / "surface-defects-1.1.0.onnx"
    metadata = tmp_path / "surface-defects-1.1.0.json"
    assert model.is_file() and metadata.is_file()
    meta = json.loads(metadata.read_text())
    lineage = meta["lineage"]
    assert lineage["dataset"] == "surface-labels@1" and len(lineage["dataset_id"]) == 64
    assert lineage["base_model"] == "surface-defects@1.0.0" and lineage["author"] == "dana"
    assert meta["training"]["rows"] + meta["training"]["holdout_rows"] == 160
    assert "trained surface-defects 1.1.0 from surface-defects@1.0.0 on surface-labels@1" in out
    assert "embedding 160 images of surface-labels@1" in out and "hold-out accuracy" in out
    assert (f"central-sync model publish {model} --metadata {metadata} --dataset "
            "surface-labels@1") in out


def test_train_refuses_what_it_cannot_do_saying_what_to_do(central: Path, tmp_path: Path,
                                                           capsys) -> None:
    def train(*args: str) -> str:
        assert main(["train", *args, "--out", str(tmp_path), "-c", str(central)]) == 2
        return capsys.readouterr().err

    assert "no dataset surface-labels@7; known: surface-labels@1" in train(
        "surface-defects", "--dataset", "surface-labels@7")
    assert "is not NAME@VERSION with a whole version number" in train(
        "surface-defects", "--dataset", "surface-labels")
    assert "surface-defects@1.0.0 is already published" in train(
        "surface-defects", "--dataset", "surface-labels@1", "--version", "1.0.0")
    assert "no version of press-line is published" in train(
        "press-line", "--dataset", "surface-labels@1")
    assert "--labels 'ok,,pit': give class names separated by commas" in train(
        "surface-defects", "--dataset", "surface-labels@1", "--labels", "ok,,pit")
    assert "no training items of dent" in train(
        "surface-defects", "--dataset", "surface-labels@1", "--labels",
        "ok,scratch,pit,stain,dent")
    assert not list(tmp_path.iterdir()), "nothing written when refused"


def test_train_publish_needs_an_engineer_s_login(central: Path, tmp_path: Path, capsys,
                                                 monkeypatch) -> None:
    db = CentralDB(central.parent / "central.db")
    try:
        db.add_user("olga", hash_password("viewer-password-1"), "viewer", by="test")
        db.add_user("erin", hash_password("engineer-password-1"), "engineer", by="test")
    finally:
        db.close()
    args = ["train", "surface-defects", "--dataset", "surface-labels@1", "--version", "1.2.0",
            "--out", str(tmp_path), "--publish", "-c", str(central)]
    monkeypatch.setenv("CENTRAL_SYNC_USER", "olga")
    monkeypatch.setenv("CENTRAL_SYNC_PASSWORD", "viewer-password-1")
    assert main(args) == 2
    assert "olga is a viewer; this needs the engineer role" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "refused before any work"

    monkeypatch.setenv("CENTRAL_SYNC_USER", "erin")
    monkeypatch.setenv("CENTRAL_SYNC_PASSWORD", "engineer-password-1")
    assert main(args) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "published surface-defects 1.2.0" in out
    assert "surface-defects@1.2.0 is evaluated: another engineer or admin approves it" in out
    db = CentralDB(central.parent / "central.db")
    try:
        manifest = db.get_model("surface-defects", "1.2.0")
        published_by = {(m.manifest.version, m.published_by) for m in db.list_models()}
        state = db.model_state("surface-defects", "1.2.0")
        evaluation = db.get_evaluation(state.evaluation_id)
    finally:
        db.close()
    assert manifest.meta.lineage.dataset == "surface-labels@1"
    assert manifest.meta.lineage.author == "erin"
    assert ("1.2.0", "erin") in published_by
    assert state.state == "evaluated" and evaluation.dataset == "surface-labels@1"
    assert evaluation.baseline_version == "", "1.0.0 neither serves nor is approved here"
    assert evaluation.report["items"] == manifest.meta.training.holdout_rows
