"""What the model version page shows, computed apart from the page: why a person may not
approve, the evaluation report with production's beside it, and where the version comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from central_sync.db.accounts import Session
from central_sync.db.model_states import APPROVED, EVALUATED, PUBLISHED, ModelState
from edge_agent.kernel.contract import ModelManifest

PROCESS_METRICS = (("rows", "rows"), ("mae", "mean absolute error"), ("bias", "bias"),
                   ("in_spec_agreement", "in-spec agreement"))


def approve_blocked(session: Session, published_by: str, state: ModelState | None) -> str:
    """Why this person cannot approve the version now ("" when they can): the reason the
    disabled button shows. The database refuses the same cases; this only explains them."""
    user = session.user
    current = state.state if state else PUBLISHED
    if not user.may("engineer"):
        return f"approving needs the engineer or admin role; you are a {user.role}"
    if current == APPROVED and state is not None:
        return f"approved by {state.approved_by}"
    if current not in (PUBLISHED, EVALUATED):
        return f"it is {current}"
    if user.username.casefold() == published_by.casefold():
        return "you published this version: another engineer or admin approves it"
    if current == PUBLISHED:
        return "evaluate it first: approval follows an evaluation report"
    return ""


def reject_blocked(session: Session, state: ModelState | None) -> str:
    current = state.state if state else PUBLISHED
    if not session.user.may("engineer"):
        return f"rejecting needs the engineer or admin role; you are a {session.user.role}"
    if current not in (PUBLISHED, EVALUATED):
        return f"it is {current}; only a version not yet approved can be rejected"
    return ""


@dataclass(frozen=True)
class ClassRow:
    label: str
    candidate: dict[str, Any] | None  # precision, recall, support
    baseline: dict[str, Any] | None


def report_view(report: dict[str, Any]) -> dict[str, Any]:
    """The report laid out for the page: candidate and baseline side by side. Missing figures
    are None (shown as a dash), so an older or partial report still renders."""
    candidate = report.get("candidate") or {}
    baseline = report.get("baseline") or None
    view: dict[str, Any] = {"kind": report.get("kind", "?"), "items": report.get("items"),
                            "candidate": candidate, "baseline": baseline,
                            "notes": [str(note) for note in report.get("notes") or []]}
    if view["kind"] == "process":
        view["process"] = [(title, candidate.get(key), (baseline or {}).get(key))
                           for key, title in PROCESS_METRICS]
        return view
    ours, theirs = candidate.get("per_class") or {}, (baseline or {}).get("per_class") or {}
    view["classes"] = [ClassRow(label, ours.get(label), theirs.get(label))
                       for label in sorted(set(ours) | set(theirs))]
    view["confusions"] = [(side, metrics.get("version", ""), metrics.get("confusion"))
                          for side, metrics in (("candidate", candidate),
                                                ("in production", baseline))
                          if metrics and metrics.get("confusion")]
    return view


def lineage_rows(manifest: ModelManifest, published_by: str,
                 evaluation_id: str | None) -> list[tuple[str, str, str | None]]:
    """(what, value, link or None) of where the version comes from; the page adds who
    approved it and when."""
    lineage = manifest.meta.lineage
    dataset = lineage.dataset if lineage else ""
    rows: list[tuple[str, str, str | None]] = []
    if dataset:
        name, _, number = dataset.rpartition("@")
        rows.append(("dataset", dataset, f"/datasets/{name}/{number}"))
        rows.append(("dataset id", lineage.dataset_id if lineage else "", None))
    elif lineage and lineage.training_data:
        rows.append(("training data", lineage.training_data, None))
    for key in ("code_revision", "author", "notes"):
        value = getattr(lineage, key, "") if lineage else ""
        if value:
            rows.append((key.replace("_", " "), value, None))
    rows.append(("published by", published_by, None))
    if evaluation_id:
        rows.append(("evaluation", evaluation_id, f"#evaluation-{evaluation_id}"))
    return rows
