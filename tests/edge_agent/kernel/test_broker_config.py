"""The broker section of the agent's configuration: credentials, TLS, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config import load_agent_config
from edge_agent.kernel.configfile import ConfigError
from tests.helpers import write_test_keys


def write(folder: Path, broker: str) -> Path:
    _, public = write_test_keys(folder / "keys")
    path = folder / "edge-agent.yaml"
    path.write_text(f"device_id: gw1\ndata_dir: state\nbroker: {broker}\n"
                    f"security: {{central_public_key: {public}}}\n")
    return path


def test_a_password_never_crosses_the_network_in_clear(tmp_path: Path) -> None:
    path = write(tmp_path, "{host: mqtt.plant.example, username: gw1, password: s3cret}")
    with pytest.raises(ConfigError, match="password would cross the network in clear"):
        load_agent_config(path)
    path = write(tmp_path, "{host: 127.0.0.1, username: gw1, password: s3cret}")
    assert load_agent_config(path).broker.secret() == "s3cret"  # on this machine: fine


def test_password_file_and_certificates_are_relative_to_the_config(tmp_path: Path,
                                                                   capsys) -> None:
    (tmp_path / "mqtt-password").write_text("from-the-bundle\n")
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("pem")
    path = write(tmp_path, "{host: mqtt.plant.example, port: 8883, tls: true, ca_file: ca.crt, "
                           "cert_file: client.crt, key_file: client.key, username: gw1, "
                           "password_file: mqtt-password}")
    broker = load_agent_config(path).broker
    assert broker.secret() == "from-the-bundle"
    assert broker.ca_file == tmp_path / "ca.crt"
    assert main(["check-config", "-c", str(path)]) == 0
    assert "TLS with client certificate, user gw1" in capsys.readouterr().out


def test_missing_credentials_are_named(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, "{username: gw1, password_file: mqtt-password}")
    assert main(["check-config", "-c", str(path)]) == 2
    assert "cannot read broker.password_file" in capsys.readouterr().err
    assert main(["run", "-c", str(path)]) == 2
    assert "copy mqtt-password from the device's bundle" in capsys.readouterr().err
    for broker, error in (("{tls: true, ca_file: nowhere.crt}", "nowhere.crt does not exist"),
                          ("{ca_file: ca.crt}", "set tls: true"),
                          ("{password: x}", "a password needs a username"),
                          ("{tls: true, cert_file: ca.crt}", "go together")):
        (tmp_path / "ca.crt").write_text("pem")
        with pytest.raises(ConfigError, match=error):
            load_agent_config(write(tmp_path, broker))
