"""Central's sample review: the frames gateways kept for labelling, queued (unlabelled first,
least confident first, rarest class first) and labelled with the keyboard.

Viewers look, quality users label; every label carries the session's CSRF token (a header from
the page's script) and must be one of the model's classes or "ok".
"""

import logging
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from central_sync.accounts import csrf_ok
from central_sync.db import CentralDB
from central_sync.db.accounts import Session
from central_sync.db.samples import (
    OK_LABEL,
    REASONS,
    LabelRefused,
    Sample,
    SampleCursor,
    SampleFilter,
    UnknownSample,
)
from central_sync.web.auth import api_reader, session_dependencies
from central_sync.web.rendering import templates
from edge_agent.kernel.contract import ID_PATTERN

log = logging.getLogger(__name__)

PAGE_SIZE = 48
MAX_FILTER_CHARS = 128  # a class, camera or version longer than this is no real one
MAX_CURSOR_CHARS = 256
MAX_SEQ = 2**63 - 1  # seqs are 64-bit in both databases
TEXT_FILTERS = ("device_id", "camera", "label", "model_version")
STATES = {"": None, "unlabelled": False, "labelled": True}  # the "review" menu


class SampleLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    true_label: str = Field(min_length=1, max_length=MAX_FILTER_CHARS,
                            description='One of the model\'s classes, or "ok"')


def samples_router(db: CentralDB) -> APIRouter:
    router = APIRouter()
    _, viewer, quality = session_dependencies(db)
    device = Path(pattern=ID_PATTERN)
    seq_bound = Path(ge=0, le=MAX_SEQ)

    @router.get("/review/samples", response_class=HTMLResponse)
    def queue(request: Request, session: Annotated[Session, Depends(viewer)]) -> str:
        filters, query = _filters(request)
        samples = db.list_samples(filters, PAGE_SIZE + 1, _cursor(request))
        more = len(samples) > PAGE_SIZE
        samples = samples[:PAGE_SIZE]
        awaiting = db.samples_awaiting()
        return templates.get_template("samples.html").render(
            session=session, samples=samples, query=query, reasons=REASONS,
            states=[s for s in STATES if s], choices=db.sample_choices(),
            classes=_classes_of(db, samples), ok_label=OK_LABEL,
            awaiting=awaiting, nav_awaiting=awaiting,
            may_label=session.user.may("quality"),
            next_page="/review/samples?" + urlencode(
                {**query, "after": samples[-1].cursor.text()}) if more else None,
            first_page="/review/samples?" + urlencode(query)
            if request.query_params.get("after") else None)

    @router.post("/api/samples/{device_id}/{seq}/label")
    def label(device_id: Annotated[str, device], seq: Annotated[int, seq_bound],
              body: SampleLabel, request: Request,
              session: Annotated[Session, Depends(quality)]) -> dict[str, Any]:
        if not csrf_ok(session, request.headers.get("X-CSRF-Token")):
            raise HTTPException(403, "missing or wrong X-CSRF-Token; reload the page")
        try:
            sample = db.label_sample(device_id, seq, body.true_label, session.user.username)
        except UnknownSample as exc:
            raise HTTPException(404, str(exc)) from None
        except LabelRefused as exc:
            raise HTTPException(422, str(exc)) from None
        return {**_sample_json(sample), "awaiting": db.samples_awaiting()}

    @router.get("/api/samples/awaiting", dependencies=[Depends(api_reader(db))])
    def awaiting() -> dict[str, int]:
        """How many samples no one has labelled yet (the navigation's count)."""
        return {"awaiting": db.samples_awaiting()}

    return router


def _classes_of(db: CentralDB, samples: list[Sample]) -> dict[tuple[str, str], list[str]]:
    """The classes of each model version on the page, in the model's order (the number keys);
    empty for a version central has not published."""
    versions = {(s.model_name, s.model_version) for s in samples}
    return {version: db.model_classes(*version) or [] for version in versions}


def _sample_json(sample: Sample) -> dict[str, Any]:
    return {**sample.__dict__, "cursor": sample.cursor.text()}


def _filters(request: Request) -> tuple[SampleFilter, dict[str, str]]:
    """The filters asked for, and the query that asks for them again (for the page links)."""
    q = request.query_params
    for name in (*TEXT_FILTERS, "reason", "state"):
        if len(q.get(name, "")) > MAX_FILTER_CHARS:
            raise HTTPException(422, f"{name} is longer than {MAX_FILTER_CHARS} characters; "
                                "choose it from the menu")
    reason, state = q.get("reason", ""), q.get("state", "")
    if reason and reason not in REASONS:
        raise HTTPException(422, f"reason must be one of {', '.join(REASONS)}")
    if state not in STATES:
        raise HTTPException(422, "state must be unlabelled or labelled")
    filters = SampleFilter(**{name: q.get(name) or None for name in TEXT_FILTERS},
                           reason=reason or None, labelled=STATES[state])
    query = {k: q[k] for k in (*TEXT_FILTERS, "reason", "state") if q.get(k)}
    return filters, query


def _cursor(request: Request) -> SampleCursor | None:
    after = request.query_params.get("after")
    if not after:
        return None
    try:
        if len(after) > MAX_CURSOR_CHARS:
            raise ValueError(after)
        return SampleCursor.parse(after)
    except ValueError:
        raise HTTPException(422, "the page link is damaged; start from /review/samples") from None
