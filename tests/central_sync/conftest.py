"""Fixtures for central's tests: a tiny real ONNX model, a temp database and config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from central_helpers import make_onnx_model

from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from tests.helpers import write_test_keys


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return make_onnx_model(tmp_path / "model.onnx")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[CentralDB]:
    database = CentralDB(tmp_path / "central.db")
    yield database
    database.close()


@pytest.fixture
def central_config(tmp_path: Path) -> CentralConfig:
    return CentralConfig(
        database_url=f"sqlite:///{tmp_path / 'central.db'}",
        artifact_dir=tmp_path / "artifacts",
        chunk_size_bytes=1024,
        web={"port": 0},
        signing_key_path=write_test_keys(tmp_path / "keys")[0],
    )
