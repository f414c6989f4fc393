"""Drift against the manifest's reference: PSI and KS, per device, through ingest and the API."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from central_sync.db import CentralDB
from central_sync.drift import drift_report, ks_binned, latency_percentiles, psi
from central_sync.web import create_app
from edge_agent.kernel.contract import (
    ModelManifest,
    ModelStatsPayload,
    TensorSpec,
    UplinkBatch,
    UplinkRecord,
)
from edge_agent.monitoring import StatsWindow
from tests.helpers import REPO, SAMPLE_METADATA, SAMPLE_MODEL

EDGES = np.linspace(-4, 4, 11)


def counts(rng: np.random.Generator, shift: float, n: int) -> list[int]:
    return np.histogram(np.clip(rng.normal(shift, 1, n), -3.99, 3.99), EDGES)[0].tolist()


def test_psi_and_ks_tell_a_shifted_distribution_from_a_sample_of_the_same() -> None:
    rng = np.random.default_rng(0)
    reference = counts(rng, 0, 5000)
    same, shifted = counts(rng, 0, 2000), counts(rng, 0.7, 2000)
    assert psi(reference, same) < 0.02 and ks_binned(reference, same)[1] > 0.5
    assert psi(reference, shifted) > 0.25 and ks_binned(reference, shifted)[1] < 1e-6
    assert psi(reference, reference) == pytest.approx(0.0)
    assert ks_binned(reference, [0] * 10) == (0.0, 1.0)  # nothing seen: no verdict


def scrap_manifest() -> ModelManifest:
    metadata = json.loads(SAMPLE_METADATA.read_text())
    spec = TensorSpec(name="features", dtype="float32", shape=[None, 6])
    return ModelManifest(name="extruder-scrap", version="1.0.0", kind="process",
                         sha256="c" * 64, size_bytes=1, chunk_size_bytes=1024,
                         inputs=[spec], outputs=[spec], metadata=metadata)


def training_rows() -> np.ndarray:
    """The committed model's training rows (the first 80 % of the line's history)."""
    features = json.loads(SAMPLE_METADATA.read_text())["features"]
    with (REPO / "sample_data" / "line_history.csv").open() as f:
        rows = [[float(r[name]) for name in features] for r in csv.DictReader(f)]
    return np.asarray(rows[: int(len(rows) * 0.8)])


def intervals(manifest: ModelManifest, zone2_shift: float, n: int = 400,
              seed: int = 1) -> list[dict]:
    """Two intervals of the real model on rows drawn from its training data, zone 2 moved by
    `zone2_shift` of its standard deviation."""
    rng = np.random.default_rng(seed)
    features = manifest.meta.features
    rows = training_rows()[rng.integers(0, 4608, n)]
    rows[:, features.index("zone2_temp_c")] += zone2_shift * rows[:, 1].std()
    session = ort.InferenceSession(str(SAMPLE_MODEL), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"features": rows.astype(np.float32)})[0][:, 0]
    clock = [2_000_000_000.0]
    window = StatsWindow("scrap", manifest, 300, lambda: clock[0])
    payloads = []
    for half in range(2):
        for row, value in list(zip(rows, predicted, strict=True))[half::2]:
            window.observe(dict(zip(features, row.tolist(), strict=True)),
                           {"scrap_rate_pct": float(value)},
                           float(rng.uniform(0.2, 3 + 40 * half)))
        clock[0] += 300
        payloads.append(window.flush())
    return payloads


def test_drift_report_flags_the_moved_feature_only() -> None:
    manifest = scrap_manifest()
    windows = [ModelStatsPayload.model_validate(p) for p in intervals(manifest, 1.5)]
    report = {d.name: d for d in drift_report(manifest.meta.reference, windows)}
    assert report["zone2_temp_c"].drifted and report["zone2_temp_c"].psi > 0.25
    assert not report["zone1_temp_c"].drifted and report["zone1_temp_c"].count == 400
    latency = latency_percentiles(windows)
    assert latency["p50"] <= 5 and 20 <= latency["p99"] <= 50


def stats_batch(device_id: str, payloads: list[dict], first_seq: int = 1) -> UplinkBatch:
    return UplinkBatch(device_id=device_id, records=[
        UplinkRecord(seq=first_seq + i, type="model_stats", created_at=p["ended_at"], payload=p)
        for i, p in enumerate(payloads)])


def test_drift_per_device_through_ingest_and_the_api(db: CentralDB) -> None:
    manifest = scrap_manifest()
    db.add_model(manifest, "data-scientist")
    db.store_batch(stats_batch("line1-gw1", intervals(manifest, 0.0)))
    db.store_batch(stats_batch("line2-gw1", intervals(manifest, 2.0, seed=2)))
    db.store_batch(stats_batch("line2-gw1", intervals(manifest, 2.0, seed=2)))  # again: once
    web = TestClient(create_app(db, offline_after_s=120))
    reply = web.get("/api/models/extruder-scrap/drift")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["version"] == "1.0.0" and body["reference"]
    devices = {d["device_id"]: d for d in body["devices"]}
    assert devices["line1-gw1"]["drifted"] == []
    # zone 2 moved, and with it the predicted scrap; the other inputs did not
    assert devices["line2-gw1"]["drifted"] == ["zone2_temp_c", "scrap_rate_pct"]
    assert devices["line2-gw1"]["predictions"] == 400 and devices["line2-gw1"]["intervals"] == 2
    assert web.get("/api/models/unknown/drift").status_code == 404
