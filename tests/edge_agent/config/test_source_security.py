"""The sources' security in the config file: no password in clear to an OPC-UA server, no
automatic writes over an unprotected session, unless the file says so in words."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import load_agent_config
from edge_agent.kernel.configfile import ConfigError
from tests.edge_agent.sources.opcua_certs import write_app_certificate

SOURCE = """\
device_id: gw1
sources:
  - name: line1
    endpoint: opc.tcp://plc:4840/line-1
    nodes: {z1: "ns=2;s=z1", z2: "ns=2;s=z2"}
    setpoints: {z1: "ns=2;s=z1_sp"}
"""
AUTO_PIPELINE = """\
pipelines:
  - name: scrap
    source: line1
    model: extruder-scrap
    features: [z1, z2]
    recommend:
      controls: {z1: {min: 170, max: 180, step: 0.5, max_change: 3}}
      objective: {type: minimise}
      mode: auto
"""
SECURED = """\
    security_policy: Basic256Sha256
    certificate: agent.pem
    private_key: agent-key.pem
"""
USER = """\
    username: gateway
    password_env: LINE1_OPCUA_PASSWORD
"""
REST_OF_FILE = """\
ui:
  port: 0
security:
  central_public_key: keys/central.pub
"""


def load(tmp_path: Path, *parts: str) -> object:
    write_app_certificate(tmp_path, "agent", "urn:edge-mlops:edge-agent:test")
    path = tmp_path / "agent.yaml"
    path.write_text("".join(parts) + REST_OF_FILE)
    return load_agent_config(path)


def test_a_password_over_security_policy_none_is_refused_with_what_to_set(
        tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, SOURCE, USER)
    message = str(refused.value)
    assert "security_policy None would send the password in clear" in message
    assert "security_policy: Basic256Sha256" in message and "allow_insecure_password" in message

    load(tmp_path, SOURCE, USER, "    allow_insecure_password: true\n")
    load(tmp_path, SOURCE, USER, SECURED)


@pytest.mark.parametrize("session", [
    "",  # no security policy, anonymous
    USER + "    allow_insecure_password: true\n",  # a user, but no security policy
    SECURED,  # signed and encrypted, but anonymous
])
def test_automatic_writes_over_an_unprotected_session_are_refused_with_what_to_set(
        tmp_path: Path, session: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, SOURCE, session, AUTO_PIPELINE)
    message = str(refused.value)
    assert "pipeline 'scrap' has recommend mode auto, but source 'line1' is not secured" in message
    assert "allow_insecure_write: true" in message

    load(tmp_path, SOURCE, session, "    allow_insecure_write: true\n", AUTO_PIPELINE)


def test_automatic_writes_over_a_secured_authenticated_session_are_accepted(
        tmp_path: Path) -> None:
    load(tmp_path, SOURCE, SECURED, USER, AUTO_PIPELINE)
    load(tmp_path, SOURCE, AUTO_PIPELINE.replace("mode: auto", "mode: advise"))
