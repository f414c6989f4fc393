"""Generate the sample extrusion-line history, train the scrap-rate model and export it to ONNX.

Everything is derived from one seed, so re-running produces byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

LINE_ID = "line-1"
START = datetime(2026, 11, 1, 6, 0, 0, tzinfo=UTC)
PERIOD_S = 30
ROWS = 2 * 24 * 3600 // PERIOD_S
TRAIN_FRACTION = 0.8
Z2_SHIFT_PLAN = [0.5, -1.0, -3.5, 1.0, -0.5, 0.5]  # zone-2 setpoint offset per 8 h shift, °C

FEATURES = [
    "zone1_temp_c",
    "zone2_temp_c",
    "zone3_temp_c",
    "melt_pressure_bar",
    "screw_speed_rpm",
    "ambient_humidity_pct",
]
TARGET = "scrap_rate_pct"
COLUMNS = ["timestamp", *FEATURES, TARGET]
UNITS = {
    "zone1_temp_c": "°C",
    "zone2_temp_c": "°C",
    "zone3_temp_c": "°C",
    "melt_pressure_bar": "bar",
    "screw_speed_rpm": "rpm",
    "ambient_humidity_pct": "%",
    TARGET: "%",
}

MODEL_NAME = "extruder-scrap"
MODEL_VERSION = "1.0.0"
ONNX_INPUT = "features"
ONNX_OUTPUT = "scrap_rate_pct"
# Opset 17 / ai.onnx.ml 3 loads on every onnxruntime since 1.14, so older gateways can run it too.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
GOLDEN_TOLERANCE = 1e-3

EPILOG = """examples:
  .venv/bin/python sample_data/make_sample_data.py
  .venv/bin/python sample_data/make_sample_data.py --out /tmp/sample --seed 11
"""


@dataclass(frozen=True)
class TrainResult:
    onnx_bytes: bytes
    train_rows: int
    holdout_rows: int
    holdout_mae: float
    holdout_r2: float
    golden_input: list[float]
    golden_output: float
    train_predictions: np.ndarray


def _ou(rng: np.random.Generator, n: int, sigma: float, tau_samples: float) -> np.ndarray:
    """Ornstein-Uhlenbeck walk: wanders slowly but stays near zero (setpoint tweaks, weather)."""
    phi = float(np.exp(-1.0 / tau_samples))
    eps = rng.normal(0.0, sigma * np.sqrt(1.0 - phi * phi), n)
    out = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc = phi * acc + eps[i]
        out[i] = acc
    return out


def _lag(x: np.ndarray, tau_samples: float) -> np.ndarray:
    """First-order lag: the barrel follows setpoint steps with a thermal time constant."""
    alpha = 1.0 - float(np.exp(-1.0 / tau_samples))
    out = np.empty_like(x)
    acc = float(x[0])
    for i, v in enumerate(x):
        acc += alpha * (v - acc)
        out[i] = acc
    return out


def _bump(n: int, start: int, length: int) -> np.ndarray:
    """Raised-cosine pulse of height 1, used for short process disturbances."""
    out = np.zeros(n)
    end = min(n, start + length)
    k = np.arange(end - start)
    out[start:end] = 0.5 * (1.0 - np.cos(2.0 * np.pi * k / length))
    return out


def generate_history(seed: int) -> np.ndarray:
    """Return a (ROWS, 7) array of the feature and target columns, rounded to 2 decimals."""
    rng = np.random.default_rng(seed)
    n = ROWS
    hours = np.arange(n) * PERIOD_S / 3600.0
    hour_of_day = (START.hour + hours) % 24.0
    shift = (hours // 8).astype(int)  # shifts change at 06:00, 14:00 and 22:00
    n_shifts = int(shift.max()) + 1

    def shift_offsets(sigma: float) -> np.ndarray:
        return rng.normal(0.0, sigma, n_shifts)[shift]

    z1_sp = 176.0 + shift_offsets(1.2) + _ou(rng, n, 0.8, 240)
    # Crews run zone 2 differently; the night crew of day 1 keeps it notably cooler.
    z2_sp = 186.0 + np.array(Z2_SHIFT_PLAN)[shift] + shift_offsets(0.7) + _ou(rng, n, 1.8, 120)
    z3_sp = 193.5 + shift_offsets(1.2) + _ou(rng, n, 1.0, 240)
    speed_sp = np.clip(60.0 + shift_offsets(2.5) + _ou(rng, n, 1.5, 360), 52.0, 68.0)

    # Heater band of zone 2 ages during day 2: the zone can no longer hold its setpoint.
    ageing = -3.5 * np.clip((hours - 24.0) / 24.0, 0.0, 1.0) ** 1.5

    humidity = (
        50.0
        + 11.0 * np.cos(2.0 * np.pi * (hour_of_day - 5.0) / 24.0)
        + _ou(rng, n, 3.0, 720)
        + rng.normal(0.0, 0.4, n)
    )
    humidity = np.clip(humidity, 30.0, 70.0)

    dist_z = np.zeros(n)  # wet regrind batch cools the feed zones
    dist_p = np.zeros(n)  # partial die blockage
    dist_s = np.zeros(n)  # operator pushes throughput
    for _ in range(7):
        kind = rng.integers(0, 3)
        start = int(rng.integers(0, n - 200))
        length = int(rng.integers(30, 90))
        bump = _bump(n, start, length)
        if kind == 0:
            dist_z -= rng.uniform(3.0, 6.0) * bump
        elif kind == 1:
            dist_p += rng.uniform(12.0, 22.0) * bump
        else:
            dist_s += rng.uniform(4.0, 7.0) * bump

    z1 = _lag(z1_sp, 10) + 0.6 * dist_z + rng.normal(0.0, 0.3, n)
    z2 = _lag(z2_sp + ageing, 12) + dist_z + rng.normal(0.0, 0.3, n)
    z3 = _lag(z3_sp, 10) + 0.5 * dist_z + rng.normal(0.0, 0.25, n)
    speed = _lag(speed_sp + dist_s, 4) + rng.normal(0.0, 0.3, n)

    # Screen pack clogs slowly and is changed every ~10 h, giving a pressure sawtooth.
    screen = 10.0 * ((hours % 10.0) / 10.0) ** 2
    pressure = (
        148.0
        + 2.2 * (speed - 60.0)
        - 1.1 * (z3 - 194.0)
        - 0.6 * (z2 - 186.0)
        + screen
        + dist_p
        + _ou(rng, n, 1.5, 120)
        + rng.normal(0.0, 0.8, n)
    )

    # Damp material needs a hotter melt, so the optimal zone-2 temperature follows humidity.
    z2_opt = 185.0 + 0.15 * (humidity - 50.0)
    scrap = (
        1.4
        + 0.08 * (z2 - z2_opt) ** 2
        + 0.012 * np.maximum(speed - 58.0, 0.0) * np.maximum(pressure - 145.0, 0.0)
        + 2.2 / (1.0 + np.exp((z3 - 191.5) / 0.6))  # die too cold: surface defects set in
        + 0.04 * np.abs(z1 - 176.0)
        + 0.12 * np.maximum(humidity - 62.0, 0.0)
        + rng.normal(0.0, 0.25, n)
    )
    scrap = np.clip(scrap, 0.0, 100.0)

    data = np.column_stack([z1, z2, z3, pressure, speed, humidity, scrap])
    # Round once here so the model trains on exactly what the CSV holds.
    return np.round(data, 2)


def write_history(path: Path, data: np.ndarray) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for i, row in enumerate(data):
            ts = (START + timedelta(seconds=i * PERIOD_S)).strftime("%Y-%m-%dT%H:%M:%SZ")
            # "+ 0.0" turns a rounded -0.0 into 0.0.
            writer.writerow([ts, *(f"{v + 0.0:.2f}" for v in row)])


def train_and_export(data: np.ndarray, seed: int) -> TrainResult:
    """Train on the first 80 % (chronological split) and export the model to ONNX bytes."""
    import onnx
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.metrics import mean_absolute_error, r2_score

    x = data[:, : len(FEATURES)]
    y = data[:, len(FEATURES)]
    split = int(len(data) * TRAIN_FRACTION)
    model = GradientBoostingRegressor(
        n_estimators=200,
        max_depth=3,
        learning_rate=0.08,
        subsample=0.8,
        min_samples_leaf=20,
        random_state=seed,
    )
    model.fit(x[:split], y[:split])

    onx = convert_sklearn(
        model,
        name="extruder_scrap",
        initial_types=[(ONNX_INPUT, FloatTensorType([None, len(FEATURES)]))],
        final_types=[(ONNX_OUTPUT, FloatTensorType([None, 1]))],
        target_opset=TARGET_OPSET,
        doc_string=f"{MODEL_NAME} {MODEL_VERSION}: predicts {TARGET} of {LINE_ID}",
    )
    onx.model_version = 1
    # skl2onnx gathers opsets in a set (order follows string hashing); sort for stable bytes.
    opsets = sorted((op.domain, op.version) for op in onx.opset_import)
    del onx.opset_import[:]
    for domain, version in opsets:
        onx.opset_import.add(domain=domain, version=version)
    for key, value in (
        ("name", MODEL_NAME),
        ("version", MODEL_VERSION),
        ("features", ",".join(FEATURES)),
        ("target", TARGET),
    ):
        prop = onx.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(onx)
    onnx_bytes = onx.SerializeToString(deterministic=True)

    # Score with the exported graph (float32) rather than sklearn, since that is what ships.
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    pred = sess.run([ONNX_OUTPUT], {ONNX_INPUT: x.astype(np.float32)})[0][:, 0]
    max_diff = float(np.max(np.abs(pred - model.predict(x))))
    logger.info("max |onnx - sklearn| over all rows: %.2e", max_diff)
    holdout_pred = pred[split:].astype(np.float64)
    return TrainResult(
        onnx_bytes=onnx_bytes,
        train_rows=split,
        holdout_rows=len(data) - split,
        holdout_mae=float(mean_absolute_error(y[split:], holdout_pred)),
        holdout_r2=float(r2_score(y[split:], holdout_pred)),
        golden_input=[float(v) for v in x[split]],
        golden_output=float(pred[split]),
        train_predictions=pred[:split].astype(np.float64),
    )


def _r6(v: float) -> float:
    return round(float(v), 6) + 0.0


REFERENCE_BINS = 10


def reference_histogram(values: np.ndarray) -> dict[str, list[float] | list[int]]:
    """Decile bins of the training values and their counts: the reference that agents bin
    their inputs and outputs on, and central measures drift against. Values outside the
    training range count in the end bins, as the agents count them."""
    edges = np.unique(np.round(np.quantile(values, np.linspace(0, 1, REFERENCE_BINS + 1)), 6))
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(index, minlength=len(edges) - 1)
    return {"edges": [_r6(e) for e in edges], "counts": [int(c) for c in counts]}


def build_metadata(data: np.ndarray, result: TrainResult, seed: int) -> dict[str, object]:
    train = data[: result.train_rows]
    return {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "kind": "process",
        "inputs": [{"name": ONNX_INPUT, "dtype": "float32", "shape": [None, len(FEATURES)]}],
        "outputs": [{"name": ONNX_OUTPUT, "dtype": "float32", "shape": [None, 1]}],
        "features": FEATURES,
        "target": {"name": TARGET, "unit": UNITS[TARGET]},
        "units": UNITS,
        "training": {
            "rows": result.train_rows,
            "holdout_rows": result.holdout_rows,
            "holdout_mae": _r6(result.holdout_mae),
            "holdout_r2": _r6(result.holdout_r2),
            "algorithm": "sklearn.ensemble.GradientBoostingRegressor",
            "data": "line_history.csv",
            "seed": seed,
        },
        "reference": {
            "inputs": {name: reference_histogram(train[:, i]) for i, name in enumerate(FEATURES)},
            "outputs": {ONNX_OUTPUT: reference_histogram(result.train_predictions)},
        },
        "golden": {
            "input": [[_r6(v) for v in result.golden_input]],
            "output": [[_r6(result.golden_output)]],
            "tolerance": GOLDEN_TOLERANCE,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate line_history.csv, scrap_model.onnx and scrap_model.json "
        f"for the sample extrusion line {LINE_ID}.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output directory (default: the folder of this script)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    logger.info("generating %d rows (seed %d)", ROWS, args.seed)
    data = generate_history(args.seed)
    csv_path = out / "line_history.csv"
    write_history(csv_path, data)

    logger.info("training on the first %d %% of rows", int(TRAIN_FRACTION * 100))
    result = train_and_export(data, args.seed)
    onnx_path = out / "scrap_model.onnx"
    onnx_path.write_bytes(result.onnx_bytes)

    meta_path = out / "scrap_model.json"
    meta = build_metadata(data, result, args.seed)
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    for path in (csv_path, onnx_path, meta_path):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"wrote {path} ({path.stat().st_size} bytes, sha256 {digest})")
    target = data[:, len(FEATURES)]
    print(
        f"{TARGET}: mean {target.mean():.2f}, p5 {np.percentile(target, 5):.2f}, "
        f"p95 {np.percentile(target, 95):.2f}"
    )
    print(
        f"model: train rows {result.train_rows}, holdout rows {result.holdout_rows}, "
        f"holdout MAE {result.holdout_mae:.4f}, holdout R² {result.holdout_r2:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
