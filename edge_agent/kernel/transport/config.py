"""How to reach the MQTT broker: the configuration model, importable without paho."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edge_agent.kernel.configfile import resolve_path


class BrokerCredentialsError(Exception):
    """The broker password cannot be read; the message says which file and why."""


DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # matches max_packet_size in deploy/mosquitto
# Matches max_inflight_messages in deploy/mosquitto: what a client holds in memory is at most
# this many messages (each at most max_message_bytes) waiting to be handled.
DEFAULT_RECEIVE_MAXIMUM = 20


class BrokerConfig(BaseModel):
    """How to reach the MQTT broker (Mosquitto in production)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="1883 plain, 8883 TLS")
    username: str | None = Field(None, description="Broker user; ${ENV_VAR} allowed")
    password: str | None = Field(None, description="Broker password; use ${ENV_VAR}")
    password_file: Path | None = Field(
        None, description="File holding the broker password (mode 600), instead of password; "
        "relative paths are relative to this file")
    tls: bool = Field(False, description="Connect with TLS")
    ca_file: Path | None = Field(
        None, description="CA certificate for TLS (PEM); the system's CAs when unset")
    cert_file: Path | None = Field(
        None, description="Client certificate (PEM), for a listener that requires one")
    key_file: Path | None = Field(None, description="Private key of cert_file (PEM)")
    protocol: Literal["3.1.1", "5"] = Field("5", description="MQTT protocol version")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive")
    topic_prefix: str = Field("edge-mlops", description="Root of the topic tree")
    client_id: str | None = Field(None, description="Defaults to the device id / central id")
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES, ge=64 * 1024,
        description="Received messages larger than this are dropped unread")
    receive_maximum: int = Field(
        DEFAULT_RECEIVE_MAXIMUM, ge=1, le=65535,
        description="Received messages held at once, waiting to be handled; each is "
        "acknowledged once handled and the broker keeps the rest (asked as MQTT 5's Receive "
        "Maximum; Mosquitto's max_inflight_messages for MQTT 3.1.1)")

    @field_validator("password_file", "ca_file", "cert_file", "key_file")
    @classmethod
    def _existing_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None or str(value) == "":
            return None
        path = resolve_path(value, info.context)
        # The password file may come later (`central-sync broker init` writes central's).
        if info.field_name != "password_file" and not path.is_file():
            raise ValueError(f"file {path} does not exist; give the path of the {info.field_name}")
        return path

    @model_validator(mode="after")
    def _consistent(self) -> BrokerConfig:
        if self.password and self.password_file:
            raise ValueError("set password or password_file, not both")
        if (self.password or self.password_file) and not self.username:
            raise ValueError("a password needs a username: set broker.username")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        if (self.cert_file or self.ca_file) and not self.tls:
            raise ValueError("ca_file and cert_file are for TLS: set tls: true (port 8883)")
        return self

    def secret(self) -> str | None:
        """The password, read from password_file when it is given there."""
        if self.password_file is None:
            return self.password or None
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BrokerCredentialsError(
                f"cannot read broker.password_file {self.password_file}: {exc.strerror}; on a "
                "gateway, copy mqtt-password from the device's bundle (`central-sync device "
                "add`); for central, run `central-sync broker init`"
            ) from None

