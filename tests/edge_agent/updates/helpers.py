"""Signed agent packages of the test wheels, as central publishes them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from central_sync.agent_releases import read_wheel_metadata
from edge_agent.kernel.contract import AgentPackage
from tests.helpers import TEST_SIGNER

CHUNK_SIZE = 64 * 1024


def package_for(wheel: Path, **changes: Any) -> AgentPackage:
    """The wheel's package, signed by the test key; `changes` before signing."""
    data = wheel.read_bytes()
    meta = read_wheel_metadata(wheel)
    fields: dict[str, Any] = {
        "version": meta.version, "filename": wheel.name,
        "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
        "chunk_size_bytes": CHUNK_SIZE, "requires": meta.requires,
        "requires_python": meta.requires_python, **changes}
    return TEST_SIGNER.signed(AgentPackage(**fields))
