"""Evaluation on central: the figures are right on known sets, vision models run as the
gateway runs them (its preprocessing and decoder, real ONNX files, real JPEGs), the version
serving now is measured beside the candidate on the same test split, and the report is stored
with the version marked evaluated."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from evaluation_helpers import (
    DETECTED,
    DETECTION_LABELS,
    DETECTION_METADATA,
    VISION,
    WRONG_SCALE,
    freeze_samples,
    jpeg,
    make_detection_model,
    publish_vision,
    sample_images,
)

from central_sync.cli import main
from central_sync.datasets import DatasetItem, DatasetManifest, load_crop
from central_sync.db import CentralDB
from central_sync.evaluation import (
    EvaluationError,
    VisionSample,
    classification_metrics,
    detection_metrics,
    evaluate_model,
    evaluate_vision,
    regression_metrics,
)
from central_sync.registry import artifact_path, publish_model
from edge_agent.inference.vision import VisionModel
from edge_agent.kernel.contract import DeviceStatus, ModelRef
from tests.helpers import TEST_SIGNER

# --- the figures, by hand ----------------------------------------------------------------------


def test_classification_figures_on_a_known_set() -> None:
    truths = ["ok", "ok", "ok", "scratch", "scratch", "pit"]
    said = ["ok", "ok", "scratch", "scratch", "ok", "scratch"]
    figures = classification_metrics(truths, said, ["ok", "scratch", "pit", "stain"])
    assert figures["accuracy"] == 0.5
    assert figures["confusion"] == {"labels": ["ok", "scratch", "pit", "stain"],
                                    "matrix": [[2, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0],
                                               [0, 0, 0, 0]]}
    assert figures["per_class"]["ok"] == {"precision": 0.6667, "recall": 0.6667, "support": 3}
    assert figures["per_class"]["scratch"] == {"precision": 0.3333, "recall": 0.5,
                                               "support": 2}
    assert figures["per_class"]["pit"] == {"precision": None, "recall": 0.0, "support": 1}
    assert figures["per_class"]["stain"] == {"precision": None, "recall": None, "support": 0}
    # A class the model does not know is counted, never dropped.
    assert classification_metrics(["dent"], ["ok"], ["ok"])["confusion"]["labels"] == \
        ["ok", "dent"]


def test_regression_figures_with_and_without_spec_limits() -> None:
    figures = regression_metrics([2.0, 3.0, 5.0], [1.5, 3.5, 3.0], low=None, high=4.0)
    assert figures == {"rows": 3, "mae": 1.0, "bias": 0.666667, "in_spec_agreement": 0.6667}
    plain = regression_metrics([2.0], [1.0])
    assert "in_spec_agreement" not in plain and "no spec limits" in plain["note"]


# --- vision models as the gateway runs them ----------------------------------------------------


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[CentralDB, Path]:
    """A registry with the sample vision model as 1.0.0, and as 1.1.0 with the wrong pixel
    scaling (a plausible bad version: the same weights, worse answers)."""
    folder = tmp_path_factory.mktemp("registry")
    db = CentralDB(folder / "central.db")
    publish_vision(db, folder / "artifacts", "1.0.0")
    publish_vision(db, folder / "artifacts", "1.1.0", **WRONG_SCALE)
    yield db, folder / "artifacts"
    db.close()


def loaded(db: CentralDB, artifacts: Path, version: str) -> VisionModel:
    manifest = db.get_model(VISION, version)
    return VisionModel(artifact_path(artifacts, manifest.sha256), manifest)


def test_vision_figures_are_what_the_gateway_model_says_of_real_images(
        published: tuple[CentralDB, Path]) -> None:
    db, artifacts = published
    pictures = sample_images()
    model = loaded(db, artifacts, "1.0.0")
    said = [model.infer(image).label for _, image in pictures]  # the gateway's own answers
    truths = [label for label, _ in pictures]
    assert said != truths  # the set has a mistake to find (ok_2 looks like a stain)
    done = []
    [figures] = evaluate_vision([model], (VisionSample(image, label) for label, image in pictures),
                                on_progress=done.append)
    assert done == list(range(1, len(pictures) + 1))
    expected = classification_metrics(truths, said, model.spec.labels)
    assert figures["confusion"] == expected["confusion"]
    assert figures["accuracy"] == round(sum(map(str.__eq__, truths, said)) / len(truths), 4)
    assert figures["per_class"] == expected["per_class"] and figures["version"] == "1.0.0"
    assert 0 < figures["latency_ms"]["mean"] <= figures["latency_ms"]["p95"]


def test_detection_boxes_count_at_iou_half_per_class(tmp_path: Path) -> None:
    path = make_detection_model(tmp_path / "detector.onnx")
    db = CentralDB(tmp_path / "central.db")
    manifest = publish_model(db, tmp_path / "artifacts", path, "boxes", "1.0.0", "vision",
                             metadata=DETECTION_METADATA, signer=TEST_SIGNER)
    model = VisionModel(path, manifest)
    found = [(d.label, *d.box) for d in model.infer(np.zeros((32, 32, 3), np.uint8)).detections]
    assert sorted(found) == sorted(box[:5] for box in DETECTED)
    image = np.zeros((32, 32, 3), np.uint8)
    truths = [
        # one invented scratch (20,2)-(30,10)
        (("scratch", 4, 4, 12, 12), ("pit", 20, 20, 28, 28)),
        # the pit is elsewhere: one missed, one invented; the second scratch overlaps 0.9
        (("scratch", 4, 4, 12, 12), ("scratch", 21, 2, 30, 10), ("pit", 0, 20, 8, 28)),
        # exactly what the model finds
        tuple(box[:5] for box in DETECTED),
    ]
    [figures] = evaluate_vision([model], [VisionSample(image, "scratch", t) for t in truths])
    assert figures["per_class"] == {
        "scratch": {"precision": 0.8333, "recall": 1.0, "support": 5},
        "pit": {"precision": 0.6667, "recall": 0.6667, "support": 3}}
    assert figures["accuracy"] == 0.3333  # images whose boxes were all found, none invented
    assert figures["confusion"] == {"labels": [*DETECTION_LABELS, "none"],
                                    "matrix": [[5, 0, 0], [0, 2, 1], [1, 1, 0]]}
    assert detection_metrics([()], [[]], DETECTION_LABELS)["accuracy"] == 1.0
    db.close()


# --- evaluate_model: dataset, baseline, stored report, state -----------------------------------


def test_candidate_and_serving_version_side_by_side_on_the_test_split(
        db: CentralDB, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    publish_vision(db, artifacts, "1.0.0")
    publish_vision(db, artifacts, "1.1.0", **WRONG_SCALE)
    dataset = freeze_samples(db)
    test = [item for item in dataset.manifest.items if item.split == "test"]
    assert 0 < len(test) < len(dataset.manifest.items)

    first = evaluate_model(db, artifacts, VISION, "1.0.0", dataset.ref, "carol")
    assert first.baseline_version == "" and first.report["baseline"] is None
    db.approve_model(VISION, "1.0.0", "bob")

    evaluation = evaluate_model(db, artifacts, VISION, "1.1.0", dataset.ref, "carol")
    report = evaluation.report
    assert (evaluation.dataset, evaluation.dataset_id) == (dataset.ref, dataset.dataset_id)
    assert evaluation.baseline_version == "1.0.0"  # the newest approved: nothing reports one
    assert report["kind"] == "classification" and report["items"] == len(test)
    # The same crops, through each version as the gateway runs it.
    for side, version in (("candidate", "1.1.0"), ("baseline", "1.0.0")):
        model = loaded(db, artifacts, version)
        said = [model.infer(load_crop(db, item)).label for item in test]
        expected = classification_metrics([i.label for i in test], said, model.spec.labels)
        assert report[side]["confusion"] == expected["confusion"], side
        assert report[side]["accuracy"] == expected["accuracy"]
        assert report[side]["version"] == version
    assert report["candidate"]["accuracy"] < report["baseline"]["accuracy"]

    assert db.get_evaluation(evaluation.evaluation_id) == evaluation
    state = db.model_state(VISION, "1.1.0")
    assert (state.state, state.evaluation_id) == ("evaluated", evaluation.evaluation_id)
    assert any(e["action"] == "model.evaluate" and e["subject"] == f"{VISION}@1.1.0"
               for e in db.list_audit())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # choice, not SQL
def test_the_baseline_is_the_version_most_devices_run(db: CentralDB, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    for version in ("1.0.0", "1.0.1", "1.1.0"):
        publish_vision(db, artifacts, version)
    dataset = freeze_samples(db, qualities=range(70, 80, 3))
    for version in ("1.0.0", "1.0.1"):
        evaluate_model(db, artifacts, VISION, version, dataset.ref, "carol")
        db.approve_model(VISION, version, "bob")
    assert evaluate_model(db, artifacts, VISION, "1.1.0", dataset.ref,
                          "carol").baseline_version == "1.0.1"  # newest approved
    sha = db.get_model(VISION, "1.0.0").sha256
    for device in ("gw-1", "gw-2"):
        db.update_status(DeviceStatus(device_id=device, state="online", active_models=[
            ModelRef(name=VISION, version="1.0.0", sha256=sha)]))
    again = evaluate_model(db, artifacts, VISION, "1.1.0", dataset.ref, "carol", max_items=3)
    assert again.baseline_version == "1.0.0"  # what the line runs now
    assert again.report["items"] == 3 and "3 of the" in " ".join(again.report["notes"])
    assert db.model_state(VISION, "1.1.0").evaluation_id == again.evaluation_id


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # refusals, not SQL
def test_evaluation_refusals_say_what_to_do(db: CentralDB, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    publish_vision(db, artifacts, "1.0.0")
    with pytest.raises(EvaluationError, match="not in the registry"):
        evaluate_model(db, artifacts, VISION, "9.0.0", None, "carol")
    with pytest.raises(EvaluationError, match="no dataset version surface-labels@7"):
        evaluate_model(db, artifacts, VISION, "1.0.0", "surface-labels@7", "carol")
    with pytest.raises(EvaluationError, match="not NAME@VERSION"):
        evaluate_model(db, artifacts, VISION, "1.0.0", "surface-labels", "carol")
    boxes = DatasetManifest.build("detection", [], {})
    db.add_dataset_version("boxes", boxes, "qe")
    with pytest.raises(EvaluationError, match=r"a detection dataset .* a classification model"):
        evaluate_model(db, artifacts, VISION, "1.0.0", "boxes@1", "carol")
    # No labelled data yet (a first version): stored, saying nothing was measured.
    first = evaluate_model(db, artifacts, VISION, "1.0.0", None, "carol")
    assert first.report["items"] == 0 and "not measured" in first.report["notes"][0]
    assert db.model_state(VISION, "1.0.0").state == "evaluated"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # boxes, not SQL
def test_a_detection_model_is_evaluated_on_its_regions_boxes(db: CentralDB,
                                                             tmp_path: Path) -> None:
    path = make_detection_model(tmp_path / "detector.onnx")
    publish_model(db, tmp_path / "artifacts", path, "boxes", "1.0.0", "vision",
                  metadata=DETECTION_METADATA, signer=TEST_SIGNER)
    items = []
    for n in range(40):  # a 64x48 frame whose region (16, 8)-(48, 40) the model sees
        frame = np.full((48, 64, 3), n, np.uint8)
        data = jpeg(frame)
        sha = hashlib.sha256(data).hexdigest()
        db.store_dataset_images([(sha, data, 64, 48)])
        shifted = tuple((label, x1 + 16, y1 + 8, x2 + 16, y2 + 8)
                        for label, x1, y1, x2, y2, _ in DETECTED)
        items.append(DatasetItem(f"gw-1/{n}", "defect", sha, "scratch", "test",
                                 (16, 8, 32, 32), shifted))
    dataset = db.add_dataset_version("boxes", DatasetManifest.build("detection", items, {}),
                                     "qe")
    report = evaluate_model(db, tmp_path / "artifacts", "boxes", "1.0.0", dataset.ref,
                            "carol").report
    assert report["kind"] == "detection" and report["items"] == 40
    assert report["candidate"]["accuracy"] == 1.0
    assert report["candidate"]["per_class"]["scratch"] == {"precision": 1.0, "recall": 1.0,
                                                           "support": 80}


# --- the command line --------------------------------------------------------------------------


def test_cli_publish_with_dataset_records_lineage_and_evaluates(
        config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from evaluation_helpers import VISION_MODEL, vision_metadata

    from central_sync.config import load_central_config

    c = ["-c", str(config_file)]
    db = CentralDB(load_central_config(config_file).database_url)
    dataset = freeze_samples(db, qualities=range(70, 85, 3))
    metadata = tmp_path / "meta.json"
    metadata.write_text(json.dumps(vision_metadata()))
    assert main(["model", "publish", str(VISION_MODEL), "--name", VISION, "--version", "1.0.0",
                 "--metadata", str(metadata), "--dataset", dataset.ref, "--by", "alice",
                 *c]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "confusion, candidate 1.0.0" in out
    assert f"{VISION}@1.0.0 is evaluated" in out
    lineage = db.get_model(VISION, "1.0.0").meta.lineage
    assert (lineage.dataset, lineage.dataset_id) == (dataset.ref, dataset.dataset_id)
    [stored] = db.list_evaluations(VISION, "1.0.0")
    assert stored.dataset == dataset.ref

    assert main(["model", "evaluate", f"{VISION}@1.0.0", "--max-items", "2", "--by", "carol",
                 *c]) == 0  # the dataset its lineage names
    assert "2 test items of " + dataset.ref in " ".join(capsys.readouterr().out.split())
    assert main(["model", "evaluate", f"{VISION}@1.0.0", "--dataset", "nope@1", *c]) == 2
    assert "no dataset version nope@1" in capsys.readouterr().err
    assert main(["model", "publish", str(VISION_MODEL), "--name", VISION, "--version", "2.0.0",
                 "--dataset", "nope@1", *c]) == 2
    assert db.get_model(VISION, "2.0.0") is None
    with pytest.raises(SystemExit):
        main(["model", "evaluate", f"{VISION}@1.0.0", "--max-items", "0", *c])
    db.close()
