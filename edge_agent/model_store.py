"""The on-disk model store: one folder per installed version, an atomically switched active one.

Layout: `{root}/{name}/{version}/model.onnx` and `manifest.json`; `{root}/{name}/active.json`
names the active and the previous version. Partial downloads live in `{root}/.downloads/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge_agent.kernel.atomic_files import fsync_dir, write_atomically
from edge_agent.kernel.contract import (
    ID_PATTERN,
    SEMVER_PATTERN,
    SHA256_PATTERN,
    ModelManifest,
    ModelRef,
    version_key,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
ACTIVE_FILE = "active.json"
HASH_BLOCK_BYTES = 1024 * 1024  # read a model file this much at a time while hashing it
SHORT_SHA256 = 12  # hex digits of a sha256 in messages: enough to tell artifacts apart


class ModelStoreError(Exception):
    """An install, activation or rollback cannot be done; the message says why."""


@dataclass(frozen=True)
class InstalledModel:
    manifest: ModelManifest
    path: Path

    @property
    def ref(self) -> ModelRef:
        return self.manifest.ref


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()
        self.downloads = self.root / ".downloads"
        self.downloads.mkdir(exist_ok=True)
        self._installed: dict[tuple[str, str], tuple[int, InstalledModel]] = {}

    def _model_dir(self, name: str) -> Path:
        if not re.fullmatch(ID_PATTERN, name):
            raise ModelStoreError(f"model name {name!r} is not valid")
        return self._inside(self.root / name)

    def _version_dir(self, name: str, version: str) -> Path:
        if not re.fullmatch(SEMVER_PATTERN, version):
            raise ModelStoreError(f"version {version!r} of {name} is not a semantic version")
        return self._inside(self._model_dir(name) / version)

    def download_path(self, sha256: str) -> Path:
        if not re.fullmatch(SHA256_PATTERN, sha256):
            raise ModelStoreError(f"{sha256!r} is not a lower-case hex SHA-256")
        return self._inside(self.downloads / f"{sha256}.part")

    def _inside(self, path: Path) -> Path:
        """`path`, if it resolves to somewhere under the store's root. The patterns above
        already keep out separators and leading dots; this also catches a symlink."""
        if not path.resolve().is_relative_to(self._real_root):
            raise ModelStoreError(f"{path} is outside the model store {self.root}")
        return path

    def is_installed(self, manifest: ModelManifest) -> bool:
        installed = self.get(manifest.name, manifest.version)
        return installed is not None and installed.manifest.sha256 == manifest.sha256

    def install(self, manifest: ModelManifest, artifact: Path) -> InstalledModel:
        """Move a verified artifact into its version folder; never touches the active version."""
        actual = sha256_of_file(artifact)
        if actual != manifest.sha256:
            raise ModelStoreError(
                f"{manifest.name} {manifest.version}: artifact sha256 {actual[:SHORT_SHA256]} does "
                f"not match the manifest's {manifest.sha256[:SHORT_SHA256]}; it will be fetched "
                "again"
            )
        target = self._version_dir(manifest.name, manifest.version)
        existing = self.get(manifest.name, manifest.version)
        if existing is not None:
            if existing.manifest.sha256 == manifest.sha256:
                return existing
            raise ModelStoreError(
                f"{manifest.name} {manifest.version} is already installed with a different "
                f"sha256 ({existing.manifest.sha256[:SHORT_SHA256]}); versions are immutable"
            )
        staging = target.with_name(f".{manifest.version}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copyfile(artifact, staging / MODEL_FILE)
        with (staging / MODEL_FILE).open("rb") as f:
            os.fsync(f.fileno())
        write_atomically(staging / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
        os.rename(staging, target)
        fsync_dir(target.parent)
        log.info("model installed name=%s version=%s sha256=%s", manifest.name, manifest.version,
                 manifest.sha256[:SHORT_SHA256])
        return InstalledModel(manifest, target / MODEL_FILE)

    def get(self, name: str, version: str) -> InstalledModel | None:
        folder = self._version_dir(name, version)
        manifest_file = folder / MANIFEST_FILE
        try:
            stamp = manifest_file.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        # Pipelines ask for the active model on every frame: parse each manifest once.
        cached = self._installed.get((name, version))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        manifest = ModelManifest.model_validate_json(manifest_file.read_bytes())
        installed = InstalledModel(manifest, folder / MODEL_FILE)
        self._installed[(name, version)] = (stamp, installed)
        return installed

    def _pointer(self, name: str) -> dict[str, str | None]:
        pointer = self._model_dir(name) / ACTIVE_FILE
        if not pointer.exists():
            return {"active": None, "previous": None}
        return json.loads(pointer.read_text())

    def active(self, name: str) -> InstalledModel | None:
        version = self._pointer(name)["active"]
        return self.get(name, version) if version else None

    def activate(self, name: str, version: str) -> InstalledModel:
        installed = self.get(name, version)
        if installed is None:
            raise ModelStoreError(f"{name} {version} is not installed; deploy it first")
        current = self._pointer(name)["active"]
        if current == version:
            return installed
        pointer = {"active": version, "previous": current}
        write_atomically(self._model_dir(name) / ACTIVE_FILE, json.dumps(pointer).encode())
        log.info("model activated name=%s version=%s previous=%s", name, version, current)
        return installed

    def rollback(self, name: str, to_version: str | None = None) -> InstalledModel:
        """Reactivate the previously active version, or `to_version` if given."""
        target = to_version or self._pointer(name)["previous"]
        if not target:
            raise ModelStoreError(f"{name} has no previous version to roll back to")
        if self.get(name, target) is None:
            raise ModelStoreError(f"{name} {target} is not installed here; installed: "
                                  f"{', '.join(self.versions(name)) or 'none'}")
        return self.activate(name, target)

    def deactivate(self, name: str) -> None:
        """Stop serving the model (its versions stay installed)."""
        current = self._pointer(name)["active"]
        pointer = {"active": None, "previous": current}
        write_atomically(self._model_dir(name) / ACTIVE_FILE, json.dumps(pointer).encode())
        log.info("model deactivated name=%s previous=%s", name, current)

    def newest_version(self, name: str) -> str | None:
        """The highest version ever installed: older ones arrive only by rollback."""
        versions = self.versions(name)
        return max(versions, key=version_key) if versions else None

    def active_models(self) -> list[InstalledModel]:
        found = []
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                installed = self.active(folder.name)
                if installed is not None:
                    found.append(installed)
        return found

    def versions(self, name: str) -> list[str]:
        folder = self._model_dir(name)
        if not folder.exists():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / MANIFEST_FILE).exists())
