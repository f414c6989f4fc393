"""Once central has accounts, its JSON API and /metrics need a login or an API token;
/healthz stays open for liveness probes."""

from __future__ import annotations

from pathlib import Path

from central_helpers import write_config
from fastapi.testclient import TestClient

from central_sync.accounts import hash_password
from central_sync.cli import main
from central_sync.db import CentralDB
from central_sync.web import create_app

PASSWORD = "correct horse battery"
READ_ONLY = ("/api/devices", "/api/predictions", "/api/records?type=defect", "/api/models",
             "/api/records/gw1/1/images/evidence", "/metrics")


def test_api_is_open_only_before_the_first_account(db: CentralDB) -> None:
    site = TestClient(create_app(db, offline_after_s=120))
    assert site.get("/api/devices").status_code == 200
    db.add_user("otto", hash_password(PASSWORD), "viewer", by="admin")
    for url in READ_ONLY:
        reply = site.get(url)
        assert reply.status_code == 401, url
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert "central-sync users token" in reply.json()["detail"]
    assert site.get("/healthz").status_code == 200
    assert site.get("/api/devices", headers={"Authorization": "Bearer guessed"}
                    ).status_code == 401

    site.post("/login", data={"username": "otto", "password": PASSWORD})
    assert site.get("/api/devices").status_code == 200
    assert site.get("/metrics").status_code == 200


def test_api_tokens_from_the_cli(tmp_path: Path, database_url: str, capsys,
                                 monkeypatch) -> None:
    config = write_config(tmp_path, database_url=database_url)
    db = CentralDB(database_url)
    db.add_user("admin", hash_password(PASSWORD), "admin", by="setup")
    db.add_user("grafana", hash_password(PASSWORD), "viewer", by="admin")
    monkeypatch.setenv("CENTRAL_SYNC_USER", "admin")
    monkeypatch.setenv("CENTRAL_SYNC_PASSWORD", PASSWORD)
    assert main(["users", "token", "grafana", "--days", "1", "-c", str(config)]) == 0
    token = capsys.readouterr().out.strip()
    site = TestClient(create_app(db, offline_after_s=120))
    bearer = {"Authorization": f"Bearer {token}"}
    assert site.get("/api/devices", headers=bearer).status_code == 200
    assert site.get("/metrics", headers=bearer).status_code == 200
    assert ("user.token", "grafana") in [(e["action"], e["subject"]) for e in db.list_audit()]

    monkeypatch.setenv("CENTRAL_SYNC_USER", "grafana")  # only an admin makes tokens
    assert main(["users", "token", "grafana", "-c", str(config)]) == 2
    assert "needs the admin role" in capsys.readouterr().err
    monkeypatch.setenv("CENTRAL_SYNC_USER", "admin")
    assert main(["users", "disable", "grafana", "-c", str(config)]) == 0
    assert site.get("/api/devices", headers=bearer).status_code == 401  # disabling ends it
    assert main(["users", "token", "grafana", "-c", str(config)]) == 2
    db.close()
