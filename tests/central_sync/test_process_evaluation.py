"""Process models are evaluated on what the line recorded: the inputs a pipeline's model saw,
paired with the target its measured_tag read at that moment (recommendation_outcome records);
the candidate and the version serving now run on those inputs with ONNX Runtime."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from central_sync.db import CentralDB
from central_sync.evaluation import EvaluationError, evaluate_model, regression_metrics
from central_sync.registry import publish_model
from edge_agent.kernel.contract import UplinkBatch, UplinkRecord
from tests.helpers import TEST_SIGNER

REPO = Path(__file__).resolve().parents[2]
SCRAP_MODEL = REPO / "sample_data" / "scrap_model.onnx"
SCRAP_METADATA = REPO / "sample_data" / "scrap_model.json"
MODEL = "extruder-scrap"
T0 = 1_800_000_000.0
SPEC = {"target": "scrap_rate_pct", "low": 0.0, "high": 2.0}


def line_rows(n: int) -> list[dict[str, float]]:
    with (REPO / "sample_data" / "line_history.csv").open() as handle:
        rows = [{k: float(v) for k, v in row.items() if k != "timestamp"}
                for row in csv.DictReader(handle)]
    return rows[:: len(rows) // n][:n]


def publish(db: CentralDB, artifacts: Path, version: str, **extra: Any) -> None:
    metadata = {**json.loads(SCRAP_METADATA.read_text()), **extra}
    publish_model(db, artifacts, SCRAP_MODEL, MODEL, version, metadata=metadata,
                  signer=TEST_SIGNER, published_by="alice")


def record(seq: int, kind: str, at: float, payload: dict[str, Any]) -> UplinkRecord:
    return UplinkRecord(seq=seq, type=kind, created_at=at, payload=payload)


def line_batch(rows: list[dict[str, float]], version: str = "1.0.0") -> UplinkBatch:
    """What a gateway sends: a stats interval naming the pipeline, and per moment a prediction
    then the outcome whose measured_tag read the target in the same tick."""
    model = {"name": MODEL, "version": version, "sha256": "a" * 64}
    features = json.loads(SCRAP_METADATA.read_text())["features"]
    records = [record(1, "model_stats", T0, {
        "pipeline": "scrap", "model": model, "started_at": T0 - 300, "ended_at": T0,
        "predictions": len(rows), "latency_ms": {"edges": [0, 1], "counts": [1]}})]
    for i, row in enumerate(rows):
        at = T0 + 10 * i
        records.append(record(len(records) + 1, "prediction", at, {
            "pipeline": "scrap", "model": model, "inputs": {f: row[f] for f in features},
            "outputs": {"scrap_rate_pct": 2.0}, "latency_ms": 0.5}))
        records.append(record(len(records) + 1, "recommendation_outcome", at + 0.01, {
            "id": f"r{i}", "pipeline": "scrap", "decision": "accepted", "after_s": 600,
            "setpoints": {}, "applied": True, "predicted": 2.0,
            "measured": row["scrap_rate_pct"]}))
    # An outcome without a measured value, and one long after any prediction: not evidence.
    for at, measured in ((T0 + 5, None), (T0 + 10 * len(rows) + 500, 1.0)):
        records.append(record(len(records) + 1, "recommendation_outcome", at, {
            "id": "x", "pipeline": "scrap", "decision": "rejected", "after_s": 600,
            "setpoints": {}, "applied": False, "predicted": None, "measured": measured}))
    return UplinkBatch(device_id="gw-1", records=records)


def predicted_by_the_model(rows: list[dict[str, float]]) -> list[float]:
    features = json.loads(SCRAP_METADATA.read_text())["features"]
    session = ort.InferenceSession(str(SCRAP_MODEL), providers=["CPUExecutionProvider"])
    matrix = np.asarray([[row[f] for f in features] for row in rows], dtype=np.float32)
    return [float(v) for v in session.run(None, {"features": matrix})[0][:, 0]]


def test_process_candidate_and_serving_version_on_measured_outcomes(
        db: CentralDB, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    publish(db, artifacts, "1.0.0")
    publish(db, artifacts, "1.1.0", spec=SPEC)
    rows = line_rows(30)
    db.store_batch(line_batch(rows))

    first = evaluate_model(db, artifacts, MODEL, "1.0.0", None, "carol")
    assert first.report["candidate"]["rows"] == 30 and first.report["baseline"] is None
    assert "no spec limits" in first.report["candidate"]["note"]
    db.approve_model(MODEL, "1.0.0", "bob")

    evaluation = evaluate_model(db, artifacts, MODEL, "1.1.0", None, "carol")
    report = evaluation.report
    assert report["kind"] == "process" and report["items"] == 30
    assert evaluation.dataset == "" and evaluation.baseline_version == "1.0.0"
    # Newest first, as stored: the order does not change the figures.
    measured = [row["scrap_rate_pct"] for row in rows]
    expected = regression_metrics(predicted_by_the_model(rows), measured, SPEC["low"],
                                  SPEC["high"])
    candidate = report["candidate"]
    assert candidate["target"] == "scrap_rate_pct"
    assert candidate["mae"] == pytest.approx(expected["mae"], abs=1e-5)
    assert candidate["bias"] == pytest.approx(expected["bias"], abs=1e-5)
    assert candidate["in_spec_agreement"] == expected["in_spec_agreement"]
    assert 0 < candidate["mae"] < 2  # the shipped model is close to the line's measurements
    assert report["baseline"]["mae"] == candidate["mae"]  # the same weights
    assert "in_spec_agreement" not in report["baseline"]  # its manifest has no spec
    assert db.model_state(MODEL, "1.1.0").state == "evaluated"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # refusals, not SQL
def test_process_evaluation_without_outcomes_says_so_and_takes_no_dataset(
        db: CentralDB, tmp_path: Path) -> None:
    publish(db, tmp_path / "artifacts", "1.0.0")
    with pytest.raises(EvaluationError, match=r"process model.*leave out --dataset"):
        evaluate_model(db, tmp_path / "artifacts", MODEL, "1.0.0", "labels@1", "carol")
    evaluation = evaluate_model(db, tmp_path / "artifacts", MODEL, "1.0.0", None, "carol")
    assert evaluation.report["items"] == 0 and evaluation.report["candidate"]["mae"] is None
    assert "measured_tag" in evaluation.report["notes"][0]
    db.store_batch(line_batch(line_rows(5)))
    bounded = evaluate_model(db, tmp_path / "artifacts", MODEL, "1.0.0", None, "carol",
                             max_items=3)
    assert bounded.report["items"] == 3
