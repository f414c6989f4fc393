"""The model store: verified installs, atomic activation, rollback to the previous version."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.model_store import ModelStore, ModelStoreError
from tests.helpers import SAMPLE_MODEL, manifest_for


def test_install_then_activate_and_roll_back(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    v1 = manifest_for(SAMPLE_MODEL, version="1.0.0")
    v2 = manifest_for(SAMPLE_MODEL, version="1.1.0")
    store.install(v1, SAMPLE_MODEL)
    assert store.active("extruder-scrap") is None, "installing must not activate"
    store.activate("extruder-scrap", "1.0.0")
    store.install(v2, SAMPLE_MODEL)
    store.activate("extruder-scrap", "1.1.0")
    assert store.active("extruder-scrap").manifest.version == "1.1.0"
    assert store.versions("extruder-scrap") == ["1.0.0", "1.1.0"]
    restored = store.rollback("extruder-scrap")
    assert restored.manifest.version == "1.0.0"
    assert ModelStore(tmp_path / "models").active("extruder-scrap").manifest.version == "1.0.0"


def test_artifact_with_wrong_hash_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(SAMPLE_MODEL.read_bytes()[:-10])
    with pytest.raises(ModelStoreError, match="does not match the manifest"):
        store.install(manifest_for(SAMPLE_MODEL), bad)
    assert store.versions("extruder-scrap") == []


def test_installed_version_is_immutable(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.install(manifest_for(SAMPLE_MODEL), SAMPLE_MODEL)
    other = tmp_path / "other.onnx"
    other.write_bytes(SAMPLE_MODEL.read_bytes() + b"\0")
    with pytest.raises(ModelStoreError, match="immutable"):
        store.install(manifest_for(other), other)


def test_rollback_without_previous_version_is_explained(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.install(manifest_for(SAMPLE_MODEL), SAMPLE_MODEL)
    store.activate("extruder-scrap", "1.0.0")
    with pytest.raises(ModelStoreError, match="no previous version"):
        store.rollback("extruder-scrap")


def test_path_traversal_in_names_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelStoreError):
        store.activate("../etc", "1.0.0")
    with pytest.raises(ModelStoreError):
        store.get("extruder-scrap", "../../x")
