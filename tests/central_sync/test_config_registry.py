"""Central's configuration registry, on SQLite and PostgreSQL: versions count up per name, are
immutable and signed; a body the gateways would refuse is refused at publish in their words."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_helpers import body_yaml, line_body

from central_sync.configs import (
    ConfigError,
    ConfigInvalid,
    ConfigUnchanged,
    TamperedConfig,
    config_deploy_command,
    config_diff,
    parse_config_ref,
    publish_config,
    read_config_file,
)
from central_sync.db import CentralDB, DatabaseError
from edge_agent.config.remote import RemoteConfigError, check_remote_body
from edge_agent.kernel.contract import config_body_sha256
from edge_agent.kernel.signing import SignatureError, Signer, Verifier
from tests.helpers import TEST_SIGNER, TEST_VERIFIER


def test_versions_count_up_per_name_and_are_signed(db: CentralDB) -> None:
    first = publish_config(db, TEST_SIGNER, "line-3-vision", line_body(5), "alice")
    second = publish_config(db, TEST_SIGNER, "line-3-vision", line_body(10), "bob",
                            probation_s=30, notes="slower scrap")
    other = publish_config(db, TEST_SIGNER, "line-2", line_body(5), "alice")
    assert (first.version, second.version, other.version) == (1, 2, 1)
    for document in (first, second, other):
        TEST_VERIFIER.verify(document, "configuration")  # as every gateway checks it
    assert second.sha256 == config_body_sha256(line_body(10))
    assert db.get_config("line-3-vision", 2) == second
    assert db.newest_config("line-3-vision") == second
    assert [d.label for d in db.list_configs()] == ["line-2@1", "line-3-vision@2",
                                                    "line-3-vision@1"]
    assert (second.probation_s, second.notes, second.published_by) == (30, "slower scrap", "bob")
    entries = [e for e in db.list_audit() if e["action"] == "config.publish"]
    assert {(e["actor"], e["subject"]) for e in entries} == {
        ("alice", "line-3-vision@1"), ("bob", "line-3-vision@2"), ("alice", "line-2@1")}


def test_a_published_version_cannot_be_changed(db: CentralDB) -> None:
    publish_config(db, TEST_SIGNER, "line-3-vision", line_body(5), "alice")
    with pytest.raises(DatabaseError, match="immutable"):
        db._db.execute("UPDATE configs SET body = '{}' WHERE name = 'line-3-vision'")
    assert db.get_config("line-3-vision", 1).body == line_body(5)


def test_the_newest_version_s_body_again_is_refused_naming_that_version(db: CentralDB) -> None:
    publish_config(db, TEST_SIGNER, "line-3-vision", line_body(5), "alice")
    publish_config(db, TEST_SIGNER, "line-3-vision", line_body(10), "alice")
    with pytest.raises(ConfigUnchanged, match="version 2 already has this body"):
        publish_config(db, TEST_SIGNER, "line-3-vision", line_body(10), "bob")
    # An older body is a new version: going back is a change like any other.
    assert publish_config(db, TEST_SIGNER, "line-3-vision", line_body(5), "bob").version == 3
    assert len(db.list_configs("line-3-vision")) == 3


@pytest.mark.parametrize("body", [
    {**line_body(), "pipelines": [{**line_body()["pipelines"][0], "source": "nope"}]},
    {**line_body(), "broker": {"host": "evil.example"}},
    {**line_body(), "pipelines": [{**line_body()["pipelines"][0], "interval_s": -1}]},
])
def test_a_body_the_gateways_would_refuse_is_refused_in_their_words(
        db: CentralDB, body: dict) -> None:
    with pytest.raises(RemoteConfigError) as agent:
        check_remote_body(body)
    with pytest.raises(ConfigInvalid) as central:
        publish_config(db, TEST_SIGNER, "line-3-vision", body, "alice")
    assert central.value.problems == agent.value.problems
    assert db.list_configs() == []
    assert not [e for e in db.list_audit() if e["action"] == "config.publish"]


def test_broker_settings_stay_in_the_gateway_s_file(db: CentralDB) -> None:
    with pytest.raises(ConfigInvalid, match="broker: central may not set this; it stays in "
                                            "the gateway's own YAML"):
        publish_config(db, TEST_SIGNER, "line-3", {**line_body(), "broker": {}}, "alice")


def test_a_password_in_the_body_is_refused_pointing_at_password_env(db: CentralDB) -> None:
    body = line_body()
    source = {**body["sources"][0], "security_policy": "Basic256Sha256",
              "certificate": "/etc/edge-agent/opcua/agent.pem",
              "private_key": "/etc/edge-agent/opcua/agent-key.pem",
              "username": "edge", "password": "s3cret"}
    with pytest.raises(ConfigInvalid, match=r"sources\.0\.password: .* password_env"):
        publish_config(db, TEST_SIGNER, "line-3", {**body, "sources": [source]}, "alice")
    assert db.list_configs() == []
    source = {**source, "password": None, "password_env": "LINE3_OPCUA_PASSWORD"}
    del source["password"]
    assert publish_config(db, TEST_SIGNER, "line-3", {**body, "sources": [source]},
                          "alice").version == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "line 3"}, "not valid"),
    ({"probation_s": -1.0}, "between 0 and"),
    ({"notes": "x" * 2001}, "more than 2000"),
    ({"body": {}}, "sets nothing"),
    ({"body": {"sources": [{"name": "x" * 300_000}]}}, "more than 262,144"),
])
def test_bad_input_is_refused_saying_what_to_do(db: CentralDB, kwargs: dict,
                                                message: str) -> None:
    arguments = {"name": "line-3", "body": line_body(), **kwargs}
    with pytest.raises(ConfigError, match=message):
        publish_config(db, TEST_SIGNER, by="alice", **arguments)
    assert db.list_configs() == []


def test_a_row_altered_in_the_database_is_never_sent(db: CentralDB) -> None:
    published = publish_config(db, TEST_SIGNER, "line-3", line_body(5), "alice")
    forged = published.model_copy(update={"body": line_body(99),
                                          "sha256": config_body_sha256(line_body(99))})
    with pytest.raises(SignatureError):
        TEST_VERIFIER.verify(forged, "configuration")
    on = " ON configs" if db.dialect == "postgresql" else ""
    db._db.execute(f"DROP TRIGGER configs_are_immutable{on}")  # someone with the database's
    db._db.execute("UPDATE configs SET document = ? WHERE name = 'line-3'",
                   (forged.model_dump_json(),))
    with pytest.raises(TamperedConfig, match="cannot be vouched for"):
        config_deploy_command(db, TEST_SIGNER, "line-3", 1, "gw1", "alice")


def test_after_a_key_change_the_document_is_sent_signed_by_the_new_key(db: CentralDB) -> None:
    publish_config(db, TEST_SIGNER, "line-3", line_body(5), "alice")
    new_key = Signer(Signer.generate()._key, {TEST_SIGNER.key_id: TEST_SIGNER.public_key})
    command = config_deploy_command(db, new_key, "line-3", 1, "gw1", "alice")
    Verifier(new_key.public_key).verify(command.document, "configuration")
    Verifier(new_key.public_key).verify(command, "command")
    assert command.document.body == line_body(5)


def test_diff_is_a_unified_diff_of_the_two_bodies(db: CentralDB) -> None:
    old = publish_config(db, TEST_SIGNER, "line-3", line_body(5), "alice")
    new = publish_config(db, TEST_SIGNER, "line-3", line_body(10), "alice")
    diff = config_diff(old, new)
    assert diff.startswith("--- line-3@1\n+++ line-3@2\n")
    assert "-  interval_s: 5\n" in diff and "+  interval_s: 10\n" in diff
    assert config_diff(old, old) == ""


def test_references_are_name_at_number() -> None:
    assert parse_config_ref("line-3-vision@12") == ("line-3-vision", 12)
    assert parse_config_ref("line-3-vision", version_required=False) == ("line-3-vision", None)
    for bad in ("line-3-vision", "line-3@0", "line-3@1.0.0", "@2", "line 3@2"):
        with pytest.raises(ValueError, match="NAME@VERSION"):
            parse_config_ref(bad)


def test_a_file_s_problems_point_at_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "line-3.yaml"
    path.write_text("# line 3\n" + body_yaml(line_body()))
    found = read_config_file(path)
    assert found.body == line_body()
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1)
                if "source: line1" in text)
    assert found.locate("pipelines.0.source: not defined") == \
        f"{path}:{line}: pipelines.0.source: not defined"
    assert found.locate("pipeline 'scrap' uses source 'x'") == \
        f"{path}: pipeline 'scrap' uses source 'x'"


@pytest.mark.parametrize(("text", "message"), [
    ("sources: [\n", ":2:1: YAML syntax error"),
    ("- just a list\n", "top level must be a mapping with sources, pipelines"),
    ("sources:\n  - name: cam\n    type: camera\n    url: rtsp://u:${PW}@cam/1\n",
     ":4: sources.0.url: ${PW} refers to an environment variable"),
])
def test_a_file_that_cannot_be_read_says_where(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        read_config_file(path)
    assert message in str(refused.value)

