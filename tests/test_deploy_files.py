"""The deployment files agree with each other and with the code: the Dockerfile, compose.yaml
and central's container config, the systemd units, the install scripts and the shipped
Mosquitto configuration (same ports, same paths, the hardening the units promise)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from central_sync.config import load_central_config
from tests.conftest import free_port, wait_for_port
from tests.helpers import REPO, wait_until

DEPLOY = REPO / "deploy"
UNITS = DEPLOY / "systemd"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "edge-mlops.conf"
MOSQUITTO_CONF_TARGET = "/etc/mosquitto/conf.d/edge-mlops.conf"
MOSQUITTO_MAIN_TARGET = "/etc/mosquitto/mosquitto.conf"
CENTRAL_CONFIG_TARGET = "/etc/central-sync/central-sync.yaml"


# --- small parsers ---------------------------------------------------------------------------


def dockerfile_stages(path: Path) -> list[dict]:
    """Each stage: its FROM line's image (global ARGs substituted) and name, and its
    instructions (continuations joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[dict] = []
    global_args: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif instruction == "FROM":
            words = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], args).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"image": words[0], "name": name, "instructions": []})
        else:
            stages[-1]["instructions"].append((instruction, args))
    return stages


def instructions(stage: dict, name: str) -> list[str]:
    return [args for instruction, args in stage["instructions"] if instruction == name]


def unit(name: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file: section -> (key, value) in order, repeated keys kept."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{name}: {line!r} outside a section"
        current.append((key.strip(), value.strip()))
    return sections


def values(sections: dict, section: str, key: str) -> list[str]:
    return [v for k, v in sections.get(section, []) if k == key]


def value(sections: dict, section: str, key: str) -> str | None:
    found = values(sections, section, key)
    return found[-1] if found else None


def mosquitto_conf() -> dict:
    """Global settings and each listener's (port, bind address, settings) from the shipped file."""
    assert MOSQUITTO_CONF.is_file(), f"{MOSQUITTO_CONF} is missing: the broker config ships there"
    settings: dict[str, str] = {}
    listeners: list[dict] = []
    for raw in MOSQUITTO_CONF.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, rest = line.partition(" ")
        if key == "listener":
            words = rest.split()
            listeners.append({"port": int(words[0]),
                              "address": words[1] if len(words) > 1 else None, "settings": {}})
        elif listeners and key not in ("password_file", "acl_file", "per_listener_settings",
                                       "allow_anonymous"):
            listeners[-1]["settings"][key] = rest.strip()
        else:
            settings[key] = rest.strip()
    return {"settings": settings, "listeners": {item["port"]: item for item in listeners}}


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def docker_central_config() -> dict:
    return yaml.safe_load((DEPLOY / "docker" / "central-sync.yaml").read_text())


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only) of a compose service's short-syntax volumes."""
    found = {}
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        found[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
    return found


def published(service: dict) -> list[tuple[str | None, int, int]]:
    """(host address, host port, container port) of a compose service's ports."""
    found = []
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        address = parts[0] if len(parts) == 3 else None
        found.append((address, int(parts[-2]), int(parts[-1])))
    return found


def under(path: str, folder: str) -> bool:
    return PurePosixPath(path).is_relative_to(folder)


# --- Docker ----------------------------------------------------------------------------------


def test_dockerfile_builds_in_a_builder_stage_and_runs_unprivileged() -> None:
    stages = dockerfile_stages(DEPLOY / "Dockerfile")
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    builder, runtime = stages[0], stages[-1]
    assert builder["name"] == "builder"
    assert runtime["image"].startswith("python:3.11-slim@sha256:")
    assert builder["image"] == runtime["image"]
    assert any("--from=builder" in args for args in instructions(runtime, "COPY"))
    assert any("central.lock" in args for args in instructions(builder, "RUN")), \
        "the builder installs central's lock (with the postgres extra)"
    users = instructions(runtime, "USER")
    assert users and users[-1] not in ("root", "0"), "the runtime stage must not run as root"
    made = " ".join(instructions(runtime, "RUN"))
    assert re.search(rf"useradd .*--uid 10001 .*\b{users[-1]}\b", made), \
        f"user {users[-1]} is created with uid 10001"
    assert instructions(runtime, "EXPOSE") == ["8000"]
    (healthcheck,) = instructions(runtime, "HEALTHCHECK")
    assert "http://127.0.0.1:8000/healthz" in healthcheck
    (entrypoint,) = instructions(runtime, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["central-sync"]  # `run --rm central keys init` works
    (command,) = instructions(runtime, "CMD")
    assert json.loads(command) == ["serve", "-c", CENTRAL_CONFIG_TARGET]


def test_dockerfile_copies_every_package_and_what_the_build_needs() -> None:
    builder = dockerfile_stages(DEPLOY / "Dockerfile")[0]
    copied = {name for args in instructions(builder, "COPY") for name in args.split()[:-1]}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "pyproject.toml" in copied and project["project"]["readme"] in copied
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert package in copied, f"the builder does not copy package {package}"
        assert (REPO / package / "__init__.py").is_file()


def test_central_web_answers_healthz_as_the_healthcheck_expects(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from central_sync.db import CentralDB
    from central_sync.web import create_app

    db = CentralDB(tmp_path / "central.db")
    response = TestClient(create_app(db, 120.0, health=lambda: {"status": "ok"})).get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_compose_central_runs_the_dockerfile_image_with_its_config() -> None:
    services = compose()["services"]
    central = services["central"]
    build = central["build"]
    assert (DEPLOY / build["context"]).resolve() == REPO
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert central["image"]
    source, read_only = mounts(central)[CENTRAL_CONFIG_TARGET]
    assert (DEPLOY / source).resolve() == DEPLOY / "docker" / "central-sync.yaml" and read_only
    assert central["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_publishes_8883_and_central_web_on_loopback_only() -> None:
    services = compose()["services"]
    ports = {name: published(service) for name, service in services.items()}
    assert (None, 8883, 8883) in ports["mosquitto"]
    everything = [port for found in ports.values() for port in found]
    assert not any(container == 1883 or host == 1883 for _, host, container in everything), \
        "plain MQTT (1883) must not leave the mosquitto container"
    web = docker_central_config()["web"]
    assert ports["central"] == [("127.0.0.1", 8000, web["port"])]
    assert ports["postgres"] == []


def test_compose_mosquitto_runs_the_shipped_config_and_rereads_accounts_on_change() -> None:
    mosquitto = compose()["services"]["mosquitto"]
    assert mosquitto["image"].startswith("eclipse-mosquitto:2@sha256:")
    source, read_only = mounts(mosquitto)[MOSQUITTO_CONF_TARGET]
    assert (DEPLOY / source).resolve() == MOSQUITTO_CONF and read_only
    script = mosquitto["command"][-1]
    main_source, main_read_only = mounts(mosquitto)[MOSQUITTO_MAIN_TARGET]
    assert main_read_only and f"mosquitto -c {MOSQUITTO_MAIN_TARGET}" in script
    main = (DEPLOY / main_source).read_text()
    assert f"include_dir {PurePosixPath(MOSQUITTO_CONF_TARGET).parent}" in main
    location = re.search(r"^persistence_location (\S+)", main, re.MULTILINE)
    assert "persistence true" in main and location
    assert mounts(mosquitto)[location.group(1).rstrip("/")][0] in compose()["volumes"]
    assert "kill -HUP" in script and "sleep 2" in script
    settings = mosquitto_conf()["settings"]
    accounts = "/etc/mosquitto/edge-mlops"
    assert settings["password_file"] == f"{accounts}/passwd"
    assert settings["acl_file"] == f"{accounts}/acl"
    assert "accounts=/etc/mosquitto/edge-mlops" in script
    assert "$$accounts/passwd" in script and "$$accounts/acl" in script


def test_compose_shares_the_accounts_folder_where_the_broker_and_central_expect_it() -> None:
    document = compose()
    services = document["services"]
    settings = mosquitto_conf()["settings"]
    provisioning = docker_central_config()["provisioning"]
    for key in ("password_file", "acl_file"):
        assert provisioning[key] == settings[key]
    folder = str(PurePosixPath(settings["password_file"]).parent)
    assert str(PurePosixPath(settings["acl_file"]).parent) == folder
    volume, _ = mounts(services["mosquitto"])[folder]
    assert mounts(services["central"])[folder] == (volume, False), "central writes the accounts"
    assert volume in document["volumes"], "a named volume both containers share"


def test_compose_mounts_each_tls_file_the_broker_and_central_name() -> None:
    services = compose()["services"]
    tls = mosquitto_conf()["listeners"][8883]["settings"]
    broker_mounts = mounts(services["mosquitto"])
    for key in ("certfile", "keyfile", "cafile"):
        source, read_only = broker_mounts[tls[key]]
        assert read_only and PurePosixPath(source).name == PurePosixPath(tls[key]).name
    central = docker_central_config()
    assert central["broker"]["ca_file"] == central["provisioning"]["ca_file"] == tls["cafile"]
    assert tls["cafile"] in mounts(services["central"])


def test_compose_postgres_matches_central_database_url_without_a_password_in_the_file() -> None:
    services = compose()["services"]
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16@sha256:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    data, _ = mounts(postgres)["/var/lib/postgresql/data"]
    assert data in compose()["volumes"]
    url = docker_central_config()["database_url"]
    match = re.fullmatch(r"postgresql://(\w+):\$\{CENTRAL_DB_PASSWORD\}@(\w+):5432/(\w+)", url)
    assert match, url
    user, host, database = match.groups()
    assert host == "postgres" and host in services
    assert postgres["environment"]["POSTGRES_USER"] == user
    assert postgres["environment"]["POSTGRES_DB"] == database
    assert "POSTGRES_PASSWORD" not in postgres["environment"]
    assert services["central"]["env_file"] == postgres["env_file"], \
        "one env file holds the password for both"
    assert "PASSWORD=" not in (DEPLOY / "compose.yaml").read_text()


def test_central_docker_config_talks_tls_to_the_broker_and_keeps_state_in_its_volume() -> None:
    central = docker_central_config()
    broker = central["broker"]
    assert broker["host"] == "mosquitto" and broker["host"] in compose()["services"]
    assert broker["port"] == 8883 and broker["tls"] is True
    assert broker["port"] in mosquitto_conf()["listeners"]
    assert mosquitto_conf()["listeners"][broker["port"]]["address"] is None  # all interfaces
    state = next(target for target, (source, _) in mounts(compose()["services"]["central"]).items()
                 if source == "central-state")
    for path in (broker["password_file"], central["signing_key_path"], central["artifact_dir"],
                 central["provisioning"]["bundle_dir"]):
        assert under(path, state), f"{path} is not in the central-state volume ({state})"
    assert central["web"] == {"host": "0.0.0.0", "port": 8000}
    assert central["provisioning"]["gateway_broker_port"] == 8883


def test_central_docker_config_loads_with_central_own_loader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The container's absolute paths, moved into a temp folder: the loader checks files exist.
    accounts, state = tmp_path / "accounts", tmp_path / "state"
    (accounts / "tls").mkdir(parents=True)
    (accounts / "tls" / "ca.crt").write_text("a CA certificate\n")
    text = (DEPLOY / "docker" / "central-sync.yaml").read_text()
    text = text.replace("/etc/mosquitto/edge-mlops", str(accounts))
    text = text.replace("/var/lib/central-sync", str(state))
    config_file = tmp_path / "central-sync.yaml"
    config_file.write_text(text)
    monkeypatch.setenv("CENTRAL_DB_PASSWORD", "s3cret")
    monkeypatch.setenv("GATEWAY_BROKER_HOST", "mqtt.line3.example")
    config = load_central_config(config_file)
    assert config.database_url == "postgresql://central:s3cret@postgres:5432/central"
    assert (config.broker.port, config.broker.tls) == (8883, True)
    assert config.broker.password_file == state / "keys" / "mqtt-password"
    assert config.provisioning.password_file == accounts / "passwd"
    assert config.provisioning.reload_command is None
    assert config.provisioning.gateway_broker_host == "mqtt.line3.example"


# --- Mosquitto -------------------------------------------------------------------------------


def test_mosquitto_conf_has_loopback_plain_and_public_tls_listeners() -> None:
    conf = mosquitto_conf()
    listeners = conf["listeners"]
    assert listeners[1883]["address"] == "127.0.0.1"
    assert listeners[8883]["address"] is None
    for key in ("certfile", "keyfile", "cafile"):
        assert under(listeners[8883]["settings"][key], "/etc/mosquitto/edge-mlops/tls")
    assert conf["settings"]["allow_anonymous"] == "false"


def test_compose_mosquitto_watcher_sends_sighup_when_central_replaces_the_accounts(
        tmp_path: Path) -> None:
    """The compose command's shell loop, run here against this machine's Mosquitto."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd is not installed: bash deploy/setup.sh --test")
    from tests.conftest import _mosquitto_binary

    accounts = tmp_path / "accounts"
    accounts.mkdir()
    port = free_port()
    conf = tmp_path / "edge-mlops.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                    f"password_file {accounts}/passwd\nacl_file {accounts}/acl\n"
                    f"log_dest file {tmp_path}/mosquitto.log\nlog_type all\n"
                    f"{'user root' if os.geteuid() == 0 else ''}\n")
    script = compose()["services"]["mosquitto"]["command"][-1].replace("$$", "$")
    script = script.replace(MOSQUITTO_MAIN_TARGET, str(conf))
    script = script.replace("/etc/mosquitto/edge-mlops", str(accounts))
    script = script.replace("mosquitto -c", f"{_mosquitto_binary()} -c")

    def replace(name: str, text: str) -> None:  # as central does: a new file renamed into place
        (accounts / f".{name}.tmp").write_text(text)
        os.replace(accounts / f".{name}.tmp", accounts / name)

    def password_line(user: str, password: str) -> str:
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(tmp_path / "pw"), user, password],
                       check=True)
        return (tmp_path / "pw").read_text()

    def can_log_in(user: str, password: str) -> bool:
        done = subprocess.run(
            ["mosquitto_sub", "-p", str(port), "-u", user, "-P", password, "-t", "x", "-C", "1",
             "-W", "1"], capture_output=True, text=True)
        return "not authorised" not in (done.stderr + done.stdout).lower() and \
            "refused" not in (done.stderr + done.stdout).lower()

    shell = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        replace("passwd", password_line("central", "first"))
        replace("acl", "user central\ntopic readwrite #\n")
        wait_for_port(port, timeout_s=15)  # started once both files exist
        assert can_log_in("central", "first")
        assert not can_log_in("line3-gw1", "gw-password")
        replace("passwd", password_line("central", "first")
                + password_line("line3-gw1", "gw-password"))
        wait_until(lambda: can_log_in("line3-gw1", "gw-password"), 15,
                   what="Mosquitto to reread passwd after the watcher's SIGHUP")
        shell.send_signal(signal.SIGTERM)
        assert shell.wait(timeout=10) == 0
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
    output = shell.stdout.read() if shell.stdout else ""
    assert "waiting for" in output and "accounts changed: SIGHUP to mosquitto" in output


# --- systemd ---------------------------------------------------------------------------------

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "SystemCallFilter": "@system-service",
    "CapabilityBoundingSet": "",
    "UMask": "0027",
    "StandardOutput": "journal",
}


@pytest.mark.parametrize("name", ["edge-agent.service", "central-sync.service"])
def test_service_units_carry_the_hardening_options(name: str) -> None:
    sections = unit(name)
    for key, expected in HARDENING.items():
        assert value(sections, "Service", key) == expected, f"{name}: {key}={expected}"
    families = set((value(sections, "Service", "RestrictAddressFamilies") or "").split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= families <= {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # onnxruntime may generate code at run time: W^X memory would break model loading.
    assert value(sections, "Service", "MemoryDenyWriteExecute") is None
    assert value(sections, "Service", "Restart") in ("on-failure", "always")
    assert value(sections, "Service", "RestartSec")
    assert value(sections, "Install", "WantedBy") == "multi-user.target"


def test_edge_agent_unit_is_notify_with_watchdog_and_runs_the_real_command() -> None:
    from edge_agent.cli import _parser

    sections = unit("edge-agent.service")
    assert value(sections, "Service", "Type") == "notify"
    assert value(sections, "Service", "WatchdogSec") == "30"
    assert value(sections, "Service", "User") == "edge-agent"
    command = shlex.split(value(sections, "Service", "ExecStart") or "")
    assert command == ["/opt/edge-agent/bin/edge-agent", "launch", "--supervise", "-c",
                       "/etc/edge-agent/edge-agent.yaml"]
    arguments = _parser().parse_args(command[1:])
    assert arguments.command == "launch" and arguments.supervise
    assert str(arguments.config) == command[-1]
    # The launcher passes the agent's notifications on as the main process's own.
    assert value(sections, "Service", "NotifyAccess") == "main"
    assert value(sections, "Service", "KillMode") == "mixed"
    assert value(sections, "Service", "StateDirectory") == "edge-agent"
    assert value(sections, "Service", "ConfigurationDirectory") == "edge-agent"
    assert "/var/lib/edge-agent" in (value(sections, "Service", "ReadWritePaths") or "").split()
    # Cameras: /dev/video* through the device cgroup and the video group, not PrivateDevices.
    assert value(sections, "Service", "PrivateDevices") != "yes"
    assert value(sections, "Service", "DevicePolicy") == "closed"
    assert "char-video4linux rw" in values(sections, "Service", "DeviceAllow")
    assert value(sections, "Service", "SupplementaryGroups") == "video"


def test_central_unit_runs_serve_and_may_write_the_broker_accounts() -> None:
    from central_sync.cli import build_parser

    sections = unit("central-sync.service")
    assert value(sections, "Service", "Type") == "notify"  # test_central_systemd.py
    assert value(sections, "Service", "WatchdogSec")
    assert value(sections, "Service", "User") == "central-sync"
    command = shlex.split(value(sections, "Service", "ExecStart") or "")
    assert command == ["/opt/central-sync/bin/central-sync", "serve", "-c",
                       CENTRAL_CONFIG_TARGET]
    assert build_parser().parse_args(command[1:]).command == "serve"
    writable = [path.lstrip("-") for path in
                (value(sections, "Service", "ReadWritePaths") or "").split()]
    settings = mosquitto_conf()["settings"]
    for key in ("password_file", "acl_file"):
        assert any(under(settings[key], path) for path in writable), \
            f"central-sync cannot write {settings[key]}"
    assert value(sections, "Service", "StateDirectory") == "central-sync"


def test_path_unit_watches_exactly_the_broker_account_files_and_reloads_mosquitto() -> None:
    path_unit = unit("mosquitto-accounts.path")
    settings = mosquitto_conf()["settings"]
    assert sorted(values(path_unit, "Path", "PathChanged")) == sorted(
        [settings["acl_file"], settings["password_file"]])
    target = value(path_unit, "Path", "Unit")
    assert target == "mosquitto-accounts.service" and (UNITS / target).is_file()
    service = unit(target)
    assert value(service, "Service", "Type") == "oneshot"
    command = shlex.split(value(service, "Service", "ExecStart") or "")
    assert PurePosixPath(command[0]).name == "systemctl"
    assert command[1] in ("reload", "try-reload-or-restart")
    assert command[2].removesuffix(".service") == "mosquitto"


def test_install_scripts_put_the_programs_and_configs_where_the_units_look() -> None:
    agent_script = (DEPLOY / "install-agent.sh").read_text()
    command = shlex.split(value(unit("edge-agent.service"), "Service", "ExecStart") or "")
    assert 'venv="$root/opt/edge-agent"' in agent_script
    assert command[0] == "/opt/edge-agent/bin/edge-agent"
    assert 'etc="$root/etc/edge-agent"' in agent_script
    assert command[-1].startswith("/etc/edge-agent/")
    assert 'state="$root/var/lib/edge-agent"' in agent_script
    assert "deploy/systemd/edge-agent.service" in agent_script
    assert "s#^ExecStart=/opt/edge-agent/bin/edge-agent #" in agent_script
    assert re.search(r"useradd --system .*\bedge-agent$", agent_script, re.S | re.M)
    assert "usermod -a -G video edge-agent" in agent_script

    central_script = (DEPLOY / "install-central.sh").read_text()
    command = shlex.split(value(unit("central-sync.service"), "Service", "ExecStart") or "")
    assert 'venv="$root/opt/central-sync"' in central_script
    assert command[0].startswith("/opt/central-sync/")
    assert 'etc="$root/etc/central-sync"' in central_script
    assert command[-1] == CENTRAL_CONFIG_TARGET
    assert "s#^ExecStart=/opt/central-sync/bin/central-sync #" in central_script
    for name in ("central-sync.service", "mosquitto-accounts.path", "mosquitto-accounts.service"):
        assert f"deploy/systemd/{name}" in central_script, f"install-central.sh installs {name}"


def test_systemd_analyze_verify_finds_nothing_but_the_missing_programs() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed: bash deploy/setup.sh --test")
    names = sorted(p.name for p in UNITS.iterdir())
    assert names == ["central-sync.service", "edge-agent.service", "mosquitto-accounts.path",
                     "mosquitto-accounts.service"]
    # The programs live in /opt only on an installed machine; that complaint alone is expected.
    expected = {f"{name}: Command {shlex.split(value(unit(name), 'Service', 'ExecStart'))[0]} "
                "is not executable: No such file or directory"
                for name in ("edge-agent.service", "central-sync.service")}
    done = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *[str(UNITS / name) for name in names]],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if line.strip() and line.strip() not in expected]
    assert complaints == [], "\n".join(complaints)
    assert done.returncode == 0 or any(line.strip() in expected
                                       for line in done.stderr.splitlines())


def test_the_broker_bounds_what_it_queues_per_client_and_expires_abandoned_sessions() -> None:
    settings = mosquitto_conf()["settings"]
    queued = int(settings["max_queued_bytes"])
    assert int(settings["max_packet_size"]) * 4 <= queued <= 1024**3, \
        "room for a few of the largest messages, yet bounded"
    assert re.fullmatch(r"\d+[hdwmy]", settings["persistent_client_expiration"])
    docker = dict(line.split(" ", 1) for line in
                  (DEPLOY / "docker" / "mosquitto.conf").read_text().splitlines()
                  if line.strip() and not line.startswith("#"))
    for key in ("max_queued_bytes", "persistent_client_expiration"):
        assert docker[key] == settings[key], f"{key} differs between the two broker configs"


def test_the_broker_accepts_the_shipped_flow_control_settings(tmp_path: Path) -> None:
    """Mosquitto itself reads them (a misspelt option stops it from starting)."""
    conf = tmp_path / "flow.conf"
    port = free_port()
    wanted = ("max_inflight_messages", "max_queued_messages", "max_queued_bytes",
              "persistent_client_expiration", "max_packet_size")
    settings = mosquitto_conf()["settings"]
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    + "".join(f"{key} {settings[key]}\n" for key in wanted)
                    + ("user root\n" if os.geteuid() == 0 else ""))
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
                               str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
    finally:
        broker.terminate()
        broker.wait(timeout=10)
