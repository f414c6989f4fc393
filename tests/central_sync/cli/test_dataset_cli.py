"""`central-sync dataset`: create, list, show, diff and export through main(), the quality
role once central has accounts, and one run as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from central_helpers import write_config
from dataset_helpers import labelled_line

from central_sync.accounts import hash_password
from central_sync.cli import main
from central_sync.db import CentralDB

REPO = Path(__file__).resolve().parents[3]
PASSWORD = "a long enough password"


@pytest.mark.parametrize("action", ["create", "list", "show", "diff", "export", None])
def test_every_dataset_command_has_help_with_examples(action: str | None, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dataset", *([action] if action else []), "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage: central-sync dataset" in out and "examples:\n  central-sync dataset" in out


def test_freeze_list_show_relabel_diff_and_export(config_file: Path, database_url: str,
                                                 tmp_path: Path, capsys) -> None:
    db = CentralDB(database_url)
    labelled_line(db)
    config = ["-c", str(config_file)]
    assert main(["dataset", "create", "surface-labels", "--from-review", "--by", "eve",
                 *config]) == 0
    out = capsys.readouterr().out
    assert "created surface-labels@1 (id " in out and "6 items, classes ok, pit, scratch, " \
        "stain" in out
    assert main(["dataset", "create", "surface-labels", "--from-review", *config]) == 2
    assert "error: nothing new to freeze: the selection gives exactly surface-labels@1" in \
        capsys.readouterr().err
    db.label_defect("line1-gw1", 2, "relabelled", "eve", "stain")
    assert main(["dataset", "create", "surface-labels", "--from-review", *config]) == 0
    second = db.find_dataset("surface-labels@2")
    db.close()
    assert second is not None
    capsys.readouterr()
    assert main(["dataset", "list", *config]) == 0
    out = capsys.readouterr().out
    assert "surface-labels@1" in out and second.dataset_id[:12] in out and "eve" in out
    assert main(["dataset", "show", "surface-labels@2", *config]) == 0
    out = capsys.readouterr().out
    assert second.dataset_id in out and "split rule" in out and "everything labelled" in out
    assert "items per class and split" in out
    assert main(["dataset", "diff", "surface-labels@1", "2", *config]) == 0
    out = capsys.readouterr().out
    assert "0 added, 0 removed, 1 relabelled" in out and "line1-gw1/2" in out
    out_dir = tmp_path / "export"
    assert main(["dataset", "export", "surface-labels@2", "--layout", "imagefolder",
                 "--out", str(out_dir), *config]) == 0
    assert "6 images written, 0 already there" in capsys.readouterr().out
    assert json.loads((out_dir / "manifest.json").read_text())["dataset"] == "surface-labels@2"
    assert main(["dataset", "export", "surface-labels@2", "--layout", "yolo", "--out",
                 str(tmp_path / "y"), *config]) == 2
    assert "is a classification dataset: YOLO needs boxes" in capsys.readouterr().err


def test_bad_input_exits_2_saying_what_to_do(tmp_path: Path, capsys) -> None:
    config = ["-c", str(write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/c.db"))]
    assert main(["dataset", "create", "surface-labels", "--from-review", *config]) == 2
    assert "no labelled defects or samples match the selection (everything labelled)" in \
        capsys.readouterr().err
    assert main(["dataset", "create", "x", "--from-review", "--since", "last week",
                 *config]) == 2
    assert "--since 'last week' is not a date like 2026-03-31" in capsys.readouterr().err
    assert main(["dataset", "show", "surface-labels", *config]) == 2
    assert "is not NAME@VERSION" in capsys.readouterr().err
    assert main(["dataset", "show", "surface-labels@4", *config]) == 2
    assert "no dataset version surface-labels@4; see `central-sync dataset list`" in \
        capsys.readouterr().err
    assert main(["dataset", "list", *config]) == 0
    assert "No datasets yet" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["dataset", "create", "surface-labels", *config])  # --from-review is required


def test_creating_a_dataset_needs_the_quality_role(tmp_path: Path, capsys,
                                                   monkeypatch) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    config = ["-c", str(write_config(tmp_path, database_url=url))]
    db = CentralDB(url)
    labelled_line(db)
    db.add_user("root", hash_password(PASSWORD), "admin", by="setup")
    db.add_user("vic", hash_password(PASSWORD), "viewer", by="root")
    db.add_user("quinn", hash_password(PASSWORD), "quality", by="root")
    monkeypatch.setenv("CENTRAL_SYNC_PASSWORD", PASSWORD)
    monkeypatch.setenv("CENTRAL_SYNC_USER", "vic")
    assert main(["dataset", "create", "surface-labels", "--from-review", *config]) == 2
    assert "vic is a viewer; this needs the quality role" in capsys.readouterr().err
    assert main(["dataset", "list", *config]) == 0  # reading needs no login
    monkeypatch.setenv("CENTRAL_SYNC_USER", "quinn")
    assert main(["dataset", "create", "surface-labels", "--from-review", "--by", "mallory",
                 *config]) == 0
    [entry] = [e for e in db.list_audit() if e["action"] == "dataset.create"]
    assert (entry["actor"], entry["subject"]) == ("quinn", "surface-labels@1")
    db.close()


def test_a_filtered_freeze_and_export_as_a_real_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    config = str(write_config(tmp_path, database_url=url))
    db = CentralDB(url)
    labelled_line(db)
    db.close()
    run = [sys.executable, "-m", "central_sync.cli"]
    created = subprocess.run(
        [*run, "dataset", "create", "line-samples", "--from-review", "--origin", "samples",
         "--device", "line1-gw1", "--until", "2999-12-31", "-c", config],
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert created.returncode == 0, created.stderr
    assert "created line-samples@1" in created.stdout and "2 items" in created.stdout
    exported = subprocess.run(
        [*run, "dataset", "export", "line-samples@1", "--layout", "imagefolder", "--out",
         str(tmp_path / "out"), "-c", config], capture_output=True, text=True, cwd=REPO,
        timeout=60)
    assert exported.returncode == 0, exported.stderr
    assert len(list((tmp_path / "out").rglob("*.jpg"))) == 2
