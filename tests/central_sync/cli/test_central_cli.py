"""The central-sync command line, run in-process through main() and as a real process."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from central_helpers import free_port, make_onnx_model, write_config
from paho.mqtt.enums import CallbackAPIVersion

from central_sync.cli import build_parser, main
from edge_agent.kernel.contract import DeployCommand, DeploymentEvent, Topics, decode, encode
from tests.helpers import TEST_SIGNER, wait_until

REPO = Path(__file__).resolve().parents[3]
TOPICS = Topics()
SUBCOMMANDS = [[], ["serve"], ["model"], ["model", "publish"], ["model", "list"], ["deploy"],
               ["devices"], ["contract"]]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help_with_examples(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage: central-sync" in out
    assert "examples:" in out


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_option_and_command_is_documented() -> None:
    for parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                undocumented = [c.dest for c in action._choices_actions if not c.help]
                assert not undocumented, f"{parser.prog}: commands without help {undocumented}"
            else:
                assert action.help, f"{parser.prog}: {action.option_strings or action.dest}"


def test_bad_config_exits_2_naming_file_and_field(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "central.yaml"
    bad.write_text("broker:\n  port: 99999\nweb:\n  colour: blue\n")
    assert main(["model", "list", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: broker.port" in err
    assert f"{bad}:4: web.colour: unknown field" in err
    assert "Traceback" not in err


def test_missing_config_exits_2_saying_where_to_start(tmp_path: Path, capsys,
                                                      monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CENTRAL_SYNC_CONFIG", raising=False)
    assert main(["devices"]) == 2
    assert "central-sync.yaml: file not found; start from" in capsys.readouterr().err


def test_config_path_comes_from_the_environment(config_file: Path, capsys,
                                                monkeypatch) -> None:
    monkeypatch.setenv("CENTRAL_SYNC_CONFIG", str(config_file))
    assert main(["devices"]) == 0
    assert "No device has reported yet" in capsys.readouterr().out


def test_model_publish_then_list_end_to_end(config_file: Path, tmp_path: Path,
                                            capsys) -> None:
    model = make_onnx_model(tmp_path / "scrap.onnx", n_features=6)
    publish = ["model", "publish", str(model), "--name", "scrap-model", "--version", "1.0.0",
               "-c", str(config_file), "--by", "alice"]
    assert main(publish) == 0
    out = capsys.readouterr().out
    assert "published scrap-model 1.0.0 (process)" in out
    assert "input features: float32 [None, 6]" in out
    assert len(list((tmp_path / "var" / "artifacts").glob("*.onnx"))) == 1

    assert main(publish) == 0
    assert "already published, unchanged" in capsys.readouterr().out

    make_onnx_model(model, n_features=6, weight=3.0)
    assert main(publish) == 2
    assert "versions are immutable, publish 1.0.1" in capsys.readouterr().err

    assert main(["model", "list", "-c", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "scrap-model" in out and "1.0.0" in out and "alice" in out

    assert main([*publish[:6], "1.0.1", "-c", str(config_file), "--author", "bob",
                 "--code-revision", "a1b2c3", "--notes", "retrained on March data"]) == 0
    capsys.readouterr()
    assert main(["model", "show", "scrap-model@1.0.1", "-c", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert f"key {TEST_SIGNER.key_id}" in out
    assert "lineage.author" in out and "bob" in out and "a1b2c3" in out
    assert main(["model", "diff", "scrap-model@1.0.0", "1.0.1", "-c", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "metadata.lineage.notes" in out and "retrained on March data" in out
    assert "sha256" in out
    assert main(["model", "show", "scrap-model@9.9.9", "-c", str(config_file)]) == 2
    assert "not in the registry" in capsys.readouterr().err


def test_keys_init_writes_a_private_key_only_its_owner_reads_and_never_overwrites(
        tmp_path: Path, capsys) -> None:
    config = tmp_path / "central.yaml"
    config.write_text("signing_key_path: keys/central.key\n")
    assert main(["keys", "init", "-c", str(config)]) == 0
    private, public = tmp_path / "keys" / "central.key", tmp_path / "keys" / "central.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    assert "BEGIN PUBLIC KEY" in public.read_text()
    capsys.readouterr()
    assert main(["keys", "init", "-c", str(config)]) == 2
    assert "already exists and agents trust it" in capsys.readouterr().err
    assert main(["keys", "show", "-c", str(config)]) == 0
    old_public = public.read_text()
    assert capsys.readouterr().out == old_public
    assert main(["keys", "init", "--force", "-c", str(config)]) == 0  # rotation
    assert public.read_text() != old_public


def test_model_publish_with_metadata_file_only(config_file: Path, tmp_path: Path,
                                               capsys) -> None:
    model = make_onnx_model(tmp_path / "m.onnx")
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps({"name": "line-model", "version": "0.3.0", "kind": "process"}))
    assert main(["model", "publish", str(model), "--metadata", str(meta),
                 "-c", str(config_file)]) == 0
    assert "published line-model 0.3.0" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["model", "publish", "absent.onnx", "--name", "m", "--version", "1.0.0"], "not found"),
    (["model", "publish", "{notes}", "--name", "m", "--version", "1.0.0"],
     "is not a model ONNX Runtime can load"),
    (["model", "publish", "{model}", "--version", "1.0.0"], "pass --name"),
    (["deploy", "scrap-model-1.0.0", "--device", "gw-1"], "is not NAME@VERSION"),
    (["deploy", "scrap-model@1.0.0", "--device", "gw-1"], "is not in the registry"),
    (["deploy", "scrap-model@1.0.0", "--device", "gw 1"], "device id 'gw 1' is not valid"),
    (["contract", "--prefix", "a/#"], "must be non-empty, without + #"),
])
def test_bad_user_input_exits_2_with_what_to_do(
    args: list[str], message: str, config_file: Path, tmp_path: Path, capsys
) -> None:
    notes = tmp_path / "notes.onnx"
    notes.write_text("not a model")
    model = make_onnx_model(tmp_path / "model.onnx")
    args = [a.format(notes=notes, model=model) for a in args]
    if args[0] != "contract":
        args += ["-c", str(config_file)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_contract_prints_topic_table_and_markdown_schemas(capsys) -> None:
    assert main(["contract", "--prefix", "plant7"]) == 0
    out = capsys.readouterr().out
    assert "`plant7/devices/{device_id}/uplink`" in out
    assert "JSON Schema" not in out
    assert main(["contract", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "## JSON Schema" in out and "`edge-mlops/devices/{device_id}/status`" in out


def test_devices_lists_what_central_stored(config_file: Path, capsys, monkeypatch) -> None:
    from central_helpers import make_batch

    from central_sync.config import load_central_config
    from central_sync.db import CentralDB
    from edge_agent.kernel.contract import DeviceStatus

    db = CentralDB(load_central_config(config_file).database_url)
    db.update_status(DeviceStatus(device_id="gw-1", state="online", labels=["line-3"], buffer={
        "depth": 42, "bytes_used": 1, "quota_bytes": 2, "oldest_age_s": 75.0},
        uplink={"connected": True, "records_per_s": 12.5, "round_trip_ms": 31.0}))
    db.store_batch(make_batch("gw-1", range(1, 6)))
    db.close()
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["devices", "-c", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "gw-1" in out and "online" in out and "42" in out and " 5 " in out
    assert "75 s" in out and "12.5/s, rtt 31 ms" in out and "line-3" in out


def test_deploy_with_unreachable_broker_exits_1(config_file: Path, tmp_path: Path,
                                                capsys) -> None:
    config = write_config(tmp_path, broker_port=free_port())
    model = make_onnx_model(tmp_path / "m.onnx")
    assert main(["model", "publish", str(model), "--name", "m", "--version", "1.0.0",
                 "-c", str(config)]) == 0
    code = main(["deploy", "m@1.0.0", "--device", "gw-1", "--connect-timeout", "0.5",
                 "-c", str(config)])
    assert code == 1
    assert "cannot reach the MQTT broker" in capsys.readouterr().out


class PahoDevice:
    """A raw paho client answering deploy commands with the given steps."""

    def __init__(self, port: int, steps: list[str]) -> None:
        self.steps = steps
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="gw-1")
        self.client.on_connect = lambda c, *_: c.subscribe(TOPICS.commands("gw-1"), qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, client, userdata, message) -> None:
        command = decode(message.payload, expect=(DeployCommand,), topic_device_id="gw-1")
        assert isinstance(command, DeployCommand)
        for step in self.steps:
            event = DeploymentEvent(device_id="gw-1", command_id=command.command_id,
                                    model_name=command.manifest.name,
                                    version=command.manifest.version, step=step,
                                    detail="golden output off by 3.2" if step == "failed" else "")
            client.publish(TOPICS.deployment("gw-1"), encode(event), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.parametrize("steps, code, shown", [
    (["received", "downloading", "verifying", "installed", "activated"], 0, "is active on gw-1"),
    (["received", "failed"], 1, "deployment failed on gw-1: golden output off by 3.2"),
])
def test_deploy_wait_follows_steps_over_mosquitto(
    mosquitto, tmp_path: Path, capsys, steps: list[str], code: int, shown: str
) -> None:
    config = write_config(tmp_path, broker_port=mosquitto.port)
    model = make_onnx_model(tmp_path / "m.onnx")
    assert main(["model", "publish", str(model), "--name", "scrap-model", "--version", "1.0.0",
                 "-c", str(config)]) == 0
    device = PahoDevice(mosquitto.port, steps)
    try:
        assert main(["deploy", "scrap-model@1.0.0", "--device", "gw-1", "--wait", "10",
                     "-c", str(config)]) == code
    finally:
        device.close()
    out = capsys.readouterr().out
    for step in steps:
        assert step in out
    assert shown in " ".join(out.split())


def test_serve_runs_until_sigterm_then_exits_0(mosquitto, tmp_path: Path) -> None:
    web_port = free_port()
    config = write_config(tmp_path, broker_port=mosquitto.port, web_port=web_port)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "central_sync.cli", "serve", "-c", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    def healthy() -> bool:
        assert process.poll() is None, process.communicate()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/healthz",
                                        timeout=1) as response:
                return json.loads(response.read())["status"] == "ok"
        except OSError:
            return False

    try:
        wait_until(healthy, 20, what="central's /healthz saying ok")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "database=" in err and f"web=http://127.0.0.1:{web_port}/" in err
    assert "central stopped" in err


def test_serve_with_web_port_taken_exits_1_saying_so(mosquitto, tmp_path: Path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, broker_port=mosquitto.port, web_port=port)
        assert main(["serve", "-c", str(config)]) == 1
    assert f"web server cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
