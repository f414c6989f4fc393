"""The edge-agent command line on real files."""

from __future__ import annotations

from pathlib import Path

from edge_agent.cli import main
from tests.helpers import REPO, SAMPLE_MODEL, manifest_for


def test_check_config_summarises_a_good_file(capsys) -> None:
    assert main(["check-config", "-c", str(REPO / "deploy" / "edge-agent.example.yaml")]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "line1-gw1" in out and "extruder-scrap" in out


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
    path.write_text("device_id: gw1\ndata_dir: state\n")
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
