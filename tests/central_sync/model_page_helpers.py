"""Helpers for the model-page tests: accounts, a real model with its metadata file, an
evaluation as the evaluation code stores it, and the session's CSRF token from a page."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from central_helpers import make_onnx_model

from central_sync.accounts import hash_password
from central_sync.db import CentralDB, Evaluation

PASSWORD = "correct horse battery"
_HASH: list[str] = []  # one Argon2 hash for every test account: hashing costs 64 MiB and time


def add_users(db: CentralDB, **roles: str) -> None:
    """add_users(db, erin="engineer", bob="engineer") with the one test password."""
    if not _HASH:
        _HASH.append(hash_password(PASSWORD))
    for name, role in roles.items():
        db.add_user(name, _HASH[0], role, by="admin")


def model_files(folder: Path, name: str = "scrap-model", version: str = "1.0.0",
                **extra: Any) -> tuple[Path, Path]:
    """A real ONNX model (it sums its three inputs) and a metadata file that names it."""
    folder.mkdir(parents=True, exist_ok=True)
    model = make_onnx_model(folder / "scrap.onnx")
    metadata = folder / "scrap.json"
    metadata.write_text(json.dumps({
        "name": name, "version": version, "kind": "process", "features": ["a", "b", "c"],
        "golden": {"input": [[1, 2, 3]], "output": [[6]]}, **extra}))
    return model, metadata


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF token"
    return found[1]


def classification_report(candidate: str, baseline: str | None) -> dict[str, Any]:
    def metrics(version: str, hit: int) -> dict[str, Any]:
        return {"version": version, "accuracy": (hit * 2) / 20,
                "per_class": {"scratch": {"precision": hit / 10, "recall": hit / 10,
                                          "support": 10},
                              "ok": {"precision": hit / 10, "recall": hit / 10, "support": 10}},
                "confusion": {"labels": ["ok", "scratch"],
                              "matrix": [[hit, 10 - hit], [10 - hit, hit]]},
                "latency_ms": {"mean": 3.25, "p95": 4.5}}

    return {"kind": "classification", "items": 20, "candidate": metrics(candidate, 9),
            "baseline": metrics(baseline, 7) if baseline else None,
            "notes": ["classes the candidate does not know: dent (always counted wrong)"]}


def add_evaluation(db: CentralDB, name: str, version: str, baseline: str = "",
                   dataset: str = "surface-labels@3", by: str = "erin") -> Evaluation:
    """An evaluation stored as the evaluation code stores one; the version becomes evaluated."""
    evaluation = Evaluation(
        evaluation_id=uuid.uuid4().hex[:12], model_name=name, version=version,
        dataset=dataset, dataset_id="d" * 64, baseline_version=baseline,
        report=classification_report(version, baseline or None), created_at=time.time(),
        created_by=by)
    db.add_evaluation(evaluation)
    return evaluation
