"""Generate a labelled synthetic surface data set, train a small CNN on it, export it to ONNX.

Classes: ok, scratch, pit (dents), stain (inclusions and stains), on brushed, matte and mottled
metal textures with varied lighting, blur and noise. Also writes a short video of a strip
moving under the camera, with defects passing now and then, for the demo's camera pipeline.

    pip install -e '.[train]'   # torch, only for training; the committed model runs without it
    python sample_data/make_vision_data.py          # data, training, ONNX, video, report

Writes (next to this file): surface_defects.onnx, surface_defects.json (its metadata),
surface_line.mp4, and vision_samples/ (a few images of each class). The data set itself is
regenerated from the seed whenever needed and not kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("make_vision_data")

HERE = Path(__file__).resolve().parent
LABELS = ["ok", "scratch", "pit", "stain"]
SIZE = 64  # model input and patch size, pixels
SEED = 11


# --- synthetic surfaces ------------------------------------------------------------------------


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A grey metal surface (float32, 0..1): brushed, matte or mottled, lit from one side."""
    kind = rng.integers(3)
    base = rng.uniform(0.35, 0.7)
    noise = rng.normal(0, 1, (height, width)).astype(np.float32)
    if kind == 0:  # brushed: streaks along the rolling direction
        surface = cv2.blur(noise, (int(rng.integers(9, 25)), 1)) * rng.uniform(0.05, 0.12)
    elif kind == 1:  # matte: fine grain
        surface = cv2.GaussianBlur(noise, (0, 0), 0.8) * rng.uniform(0.02, 0.06)
    else:  # mottled: low-frequency blotches
        surface = cv2.GaussianBlur(noise, (0, 0), rng.uniform(4, 8)) * rng.uniform(0.6, 1.2)
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    light = (np.cos(angle) * gx / width + np.sin(angle) * gy / height) * rng.uniform(0, 0.25)
    return np.clip(base + surface + light, 0, 1)


def add_scratch(rng: np.random.Generator, surface: np.ndarray, cx: float, cy: float) -> None:
    length = rng.uniform(18, 44)
    angle = rng.uniform(0, np.pi)
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    p1 = (int(cx - dx), int(cy - dy))
    p2 = (int(cx + dx), int(cy + dy))
    shade = float(rng.choice([-1, 1])) * rng.uniform(0.22, 0.4)
    mask = np.zeros_like(surface)
    cv2.line(mask, p1, p2, 1.0, int(rng.integers(1, 3)), cv2.LINE_AA)
    surface += shade * mask


def add_pit(rng: np.random.Generator, surface: np.ndarray, cx: float, cy: float) -> None:
    radius = rng.uniform(2.5, 6)
    gy, gx = np.mgrid[0:surface.shape[0], 0:surface.shape[1]].astype(np.float32)
    dist = np.hypot(gx - cx, gy - cy)
    dark = np.exp(-(dist / radius) ** 2) * rng.uniform(0.3, 0.5)
    rim = np.exp(-((dist - radius * 1.3) / (radius * 0.35)) ** 2) * rng.uniform(0.08, 0.18)
    surface += rim - dark


def add_stain(rng: np.random.Generator, surface: np.ndarray, cx: float, cy: float) -> None:
    mask = np.zeros_like(surface)
    axes = (int(rng.uniform(6, 15)), int(rng.uniform(4, 11)))
    cv2.ellipse(mask, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(1.5, 3.5))
    surface -= mask * rng.uniform(0.12, 0.25)


DEFECTS = {"scratch": add_scratch, "pit": add_pit, "stain": add_stain}


def finish(rng: np.random.Generator, surface: np.ndarray) -> np.ndarray:
    """Camera effects, then BGR uint8 with a slight colour cast."""
    if rng.random() < 0.3:
        surface = cv2.GaussianBlur(surface, (0, 0), rng.uniform(0.3, 0.9))
    surface = surface + rng.normal(0, rng.uniform(0.005, 0.03), surface.shape).astype(np.float32)
    tint = rng.uniform(0.92, 1.08, 3).astype(np.float32)
    image = np.clip(surface[:, :, None] * tint * 255, 0, 255)
    return image.astype(np.uint8)


def patch(rng: np.random.Generator, label: str) -> np.ndarray:
    surface = texture(rng, SIZE, SIZE)
    if label != "ok":
        cx, cy = rng.uniform(SIZE * 0.3, SIZE * 0.7, 2)
        DEFECTS[label](rng, surface, cx, cy)
    return finish(rng, surface)


def dataset(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index, label in enumerate(LABELS):
        for _ in range(n_per_class):
            images.append(patch(rng, label))
            labels.append(index)
    order = rng.permutation(len(images))
    return np.stack(images)[order], np.asarray(labels)[order]


# --- model -------------------------------------------------------------------------------------


def to_tensor(images: np.ndarray) -> np.ndarray:
    """BGR uint8 NHWC -> RGB float32 NCHW in 0..1: what the manifest's preprocessing does."""
    return (images[..., ::-1].astype(np.float32) / 255.0).transpose(0, 3, 1, 2).copy()


def train(x_train: np.ndarray, y_train: np.ndarray, epochs: int, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2)]

    model = nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 48), *block(48, 64),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, len(LABELS)))
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=3e-3, total_steps=epochs * ((len(x_train) + 63) // 64))
    loss_fn = nn.CrossEntropyLoss()
    xs, ys = torch.from_numpy(to_tensor(x_train)), torch.from_numpy(y_train)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xs))
        total, correct, started = 0.0, 0, time.monotonic()
        for start in range(0, len(xs), 64):
            batch = order[start:start + 64]
            inputs = xs[batch]
            if torch.rand(1).item() < 0.5:  # flips keep every class what it is
                inputs = inputs.flip(3)
            if torch.rand(1).item() < 0.5:
                inputs = inputs.flip(2)
            logits = model(inputs)
            loss = loss_fn(logits, ys[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch)
            correct += int((logits.argmax(1) == ys[batch]).sum())
        log.info("epoch %d/%d: loss %.3f, train accuracy %.3f (%.0f s)", epoch + 1, epochs,
                 total / len(xs), correct / len(xs), time.monotonic() - started)
    model.eval()
    return model


def export(model, path: Path) -> None:
    import torch

    dummy = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(model, (dummy,), str(path), input_names=["images"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


def evaluate(path: Path, x_test: np.ndarray, y_test: np.ndarray) -> tuple[float, np.ndarray]:
    """Accuracy and confusion matrix of the exported model, run by ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    predicted = []
    for start in range(0, len(x_test), 256):
        logits = session.run(None, {"images": to_tensor(x_test[start:start + 256])})[0]
        predicted.append(logits.argmax(1))
    guess = np.concatenate(predicted)
    confusion = np.zeros((len(LABELS), len(LABELS)), dtype=int)
    for truth, found in zip(y_test, guess, strict=True):
        confusion[truth, found] += 1
    return float((guess == y_test).mean()), confusion


def metadata(accuracy: float, golden_input: np.ndarray, golden_output: np.ndarray,
             samples: int) -> dict:
    return {
        "name": "surface-defects", "version": "1.0.0", "kind": "vision",
        "labels": LABELS,
        "preprocessing": {"size": [SIZE, SIZE], "layout": "NCHW", "color": "RGB",
                          "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                          "resize": "resize"},
        "decoder": {"type": "classification", "activation": "softmax", "top_k": 3},
        "golden": {"input": np.round(golden_input.astype(np.float64), 4).tolist(),
                   "output": np.round(golden_output.astype(np.float64), 5).tolist(),
                   "tolerance": 1e-3},
        "latency_budget_ms": 50,
        "lineage": {"training_data": f"synthetic surfaces, seed {SEED}, {samples} per class",
                    "metrics": {"holdout_accuracy": round(accuracy, 4)},
                    "code_revision": "sample_data/make_vision_data.py",
                    "author": "sample data generator",
                    "notes": "small CNN (4 conv blocks) on 64x64 patches"},
    }


def write_metadata(path: Path, meta: dict) -> None:
    """Readable JSON, with the golden tensor on one line (it is 12,288 numbers)."""
    rest = {key: value for key, value in meta.items() if key != "golden"}
    text = json.dumps(rest, indent=2)[:-2]
    golden = json.dumps(meta["golden"], separators=(",", ":"))
    path.write_text(f'{text},\n  "golden": {golden}\n}}\n')


# --- the line video ----------------------------------------------------------------------------


def line_video(path: Path, seconds: float = 8.0, fps: int = 10) -> dict[str, int]:
    """A strip moving right to left under a fixed camera; a defect passes every few frames.

    The camera frame is 320x180; the inspection ROI (64x64 at x=128, y=58) is where the
    pipeline looks. Returns how many defects of each kind the strip carries.
    """
    rng = np.random.default_rng(SEED + 1)
    width, height, speed = 320, 180, 16  # pixels the strip moves per frame
    frames = int(seconds * fps)
    strip_width = width + frames * speed
    surface = texture(rng, height, strip_width)
    counts = {label: 0 for label in LABELS[1:]}
    x = width + 40
    while x < strip_width - 40:
        label = str(rng.choice(list(DEFECTS)))
        DEFECTS[label](rng, surface, x, 58 + 32 + rng.uniform(-10, 10))
        counts[label] += 1
        x += int(rng.integers(90, 160))
    strip = finish(rng, surface)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}: this OpenCV has no mp4v encoder")
    for i in range(frames):
        writer.write(np.ascontiguousarray(strip[:, i * speed:i * speed + width]))
    writer.release()
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=1500, help="training images per class")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE, help="where the results go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import torch  # noqa: F401
    except ImportError:
        parser.error("training needs torch: pip install -e '.[train]'")

    started = time.monotonic()
    x_train, y_train = dataset(args.per_class, SEED)
    x_test, y_test = dataset(max(100, args.per_class // 4), SEED + 100)
    log.info("data set: %d training and %d held-out images of %s (%.0f s)", len(x_train),
             len(x_test), ", ".join(LABELS), time.monotonic() - started)
    samples = args.out / "vision_samples"
    samples.mkdir(parents=True, exist_ok=True)
    for index, label in enumerate(LABELS):
        for n, image in enumerate(x_test[y_test == index][:3]):
            cv2.imwrite(str(samples / f"{label}_{n}.png"), image)

    model = train(x_train, y_train, args.epochs, SEED)
    onnx_path = args.out / "surface_defects.onnx"
    export(model, onnx_path)
    accuracy, confusion = evaluate(onnx_path, x_test, y_test)
    log.info("held-out accuracy %.4f on %d images", accuracy, len(y_test))
    log.info("confusion matrix (rows: truth, columns: predicted, order %s):\n%s",
             ", ".join(LABELS), confusion)

    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    # Rounded as the manifest stores it, so the expected output is exactly what it gives.
    golden = np.round(to_tensor(x_test[:1]).astype(np.float64), 4).astype(np.float32)
    output = session.run(None, {"images": golden})[0]
    meta = metadata(accuracy, golden, output, args.per_class)
    write_metadata(args.out / "surface_defects.json", meta)
    counts = line_video(args.out / "surface_line.mp4")
    log.info("line video: %s defects passing", counts)
    log.info("model %s: %d bytes; done in %.0f s", onnx_path.name, onnx_path.stat().st_size,
             time.monotonic() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
