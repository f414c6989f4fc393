"""A signing key change on disk: the next key beside the current one, both in the .pub, then
the next key in the current one's place."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.kernel.signing import (
    NextKeyExists,
    NoNextKey,
    Signer,
    Verifier,
    promote_next_key,
    start_key_change,
    write_key_pair,
)


@pytest.fixture
def key_paths(tmp_path: Path) -> tuple[Path, Path]:
    private = tmp_path / "keys" / "signing.key"
    write_key_pair(private)
    return private, tmp_path / "keys" / "signing.next.key"


def test_starting_a_change_makes_agents_trust_both_keys_while_the_old_one_signs(
        key_paths: tuple[Path, Path]) -> None:
    private, upcoming_path = key_paths
    before = Signer.from_file(private).key_id

    change = start_key_change(private, upcoming_path)

    assert change.old.key_id == before == Signer.from_file(private).key_id
    assert change.new.key_id == Signer.from_file(upcoming_path).key_id != before
    assert change.public_path == private.with_suffix(".pub")
    assert list(Verifier.from_file(change.public_path).keys) == [before, change.new.key_id]
    assert list(Verifier.from_file(upcoming_path.with_suffix(".pub")).keys) == [
        change.new.key_id]


def test_a_second_change_is_refused_unless_forced(key_paths: tuple[Path, Path]) -> None:
    private, upcoming_path = key_paths
    first = start_key_change(private, upcoming_path)

    with pytest.raises(NextKeyExists) as refused:
        start_key_change(private, upcoming_path)
    assert refused.value.key_id == first.new.key_id
    assert Signer.from_file(upcoming_path).key_id == first.new.key_id

    replaced = start_key_change(private, upcoming_path, force=True)
    assert replaced.new.key_id != first.new.key_id
    assert list(Verifier.from_file(replaced.public_path).keys) == [
        replaced.old.key_id, replaced.new.key_id]


def test_promoting_puts_the_next_key_in_place_and_removes_its_files(
        key_paths: tuple[Path, Path]) -> None:
    private, upcoming_path = key_paths
    started = start_key_change(private, upcoming_path)

    promoted = promote_next_key(private, upcoming_path)

    assert promoted.old.key_id == started.old.key_id
    assert promoted.new.key_id == started.new.key_id == Signer.from_file(private).key_id
    assert not upcoming_path.exists()
    assert not upcoming_path.with_suffix(".pub").exists()
    assert list(Verifier.from_file(promoted.public_path).keys) == [started.new.key_id]
    assert private.stat().st_mode & 0o777 == 0o600


def test_promoting_without_a_started_change_changes_nothing(
        key_paths: tuple[Path, Path]) -> None:
    private, upcoming_path = key_paths
    before = private.read_bytes(), private.with_suffix(".pub").read_bytes()

    with pytest.raises(NoNextKey):
        promote_next_key(private, upcoming_path)

    assert (private.read_bytes(), private.with_suffix(".pub").read_bytes()) == before
