"""`central-sync audit verify|list|export`: exit codes and messages, filters, CSV escaping.
SQLite only: the chain's queries run on both databases in tests/central_sync/db."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from central_helpers import write_config

from central_sync.cli import main
from central_sync.db import CentralDB
from central_sync.db.audit import verify_chain

ATTACK = "=cmd|' /C calc'!A0"


@pytest.fixture
def central(tmp_path: Path) -> Iterator[tuple[Path, CentralDB]]:
    """A config file and its database, with six audit entries."""
    config = write_config(tmp_path, database_url=f"sqlite:///{tmp_path / 'central.db'}")
    db = CentralDB(tmp_path / "central.db")
    for i in range(4):
        db.audit("alice", "model.publish", f"scrap-model@1.0.{i}", "")
    db.audit("bob", "dataset.create", "surface-labels@1", "")
    db.audit(ATTACK, "device.labels", "@SUM(1+1)", "")
    yield config, db
    db.close()


@pytest.mark.parametrize("command", [["audit"], ["audit", "verify"], ["audit", "list"],
                                     ["audit", "export"]], ids=" ".join)
def test_every_audit_command_has_help_with_examples(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0 and "examples:" in capsys.readouterr().out


def test_verify_exits_0_with_a_count_when_intact(central, capsys) -> None:
    config, db = central
    assert main(["audit", "verify", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "audit log intact: 6 entries, 1 to 6" in out
    head = out.split("head ", 1)[1].split()[0]
    assert head == f"6:{db.list_audit(1)[0]['entry_hash']}"
    assert main(["audit", "verify", "--anchor", head, "-c", str(config)]) == 0


def test_verify_names_an_altered_and_a_deleted_entry_and_exits_1(central, capsys) -> None:
    config, db = central
    db._db.execute("UPDATE audit_log SET detail = 'approved by nobody' WHERE seq = 2")
    db._db.execute("DELETE FROM audit_log WHERE seq = 4")
    assert main(["audit", "verify", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert "entry 2: altered: entry 2 was altered: its contents do not match its hash" in out
    assert "entry 4: missing: entry 4 missing (deleted): entry 5 comes next" in out
    assert "audit log NOT intact: 2 findings; entries 1 to 1 verified, of 5 chained" in out


def test_verify_with_a_recorded_head_finds_entries_cut_off_the_end(central, capsys) -> None:
    config, db = central
    head = f"6:{db.list_audit(1)[0]['entry_hash']}"
    db._db.execute("DELETE FROM audit_log WHERE seq >= 5")
    assert main(["audit", "verify", "-c", str(config)]) == 0  # the chain alone cannot tell
    assert main(["audit", "verify", "--anchor", head, "-c", str(config)]) == 1
    assert "entry 6: anchor: entry 6 that you recorded is gone" in capsys.readouterr().out
    assert main(["audit", "verify", "--anchor", "6:abc", "-c", str(config)]) == 2
    assert "is not SEQ:HASH" in capsys.readouterr().err


def test_verify_exit_status_from_the_installed_command(central) -> None:
    config, db = central
    db._db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    done = subprocess.run([sys.executable, "-m", "central_sync.cli", "audit", "verify", "-c",
                           str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "entry 3: altered" in done.stdout


def test_list_filters_by_who_what_and_when(central, capsys) -> None:
    config, _ = central
    assert main(["audit", "list", "--action", "model.", "--limit", "3", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "scrap-model@1.0.3" in out and "scrap-model@1.0.1" in out
    assert "scrap-model@1.0.0" not in out and "older: --before 2" in out
    assert main(["audit", "list", "--actor", "bob", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "surface-labels@1" in out and "alice" not in out
    assert main(["audit", "list", "--subject", "scrap-model@1.0.2", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "scrap-model@1.0.2" in out and "scrap-model@1.0.1" not in out
    assert main(["audit", "list", "--since", "2999-01-01", "-c", str(config)]) == 0
    assert "no audit entries match" in capsys.readouterr().out
    assert main(["audit", "list", "--until", "last week", "-c", str(config)]) == 2
    assert "until must be a date like 2026-03-01" in capsys.readouterr().err
    assert main(["audit", "list", "--limit", "0", "-c", str(config)]) == 2


def test_csv_export_escapes_formulas_and_is_audited(central, tmp_path: Path, capsys) -> None:
    config, db = central
    out = tmp_path / "audit.csv"
    assert main(["audit", "export", "--format", "csv", "--action", "device.", "--out",
                 str(out), "--by", "auditor", "-c", str(config)]) == 0
    assert "exported 1 audit entries (csv)" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open(newline="")))
    assert [(r["seq"], r["actor"], r["subject"]) for r in rows] == \
        [("6", "'" + ATTACK, "'@SUM(1+1)")]
    export = db.list_audit(1)[0]
    assert (export["actor"], export["action"], export["subject"]) == \
        ("auditor", "audit.export", "1 entries")
    assert json.loads(export["detail"])["action"] == "device."


def test_json_export_is_exact_and_can_be_verified_again(central, tmp_path: Path) -> None:
    config, _ = central
    out = tmp_path / "audit.json"
    assert main(["audit", "export", "--format", "json", "--out", str(out), "-c",
                 str(config)]) == 0
    exported = json.loads(out.read_text())
    assert [e["seq"] for e in exported["entries"]] == [1, 2, 3, 4, 5, 6]
    assert exported["entries"][-1]["actor"] == ATTACK
    assert verify_chain(exported["entries"]).intact


def test_export_to_a_folder_that_is_not_there_says_so(central, tmp_path: Path, capsys) -> None:
    config, _ = central
    assert main(["audit", "export", "--format", "csv", "--out",
                 str(tmp_path / "missing" / "a.csv"), "-c", str(config)]) == 2
    assert "cannot write" in capsys.readouterr().err
