"""Helpers for central's tests: run coroutines, build models and batches."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_agent.kernel.contract import UplinkBatch, UplinkRecord
from tests.helpers import write_test_keys

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 20.0) -> T:
    """Run one coroutine to completion with a deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def make_onnx_model(path: Path, n_features: int = 3, weight: float = 1.0,
                    input_name: str = "features", output_name: str = "y") -> Path:
    """A real linear model: `output_name` [N,1] = `input_name` [N,n_features] @ weights."""
    weights = numpy_helper.from_array(
        np.full((n_features, 1), weight, dtype=np.float32), name="weights")
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "weights"], [output_name])],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, 1])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def prediction_payload(value: float = 4.2, version: str = "1.0.0") -> dict[str, Any]:
    return {
        "pipeline": "scrap",
        "model": {"name": "scrap-model", "version": version, "sha256": "a" * 64},
        "inputs": {"zone2_temp_c": 182.0},
        "outputs": {"scrap_rate_pct": value},
        "latency_ms": 1.5,
    }


def make_batch(device_id: str = "gw-1", seqs: range | list[int] = range(1, 4),
               record_type: str = "prediction") -> UplinkBatch:
    payload = prediction_payload() if record_type == "prediction" else {"note": "x"}
    return UplinkBatch(device_id=device_id, records=[
        UplinkRecord(seq=seq, type=record_type, created_at=1_700_000_000.0 + seq,
                     payload=payload)
        for seq in seqs
    ])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Inbox:
    """Collects what a test client receives on one topic filter."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))


def write_config(folder: Path, broker_port: int = 1883, web_port: int = 0,
                 database_url: str = "sqlite:///var/central.db") -> Path:
    path = folder / "central-sync.yaml"
    path.write_text(
        "central_id: central-test\n"
        f"broker:\n  port: {broker_port}\n"
        f"database_url: {database_url}\n"
        "artifact_dir: var/artifacts\n"
        "chunk_size_bytes: 1024\n"
        f"web:\n  port: {web_port}\n"
        "models:\n  require_approval: false\n"  # tests/central_sync/test_approvals.py: on
    )
    write_test_keys(folder / "var" / "central" / "keys")  # the default signing_key_path
    return path
