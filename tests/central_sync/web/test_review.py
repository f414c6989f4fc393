"""Defect review: the projection, paging, filters, labels with their audit entries, precision,
accounts and sessions, the web API with CSRF and roles, export, and the users CLI."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
from fastapi.testclient import TestClient
from review_helpers import defect_batch

from central_sync.accounts import hash_password, log_in, token_digest
from central_sync.cli import main
from central_sync.config import load_central_config
from central_sync.db import CentralDB
from central_sync.db.accounts import UserExists
from central_sync.db.review import DefectFilter, UnknownDefect
from central_sync.web import create_app

PASSWORD = "correct horse battery"


def test_defects_are_projected_at_ingest_and_paged_newest_first_each_once(
        db: CentralDB) -> None:
    db.store_batch(defect_batch("gw-1", range(1, 61)))
    db.store_batch(defect_batch("gw-2", range(1, 41), camera="edge-camera"))
    db.store_batch(defect_batch("gw-1", range(1, 61)))  # again: kept once
    seen, after = [], None
    while page := db.list_defects(DefectFilter(), 17, after):
        seen += [(d.device_id, d.seq) for d in page]
        after = (page[-1].created_at, page[-1].device_id, page[-1].seq)
    assert len(seen) == len(set(seen)) == 100
    assert seen[:3] == [("gw-1", 60), ("gw-1", 59), ("gw-1", 58)]
    assert seen[20:23] == [("gw-2", 40), ("gw-1", 40), ("gw-2", 39)]  # same time: by device


def test_filters_narrow_the_grid(db: CentralDB) -> None:
    db.store_batch(defect_batch("gw-1", range(1, 31)))
    db.store_batch(defect_batch("gw-2", range(1, 31), camera="edge-camera"))
    pits = db.list_defects(DefectFilter(label="pit"), 100)
    assert pits and {d.label for d in pits} == {"pit"}
    assert {d.camera for d in db.list_defects(DefectFilter(device_id="gw-2"), 100)} == \
        {"edge-camera"}
    sure = db.list_defects(DefectFilter(min_confidence=0.75), 100)
    assert sure and min(d.confidence for d in sure) >= 0.75
    assert len(db.list_defects(DefectFilter(model_version="1.1.0"), 100)) == 30
    assert len(db.list_defects(DefectFilter(since=1_800_000_021.0), 100)) == 20
    assert db.defect_choices()["camera"] == ["edge-camera", "strip-camera"]


def test_labels_count_towards_precision_and_are_audited(db: CentralDB) -> None:
    db.store_batch(defect_batch("gw-1", range(1, 13)))  # scratch, pit, stain in turn
    for seq in (3, 6, 9):
        db.label_defect("gw-1", seq, "confirmed", by="anna")  # scratch
    db.label_defect("gw-1", 12, "false_alarm", by="anna")
    relabelled = db.label_defect("gw-1", 1, "relabelled", by="ben", true_label="stain")
    assert (relabelled.verdict, relabelled.true_label, relabelled.final_label,
            relabelled.labelled_by) == ("relabelled", "stain", "stain", "ben")
    summary = db.defect_summary(DefectFilter())
    assert (summary["total"], summary["reviewed"]) == (12, 5)
    assert summary["precision"]["scratch"] == pytest.approx(3 / 4)
    assert summary["precision"]["pit"] == 0.0
    unreviewed = db.list_defects(DefectFilter(verdict="unreviewed"), 100)
    assert len(unreviewed) == 7
    entries = [e for e in db.list_audit() if e["action"] == "defect.label"]
    assert {(e["actor"], e["subject"], e["detail"]) for e in entries} >= {
        ("ben", "gw-1/1", "relabelled as stain"), ("anna", "gw-1/12", "false_alarm")}
    with pytest.raises(UnknownDefect):
        db.label_defect("gw-9", 1, "confirmed", by="anna")
    with pytest.raises(ValueError, match="needs the true class"):
        db.label_defect("gw-1", 2, "relabelled", by="anna")


def test_logins_sessions_and_roles(db: CentralDB) -> None:
    db.add_user("anna", hash_password(PASSWORD), "quality", by="admin")
    with pytest.raises(UserExists):
        db.add_user("anna", hash_password(PASSWORD), "viewer", by="admin")
    with pytest.raises(ValueError, match="at least 10 characters"):
        hash_password("short")
    assert log_in(db, "anna", "wrong password!") is None
    assert log_in(db, "nobody", PASSWORD) is None
    token, session = log_in(db, "anna", PASSWORD)  # type: ignore[misc]
    assert session.user.may("quality") and not session.user.may("engineer")
    assert db.session(token_digest(token)) == session
    assert db.session(token_digest(token), now=session.expires_at + 1) is None
    db.update_user("anna", "admin", password_hash=hash_password("another long one"))
    assert db.session(token_digest(token)) is None  # a new password ends the sessions
    db.update_user("anna", "admin", disabled=True)
    assert log_in(db, "anna", "another long one") is None
    assert "user.disable" in [e["action"] for e in db.list_audit()]


@pytest.fixture
def web(db: CentralDB) -> TestClient:
    db.store_batch(defect_batch("gw-1", range(1, 8)))
    for name, role in (("anna", "quality"), ("vic", "viewer")):
        db.add_user(name, hash_password(PASSWORD), role, by="admin")
    return TestClient(create_app(db, offline_after_s=120))


def logged_in(client: TestClient, user: str) -> str:
    """Log in through the form; returns the page's CSRF token."""
    reply = client.post("/login", data={"username": user, "password": PASSWORD,
                                        "next": "/review"})
    assert reply.status_code == 200 and "Defect review" in reply.text
    return reply.text.split('data-csrf="')[1].split('"')[0]


def test_review_page_needs_a_login_and_labels_need_the_quality_role_and_csrf(
        web: TestClient, db: CentralDB) -> None:
    reply = web.get("/review?label=pit", follow_redirects=False)
    assert reply.status_code == 303
    assert reply.headers["location"] == "/login?next=%2Freview%3Flabel%3Dpit"
    assert "wrong user name" in web.post("/login", data={
        "username": "anna", "password": "nope nope nope"}).text
    csrf = logged_in(web, "anna")
    assert "set-cookie" not in web.get("/review").headers
    url = "/api/defects/gw-1/3/label"
    assert web.post(url, json={"verdict": "confirmed"}).status_code == 403  # no CSRF token
    reply = web.post(url, json={"verdict": "confirmed"}, headers={"X-CSRF-Token": csrf})
    assert reply.status_code == 200 and reply.json()["labelled_by"] == "anna"
    assert web.post("/api/defects/gw-1/99/label", json={"verdict": "confirmed"},
                    headers={"X-CSRF-Token": csrf}).status_code == 404
    assert web.post(url, json={"verdict": "maybe"},
                    headers={"X-CSRF-Token": csrf}).status_code == 422
    viewer = TestClient(web.app)
    assert logged_in(viewer, "vic") == ""  # the page gives a viewer nothing to label with
    assert viewer.post(url, json={"verdict": "false_alarm"},
                       headers={"X-CSRF-Token": "x"}).status_code == 403
    assert db.get_defect("gw-1", 3).verdict == "confirmed"  # type: ignore[union-attr]


def test_export_zips_the_labelled_defects_with_their_images_and_a_manifest(
        web: TestClient, db: CentralDB) -> None:
    db.label_defect("gw-1", 3, "confirmed", by="anna")  # a scratch
    db.label_defect("gw-1", 4, "relabelled", by="anna", true_label="stain")
    logged_in(web, "anna")
    reply = web.get("/review/export")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(reply.content))
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert [(r["seq"], r["final_label"]) for r in rows] == [("4", "stain"), ("3", "scratch")]
    assert json.loads(archive.read("manifest.json"))[0]["verdict"] == "relabelled"
    assert archive.read(rows[0]["image"])[:2] == b"\xff\xd8"  # a JPEG
    assert any(e["action"] == "defect.export" for e in db.list_audit())


def test_users_cli_adds_lists_and_changes_accounts_as_an_admin(
        config_file, onnx_file, capsys, monkeypatch) -> None:
    monkeypatch.setenv("REVIEW_PASSWORD", PASSWORD)
    config = ["-c", str(config_file)]
    add_anna = ["users", "add", "anna", "--role", "quality", "--password-env",
                "REVIEW_PASSWORD", *config]
    assert main(add_anna) == 2
    assert "the first account must be an admin" in capsys.readouterr().err
    assert main(["users", "add", "root", "--role", "admin", "--password-env",
                 "REVIEW_PASSWORD", *config]) == 0
    assert main(add_anna) == 2  # from now on the CLI logs in
    assert "set CENTRAL_SYNC_USER and CENTRAL_SYNC_PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv("CENTRAL_SYNC_USER", "root")
    monkeypatch.setenv("CENTRAL_SYNC_PASSWORD", "not the password")
    assert main(add_anna) == 2
    assert "not an active account of central" in capsys.readouterr().err
    monkeypatch.setenv("CENTRAL_SYNC_PASSWORD", PASSWORD)
    assert main(add_anna) == 0
    assert main(add_anna) == 2 and "exists" in capsys.readouterr().err
    assert main(["users", "disable", "anna", *config]) == 0
    assert main(["users", "list", *config]) == 0
    out = capsys.readouterr().out
    assert "anna" in out and "quality" in out and "disabled" in out
    monkeypatch.setenv("SHORT", "short")
    assert main(["users", "add", "ben", "--password-env", "SHORT", *config]) == 2
    assert "at least 10 characters" in capsys.readouterr().err

    # changing commands need an engineer once there are accounts
    assert main(["users", "add", "qa", "--role", "quality", "--password-env",
                 "REVIEW_PASSWORD", *config]) == 0
    publish = ["model", "publish", str(onnx_file), "--name", "scrap-model", "--version",
               "1.0.0", *config]
    monkeypatch.setenv("CENTRAL_SYNC_USER", "qa")
    assert main(publish) == 2
    assert "qa is a quality; this needs the engineer role" in capsys.readouterr().err
    monkeypatch.setenv("CENTRAL_SYNC_USER", "root")
    assert main(["users", "role", "qa", "engineer", *config]) == 0
    monkeypatch.setenv("CENTRAL_SYNC_USER", "qa")
    assert main(publish) == 0
    db = CentralDB(load_central_config(config_file).database_url)
    assert db.list_models()[0].published_by == "qa"
    assert {("root", "user.role", "qa")} <= {(e["actor"], e["action"], e["subject"])
                                             for e in db.list_audit()}
    db.close()


def test_defect_rate_counts_each_class_per_hour_up_to_the_newest(db: CentralDB) -> None:
    db.store_batch(defect_batch("gw-1", range(1, 13)))  # 12 defects, one a second
    since, rows = db.defect_rate(DefectFilter(), bucket_s=3600, buckets=48)
    assert since + 47 * 3600 <= 1_800_000_012.0 < since + 48 * 3600
    assert {(r["bucket"], r["label"]): r["n"] for r in rows} == {
        (47, "scratch"): 4, (47, "pit"): 4, (47, "stain"): 4}
    assert db.defect_rate(DefectFilter(label="pit"), 3600, 48)[1] == [
        {"bucket": 47, "label": "pit", "n": 4}]
    assert db.defect_rate(DefectFilter(device_id="nobody"), 3600, 48) == (0.0, [])
