"""Acting from central's model pages: publish a version from the browser's upload form,
approve or reject it after its evaluation, start its rollout. Every action needs the engineer
role and the session's CSRF token, and a bad upload is answered on the page with the
registry's own words."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import select
import socket
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from central_helpers import free_port
from evaluation_helpers import VISION_METADATA, VISION_MODEL, freeze_samples
from fastapi.testclient import TestClient
from model_page_helpers import PASSWORD, add_evaluation, add_users, csrf_of, model_files

from central_sync import accounts
from central_sync.config import CentralConfig, ModelsConfig
from central_sync.db import CentralDB
from central_sync.service import web_model_actions
from central_sync.web import create_app
from central_sync.web.auth import COOKIE
from central_sync.web.models import ModelActions
from edge_agent.kernel.httpserver import WebServer
from tests.helpers import wait_until

# What is tested here is the web layer; the database's part runs on both in the db tests.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def actions(central_config: CentralConfig) -> ModelActions:
    config = central_config.model_copy(update={"models": ModelsConfig(require_approval=True)})
    return web_model_actions(config, config.signer())


@pytest.fixture
def site(db: CentralDB, actions: ModelActions) -> Iterator[TestClient]:
    add_users(db, erin="engineer", bob="engineer", quinn="quality", ada="admin")
    with TestClient(create_app(db, 120, model_actions=actions), follow_redirects=False) as client:
        yield client


def log_in(site: TestClient, user: str) -> str:
    """Log `user` in; the session's CSRF token, as the pages carry it."""
    site.cookies.clear()
    assert site.post("/login", data={"username": user, "password": PASSWORD}).status_code == 303
    return csrf_of(site.get("/models").text)


def publish(site: TestClient, files: tuple[Path, Path], csrf: str | None,
            **fields: str) -> object:
    model, metadata = files
    data = ({"csrf": csrf} if csrf is not None else {}) | fields
    return site.post("/models", data=data, files={
        "model": (model.name, model.read_bytes(), "application/octet-stream"),
        "metadata": (metadata.name, metadata.read_bytes(), "application/json")})


def page_when(site: TestClient, url: str, ready: Callable[[str], bool]) -> str:
    """The page at `url` once `ready` holds for its text (an evaluation runs in the
    background)."""
    def page() -> str | None:
        text = site.get(url).text
        return text if ready(text) else None

    return wait_until(page, what=f"{url} to be ready")


def test_engineer_publishes_a_version_from_the_upload_form(
        site: TestClient, db: CentralDB, actions: ModelActions, tmp_path: Path) -> None:
    csrf = log_in(site, "erin")
    assert 'enctype="multipart/form-data"' in site.get("/models").text
    reply = publish(site, model_files(tmp_path), csrf, code_revision="a1b2c3d",
                    notes="first web upload")
    assert reply.status_code == 303
    assert reply.headers["location"] == "/models/scrap-model/1.0.0?done=published"
    manifest = db.get_model("scrap-model", "1.0.0")
    assert manifest is not None and manifest.key_id == actions.signer.key_id
    assert manifest.meta.lineage.code_revision == "a1b2c3d"  # type: ignore[union-attr]
    assert db.model_state("scrap-model", "1.0.0").state == "published"  # type: ignore[union-attr]
    assert (actions.artifact_dir / f"{manifest.sha256}.onnx").exists()
    assert list((actions.artifact_dir / ".uploads").iterdir()) == []  # nothing left behind
    page = site.get(reply.headers["location"]).text
    assert "Published." in page and "a1b2c3d" in page and 'id="model-state"' in page
    published = [e for e in db.list_audit() if e["action"] == "model.publish"]
    assert [(e["actor"], e["subject"]) for e in published] == [("erin", "scrap-model@1.0.0")]


def test_bad_metadata_is_answered_on_the_page_with_the_registry_message(
        site: TestClient, db: CentralDB, tmp_path: Path) -> None:
    csrf = log_in(site, "erin")
    model, metadata = model_files(tmp_path)
    metadata.write_text("{not json")
    reply = publish(site, (model, metadata), csrf)
    assert reply.status_code == 422
    assert "metadata file scrap.json is not readable JSON" in reply.text
    assert str(tmp_path) not in reply.text and ".uploads" not in reply.text
    model, metadata = model_files(tmp_path, golden={"input": [[1, 2, 3]], "output": [[7]]})
    reply = publish(site, (model, metadata), csrf)
    assert reply.status_code == 422
    assert "golden input gives [6.0], the metadata&#39;s golden.output is [7.0]" in reply.text
    assert 'role="alert"' in reply.text and db.list_models() == []


def test_only_an_onnx_file_and_a_json_file_are_taken(site: TestClient, db: CentralDB,
                                                     tmp_path: Path) -> None:
    csrf = log_in(site, "erin")
    model, metadata = model_files(tmp_path)
    renamed = model.rename(tmp_path / "scrap.exe")
    reply = publish(site, (renamed, metadata), csrf)
    assert reply.status_code == 422
    assert "the model file must be a .onnx file, got &#39;scrap.exe&#39;" in reply.text
    reply = site.post("/models", data={"csrf": csrf, "name": "x"})  # no file at all
    assert reply.status_code == 415 and db.list_models() == []


def test_publishing_needs_the_engineer_role_and_the_csrf_token(
        site: TestClient, db: CentralDB, tmp_path: Path) -> None:
    files = model_files(tmp_path)
    assert publish(site, files, "anything").status_code == 401  # nobody logged in
    csrf = log_in(site, "quinn")
    assert "Publish a version" not in site.get("/models").text
    refused = publish(site, files, csrf)
    assert refused.status_code == 403 and "needs the engineer or admin role" in refused.text
    log_in(site, "erin")
    # A form another site makes the browser send: the cookie, but not the page's token.
    forged = publish(site, files, None, name="scrap-model", version="6.6.6")
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert publish(site, files, "not-the-token").status_code == 403
    assert db.list_models() == []


def test_approve_after_the_evaluation_by_a_second_engineer_only(
        site: TestClient, db: CentralDB, tmp_path: Path) -> None:
    publish(site, model_files(tmp_path), log_in(site, "erin"))
    csrf = log_in(site, "bob")
    early = site.post("/models/scrap-model/1.0.0/approve", data={"csrf": csrf})
    assert early.status_code == 409 and "evaluate it first" in early.text
    evaluation = add_evaluation(db, "scrap-model", "1.0.0")
    csrf = log_in(site, "erin")
    page = site.get("/models/scrap-model/1.0.0").text
    assert 'id="approve" disabled' in page
    assert "you published this version: another engineer or admin approves it" in page
    own = site.post("/models/scrap-model/1.0.0/approve", data={"csrf": csrf})
    assert own.status_code == 409 and "cannot also approve it" in own.text
    csrf = log_in(site, "bob")
    assert site.post("/models/scrap-model/1.0.0/approve", data={}).status_code == 403
    page = site.get("/models/scrap-model/1.0.0").text
    assert 'id="approve" disabled' not in page
    assert "<li>classes the candidate does not know: dent (always counted wrong)</li>" in page
    approved = site.post("/models/scrap-model/1.0.0/approve", data={"csrf": csrf})
    assert approved.status_code == 303 and approved.headers["location"].endswith("done=approved")
    state = db.model_state("scrap-model", "1.0.0")
    assert state is not None and (state.state, state.approved_by) == ("approved", "bob")
    assert state.evaluation_id == evaluation.evaluation_id
    page = site.get(approved.headers["location"]).text
    assert "Approved: it may now be rolled out." in page and "by bob" in page
    assert [e["actor"] for e in db.list_audit() if e["action"] == "model.approve"] == ["bob"]


def test_reject_with_a_reason(site: TestClient, db: CentralDB, tmp_path: Path) -> None:
    publish(site, model_files(tmp_path), log_in(site, "erin"))
    csrf = log_in(site, "quinn")
    assert site.post("/models/scrap-model/1.0.0/reject",
                     data={"csrf": csrf, "reason": "no"}).status_code == 403
    csrf = log_in(site, "ada")
    empty = site.post("/models/scrap-model/1.0.0/reject", data={"csrf": csrf, "reason": " "})
    assert empty.status_code == 409 and "say why" in empty.text
    rejected = site.post("/models/scrap-model/1.0.0/reject",
                         data={"csrf": csrf, "reason": "misses fine scratches on line 3"})
    assert rejected.status_code == 303
    page = site.get("/models/scrap-model/1.0.0").text
    assert "Rejected by ada: misses fine scratches on line 3" in page
    assert 'id="approve" disabled' in page and "it is rejected" in page


def test_rollout_starts_only_when_approved_and_leads_to_its_page(
        site: TestClient, db: CentralDB, tmp_path: Path) -> None:
    publish(site, model_files(tmp_path), log_in(site, "erin"))
    form = {"devices": "gw-1,gw-2", "canary": "0", "waves": "50%,100%",
            "success_ratio": "1.0", "wave_timeout_s": "600"}
    csrf = log_in(site, "bob")
    refused = site.post("/models/scrap-model/1.0.0/rollout", data={"csrf": csrf, **form})
    assert refused.status_code == 409
    assert "scrap-model@1.0.0 is published, not evaluated" in refused.text
    add_evaluation(db, "scrap-model", "1.0.0")
    site.post("/models/scrap-model/1.0.0/approve", data={"csrf": csrf})
    bad = site.post("/models/scrap-model/1.0.0/rollout",
                    data={"csrf": csrf, **form, "waves": "50%"})
    assert bad.status_code == 409 and "must grow and end at 100%" in bad.text
    assert site.post("/models/scrap-model/1.0.0/rollout", data=form).status_code == 403
    started = site.post("/models/scrap-model/1.0.0/rollout", data={"csrf": csrf, **form})
    assert started.status_code == 303
    rollout_id = started.headers["location"].rsplit("/", 1)[1]
    rollout = db.get_rollout(rollout_id)
    assert rollout is not None and (rollout.created_by, rollout.waves) == ("bob", 2)
    assert rollout.target == "devices gw-1, gw-2"
    assert f'href="/rollouts/{rollout_id}"' in site.get("/models/scrap-model/1.0.0").text
    assert "gw-2" in site.get(started.headers["location"]).text


def test_a_version_published_with_a_dataset_is_evaluated_and_its_report_shown(
        site: TestClient, db: CentralDB) -> None:
    dataset = freeze_samples(db)
    csrf = log_in(site, "erin")
    reply = publish(site, (VISION_MODEL, VISION_METADATA), csrf, name="surface-defects",
                    version="1.1.0", dataset=dataset.ref)
    assert reply.status_code == 303
    assert reply.headers["location"] == "/models/surface-defects/1.1.0?done=evaluating"
    evaluation = wait_until(lambda: db.list_evaluations("surface-defects", "1.1.0"),
                            what="the evaluation the publish queued")[0]
    assert (evaluation.dataset, evaluation.created_by) == (dataset.ref, "erin")
    lineage = db.get_model("surface-defects", "1.1.0").meta.lineage  # type: ignore[union-attr]
    assert (lineage.dataset, lineage.dataset_id) == (dataset.ref, dataset.dataset_id)  # type: ignore[union-attr]
    page = page_when(site, "/models/surface-defects/1.1.0", lambda text: "Evaluating" not in text)
    assert 'id="report-table"' in page and "<th>scratch</th>" in page
    assert 'id="model-state" class="model-state evaluated"' in page
    assert evaluation.evaluation_id in page and "No version was in production" in page


def test_evaluating_asks_for_an_existing_dataset_the_role_and_the_token(
        site: TestClient, db: CentralDB, tmp_path: Path) -> None:
    publish(site, model_files(tmp_path), log_in(site, "erin"))
    url = "/models/scrap-model/1.0.0/evaluate"
    csrf = log_in(site, "quinn")
    assert site.post(url, data={"csrf": csrf}).status_code == 403
    csrf = log_in(site, "bob")
    assert site.post(url, data={"dataset": "surface-labels@1"}).status_code == 403
    unknown = site.post(url, data={"csrf": csrf, "dataset": "surface-labels@1"})
    assert unknown.status_code == 422 and "no dataset version surface-labels@1" in unknown.text
    malformed = site.post(url, data={"csrf": csrf, "dataset": "surface-labels"})
    assert malformed.status_code == 422 and "is not NAME@VERSION" in malformed.text
    dataset = freeze_samples(db)  # a process model is measured on the line, not on images
    queued = site.post(url, data={"csrf": csrf, "dataset": dataset.ref})
    assert queued.status_code == 303
    page = page_when(site, "/models/scrap-model/1.0.0", lambda text: "Evaluation failed" in text)
    assert "scrap-model is a process model" in page
    assert db.list_evaluations("scrap-model", "1.0.0") == []


def test_oversize_declared_upload_is_refused_before_reading(
        db: CentralDB, actions: ModelActions, tmp_path: Path) -> None:
    add_users(db, erin="engineer")
    small = dataclasses.replace(actions, max_upload_bytes=2**20)
    with TestClient(create_app(db, 120, model_actions=small), follow_redirects=False) as site:
        csrf = log_in(site, "erin")
        reply = site.post("/models", content=b"x" * 10, headers={
            "content-type": "multipart/form-data; boundary=b", "content-length": str(2**30)})
        assert reply.status_code == 413
        assert "larger than 1 MiB" in reply.text and "web.max_upload_bytes" in reply.text
        assert csrf in reply.text  # the page again, with its form


@contextlib.contextmanager
def served(app: Any, body_limits: dict[str, int]) -> Iterator[int]:
    """The app on a free port of a real web server (uvicorn), as `serve` runs it."""
    port, loop = free_port(), asyncio.new_event_loop()
    server = WebServer(app, "127.0.0.1", port, body_limits=body_limits)
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


BOUNDARY = "b0undary"


def request_head(cookie: str, length: str) -> bytes:
    return (f"POST /models HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {COOKIE}={cookie}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{length}\r\n\r\n"
            ).encode()


def upload_head(csrf: str) -> bytes:
    """The form up to the model file's first byte: the CSRF token, then the file's header."""
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"; "
            "filename=\"big.onnx\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()


def read_reply(sock: socket.socket) -> bytes:
    reply = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def stream_upload(port: int, cookie: str, csrf: str, total_bytes: int) -> tuple[int, bytes]:
    """POST an upload of `total_bytes` of model in chunks (no Content-Length), as long as
    the server reads; (bytes sent, the server's reply)."""
    head = upload_head(csrf)
    block = b"\0" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request_head(cookie, "Transfer-Encoding: chunked"))
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for piece in [head] + [block] * (total_bytes // len(block)):
                if select.select([sock], [], [], 0)[0]:
                    break  # the server answered: it reads no further
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
        return sent, read_reply(sock)


def test_oversize_streamed_upload_is_cut_off_as_it_streams_in_flat_memory(
        db: CentralDB, actions: ModelActions) -> None:
    add_users(db, erin="engineer")
    small = dataclasses.replace(actions, max_upload_bytes=2**20)
    opened = accounts.log_in(db, "erin", PASSWORD)
    assert opened is not None
    token, session = opened
    with served(create_app(db, 120, model_actions=small), small.body_limits) as port:
        tracemalloc.start()
        try:
            sent, reply = stream_upload(port, token, session.csrf, 256 * 2**20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"larger than 1 MiB" in reply and b"web.max_upload_bytes" in reply
    assert sent < 32 * 2**20  # refused at 1 MiB; the rest of 256 MiB was never sent
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MiB held while refusing"
    assert list((small.artifact_dir / ".uploads").iterdir()) == []
    assert db.list_models() == []


def test_an_upload_that_stalls_is_given_up_after_its_time(
        db: CentralDB, actions: ModelActions) -> None:
    add_users(db, erin="engineer")
    quick = dataclasses.replace(actions, upload_timeout_s=0.5)
    opened = accounts.log_in(db, "erin", PASSWORD)
    assert opened is not None
    with (served(create_app(db, 120, model_actions=quick), quick.body_limits) as port,
          socket.create_connection(("127.0.0.1", port), timeout=20) as sock):
        sock.sendall(request_head(opened[0], "Content-Length: 100000"))
        sock.sendall(upload_head(opened[1].csrf) + b"\0" * 1000)  # then nothing more
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"the upload took longer than 0.5 s" in reply
    assert list((quick.artifact_dir / ".uploads").iterdir()) == []


def test_a_forged_upload_is_refused_at_its_first_file_byte(
        db: CentralDB, actions: ModelActions) -> None:
    add_users(db, erin="engineer")
    opened = accounts.log_in(db, "erin", PASSWORD)
    assert opened is not None
    with served(create_app(db, 120, model_actions=actions), actions.body_limits) as port:
        sent, reply = stream_upload(port, opened[0], "not-the-token", 128 * 2**20)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:200]
    assert b"missing or wrong CSRF token" in reply
    assert sent < 32 * 2**20  # within a 512 MiB limit, yet not read on
    assert db.list_models() == []
