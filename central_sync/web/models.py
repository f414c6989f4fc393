"""Central's model pages, where people act: publish a version from the browser, read its
evaluation beside production's, approve or reject it, start its rollout and follow it.

Every action needs the engineer role (or admin) and the session's CSRF token (the form's
`csrf` field or an X-CSRF-Token header), checked before a form is read any further; the
database audits each step. Forms are read only after the login is checked, and bounded: an
upload streams to disk (web/uploads.py), other forms are at most FORM_MAX_BYTES.
"""


import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from central_sync.accounts import csrf_ok
from central_sync.config import WebConfig
from central_sync.db import CentralDB, Rollout
from central_sync.db.accounts import Session
from central_sync.db.model_states import ModelStateError
from central_sync.registry import DEFAULT_CHUNK_SIZE_BYTES
from central_sync.web.auth import checked_form, engineer_dependency, session_dependencies
from central_sync.web.evaluation_queue import EvaluationQueue, QueueFull
from central_sync.web.model_pages import model_page, models_page, version_page
from central_sync.web.publishing import UploadedVersion, publish_upload, read_version_upload
from central_sync.web.uploads import UploadRefused
from edge_agent.kernel.signing import Signer

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES: int = WebConfig.model_fields["max_upload_bytes"].default
UPLOAD_TIMEOUT_S = 900.0  # a 512 MiB upload at 5 Mbit/s
UPLOADS_AT_ONCE = 2  # each may put max_upload_bytes on disk until it is published
FORM_MAX_BYTES = 16 * 1024
UPLOAD_PATH = "/models"
UPLOAD_BACKSTOP_MARGIN_BYTES = 8 * 2**20
# What ?done= may say on a version page: a code from this list, never text from the link.
DONE = {"published": "Published.", "evaluating": "Evaluation queued.",
        "approved": "Approved: it may now be rolled out.", "rejected": "Rejected."}


class RolloutRefused(Exception):
    """A rollout cannot be started; the message says why and what to do."""


@dataclass(frozen=True)
class RolloutRequest:
    """The rollout form: what `central-sync rollout start` takes."""

    devices: list[str]
    target: str  # for people: "group line-3", "devices a, b"
    canary: int
    canary_devices: list[str]
    waves: str
    success_ratio: float
    wave_timeout_s: float


# (db, name, version, request, started_by) -> the recorded rollout, or RolloutRefused.
StartRollout = Callable[[CentralDB, str, str, RolloutRequest, str], Rollout]
# (db, name, version, dataset ref or None, by) -> stores an evaluation, or raises.
Evaluate = Callable[[CentralDB, str, str, str | None, str], object]


@dataclass(frozen=True)
class ModelActions:
    """What acting from the model pages needs besides the database; central_sync.service
    builds it from central's configuration (rollouts sit beside the web app, so the service
    hands their start in)."""

    artifact_dir: Path
    signer: Signer
    start_rollout: StartRollout
    evaluate: Evaluate | None = None  # None: this central does not evaluate from the page
    evaluation_errors: tuple[type[Exception], ...] = ()  # refusals shown as they are
    require_approval: bool = True  # central's models.require_approval
    chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    upload_timeout_s: float = UPLOAD_TIMEOUT_S

    @property
    def body_limits(self) -> dict[str, int]:
        """For the web server: the upload's path reads a larger body than other requests,
        and refuses one over max_upload_bytes itself (with its page); the server's cut-off
        lies past that by more than the server hands on at once, should the page read on."""
        return {UPLOAD_PATH: self.max_upload_bytes + UPLOAD_BACKSTOP_MARGIN_BYTES}


def models_router(db: CentralDB, actions: ModelActions | None) -> APIRouter:
    """/models, /models/NAME, /models/NAME/VERSION and their actions. Without `actions` the
    pages only show (a bare app in tests); the actions answer 503."""
    router = APIRouter()
    session_of, viewer, _ = session_dependencies(db)
    desk = _Desk(db, actions)
    page = Annotated[Session, Depends(viewer)]
    engineer = Annotated[Session, Depends(engineer_dependency(session_of))]

    @router.get("/models", response_class=HTMLResponse)
    def models(session: page) -> HTMLResponse:
        return desk.models_page(session)

    @router.get("/models/{name}", response_class=HTMLResponse)
    def model(name: str, session: page) -> str:
        return model_page(db, session, name)

    @router.get("/models/{name}/{version}", response_class=HTMLResponse)
    def version(name: str, version: str, session: page, done: str = "") -> HTMLResponse:
        return desk.version_page(session, name, version, done=done)

    @router.post(UPLOAD_PATH)
    async def publish(request: Request, session: engineer) -> Response:
        return await desk.publish(request, session)

    _add_review_routes(router, desk, engineer)
    return router


def _add_review_routes(router: APIRouter, desk: "_Desk", engineer: Any) -> None:
    """The version page's forms: evaluate, approve, reject, start a rollout."""

    @router.post("/models/{name}/{version}/evaluate")
    async def evaluate(name: str, version: str, request: Request,
                       session: engineer) -> Response:
        form = await _small_form(request, session)
        return await run_in_threadpool(desk.evaluate, session, name, version,
                                       form.get("dataset") or None)

    @router.post("/models/{name}/{version}/approve")
    async def approve(name: str, version: str, request: Request,
                      session: engineer) -> Response:
        await _small_form(request, session)
        return await run_in_threadpool(
            desk.review_step, session, name, version, "approved",
            lambda: desk.db.approve_model(name, version, session.user.username))

    @router.post("/models/{name}/{version}/reject")
    async def reject(name: str, version: str, request: Request,
                     session: engineer) -> Response:
        form = await _small_form(request, session)
        return await run_in_threadpool(
            desk.review_step, session, name, version, "rejected",
            lambda: desk.db.reject_model(name, version, session.user.username,
                                         form.get("reason", "")))

    @router.post("/models/{name}/{version}/rollout")
    async def rollout(name: str, version: str, request: Request,
                      session: engineer) -> Response:
        form = await _small_form(request, session)
        return await run_in_threadpool(desk.start_rollout, session, name, version, form)


class _Desk:
    """What the model pages act with: the database, what central gave them to act, the
    evaluation queue and the uploads under way. Its methods run in worker threads, except
    `publish`, which streams the upload on the event loop."""

    def __init__(self, db: CentralDB, actions: ModelActions | None) -> None:
        self.db = db
        self.actions = actions
        evaluate = actions.evaluate if actions else None
        self.queue = EvaluationQueue(
            lambda name, version, dataset, by: evaluate(db, name, version, dataset, by),
            (ModelStateError, *actions.evaluation_errors)
        ) if actions and evaluate else None
        self.uploads_under_way = 0  # changed on the event loop only

    def _actions(self, what: str) -> ModelActions:
        if self.actions is None:
            raise HTTPException(503, f"{what} is not set up on this central")
        return self.actions

    def models_page(self, session: Session, error: str = "",
                    status: int = 200) -> HTMLResponse:
        limit = self.actions.max_upload_bytes if self.actions else None
        return HTMLResponse(models_page(self.db, session, limit, error=error), status)

    def version_page(self, session: Session, name: str, version: str, error: str = "",
                     status: int = 200, done: str = "") -> HTMLResponse:
        return HTMLResponse(version_page(
            self.db, session, name, version, may_act=self.actions is not None,
            may_evaluate=self.queue is not None,
            require_approval=self.actions.require_approval if self.actions else True,
            error=error, done=DONE.get(done, ""),
            job=self.queue.job(name, version) if self.queue else None), status)

    async def publish(self, request: Request, session: Session) -> Response:
        actions = self._actions("publishing")
        if self.uploads_under_way >= UPLOADS_AT_ONCE:
            return await run_in_threadpool(
                self.models_page, session, f"{UPLOADS_AT_ONCE} uploads are under way; try "
                "again when one has finished", 503)
        self.uploads_under_way += 1
        folder = _upload_folder(actions.artifact_dir)
        try:
            upload = await read_version_upload(
                request, folder, actions.max_upload_bytes, actions.upload_timeout_s,
                lambda fields: _require_csrf(session, request, fields))
            published = await run_in_threadpool(
                publish_upload, self.db, actions.artifact_dir, actions.signer,
                actions.chunk_size_bytes, upload, session.user.username)
        except UploadRefused as exc:
            log.warning("upload refused user=%s: %s", session.user.username, exc)
            refused = await run_in_threadpool(self.models_page, session, str(exc), exc.status)
            # The rest of a refused body is not read: the connection cannot carry another.
            refused.headers["connection"] = "close"
            return refused
        finally:
            self.uploads_under_way -= 1
            await run_in_threadpool(shutil.rmtree, folder, True)
        return await run_in_threadpool(self._after_publish, published, session)

    def _after_publish(self, published: UploadedVersion, session: Session) -> Response:
        name, version = published.manifest.name, published.manifest.version
        if published.dataset is None or self.queue is None:
            return RedirectResponse(_version_url(name, version, "published"), 303)
        return self.evaluate(session, name, version, published.dataset)

    def evaluate(self, session: Session, name: str, version: str,
                 dataset: str | None) -> Response:
        if self.queue is None:
            raise HTTPException(503, "evaluating is not set up on this central")
        if self.db.get_model(name, version) is None:
            raise HTTPException(404, f"no model {name} {version}")
        unknown = _unknown_dataset(self.db, dataset)
        if unknown:
            return self.version_page(session, name, version, unknown, 422)
        try:
            self.queue.submit(name, version, dataset, session.user.username)
        except QueueFull as exc:
            return self.version_page(session, name, version, str(exc), 503)
        return RedirectResponse(_version_url(name, version, "evaluating"), 303)

    def review_step(self, session: Session, name: str, version: str, done: str,
                    step: Callable[[], object]) -> Response:
        try:
            step()
        except ModelStateError as exc:
            return self.version_page(session, name, version, str(exc), 409)
        return RedirectResponse(_version_url(name, version, done), 303)

    def start_rollout(self, session: Session, name: str, version: str,
                      form: dict[str, str]) -> Response:
        actions = self._actions("starting rollouts")
        try:
            wanted = rollout_request(self.db, form)
            started = actions.start_rollout(self.db, name, version, wanted,
                                            session.user.username)
        except (RolloutRefused, ModelStateError) as exc:
            return self.version_page(session, name, version, str(exc), 409)
        return RedirectResponse(f"/rollouts/{started.rollout_id}", 303)


def rollout_request(db: CentralDB, form: dict[str, str]) -> RolloutRequest:
    """The rollout form read as `central-sync rollout start` reads its options; RolloutRefused
    says which field is wrong."""
    devices = _names(form.get("devices", ""))
    groups = _names(form.get("group", ""))
    if bool(devices) == bool(groups):
        raise RolloutRefused("name the devices (a,b,c) or a group (one of them)")
    if groups:
        devices = sorted({d for label in groups for d in db.devices_labelled(label)})
        if not devices:
            raise RolloutRefused(
                f"no provisioned device has the label(s) {', '.join(groups)}; groups come "
                "from provisioning (`central-sync device label ID --add LABEL`), not from "
                "what gateways report")
    target = f"group {', '.join(groups)}" if groups else f"devices {', '.join(devices)}"
    return RolloutRequest(
        devices=devices, target=target, canary=int(_number(form, "canary", 1, int)),
        canary_devices=_names(form.get("canary_device", "")),
        waves=form.get("waves") or "100%",
        success_ratio=_number(form, "success_ratio", 1.0, float),
        wave_timeout_s=_number(form, "wave_timeout_s", 900.0, float))


def _unknown_dataset(db: CentralDB, ref: str | None) -> str:
    """Why `ref` names no dataset version ("" when it does, or when none is asked for)."""
    if ref is None:
        return ""
    try:
        found = db.find_dataset(ref)
    except ValueError as exc:
        return str(exc)
    return "" if found else f"no dataset version {ref}; `central-sync dataset list` shows them"


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _number(form: dict[str, str], key: str, default: float,
            kind: Callable[[str], Any]) -> Any:
    text = form.get(key, "").strip()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise RolloutRefused(f"{key.replace('_', ' ')} must be a number, got {text!r}") from None


def _require_csrf(session: Session, request: Request, fields: dict[str, str]) -> None:
    presented = request.headers.get("X-CSRF-Token") or fields.get("csrf")
    if not csrf_ok(session, presented):
        raise UploadRefused("missing or wrong CSRF token; reload the page and try again", 403)


async def _small_form(request: Request, session: Session) -> dict[str, str]:
    return await checked_form(request, session, FORM_MAX_BYTES)


def _upload_folder(artifact_dir: Path) -> Path:
    """A fresh folder for one upload beside the artifacts (the same disk, not /tmp, which may
    be memory)."""
    root = Path(artifact_dir) / ".uploads"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root, prefix=f"{int(time.time())}-"))


def _version_url(name: str, version: str, done: str) -> str:
    return f"/models/{quote(name)}/{quote(version)}?done={done}"
