"""Publishing a model version from the browser: the upload form's fields and files, then the
same registry code as `central-sync model publish`, its refusals shown as they are."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request

from central_sync.datasets import DatasetError
from central_sync.db import CentralDB
from central_sync.registry import RegistryError, load_metadata, publish_model
from central_sync.web.uploads import Upload, UploadRefused, read_upload
from edge_agent.kernel.contract import ModelManifest
from edge_agent.kernel.signing import Signer

log = logging.getLogger(__name__)

FILES = {"model": ".onnx", "metadata": ".json"}
FIELDS = {"csrf", "name", "version", "kind", "dataset", "code_revision", "author", "notes"}
LINEAGE_FIELDS = ("code_revision", "author", "notes")


@dataclass(frozen=True)
class UploadedVersion:
    manifest: ModelManifest
    dataset: str | None  # "NAME@N" to evaluate it on, as the form asked


async def read_version_upload(request: Request, folder: Path, max_bytes: int,
                              timeout_s: float,
                              check_fields: Callable[[dict[str, str]], None]) -> Upload:
    """The publish form: the .onnx and .json files written under `folder`."""
    return await read_upload(request, folder, max_bytes, FILES, FIELDS, timeout_s,
                             check_fields)


def publish_upload(db: CentralDB, artifact_dir: Path, signer: Signer, chunk_size_bytes: int,
                   upload: Upload, by: str) -> UploadedVersion:
    """Publish the uploaded version as `by`; UploadRefused (422) carries the registry's
    message, naming the uploaded files as the person called them."""
    fields = upload.fields
    folder = upload.files["model"].path.parent
    try:
        metadata = load_metadata(upload.files["metadata"].path)
        lineage = {key: fields[key] for key in LINEAGE_FIELDS if fields.get(key)}
        dataset = fields.get("dataset") or None
        if dataset is not None:
            lineage.update(_dataset_lineage(db, dataset))
        if lineage:
            metadata["lineage"] = {**(metadata.get("lineage") or {}), **lineage}
        manifest = publish_model(
            db, artifact_dir, upload.files["model"].path, signer=signer,
            name=fields.get("name") or None, version=fields.get("version") or None,
            kind=fields.get("kind") or None, metadata=metadata,
            chunk_size_bytes=chunk_size_bytes, published_by=by)
    except RegistryError as exc:
        raise UploadRefused(str(exc).replace(f"{folder}/", ""), 422) from None
    log.info("model published from the web name=%s version=%s by=%s dataset=%s",
             manifest.name, manifest.version, by, dataset or "-")
    return UploadedVersion(manifest, dataset)


def _dataset_lineage(db: CentralDB, ref: str) -> dict[str, Any]:
    """lineage.dataset and dataset_id for a dataset version that exists; RegistryError
    otherwise, so a typo does not publish a version that is never evaluated."""
    try:
        return db.require_dataset(ref).lineage
    except DatasetError as exc:
        raise RegistryError(str(exc)) from None
