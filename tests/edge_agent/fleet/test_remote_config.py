"""What central may set on a gateway, and how a body from central is applied over the
gateway's own file: refused keys, the same validation messages on both sides, local values
winning, the schema `edge-agent config-schema` prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config import (
    REMOTE_KEYS,
    RemoteConfig,
    RemoteConfigError,
    check_remote_body,
    effective_config,
    remote_config_json_schema,
)
from tests.edge_agent.fleet.fleet_parts import camera, local_config, vision

OPCUA = {"type": "opcua", "name": "line1", "endpoint": "opc.tcp://10.0.0.5:4840",
         "nodes": {"zone2_temp_c": "ns=2;s=line1.zone2_temp_c"}}


@pytest.mark.parametrize("key", ["device_id", "broker", "security", "data_dir", "ui", "buffer",
                                 "uplink", "labels", "status_interval_s"])
def test_a_local_key_is_refused_and_said_to_stay_in_the_gateways_file(key: str) -> None:
    with pytest.raises(RemoteConfigError) as refused:
        check_remote_body({key: "anything", "sources": [camera()]})
    assert refused.value.problems == [
        f"{key}: central may not set this; it stays in the gateway's own YAML file "
        "(central sets only sources, pipelines, monitoring_interval_s)"]


def test_an_unknown_key_is_named() -> None:
    with pytest.raises(RemoteConfigError, match="pipeline: unknown key; central sets only "):
        check_remote_body({"pipeline": []})


def test_a_pipeline_naming_an_unknown_source_is_refused_in_the_gateways_words(
        tmp_path: Path) -> None:
    body = {"sources": [camera("cam1")], "pipelines": [vision("surface", "cam9")]}
    expected = "pipeline 'surface' uses source 'cam9', which is not defined (sources: cam1)"
    with pytest.raises(RemoteConfigError) as at_central:
        check_remote_body(body)
    with pytest.raises(RemoteConfigError) as on_gateway:
        effective_config(local_config(tmp_path), body)
    assert at_central.value.problems == on_gateway.value.problems == [expected]
    assert str(at_central.value) == f"configuration refused, 1 problem: {expected}"


def test_field_errors_name_where_in_the_body() -> None:
    with pytest.raises(RemoteConfigError) as refused:
        check_remote_body({"sources": [{**OPCUA, "endpoint": "http://10.0.0.5"}],
                           "pipelines": [{**vision(), "colour": "red"}],
                           "monitoring_interval_s": 0})
    assert refused.value.problems == [
        "sources.0.endpoint: must start with opc.tcp://",
        "pipelines.0.colour: unknown field; check its spelling against "
        "`edge-agent config-schema`",
        "monitoring_interval_s: Input should be greater than or equal to 1"]


def test_certificate_paths_are_the_gateways_absolute_paths(tmp_path: Path) -> None:
    secured = {**OPCUA, "security_policy": "Basic256Sha256",
               "certificate": "/etc/edge-agent/opcua/agent.pem",
               "private_key": "opcua/agent-key.pem"}
    with pytest.raises(RemoteConfigError) as refused:
        check_remote_body({"sources": [secured]})
    assert refused.value.problems == [
        "sources.0.private_key: opcua/agent-key.pem is relative; in a configuration from "
        "central give the absolute path of the file on the gateway"]
    absolute = {**secured, "private_key": "/etc/edge-agent/opcua/agent-key.pem"}
    assert check_remote_body({"sources": [absolute]}).sources[0].name == "line1", \
        "central does not look for the gateway's files"
    with pytest.raises(RemoteConfigError, match=re.escape(
            "file /etc/edge-agent/opcua/agent.pem does not exist")):
        effective_config(local_config(tmp_path), {"sources": [absolute]})
    (tmp_path / "agent.pem").write_text("cert")
    (tmp_path / "agent-key.pem").write_text("key")
    present = {**secured, "certificate": str(tmp_path / "agent.pem"),
               "private_key": str(tmp_path / "agent-key.pem")}
    assert effective_config(local_config(tmp_path), {"sources": [present]}).sources


def test_local_values_win_and_the_body_replaces_sources_and_pipelines(tmp_path: Path) -> None:
    local = local_config(tmp_path, labels=["line-3"], monitoring_interval_s=120,
                         sources=[OPCUA], pipelines=[{"name": "scrap", "source": "line1",
                                                      "model": "extruder-scrap"}])
    effective = effective_config(local, {"sources": [camera()], "pipelines": [vision()]})
    for key in ("device_id", "labels", "data_dir", "broker", "security", "ui", "buffer",
                "uplink", "status_interval_s"):
        assert getattr(effective, key) == getattr(local, key), key
    assert effective.monitoring_interval_s == 120, "the body did not set it: the file's"
    assert [s.name for s in effective.sources] == ["cam1"]
    assert [p.name for p in effective.pipelines] == ["surface"]
    assert effective_config(local, {"monitoring_interval_s": 30}).monitoring_interval_s == 30
    assert effective_config(local, {}).sources == [], "an empty body runs nothing"


def test_automatic_writes_need_the_gateways_page_login(tmp_path: Path) -> None:
    writer = {"name": "scrap", "source": "line1", "model": "extruder-scrap",
              "features": ["zone2_temp_c"],
              "recommend": {"controls": {"zone2_temp_c": {"min": 170, "max": 190, "step": 0.5,
                                                          "max_change": 3}},
                            "objective": {"type": "minimise", "output": "scrap_rate_pct"},
                            "mode": "auto"}}
    body = {"sources": [{**OPCUA, "allow_insecure_write": True}], "pipelines": [writer]}
    check_remote_body(body)  # central cannot know the gateway's page: the gateway decides
    open_page = local_config(tmp_path, ui={"port": 8080, "host": "127.0.0.1"})
    with pytest.raises(RemoteConfigError, match="operator page must ask for a login"):
        effective_config(open_page, body)


def test_schema_describes_exactly_what_central_may_set() -> None:
    schema = remote_config_json_schema()
    assert set(schema["properties"]) == set(REMOTE_KEYS)
    assert schema["additionalProperties"] is False
    assert "stay in the gateway's own YAML file" in schema["description"]
    assert RemoteConfig.model_validate({"sources": [camera()]}).sources[0].name == "cam1"


def test_config_schema_command_prints_the_schema_without_a_config_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no edge-agent.yaml here
    assert main(["config-schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == remote_config_json_schema()
