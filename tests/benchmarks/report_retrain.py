"""Report: the sample model retrained by `central-sync train` against the shipped one, on
dataset versions it never saw, side by side.

The scene: a second line whose camera is slightly out of focus (Gaussian blur, sigma 1.6). Its
frames reach central as sample records with JPEG evidence; a reviewer labels each with its
true class; they are frozen as dataset versions through central's own code:
  surface-labels@1   line 2's training frames -> 1.1.0 (its train and val splits fit the head)
  line1-labels@1     training frames of the shipped model's own sharp camera (line 1)
  both-lines@1       the two together -> 1.2.0
  line2-holdout@1    other frames of line 2, never used in training
  line1-holdout@1    other frames of line 1: does a retrained head still serve the old line?
Every version is scored on every item of the held-out versions through the gateway's own
path (edge_agent.inference.vision.VisionModel: preprocessing, ONNX Runtime, decoder), and,
by central's `evaluate_model` on each held-out version's test split beside 1.0.0 (approved).
Not a test: run it by hand (about a minute).

    .venv/bin/python tests/benchmarks/report_retrain.py
    .venv/bin/python tests/benchmarks/report_retrain.py --per-class 300 --out /tmp/report.txt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from central_sync.datasets import DatasetSelection, DatasetVersion, create_dataset, load_crop
from central_sync.db import CentralDB
from central_sync.evaluation import evaluate_model
from central_sync.registry import artifact_path, publish_model
from central_sync.training.sources import train_on_dataset
from edge_agent.inference.vision import VisionModel
from sample_data import make_vision_data as vision
from tests.helpers import TEST_SIGNER
from tests.training_helpers import (
    LABELS,
    SHIPPED_METADATA,
    SHIPPED_MODEL,
    freeze_patches,
    labelled_patches,
)

MODEL = "surface-defects"


def sharp_patches(per_class: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """The shipped model's own camera: the generator without the blur."""
    rng = np.random.default_rng(seed)
    return [(label, vision.patch(rng, label)) for _ in range(per_class) for label in LABELS]


def score(db: CentralDB, artifact_dir: Path, version: str, dataset: DatasetVersion) -> dict:
    """Accuracy, per-class recall and precision, and mean latency of one version on every
    item of a dataset version, through the gateway's own vision path."""
    manifest = db.get_model(MODEL, version)
    model = VisionModel(artifact_path(artifact_dir, manifest.sha256), manifest)
    truth, predicted, latency = [], [], []
    for item in dataset.manifest.items[:5]:  # warm-up: the first runs allocate
        model.infer(load_crop(db, item))
    for item in dataset.manifest.items:
        image = load_crop(db, item)
        started = time.perf_counter()
        predicted.append(model.infer(image).label)
        latency.append((time.perf_counter() - started) * 1000)
        truth.append(item.label)
    hits = Counter(t for t, p in zip(truth, predicted, strict=True) if t == p)
    said = Counter(predicted)
    support = Counter(truth)
    return {"accuracy": sum(hits.values()) / len(truth),
            "recall": {label: hits[label] / support[label] for label in LABELS},
            "precision": {label: hits[label] / said[label] if said[label] else 0.0
                          for label in LABELS},
            "latency_ms": float(np.mean(latency)), "items": len(truth)}


def table(title: str, scores: list[tuple[str, dict]]) -> list[str]:
    """Rows of metrics, a column per version (the first is the shipped one), then each other
    version's change against it."""
    names = [name for name, _ in scores]
    lines = [title, f"  {'metric':<20}" + "".join(f"{name:>18}" for name in names)
             + "".join(f"{'vs shipped':>12}" for _ in names[1:])]

    def row(metric: str, values: list[float], percent: bool = True) -> None:
        if percent:
            cells = "".join(f"{v:>18.1%}" for v in values)
            changes = "".join(f"{(v - values[0]) * 100:>+10.1f}pt" for v in values[1:])
        else:
            cells = "".join(f"{v:>18.3f}" for v in values)
            changes = "".join(f"{v / values[0]:>11.2f}x" for v in values[1:])
        lines.append(f"  {metric:<20}{cells}{changes}")

    metrics = [m for _, m in scores]
    row("accuracy", [m["accuracy"] for m in metrics])
    for kind in ("recall", "precision"):
        for label in LABELS:
            row(f"{kind} {label}", [m[kind][label] for m in metrics])
    row("latency ms/frame", [m["latency_ms"] for m in metrics], percent=False)
    lines.append(f"  ({metrics[0]['items']} items, every split)")
    return lines


def central_evaluation(db: CentralDB, artifact_dir: Path, dataset: str) -> list[str]:
    """Central's own evaluation (the dataset's test split) of each retrained version beside
    the version it would replace."""
    lines = []
    for _, version in VERSIONS[1:]:
        report = evaluate_model(db, artifact_dir, MODEL, version, dataset, "report").report
        base = report.get("baseline")
        against = (f", baseline {base['version']} {base['accuracy']:.1%}" if base
                   else ", no baseline")
        lines.append(f"  central's evaluate_model on {dataset} ({report['items']} test-split "
                     f"items): {version} {report['candidate']['accuracy']:.1%}{against}")
    return lines


VERSIONS = [("shipped 1.0.0", "1.0.0"), ("line 2: 1.1.0", "1.1.0"), ("both: 1.2.0", "1.2.0")]


def build_report(tmp: Path, per_class: int, holdout_per_class: int, started: float
                 ) -> list[str]:
    artifacts = tmp / "artifacts"
    db = CentralDB(tmp / "central.db")
    publish_model(db, artifacts, SHIPPED_MODEL, metadata=SHIPPED_METADATA, signer=TEST_SIGNER,
                  published_by="dana")
    evaluate_model(db, artifacts, MODEL, "1.0.0", None, "dana")  # in production: approved
    db.approve_model(MODEL, "1.0.0", "erik")
    since = time.time()
    freeze_patches(db, "surface-labels", labelled_patches(per_class, seed=31), "line2-gw1")
    freeze_patches(db, "line1-labels", sharp_patches(per_class, seed=34), "line1-gw2")
    both = create_dataset(db, "both-lines", DatasetSelection(labelled_since=since,
                                                             labelled_until=time.time()),
                          "quality-eng")
    line2 = freeze_patches(db, "line2-holdout", labelled_patches(holdout_per_class, seed=32),
                           "line2-gw2")
    line1 = freeze_patches(db, "line1-holdout", sharp_patches(holdout_per_class, 33),
                           "line1-gw1")
    frozen_s = time.monotonic() - started
    lines = ["Retrained sample model (central-sync train) vs the shipped one", ""]
    for dataset, version in (("surface-labels@1", "1.1.0"), (both.ref, "1.2.0")):
        trained = train_on_dataset(db, artifacts, MODEL, dataset, version=version,
                                   base_ref="surface-defects@1.0.0", by="dana")
        model_path, metadata_path = trained.write(tmp / "trained")
        publish_model(db, artifacts, model_path, metadata=metadata_path, signer=TEST_SIGNER,
                      published_by="dana")
        training = trained.metadata["training"]
        lines += [f"{version}: trained on {dataset}, {training['rows']} items (train+val), "
                  f"{training['holdout_rows']} held out (its test split); lineage metrics "
                  f"{trained.metrics}"]
    lines += [f"algorithm: {training['algorithm']}",
              f"time: datasets frozen in {frozen_s:.1f} s, both versions trained and "
              f"published in {time.monotonic() - started - frozen_s:.1f} s", ""]
    for title, dataset in (
            ("line2-holdout@1: the out-of-focus camera, frames never trained on", line2),
            ("line1-holdout@1: the shipped model's own sharp camera, frames never trained on",
             line1)):
        lines += table(title, [(name, score(db, artifacts, version, dataset))
                               for name, version in VERSIONS])
        lines += [*central_evaluation(db, artifacts, dataset.ref), ""]
    db.close()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=150, help="training frames per class")
    parser.add_argument("--holdout-per-class", type=int, default=100)
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        lines = build_report(Path(folder), args.per_class, args.holdout_per_class, started)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
