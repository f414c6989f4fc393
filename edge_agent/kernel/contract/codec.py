"""Encoding and decoding of every message, the uplink codec included; decoding never raises."""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from edge_agent.kernel.contract.alerts import DeviceAlerts
from edge_agent.kernel.contract.deployment import (
    ArtifactChunk,
    ChunkRequest,
    DeployCommand,
    DeploymentEvent,
    RollbackCommand,
)
from edge_agent.kernel.contract.fields import (
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    Rejection,
    new_id,
    now,
)
from edge_agent.kernel.contract.fleet import (
    AgentRollbackCommand,
    AgentUpdateCommand,
    ClockProbe,
    ClockReply,
    ConfigDeployCommand,
    ConfigRollbackCommand,
    DiagnoseRequest,
    DiagnosticReply,
    LogBatch,
    LogRequest,
    RestartCommand,
)
from edge_agent.kernel.contract.records import (
    RECORD_DEFECT,
    RECORD_DEPLOYMENT_EVENT,
    RECORD_EVICTION,
    RECORD_MODEL_STATS,
    RECORD_MODEL_WATCH,
    RECORD_PREDICTION,
    RECORD_RECOMMENDATION,
    RECORD_RECOMMENDATION_ANSWER,
    RECORD_RECOMMENDATION_OUTCOME,
    RECORD_REJECT_WRITE,
    RECORD_SAMPLE,
    RECORD_SETPOINT_WRITE,
    RECORD_SOURCE_GAP,
    DefectPayload,
    EvictionPayload,
    ModelStatsPayload,
    ModelWatchPayload,
    PredictionPayload,
    RecommendationAnswerPayload,
    RecommendationOutcomePayload,
    RecommendationPayload,
    RejectWritePayload,
    SamplePayload,
    SetpointWritePayload,
    SourceGapPayload,
    UplinkRecord,
)
from edge_agent.kernel.contract.status import (
    DeviceStatus,
)
from edge_agent.kernel.contract.uplink import (
    BatchAck,
    CompressedUplinkBatch,
    RecordChunk,
    UplinkBatch,
)

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
    | DeploymentEvent
    | ConfigDeployCommand
    | ConfigRollbackCommand
    | AgentUpdateCommand
    | AgentRollbackCommand
    | LogRequest
    | DiagnoseRequest
    | RestartCommand
    | ClockProbe
    | ClockReply
    | LogBatch
    | DiagnosticReply
    | DeviceAlerts,
    Field(discriminator="kind"),
]
Command = (DeployCommand | RollbackCommand | ConfigDeployCommand | ConfigRollbackCommand
           | AgentUpdateCommand | AgentRollbackCommand | LogRequest | DiagnoseRequest
           | RestartCommand)
# Everything central may send on a device's commands topic.
COMMAND_TYPES: tuple[type[BaseModel], ...] = (
    DeployCommand, RollbackCommand, ConfigDeployCommand, ConfigRollbackCommand,
    AgentUpdateCommand, AgentRollbackCommand, LogRequest, DiagnoseRequest, RestartCommand,
    ClockProbe)
# Everything a device may send on its diagnostics topic.
DIAGNOSTIC_TYPES: tuple[type[BaseModel], ...] = (DiagnosticReply, LogBatch, ClockReply)
_MESSAGE_ADAPTER: TypeAdapter[Any] = TypeAdapter(Message)

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



# --- record payloads -----------------------------------------------------------------------

RECORD_PAYLOADS: dict[str, type[BaseModel]] = {
    RECORD_PREDICTION: PredictionPayload,
    RECORD_DEPLOYMENT_EVENT: DeploymentEvent,
    RECORD_EVICTION: EvictionPayload,
    RECORD_DEFECT: DefectPayload,
    RECORD_SAMPLE: SamplePayload,
    RECORD_RECOMMENDATION: RecommendationPayload,
    RECORD_RECOMMENDATION_ANSWER: RecommendationAnswerPayload,
    RECORD_RECOMMENDATION_OUTCOME: RecommendationOutcomePayload,
    RECORD_SETPOINT_WRITE: SetpointWritePayload,
    RECORD_SOURCE_GAP: SourceGapPayload,
    RECORD_REJECT_WRITE: RejectWritePayload,
    RECORD_MODEL_STATS: ModelStatsPayload,
    RECORD_MODEL_WATCH: ModelWatchPayload,
}
"""The payload model of every record kind the agent sends."""


def parse_payload(record: UplinkRecord) -> BaseModel | Rejection:
    """A record's payload as its kind's model, or why not. Never raises.

    A kind this build does not know is rejected too; callers keep such a record as it came.
    """
    model = RECORD_PAYLOADS.get(record.type)
    if model is None:
        return Rejection(f"record type {record.type!r} has no payload model in this build")
    try:
        return model.model_validate(record.payload)
    except ValidationError as exc:
        return Rejection(f"invalid {record.type} payload: {_summarise(exc)}")
