"""The README's install steps, staged with --root: deploy/install-central.sh on a "plant
server", Mosquitto from the configuration it installed, `central-sync device add`, then
deploy/install-agent.sh on a "gateway" with the bundle, and the agent online over TLS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from central_sync.db import CentralDB
from tests.conftest import _mosquitto_binary, wait_for_port
from tests.helpers import REPO, wait_until

pytestmark = pytest.mark.slow
VENV = Path(sys.executable).parent.parent


def run(*command: str | Path, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True,
                          timeout=180, **kwargs)  # type: ignore[call-overload]


def install_central(root: Path) -> subprocess.CompletedProcess:
    return run("bash", REPO / "deploy" / "install-central.sh", "--broker-host", "localhost",
               "--broker-host", "127.0.0.1", "--root", root, "--venv", VENV, "--no-start")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_plant_server_and_gateway_installed_as_the_readme_says(
        tmp_path: Path, processes: list[subprocess.Popen]) -> None:
    server = tmp_path / "server"
    installed = install_central(server)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    config = server / "etc" / "central-sync" / "central-sync.yaml"
    accounts = server / "etc" / "mosquitto" / "edge-mlops"
    for path in (config, accounts / "passwd", accounts / "acl", accounts / "tls" / "ca.crt",
                 server / "var" / "lib" / "central-sync" / "keys" / "signing.key",
                 server / "var" / "lib" / "central-sync" / "keys" / "mqtt-password",
                 server / "etc" / "systemd" / "system" / "central-sync.service",
                 server / "etc" / "systemd" / "system" / "mosquitto-accounts.path"):
        assert path.is_file(), f"{path} was not installed"
    assert (server / "var" / "lib" / "central-sync" / "keys" / "mqtt-password"
            ).stat().st_mode & 0o077 == 0
    assert "user central\n" in (accounts / "acl").read_text()
    key_before = (server / "var" / "lib" / "central-sync" / "keys" / "signing.key").read_bytes()
    config.write_text(config.read_text() + "# the plant's own change\n")

    again = install_central(server)  # idempotent: keys, passwords and the config stay
    assert again.returncode == 0, again.stdout + again.stderr
    assert (server / "var" / "lib" / "central-sync" / "keys" / "signing.key"
            ).read_bytes() == key_before
    assert config.read_text().endswith("# the plant's own change\n")

    # Mosquitto as Debian runs it: its main file sets pid and log, and includes conf.d.
    plain, tls = _free_ports(2)
    shipped = (server / "etc" / "mosquitto" / "conf.d" / "edge-mlops.conf").read_text()
    conf = server / "mosquitto.conf"
    conf.write_text(
        f"pid_file {server}/mosquitto.pid\nlog_dest file {server}/mosquitto.log\n"
        f"{'user root' if os.geteuid() == 0 else ''}\n"
        + shipped.replace("listener 1883 127.0.0.1", f"listener {plain} 127.0.0.1")
                 .replace("listener 8883\n", f"listener {tls}\n"))
    processes.append(subprocess.Popen([_mosquitto_binary(), "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for_port(tls)
    text = config.read_text().replace("port: 1883", f"port: {plain}")
    config.write_text(text.replace("gateway_broker_port: 8883", f"gateway_broker_port: {tls}")
                      .replace("port: 8000", "port: 0"))

    central = VENV / "bin" / "central-sync"
    log = (tmp_path / "central.log").open("ab")
    processes.append(subprocess.Popen([central, "serve", "-c", config], stdout=log,
                                      stderr=log))
    added = run(central, "device", "add", "line3-gw1", "--labels", "line-3", "-c", config)
    assert added.returncode == 0, added.stdout + added.stderr
    # What mosquitto-accounts.path does under systemd.
    os.kill(int((server / "mosquitto.pid").read_text()), signal.SIGHUP)

    gateway = tmp_path / "gateway"
    bundle = server / "var" / "lib" / "central-sync" / "bundles" / "line3-gw1.tar.gz"
    agent_installed = run("bash", REPO / "deploy" / "install-agent.sh", bundle, "--root",
                          gateway, "--venv", VENV, "--no-start")
    assert agent_installed.returncode == 0, agent_installed.stdout + agent_installed.stderr
    agent_config = gateway / "etc" / "edge-agent" / "edge-agent.yaml"
    agent_config.write_text(agent_config.read_text() + "status_interval_s: 1\nui: {port: 0}\n")
    agent_log = (tmp_path / "agent.log").open("ab")
    processes.append(subprocess.Popen([VENV / "bin" / "edge-agent", "run", "-c", agent_config],
                                      stdout=agent_log, stderr=agent_log))
    db = CentralDB(server / "var" / "lib" / "central-sync" / "central.db")
    wait_until(lambda: any(d.device_id == "line3-gw1" and d.state == "online"
                           for d in db.list_devices()), 40,
               what="the installed agent online in the installed central: "
               + (tmp_path / "agent.log").read_text()[-2000:])
    listed = run(central, "device", "list", "-c", config)
    assert "line3-gw1" in listed.stdout and "online" in listed.stdout


def _free_ports(count: int) -> list[int]:
    from tests.conftest import free_port

    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def test_a_mosquitto_conf_that_would_clash_is_refused_before_anything_changes(
        tmp_path: Path) -> None:
    main = tmp_path / "etc" / "mosquitto" / "mosquitto.conf"
    main.parent.mkdir(parents=True)
    main.write_text("pid_file /run/mosquitto/mosquitto.pid\n")
    refused = install_central(tmp_path)
    assert refused.returncode == 1 and "include_dir /etc/mosquitto/conf.d" in refused.stderr
    main.write_text("include_dir /etc/mosquitto/conf.d\nlistener 1883\nallow_anonymous true\n")
    refused = install_central(tmp_path)
    assert refused.returncode == 1
    assert "2:listener 1883;3:allow_anonymous true; remove those lines" in refused.stderr
    assert not (tmp_path / "etc" / "mosquitto" / "conf.d").exists()
    assert not (tmp_path / "etc" / "central-sync").exists()
