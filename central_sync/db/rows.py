"""Rows of central's database as Python values, and the pure mapping from messages to rows."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_json

from edge_agent.kernel.contract import (
    RECORD_DEFECT,
    RECORD_DEPLOYMENT_EVENT,
    RECORD_EVICTION,
    RECORD_MODEL_STATS,
    RECORD_PREDICTION,
    RECORD_SAMPLE,
    DefectPayload,
    DeploymentEvent,
    DeviceStatus,
    EvictionPayload,
    ModelManifest,
    ModelRef,
    ModelStatsPayload,
    PredictionPayload,
    Rejection,
    SamplePayload,
    UplinkBatch,
    UplinkRecord,
    parse_payload,
)

log = logging.getLogger(__name__)

DEPLOYMENT_ISSUED = "issued"  # a deployment's state from its command until its first step
ROLLBACK_TO_PREVIOUS = "previous"  # a rollback's version when it returns to the one before


class DeploymentEventRefused(Exception):
    """A deployment step for a command central did not issue to the device that sent it
    (another device's command, or an unknown one); it changed nothing."""

    def __init__(self, device_id: str, command_id: str, reason: str) -> None:
        super().__init__(f"deployment step from {device_id} for command {command_id} "
                         f"refused: {reason}")
        self.device_id = device_id
        self.command_id = command_id
        self.reason = reason


class ModelVersionExists(Exception):
    """A name@version is already published (with other bytes); versions are immutable."""


@dataclass(frozen=True)
class DeviceSummary:
    """One row of the fleet view, with the JSON columns parsed."""

    device_id: str
    state: str
    state_at: float | None
    last_seen: float | None
    agent_version: str
    active_models: list[ModelRef]
    last_seq: int
    records: int
    status: DeviceStatus | None = None
    evicted: int = 0
    labels: tuple[str, ...] = ()  # its groups, from provisioning: what rollouts select by
    reported_labels: tuple[str, ...] = ()  # what it says of itself: shown, never trusted
    clock_offset_s: float | None = None  # its clock minus central's, measured by a probe
    clock_rtt_ms: float | None = None  # the probe's round trip: the offset is +- half of it
    clock_measured_at: float | None = None

    def presence(self, now: float, offline_after_s: float) -> str:
        """online, or offline when the device said so or has been silent too long."""
        if self.state != "online":
            return "offline"
        if self.last_seen is None or now - self.last_seen > offline_after_s:
            return "offline"
        return "online"

    @property
    def unconfirmed_labels(self) -> tuple[str, ...]:
        """Labels the device reports that provisioning did not give it."""
        return tuple(label for label in self.reported_labels if label not in self.labels)

    def healthy(self, now: float, offline_after_s: float) -> bool:
        """Online, and none of its sources failed: fit to be a rollout's canary."""
        if self.presence(now, offline_after_s) != "online":
            return False
        sources = self.status.sources.values() if self.status else ()
        return not any(source.state == "failed" for source in sources)

    @property
    def buffer_depth(self) -> int | None:
        if self.status is None or self.status.buffer is None:
            return None
        return self.status.buffer.depth


def device_summary(row: dict[str, Any]) -> DeviceSummary:
    """A devices row (with its record count) as a DeviceSummary.

    A stored status that an updated contract no longer reads is shown as absent, not raised.
    """
    status, models = None, []
    try:
        if row["status"]:
            status = DeviceStatus.model_validate_json(row["status"])
        models = [ModelRef.model_validate(m) for m in json.loads(row["active_models"])]
    except ValueError as exc:  # pydantic's ValidationError included
        log.warning("stored status unreadable device=%s error=%s", row["device_id"], exc)
    return DeviceSummary(
        device_id=row["device_id"], state=row["state"], state_at=row["state_at"],
        last_seen=row["last_seen"], agent_version=row["agent_version"],
        active_models=models, last_seq=row["last_seq"],
        records=row["records"], status=status, evicted=row.get("evicted") or 0,
        labels=tuple(json.loads(row.get("labels") or "[]")),
        reported_labels=tuple(json.loads(row.get("reported_labels") or "[]")),
        clock_offset_s=row.get("clock_offset_s"), clock_rtt_ms=row.get("clock_rtt_ms"),
        clock_measured_at=row.get("clock_measured_at"))


@dataclass(frozen=True)
class PublishedModel:
    manifest: ModelManifest
    published_by: str


@dataclass
class BatchRows:
    """Rows written for one batch: the raw records and their prediction projection."""

    records: list[tuple[Any, ...]] = field(default_factory=list)
    predictions: list[tuple[Any, ...]] = field(default_factory=list)
    deployment_events: list[DeploymentEvent] = field(default_factory=list)
    gaps: list[tuple[Any, ...]] = field(default_factory=list)
    defects: list[tuple[Any, ...]] = field(default_factory=list)
    samples: list[tuple[Any, ...]] = field(default_factory=list)
    model_stats: list[tuple[Any, ...]] = field(default_factory=list)


def rows_for_batch(batch: UplinkBatch, received_at: float) -> BatchRows:
    """The records rows of a batch, and what is projected from them into other tables.

    Every record is stored as it came; a payload that does not fit its kind's model is kept
    there but not projected (and logged), so nothing accepted is lost.
    """
    rows = BatchRows()
    for record in batch.records:
        payload_json = _json(record.payload)
        rows.records.append((batch.device_id, record.seq, record.type, record.created_at,
                             received_at, payload_json))
        if record.type not in PROJECTED:
            continue
        payload = parse_payload(record)
        if isinstance(payload, Rejection):
            log.warning("%s record kept but not projected device=%s seq=%d reason=%s",
                        record.type, batch.device_id, record.seq, payload.reason)
        else:
            _project(rows, batch.device_id, record, payload, payload_json)
    return rows


PROJECTED = frozenset({RECORD_PREDICTION, RECORD_DEFECT, RECORD_SAMPLE, RECORD_MODEL_STATS,
                       RECORD_EVICTION, RECORD_DEPLOYMENT_EVENT})
"""Record kinds that central copies into tables of their own, beside the records table."""


def _project(rows: BatchRows, device_id: str, record: UplinkRecord, payload: BaseModel,
             payload_json: str) -> None:
    match payload:
        case PredictionPayload():
            rows.predictions.append(prediction_row(device_id, record, payload, payload_json))
        case SamplePayload():  # before DefectPayload, which it extends
            rows.samples.append(sample_row(device_id, record, payload))
        case DefectPayload():
            rows.defects.append(defect_row(device_id, record, payload))
        case ModelStatsPayload():
            rows.model_stats.append(model_stats_row(device_id, record, payload, payload_json))
        case EvictionPayload():
            rows.gaps += gap_rows(device_id, record, payload)
        case DeploymentEvent():
            if payload.device_id == device_id:
                rows.deployment_events.append(payload)
            else:
                log.warning("deployment event record names device=%s, sent by device=%s "
                            "seq=%d", payload.device_id, device_id, record.seq)


DEFECT_INSERT = (
    "INSERT OR IGNORE INTO defects (device_id, seq, created_at, pipeline, camera, roi, label, "
    "confidence, model_name, model_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def defect_row(device_id: str, record: UplinkRecord, defect: DefectPayload) -> tuple[Any, ...]:
    """The defects-table row of a defect record, for review."""
    return (device_id, record.seq, record.created_at, defect.pipeline, defect.camera,
            defect.roi, defect.label, defect.confidence, defect.model.name,
            defect.model.version)


SAMPLE_INSERT = (
    "INSERT OR IGNORE INTO samples (device_id, seq, created_at, pipeline, camera, roi, label, "
    "confidence, reason, model_name, model_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def sample_row(device_id: str, record: UplinkRecord, sample: SamplePayload) -> tuple[Any, ...]:
    """The samples-table row of a sample record: a frame waiting for a reviewer's class."""
    return (device_id, record.seq, record.created_at, sample.pipeline, sample.camera,
            sample.roi, sample.label, sample.confidence, sample.reason, sample.model.name,
            sample.model.version)


MODEL_STATS_INSERT = (
    "INSERT OR IGNORE INTO model_stats (device_id, seq, model_name, model_version, pipeline, "
    "started_at, ended_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def model_stats_row(device_id: str, record: UplinkRecord, stats: ModelStatsPayload,
                    payload_json: str) -> tuple[Any, ...]:
    """The model_stats-table row of a model_stats record."""
    return (device_id, record.seq, stats.model.name, stats.model.version, stats.pipeline,
            stats.started_at, stats.ended_at, payload_json)


def gap_rows(device_id: str, record: UplinkRecord,
             report: EvictionPayload) -> list[tuple[Any, ...]]:
    """The gaps-table rows of an eviction record: seq ranges the device dropped, not lost."""
    return [(device_id, first, last, kind, "evicted", record.seq)
            for first, last, kind in report.ranges if first <= last]


def prediction_row(device_id: str, record: UplinkRecord, prediction: PredictionPayload,
                   payload_json: str) -> tuple[Any, ...]:
    """The predictions-table row for a prediction record.

    Inputs and outputs are cut out of `payload_json` by the database (see PREDICTION_INSERT).
    """
    return (device_id, record.seq, record.created_at, prediction.pipeline,
            prediction.model.name, prediction.model.version, prediction.model.sha256,
            payload_json, payload_json, prediction.latency_ms)


_PREDICTION_COLUMNS = (
    "INSERT OR IGNORE INTO predictions (device_id, seq, created_at, pipeline, model_name, "
    "model_version, model_sha256, outputs, inputs, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ")
PREDICTION_INSERT = {
    "sqlite": _PREDICTION_COLUMNS
    + "json_extract(?, '$.outputs'), json_extract(?, '$.inputs'), ?)",
    "postgresql": _PREDICTION_COLUMNS
    + "(CAST(? AS jsonb) -> 'outputs')::text, (CAST(? AS jsonb) -> 'inputs')::text, ?)",
}


def _json(value: Any) -> str:
    """JSON text for a stored column; pydantic-core's encoder is several times json.dumps.

    NaN and infinities in a payload, which JSON lacks, are written as null, as `encode` does.
    """
    return to_json(value, inf_nan_mode="null").decode("utf-8")


def version_exists_message(existing: ModelManifest) -> str:
    """Why other bytes cannot be published under an existing name@version."""
    return (f"{existing.name} {existing.version} already exists with sha256 "
            f"{existing.sha256[:12]}...; versions are immutable, publish "
            f"{_next_patch(existing.version)}")


def _next_patch(version: str) -> str:
    core = version.split("-")[0].split("+")[0]
    major, minor, patch = core.split(".")
    return f"{major}.{minor}.{int(patch) + 1}"


ROLLOUT_ACTIVE_STATES = ("running", "paused", "halted", "rolling_back")


ROLLOUT_KINDS = ("model", "config", "agent")
"""What a rollout (and a deployment) sends: a model version, a configuration version, or an
agent release; `model_name` and `version` name it in each kind's terms."""


@dataclass(frozen=True)
class Rollout:
    """A staged deployment of one version (of a model, a configuration or the agent) to a set
    of devices, wave after wave."""

    rollout_id: str
    model_name: str
    version: str
    target: str  # how the devices were chosen, for people: "group line-3", "devices a, b"
    canary: int  # devices in the first wave when it is a canary, else 0
    waves: int
    success_ratio: float
    wave_timeout_s: float
    state: str  # running, paused, completed, halted, aborted, rolling_back, rolled_back
    current_wave: int
    wave_started_at: float | None
    detail: str
    created_at: float
    created_by: str
    updated_at: float
    kind: str = "model"  # one of ROLLOUT_KINDS

    @property
    def ref(self) -> str:
        return f"{self.model_name}@{self.version}"

    @property
    def what(self) -> str:
        """What it deploys, for people: 'model surface-defects@1.4.0', 'configuration
        line-3-vision@2'."""
        return f"{KIND_NOUNS.get(self.kind, self.kind)} {self.ref}"


KIND_NOUNS = {"model": "model", "config": "configuration", "agent": "agent release"}


@dataclass(frozen=True)
class RolloutDevice:
    rollout_id: str
    device_id: str
    wave: int
    command_id: str | None
    state: str  # pending, sent, succeeded, failed, rolled_back
    detail: str
    updated_at: float
