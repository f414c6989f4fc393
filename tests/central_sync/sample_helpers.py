"""Sample records (frames a gateway kept for labelling) with real JPEG evidence, and a
published vision model whose classes they can be labelled with, for central's sample tests."""

from __future__ import annotations

from review_helpers import jpeg_b64

from edge_agent.kernel.contract import (
    ModelManifest,
    SamplePayload,
    TensorSpec,
    UplinkBatch,
    UplinkRecord,
)

CLASSES = ("scratch", "pit", "stain")
MODEL = "surface-defects"
T0 = 1_800_000_000.0


def sample_payload(seq: int, label: str, confidence: float, reason: str = "uncertain",
                   camera: str = "strip-camera", version: str = "1.0.0") -> dict:
    """A sample payload as a gateway's vision pipeline sends it (checked against the contract)."""
    payload = {
        "pipeline": "surface", "camera": camera, "roi": "inspection",
        "roi_box": [0, 0, 80, 60], "label": label, "confidence": confidence, "boxes": [],
        "result": {"kind": "classification", "label": label, "confidence": confidence,
                   "top": [[label, confidence]], "detections": [], "anomaly_score": None},
        "model": {"name": MODEL, "version": version, "sha256": "a" * 64},
        "frame_index": seq, "captured_at": T0 + seq, "reason": reason,
        "images": {"frame": {"jpeg_b64": jpeg_b64(seq), "width": 80, "height": 60},
                   "annotated": {"jpeg_b64": jpeg_b64(seq + 1), "width": 80, "height": 60}}}
    return SamplePayload.model_validate(payload).model_dump(mode="json")


def sample_batch(device_id: str, samples: list[tuple[int, str, float]],
                 reason: str = "uncertain", camera: str = "strip-camera",
                 version: str = "1.0.0") -> UplinkBatch:
    """Sample records of (seq, predicted label, confidence), made one second apart."""
    return UplinkBatch(device_id=device_id, records=[
        UplinkRecord(seq=seq, type="sample", created_at=T0 + seq,
                     payload=sample_payload(seq, label, confidence, reason, camera, version))
        for seq, label, confidence in samples])


def vision_manifest(version: str = "1.0.0", classes: tuple[str, ...] = CLASSES) -> ModelManifest:
    """The manifest of the samples' model as central publishes it: its classes in order."""
    images = TensorSpec(name="images", dtype="float32", shape=[1, 3, 64, 64])
    scores = TensorSpec(name="scores", dtype="float32", shape=[1, len(classes)])
    return ModelManifest(name=MODEL, version=version, kind="vision", sha256="b" * 64,
                         size_bytes=100, chunk_size_bytes=1024, inputs=[images],
                         outputs=[scores], metadata={"labels": list(classes)})
