"""The model manifest: what an agent needs to fetch, verify and run one version."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.kernel.contract.fields import (
    ModelName,
    ModelRef,
    Sha256,
    Version,
    now,
)


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

