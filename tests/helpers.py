"""Test helpers shared by several test modules: waiting for a state with a deadline, manifests
of the sample model, parsing a metrics scrape."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.kernel.contract import ModelManifest, TensorSpec
from edge_agent.kernel.signing import Signer, Verifier

REPO = Path(__file__).resolve().parent.parent
SAMPLE_MODEL = REPO / "sample_data" / "scrap_model.onnx"
SAMPLE_METADATA = REPO / "sample_data" / "scrap_model.json"

T = TypeVar("T")
# What a wait is for: words, or a callable asked at the deadline to tell the state reached.
Described = str | Callable[[], str]

# Central's signing key in tests; agents in tests trust it.
TEST_SIGNER = Signer.generate()
TEST_VERIFIER = Verifier(TEST_SIGNER.public_key)


def wait_until(condition: Callable[[], T], timeout_s: float = 20.0, *, what: Described = "",
               interval_s: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy and return that; after `timeout_s`
    fail, naming `what` was awaited and the last value seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(condition, timeout_s, what, value))
        time.sleep(interval_s)


async def wait_until_async(condition: Callable[[], T | Awaitable[T]], timeout_s: float = 20.0,
                           *, what: Described = "", interval_s: float = 0.02) -> T:
    """`wait_until` on the running event loop, which keeps running meanwhile; `condition` may
    be a coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(_timed_out(condition, timeout_s, what, value))
        await asyncio.sleep(interval_s)


def _timed_out(condition: Callable[[], object], timeout_s: float, what: Described,
               last: object) -> str:
    awaited = (what() if callable(what) else what) or _described(condition)
    return f"timed out after {timeout_s}s waiting for {awaited}; last value seen: {last!r}"


def _described(condition: Callable[[], object]) -> str:
    """The condition's source line (a lambda's own words), when no `what` was given."""
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)


def db_rows(db: Any, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of a raw query on a CentralDB, taken under its lock: a running service (its
    rollout engine, its store thread) uses the same connection at the same time."""
    with db._lock:
        return list(db._db.query(sql, params))


def write_test_keys(folder: Path) -> tuple[Path, Path]:
    """The test signing key as central and agents read it: (private key, public key)."""
    private = Path(folder) / "signing.key"
    return private, TEST_SIGNER.save(private)


def manifest_for(path: Path, name: str = "extruder-scrap", version: str = "1.0.0",
                 chunk_size_bytes: int = 16 * 1024, metadata: dict | None = None) -> ModelManifest:
    """A manifest for an ONNX file, as central would publish it (sample model's specs)."""
    data = path.read_bytes()
    meta = json.loads(SAMPLE_METADATA.read_text()) if metadata is None else metadata
    return TEST_SIGNER.signed(ModelManifest(
        name=name,
        version=version,
        kind="process",
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        chunk_size_bytes=chunk_size_bytes,
        inputs=[TensorSpec(name="features", dtype="float32", shape=[None, 6])],
        outputs=[TensorSpec(name="scrap_rate_pct", dtype="float32", shape=[None, 1])],
        metadata=meta,
    ))


def manifest_of(path: Path, metadata: dict, name: str = "surface",
                kind: str = "vision") -> ModelManifest:
    """An unsigned manifest for any ONNX file, its specs read by ONNX Runtime."""
    import onnxruntime as ort

    from edge_agent.inference.specs import tensor_specs

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    data = path.read_bytes()
    return ModelManifest(name=name, version="1.0.0", kind=kind,
                         sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                         chunk_size_bytes=262144, inputs=tensor_specs(session.get_inputs()),
                         outputs=tensor_specs(session.get_outputs()), metadata=metadata)


class Scrape:
    """A parsed exposition: `value(name, **labels)` of one sample."""

    def __init__(self, text: str) -> None:
        self.samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


CHROMIUM = Path("/usr/bin/chromium")  # Debian's: no tool downloads its own browser


def playwright_or_skip() -> Any:
    """playwright.sync_api, or a skip saying what to install (Chromium or Playwright)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed (/usr/bin/chromium): "
                    "deploy/setup.sh --test installs it")
    return pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -e '.[browser]'")
