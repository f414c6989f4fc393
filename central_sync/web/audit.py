"""The audit log's page: entries filtered by who, what and when, paged by seq, with the hash
chain's state; and the filtered entries exported as CSV or JSON (also for the CLI).

Viewers (auditors among them) read the page; exporting takes the quality role or a higher one,
as the defect export does, and is itself audited. Exports are GETs behind the session cookie,
which is SameSite=Strict: another site's link arrives without it and is refused.
"""

import csv
import datetime
import io
import json
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from central_sync.db import CentralDB
from central_sync.db.accounts import Session
from central_sync.db.audit import AuditFilter, ChainReport
from central_sync.web.auth import session_dependencies
from central_sync.web.rendering import templates
from central_sync.web.review import spreadsheet_safe

PAGE_SIZE, MAX_PAGE_SIZE = 100, 500
EXPORT_MAX_ENTRIES = 200_000  # a browser download; the CLI exports any number
# The page verifies new entries at most every CHAIN_STATUS_TTL_S, and the whole chain (1.5 s
# per 100,000 entries) at most every FULL_VERIFY_S; `central-sync audit verify` always all.
CHAIN_STATUS_TTL_S, FULL_VERIFY_S = 10.0, 600.0
EXPORT_COLUMNS = ("seq", "time", "at", "actor", "action", "subject", "detail", "prev_hash",
                  "entry_hash")
FORMATS = {"csv": "text/csv; charset=utf-8", "json": "application/json"}


def audit_router(db: CentralDB) -> APIRouter:
    router = APIRouter()
    _, viewer, quality = session_dependencies(db)
    chain = _CachedChainStatus(db, CHAIN_STATUS_TTL_S, FULL_VERIFY_S)

    @router.get("/audit", response_class=HTMLResponse)
    def audit(request: Request, session: Annotated[Session, Depends(viewer)],
              before: int | None = Query(None, ge=1, description="older than this seq"),
              limit: int = Query(PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)) -> str:
        filters = _filters(request)
        entries = db.list_audit(limit + 1, filters, before_seq=before)
        more = len(entries) > limit
        entries = entries[:limit]
        query = {k: v for k, v in request.query_params.items()
                 if k in ("actor", "action", "subject", "since", "until") and v}
        paging = {**query, **({"limit": str(limit)} if limit != PAGE_SIZE else {})}
        return templates.get_template("audit.html").render(
            session=session, entries=entries, query=query, chain=chain.report(),
            actions=chain.actions(), may_export=session.user.may("quality"),
            next_page="/audit?" + urlencode({**paging, "before": entries[-1]["seq"]})
            if more else None,
            first_page="/audit?" + urlencode(paging) if before else None,
            exports={fmt: f"/audit/export.{fmt}?" + urlencode(query) for fmt in FORMATS})

    @router.get("/audit/export.{fmt}")
    def export(fmt: str, request: Request,
               session: Annotated[Session, Depends(quality)]) -> StreamingResponse:
        if fmt not in FORMATS:
            raise HTTPException(404, "export as /audit/export.csv or /audit/export.json")
        filters = _filters(request)
        head = db.audit_head_seq()
        count = db.count_audit(filters, through_seq=head)
        if count > EXPORT_MAX_ENTRIES:
            raise HTTPException(422, f"{count} entries match; a download takes at most "
                                f"{EXPORT_MAX_ENTRIES}: narrow since/until, or run "
                                "`central-sync audit export` on central")
        db.audit(session.user.username, "audit.export", f"{count} entries",
                 json.dumps({"format": fmt, **filters.as_dict()}, sort_keys=True))
        entries = db.iter_audit(filters, through_seq=head)
        body = csv_lines(entries) if fmt == "csv" else json_chunks(entries, filters)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return StreamingResponse(body, media_type=FORMATS[fmt], headers={
            "Content-Disposition": f'attachment; filename="audit-{stamp}.{fmt}"'})

    return router


def _filters(request: Request) -> AuditFilter:
    q = request.query_params
    try:
        return AuditFilter.from_text(q.get("actor"), q.get("action"), q.get("since"),
                                     q.get("until"), q.get("subject"))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


class _CachedChainStatus:
    """The chain's state for the page: verifying all of it reads every entry, which a page
    anyone signed in may reload must not cost each time. Every `ttl_s` the entries added since
    are verified on from the last verified head (which must still be there, unchanged); the
    whole chain again every `full_s`, or at once when that step finds anything."""

    def __init__(self, db: CentralDB, ttl_s: float, full_s: float) -> None:
        self._db, self._ttl_s, self._full_s = db, ttl_s, full_s
        self._lock = threading.Lock()
        self._report: ChainReport | None = None
        self._actions: list[str] = []
        self._at = self._full_at = 0.0

    def report(self) -> ChainReport:
        with self._lock:  # one verification at a time; the others wait and share it
            now = time.monotonic()
            if self._report is None or now - self._full_at >= self._full_s:
                self._verify_all(now)
            elif now - self._at >= self._ttl_s and self._report.intact:
                head = (self._report.head_seq, self._report.head_hash)
                step = self._db.verify_audit_chain(start=head) if head[0] else \
                    self._db.verify_audit_chain()
                if step.intact:  # the step verified the head again: counted once
                    self._report = ChainReport(self._report.entries + step.entries
                                               - (1 if head[0] else 0),
                                               step.head_seq, step.head_hash,
                                               verified_up_to=step.verified_up_to)
                    self._at = now
                else:
                    self._verify_all(now)
            return self._report

    def _verify_all(self, now: float) -> None:
        self._report = self._db.verify_audit_chain()
        self._actions = _with_prefixes(self._db.audit_actions())
        self._at = self._full_at = now

    def actions(self) -> list[str]:
        """What the `what` filter suggests: each action and its prefix (model., user., ...),
        as of the last full verification."""
        self.report()
        return self._actions


def _with_prefixes(actions: list[str]) -> list[str]:
    return sorted({*actions, *(a.split(".", 1)[0] + "." for a in actions if "." in a)})


def export_row(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry as exported: its columns plus `time` (ISO 8601, UTC) for people."""
    moment = datetime.datetime.fromtimestamp(entry["at"], datetime.UTC)
    return {"time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            **{column: entry[column] for column in EXPORT_COLUMNS if column != "time"}}


def csv_lines(entries: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A header and one CSV line per entry; a cell that starts like a spreadsheet formula is
    escaped (an actor or subject is typed by people and devices). The JSON stays exact."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, EXPORT_COLUMNS)
    writer.writeheader()
    for entry in entries:
        writer.writerow({k: spreadsheet_safe(v) for k, v in export_row(entry).items()})
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def json_chunks(entries: Iterable[dict[str, Any]], filters: AuditFilter) -> Iterator[str]:
    """{"exported_at", "filters", "entries": [...]}, written an entry at a time. Each entry
    keeps its exact fields, so the chain can be re-verified from the file."""
    yield ('{"exported_at": ' + json.dumps(time.time()) + ', "filters": '
           + json.dumps(filters.as_dict(), sort_keys=True) + ', "entries": [')
    separator = "\n"
    for entry in entries:
        yield separator + json.dumps(export_row(entry))
        separator = ",\n"
    yield "\n]}\n"
