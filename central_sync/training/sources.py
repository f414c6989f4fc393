"""What `central-sync train` trains from: the base version (named, serving now, the newest
published, or the shipped sample model) and a frozen dataset version's labelled crops."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from central_sync.datasets import DatasetError, DatasetVersion, load_crop, parse_dataset_ref
from central_sync.db import CentralDB
from central_sync.registry import artifact_path
from central_sync.training.head import LabelledImage, Progress, TrainingError
from central_sync.training.retrain import BaseModel, DataSource, TrainedModel, retrain_head
from edge_agent.kernel.contract import ID_PATTERN, SEMVER_PATTERN, version_key

log = logging.getLogger(__name__)

# The sample model of a source checkout (sample_data/ is not part of the installed package).
SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "sample_data" / "surface_defects.onnx"
SHIPPED_NAME, SHIPPED_VERSION = "surface-defects", "1.0.0"


def find_dataset(db: CentralDB, ref: str) -> DatasetVersion:
    """The dataset version NAME@N, or TrainingError saying how to find one."""
    try:
        name, number = parse_dataset_ref(ref)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    dataset = db.get_dataset(name, number)
    if dataset is None:
        known = [d.ref for d in db.list_datasets(name)] or [d.ref for d in db.list_datasets()]
        raise TrainingError(f"no dataset {ref}; known: {', '.join(known) or 'none'} (freeze "
                            "labels into one with `central-sync dataset create NAME`)")
    if dataset.manifest.kind != "classification":
        raise TrainingError(f"{ref} is a {dataset.manifest.kind} dataset; `central-sync train` "
                            "retrains classifiers from a classification dataset")
    return dataset


def dataset_images(db: CentralDB, dataset: DatasetVersion) -> list[LabelledImage]:
    """The dataset's items as labelled images, each read from the database when embedded."""
    def loader(item):
        def load():
            try:
                return load_crop(db, item)
            except DatasetError as exc:
                raise TrainingError(f"{dataset.ref}: {exc}") from None
        return load

    return [LabelledImage(item.label, item.split, loader(item))
            for item in dataset.manifest.items]


def resolve_base(db: CentralDB, artifact_dir: str | Path, name: str,
                 base_ref: str | None = None) -> BaseModel:
    """The version whose trunk is kept: `base_ref` (NAME@VERSION) when given, else the version
    of `name` serving on most gateways now, else its newest published version, else (for the
    sample model) the shipped file."""
    if base_ref:
        base_name, _, version = base_ref.rpartition("@")
        if not re.fullmatch(ID_PATTERN, base_name) or not re.fullmatch(SEMVER_PATTERN, version):
            raise TrainingError(f"--base {base_ref!r} is not NAME@VERSION, e.g. "
                                "surface-defects@1.0.0; see `central-sync model list`")
        return _published(db, artifact_dir, base_name, version)
    version = serving_version(db, name) or newest_version(db, name)
    if version is not None:
        return _published(db, artifact_dir, name, version)
    if name == SHIPPED_NAME and SHIPPED_MODEL.is_file():
        log.info("base model: the shipped sample file %s", SHIPPED_MODEL)
        metadata = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())
        return BaseModel(name, metadata.get("version", SHIPPED_VERSION), SHIPPED_MODEL, metadata)
    raise TrainingError(f"no version of {name} is published; publish the model to retrain "
                        "first (`central-sync model publish FILE --metadata JSON`) or name one "
                        "with --base NAME@VERSION")


def serving_version(db: CentralDB, name: str) -> str | None:
    """The version of `name` active on most gateways (the newest on a tie); None if none."""
    counts = db.serving_versions(name)  # as evaluation's baseline counts them
    if not counts:
        return None
    return max(counts, key=lambda version: (counts[version], version_key(version)))


def newest_version(db: CentralDB, name: str) -> str | None:
    versions = [m.manifest.version for m in db.list_models() if m.manifest.name == name]
    return max(versions, key=version_key) if versions else None


def next_version(db: CentralDB, name: str, base: BaseModel) -> str:
    """One minor version above the newest published (or the base): 1.3.2 -> 1.4.0."""
    newest = max((v for v in (newest_version(db, name), base.version) if v), key=version_key)
    major, minor = (int(part) for part in newest.split(".")[:2])
    return f"{major}.{minor + 1}.0"


def _published(db: CentralDB, artifact_dir: str | Path, name: str, version: str) -> BaseModel:
    manifest = db.get_model(name, version)
    if manifest is None:
        raise TrainingError(f"{name}@{version} is not published; see `central-sync model list`")
    path = artifact_path(artifact_dir, manifest.sha256)
    if not path.is_file():
        raise TrainingError(f"the artifact of {name}@{version} is missing from {artifact_dir}; "
                            "check artifact_dir in central's configuration")
    return BaseModel(name, version, path, dict(manifest.metadata), manifest.sha256)


def train_on_dataset(db: CentralDB, artifact_dir: str | Path, name: str, dataset_ref: str, *,
                     base_ref: str | None = None, version: str | None = None,
                     labels: list[str] | None = None, by: str = "",
                     progress: Progress | None = None) -> TrainedModel:
    """Retrain `name`'s head on a dataset version (train + val splits; test held out)."""
    dataset = find_dataset(db, dataset_ref)
    base = resolve_base(db, artifact_dir, name, base_ref)
    version = version or next_version(db, name, base)
    if db.get_model(name, version) is not None:
        raise TrainingError(f"{name}@{version} is already published; versions are immutable: "
                            "choose another with --version")
    source = DataSource(f"dataset {dataset.ref} ({len(dataset.manifest.items)} items)",
                        dataset.ref, dataset.dataset_id)
    return retrain_head(base, dataset_images(db, dataset), version, source, labels, by,
                        progress, name=name)
