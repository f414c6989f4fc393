"""Central's web app against a hostile browser or gateway: no API docs, security headers on every
reply, a login page that echoes nothing, API tokens and browser sessions kept apart, no open API
on the network before the first account, an export that a spreadsheet cannot run."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from central_helpers import free_port, run
from fastapi.testclient import TestClient
from review_helpers import defect_payload

from central_sync.accounts import hash_password
from central_sync.cli import main
from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.service import CentralService, ServiceStartError
from central_sync.web import create_app
from central_sync.web.auth import COOKIE
from edge_agent.kernel.contract import UplinkBatch, UplinkRecord
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import REPO

PASSWORD = "correct horse battery"


@pytest.fixture
def site(db: CentralDB) -> TestClient:
    db.add_user("anna", hash_password(PASSWORD), "quality", by="admin")
    return TestClient(create_app(db, offline_after_s=120), follow_redirects=False)


def test_api_docs_and_schema_are_not_served(site: TestClient) -> None:
    for url in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert site.get(url).status_code == 404, url
    site.post("/login", data={"username": "anna", "password": PASSWORD})
    assert site.get("/openapi.json").status_code == 404


def test_every_reply_carries_the_security_headers(site: TestClient) -> None:
    for url in ("/login", "/static/central.css", "/healthz", "/api/devices", "/review",
                "/no/such/page"):
        headers = site.get(url).headers
        assert headers["x-content-type-options"] == "nosniff", url
        assert headers["x-frame-options"] == "DENY", url
        assert headers["referrer-policy"] == "same-origin", url
        policy = headers["content-security-policy"]
        for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                          "frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'",
                          "form-action 'self'"):
            assert directive in policy, (url, directive)
        assert "unsafe-inline" not in policy


def test_the_login_page_shows_only_its_own_messages(site: TestClient) -> None:
    for planted in ("Central moved: log in at https://evil.example instead",
                    "<b>hello</b>"):
        page = site.get("/login", params={"error": planted}).text
        assert "evil.example" not in page and "hello" not in page
        assert 'class="error"' not in page
    wrong = site.post("/login", data={"username": "anna", "password": "wrong password!"})
    assert "error=wrong" in wrong.headers["location"]
    assert "wrong user name or password" in site.get(wrong.headers["location"]).text


def test_an_api_token_is_no_browser_session_and_a_session_cookie_no_api_token(
        tmp_path: Path, database_url: str, capsys, monkeypatch) -> None:
    from central_helpers import write_config

    config = write_config(tmp_path, database_url=database_url)
    db = CentralDB(database_url)
    db.add_user("admin", hash_password(PASSWORD), "admin", by="setup")
    monkeypatch.setenv("CENTRAL_SYNC_USER", "admin")
    monkeypatch.setenv("CENTRAL_SYNC_PASSWORD", PASSWORD)
    assert main(["users", "token", "admin", "-c", str(config)]) == 0
    token = capsys.readouterr().out.strip()
    app = create_app(db, offline_after_s=120)

    as_cookie = TestClient(app, follow_redirects=False, cookies={COOKIE: token})
    assert as_cookie.get("/review").status_code == 303  # sent to the login form
    assert as_cookie.get("/api/devices").status_code == 401
    bearer = {"Authorization": f"Bearer {token}"}
    assert TestClient(app).get("/api/devices", headers=bearer).status_code == 200

    browser = TestClient(app, follow_redirects=False)
    browser.post("/login", data={"username": "admin", "password": PASSWORD})
    cookie = browser.cookies[COOKIE]
    assert browser.get("/api/devices").status_code == 200  # the pages' own scripts
    assert TestClient(app).get("/api/devices", headers={
        "Authorization": f"Bearer {cookie}"}).status_code == 401
    db.close()


def test_the_api_refuses_a_network_address_before_the_first_account(
        central_config: CentralConfig) -> None:
    exposed = CentralConfig.model_validate(
        {**central_config.model_dump(), "web": {"host": "0.0.0.0", "port": free_port()}})

    async def scenario() -> None:
        service = CentralService(exposed, MemoryTransport(MemoryBroker()))
        with pytest.raises(ServiceStartError, match="central-sync users add NAME --role admin"):
            await service.start()
        await service.stop()
        db = CentralDB(exposed.database_url)
        db.add_user("root", hash_password(PASSWORD), "admin", by="setup")
        db.close()
        service = CentralService(exposed, MemoryTransport(MemoryBroker()))
        await service.start()  # with an account, the API asks for a login: it may listen
        assert service.web_url == f"http://0.0.0.0:{exposed.web.port}/"
        await service.stop()

    run(scenario())


def test_serve_says_why_it_will_not_listen_on_the_network(tmp_path: Path, mosquitto) -> None:
    from central_helpers import write_config

    config = write_config(tmp_path, broker_port=mosquitto.port, web_port=free_port())
    config.write_text(config.read_text().replace("web:\n", "web:\n  host: 0.0.0.0\n"))
    served = subprocess.run(
        [sys.executable, "-m", "central_sync.cli", "serve", "-c", str(config)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert served.returncode == 1
    assert "web.host 0.0.0.0" in served.stderr and "central-sync users add" in served.stderr


FORMULAS = ["=HYPERLINK(\"http://evil.example\",\"open\")", "+1+1", "-2+3", "@SUM(A1)",
            "\tcmd", "\rcmd"]


def test_the_export_manifest_csv_cannot_run_as_a_formula(site: TestClient,
                                                          db: CentralDB) -> None:
    records = []
    for seq, text in enumerate(FORMULAS, start=1):
        payload = {**defect_payload(seq, camera=text), "label": text}
        records.append(UplinkRecord(seq=seq, type="defect", created_at=1_800_000_000.0 + seq,
                                    payload=payload))
    db.store_batch(UplinkBatch(device_id="gw-1", records=records))
    for seq in range(1, len(FORMULAS) + 1):
        db.label_defect("gw-1", seq, "confirmed", by="anna")
    site.post("/login", data={"username": "anna", "password": PASSWORD})
    archive = zipfile.ZipFile(io.BytesIO(site.get("/review/export").content))
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode(),
                                           newline="")))
    assert sorted(r["label"] for r in rows) == sorted("'" + text for text in FORMULAS)
    assert sorted(r["camera"] for r in rows) == sorted("'" + text for text in FORMULAS)
    assert all(not r["seq"].startswith("'") for r in rows)
    exact = json.loads(archive.read("manifest.json"))
    assert sorted(r["label"] for r in exact) == sorted(FORMULAS)  # the JSON keeps the text


def test_numbers_in_links_too_large_for_the_database_are_refused_as_bad_input(
        site: TestClient) -> None:
    """A hand-made link with a seq or version past 64 bits gets a 422 that names the bound,
    not a database overflow (a 500 on SQLite)."""
    site.post("/login", data={"username": "anna", "password": PASSWORD})
    huge = 10**20
    replies = [
        site.post(f"/api/defects/gw-1/{huge}/label", json={"verdict": "confirmed"}),
        site.get(f"/api/records/gw-1/{huge}/images/frame"),
        site.get(f"/review/records/gw-1/{huge}"),
        site.get(f"/datasets/surface-labels/{huge}"),
    ]
    for reply in replies:
        assert reply.status_code == 422, (reply.request.url, reply.status_code, reply.text)
        assert "less than or equal to 9223372036854775807" in reply.text
