"""Field types, identifiers, limits and the base of every message on the wire."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
FINITE = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class WireMessage(BaseModel):
    model_config = FINITE

    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Wire schema version")

class ModelRef(BaseModel):
    """One installed model version, as every prediction and status names it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ModelName
    version: Version
    sha256: Sha256


@dataclass(frozen=True)
class Rejection:
    """Why a received payload was not accepted; callers log it and carry on."""

    reason: str

    def __bool__(self) -> bool:
        return False

