"""Provisioning without a broker: the account files central writes, the bundle, the CLI's
checks and the audit log (on SQLite and PostgreSQL). test_security.py runs them on Mosquitto."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from central_helpers import write_config

from central_sync.cli import main
from central_sync.db import CentralDB
from central_sync.provisioning import acl_text, mosquitto_hash
from edge_agent.config import AgentConfig
from edge_agent.kernel.contract import DEVICE_TOPICS, Topics
from tests.helpers import TEST_SIGNER


@pytest.fixture
def central(tmp_path: Path, database_url: str) -> Path:
    path = write_config(tmp_path, database_url=database_url)
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nplant CA\n")
    path.write_text(path.read_text() + (
        "provisioning:\n"
        "  password_file: mosquitto/passwd\n"
        "  acl_file: mosquitto/acl\n"
        "  reload_command: echo reloaded >> mosquitto/reloads\n"
        "  bundle_dir: bundles\n"
        "  gateway_broker_host: mqtt.plant.example\n"
        "  ca_file: ca.crt\n"))
    (tmp_path / "mosquitto").mkdir()
    return path


def bundle_files(folder: Path, device: str) -> dict[str, tuple[bytes, int]]:
    with tarfile.open(folder / "bundles" / f"{device}.tar.gz") as bundle:
        return {m.name: (bundle.extractfile(m).read(), m.mode)  # type: ignore[union-attr]
                for m in bundle.getmembers() if m.isfile()}


def test_device_add_writes_accounts_and_a_bundle_the_agent_accepts(central: Path, capsys,
                                                                    monkeypatch) -> None:
    monkeypatch.chdir(central.parent)  # the reload command's relative path
    assert main(["device", "add", "line3-gw1", "--labels", "line-3,extruders", "-c",
                 str(central)]) == 0
    assert "install-agent.sh line3-gw1.tar.gz" in capsys.readouterr().out
    folder = central.parent
    files = bundle_files(folder, "line3-gw1")
    assert sorted(files) == [f"line3-gw1/{n}" for n in ("ca.crt", "central-signing.pub",
                                                         "edge-agent.yaml", "mqtt-password")]
    assert files["line3-gw1/mqtt-password"][1] == 0o600
    assert (folder / "bundles" / "line3-gw1.tar.gz").stat().st_mode & 0o077 == 0
    assert files["line3-gw1/central-signing.pub"][0].decode() == TEST_SIGNER.public_pem()
    password = files["line3-gw1/mqtt-password"][0].decode().strip()
    assert len(password) >= 32

    # The password file entry is mosquitto_passwd's own $7$ form of that password.
    user, entry = (folder / "mosquitto" / "passwd").read_text().strip().split(":", 1)
    _, kind, rounds, salt, digest = entry.split("$")
    assert (user, kind) == ("line3-gw1", "7")
    assert base64.b64decode(digest) == hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(salt), int(rounds))
    assert (folder / "mosquitto" / "passwd").stat().st_mode & 0o777 == 0o640
    assert (folder / "mosquitto" / "reloads").read_text() == "reloaded\n"

    # The agent's configuration from the bundle validates once its files lie beside it.
    gateway = folder / "gateway"
    with tarfile.open(folder / "bundles" / "line3-gw1.tar.gz") as bundle:
        bundle.extractall(gateway, filter="data")
    data = yaml.safe_load((gateway / "line3-gw1" / "edge-agent.yaml").read_text())
    config = AgentConfig.model_validate(data, context={"config_dir": gateway / "line3-gw1"})
    assert config.device_id == "line3-gw1" and config.labels == ["line-3", "extruders"]
    assert (config.broker.host, config.broker.port, config.broker.tls) == (
        "mqtt.plant.example", 8883, True)
    assert config.broker.username == "line3-gw1" and config.broker.secret() == password
    assert config.security.verify_signatures
    assert config.security.verifier().key_id == TEST_SIGNER.key_id  # type: ignore[union-attr]

    db = CentralDB(config_db(central))
    actions = [(e["action"], e["subject"]) for e in db.list_audit()]
    db.close()
    assert ("device.provision", "line3-gw1") in actions


def config_db(central: Path) -> str:
    from central_sync.config import load_central_config

    return load_central_config(central).database_url


def test_the_acl_follows_the_contract() -> None:
    from central_sync.db.broker_accounts import BrokerAccount

    accounts = [BrokerAccount("central", "central", (), "x", 0, 0, None),
                BrokerAccount("gw-a", "device", ("line-1",), "x", 0, 0, None),
                BrokerAccount("gw-old", "device", (), "x", 0, 0, 5.0)]
    text = acl_text(accounts, Topics("plant7"))
    assert "user central\ntopic readwrite plant7/#" in text
    assert "gw-old" not in text
    device_lines = text.split("user gw-a\n")[1].strip().splitlines()
    assert len(device_lines) == len(DEVICE_TOPICS) + 1
    for spec in DEVICE_TOPICS:
        access = "write" if spec.direction == "agent → central" else "read"
        assert f"topic {access} plant7/devices/gw-a/{spec.leaf}" in device_lines
    assert device_lines[-1] == "topic read plant7/artifacts/+"
    assert not any("readwrite" in line or "#" in line for line in device_lines)
    # Its line's operator alerts come from central: the device reads them, never writes them.
    assert "topic read plant7/devices/gw-a/alerts" in device_lines


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    made = subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "gw", "s3cret"],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail("mosquitto_passwd is missing: sudo apt-get install -y mosquitto")
    entry = passwd.read_text().strip().split(":", 1)[1]
    salt = base64.b64decode(entry.split("$")[3])
    assert mosquitto_hash("s3cret", salt) == entry


def test_provisioning_refuses_bad_input_and_keeps_what_exists(central: Path, capsys,
                                                              monkeypatch) -> None:
    monkeypatch.chdir(central.parent)
    c = ["-c", str(central)]
    assert main(["device", "add", "../etc", *c]) == 2
    assert "letters, digits" in capsys.readouterr().err
    assert main(["device", "add", "gw1", "--labels", "line 3", *c]) == 2
    assert main(["device", "add", "gw1", *c]) == 0
    first = bundle_files(central.parent, "gw1")["gw1/mqtt-password"][0]
    capsys.readouterr()
    assert main(["device", "add", "gw1", *c]) == 2
    assert "device rotate gw1" in capsys.readouterr().err
    assert bundle_files(central.parent, "gw1")["gw1/mqtt-password"][0] == first
    assert main(["device", "remove", "nobody", *c]) == 2
    assert "not a provisioned device" in capsys.readouterr().err
    # central's own login needs a user name and a password file in the configuration.
    assert main(["broker", "init", *c]) == 2
    assert "broker.password_file" in capsys.readouterr().err


def test_a_failing_reload_is_reported(central: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(central.parent)
    central.write_text(central.read_text().replace("echo reloaded >> mosquitto/reloads",
                                                   "echo no mosquitto here >&2; exit 3"))
    assert main(["device", "add", "gw1", "-c", str(central)]) == 2
    err = capsys.readouterr().err
    assert "reloading Mosquitto failed (exit 3): no mosquitto here" in err
    assert "gw1:" in (central.parent / "mosquitto" / "passwd").read_text()  # written anyway


def test_unwritable_account_files_say_what_is_needed(central: Path, capsys) -> None:
    central.write_text(central.read_text().replace("password_file: mosquitto/passwd",
                                                   "password_file: /proc/no/passwd"))
    assert main(["device", "add", "gw1", "-c", str(central)]) == 2
    assert "cannot write /proc/no/passwd" in capsys.readouterr().err


def test_device_label_sets_adds_and_removes_groups_and_is_audited(central: Path, capsys,
                                                                   monkeypatch) -> None:
    monkeypatch.chdir(central.parent)
    c = ["-c", str(central)]
    assert main(["device", "add", "gw1", "--labels", "line-3", *c]) == 0
    assert main(["device", "label", "gw1", "--add", "oven,line-4", *c]) == 0
    assert main(["device", "label", "gw1", "--remove", "line-3", *c]) == 0
    assert "labels oven, line-4 (were line-3, oven, line-4)" in capsys.readouterr().out
    db = CentralDB(config_db(central))
    try:
        assert db.devices_labelled("line-3") == [] and db.devices_labelled("oven") == ["gw1"]
        assert main(["device", "label", "gw1", "--set", "line-5", *c]) == 0
        assert db.broker_account("gw1").labels == ("line-5",)  # type: ignore[union-attr]
        changes = [a["detail"] for a in db.list_audit() if a["action"] == "device.labels"]
    finally:
        db.close()
    assert changes == ["labels=line-5 before=oven,line-4", "labels=oven,line-4 before=line-3,"
                       "oven,line-4", "labels=line-3,oven,line-4 before=line-3"]
    capsys.readouterr()
    assert main(["device", "label", "gw1", *c]) == 2
    assert "--set a,b" in capsys.readouterr().err
    assert main(["device", "label", "gw9", "--set", "line-3", *c]) == 2
    assert "gw9 is not a provisioned device" in capsys.readouterr().err


def test_ids_with_a_trailing_line_break_are_refused(central: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(central.parent)
    c = ["-c", str(central)]
    assert main(["device", "add", "gw1\n", *c]) == 2
    assert "device id 'gw1\\n'" in capsys.readouterr().err
    assert not (central.parent / "mosquitto" / "passwd").exists()
    assert main(["deploy", "m@1.0.0", "--device", "gw1\n", *c]) == 2
    assert "gw1\\n" in capsys.readouterr().err
    assert main(["deploy", "m\n@1.0.0", "--device", "gw1", *c]) == 2
    assert "m\\n@1.0.0" in capsys.readouterr().err


def test_a_rollout_group_is_what_provisioning_gave_not_what_devices_report(
        central: Path, capsys, monkeypatch) -> None:
    from edge_agent.kernel.contract import DeviceStatus

    monkeypatch.chdir(central.parent)
    c = ["-c", str(central)]
    db = CentralDB(config_db(central))
    db.update_status(DeviceStatus(device_id="gw0", state="online", labels=["line-3"]))
    db.close()
    assert main(["device", "add", "gw0", *c]) == 0  # provisioned without labels
    capsys.readouterr()
    assert main(["rollout", "start", "m@1.0.0", "--group", "line-3", *c]) == 2
    assert "no provisioned device has the label(s) line-3" in capsys.readouterr().err
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["devices", *c]) == 0
    assert "line-3 (not provisioned)" in capsys.readouterr().out


def test_a_scada_reader_may_only_read_the_alert_topics() -> None:
    from central_sync.db.broker_accounts import BrokerAccount

    accounts = [BrokerAccount("central", "central", (), "x", 0, 0, None),
                BrokerAccount("gw-a", "device", (), "x", 0, 0, None),
                BrokerAccount("scada-1", "scada", (), "x", 0, 0, None),
                BrokerAccount("scada-old", "scada", (), "x", 0, 0, 5.0)]
    text = acl_text(accounts, Topics("plant7"))
    reader = text.split("user scada-1\n")[1].split("\n\n")[0].splitlines()
    assert reader == ["topic read plant7/alerts/#"]
    assert "scada-old" not in text
    # The alert topics central publishes lie under what the reader may read.
    topics = Topics("plant7")
    assert topics.alerts_open("a1").startswith("plant7/alerts/")
    assert topics.alerts_events().startswith("plant7/alerts/")


def test_a_scada_reader_is_added_rotated_listed_and_removed(central: Path, capsys,
                                                            monkeypatch) -> None:
    monkeypatch.chdir(central.parent)
    monkeypatch.setenv("COLUMNS", "200")
    c = ["-c", str(central)]
    folder = central.parent
    password_file = folder / "bundles" / "scada-1.mqtt-password"
    assert main(["device", "add-reader", "scada-1", *c]) == 0
    out = capsys.readouterr().out
    assert str(password_file) in out and "edge-mlops/alerts/#" in out
    assert "mqtt.plant.example:8883" in out and "ca.crt" in out
    assert password_file.stat().st_mode & 0o777 == 0o600
    password = password_file.read_text().strip()
    assert len(password) >= 32
    assert not (folder / "bundles" / "scada-1.tar.gz").exists()  # no gateway bundle

    def entry() -> str:
        lines = (folder / "mosquitto" / "passwd").read_text().splitlines()
        return next(line for line in lines if line.startswith("scada-1:")).split(":", 1)[1]

    def hash_of(secret: str, entry: str) -> bool:
        _, _, rounds, salt, digest = entry.split("$")
        return base64.b64decode(digest) == hashlib.pbkdf2_hmac(
            "sha512", secret.encode(), base64.b64decode(salt), int(rounds))

    assert hash_of(password, entry())
    acl = (folder / "mosquitto" / "acl").read_text()
    assert "user scada-1\ntopic read edge-mlops/alerts/#\n" in acl

    assert main(["device", "list", *c]) == 0
    listing = capsys.readouterr().out
    assert "SCADA readers" in listing and "scada-1" in listing

    assert main(["device", "rotate", "scada-1", *c]) == 0
    assert "SCADA reader scada-1: new password" in capsys.readouterr().out
    rotated = password_file.read_text().strip()
    assert rotated != password and hash_of(rotated, entry()) and not hash_of(password, entry())
    assert not (folder / "bundles" / "scada-1.tar.gz").exists()

    # A reader has no labels, and its name is taken: no device may have it.
    assert main(["device", "label", "scada-1", "--add", "line-3", *c]) == 2
    assert main(["device", "add", "scada-1", *c]) == 2
    assert "device rotate scada-1" in capsys.readouterr().err

    assert main(["device", "remove", "scada-1", *c]) == 0
    assert "SCADA reader scada-1 revoked" in capsys.readouterr().out
    assert not password_file.exists()
    assert "scada-1" not in (folder / "mosquitto" / "passwd").read_text()
    assert "scada-1" not in (folder / "mosquitto" / "acl").read_text()

    db = CentralDB(config_db(central))
    try:
        actions = [(e["action"], e["subject"]) for e in db.list_audit()]
        assert db.broker_account("scada-1").kind == "scada"  # type: ignore[union-attr]
    finally:
        db.close()
    for action in ("scada.provision", "broker.rotate", "broker.revoke"):
        assert (action, "scada-1") in actions


def test_rotating_centrals_login_as_a_device_is_refused(central: Path, capsys,
                                                        monkeypatch) -> None:
    monkeypatch.chdir(central.parent)
    db = CentralDB(config_db(central))
    try:
        db.add_broker_account("central", "central", [], mosquitto_hash("x"), by="test")
    finally:
        db.close()
    assert main(["device", "rotate", "central", "-c", str(central)]) == 2
    assert "broker init --force" in capsys.readouterr().err
    assert not (central.parent / "bundles").exists()
