"""evaluate_model: measure a candidate version and the version serving now on the same
held-out data, store the report, and mark the candidate evaluated.

Vision models run on the TEST split of a dataset version (each item's region, as
datasets.load_crop gives it); process models on the line's recorded predictions paired with
measured outcomes. The baseline is the version most devices report active, else the newest
approved one; without either the report's baseline is null.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from central_sync.datasets import DatasetError, DatasetItem, DatasetVersion, load_crop
from central_sync.db import CentralDB, Evaluation
from central_sync.evaluation.process import ProcessEvaluationError, ProcessRow, evaluate_process
from central_sync.evaluation.vision import VisionSample, evaluate_vision, task_of
from central_sync.registry import artifact_path
from edge_agent.inference.runtime import ModelLoadError
from edge_agent.inference.vision import VisionModel
from edge_agent.kernel.contract import ModelManifest

log = logging.getLogger(__name__)

DEFAULT_MAX_ITEMS = 20_000  # as central's models.max_evaluation_items
Progress = Callable[[int, int], None]  # (items done, items in all)


class EvaluationError(Exception):
    """A version cannot be evaluated as asked; the message says why and what to do."""


def evaluate_model(db: CentralDB, artifact_dir: str | Path, name: str, version: str,
                   dataset_ref: str | None, by: str, *, max_items: int = DEFAULT_MAX_ITEMS,
                   on_progress: Progress | None = None) -> Evaluation:
    """Evaluate name@version beside the version serving now, store the report, and mark the
    version evaluated (audited). A vision model is measured on the test split of
    `dataset_ref` (default: the dataset its lineage names); without any, the report records
    that nothing was measured. A process model is measured on recorded outcomes and takes no
    dataset. At most `max_items` items, spread evenly over the split, are run."""
    manifest = _manifest(db, name, version)
    baseline = choose_baseline(db, manifest)
    if manifest.kind == "process":
        if dataset_ref:
            raise EvaluationError(
                f"{name} is a process model: it is evaluated on the line's recorded "
                f"predictions and measured outcomes, not on a dataset; leave out --dataset")
        report, dataset = _process_report(db, artifact_dir, manifest, baseline, max_items), None
    else:
        dataset = _dataset(db, manifest, dataset_ref)
        report = _vision_report(db, artifact_dir, manifest, baseline, dataset, max_items,
                                on_progress)
    evaluation = Evaluation(
        evaluation_id=uuid.uuid4().hex, model_name=name, version=version,
        dataset=dataset.ref if dataset else "", dataset_id=dataset.dataset_id if dataset else "",
        baseline_version=report["baseline"]["version"] if report["baseline"] else "",
        report=report, created_at=time.time(), created_by=by)
    state = db.add_evaluation(evaluation)
    log.info("model evaluated model=%s version=%s dataset=%s items=%d baseline=%s state=%s "
             "by=%s", name, version, evaluation.dataset or "-", report["items"],
             evaluation.baseline_version or "-", state.state, by)
    return evaluation


def _manifest(db: CentralDB, name: str, version: str) -> ModelManifest:
    manifest = db.get_model(name, version)
    if manifest is None:
        raise EvaluationError(f"model {name} {version} is not in the registry; see "
                              "`central-sync model list`")
    return manifest


def choose_baseline(db: CentralDB, candidate: ModelManifest) -> ModelManifest | None:
    """The version serving now: the one most devices report active (ties: the newest), else
    the newest approved version; never the candidate itself."""
    def usable(version: str) -> ModelManifest | None:
        manifest = db.get_model(candidate.name, version)
        return manifest if manifest and manifest.kind == candidate.kind else None

    counts = db.serving_versions(candidate.name)
    serving = [m for v in counts if v != candidate.version and (m := usable(v))]
    if serving:
        return max(serving, key=lambda m: (counts[m.version], m.published_at))
    states = db.model_states()
    approved = [item.manifest for item in db.list_models()
                if item.manifest.name == candidate.name and item.manifest.version !=
                candidate.version and item.manifest.kind == candidate.kind
                and (s := states.get((candidate.name, item.manifest.version)))
                and s.state == "approved"]
    return max(approved, key=lambda m: m.published_at) if approved else None


def _artifact(artifact_dir: str | Path, manifest: ModelManifest) -> Path:
    path = artifact_path(artifact_dir, manifest.sha256)
    if not path.is_file():
        raise EvaluationError(f"the artifact of {manifest.name} {manifest.version} is missing "
                              f"at {path}; central's artifact_dir must hold every published "
                              "version")
    return path


# --- vision -----------------------------------------------------------------------------------


def _dataset(db: CentralDB, manifest: ModelManifest, ref: str | None) -> DatasetVersion | None:
    lineage = manifest.meta.lineage
    ref = ref or (lineage.dataset if lineage and lineage.dataset else None)
    if ref is None:
        return None
    try:
        return db.require_dataset(ref)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from None


def _vision_model(artifact_dir: str | Path, manifest: ModelManifest) -> VisionModel:
    try:
        return VisionModel(_artifact(artifact_dir, manifest), manifest)
    except ModelLoadError as exc:
        raise EvaluationError(str(exc)) from None


def _vision_report(db: CentralDB, artifact_dir: str | Path, manifest: ModelManifest,
                   baseline: ModelManifest | None, dataset: DatasetVersion | None,
                   max_items: int, on_progress: Progress | None) -> dict[str, Any]:
    candidate = _vision_model(artifact_dir, manifest)
    task = task_of(candidate)
    notes: list[str] = []
    if dataset is None:
        unmeasured = {"version": manifest.version, "accuracy": None, "per_class": {},
                      "confusion": {"labels": [], "matrix": []},
                      "latency_ms": {"mean": None, "p95": None}}
        return {"kind": task, "items": 0, "candidate": unmeasured, "baseline": None,
                "notes": [f"not measured: no dataset version was given and the lineage of "
                          f"{manifest.name} {manifest.version} names none; evaluate it with "
                          "--dataset NAME@N once labelled frames are frozen"]}
    if dataset.manifest.kind != task:
        raise EvaluationError(
            f"{dataset.ref} is a {dataset.manifest.kind} dataset and {manifest.name} "
            f"{manifest.version} a {task} model; evaluate it on a {task} dataset")
    models = [candidate]
    if baseline is not None:
        try:
            other = _vision_model(artifact_dir, baseline)
        except EvaluationError as exc:
            notes.append(f"baseline {baseline.version} left out: {exc}")
        else:
            if task_of(other) == task:
                models.append(other)
            else:
                notes.append(f"baseline {baseline.version} left out: it is a "
                             f"{task_of(other)} model")
    items, total = test_items(dataset, max_items)
    if not items:
        raise EvaluationError(f"{dataset.ref} has no item in its test split; freeze more "
                              "labelled frames into a new version")
    if len(items) < total:
        notes.append(f"{len(items)} of the {total} test items evaluated, spread evenly "
                     "(models.max_evaluation_items)")
    unknown = sorted({i.label for i in items} - set(candidate.spec.labels) - {"ok"}) \
        if task == "classification" else []
    if unknown:
        notes.append(f"classes the candidate does not know: {', '.join(unknown)} (always "
                     "counted wrong)")
    progress = (lambda done: on_progress(done, len(items))) if on_progress else None
    figures = evaluate_vision(models, samples(db, items), progress)
    return {"kind": task, "items": len(items), "split": "test", "candidate": figures[0],
            "baseline": figures[1] if len(figures) > 1 else None, "notes": notes}


def test_items(dataset: DatasetVersion, max_items: int) -> tuple[list[DatasetItem], int]:
    """The test split's items, at most `max_items` of them spread evenly; and how many the
    split holds."""
    items = [item for item in dataset.manifest.items if item.split == "test"]
    if len(items) <= max_items:
        return items, len(items)
    step = len(items) / max_items
    return [items[math.floor(i * step)] for i in range(max_items)], len(items)


def samples(db: CentralDB, items: Sequence[DatasetItem]) -> Iterator[VisionSample]:
    """Each item's region as the model saw it, its class, and its boxes moved into that
    region's pixels."""
    for item in items:
        image = load_crop(db, item)
        x, y = (item.roi_box[0], item.roi_box[1]) if item.roi_box else (0, 0)
        boxes = tuple((label, x1 - x, y1 - y, x2 - x, y2 - y)
                      for label, x1, y1, x2, y2 in item.boxes)
        yield VisionSample(image, item.label, boxes)


# --- process ----------------------------------------------------------------------------------


def _process_report(db: CentralDB, artifact_dir: str | Path, manifest: ModelManifest,
                    baseline: ModelManifest | None, max_items: int) -> dict[str, Any]:
    rows = [ProcessRow(inputs, measured)
            for inputs, measured in db.measured_outcomes(manifest.name, max_items)]
    notes = []
    if not rows:
        notes.append(f"no measured outcome of {manifest.name} recorded yet: a pipeline records "
                     "one when its recommend.measured_tag reads the target after an answered "
                     "recommendation; MAE and bias need them")
    try:
        [candidate] = evaluate_process([(_artifact(artifact_dir, manifest), manifest)], rows)
    except (ProcessEvaluationError, ModelLoadError) as exc:
        raise EvaluationError(str(exc)) from None
    figures = [candidate]
    if baseline is not None:
        try:
            figures += evaluate_process([(_artifact(artifact_dir, baseline), baseline)], rows)
        except (EvaluationError, ProcessEvaluationError, ModelLoadError) as exc:
            notes.append(f"baseline {baseline.version} left out: {exc}")
    return {"kind": "process", "items": len(rows), "source": "recorded predictions with "
            "measured outcomes", "candidate": figures[0],
            "baseline": figures[1] if len(figures) > 1 else None, "notes": notes}
