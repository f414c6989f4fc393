"""Dataset versions: reviewed defects and samples frozen as immutable, content-addressed
manifests (`create_dataset`), the crop the model saw of each item (`load_crop`), differences
between versions, and exports for training tools (`export_dataset`: ImageFolder, YOLO)."""

from central_sync.datasets.export import LAYOUTS, ExportResult, export_dataset, yolo_lines
from central_sync.datasets.freeze import (
    MAX_ITEMS,
    DatasetTooLarge,
    EmptySelection,
    create_dataset,
    crop,
    load_crop,
)
from central_sync.db.dataset_manifest import (
    OK_LABEL,
    SPLIT_RULE,
    SPLITS,
    DatasetDiff,
    DatasetError,
    DatasetItem,
    DatasetManifest,
    DatasetSummary,
    DatasetVersion,
    diff_manifests,
    parse_dataset_ref,
    split_of,
)
from central_sync.db.datasets import DatasetSelection, NothingNewToFreeze

__all__ = [
    "LAYOUTS",
    "MAX_ITEMS",
    "OK_LABEL",
    "SPLITS",
    "SPLIT_RULE",
    "DatasetDiff",
    "DatasetError",
    "DatasetItem",
    "DatasetManifest",
    "DatasetSelection",
    "DatasetSummary",
    "DatasetTooLarge",
    "DatasetVersion",
    "EmptySelection",
    "ExportResult",
    "NothingNewToFreeze",
    "create_dataset",
    "crop",
    "diff_manifests",
    "export_dataset",
    "load_crop",
    "parse_dataset_ref",
    "split_of",
    "yolo_lines",
]
