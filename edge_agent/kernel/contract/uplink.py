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

# A record too large for one batch goes in pieces. The agent's pieces are at most 3/4 of its
# largest batch (4 MiB, before base64); central accepts a record of at most MAX_RECORD_BYTES,
# counted as its pieces' count times a piece's size, so every piece alone shows the bound.
MAX_RECORD_PIECE_BYTES = 3 * 1024 * 1024
MAX_RECORD_BYTES = 64 * 1024 * 1024


class RecordTooLarge(ValueError):
    """A record's payload exceeds what central accepts in pieces (MAX_RECORD_BYTES)."""


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
    A piece holds at most MAX_RECORD_PIECE_BYTES and `count` times its size is at most
    MAX_RECORD_BYTES, so the whole record is bounded whichever piece arrives first.
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
        size = self.piece_bytes
        if size > MAX_RECORD_PIECE_BYTES:
            raise ValueError(f"record piece of {size} bytes exceeds {MAX_RECORD_PIECE_BYTES}")
        if self.count * size > MAX_RECORD_BYTES:
            raise ValueError(f"record of {self.count} pieces of {size} bytes exceeds the "
                             f"{MAX_RECORD_BYTES} bytes a record in pieces may have")
        return self

    @property
    def piece_bytes(self) -> int:
        """This piece's size once decoded, from its base64 length alone."""
        return len(self.data_b64) * 3 // 4 - self.data_b64[-2:].count("=")


def chunked_batch_id(seq: int) -> str:
    """The batch id under which central acks a record it received in chunks."""
    return f"record-{seq}"


def split_record(device_id: str, seq: int, type_: str, created_at: float, payload_json: str,
                 piece_bytes: int) -> list[RecordChunk]:
    """A record's payload JSON cut into RecordChunks of at most `piece_bytes` bytes each.

    Raises RecordTooLarge when the pieces would exceed MAX_RECORD_BYTES: central refuses them.
    """
    raw = payload_json.encode("utf-8")
    count = max(1, -(-len(raw) // min(piece_bytes, MAX_RECORD_PIECE_BYTES)))
    piece_bytes = max(1, -(-len(raw) // count))  # equal pieces: count x size ~ the record's size
    if count * piece_bytes > MAX_RECORD_BYTES:
        raise RecordTooLarge(
            f"record {seq} ({type_}) has {len(raw)} bytes, more than the {MAX_RECORD_BYTES} "
            "bytes central accepts for one record; make the records of this kind smaller "
            "(image size or quality)")
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
    try:
        raw = b"".join(base64.b64decode(c.data_b64, validate=True) for c in chunks)
    except ValueError as exc:
        return Rejection(f"record {chunks[0].seq} has a piece that is not base64: {exc}")
    return record_from_pieces(chunks[0], raw, len(chunks))


def record_from_pieces(first: RecordChunk, raw: bytes, pieces: int) -> UplinkRecord | Rejection:
    """The record whose pieces, joined in order, are `raw`; `first` is any of its pieces."""
    if hashlib.sha256(raw).hexdigest() != first.payload_sha256:
        return Rejection(f"record {first.seq} reassembled from {pieces} chunks does "
                         "not match its sha256; it will be sent again")
    try:
        return UplinkRecord(seq=first.seq, type=first.type, created_at=first.created_at,
                            payload=json.loads(raw))
    except (ValueError, ValidationError) as exc:
        return Rejection(f"record {first.seq} reassembled is not a valid record: {exc}")


class BatchAck(WireMessage):
    """Central's answer once a batch is committed; only then may the agent forget it."""

    kind: Literal["batch_ack"] = "batch_ack"
    device_id: DeviceId
    batch_id: str = Field(min_length=1, max_length=64)
    acked_seqs: list[int] = Field(description="Every seq of the batch now stored centrally")
    received_at: float = Field(default_factory=now)

