"""Configurations from central under faults, with real processes and "nothing lost, nothing
doubled": a genuine push, a replayed and a forged command, a configuration the gateway refuses,
one that starts unhealthy, the agent killed in the middle of a switch, and the broker down
during a configuration rollout.

Each plant runs Mosquitto, the OPC-UA line simulator, `central-sync serve` and one `edge-agent
run` (tests/faults/harness.py); configurations go out with the real CLI.
"""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.kernel.contract import (
    ConfigDeployCommand,
    ConfigDocument,
    Topics,
    config_body_sha256,
    encode,
)
from edge_agent.kernel.signing import Signer
from tests.faults.harness import AGENT, DEVICE, MODEL, TAGS, Plant
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

NAME = "line1"


def _body(plant: Plant, interval_s: float = 0.05, source: dict | None = None) -> dict:
    nodes = {tag: f"ns=2;s=line1.{tag}" for tag in TAGS}
    line = {"name": "line1", "endpoint": plant.simulator.endpoint, "sampling_interval_ms": 100,
            "reconnect_max_backoff_s": 1, "nodes": nodes}
    return {"sources": [source or line],
            "pipelines": [{"name": "scrap", "source": (source or line)["name"], "model": MODEL,
                           "interval_s": interval_s}]}


def _push(plant: Plant, body: dict, probation_s: float = 2, wait: bool = True) -> str:
    file = plant.workdir / f"config-{time.monotonic_ns()}.yaml"
    file.write_text(json.dumps(body))  # JSON is YAML
    args = ["config", "push", str(file), "--name", NAME, "--device", DEVICE, "--canary", "0",
            "--probation-s", f"{probation_s:g}"]
    done = plant.central_cli(*args, *(["--wait", "--timeout", "60"] if wait else []))
    return done.stdout + done.stderr


def _last_config_deployment(plant: Plant) -> tuple[str, str, str]:
    rows = plant._central_query(
        "SELECT version, state, detail FROM deployments WHERE kind = 'config' AND device_id = ? "
        "ORDER BY updated_at DESC LIMIT 1", (DEVICE,))
    return rows[0] if rows else ("", "", "")


def _wait_state(plant: Plant, version: int, states: set[str], timeout_s: float = 40) -> str:
    wait_until(lambda: _last_config_deployment(plant)[:2] in {(str(version), s) for s in states},
               timeout_s, what=lambda: f"config {NAME}@{version} {states} in central: "
               f"{_last_config_deployment(plant)}\n{plant.log(AGENT)}")
    return _last_config_deployment(plant)[2]


def _running_version(plant: Plant) -> int | None:
    """The configuration version the agent keeps as its last good one (None: its file)."""
    current = plant.workdir / "agent" / "config" / "current.json"
    return json.loads(current.read_text())["version"] if current.exists() else None


class CommandTap:
    """A plain MQTT client recording what central sends on the device's commands topic, and
    publishing there as anyone on an anonymous broker could."""

    def __init__(self, port: int) -> None:
        self.topic = Topics().commands(DEVICE)
        self.seen: list[bytes] = []
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="tap")
        self.client.on_message = lambda _c, _u, message: self.seen.append(message.payload)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(self.topic, qos=1)
        assert self._subscribed.wait(10)

    def config_commands(self) -> list[bytes]:
        return [p for p in self.seen if b'"kind":"config_deploy"' in p]

    def publish(self, payload: bytes) -> None:
        self.client.publish(self.topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _refusals(plant: Plant) -> int:
    return plant.log(AGENT, 10**8).count("config command refused")


def test_pushes_replays_forgeries_refusals_and_reverts_lose_nothing(plant: Plant) -> None:
    tap = CommandTap(plant.broker.port)
    try:
        # A genuine push: a changed pipeline, confirmed after its probation.
        out = _push(plant, _body(plant, interval_s=0.04))
        assert _wait_state(plant, 1, {"succeeded", "confirmed"}) is not None, out
        assert _running_version(plant) == 1
        wait_until(lambda: tap.config_commands(), 10, what="the command seen on the broker")
        genuine = tap.config_commands()[0]
        before = plant.produced()
        plant.wait_produced(20)
        assert plant.produced() > before

        # Replayed as it was, and forged with another key: both refused, nothing changes.
        tap.publish(genuine)
        wait_until(lambda: _refusals(plant) >= 1, 10, what="the replay refused")
        assert "replayed" in plant.log(AGENT, 10**8)
        body = _body(plant, interval_s=0.5)
        forged = Signer.generate().signed(ConfigDeployCommand(
            device_id=DEVICE, document=Signer.generate().signed(ConfigDocument(
                name=NAME, version=9, body=body, sha256=config_body_sha256(body)))))
        tap.publish(encode(forged))
        wait_until(lambda: _refusals(plant) >= 2, 10, what="the forgery refused")
        assert _running_version(plant) == 1

        # Valid for central, refused by the gateway: its certificate files are not there.
        secured = {**_body(plant)["sources"][0], "security_policy": "Basic256Sha256",
                   "certificate": "/nonexistent/agent.pem",
                   "private_key": "/nonexistent/agent-key.pem"}
        _push(plant, _body(plant, source=secured), wait=False)
        detail = _wait_state(plant, 2, {"failed"})
        assert "does not exist" in detail, detail
        assert _running_version(plant) == 1

        # Starts, but its source never connects: reverted by the gateway itself.
        dead = {**_body(plant)["sources"][0], "endpoint": "opc.tcp://127.0.0.1:9/nobody"}
        _push(plant, _body(plant, source=dead), probation_s=3, wait=False)
        detail = _wait_state(plant, 3, {"rolled_back"})
        assert "line1" in detail, detail
        assert _running_version(plant) == 1
        plant.wait_produced(20)  # predicting again on version 1
    finally:
        tap.close()
    delivery = plant.finish()
    print(f"config pushes, replay, forgery, refusal, revert: {delivery}")


def test_kill_mid_switch_and_broker_down_during_rollout_lose_nothing(plant: Plant) -> None:
    _push(plant, _body(plant, interval_s=0.04))
    _wait_state(plant, 1, {"succeeded", "confirmed"})

    # Killed while version 2 is on probation: it boots into version 1 and says why.
    _push(plant, _body(plant, interval_s=0.06), probation_s=60, wait=False)
    _wait_state(plant, 2, {"activated"})
    pending = plant.workdir / "agent" / "config" / "pending.json"
    assert pending.exists()
    plant.kill(AGENT)
    plant.start_agent()
    detail = _wait_state(plant, 2, {"rolled_back"})
    assert "restart" in detail, detail
    assert _running_version(plant) == 1 and not pending.exists()
    plant.wait_produced(20)

    # The broker goes down just after a push: the rollout completes once it is back.
    _push(plant, _body(plant, interval_s=0.045), wait=False)
    plant.broker.stop()
    time.sleep(3)
    plant.broker.start()
    _wait_state(plant, 3, {"succeeded", "confirmed"}, timeout_s=60)
    wait_until(lambda: plant._central_query(
        "SELECT state FROM rollouts WHERE kind = 'config' ORDER BY created_at DESC LIMIT 1")
        == [("completed",)], 30, what="the configuration rollout completed")
    assert _running_version(plant) == 3
    plant.wait_produced(20)
    delivery = plant.finish()
    print(f"config kill mid-switch, broker down: {delivery}")
