"""Fixtures for central's tests: a tiny real ONNX model, a database (SQLite, then PostgreSQL:
`database_url` in tests/conftest.py) and config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from central_helpers import make_onnx_model, write_config

from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from tests.helpers import write_test_keys


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return make_onnx_model(tmp_path / "model.onnx")


@pytest.fixture
def db(database_url: str) -> Iterator[CentralDB]:
    database = CentralDB(database_url)
    yield database
    database.close()


@pytest.fixture
def central_config(tmp_path: Path, database_url: str) -> CentralConfig:
    return CentralConfig(
        database_url=database_url,
        artifact_dir=tmp_path / "artifacts",
        chunk_size_bytes=1024,
        web={"port": 0},
        models={"require_approval": False},  # tests/central_sync/test_approvals.py: on
        signing_key_path=write_test_keys(tmp_path / "keys")[0],
    )


@pytest.fixture
def config_file(tmp_path: Path, database_url: str) -> Path:
    """central-sync.yaml in a temp folder, on the test's database."""
    return write_config(tmp_path, database_url=database_url)
