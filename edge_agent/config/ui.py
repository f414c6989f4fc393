"""The operator page's section of the agent's configuration (`ui:`): where it listens, which
names it answers to, its login and its TLS certificate."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from edge_agent.config.common import StrictModel
from edge_agent.kernel.configfile import resolve_path

MIN_SECRET_CHARS = 12  # a four-digit password fell to guessing in 20 s


class UiConfig(StrictModel):
    """The operator page on the gateway (see README 'Operator page')."""

    host: str = Field("127.0.0.1", description="Address of the gateway's operator page; any "
                      "other than a loopback address needs ui.token or ui.password")
    port: int = Field(8080, ge=0, le=65535, description="0 turns the page off")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Further names the page is opened by (the Host "
        "header), e.g. gw-7.plant.local or the name a reverse proxy forwards; ui.host, "
        "localhost, loopback addresses and the address a request arrived on are always "
        "accepted; any other name is refused (DNS rebinding)")
    token: SecretStr | None = Field(
        None, description="Needed by every request but /healthz: as `Authorization: Bearer` "
        f"or typed once into the page's login form; at least {MIN_SECRET_CHARS} characters")
    password: SecretStr | None = Field(
        None, description="Typed into the page's login form (or sent as Bearer) instead of "
        f"the token; at least {MIN_SECRET_CHARS} characters")
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) to serve the page over HTTPS, with "
        "tls_key_file; relative paths are relative to this file")
    tls_key_file: Path | None = Field(
        None, description="PEM private key of tls_cert_file")
    refresh_s: float = Field(5.0, ge=1, description="Seconds between the page's live updates")
    tag_names: dict[str, str] = Field(
        default_factory=dict, description="Tag -> words on the page, e.g. zone2_temp_c: "
        "Zone 2 temperature; default: made from the tag name")
    trend_tags: list[str] | None = Field(
        None, description="Tags charted beside the prediction; default: those of the latest "
        "recommendation, else the first four inputs")

    @field_validator("token", "password")
    @classmethod
    def _long_enough(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(
                f"ui.{info.field_name} has {len(value.get_secret_value())} characters; it must "
                f"have at least {MIN_SECRET_CHARS} (a short one is guessed in minutes): make one "
                "with `openssl rand -base64 18`")
        return value

    @field_validator("tls_cert_file", "tls_key_file")
    @classmethod
    def _relative_to_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, info.context)

    @model_validator(mode="after")
    def _login_when_reachable(self) -> UiConfig:
        if self.port and not is_loopback(self.host) and not self.login_required:
            raise ValueError(
                f"ui.host {self.host!r} lets other machines open the operator page, where "
                "recommendations are answered: set ui.token (or ui.password) so it asks for a "
                "login, or set ui.host to 127.0.0.1")
        return self

    @model_validator(mode="after")
    def _certificate_with_key(self) -> UiConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("ui.tls_cert_file and ui.tls_key_file go together: set both to "
                             "serve the page over HTTPS, or neither")
        return self

    @property
    def login_required(self) -> bool:
        return bool(self.token or self.password)

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (names other than localhost count as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
