"""Changing central's signing key without an agent refusing a manifest on the way:
`keys next` (agents trust both), then `keys promote` (the next key signs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from central_helpers import write_config

from central_sync.accounts import hash_password
from central_sync.cli import main
from central_sync.config import load_central_config
from central_sync.db import CentralDB
from edge_agent.kernel.contract import ModelManifest
from edge_agent.kernel.signing import SignatureError, Verifier
from tests.helpers import SAMPLE_MODEL, TEST_SIGNER, manifest_for

PASSWORD = "correct horse battery"


def test_a_key_change_in_two_steps(tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path)
    c = ["-c", str(path)]
    config = load_central_config(path)
    public = config.signing_key_path.with_suffix(".pub")
    old_only = Verifier.from_file(public)
    manifest: ModelManifest = manifest_for(SAMPLE_MODEL)
    by_old = TEST_SIGNER.signed(manifest)

    assert main(["keys", "next", *c]) == 0
    upcoming = config.next_signer()
    assert upcoming is not None and upcoming.key_id != TEST_SIGNER.key_id
    both = Verifier.from_file(public)  # what agents get in the change-over
    assert set(both.keys) == {TEST_SIGNER.key_id, upcoming.key_id}
    assert config.signer().key_id == TEST_SIGNER.key_id  # the old key still signs
    both.verify(by_old, "manifest")
    both.verify(upcoming.signed(manifest), "manifest")
    capsys.readouterr()
    assert main(["keys", "show", *c]) == 0
    assert Verifier.from_pem(capsys.readouterr().out).keys.keys() == both.keys.keys()
    assert main(["keys", "next", *c]) == 2  # one change at a time
    assert "keys promote" in capsys.readouterr().err

    assert main(["keys", "promote", *c]) == 0
    assert config.signer().key_id == upcoming.key_id
    assert config.next_signer() is None
    assert list(Verifier.from_file(public).keys) == [upcoming.key_id]
    with pytest.raises(SignatureError, match=f"signed by key {upcoming.key_id}, this agent "
                                             f"trusts key {TEST_SIGNER.key_id}"):
        old_only.verify(upcoming.signed(manifest), "manifest")
    assert main(["keys", "promote", *c]) == 2
    assert "keys next" in capsys.readouterr().err


def test_a_tampered_manifest_fails_against_every_trusted_key() -> None:
    from edge_agent.kernel.signing import Signer

    other = Signer.generate()
    both = Verifier(TEST_SIGNER.public_key, other.public_key)
    signed = TEST_SIGNER.signed(manifest_for(SAMPLE_MODEL))
    tampered = signed.model_copy(update={"version": "9.9.9"})
    with pytest.raises(SignatureError, match="does not match its content"):
        both.verify(tampered, "manifest")
    anonymous = tampered.model_copy(update={"key_id": ""})
    with pytest.raises(SignatureError, match="does not match"):
        both.verify(anonymous, "manifest")
    both.verify(signed, "manifest")


def test_only_an_admin_promotes_the_next_key_and_a_refusal_changes_no_file(
        tmp_path: Path, capsys, monkeypatch) -> None:
    path = write_config(tmp_path)
    c = ["-c", str(path)]
    config = load_central_config(path)
    assert main(["keys", "next", *c]) == 0
    db = CentralDB(config.database_url)
    db.add_user("root", hash_password(PASSWORD), "admin", by="setup")
    db.add_user("eve", hash_password(PASSWORD), "engineer", by="root")
    def key_files() -> dict[Path, bytes]:
        return {file: file.read_bytes() for file in config.signing_key_path.parent.iterdir()}

    before = key_files()

    monkeypatch.setenv("CENTRAL_SYNC_USER", "eve")
    monkeypatch.setenv("CENTRAL_SYNC_PASSWORD", PASSWORD)
    assert main(["keys", "promote", *c]) == 2
    assert "eve is a engineer; this needs the admin role" in capsys.readouterr().err
    assert key_files() == before

    monkeypatch.setenv("CENTRAL_SYNC_USER", "root")
    upcoming = config.next_signer()
    assert upcoming is not None
    assert main(["keys", "promote", *c]) == 0
    assert config.signer().key_id == upcoming.key_id
    assert ("root", "keys.promote", upcoming.key_id) in [
        (e["actor"], e["action"], e["subject"]) for e in db.list_audit()]
    db.close()
