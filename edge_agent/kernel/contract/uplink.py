"""Uplink messages: batches of records, records in chunks, and central's acks."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from edge_agent.kernel.contract.fields import (
    MAX_RECORDS_PER_BATCH,
    DeviceId,
    Rejection,
    Seq,
    Sha256,
    WireMessage,
    new_id,
    now,
)
from edge_agent.kernel.contract.records import (
    UplinkRecord,
)


class UplinkBatch(WireMessage):
    kind: Literal["uplink_batch"] = "uplink_batch"
    device_id: DeviceId
    batch_id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    sent_at: float = Field(default_factory=now)
    records: list[UplinkRecord] = Field(min_length=1, max_length=MAX_RECORDS_PER_BATCH)


class CompressedUplinkBatch(WireMessage):
    """An UplinkBatch's JSON, zlib-compressed then base64-encoded, for slow or metered links."""

    kind: Literal["uplink_batch_zlib"] = "uplink_batch_zlib"
    device_id: DeviceId
    batch_id: str = Field(min_length=1, max_length=64)
    data_b64: str


class RecordChunk(WireMessage):
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


class BatchAck(WireMessage):
    """Central's answer once a batch is committed; only then may the agent forget it."""

    kind: Literal["batch_ack"] = "batch_ack"
    device_id: DeviceId
    batch_id: str = Field(min_length=1, max_length=64)
    acked_seqs: list[int] = Field(description="Every seq of the batch now stored centrally")
    received_at: float = Field(default_factory=now)

