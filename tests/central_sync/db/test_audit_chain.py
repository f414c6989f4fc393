"""The audit log's hash chain on SQLite and PostgreSQL: entries linked by seq and hash, found
out when altered, deleted, re-hashed or cut off, safe under concurrent writers, and entries
from before the chain chained once at start."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from central_sync.db import CentralDB
from central_sync.db.audit import GENESIS_HASH, AuditFilter, entry_hash


def write_entries(db: CentralDB, n: int, actor: str = "alice") -> None:
    for i in range(n):
        db.audit(actor, "model.publish", f"scrap-model@1.0.{i}", f"sha256={i:064x}")


def problems(db: CentralDB) -> list[tuple[int | None, str]]:
    return [(f.seq, f.problem) for f in db.verify_audit_chain().findings]


def test_entries_are_chained_by_seq_and_hash_and_verify_intact(db: CentralDB) -> None:
    write_entries(db, 5)
    entries = sorted(db.list_audit(), key=lambda e: e["seq"])
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev_hash"] == GENESIS_HASH
    for before, after in itertools.pairwise(entries):
        assert after["prev_hash"] == before["entry_hash"]
    for e in entries:
        assert e["entry_hash"] == entry_hash(e["seq"], e["at"], e["actor"], e["action"],
                                             e["subject"], e["detail"], e["prev_hash"])
    report = db.verify_audit_chain()
    assert report.intact and report.entries == 5
    assert (report.verified_up_to, report.head_seq) == (5, 5)
    assert report.head_hash == entries[-1]["entry_hash"]


def test_an_entry_changed_by_sql_is_named_as_altered(db: CentralDB) -> None:
    write_entries(db, 5)
    db._db.execute("UPDATE audit_log SET detail = 'sha256=forged' WHERE seq = 3")
    report = db.verify_audit_chain()
    assert not report.intact
    assert [(f.seq, f.problem) for f in report.findings] == [(3, "altered")]
    assert "entry 3 was altered" in report.findings[0].message
    assert report.verified_up_to == 2 and report.first_broken == 3


def test_an_altered_entry_given_a_new_hash_breaks_the_next_link(db: CentralDB) -> None:
    write_entries(db, 4)
    row = next(db._db.query("SELECT * FROM audit_log WHERE seq = 2"))
    forged = entry_hash(2, row["at"], "mallory", row["action"], row["subject"], row["detail"],
                        row["prev_hash"])
    db._db.execute("UPDATE audit_log SET actor = 'mallory', entry_hash = ? WHERE seq = 2",
                   (forged,))
    assert problems(db) == [(3, "broken_link")]
    assert "entry 3 does not follow entry 2" in db.verify_audit_chain().findings[0].message


def test_a_deleted_entry_is_named_as_a_gap(db: CentralDB) -> None:
    write_entries(db, 6)
    db._db.execute("DELETE FROM audit_log WHERE seq IN (3, 4)")
    report = db.verify_audit_chain()
    assert [(f.seq, f.problem) for f in report.findings] == [(3, "missing")]
    assert "entries 3 to 4 missing (deleted): entry 5 comes next" in report.findings[0].message
    assert report.verified_up_to == 2


def test_swapped_entries_are_found(db: CentralDB) -> None:
    write_entries(db, 4)
    db._db.execute("UPDATE audit_log SET seq = -seq WHERE seq IN (2, 3)")
    db._db.execute("UPDATE audit_log SET seq = CASE seq WHEN -2 THEN 3 ELSE 2 END "
                   "WHERE seq IN (-2, -3)")
    assert set(problems(db)) >= {(2, "broken_link"), (2, "altered"), (3, "altered")}


def test_entries_cut_off_the_end_show_only_against_a_recorded_anchor(db: CentralDB) -> None:
    write_entries(db, 5)
    head = db.verify_audit_chain()
    db._db.execute("DELETE FROM audit_log WHERE seq = 5")
    assert db.verify_audit_chain().intact  # the chain alone cannot tell
    cut = db.verify_audit_chain(anchor=(head.head_seq, head.head_hash))
    assert [(f.seq, f.problem) for f in cut.findings] == [(5, "anchor")]
    assert db.verify_audit_chain(anchor=(4, db.list_audit(1)[0]["entry_hash"])).intact


def test_an_entry_inserted_without_a_seq_is_a_finding(db: CentralDB) -> None:
    write_entries(db, 2)
    db._db.execute("INSERT INTO audit_log (at, actor, action, subject, detail) "
                   "VALUES (?, 'mallory', 'model.approve', 'x@1.0.0', '')", (time.time(),))
    assert problems(db) == [(None, "unchained")]


def test_an_entry_rolls_back_with_the_change_it_records(db: CentralDB) -> None:
    write_entries(db, 2)
    with pytest.raises(RuntimeError), db._lock, db._db.atomic():
        db._audit("alice", "user.add", "bob", "role=viewer")
        raise RuntimeError("the change failed")
    db.audit("alice", "user.add", "carol", "role=viewer")
    newest = db.list_audit(1)[0]
    assert (newest["seq"], newest["subject"]) == (3, "carol") and db.verify_audit_chain().intact


def test_nul_and_odd_text_are_stored_as_hashed(db: CentralDB) -> None:
    db.audit("", "device.labels", "gw\x00-1", "é ☃ \U0001f600")
    entry = db.list_audit(1)[0]
    assert entry["actor"] == "unknown" and "\x00" not in entry["subject"]
    assert db.verify_audit_chain().intact


@pytest.fixture
def two_centrals(database_url: str) -> Iterator[tuple[CentralDB, CentralDB]]:
    first, second = CentralDB(database_url), CentralDB(database_url)
    yield first, second
    first.close()
    second.close()


def test_two_centrals_writing_at_once_never_fork_the_chain(
        two_centrals: tuple[CentralDB, CentralDB]) -> None:
    per_writer = 60
    start, errors = threading.Barrier(2), []

    def writer(db: CentralDB, name: str) -> None:
        start.wait()
        try:
            write_entries(db, per_writer, actor=name)
        except Exception as exc:  # reported below: the test fails on any
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(db, name))
               for db, name in zip(two_centrals, ("central-a", "central-b"), strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    first = two_centrals[0]
    assert first.count_audit() == 2 * per_writer
    report = first.verify_audit_chain()
    assert report.intact and report.head_seq == 2 * per_writer
    actors = [e["actor"] for e in first.list_audit(2 * per_writer)]
    assert actors.count("central-a") == actors.count("central-b") == per_writer


def test_entries_from_before_the_chain_are_chained_once_in_time_order(
        database_url: str) -> None:
    db = CentralDB(database_url)
    now = time.time()
    for at, subject in ((now - 10, "second"), (now - 20, "first"), (now - 5, "third")):
        db._db.execute("INSERT INTO audit_log (at, actor, action, subject, detail) "
                       "VALUES (?, 'alice', 'model.publish', ?, '')", (at, subject))
    db.close()
    again = CentralDB(database_url)  # starting chains them
    entries = again.list_audit()
    assert [(e["seq"], e["subject"]) for e in entries] == [(3, "third"), (2, "second"),
                                                           (1, "first")]
    assert again.verify_audit_chain().intact
    hashes = [e["entry_hash"] for e in entries]
    again.close()
    third = CentralDB(database_url)  # nothing left to chain: nothing changes
    assert [e["entry_hash"] for e in third.list_audit()] == hashes
    third.audit("bob", "user.add", "carol")
    assert third.verify_audit_chain().intact and third.list_audit(1)[0]["seq"] == 4
    third.close()


def test_unchained_entries_written_beside_the_chain_go_after_its_head(tmp_path: Path) -> None:
    db = CentralDB(tmp_path / "central.db")
    write_entries(db, 2)
    db._db.execute("INSERT INTO audit_log (at, actor, action, subject, detail) "
                   "VALUES (?, 'old-central', 'model.deploy', 'x@1.0.0', '')", (1.0,))
    db.close()
    again = CentralDB(tmp_path / "central.db")
    assert again.list_audit(1)[0]["actor"] == "old-central"
    assert again.list_audit(1)[0]["seq"] == 3 and again.verify_audit_chain().intact
    again.close()


def test_filters_and_paging_by_seq(tmp_path: Path) -> None:
    db = CentralDB(tmp_path / "central.db")
    for i in range(6):
        db.audit("alice" if i % 2 else "bob", "model.publish" if i < 3 else "dataset.create",
                 f"s{i}", "")
    db.audit("carol", "models.other", "x", "")
    assert [e["seq"] for e in db.list_audit(filters=AuditFilter(actor="alice"))] == [6, 4, 2]
    assert [e["seq"] for e in db.list_audit(filters=AuditFilter(action="model."))] == [3, 2, 1]
    assert [e["seq"] for e in db.list_audit(2, before_seq=5)] == [4, 3]
    assert [e["seq"] for e in db.list_audit(filters=AuditFilter(action="mo%"))] == []
    assert db.count_audit(AuditFilter(action="dataset.")) == 3
    assert [e["seq"] for e in db.list_audit(filters=AuditFilter(subject="s1"))] == [2]
    assert db.list_audit(filters=AuditFilter(subject="S1")) == []  # exact case
    assert db.list_audit(filters=AuditFilter(since=time.time() + 60)) == []
    assert len(db.list_audit(filters=AuditFilter(until=time.time() + 60))) == 7
    assert [e["seq"] for e in db.iter_audit(AuditFilter(actor="bob"), page=1)] == [1, 3, 5]
    db.close()


def test_filter_text_is_checked_and_dates_cover_whole_days() -> None:
    day = AuditFilter.from_text(since="2026-03-01", until="2026-03-01")
    assert day.until - day.since == pytest.approx(86400, abs=3600)  # a DST day is 23 or 25 h
    assert AuditFilter.from_text(since="2026-03-01T14:30").since is not None
    with pytest.raises(ValueError, match="since must be a date like 2026-03-01"):
        AuditFilter.from_text(since="yesterday")
    with pytest.raises(ValueError, match="since must be before until"):
        AuditFilter.from_text(since="2026-03-02", until="2026-03-01")
    with pytest.raises(ValueError, match="actor is longer than 200"):
        AuditFilter.from_text(actor="a" * 201)
