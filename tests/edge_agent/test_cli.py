"""The edge-agent command line on real files."""

from __future__ import annotations

import shutil
from pathlib import Path

from edge_agent.cli import main
from tests.helpers import REPO, SAMPLE_MODEL, TEST_SIGNER, manifest_for, write_test_keys


def test_check_config_summarises_a_good_file(tmp_path: Path, capsys) -> None:
    config = tmp_path / "edge-agent.yaml"
    shutil.copy(REPO / "deploy" / "edge-agent.example.yaml", config)
    _, public = write_test_keys(tmp_path)
    public.rename(tmp_path / "central-signing.pub")  # the name the example uses
    assert main(["check-config", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "line1-gw1" in out and "extruder-scrap" in out
    assert f"signed by key {TEST_SIGNER.key_id} only" in out


def test_check_config_and_run_refuse_without_central_public_key(tmp_path: Path, capsys) -> None:
    config = tmp_path / "edge-agent.yaml"
    shutil.copy(REPO / "deploy" / "edge-agent.example.yaml", config)
    for command in ("check-config", "run"):
        assert main([command, "-c", str(config)]) == 2
        err = capsys.readouterr().err
        assert "central-signing.pub not found" in err and "keys init" in err, err
    config.write_text("device_id: gw1\n")
    assert main(["check-config", "-c", str(config)]) == 2
    assert "central_public_key is required" in capsys.readouterr().err


def test_bad_config_exits_2_naming_file_and_field(tmp_path: Path, capsys) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("device_id: gw1\nui:\n  port: -1\n")
    assert main(["run", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: ui.port" in err
    assert "Traceback" not in err


def test_status_reads_buffer_and_model_store(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    from edge_agent.buffer import Buffer, NewRecord
    from edge_agent.model_store import ModelStore

    path = tmp_path / "agent.yaml"
    path.write_text("device_id: gw1\ndata_dir: state\nsecurity: {verify_signatures: false}\n")
    assert main(["status", "-c", str(path)]) == 0
    assert "has not run here" in capsys.readouterr().out
    buffer = Buffer(tmp_path / "state" / "buffer.db", 10**6)
    buffer.append_many_sync([NewRecord("prediction", {"x": 1}, 0.0)])
    buffer.close_sync()
    store = ModelStore(tmp_path / "state" / "models")
    store.install(manifest_for(SAMPLE_MODEL), SAMPLE_MODEL)
    store.activate("extruder-scrap", "1.0.0")
    assert main(["status", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 records waiting" in out and "extruder-scrap" in out and "1.0.0" in out


def test_check_config_summarises_recommendations(tmp_path: Path, capsys) -> None:
    _, public = write_test_keys(tmp_path)
    config = tmp_path / "agent.yaml"
    config.write_text(
        "device_id: line-gw\n"
        f"security: {{central_public_key: {public}}}\n"
        "sources:\n"
        "  - {name: line, endpoint: 'opc.tcp://10.0.0.6:4840',\n"
        "     nodes: {zone2_temp_c: 'ns=2;s=z2', screw_speed_rpm: 'ns=2;s=s'}}\n"
        "pipelines:\n"
        "  - name: scrap\n"
        "    type: process\n"
        "    source: line\n"
        "    model: extruder-scrap\n"
        "    features: [zone2_temp_c, screw_speed_rpm]\n"
        "    recommend:\n"
        "      controls: {zone2_temp_c: {min: 178, max: 192, step: 0.5, max_change: 3}}\n"
        "      objective: {type: minimise, output: scrap_rate_pct}\n")
    assert main(["check-config", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "recommends: zone2_temp_c 178..192 (minimise; advises only, never writes)" in out


def test_check_config_summarises_cameras_and_vision_pipelines(tmp_path: Path, capsys) -> None:
    _, public = write_test_keys(tmp_path)
    config = tmp_path / "agent.yaml"
    config.write_text(
        "device_id: cam-gw\n"
        f"security: {{central_public_key: {public}}}\n"
        "sources:\n"
        "  - {name: cam1, type: camera, url: rtsp://10.0.0.5/stream,\n"
        "     rois: [{name: belt, x: 0, y: 0, width: 64, height: 64}]}\n"
        "pipelines:\n"
        "  - {name: surface, type: vision, source: cam1, model: surface-defects,\n"
        "     defects: {classes: [scratch, pit]}}\n")
    assert main(["check-config", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "camera:    cam1 rtsp://10.0.0.5/stream (regions: belt)" in out
    assert "surface: camera cam1 -> model surface-defects, defects: scratch, pit" in out
    config.write_text(config.read_text().replace(
        "sources:\n", "sources:\n  - {name: line, endpoint: 'opc.tcp://10.0.0.6:4840', "
        "nodes: {t: 'ns=2;s=t'}}\n").replace("source: cam1", "source: line"))
    assert main(["check-config", "-c", str(config)]) == 2
    assert "vision pipeline 'surface' needs a camera source; 'line' is a opcua source" in (
        capsys.readouterr().err)
