"""Ed25519 signatures over a canonical JSON encoding: central signs, agents verify.

Central signs every model manifest when it is published and every command it sends; an agent
accepts a manifest or command only with a valid signature by the key in its configuration.
The signed bytes are the message as JSON without its `signature` field, keys sorted, no
whitespace: both sides compute them the same way from the same pydantic model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel

from edge_agent.kernel.atomic_files import write_atomically

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger(__name__)

# Beside the signing key: the public halves of the keys it replaced, one `KEY_ID.pub` each, so
# that manifests they signed can still be checked before central re-signs them.
RETIRED_KEYS_DIR = "retired"


class SignatureError(Exception):
    """A signature is missing, malformed, by another key or does not match the content."""


class KeyFileError(Exception):
    """A key file is missing or unreadable; the message says what to do."""


def canonical_bytes(message: BaseModel) -> bytes:
    """The bytes a signature covers: the message's JSON without `signature`, keys sorted."""
    data = message.model_dump(mode="json", exclude={"signature"})
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """Central's private key, and the public keys of the keys it replaced (`retired_keys`)."""

    def __init__(self, private_key: Ed25519PrivateKey,
                 retired_keys: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)
        self.retired_keys = {k: v for k, v in (retired_keys or {}).items() if k != self.key_id}

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: str | Path) -> Signer:
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyFileError(
                f"signing key {path} not found; create one with `central-sync keys init`"
            ) from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except ValueError as exc:
            raise KeyFileError(f"signing key {path} is not a PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"signing key {path} is not an Ed25519 key")
        return cls(key, load_retired_keys(path))

    def sign(self, message: BaseModel) -> str:
        """Base64 signature of the message's canonical bytes."""
        return base64.b64encode(self._key.sign(canonical_bytes(message))).decode("ascii")

    def signed(self, message: M) -> M:
        """A copy of the message carrying this key's id and its signature."""
        named = message.model_copy(update={"key_id": self.key_id, "signature": ""})
        return named.model_copy(update={"signature": self.sign(named)})

    def save(self, private_path: str | Path) -> Path:
        """Write the private key (mode 600, atomically) and the public key beside it
        (same name, `.pub`); returns the public key's path."""
        private_path = Path(private_path)
        private_path.parent.mkdir(parents=True, exist_ok=True)
        pem = self._key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        write_atomically(private_path, pem, mode=0o600)
        public_path = private_path.with_suffix(".pub")
        public_path.write_text(self.public_pem(), encoding="ascii")
        return public_path

    def public_pem(self) -> str:
        return public_key_pem(self.public_key)

    def own_keys(self) -> Verifier:
        """Every key central has signed with: this one and the retired ones."""
        return Verifier(self.public_key, *self.retired_keys.values())


class Verifier:
    """The public keys an agent trusts: central's key, and during a key change also the next
    one (`central-sync keys next`), in one PEM file."""

    def __init__(self, public_key: Ed25519PublicKey, *more: Ed25519PublicKey) -> None:
        self.public_key = public_key
        self.key_id = key_id(public_key)
        self.keys = {key_id(k): k for k in (public_key, *more)}

    @property
    def description(self) -> str:
        """'key ID', or 'keys ID1 or ID2' while two are trusted."""
        ids = list(self.keys)
        return f"key {ids[0]}" if len(ids) == 1 else f"keys {' or '.join(ids)}"

    @classmethod
    def from_pem(cls, text: str, origin: str = "public key") -> Verifier:
        blocks = _PEM_BLOCK.findall(text)
        if not blocks:
            raise KeyFileError(f"{origin} is not a PEM public key (no BEGIN PUBLIC KEY block)")
        keys = []
        for block in blocks:
            try:
                key = serialization.load_pem_public_key(block.encode("ascii"))
            except (ValueError, UnicodeEncodeError) as exc:
                raise KeyFileError(f"{origin} is not a PEM public key: {exc}") from None
            if not isinstance(key, Ed25519PublicKey):
                raise KeyFileError(f"{origin} is not an Ed25519 public key")
            keys.append(key)
        return cls(*keys)

    @classmethod
    def from_file(cls, path: str | Path) -> Verifier:
        path = Path(path)
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise KeyFileError(
                f"central's public key {path} not found; copy the signing.pub that "
                "`central-sync keys init` wrote on central"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"central's public key {path} is unreadable: {exc}") from None
        return cls.from_pem(text, origin=str(path))

    def verify(self, message: Any, what: str) -> None:
        """Raise SignatureError unless `message.signature` is a trusted key's over its
        content."""
        signature = getattr(message, "signature", "")
        signer = getattr(message, "key_id", "")
        if not signature:
            raise SignatureError(f"{what} is unsigned; only signed {what}s are accepted")
        if signer and signer not in self.keys:
            raise SignatureError(
                f"{what} is signed by key {signer}, this agent trusts {self.description}; "
                "check the public key in the agent's configuration"
            )
        candidates = [self.keys[signer]] if signer else list(self.keys.values())
        try:
            raw = base64.b64decode(signature, validate=True)
        except ValueError:
            raw = b""
        for key in candidates:
            try:
                key.verify(raw, canonical_bytes(message))
                return
            except InvalidSignature:
                continue
        raise SignatureError(
            f"{what} signature does not match its content (altered after signing, or "
            f"signed by another key than {self.description})"
        )


_PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def retired_keys_dir(private_path: str | Path) -> Path:
    """Where the public keys replaced by the key at `private_path` are kept."""
    return Path(private_path).parent / RETIRED_KEYS_DIR


def retire_key(signer: Signer, private_path: str | Path) -> Path:
    """Keep the public half of a key being replaced, named by its id; returns its path."""
    folder = retired_keys_dir(private_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{signer.key_id}.pub"
    write_atomically(path, signer.public_pem())
    return path


def load_retired_keys(private_path: str | Path) -> dict[str, Ed25519PublicKey]:
    """The retired public keys beside the key at `private_path`, by key id."""
    folder = retired_keys_dir(private_path)
    if not folder.is_dir():
        return {}
    keys: dict[str, Ed25519PublicKey] = {}
    for file in sorted(folder.glob("*.pub")):
        keys.update(Verifier.from_file(file).keys)
    return keys


def write_key_pair(private_path: str | Path, force: bool = False) -> tuple[Path, Path, Signer]:
    """Create the private key (owner-only) and the public key beside it (`.pub`); never
    overwrite an existing key unless `force`, since agents trust the old one. A replaced key's
    public half is kept among the retired keys."""
    private_path = Path(private_path)
    if private_path.exists() and not force:
        raise KeyFileError(
            f"{private_path} already exists and agents trust it; use --force to replace it, "
            f"then give every agent the new {private_path.with_suffix('.pub').name}"
        )
    if private_path.exists():
        try:
            retire_key(Signer.from_file(private_path), private_path)
        except KeyFileError as exc:
            log.warning("replaced signing key not kept among the retired keys: %s", exc)
    signer = Signer.generate()
    public_path = signer.save(private_path)
    return private_path, public_path, signer


class NextKeyExists(KeyFileError):
    """A key change is under way already: its next key must be promoted first (or replaced)."""

    def __init__(self, path: Path, key_id: str) -> None:
        super().__init__(f"{path} exists already (key {key_id}): finish that key change first")
        self.path, self.key_id = path, key_id


class NoNextKey(KeyFileError):
    """There is no next key to promote: a key change starts by making one."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"there is no next key at {path}")
        self.path = path


@dataclass(frozen=True)
class KeyChange:
    """One step of a key change: the key that signed before it, the one that matters after it,
    and the public key file agents are given."""

    old: Signer
    new: Signer
    public_path: Path


def trusted_public_pem(current: Signer, upcoming: Signer | None = None) -> str:
    """What agents must trust: the current key, and during a key change the next one too."""
    return current.public_pem() + (upcoming.public_pem() if upcoming else "")


def start_key_change(private_path: str | Path, next_path: str | Path,
                     force: bool = False) -> KeyChange:
    """Create the next key at `next_path` while the current key keeps signing, and put both
    public keys in the current key's `.pub`: agents given that file trust the next key before
    it signs anything. Refuses a second next key (NextKeyExists) unless `force`."""
    private_path, next_path = Path(private_path), Path(next_path)
    current = Signer.from_file(private_path)
    if next_path.exists() and not force:
        raise NextKeyExists(next_path, Signer.from_file(next_path).key_id)
    upcoming = Signer.generate()
    upcoming.save(next_path)
    public_path = private_path.with_suffix(".pub")
    write_atomically(public_path, trusted_public_pem(current, upcoming))
    return KeyChange(old=current, new=upcoming, public_path=public_path)


def promote_next_key(private_path: str | Path, next_path: str | Path) -> KeyChange:
    """Finish a key change: the next key replaces the current one, its own files go, the
    `.pub` holds only it, and the old key's public half is kept among the retired keys.
    Raises NoNextKey when no change was started."""
    private_path, next_path = Path(private_path), Path(next_path)
    if not next_path.exists():
        raise NoNextKey(next_path)
    upcoming, current = Signer.from_file(next_path), Signer.from_file(private_path)
    retire_key(current, private_path)  # before the old private key is gone
    # Until the .pub is rewritten it still lists both keys, so a crash in between leaves
    # agents trusting the key that now signs.
    os.replace(next_path, private_path)
    next_path.with_suffix(".pub").unlink(missing_ok=True)
    public_path = private_path.with_suffix(".pub")
    write_atomically(public_path, upcoming.public_pem())
    return KeyChange(old=current, new=upcoming, public_path=public_path)
