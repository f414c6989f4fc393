"""Embeddings of labelled images through a frozen trunk, and the new head fitted on them.

Images go through the gateway's own preprocessing (edge_agent.inference.vision), so the head
learns from exactly the tensors the model will see on the line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from edge_agent.inference.vision import Preprocessor
from edge_agent.kernel.contract import Preprocessing

log = logging.getLogger(__name__)

BATCH = 64
SEED = 0
REGULARISATION_C = 1.0  # inverse L2 strength on standardised embeddings
INSTALL_HINT = ("pip install 'edge-mlops[training]' (deploy/install-central.sh installs it with "
                "central)")
ALGORITHM = (f"sklearn.linear_model.LogisticRegression (multinomial, lbfgs, L2 C="
             f"{REGULARISATION_C:g}) on standardised embeddings of the frozen trunk")
_INPUT_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}

Progress = Callable[[int, int], None]
"""Called with (done, total) as images are embedded."""


class TrainingError(Exception):
    """Training cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class LabelledImage:
    """One training or hold-out example: its class, its split, and how to get its pixels (BGR),
    read only when it is embedded, so a large dataset is never in memory at once."""

    label: str
    split: str  # "train" | "val" | "test"
    image: Callable[[], np.ndarray]


def embed(trunk: onnx.ModelProto, preprocessing: Preprocessing,
          images: Iterable[Callable[[], np.ndarray]], total: int,
          progress: Progress | None = None) -> np.ndarray:
    """[len(images), dim] float32 embeddings, in order, batched where the model allows it."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(trunk.SerializeToString(), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    dtype = _INPUT_DTYPES.get(spec.type)
    if dtype is None:
        raise TrainingError(f"the model's input {spec.name!r} is {spec.type}; head retraining "
                            "takes float32 or uint8 image inputs")
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else None
    batch_size = fixed or BATCH
    preprocess = Preprocessor(preprocessing, dtype)
    chunks, batch, done = [], [], 0
    if progress:
        progress(0, total)
    for load in images:
        batch.append(preprocess(load())[0])
        if len(batch) == batch_size:
            chunks.append(session.run(None, {spec.name: np.concatenate(batch)})[0])
            done += len(batch)
            batch = []
            if progress:
                progress(done, total)
    if batch:
        tensor = np.concatenate(batch)
        if fixed and len(batch) < fixed:  # a fixed batch is filled up, the padding dropped
            tensor = np.concatenate([tensor, np.repeat(tensor[-1:], fixed - len(batch), 0)])
        chunks.append(session.run(None, {spec.name: tensor})[0][:len(batch)])
        done += len(batch)
        if progress:
            progress(done, total)
    if not chunks:
        return np.zeros((0, session.get_outputs()[0].shape[-1]), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def fit_head(embeddings: np.ndarray, targets: np.ndarray, classes: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """A multinomial logistic regression on the embeddings, folded into one linear layer:
    (weight [classes, dim], bias [classes]) such that `embedding @ weight.T + bias` are its
    logits. Deterministic: the same embeddings in the same order give the same weights."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise TrainingError(f"training needs scikit-learn: {INSTALL_HINT}") from None
    present = np.unique(targets)
    if len(present) < 2:
        raise TrainingError("the training items hold only one class; a classifier needs at "
                            "least two: label items of another class and freeze a new version")
    mean = embeddings.mean(axis=0)
    std = embeddings.std(axis=0)
    std[std < 1e-6] = 1.0  # a feature constant over the data set (a dead unit) stays unscaled
    scaled = (embeddings - mean) / std
    model = LogisticRegression(C=REGULARISATION_C, max_iter=5000, random_state=SEED)
    model.fit(scaled.astype(np.float64), targets)
    coef = np.zeros((classes, embeddings.shape[1]))
    intercept = np.zeros(classes)
    if len(model.classes_) == 2:  # scikit-learn keeps one row for two classes: logit of the 2nd
        coef[model.classes_[1]], intercept[model.classes_[1]] = model.coef_[0], model.intercept_[0]
    else:
        coef[model.classes_] = model.coef_
        intercept[model.classes_] = model.intercept_
    # (x - mean) / std @ coef.T + b  ==  x @ (coef / std).T + (b - coef @ (mean / std))
    weight = coef / std
    bias = intercept - coef @ (mean / std)
    return weight.astype(np.float32), bias.astype(np.float32)


def predict(embeddings: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Class indices a linear head gives: the argmax of its logits."""
    if len(embeddings) == 0:
        return np.zeros(0, dtype=int)
    return np.argmax(embeddings @ weight.T + bias, axis=1)


def accuracy(predicted: np.ndarray, truth: np.ndarray) -> float | None:
    return float(np.mean(predicted == truth)) if len(truth) else None


def targets_of(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Class indices of labels; -1 for a label outside `classes` (never predicted right)."""
    index = {label: i for i, label in enumerate(classes)}
    return np.asarray([index.get(label, -1) for label in labels], dtype=int)
