"""The model pages rendered: the list with its upload form, one model's versions, lineage and
drift, and one version with its evaluation, review and rollouts (web/models.py serves them)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import HTTPException

from central_sync.db import CentralDB, Evaluation
from central_sync.db.accounts import Session
from central_sync.db.model_states import not_deployable_message
from central_sync.web.charts import latency_chart, psi_chart
from central_sync.web.evaluation_queue import EvaluationJob
from central_sync.web.model_views import (
    approve_blocked,
    lineage_rows,
    reject_blocked,
    report_view,
)
from central_sync.web.pages import model_health
from central_sync.web.rendering import templates

DRIFT_WINDOW_H = 24 * 7
EVALUATION_REFRESH_S = 3  # the version page reloads itself this often while evaluating


def models_page(db: CentralDB, session: Session, upload_limit_bytes: int | None,
                error: str = "") -> str:
    """Every model; the publish form for engineers when central can publish
    (`upload_limit_bytes` set)."""
    by_name: dict[str, list[Any]] = {}
    for published in db.list_models():
        by_name.setdefault(published.manifest.name, []).append(published)
    may_publish = upload_limit_bytes is not None and session.user.may("engineer")
    return templates.get_template("models.html").render(
        session=session, models=by_name, states=db.model_states(), may_publish=may_publish,
        upload_limit_mib=(upload_limit_bytes or 0) / 2**20, error=error,
        datasets=db.list_datasets() if may_publish else [])


def model_page(db: CentralDB, session: Session, name: str) -> str:
    versions = [m for m in db.list_models() if m.manifest.name == name]
    if not versions:
        raise HTTPException(404, f"no model {name}; `central-sync model list` shows them")
    health = model_health(db, name, None, time.time() - DRIFT_WINDOW_H * 3600)
    drift, intervals = health if health else (None, [])
    charts = {d["device_id"]: psi_chart(d["drift"]) for d in drift["devices"]} if drift else {}
    audit = [e for e in db.list_audit(500) if e["subject"].startswith(f"{name}@")]
    return templates.get_template("model.html").render(
        session=session, name=name, versions=list(reversed(versions)),
        states=db.model_states(), drift=drift, charts=charts,
        latency=latency_chart(intervals), audit=audit, window_h=DRIFT_WINDOW_H)


def version_page(db: CentralDB, session: Session, name: str, version: str, *,
                 may_act: bool, may_evaluate: bool, require_approval: bool, error: str = "",
                 done: str = "",
                 job: EvaluationJob | None = None) -> str:
    """One version: state, lineage, evaluation report beside production's, and for engineers
    the forms to evaluate, approve or reject, and start a rollout (`may_act`: central was
    given what acting needs; `may_evaluate`: it can also evaluate)."""
    published = next((m for m in db.list_models()
                      if m.manifest.name == name and m.manifest.version == version), None)
    if published is None:
        raise HTTPException(404, f"no model {name} {version}; `central-sync model list` "
                            "shows them")
    state = db.model_state(name, version)
    evaluations = db.list_evaluations(name, version)
    shown = _shown_evaluation(db, state.evaluation_id if state else None, evaluations)
    may_act = may_act and session.user.may("engineer")
    ref = f"{name}@{version}"
    return templates.get_template("model_version.html").render(
        session=session, name=name, version=version, manifest=published.manifest,
        published_by=published.published_by, state=state, evaluation=shown,
        report=report_view(shown.report) if shown else None,
        evaluations=evaluations, job=job, refresh_s=EVALUATION_REFRESH_S,
        lineage=lineage_rows(published.manifest, published.published_by,
                             shown.evaluation_id if shown else None),
        rollouts=[r for r in db.list_rollouts(limit=200)
                  if r.kind == "model" and r.model_name == name and r.version == version],
        may_act=may_act, may_evaluate=may_act and may_evaluate, error=error, done=done,
        approve_blocked=approve_blocked(session, published.published_by, state),
        reject_blocked=reject_blocked(session, state),
        not_deployable=not_deployable_message(ref, state, require_approval),
        datasets=db.list_datasets() if may_act else [],
        groups=_groups(db) if may_act else [])


def _shown_evaluation(db: CentralDB, evaluation_id: str | None,
                      evaluations: list[Evaluation]) -> Evaluation | None:
    """The evaluation the version's state names (what an approver read), else the newest."""
    if evaluation_id:
        named = next((e for e in evaluations if e.evaluation_id == evaluation_id), None)
        return named or db.get_evaluation(evaluation_id)
    return evaluations[0] if evaluations else None


def _groups(db: CentralDB) -> list[str]:
    """The labels provisioning gave devices: the groups a rollout can target."""
    return sorted({label for account in db.broker_accounts() if account.kind == "device"
                   for label in account.labels})
