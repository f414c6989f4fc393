"""Deployment messages: signed commands, artifact chunks and the device's steps."""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated, Literal

from pydantic import Field, model_validator

from edge_agent.kernel.contract.fields import (
    MAX_CHUNKS_PER_REQUEST,
    SEMVER_PATTERN,
    DeviceId,
    ModelName,
    Sha256,
    Version,
    WireMessage,
    new_id,
    now,
)
from edge_agent.kernel.contract.manifest import (
    ModelManifest,
)


class _Command(WireMessage):
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


class ChunkRequest(WireMessage):
    """An agent asks for the chunks of an artifact it still lacks."""

    kind: Literal["chunk_request"] = "chunk_request"
    device_id: DeviceId
    sha256: Sha256
    indices: list[Annotated[int, Field(ge=0)]] = Field(
        min_length=1, max_length=MAX_CHUNKS_PER_REQUEST
    )
    requested_at: float = Field(default_factory=now)


class ArtifactChunk(WireMessage):
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


DeploymentSubject = Literal["model", "config", "agent"]
# A model or agent release's semantic version, or a configuration's number.
SUBJECT_VERSION_PATTERN = rf"^(?:{SEMVER_PATTERN[1:-1]}|[1-9][0-9]{{0,9}})$"


class DeploymentEvent(WireMessage):
    """One step on the device of a deployment of a model version (`subject` model), a
    configuration (`config`: `model_name` is the configuration's name, `version` its number)
    or an agent release (`agent`: `model_name` is edge-agent)."""

    kind: Literal["deployment_event"] = "deployment_event"
    device_id: DeviceId
    command_id: str
    subject: DeploymentSubject = "model"
    model_name: ModelName
    version: str = Field(pattern=SUBJECT_VERSION_PATTERN)
    step: DeploymentStep
    detail: str = ""
    progress: float | None = Field(None, ge=0.0, le=1.0)
    at: float = Field(default_factory=now)

