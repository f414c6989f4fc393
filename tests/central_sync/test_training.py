"""Head retraining: the ONNX surgery, the fit on labelled images, and the written version,
which central's registry must accept as it accepts any published model."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from central_sync.db import CentralDB
from central_sync.registry import publish_model
from central_sync.training import DataSource, TrainingError, retrain_head
from central_sync.training.graph import GraphError, cut_head, trunk, with_head
from central_sync.training.retrain import TrainedModel
from sample_data.make_vision_data import to_tensor
from tests.helpers import TEST_SIGNER
from tests.training_helpers import (
    SHIPPED_MODEL,
    labelled_patches,
    shipped_base,
    split_items,
)

SOURCE = DataSource("synthetic out-of-focus patches, seed 3", "surface-labels@1", "ab" * 32)


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


@pytest.fixture(scope="module")
def patches() -> list[tuple[str, np.ndarray]]:
    return labelled_patches(per_class=60, seed=3)


@pytest.fixture(scope="module")
def trained(patches) -> TrainedModel:
    return retrain_head(shipped_base(), split_items(patches), "1.1.0", SOURCE, author="dana")


def test_the_base_model_s_own_final_layer_on_the_cut_graph_gives_its_logits(patches) -> None:
    base = onnx.load(str(SHIPPED_MODEL))
    cut = cut_head(base)
    assert (cut.embedding, cut.dim, cut.classes) == ("/17/Flatten_output_0", 64, 4)
    images = to_tensor(np.stack([image for _, image in patches[:32]]))
    expected = run(base, {"images": images})

    rebuilt = with_head(cut, cut.weight, cut.bias)
    np.testing.assert_allclose(run(rebuilt, {"images": images}), expected, atol=1e-5)
    embeddings = run(trunk(cut), {"images": images})
    assert embeddings.shape == (32, 64)
    np.testing.assert_allclose(embeddings @ cut.weight.T + cut.bias, expected, atol=1e-4)
    assert [o.name for o in rebuilt.graph.output] == ["logits"]
    assert {i.name for i in rebuilt.graph.initializer} >= {"retrained_head.weight"}
    assert "18.weight" not in {i.name for i in rebuilt.graph.initializer}


def _matmul_classifier(softmax: bool) -> onnx.ModelProto:
    """x [N, 3] -> Relu(x @ A) [N, 5] -> @ W + b [N, 2] (-> Softmax): a MatMul + Add head."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "A"], ["h0"]),
             helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("MatMul", ["h", "W"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["scores" if not softmax else "logits"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["scores"], axis=1))
    constants = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
                 for name, shape in (("A", (3, 5)), ("W", (5, 2)), ("b", (2,)))]
    graph = helper.make_graph(
        nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 2])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("softmax", [False, True], ids=["logits", "softmax"])
def test_a_matmul_add_head_is_found_and_replaced_before_a_trailing_softmax(softmax) -> None:
    model = _matmul_classifier(softmax)
    x = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    cut = cut_head(model)
    assert (cut.embedding, cut.dim, cut.classes) == ("h", 5, 2)
    np.testing.assert_allclose(run(with_head(cut, cut.weight, cut.bias), {"x": x}),
                               run(model, {"x": x}), atol=1e-6)
    three = with_head(cut, np.ones((3, 5), np.float32), np.zeros(3, np.float32))
    assert run(three, {"x": x}).shape == (6, 3)


def test_a_model_without_a_final_linear_layer_is_refused_with_the_reason() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(GraphError, match=r"come from a Relu node.*needs a final Gemm or MatMul"):
        cut_head(helper.make_model(graph))


def test_training_beats_the_base_model_on_the_hold_out_and_writes_what_it_says(
        trained: TrainedModel, tmp_path: Path) -> None:
    metrics = trained.metrics
    assert metrics["holdout_accuracy"] > 0.5, "four classes: chance is 0.25"
    assert metrics["holdout_accuracy"] > metrics["base_holdout_accuracy"], metrics
    assert (trained.rows, trained.holdout_rows) == (192, 48)
    meta = trained.metadata
    assert meta["labels"] == ["ok", "scratch", "pit", "stain"]
    assert meta["version"] == "1.1.0" and meta["decoder"]["type"] == "classification"
    lineage = meta["lineage"]
    assert lineage["dataset"] == "surface-labels@1" and lineage["dataset_id"] == "ab" * 32
    assert lineage["code_revision"].startswith("edge-mlops 0.")
    assert lineage["metrics"] == metrics and lineage["base_model"] == "surface-defects@1.0.0"
    assert meta["training"]["rows"] == 192 and meta["training"]["holdout_rows"] == 48
    assert "LogisticRegression" in meta["training"]["algorithm"]

    model_path, metadata_path = trained.write(tmp_path)
    assert model_path.name == "surface-defects-1.1.0.onnx"
    written = json.loads(metadata_path.read_text())
    golden = np.asarray(written["golden"]["input"], dtype=np.float32)
    np.testing.assert_allclose(run(onnx.load(str(model_path)), {"images": golden}),
                               written["golden"]["output"], atol=1e-4)


def test_the_written_version_passes_central_s_publish_check(trained, tmp_path: Path) -> None:
    model_path, metadata_path = trained.write(tmp_path / "out")
    db = CentralDB(tmp_path / "central.db")
    try:
        manifest = publish_model(db, tmp_path / "artifacts", model_path,
                                 metadata=metadata_path, signer=TEST_SIGNER)
    finally:
        db.close()
    assert (manifest.name, manifest.version, manifest.kind) == ("surface-defects", "1.1.0",
                                                               "vision")
    assert [(o.name, o.shape) for o in manifest.outputs] == [("logits", ["batch", 4])]
    assert manifest.meta.lineage.dataset == "surface-labels@1"


def test_the_same_items_give_the_same_weights(patches, trained, tmp_path: Path) -> None:
    again = retrain_head(shipped_base(), split_items(patches), "1.1.0", SOURCE, author="dana")
    first, second = trained.write(tmp_path / "a"), again.write(tmp_path / "b")
    assert first[0].read_bytes() == second[0].read_bytes()
    assert first[1].read_bytes() == second[1].read_bytes()


def test_a_class_the_base_lacks_is_refused_unless_labels_name_it(patches, tmp_path) -> None:
    dents = [(label if label != "stain" else "dent", image) for label, image in patches]
    with pytest.raises(TrainingError, match=r"class dent that surface-defects@1.0.0 does not "
                                            r"know.*--labels ok,scratch,pit,stain,dent"):
        retrain_head(shipped_base(), split_items(dents), "1.1.0", SOURCE)
    with pytest.raises(TrainingError, match=r"no training items of stain.*--labels "
                                            r"ok,scratch,pit,dent"):
        retrain_head(shipped_base(), split_items(dents), "1.1.0", SOURCE,
                     labels=["ok", "scratch", "pit", "stain", "dent"])

    trained = retrain_head(shipped_base(), split_items(dents), "1.1.0", SOURCE,
                           labels=["ok", "scratch", "pit", "dent"])
    assert trained.labels == ["ok", "scratch", "pit", "dent"]
    model_path, metadata_path = trained.write(tmp_path)
    db = CentralDB(tmp_path / "central.db")
    try:
        manifest = publish_model(db, tmp_path / "artifacts", model_path,
                                 metadata=metadata_path, signer=TEST_SIGNER)
    finally:
        db.close()
    assert manifest.meta.labels == ["ok", "scratch", "pit", "dent"]
    assert manifest.outputs[0].shape == ["batch", 4]


def test_one_class_or_a_bad_version_is_refused_before_any_work(patches) -> None:
    only_ok = [(label, image) for label, image in patches if label == "ok"]
    with pytest.raises(TrainingError, match="only one class"):
        retrain_head(shipped_base(), split_items(only_ok), "1.1.0", SOURCE, labels=["ok"])
    with pytest.raises(TrainingError, match="not a semantic version"):
        retrain_head(shipped_base(), split_items(patches), "1.1", SOURCE)


def test_without_scikit_learn_the_error_names_the_install_command(patches, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(TrainingError, match=r"scikit-learn: pip install 'edge-mlops\[training\]'"):
        retrain_head(shipped_base(), split_items(patches[:40]), "1.1.0", SOURCE)
