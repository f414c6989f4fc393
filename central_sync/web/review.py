"""Central's defect review: browse defects with the keyboard, label them, export them.

Every label also carries the session's CSRF token (a header from the page's script). Quality
users label, viewers look.
"""

import base64
import csv
import io
import json
import logging
import re
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.background import BackgroundTask

from central_sync.accounts import csrf_ok
from central_sync.db import CentralDB
from central_sync.db.accounts import Session
from central_sync.db.review import (
    UNREVIEWED,
    VERDICTS,
    Defect,
    DefectFilter,
    UnknownDefect,
    parse_cursor,
)
from central_sync.web.auth import session_dependencies
from central_sync.web.charts import defect_rate_chart
from central_sync.web.params import RecordSeq
from central_sync.web.rendering import templates
from edge_agent.kernel.contract import ID_PATTERN

log = logging.getLogger(__name__)

PAGE_SIZE = 48
RATE_BUCKET_S, RATE_BUCKETS = 3600, 48  # the defect-rate chart: two days by the hour
EXPORT_PAGE = 500
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet cell a formula


class LabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: str
    true_label: str | None = None


def review_router(db: CentralDB) -> APIRouter:
    router = APIRouter()

    _, viewer, quality = session_dependencies(db)

    @router.get("/review", response_class=HTMLResponse)
    def review(request: Request, session: Annotated[Session, Depends(viewer)],
               after: str | None = None) -> str:
        filters = _filters(request)
        defects = db.list_defects(filters, PAGE_SIZE + 1, _cursor(after))
        more = len(defects) > PAGE_SIZE
        defects = defects[:PAGE_SIZE]
        query = {k: v for k, v in request.query_params.items() if k != "after" and v}
        since, rate = db.defect_rate(filters, RATE_BUCKET_S, RATE_BUCKETS)
        awaiting = db.samples_awaiting()  # the samples queue's count, beside the defects
        return templates.get_template("review.html").render(
            session=session, defects=defects, summary=db.defect_summary(filters),
            choices=db.defect_choices(), query=query, verdicts=VERDICTS,
            unreviewed=UNREVIEWED, may_label=session.user.may("quality"),
            samples_awaiting=awaiting, nav_awaiting=awaiting,
            rate_chart=defect_rate_chart(rate, since, RATE_BUCKET_S, RATE_BUCKETS),
            next_page="/review?" + urlencode({**query, "after": defects[-1].key})
            if more else None,
            first_page="/review?" + urlencode(query) if after else None,
            export="/review/export?" + urlencode(query))

    @router.post("/api/defects/{device_id}/{seq}/label")
    def label(device_id: str, seq: RecordSeq, body: LabelRequest, request: Request,
              session: Annotated[Session, Depends(quality)]) -> dict[str, Any]:
        if not csrf_ok(session, request.headers.get("X-CSRF-Token")):
            raise HTTPException(403, "missing or wrong X-CSRF-Token; reload the page")
        try:
            defect = db.label_defect(device_id, seq, body.verdict, session.user.username,
                                     body.true_label)
        except UnknownDefect as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return _defect_json(defect)

    @router.get("/review/export")
    def export(request: Request, session: Annotated[Session, Depends(quality)],
               labelled_only: bool = Query(True)) -> Response:
        """The filtered defects as a zip: their evidence images and manifest.csv/.json."""
        filters = _filters(request)
        spool = tempfile.NamedTemporaryFile(suffix=".zip", delete=False)  # noqa: SIM115
        count = _write_export(db, filters, labelled_only, spool)
        spool.close()
        db.audit(session.user.username, "defect.export", f"{count} defects",
                 json.dumps({k: v for k, v in filters.__dict__.items() if v is not None}))
        return FileResponse(spool.name, media_type="application/zip",
                            filename=f"defects-{time.strftime('%Y%m%d-%H%M%S')}.zip",
                            background=BackgroundTask(Path(spool.name).unlink))

    return router


def _write_export(db: CentralDB, filters: DefectFilter, labelled_only: bool,
                  out: Any) -> int:
    rows: list[dict[str, Any]] = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:  # JPEGs do not shrink
        after = None
        while page := db.list_defects(filters, EXPORT_PAGE, after):
            after = (page[-1].created_at, page[-1].device_id, page[-1].seq)
            for defect in page:
                if labelled_only and defect.verdict is None:
                    continue
                image = db.record_image(defect.device_id, defect.seq, "frame")
                name = _image_name(defect) if image else ""
                if name:
                    archive.writestr(name, base64.b64decode(image))
                rows.append({**_defect_json(defect), "image": name})
        table = io.StringIO()
        columns = list(rows[0]) if rows else ["device_id", "seq", "image"]
        writer = csv.DictWriter(table, columns)
        writer.writeheader()
        writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
        archive.writestr("manifest.csv", table.getvalue())
        archive.writestr("manifest.json", json.dumps(rows, indent=1))
    return len(rows)


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: gateway-supplied text starting like a formula
    gets a leading single quote (OWASP's advice on CSV injection); manifest.json stays exact."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _image_name(defect: Defect) -> str:
    """The evidence image's name in the export, "" if the stored device id could make it a
    path outside images/ (ingest admits only valid ids; this is checked again here)."""
    if not re.fullmatch(ID_PATTERN, defect.device_id):
        log.warning("defect image left out of the export: device id %r is not valid seq=%d",
                    defect.device_id, defect.seq)
        return ""
    return f"images/{defect.device_id}-{int(defect.seq)}.jpg"


def _defect_json(defect: Defect) -> dict[str, Any]:
    return {**defect.__dict__, "final_label": defect.final_label}


def _filters(request: Request) -> DefectFilter:
    q = request.query_params

    def number(name: str) -> float | None:
        try:
            return float(q[name]) if q.get(name) else None
        except ValueError:
            raise HTTPException(422, f"{name} must be a number, got {q[name]!r}") from None

    def day(name: str) -> float | None:
        if not q.get(name):
            return None
        try:
            return time.mktime(time.strptime(q[name], "%Y-%m-%d"))
        except ValueError:
            raise HTTPException(422, f"{name} must be a date like 2026-12-01") from None

    verdict = q.get("verdict") or None
    if verdict not in (None, UNREVIEWED, *VERDICTS):
        raise HTTPException(422, f"verdict must be one of {UNREVIEWED}, {', '.join(VERDICTS)}")
    until = day("until")
    return DefectFilter(
        device_id=q.get("device_id") or None, camera=q.get("camera") or None,
        label=q.get("label") or None, model_version=q.get("model_version") or None,
        min_confidence=number("min_confidence"), max_confidence=number("max_confidence"),
        since=day("since"), until=until + 86400 if until is not None else None,
        verdict=verdict)


def _cursor(after: str | None) -> tuple[float, str, int] | None:
    if not after:
        return None
    try:
        return parse_cursor(after)
    except ValueError:
        raise HTTPException(422, "the page link is damaged; start from /review") from None
