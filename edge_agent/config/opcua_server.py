"""The agent's own OPC-UA server for HMIs and SCADA (`opcua_server:`), off unless configured."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from edge_agent.config.common import StrictModel
from edge_agent.kernel.configfile import resolve_path

HASH_SCHEME = "pbkdf2_sha256"
HASH_ITERATIONS = 200_000  # about 0.1 s per login on a gateway: slow to guess, quick to use


def hash_password(password: str, iterations: int = HASH_ITERATIONS) -> str:
    """The `password_hash` of `password`: pbkdf2_sha256$<iterations>$<salt hex>$<digest hex>."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{HASH_SCHEME}${iterations}${salt.hex()}${digest.hex()}"


def _split_hash(value: str) -> tuple[int, bytes, bytes]:
    scheme, iterations, salt, digest = value.split("$")
    if scheme != HASH_SCHEME:
        raise ValueError(f"unknown scheme {scheme!r}")
    return int(iterations), bytes.fromhex(salt), bytes.fromhex(digest)


class OpcUaServerUser(StrictModel):
    """One login of the OPC-UA server: a name and its password, from the environment or hashed."""

    name: str = Field(min_length=1, max_length=64)
    password_env: str | None = Field(
        None, description="Environment variable holding the password (read at start)")
    password_hash: str | None = Field(
        None, description="pbkdf2_sha256$... as printed by "
        "`python -c 'from edge_agent.config.opcua_server import hash_password; "
        "print(hash_password(\"...\"))'`")

    @model_validator(mode="after")
    def _one_password(self) -> OpcUaServerUser:
        if (self.password_env is None) == (self.password_hash is None):
            raise ValueError(f"opcua_server user {self.name!r}: set password_env or "
                             "password_hash (one of them)")
        if self.password_hash is not None:
            try:
                _split_hash(self.password_hash)
            except ValueError as exc:
                raise ValueError(f"opcua_server user {self.name!r}: password_hash is not "
                                 f"{HASH_SCHEME}$<iterations>$<salt>$<digest> ({exc}); make "
                                 "one with edge_agent.config.opcua_server.hash_password") from exc
        return self

    def checker(self) -> PasswordCheck:
        """What checks this user's password; raises when password_env is not set."""
        if self.password_hash is not None:
            return PasswordCheck(*_split_hash(self.password_hash))
        assert self.password_env is not None
        password = os.environ.get(self.password_env)
        if not password:
            raise ValueError(f"opcua_server user {self.name!r}: environment variable "
                             f"{self.password_env} is not set; set it or use password_hash")
        return PasswordCheck.of(password)


class PasswordCheck:
    """A salted digest of one password; `matches` compares in constant time."""

    def __init__(self, iterations: int, salt: bytes, digest: bytes) -> None:
        self._iterations, self._salt, self._digest = iterations, salt, digest

    @classmethod
    def of(cls, password: str) -> PasswordCheck:
        return cls(*_split_hash(hash_password(password, iterations=1)))

    def matches(self, password: str | None) -> bool:
        if password is None:
            return False
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), self._salt, self._iterations)
        return hmac.compare_digest(digest, self._digest)


class OpcUaServerConfig(StrictModel):
    """Where the server listens, its certificate, and who may log in."""

    host: str = Field("0.0.0.0", description="Address to listen on")
    port: int = Field(4840, ge=1, le=65535)
    path: str = Field("edge-agent", description="Endpoint path: opc.tcp://host:port/<path>")
    security_policy: Literal["Basic256Sha256"] = Field(
        "Basic256Sha256", description="Sign-and-encrypt only; no unsecured endpoint is offered")
    certificate: Path = Field(description="Server certificate (PEM or DER); its URI must be "
                              "application_uri; relative paths are relative to this file")
    private_key: Path = Field(description="Private key of the certificate (PEM)")
    application_uri: str = Field("urn:edge-mlops:edge-agent",
                                 description="Must match the certificate's URI")
    trusted_clients: Path | None = Field(
        None, description="Folder of client certificates (PEM or DER) allowed to connect; "
        "unset: any client certificate, the user login still required")
    users: list[OpcUaServerUser] = Field(default_factory=list)
    anonymous: bool = Field(False, description="Also let clients in without a user name")
    update_interval_s: float = Field(1.0, ge=0.1, le=60,
                                     description="Seconds between refreshes of the values")

    @field_validator("certificate", "private_key", "trusted_clients")
    @classmethod
    def _relative_to_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, info.context)

    @model_validator(mode="after")
    def _someone_can_log_in(self) -> OpcUaServerConfig:
        if not self.users and not self.anonymous:
            raise ValueError("opcua_server has no users and anonymous is off, so no client "
                             "could connect: add users (name with password_env or "
                             "password_hash), or set anonymous: true")
        names = [u.name for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError("opcua_server users: each name once")
        return self
