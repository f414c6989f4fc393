"""The MQTT wire contract shared by edge-agent and central-sync: topics and message models.

This is the only place where topic strings and message shapes are defined. It imports nothing
heavy (no onnxruntime, no OpenCV) so any tool, test or the central service can use it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

SCHEMA_VERSION = 1
DEFAULT_TOPIC_PREFIX = "edge-mlops"
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
MAX_RECORDS_PER_BATCH = 5000
MAX_CHUNKS_PER_REQUEST = 1024
MAX_SEQ = 2**63 - 1  # the largest integer SQLite and PostgreSQL's BIGINT hold

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SEMVER_PATTERN = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"



def version_key(version: str) -> tuple[Any, ...]:
    """Sort key giving semantic-version precedence: 1.10.0 > 1.9.0 > 1.9.0-rc.2 > 1.9.0-rc.1."""
    match = re.fullmatch(SEMVER_PATTERN, version)
    if match is None:
        raise ValueError(f"{version!r} is not a semantic version such as 1.4.0")
    major, minor, patch, pre = int(match[1]), int(match[2]), int(match[3]), match[4]
    if pre is None:
        return (major, minor, patch, 1, ())
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre[1:].split("."))
    return (major, minor, patch, 0, parts)


DeviceId = Annotated[str, Field(pattern=ID_PATTERN, description="Device id: letters, digits . _ -")]
ModelName = Annotated[str, Field(pattern=ID_PATTERN, description="Model name")]
Version = Annotated[str, Field(pattern=SEMVER_PATTERN, description="Semantic version, e.g. 1.4.0")]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN, description="Lower-case hex SHA-256")]
Seq = Annotated[int, Field(ge=1, le=MAX_SEQ, description="A record's per-device sequence number")]


def now() -> float:
    """Wall-clock time as Unix seconds, the time format of every message."""
    return time.time()


def new_id() -> str:
    """A fresh random identifier for batches and commands."""
    return uuid.uuid4().hex


# Messages and what central stores of them as they come: JSON has no NaN or Infinity (a
# number like 1e400 parses as one), and SQLite would keep NaN as NULL.
_FINITE = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class _Message(BaseModel):
    model_config = _FINITE

    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Wire schema version")


# --- device status -------------------------------------------------------------------------


class ModelRef(BaseModel):
    """One installed model version, as every prediction and status names it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ModelName
    version: Version
    sha256: Sha256


class SourceState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    state: Literal["connecting", "connected", "reconnecting", "failed", "stopped"]
    detail: str = Field("", description="Why the source is in this state, for people")


class BufferHealth(BaseModel):
    model_config = _FINITE

    depth: int = Field(ge=0, description="Records waiting for central's ack")
    oldest_age_s: float | None = Field(None, description="Age of the oldest unsent record")
    bytes_used: int = Field(ge=0)
    quota_bytes: int = Field(ge=0)
    evicted: int = Field(0, ge=0, description="Records dropped to respect the quota")
    evicted_by_kind: dict[str, int] = Field(
        default_factory=dict, description="Evicted records by record type, since install"
    )


class UplinkHealth(BaseModel):
    model_config = _FINITE

    connected: bool
    acked_records: int = Field(0, ge=0)
    records_per_s: float = Field(0.0, ge=0)
    round_trip_ms: float | None = None


class DeviceStatus(_Message):
    """Retained on the status topic; the broker publishes the offline form as last will."""

    kind: Literal["device_status"] = "device_status"
    device_id: DeviceId
    state: Literal["online", "offline"]
    sent_at: float = Field(default_factory=now)
    agent_version: str = ""
    labels: list[Annotated[str, Field(pattern=ID_PATTERN)]] = Field(
        default_factory=list, description="Groups the device belongs to, e.g. line-3")
    active_models: list[ModelRef] = Field(default_factory=list)
    sources: dict[str, SourceState] = Field(default_factory=dict)
    buffer: BufferHealth | None = None
    uplink: UplinkHealth | None = None


# --- uplink ----------------------------------------------------------------------------------


class UplinkRecord(BaseModel):
    """One record leaving the gateway; `(device_id, seq)` identifies it for ever."""

    model_config = _FINITE

    seq: Seq = Field(description="Per-device sequence number, strictly increasing")
    type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = Field(
        description="Record type: prediction, deployment_event, ..."
    )
    created_at: float
    payload: dict[str, Any]


RECORD_PREDICTION = "prediction"
RECORD_DEPLOYMENT_EVENT = "deployment_event"
RECORD_EVICTION = "eviction"
RECORD_DEFECT = "defect"  # a vision pipeline's defect, with its evidence images
RECORD_SAMPLE = "sample"  # a frame kept for labelling (the model was unsure, or at random)


class PredictionPayload(BaseModel):
    """The payload of a `prediction` record: what a pipeline predicted, from what, with what."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline: str
    model: ModelRef
    inputs: dict[str, float] = Field(description="Feature values the model saw, by tag")
    outputs: dict[str, float | None] = Field(description="First value of each model output")
    latency_ms: float = Field(ge=0)


RECORD_RECOMMENDATION = "recommendation"  # setpoint changes offered to the operator
RECORD_RECOMMENDATION_ANSWER = "recommendation_answer"  # accepted, rejected, expired, superseded
RECORD_RECOMMENDATION_OUTCOME = "recommendation_outcome"  # the line some minutes after an answer
RECORD_SETPOINT_WRITE = "setpoint_write"  # automatic mode wrote, or refused to write, a setpoint
RECORD_SOURCE_GAP = "source_gap"  # a source had no usable data for a while, and why


class SetpointChange(BaseModel):
    """One controllable tag in a recommendation: where it is and where it should go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tag: str
    current: float
    proposed: float
    unit: str = ""


class RecommendationPayload(BaseModel):
    """The payload of a `recommendation` record: a better setting and its predicted effect."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    pipeline: str
    model: ModelRef
    target: str = Field(description="The predicted quality value, e.g. scrap_rate_pct")
    unit: str = ""
    objective: str = Field(description="In words, e.g. 'minimise scrap_rate_pct'")
    changes: list[SetpointChange] = Field(min_length=1)
    predicted_now: float = Field(description="The target predicted at the current setting")
    predicted_after: float = Field(description="The target predicted at the proposed setting")
    inputs: dict[str, float] = Field(description="Model inputs at the time, by feature")
    mode: Literal["advise", "auto"] = "advise"
    created_at: float = Field(default_factory=now)
    expires_at: float


class RecommendationAnswerPayload(BaseModel):
    """The payload of a `recommendation_answer` record: what became of a recommendation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="The recommendation's id")
    pipeline: str
    decision: Literal["accepted", "rejected", "expired", "superseded"]
    by: str = Field(description="Who answered: the operator's name, or 'agent'")
    at: float = Field(default_factory=now)
    comment: str = Field("", max_length=500)


class RecommendationOutcomePayload(BaseModel):
    """The payload of a `recommendation_outcome` record: the line `after_s` after an answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="The recommendation's id")
    pipeline: str
    decision: Literal["accepted", "rejected", "expired", "superseded"]
    after_s: float
    setpoints: dict[str, float | None] = Field(description="The controllable tags' values now")
    applied: bool = Field(description="Every controllable tag moved at least halfway to "
                                       "its proposed value")
    predicted: float | None = Field(description="The target predicted now (None: no prediction)")
    measured: float | None = Field(None, description="The target as measured, if a tag reads it")


class SetpointWritePayload(BaseModel):
    """The payload of a `setpoint_write` record: one write to the PLC in automatic mode."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recommendation: str = Field(description="The recommendation's id")
    pipeline: str
    tag: str
    node: str
    value: float
    previous: float | None
    ok: bool
    detail: str = ""


class SourceGapPayload(BaseModel):
    """The payload of a `source_gap` record: a source delivered nothing usable for a while."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    started_at: float
    ended_at: float
    duration_s: float = Field(ge=0)
    reason: str


RECORD_MODEL_STATS = "model_stats"  # one model's inputs, outputs and latency over an interval


class Histogram(BaseModel):
    """Counts between edges: counts[i] for edges[i] <= x < edges[i+1]; values below the first
    edge count in the first bin, values from the last edge on in the last."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    edges: list[float] = Field(min_length=2)
    counts: list[int]

    @model_validator(mode="after")
    def _consistent(self) -> Histogram:
        if len(self.counts) != len(self.edges) - 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) - 1} counts, "
                             f"got {len(self.counts)}")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must increase")
        if any(c < 0 for c in self.counts):
            raise ValueError("counts cannot be negative")
        return self


class ValueStats(BaseModel):
    """One input or output over an interval; the histogram on the manifest's reference edges
    when the manifest has them (what drift is computed from)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int = Field(ge=0)
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    histogram: Histogram | None = None


class ModelStatsPayload(BaseModel):
    """The payload of a `model_stats` record: what one model saw and did over an interval."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline: str
    model: ModelRef
    started_at: float
    ended_at: float
    predictions: int = Field(ge=0)
    errors: int = Field(0, ge=0)
    latency_ms: Histogram
    inputs: dict[str, ValueStats] = Field(
        default_factory=dict, description="Process models: each feature; vision: image "
        "brightness and contrast")
    outputs: dict[str, ValueStats] = Field(
        default_factory=dict, description="Each output (vision: the confidence)")
    labels: dict[str, int] = Field(default_factory=dict,
                                   description="Predictions per class, for classifiers")


class EvictionPayload(BaseModel):
    """The payload of an `eviction` record: seqs the agent dropped to respect its disk quota."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ranges: list[tuple[Seq, Seq, str]] = Field(
        description="[first_seq, last_seq, record type], inclusive"
    )
    by_kind: dict[str, int]


class UplinkBatch(_Message):
    kind: Literal["uplink_batch"] = "uplink_batch"
    device_id: DeviceId
    batch_id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    sent_at: float = Field(default_factory=now)
    records: list[UplinkRecord] = Field(min_length=1, max_length=MAX_RECORDS_PER_BATCH)


class CompressedUplinkBatch(_Message):
    """An UplinkBatch's JSON, zlib-compressed then base64-encoded, for slow or metered links."""

    kind: Literal["uplink_batch_zlib"] = "uplink_batch_zlib"
    device_id: DeviceId
    batch_id: str = Field(min_length=1, max_length=64)
    data_b64: str


class RecordChunk(_Message):
    """One piece of a record too large for a batch (an image, say).

    Central keeps the pieces until it has all `count` of them, stores the record and acks its
    seq with `batch_id = chunked_batch_id(seq)`; until then the agent keeps and resends it.
    """

    kind: Literal["record_chunk"] = "record_chunk"
    device_id: DeviceId
    seq: Seq
    type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    created_at: float
    index: int = Field(ge=0)
    count: int = Field(ge=1, le=100_000)
    payload_sha256: Sha256 = Field(description="SHA-256 of the whole payload's JSON text")
    data_b64: str = Field(description="This piece of the payload's JSON text (UTF-8)")

    @model_validator(mode="after")
    def _index_below_count(self) -> RecordChunk:
        if self.index >= self.count:
            raise ValueError(f"chunk index {self.index} is not below count {self.count}")
        return self


def chunked_batch_id(seq: int) -> str:
    """The batch id under which central acks a record it received in chunks."""
    return f"record-{seq}"


def split_record(device_id: str, seq: int, type_: str, created_at: float, payload_json: str,
                 piece_bytes: int) -> list[RecordChunk]:
    """A record's payload JSON cut into RecordChunks of at most `piece_bytes` bytes each."""
    raw = payload_json.encode("utf-8")
    digest = hashlib.sha256(raw).hexdigest()
    pieces = [raw[i:i + piece_bytes] for i in range(0, len(raw), piece_bytes)] or [b""]
    return [
        RecordChunk(device_id=device_id, seq=seq, type=type_, created_at=created_at,
                    index=index, count=len(pieces), payload_sha256=digest,
                    data_b64=base64.b64encode(piece).decode("ascii"))
        for index, piece in enumerate(pieces)
    ]


def join_record(chunks: list[RecordChunk]) -> UplinkRecord | Rejection:
    """The record the complete, ordered list of its chunks carries, checked by its hash."""
    first = chunks[0]
    try:
        raw = b"".join(base64.b64decode(c.data_b64, validate=True) for c in chunks)
        if hashlib.sha256(raw).hexdigest() != first.payload_sha256:
            return Rejection(f"record {first.seq} reassembled from {len(chunks)} chunks does "
                             "not match its sha256; it will be sent again")
        payload = json.loads(raw)
        return UplinkRecord(seq=first.seq, type=first.type, created_at=first.created_at,
                            payload=payload)
    except (ValueError, ValidationError) as exc:
        return Rejection(f"record {first.seq} reassembled is not a valid record: {exc}")


def encode_uplink_batch(
    device_id: str,
    records: Iterable[tuple[int, str, float, str]],
    batch_id: str | None = None,
    compress: bool = False,
) -> tuple[str, bytes]:
    """`(batch_id, payload)` of an UplinkBatch whose record payloads are already JSON text.

    The agent's fast path: it avoids parsing and re-serialising every buffered payload. The
    result decodes to the same UplinkBatch as `encode(UplinkBatch(...))` would produce.
    """
    batch_id = batch_id or new_id()
    quoted: dict[str, str] = {}  # a batch holds few record types: quote each once
    items = ",".join(
        f'{{"seq":{seq},"type":{quoted.get(type_) or quoted.setdefault(type_, json.dumps(type_))},'
        f'"created_at":{float(created_at)!r},"payload":{payload_json}}}'
        for seq, type_, created_at, payload_json in records
    )
    body = (
        f'{{"schema_version":{SCHEMA_VERSION},"kind":"uplink_batch",'
        f'"device_id":{json.dumps(device_id)},"batch_id":{json.dumps(batch_id)},'
        f'"sent_at":{now()!r},"records":[{items}]}}'
    ).encode()
    if not compress:
        return batch_id, body
    packed = CompressedUplinkBatch(
        device_id=device_id, batch_id=batch_id,
        data_b64=base64.b64encode(zlib.compress(body, 1)).decode("ascii"),
    )
    return batch_id, encode(packed)


def expand_uplink(message: UplinkBatch | CompressedUplinkBatch) -> UplinkBatch | Rejection:
    """The UplinkBatch inside a compressed one (size-limited), or the batch itself."""
    if isinstance(message, UplinkBatch):
        return message
    try:
        inflater = zlib.decompressobj()
        body = inflater.decompress(base64.b64decode(message.data_b64, validate=True),
                                   MAX_PAYLOAD_BYTES * 4)
    except (ValueError, zlib.error) as exc:
        return Rejection(f"compressed batch is not valid zlib/base64: {exc}")
    if inflater.unconsumed_tail:
        return Rejection(f"compressed batch expands beyond {MAX_PAYLOAD_BYTES * 4} bytes")
    inner = decode(body, expect=(UplinkBatch,), topic_device_id=message.device_id)
    if isinstance(inner, UplinkBatch) and inner.batch_id != message.batch_id:
        return Rejection(f"batch_id {inner.batch_id!r} inside differs from {message.batch_id!r}")
    return inner  # type: ignore[return-value]


class BatchAck(_Message):
    """Central's answer once a batch is committed; only then may the agent forget it."""

    kind: Literal["batch_ack"] = "batch_ack"
    device_id: DeviceId
    batch_id: str = Field(min_length=1, max_length=64)
    acked_seqs: list[int] = Field(description="Every seq of the batch now stored centrally")
    received_at: float = Field(default_factory=now)


# --- model deployment ------------------------------------------------------------------------


class TensorSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    dtype: str = Field(description="Element type, e.g. float32")
    shape: list[int | str | None] = Field(description="Dimensions; null or a name if dynamic")


class ModelManifest(BaseModel):
    """Everything an agent needs to fetch, verify and run one model version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ModelName
    version: Version
    kind: Literal["process", "vision"]
    sha256: Sha256
    size_bytes: int = Field(gt=0)
    chunk_size_bytes: int = Field(gt=0)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    published_at: float = Field(default_factory=now)
    key_id: str = Field("", max_length=64, description="Key that signed it (see signing.py)")
    signature: str = Field(
        "", max_length=256,
        description="Ed25519 signature (base64) over everything else, canonically encoded",
    )

    @property
    def chunk_count(self) -> int:
        return -(-self.size_bytes // self.chunk_size_bytes)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.name, version=self.version, sha256=self.sha256)


class _Command(_Message):
    """Central's commands are signed like manifests: a device acts only on its own, signed ones."""

    command_id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    device_id: DeviceId
    issued_at: float = Field(default_factory=now)
    issued_by: str = Field("", description="Who gave the command, for the audit log")
    key_id: str = Field("", max_length=64)
    signature: str = Field("", max_length=256)


class DeployCommand(_Command):
    kind: Literal["deploy"] = "deploy"
    manifest: ModelManifest


class RollbackCommand(_Command):
    """Switch a model back to the version that was active before the current one."""

    kind: Literal["rollback"] = "rollback"
    model_name: ModelName
    to_version: Version | None = Field(
        None, description="Version to return to; default: the one active before the current"
    )


class ChunkRequest(_Message):
    """An agent asks for the chunks of an artifact it still lacks."""

    kind: Literal["chunk_request"] = "chunk_request"
    device_id: DeviceId
    sha256: Sha256
    indices: list[Annotated[int, Field(ge=0)]] = Field(
        min_length=1, max_length=MAX_CHUNKS_PER_REQUEST
    )
    requested_at: float = Field(default_factory=now)


class ArtifactChunk(_Message):
    kind: Literal["artifact_chunk"] = "artifact_chunk"
    sha256: Sha256 = Field(description="SHA-256 of the whole artifact")
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    chunk_sha256: Sha256
    data_b64: str

    @model_validator(mode="after")
    def _index_below_count(self) -> ArtifactChunk:
        if self.index >= self.count:
            raise ValueError(f"chunk index {self.index} is not below count {self.count}")
        return self

    @classmethod
    def build(cls, sha256: str, index: int, count: int, data: bytes) -> ArtifactChunk:
        return cls(
            sha256=sha256,
            index=index,
            count=count,
            chunk_sha256=hashlib.sha256(data).hexdigest(),
            data_b64=base64.b64encode(data).decode("ascii"),
        )

    def data(self) -> bytes:
        """The chunk's bytes, checked against its own hash."""
        raw = base64.b64decode(self.data_b64, validate=True)
        if hashlib.sha256(raw).hexdigest() != self.chunk_sha256:
            raise ValueError(f"chunk {self.index} of {self.sha256[:12]} is corrupt (hash mismatch)")
        return raw


DeploymentStep = Literal[
    "received", "downloading", "verifying", "installed", "shadow", "activated", "confirmed",
    "failed", "rolled_back",
]


class DeploymentEvent(_Message):
    kind: Literal["deployment_event"] = "deployment_event"
    device_id: DeviceId
    command_id: str
    model_name: ModelName
    version: Version
    step: DeploymentStep
    detail: str = ""
    progress: float | None = Field(None, ge=0.0, le=1.0)
    at: float = Field(default_factory=now)


Message = Annotated[
    DeviceStatus
    | UplinkBatch
    | CompressedUplinkBatch
    | RecordChunk
    | BatchAck
    | DeployCommand
    | RollbackCommand
    | ChunkRequest
    | ArtifactChunk
    | DeploymentEvent,
    Field(discriminator="kind"),
]
Command = DeployCommand | RollbackCommand
_MESSAGE_ADAPTER: TypeAdapter[Any] = TypeAdapter(Message)


# --- topics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    leaf: str
    direction: str
    qos: int
    retained: bool
    message: str
    purpose: str


DEVICE_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("status", "agent → central", 1, True, "DeviceStatus",
              "Online state and health; the broker publishes state=offline as last will"),
    TopicSpec("uplink", "agent → central", 1, False,
              "UplinkBatch, CompressedUplinkBatch, RecordChunk",
              "Buffered records (predictions, events), each with its seq; large ones in chunks"),
    TopicSpec("ack", "central → agent", 1, False, "BatchAck",
              "Seqs stored by central; the agent deletes them only now"),
    TopicSpec("commands", "central → agent", 1, False, "DeployCommand, RollbackCommand",
              "Deploy a model version, or roll one back"),
    TopicSpec("chunk-request", "agent → central", 1, False, "ChunkRequest",
              "Chunks of an artifact the agent still lacks"),
    TopicSpec("deployment", "agent → central", 1, False, "DeploymentEvent",
              "Every step of a deployment on the device"),
)
ARTIFACT_TOPIC = TopicSpec("artifacts/{sha256}", "central → agents", 1, False, "ArtifactChunk",
                           "Chunks of a model artifact, shared by every device fetching it")


SHARED_PREFIX = "$share/"


def plain_filter(topic_filter: str) -> str:
    """The topic filter a subscription matches: `$share/{group}/{filter}` matches `filter`."""
    if topic_filter.startswith(SHARED_PREFIX):
        return topic_filter.split("/", 2)[2]
    return topic_filter


class Topics:
    """The topic tree under one prefix: `{prefix}/devices/{device_id}/{leaf}`."""

    def __init__(self, prefix: str = DEFAULT_TOPIC_PREFIX) -> None:
        if not prefix or any(c in prefix for c in "+#") or prefix.startswith("/"):
            raise ValueError(f"topic prefix {prefix!r} must be non-empty, without + # or leading /")
        self.prefix = prefix.rstrip("/")

    def device(self, device_id: str, leaf: str) -> str:
        if not re.fullmatch(ID_PATTERN, device_id):
            raise ValueError(f"device id {device_id!r} is not valid: use letters, digits, . _ -")
        return f"{self.prefix}/devices/{device_id}/{leaf}"

    def status(self, device_id: str) -> str:
        return self.device(device_id, "status")

    def uplink(self, device_id: str) -> str:
        return self.device(device_id, "uplink")

    def ack(self, device_id: str) -> str:
        return self.device(device_id, "ack")

    def commands(self, device_id: str) -> str:
        return self.device(device_id, "commands")

    def chunk_request(self, device_id: str) -> str:
        return self.device(device_id, "chunk-request")

    def deployment(self, device_id: str) -> str:
        return self.device(device_id, "deployment")

    def artifact(self, sha256: str) -> str:
        if not re.fullmatch(SHA256_PATTERN, sha256):
            raise ValueError(f"{sha256!r} is not a lower-case hex SHA-256")
        return f"{self.prefix}/artifacts/{sha256}"

    def all_devices(self, leaf: str) -> str:
        """Wildcard subscription for one leaf of every device (central side)."""
        return f"{self.prefix}/devices/+/{leaf}"

    def all_artifacts(self) -> str:
        """Wildcard filter for the chunks of every artifact (the brokers' ACL)."""
        return f"{self.prefix}/artifacts/+"

    @staticmethod
    def shared(topic_filter: str, group: str) -> str:
        """An MQTT shared subscription: each message goes to one subscriber of `group`."""
        return f"{SHARED_PREFIX}{group}/{topic_filter}"

    def parse_device_topic(self, topic: str) -> tuple[str, str] | None:
        """`(device_id, leaf)` for a device topic under this prefix, else None."""
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 2 or not re.fullmatch(ID_PATTERN, parts[0]):
            return None
        return parts[0], parts[1]


# --- encoding and decoding ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """Why a received payload was not accepted; callers log it and carry on."""

    reason: str

    def __bool__(self) -> bool:
        return False


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode("utf-8")


def decode(
    payload: bytes | str,
    expect: tuple[type[BaseModel], ...] | None = None,
    topic_device_id: str | None = None,
) -> BaseModel | Rejection:
    """Parse a payload into a message, or say why not. Never raises.

    `expect` limits the accepted message types; `topic_device_id` must match the payload's
    device_id, so a device cannot speak for another one.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        # Fast path: parse and validate in one pass; the slow path below explains failures.
        message = _MESSAGE_ADAPTER.validate_json(payload)
    except ValidationError:
        return _explain_rejection(payload)
    return _check_message(message, expect, topic_device_id)


def _explain_rejection(payload: bytes | str) -> Rejection:
    try:
        data = json.loads(payload)
    except RecursionError:
        return Rejection("payload nests arrays or objects too deeply")
    except (ValueError, UnicodeDecodeError) as exc:
        return Rejection(f"payload is not JSON: {exc}")
    if not isinstance(data, dict):
        return Rejection(f"payload must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        return Rejection(
            f"schema_version {version!r} is not supported (this build speaks {SCHEMA_VERSION}); "
            "upgrade the older side"
        )
    try:
        _MESSAGE_ADAPTER.validate_python(data)
    except ValidationError as exc:
        return Rejection(f"invalid {data.get('kind', 'message')!r}: {_summarise(exc)}")
    return Rejection("invalid message")


def _check_message(
    message: BaseModel,
    expect: tuple[type[BaseModel], ...] | None,
    topic_device_id: str | None,
) -> BaseModel | Rejection:
    if expect is not None and not isinstance(message, expect):
        wanted = " or ".join(t.__name__ for t in expect)
        return Rejection(f"expected {wanted}, got {type(message).__name__}")
    if topic_device_id is not None:
        claimed = getattr(message, "device_id", topic_device_id)
        if claimed != topic_device_id:
            return Rejection(
                f"device_id {claimed!r} does not match topic device {topic_device_id!r}"
            )
    return message


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


# --- documentation ---------------------------------------------------------------------------


def topic_table_markdown(prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    rows = [
        "| Topic | Direction | QoS | Retained | Message | Purpose |",
        "|---|---|---|---|---|---|",
    ]
    specs = [(f"{prefix}/devices/{{device_id}}/{s.leaf}", s) for s in DEVICE_TOPICS]
    specs.append((f"{prefix}/{ARTIFACT_TOPIC.leaf}", ARTIFACT_TOPIC))
    for topic, s in specs:
        retained = "yes" if s.retained else "no"
        rows.append(
            f"| `{topic}` | {s.direction} | {s.qos} | {retained} | `{s.message}` | {s.purpose} |"
        )
    return "\n".join(rows)


def contract_markdown(prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """The topic table and the JSON Schema of every message, for people and other tools."""
    schema = _MESSAGE_ADAPTER.json_schema()
    return "\n".join(
        [
            f"# MQTT contract (schema version {SCHEMA_VERSION})",
            "",
            "Every payload is a UTF-8 JSON object with `schema_version` and a `kind` field.",
            "",
            topic_table_markdown(prefix),
            "",
            "## JSON Schema",
            "",
            "```json",
            json.dumps(schema, indent=2),
            "```",
        ]
    )
