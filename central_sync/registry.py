"""Model registry: validate an ONNX file with ONNX Runtime, store it by sha256, record it.

Published versions are immutable: the same name@version can only ever mean the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from central_sync.db import CentralDB, ModelVersionExists, version_exists_message
from edge_agent.inference.model_check import ModelCheckFailed, check_model, inspect_model
from edge_agent.kernel.atomic_files import fsync_dir
from edge_agent.kernel.contract import (
    ID_PATTERN,
    SEMVER_PATTERN,
    SHA256_PATTERN,
    MetadataError,
    ModelManifest,
    ModelMetadata,
    TensorSpec,
    spec_differences,
    typed_metadata,
)
from edge_agent.kernel.signing import Signer

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE_BYTES = 256 * 1024
KINDS = ("process", "vision")
_HASH_BLOCK_BYTES = 1024 * 1024

class RegistryError(Exception):
    """A model cannot be published; the message says why and what to do."""


def check_metadata(metadata: dict[str, Any]) -> ModelMetadata:
    """The metadata typed, as every gateway will read it; RegistryError names each bad field."""
    try:
        return typed_metadata(metadata)
    except MetadataError as exc:
        raise RegistryError(str(exc)) from None


def manifest_diff(old: ModelManifest, new: ModelManifest) -> list[tuple[str, Any, Any]]:
    """(field, old, new) for every field that differs, metadata flattened to dotted paths."""
    def flat(manifest: ModelManifest) -> dict[str, Any]:
        data = manifest.model_dump(mode="json", exclude={"signature", "metadata"})
        data["inputs"] = [f"{s.name}: {s.dtype} {s.shape}" for s in manifest.inputs]
        data["outputs"] = [f"{s.name}: {s.dtype} {s.shape}" for s in manifest.outputs]
        out = dict(data)
        flatten("metadata", manifest.metadata, out)
        return out

    a, b = flat(old), flat(new)
    return [(key, a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys())
            if a.get(key) != b.get(key)]


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            flatten(f"{prefix}.{key}", item, out)
    else:
        out[prefix] = value


def artifact_path(artifact_dir: str | Path, sha256: str) -> Path:
    """Where the artifact with this sha256 is stored: a file directly in `artifact_dir`."""
    if not re.fullmatch(SHA256_PATTERN, sha256):
        raise ValueError(f"{sha256!r} is not a lower-case hex SHA-256; artifacts are stored "
                         "under their hash")
    return Path(artifact_dir) / f"{sha256}.onnx"


def load_metadata(path: str | Path) -> dict[str, Any]:
    """Read a metadata JSON file (an object), with errors that name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"metadata file {path} not found") from None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"metadata file {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"metadata file {path} must hold a JSON object")
    return data


def resolve_identity(
    name: str | None, version: str | None, kind: str | None, metadata: Mapping[str, Any]
) -> tuple[str, str, str]:
    """Name, version and kind: an explicit argument wins, else the metadata's value.

    Kind defaults to "process". Each value is checked against the contract's patterns.
    """
    resolved = {}
    for key, given in (("name", name), ("version", version), ("kind", kind)):
        from_meta = metadata.get(key)
        if given is not None and from_meta is not None and str(from_meta) != given:
            log.warning("argument overrides metadata key=%s argument=%s metadata=%s",
                        key, given, from_meta)
        resolved[key] = given if given is not None else from_meta
    if resolved["kind"] is None:
        resolved["kind"] = "process"
    if not resolved["name"]:
        raise RegistryError("no model name: pass --name or put \"name\" in the metadata")
    if not resolved["version"]:
        raise RegistryError("no model version: pass --version or put \"version\" in the metadata")
    name, version, kind = (str(resolved[k]) for k in ("name", "version", "kind"))
    if not re.fullmatch(ID_PATTERN, name):
        raise RegistryError(f"model name {name!r} is not valid: use letters, digits, . _ - "
                            "(at most 64, starting with a letter or digit)")
    if not re.fullmatch(SEMVER_PATTERN, version):
        raise RegistryError(f"version {version!r} is not a semantic version such as 1.4.0")
    if kind not in KINDS:
        raise RegistryError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    return name, version, kind


def check_metadata_specs(
    metadata: Mapping[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> None:
    """Refuse metadata whose "inputs"/"outputs" disagree with the model itself."""
    problems = []
    for side, actual in (("input", inputs), ("output", outputs)):
        key = f"{side}s"
        if key not in metadata:
            continue
        try:
            declared = [TensorSpec.model_validate(spec) for spec in metadata[key]]
        except (TypeError, ValidationError) as exc:
            raise RegistryError(f"metadata {key!r} must be a list of {{name, dtype, shape}}: "
                                f"{_first_line(exc)}") from None
        problems += spec_differences(side, declared, actual, source="metadata")
    if problems:
        raise RegistryError("metadata does not match the model: " + "; ".join(problems))


def file_sha256(file: str | Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with open(file, "rb") as handle:
        while block := handle.read(_HASH_BLOCK_BYTES):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def store_artifact(file: str | Path, artifact_dir: str | Path, sha256: str) -> Path:
    """Copy the file to `{artifact_dir}/{sha256}.onnx`: temp file, fsync, atomic rename."""
    target = artifact_path(artifact_dir, sha256)
    if target.exists() and file_sha256(target)[0] == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".incoming-", suffix=".onnx")
    try:
        digest = hashlib.sha256()
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide it from a service under another user
        with os.fdopen(fd, "wb") as out, open(file, "rb") as source:
            while block := source.read(_HASH_BLOCK_BYTES):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise RegistryError(f"{file} changed while it was being published; publish again")
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def publish_model(
    db: CentralDB,
    artifact_dir: str | Path,
    file: str | Path,
    name: str | None = None,
    version: str | None = None,
    kind: str | None = None,
    metadata: Mapping[str, Any] | str | Path | None = None,
    chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES,
    published_by: str = "cli",
    *,
    signer: Signer,
) -> ModelManifest:
    """Validate, store and record one model version; returns its manifest.

    `metadata` is a mapping or the path of a JSON file; it is copied whole into the manifest.
    Explicit name/version/kind arguments win over the metadata's "name"/"version"/"kind".
    Publishing identical bytes again under the same name@version returns the stored manifest;
    other bytes are refused (versions are immutable).
    """
    file = Path(file)
    if not file.is_file():
        raise RegistryError(f"model file {file} not found")
    if isinstance(metadata, str | Path):
        metadata = load_metadata(metadata)
    metadata = dict(metadata or {})
    name, version, kind = resolve_identity(name, version, kind, metadata)
    sha256, size = file_sha256(file)
    if size == 0:
        raise RegistryError(f"model file {file} is empty")

    existing = db.get_model(name, version)
    if existing is not None and existing.sha256 != sha256:
        raise RegistryError(version_exists_message(existing))
    check_metadata(metadata)
    try:
        inputs, outputs = inspect_model(file)
    except ModelCheckFailed as exc:
        raise RegistryError(str(exc)) from None
    check_metadata_specs(metadata, inputs, outputs)
    unsigned = ModelManifest(
        name=name, version=version, kind=kind, sha256=sha256, size_bytes=size,
        chunk_size_bytes=chunk_size_bytes, inputs=inputs, outputs=outputs, metadata=metadata)
    try:  # the check every gateway runs before it activates this version
        check_model(file, unsigned)
    except ModelCheckFailed as exc:
        raise RegistryError(str(exc)) from None
    stored = store_artifact(file, artifact_dir, sha256)
    if existing is not None:
        log.info("model already published name=%s version=%s sha256=%s", name, version, sha256)
        return existing

    # Devices fetching the same bytes share one artifact topic, so they must share chunking.
    same_bytes = db.get_model_by_sha256(sha256)
    if same_bytes is not None:
        chunk_size_bytes = same_bytes.chunk_size_bytes
    manifest = signer.signed(unsigned.model_copy(update={"chunk_size_bytes": chunk_size_bytes}))
    try:
        recorded = db.add_model(manifest, published_by)
    except ModelVersionExists as exc:  # published by someone else meanwhile
        raise RegistryError(str(exc)) from None
    log.info("model published name=%s version=%s sha256=%s size_bytes=%d artifact=%s by=%s",
             name, version, sha256, size, stored, published_by)
    return recorded


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
