"""Publishing models: ONNX Runtime validation, storage by sha256, immutability, metadata."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from central_helpers import make_onnx_model

from central_sync.db import CentralDB
from central_sync.registry import RegistryError, artifact_path, publish_model
from edge_agent.kernel.contract import ModelManifest
from tests.helpers import TEST_SIGNER, TEST_VERIFIER


def publish(*args, **kwargs) -> ModelManifest:
    return publish_model(*args, signer=TEST_SIGNER, **kwargs)


def test_publish_valid_model_stores_artifact_and_manifest(
    db: CentralDB, onnx_file: Path, tmp_path: Path
) -> None:
    artifacts = tmp_path / "artifacts"
    manifest = publish(db, artifacts, onnx_file, "scrap-model", "1.0.0",
                       chunk_size_bytes=64, published_by="alice")
    data = onnx_file.read_bytes()
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.size_bytes == len(data)
    assert manifest.chunk_size_bytes == 64
    assert artifact_path(artifacts, manifest.sha256).read_bytes() == data
    assert [(s.name, s.dtype, s.shape) for s in manifest.inputs] == [
        ("features", "float32", [None, 3])]
    assert [(s.name, s.dtype, s.shape) for s in manifest.outputs] == [("y", "float32", [None, 1])]
    assert db.get_model("scrap-model", "1.0.0") == manifest
    assert not list(artifacts.glob(".incoming-*"))
    assert manifest.key_id == TEST_SIGNER.key_id
    TEST_VERIFIER.verify(manifest, "manifest")  # signed over what is stored


def test_same_bytes_again_is_a_no_op_returning_the_stored_manifest(
    db: CentralDB, onnx_file: Path, tmp_path: Path
) -> None:
    first = publish(db, tmp_path / "a", onnx_file, "scrap-model", "1.0.0")
    again = publish(db, tmp_path / "a", onnx_file, "scrap-model", "1.0.0",
                          published_by="someone-else")
    assert again == first
    assert len(db.list_models()) == 1


def test_different_bytes_under_existing_version_are_refused(
    db: CentralDB, onnx_file: Path, tmp_path: Path
) -> None:
    first = publish(db, tmp_path / "a", onnx_file, "surface-defects", "1.4.0")
    other = make_onnx_model(tmp_path / "other.onnx", weight=2.0)
    with pytest.raises(RegistryError) as refused:
        publish(db, tmp_path / "a", other, "surface-defects", "1.4.0")
    assert str(refused.value) == (
        f"surface-defects 1.4.0 already exists with sha256 {first.sha256[:12]}...; "
        "versions are immutable, publish 1.4.1")
    assert publish(db, tmp_path / "a", other, "surface-defects", "1.4.1").version == "1.4.1"


def test_file_that_is_not_onnx_is_refused_naming_file_and_reason(
    db: CentralDB, tmp_path: Path
) -> None:
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("this is not a model")
    with pytest.raises(RegistryError, match=r"notes\.onnx is not a model ONNX Runtime can load: "):
        publish(db, tmp_path / "a", bogus, "scrap-model", "1.0.0")
    assert db.list_models() == []
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").iterdir())


def test_missing_file_and_bad_version_are_refused(db: CentralDB, onnx_file: Path,
                                                  tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not found"):
        publish(db, tmp_path, tmp_path / "absent.onnx", "m", "1.0.0")
    with pytest.raises(RegistryError, match="not a semantic version"):
        publish(db, tmp_path, onnx_file, "m", "1.0")
    with pytest.raises(RegistryError, match="name"):
        publish(db, tmp_path, onnx_file, "bad name", "1.0.0")


def test_metadata_file_is_copied_whole_and_supplies_name_and_version(
    db: CentralDB, onnx_file: Path, tmp_path: Path
) -> None:
    meta = {
        "name": "scrap-model", "version": "2.0.0", "kind": "process",
        "inputs": [{"name": "features", "dtype": "float32", "shape": [None, 3]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 1]}],
        "features": ["a", "b", "c"], "golden": {"input": [[1, 2, 3]], "output": [[6]]},
    }
    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps(meta))
    manifest = publish(db, tmp_path / "a", onnx_file, metadata=meta_file)
    assert (manifest.name, manifest.version, manifest.kind) == ("scrap-model", "2.0.0", "process")
    assert manifest.metadata == meta


def test_explicit_arguments_win_over_metadata(db: CentralDB, onnx_file: Path,
                                              tmp_path: Path) -> None:
    meta = {"name": "scrap-model", "version": "2.0.0", "kind": "vision"}
    manifest = publish(db, tmp_path, onnx_file, name="other", version="3.0.0",
                       kind="process", metadata=meta)
    assert (manifest.name, manifest.version, manifest.kind) == ("other", "3.0.0", "process")


def test_metadata_spec_mismatch_is_refused_saying_what_differs(
    db: CentralDB, onnx_file: Path, tmp_path: Path
) -> None:
    meta = {"inputs": [{"name": "features", "dtype": "float32", "shape": [None, 6]}],
            "outputs": [{"name": "scrap_rate_pct", "dtype": "float32", "shape": [None, 1]}]}
    with pytest.raises(RegistryError) as refused:
        publish(db, tmp_path, onnx_file, "scrap-model", "1.0.0", metadata=meta)
    message = str(refused.value)
    assert "input 'features' has shape ?x3 in the model, metadata says ?x6" in message
    assert "outputs are ['y'] in the model, metadata says ['scrap_rate_pct']" in message
    assert db.list_models() == []


def test_named_dynamic_dimension_matches_null(db: CentralDB, tmp_path: Path) -> None:
    model = make_onnx_model(tmp_path / "m.onnx")
    meta = {"inputs": [{"name": "features", "dtype": "float32", "shape": ["batch", 3]}]}
    assert publish(db, tmp_path, model, "m", "1.0.0", metadata=meta).version == "1.0.0"


def test_unreadable_metadata_file_is_refused(db: CentralDB, onnx_file: Path,
                                             tmp_path: Path) -> None:
    bad = tmp_path / "meta.json"
    bad.write_text("{not json")
    with pytest.raises(RegistryError, match=r"meta\.json is not readable JSON"):
        publish(db, tmp_path, onnx_file, "m", "1.0.0", metadata=bad)


def test_same_bytes_under_two_versions_share_chunking(db: CentralDB, onnx_file: Path,
                                                      tmp_path: Path) -> None:
    first = publish(db, tmp_path, onnx_file, "m", "1.0.0", chunk_size_bytes=2048)
    second = publish(db, tmp_path, onnx_file, "m", "1.0.1", chunk_size_bytes=4096)
    assert second.chunk_size_bytes == first.chunk_size_bytes == 2048


def test_metadata_known_keys_are_validated_naming_the_field(db: CentralDB, onnx_file: Path,
                                                           tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as refused:
        publish(db, tmp_path, onnx_file, "m", "1.0.0",
                metadata={"probation": {"duration_s": -1}, "latency_budget_ms": 0})
    message = str(refused.value)
    assert "probation.duration_s" in message and "latency_budget_ms" in message


def test_wrong_golden_output_is_refused_at_publish(db: CentralDB, onnx_file: Path,
                                                   tmp_path: Path) -> None:
    # The test model sums its three inputs.
    good = {"golden": {"input": [[1.0, 2.0, 3.0]], "output": [[6.0]], "tolerance": 1e-5}}
    assert publish(db, tmp_path, onnx_file, "m", "1.0.0", metadata=good).version == "1.0.0"
    bad = {"golden": {"input": [[1.0, 2.0, 3.0]], "output": [[7.0]]}}
    with pytest.raises(RegistryError, match=r"golden input gives \[6.0\], the metadata's "
                                            r"golden.output is \[7.0\]"):
        publish(db, tmp_path, onnx_file, "m", "1.0.1", metadata=bad)


def test_manifest_diff_names_what_changed(db: CentralDB, onnx_file: Path,
                                          tmp_path: Path) -> None:
    from central_sync.registry import manifest_diff

    old = publish(db, tmp_path, onnx_file, "m", "1.0.0",
                  metadata={"lineage": {"author": "ann"}, "thresholds": {"scrap": 3.0}})
    other = make_onnx_model(tmp_path / "o.onnx", weight=2.0)
    new = publish(db, tmp_path, other, "m", "1.1.0",
                  metadata={"lineage": {"author": "bob"}, "latency_budget_ms": 5})
    changes = {key: (a, b) for key, a, b in manifest_diff(old, new)}
    assert changes["version"] == ("1.0.0", "1.1.0")
    assert changes["metadata.lineage.author"] == ("ann", "bob")
    assert changes["metadata.thresholds.scrap"] == (3.0, None)
    assert changes["metadata.latency_budget_ms"] == (None, 5)
    assert "sha256" in changes and "inputs" not in changes


def test_vision_model_whose_metadata_does_not_fit_is_refused_at_publish(
        db: CentralDB, tmp_path: Path) -> None:
    from tests.helpers import REPO

    model = REPO / "sample_data" / "surface_defects.onnx"
    meta = json.loads((REPO / "sample_data" / "surface_defects.json").read_text())
    assert publish(db, tmp_path, model, metadata=meta).kind == "vision"
    meta["preprocessing"]["size"] = [224, 224]
    with pytest.raises(RegistryError, match="preprocessing gives height 224"):
        publish(db, tmp_path, model, version="1.0.1", metadata=meta)
    del meta["decoder"]
    with pytest.raises(RegistryError, match="vision metadata is invalid: decoder"):
        publish(db, tmp_path, model, version="1.0.2", metadata=meta)
