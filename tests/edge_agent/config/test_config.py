"""Configuration files: the shipped examples load, and bad files say where and what."""

from __future__ import annotations

from pathlib import Path

import pytest

from central_sync.config import load_central_config
from edge_agent.config import load_agent_config
from edge_agent.kernel.configfile import ConfigError
from tests.helpers import REPO

GOOD = """\
device_id: gw1
sources:
  - name: line1
    endpoint: opc.tcp://127.0.0.1:4840/line-1
    nodes: {zone1_temp_c: "ns=2;s=line1.zone1_temp_c"}
pipelines:
  - name: scrap
    source: line1
    model: extruder-scrap
security:
  central_public_key: keys/central.pub
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_shipped_examples_are_valid() -> None:
    agent = load_agent_config(REPO / "deploy" / "edge-agent.example.yaml")
    assert agent.pipelines[0].model == "extruder-scrap"
    central = load_central_config(REPO / "deploy" / "central-sync.example.yaml")
    assert central.broker.topic_prefix == agent.broker.topic_prefix


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_agent_config(write(tmp_path, GOOD + "data_dir: state\n"))
    assert config.data_dir == (tmp_path / "state").resolve()
    assert config.buffer_path == config.data_dir / "buffer.db"
    assert config.security.central_public_key == (tmp_path / "keys" / "central.pub").resolve()


def test_wrong_value_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "broker:\n  port: 99999\n")
    with pytest.raises(ConfigError) as err:
        load_agent_config(path)
    message = str(err.value)
    assert f"{path}:13: broker.port" in message
    assert "less than or equal to 65535" in message


def test_misspelt_field_is_called_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("device_id", "devise_id"))
    with pytest.raises(ConfigError) as err:
        load_agent_config(path)
    assert f"{path}:1: devise_id: unknown field" in str(err.value)
    assert "device_id: required field is missing" in str(err.value)


def test_pipeline_with_undefined_source_is_explained(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("source: line1", "source: line9"))
    with pytest.raises(ConfigError, match="uses source 'line9', which is not defined"):
        load_agent_config(path)


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "device_id: gw1\nbroker: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+:\d+: YAML syntax error"):
        load_agent_config(path)


def test_missing_file_points_to_the_example(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found; start from deploy/"):
        load_agent_config(tmp_path / "nope.yaml")


def test_secrets_come_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD + "broker:\n  password: ${GW_SECRET}\n  username: ${GW_USER:-gw}\n")
    with pytest.raises(ConfigError, match="environment variable GW_SECRET is not set"):
        load_agent_config(path)
    monkeypatch.setenv("GW_SECRET", "s3cret")
    config = load_agent_config(path)
    assert (config.broker.username, config.broker.password) == ("gw", "s3cret")


def test_central_rejects_unsupported_database_url(tmp_path: Path) -> None:
    path = tmp_path / "central.yaml"
    path.write_text("database_url: mysql://x\n")
    with pytest.raises(ConfigError, match=f"{path}:1: database_url"):
        load_central_config(path)


def test_central_takes_a_postgresql_url_and_names_it_without_the_password(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CENTRAL_DB_PASSWORD", "s3cret")
    path = tmp_path / "central.yaml"
    path.write_text("database_url: postgresql://central:${CENTRAL_DB_PASSWORD}@db:5432/plant\n")
    config = load_central_config(path)
    assert config.database_url == "postgresql://central:s3cret@db:5432/plant"
    assert config.database_name == "postgresql://central:***@db:5432/plant"
    sqlite = tmp_path / "sqlite.yaml"
    sqlite.write_text("database_url: sqlite:///var/c.db\n")
    assert load_central_config(sqlite).database_name == str(tmp_path / "var" / "c.db")
