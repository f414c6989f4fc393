"""One model check for publish and the gateway: what publish accepts the gateway serves, and
what the gateway would refuse publish refuses in the same words (models built with the onnx API).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from central_sync.db import CentralDB
from central_sync.registry import RegistryError, publish_model
from edge_agent.deployment.checks import DeploymentFailed, health_check
from edge_agent.inference.model_check import ModelCheckFailed, check_model
from edge_agent.inference.vision import VisionModel
from edge_agent.kernel.contract import DeployCommand, ModelManifest, Rejection, decode, encode
from tests.edge_agent.deployment.test_deployer import deploy_command, setup
from tests.edge_agent.inference.test_vision import save
from tests.helpers import TEST_SIGNER, manifest_of

IMAGE_INPUT = "image:0"  # TensorFlow-style names: a `:` and `/` in tensor names must work
LOGITS_OUTPUT = "logits/Softmax:0"
LABELS = ["ok", "scratch", "pit", "stain"]
VISION_META = {
    "preprocessing": {"size": [16, 16], "layout": "NCHW", "color": "RGB", "scale": 1 / 255},
    "decoder": {"type": "classification", "activation": "softmax", "top_k": 2},
    "labels": LABELS,
}


def singleton_classifier(path: Path) -> Path:
    """An old model-zoo export: logits [1, 4, 1, 1] (a 1x1 convolution head, never flattened).
    Red frames give 'scratch', green 'pit', blue 'stain', dark ones 'ok'."""
    weights = np.zeros((len(LABELS), 3, 1, 1), dtype=np.float32)
    weights[1, 0] = weights[2, 1] = weights[3, 2] = 10.0
    bias = np.array([4.0, 0.0, 0.0, 0.0], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", [IMAGE_INPUT], ["pool/out:0"]),
         helper.make_node("Conv", ["pool/out:0", "head/w", "head/b"], [LOGITS_OUTPUT])],
        "singleton-head",
        [helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, [1, len(LABELS), 1, 1])],
        initializer=[numpy_helper.from_array(weights, "head/w"),
                     numpy_helper.from_array(bias, "head/b")])
    return save(graph, path)


def text_label_classifier(path: Path) -> Path:
    """A process classifier whose output is class names as text: readable only with the
    class names in the metadata's `classes`."""
    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["x:0"], ["best"], axis=1, keepdims=0),
         helper.make_node("Cast", ["best"], ["label/out:0"], to=TensorProto.STRING)],
        "text-labels",
        [helper.make_tensor_value_info("x:0", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("label/out:0", TensorProto.STRING, [None])])
    return save(graph, path)


def publish(tmp_path: Path, file: Path, kind: str, metadata: dict) -> ModelManifest:
    db = CentralDB(f"sqlite:///{tmp_path}/central.db")
    try:
        return publish_model(db, tmp_path / "artifacts", file, "m", "1.0.0", kind, metadata,
                             signer=TEST_SIGNER)
    finally:
        db.close()


def frame(bgr: tuple[int, int, int]) -> np.ndarray:
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[:] = bgr
    return image


def test_classifier_with_trailing_singleton_dimensions_publishes_passes_and_serves(
        tmp_path: Path) -> None:
    path = singleton_classifier(tmp_path / "head.onnx")
    manifest = publish(tmp_path, path, "vision", VISION_META)
    assert [s.name for s in manifest.inputs] == [IMAGE_INPUT]
    assert manifest.outputs[0].name == LOGITS_OUTPUT and manifest.outputs[0].shape == [1, 4, 1, 1]
    assert "outputs decode" in health_check(path, manifest)
    model = VisionModel(path, manifest)
    assert [model.infer(frame(c)).label for c in [(0, 0, 255), (0, 255, 0), (255, 0, 0),
                                                    (40, 40, 40)]] == \
        ["scratch", "pit", "stain", "ok"]


def test_classifier_whose_labels_do_not_fit_is_refused_at_publish_and_on_the_gateway(
        tmp_path: Path) -> None:
    path = singleton_classifier(tmp_path / "head.onnx")
    meta = {**VISION_META, "labels": ["ok", "bad"]}
    with pytest.raises(RegistryError) as at_publish:
        publish(tmp_path, path, "vision", meta)
    with pytest.raises(DeploymentFailed) as on_gateway:
        health_check(path, manifest_of(path, meta, name="m"))
    assert "has 4 classes, the manifest lists 2 labels" in str(at_publish.value)
    assert str(at_publish.value) == str(on_gateway.value)


def test_version_whose_outputs_the_pipeline_cannot_read_is_refused_in_the_same_words(
        tmp_path: Path) -> None:
    path = text_label_classifier(tmp_path / "labels.onnx")
    with pytest.raises(RegistryError) as at_publish:
        publish(tmp_path, path, "process", {})
    with pytest.raises(DeploymentFailed) as on_gateway:
        health_check(path, manifest_of(path, {}, name="m", kind="process"))
    assert "add the class names in order to the model's metadata as 'classes'" in \
        str(at_publish.value)
    assert str(at_publish.value) == str(on_gateway.value)
    with_classes = publish(tmp_path, path, "process", {"classes": ["a", "b", "c"]})
    assert "outputs decode" in check_model(path, with_classes)


def test_version_that_cannot_serve_is_never_activated(tmp_path: Path) -> None:
    """The raw model runs and its outputs are finite text, so a check that skipped the
    pipeline's post-processing activated it; the pipeline then failed on every input."""
    path = text_label_classifier(tmp_path / "labels.onnx")
    manifest = TEST_SIGNER.signed(manifest_of(path, {}, name="m", kind="process"))

    async def scenario() -> None:
        h = await setup(tmp_path, path.read_bytes())
        assert not await h.deployer.deploy(deploy_command(manifest))
        assert h.events[-1].step == "failed" and "'classes'" in h.events[-1].detail
        assert h.store.active("m") is None
        await h.buffer.close()

    asyncio.run(scenario())


def test_metadata_the_gateway_would_refuse_is_refused_at_publish_in_the_same_words(
        tmp_path: Path) -> None:
    path = singleton_classifier(tmp_path / "head.onnx")
    meta = {**VISION_META, "decoder": {"type": "segmentation"}}
    with pytest.raises(RegistryError) as at_publish:
        publish(tmp_path, path, "vision", meta)
    assert str(at_publish.value).startswith("metadata is invalid: decoder")
    good = publish(tmp_path, path, "vision", VISION_META)
    command = encode(DeployCommand(device_id="gw1", manifest=good)).replace(
        b'"decoder":{"type":"classification"', b'"decoder":{"type":"segmentation"')
    rejection = decode(command)
    assert isinstance(rejection, Rejection)
    assert str(at_publish.value) in rejection.reason


def test_check_failure_names_the_model_and_what_to_fix(tmp_path: Path) -> None:
    path = singleton_classifier(tmp_path / "head.onnx")
    meta = {**VISION_META, "golden": {"input": np.zeros((1, 3, 16, 16)).tolist(),
                                      "output": [[[[9.0]], [[0.0]], [[0.0]], [[0.0]]]]}}
    manifest = manifest_of(path, meta, name="m")
    with pytest.raises(ModelCheckFailed, match=r"golden input gives \[4.0, 0.0, 0.0, 0.0\], "
                                               r"the metadata's golden.output is \[9.0"):
        check_model(path, manifest)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest.sha256
