"""Retrain the head of a vision classifier on labelled images: embed them through the frozen
trunk, fit a new final layer, and write the new ONNX file with metadata ready to publish
(labels, regenerated golden check, lineage, training summary, hold-out metrics)."""

from __future__ import annotations

import copy
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from central_sync import __version__
from central_sync.training.graph import GraphError, HeadCut, cut_head, trunk, with_head
from central_sync.training.head import (
    ALGORITHM,
    LabelledImage,
    Progress,
    TrainingError,
    accuracy,
    embed,
    fit_head,
    predict,
    targets_of,
)
from edge_agent.inference.vision import Preprocessor
from edge_agent.kernel.atomic_files import write_atomically
from edge_agent.kernel.contract import (
    SEMVER_PATTERN,
    ClassificationDecoder,
    MetadataError,
    typed_metadata,
)

log = logging.getLogger(__name__)

TRAIN_SPLITS = ("train", "val")
HOLDOUT_SPLIT = "test"
GOLDEN_TOLERANCE = 1e-3


@dataclass(frozen=True)
class BaseModel:
    """The version whose trunk is kept: its ONNX file and metadata."""

    name: str
    version: str
    path: Path
    metadata: dict[str, Any]
    sha256: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class DataSource:
    """Where the labelled images come from, for the lineage: a dataset version, or words."""

    description: str
    dataset: str = ""  # NAME@N
    dataset_id: str = ""


@dataclass
class TrainedModel:
    """A retrained version, not yet written: its graph and metadata, and what it scored."""

    name: str
    version: str
    model: onnx.ModelProto
    metadata: dict[str, Any]
    labels: list[str]
    rows: int
    holdout_rows: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def file_stem(self) -> str:
        return f"{self.name}-{self.version}"

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """Write NAME-VERSION.onnx and NAME-VERSION.json into out_dir; their paths."""
        out_dir.mkdir(parents=True, exist_ok=True)
        model_path = out_dir / f"{self.file_stem}.onnx"
        metadata_path = out_dir / f"{self.file_stem}.json"
        write_atomically(model_path, self.model.SerializeToString())
        write_atomically(metadata_path, metadata_text(self.metadata))
        return model_path, metadata_path


def retrain_head(base: BaseModel, items: Sequence[LabelledImage], version: str,
                 source: DataSource, labels: Sequence[str] | None = None, author: str = "",
                 progress: Progress | None = None, name: str | None = None) -> TrainedModel:
    """The base model with a new head fitted on the train and val items; the test items are
    the hold-out. `labels` (default: the base model's) are the new model's classes in output
    order; every one needs training items and every item's class must be among them. The new
    version is `name` (default: the base's name) at `version`."""
    if not re.fullmatch(SEMVER_PATTERN, version):
        raise TrainingError(f"version {version!r} is not a semantic version such as 1.1.0")
    meta = _vision_classifier_metadata(base)
    classes = _classes(base, meta.labels or [], items, labels)
    try:
        graph = onnx.load(str(base.path))
    except Exception as exc:  # protobuf's DecodeError, OSError and others for a bad file
        raise TrainingError(f"{base.ref}: {base.path} is not a readable ONNX file: {exc}"
                            ) from None
    try:
        cut = cut_head(graph)
    except GraphError as exc:
        raise TrainingError(f"{base.ref}: {exc}") from None
    log.info("embedding images=%d base=%s embedding=%s dim=%d", len(items), base.ref,
             cut.embedding, cut.dim)
    embeddings = embed(trunk(cut), meta.preprocessing, [item.image for item in items],
                       len(items), progress)
    is_train = np.asarray([item.split in TRAIN_SPLITS for item in items], dtype=bool)
    is_holdout = np.asarray([item.split == HOLDOUT_SPLIT for item in items], dtype=bool)
    targets = targets_of([item.label for item in items], classes)
    weight, bias = fit_head(embeddings[is_train], targets[is_train], len(classes))
    metrics = _metrics(cut, meta.labels or [], classes, embeddings, targets, weight, bias,
                       is_train, is_holdout)
    model = with_head(cut, weight, bias)
    trained = TrainedModel(name or base.name, version, model, {}, list(classes),
                           int(is_train.sum()), int(is_holdout.sum()), metrics)
    trained.metadata = _metadata(base, trained, source, author, items, cut)
    return trained


def _vision_classifier_metadata(base: BaseModel):
    try:
        meta = typed_metadata(base.metadata)
    except MetadataError as exc:
        raise TrainingError(f"{base.ref}: {exc}") from None
    if meta.preprocessing is None or not isinstance(meta.decoder, ClassificationDecoder):
        raise TrainingError(f"{base.ref} is not a vision classifier (its metadata needs "
                            "preprocessing and a classification decoder); head retraining "
                            "takes one")
    return meta


def _classes(base: BaseModel, base_labels: list[str], items: Sequence[LabelledImage],
             labels: Sequence[str] | None) -> list[str]:
    """The new model's classes, checked against the items: a class without training items
    could never be predicted, an item of an unknown class never be learnt."""
    chosen = list(labels) if labels else list(base_labels)
    if not chosen:
        raise TrainingError(f"{base.ref} has no labels in its metadata; name the classes in "
                            "output order with --labels")
    if len(set(chosen)) != len(chosen):
        raise TrainingError(f"--labels names a class twice: {', '.join(chosen)}")
    seen = Counter(item.label for item in items if item.split in TRAIN_SPLITS)
    unknown = sorted({item.label for item in items} - set(chosen))
    if unknown:
        raise TrainingError(
            f"the dataset has class{'es' if len(unknown) > 1 else ''} {', '.join(unknown)} that "
            f"{base.ref} does not know ({', '.join(base_labels)}); to add "
            f"{'them' if len(unknown) > 1 else 'it'}, list the new model's classes with "
            f"--labels {','.join([*chosen, *unknown])}")
    missing = [label for label in chosen if not seen[label]]
    if missing:
        kept = [label for label in chosen if seen[label]]
        raise TrainingError(
            f"no training items of {', '.join(missing)}: the new model could never predict "
            f"{'them' if len(missing) > 1 else 'it'}; label examples and freeze a new dataset "
            f"version, or drop {'them' if len(missing) > 1 else 'it'} deliberately with "
            f"--labels {','.join(kept)}")
    return chosen


def _metrics(cut: HeadCut, base_labels: list[str], classes: list[str], embeddings: np.ndarray,
             targets: np.ndarray, weight: np.ndarray, bias: np.ndarray, is_train: np.ndarray,
             is_holdout: np.ndarray) -> dict[str, float]:
    """Accuracy on the training items and the hold-out, and the base model's on the same
    hold-out (its own head on the same embeddings: exactly what it would answer)."""
    metrics = {"train_accuracy": accuracy(predict(embeddings[is_train], weight, bias),
                                          targets[is_train])}
    holdout = embeddings[is_holdout]
    metrics["holdout_accuracy"] = accuracy(predict(holdout, weight, bias), targets[is_holdout])
    if base_labels and len(base_labels) == cut.classes:
        names = [classes[t] for t in targets[is_holdout]]
        metrics["base_holdout_accuracy"] = accuracy(
            predict(holdout, cut.weight, cut.bias), targets_of(names, base_labels))
    if not is_holdout.any():
        log.warning("no hold-out items (split test): no hold-out metrics")
    return {key: round(value, 4) for key, value in metrics.items() if value is not None}


def _metadata(base: BaseModel, trained: TrainedModel, source: DataSource, author: str,
              items: Sequence[LabelledImage], cut: HeadCut) -> dict[str, Any]:
    meta = copy.deepcopy(base.metadata)
    if meta.pop("reference", None) is not None:
        log.warning("reference statistics of %s dropped: they describe its training data; "
                    "drift for the new version is judged without them", base.ref)
    meta.update(name=trained.name, version=trained.version, kind="vision",
                labels=trained.labels)
    meta["golden"] = _golden(base, trained, items)
    if "outputs" in meta:  # a declared output spec must follow the new class count
        meta["outputs"] = _output_specs(trained.model)
    counts = Counter(item.label for item in items if item.split in TRAIN_SPLITS)
    meta["lineage"] = {
        "training_data": source.description,
        "dataset": source.dataset,
        "dataset_id": source.dataset_id,
        "metrics": trained.metrics,
        "code_revision": f"edge-mlops {__version__} (central-sync train)",
        "author": author,
        "notes": f"head retrained on {base.ref}: trunk frozen, new final layer",
        "base_model": base.ref,
        "base_sha256": base.sha256,
    }
    meta["training"] = {
        "algorithm": f"{ALGORITHM} ({cut.dim} values at {cut.embedding!r}) of {base.ref}",
        "rows": trained.rows,
        "holdout_rows": trained.holdout_rows,
        "data": (f"{source.dataset or source.description}: splits "
                 f"{' + '.join(TRAIN_SPLITS)} for training, {HOLDOUT_SPLIT} held out; "
                 f"training items per class: "
                 + ", ".join(f"{label} {counts[label]}" for label in trained.labels)),
    }
    return meta


def _golden(base: BaseModel, trained: TrainedModel, items: Sequence[LabelledImage]
            ) -> dict[str, Any]:
    """The base's golden input (else the first item, preprocessed) with the new model's
    output, rounded as stored, so gateways and central check the new weights."""
    session = ort.InferenceSession(trained.model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    dtype = np.uint8 if spec.type == "tensor(uint8)" else np.float32
    golden = (base.metadata.get("golden") or {}).get("input")
    if golden is None:
        preprocessing = typed_metadata(base.metadata).preprocessing
        golden = Preprocessor(preprocessing, np.dtype(dtype).name)(items[0].image())[0]
    tensor = np.asarray(golden)
    if tensor.dtype.kind == "f":  # rounded as stored, so the output is what it gives
        tensor = np.round(tensor.astype(np.float64), 4)
    output = session.run(None, {spec.name: tensor.astype(dtype)})[0]
    return {"input": tensor.tolist(),
            "output": np.round(output.astype(np.float64), 5).tolist(),
            "tolerance": GOLDEN_TOLERANCE}


def _output_specs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [{"name": o.name, "dtype": "float32", "shape": list(o.shape)}
            for o in session.get_outputs()]


def metadata_text(meta: dict[str, Any]) -> str:
    """Readable JSON, the golden tensor on one line (it is thousands of numbers)."""
    rest = {key: value for key, value in meta.items() if key != "golden"}
    if "golden" not in meta:
        return json.dumps(rest, indent=2) + "\n"
    head = json.dumps(rest, indent=2)[:-2]
    golden = json.dumps(meta["golden"], separators=(",", ":"))
    return f'{head},\n  "golden": {golden}\n}}\n'
