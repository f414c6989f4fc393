"""Configuration of the sources: OPC-UA servers and cameras (`sources:` in the YAML file)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_agent.config.common import Name, StrictModel, require_unique
from edge_agent.kernel.configfile import resolve_path
from edge_agent.kernel.redaction import redact_credentials

# Validation context keys of a body from central (see config/remote.py): the body's file paths
# are the gateway's; with REMOTE_CHECK_ONLY (central checking at publish) they are not looked for.
REMOTE_BODY = "remote_body"
REMOTE_CHECK_ONLY = "remote_check_only"


class OpcUaSourceConfig(StrictModel):
    """Tags read from an OPC-UA server through a subscription, and setpoints written back."""

    type: Literal["opcua"] = "opcua"
    name: Name = Field(description="Name pipelines use to refer to this source")
    endpoint: str = Field(description="Server URL, e.g. opc.tcp://192.168.1.20:4840")
    nodes: dict[str, str] = Field(
        min_length=1,
        description="Tag name -> NodeId or browse path, e.g. zone2_temp_c: "
        "'ns=2;s=line1.zone2_temp_c' or '/Objects/2:Line1/2:zone2_temp_c'",
    )
    sampling_interval_ms: int = Field(500, ge=0, description="Server-side sampling interval")
    deadband: float | None = Field(
        None, gt=0, description="Absolute deadband in tag units: smaller changes are not sent"
    )
    reconnect_max_backoff_s: float = Field(
        4.0, gt=0, le=8.0,
        description="Longest wait between retries; kept short so data resumes within 10 s of "
        "the server's return",
    )
    history_s: float = Field(
        600.0, ge=0, description="Seconds of values kept per tag for windowed features"
    )
    setpoints: dict[str, str] = Field(
        default_factory=dict,
        description="Tag name -> writable NodeId or browse path of its setpoint, for write-back",
    )
    security_policy: Literal["None", "Basic256Sha256"] = Field(
        "None", description="Basic256Sha256 needs certificate and private_key"
    )
    security_mode: Literal["Sign", "SignAndEncrypt"] = Field(
        "SignAndEncrypt", description="Message security when security_policy is not None"
    )
    certificate: Path | None = Field(None, description="This client's certificate (PEM or DER)")
    private_key: Path | None = Field(None, description="This client's private key (PEM)")
    server_certificate: Path | None = Field(
        None, description="Server certificate to trust; without it the certificate the server "
        "presents on the first connection is kept in <data_dir>/opcua-trust/<name>.der and a "
        "different one is refused later (delete that file to accept a replaced certificate)"
    )
    username: str | None = Field(None, description="User name; anonymous when unset")
    password: SecretStr | None = Field(None, description="Password; prefer password_env")
    password_env: str | None = Field(
        None, description="Name of the environment variable that holds the password"
    )
    allow_insecure_password: bool = Field(
        False, description="Send the password although security_policy is None, where anyone "
        "on the network can read it; only for a server that offers no security policy")
    allow_insecure_write: bool = Field(
        False, description="Let `mode: auto` write setpoints although the session is not "
        "secured (security_policy None) or not authenticated (no username), where anyone on "
        "the network could alter or forge the writes")

    @field_validator("endpoint")
    @classmethod
    def _opc_url(cls, value: str) -> str:
        if not value.startswith("opc.tcp://"):
            raise ValueError("must start with opc.tcp://")
        return value

    @field_validator("nodes", "setpoints")
    @classmethod
    def _node_addresses(cls, value: dict[str, str]) -> dict[str, str]:
        for tag, address in value.items():
            problem = opcua_address_problem(address)
            if problem:
                raise ValueError(f"tag {tag}: {problem}")
        return value

    @field_validator("certificate", "private_key", "server_certificate")
    @classmethod
    def _security_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        context = info.context or {}
        if context.get(REMOTE_BODY):
            # From central: a path on the gateway, relative to nothing central knows; central
            # checks the body without the gateway's files, the gateway checks they exist.
            if not value.is_absolute():
                raise ValueError(f"{value} is relative; in a configuration from central give "
                                 "the absolute path of the file on the gateway")
            if context.get(REMOTE_CHECK_ONLY):
                return value
        path = resolve_path(value, context)
        if not path.is_file():
            raise ValueError(f"file {path} does not exist; give the path of a PEM or DER file")
        return path

    @model_validator(mode="after")
    def _security_complete(self) -> OpcUaSourceConfig:
        has_cert, has_key = self.certificate is not None, self.private_key is not None
        if self.security_policy != "None" and not (has_cert and has_key):
            raise ValueError(
                f"security_policy {self.security_policy} needs both certificate and private_key: "
                "set them to this client's certificate and key files"
            )
        if has_cert != has_key:
            raise ValueError("certificate and private_key go together: set both or neither")
        if self.password is not None and self.password_env is not None:
            raise ValueError("set password or password_env, not both")
        has_password = self.password is not None or self.password_env is not None
        if has_password and not self.username:
            raise ValueError("a password needs a username: set username")
        if has_password and self.security_policy == "None" and not self.allow_insecure_password:
            raise ValueError(
                f"source {self.name!r}: security_policy None would send the password in clear; "
                "set security_policy: Basic256Sha256 with certificate and private_key, or set "
                "allow_insecure_password: true to accept that risk")
        return self

    def insecure_write_problem(self) -> str | None:
        """Why automatic writes to this server would travel over an unprotected session."""
        if self.allow_insecure_write:
            return None
        if self.security_policy == "None" or not self.username:
            who = f"user {self.username}" if self.username else "anonymous"
            return (f"source {self.name!r} is not secured (security_policy "
                    f"{self.security_policy}, {who}): "
                    "automatic setpoint writes could be altered or forged on the network; set "
                    "security_policy: Basic256Sha256 with certificate and private_key and a "
                    "username, or set allow_insecure_write: true on the source to accept that "
                    "risk")
        return None

    def summary(self) -> str:
        """One line for `edge-agent check-config`."""
        return (f"source:    {self.name} {redact_credentials(self.endpoint)} "
                f"({len(self.nodes)} tags)")


def opcua_address_problem(address: str) -> str | None:
    """Why `address` is neither a NodeId string nor a browse path like /Objects/2:Line1/2:x."""
    if address.startswith("/"):
        parts = address.strip("/").split("/")
        for part in parts:
            ns, sep, name = part.rpartition(":")
            if not name or (sep and not ns.isdigit()):
                return (f"browse path {address!r} has a bad element {part!r}; "
                        "write elements as NamespaceIndex:BrowseName, e.g. 2:Line1")
        return None
    if not _NODE_ID.fullmatch(address):
        return (f"{address!r} is neither a NodeId (e.g. 'ns=2;s=line1.x', 'i=2258') nor a "
                "browse path starting with / (e.g. '/Objects/2:Line1/2:zone2_temp_c')")
    return None


# The OPC-UA NodeId string form (Part 6, 5.3.1.10): optional namespace, then the identifier.
_NODE_ID = re.compile(r"(ns=\d+;|nsu=[^;]+;)?(i=\d+|s=.+|g=[0-9a-fA-F-]{36}|b=.+)")

class RoiConfig(StrictModel):
    """A region of the frame judged on its own (a crop rectangle, in frame pixels)."""

    name: Name
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class CameraSourceConfig(StrictModel):
    """Frames from a video file, an image folder, a USB camera or an RTSP/HTTP MJPEG stream."""

    type: Literal["camera"]
    name: Name = Field(description="Name pipelines use to refer to this camera")
    url: str = Field(description="A video file or folder path (file:// optional), usb:0 or "
                     "/dev/video0, rtsp://..., or http(s)://... for MJPEG")
    loop: bool = Field(True, description="Files and folders: start again at the end")
    native_rate: bool = Field(
        True, description="Video files play at their frame rate, image folders at 10 frames/s; "
        "false: as fast as the pipelines take frames (each decoded only when wanted)")
    max_fps: float | None = Field(None, gt=0, description="Grab at most this many frames/s")
    decode_width: int | None = Field(
        None, ge=16, description="Shrink frames to this width right after decoding (JPEG "
        "folders decode at 1/2, 1/4 or 1/8 size when that still reaches it)")
    rois: list[RoiConfig] = Field(
        default_factory=list, description="Regions judged separately; none: the whole frame")
    reconnect_max_backoff_s: float = Field(10.0, gt=0, description="Longest wait between retries")
    password_env: str | None = Field(
        None, description="Name of the environment variable that holds the camera's password, "
        "for a network URL that names only the user (rtsp://admin@192.168.1.30/stream); the "
        "password joins the URL only when the stream is opened, never in status or logs")

    @model_validator(mode="after")
    def _unique_rois(self) -> CameraSourceConfig:
        require_unique([r.name for r in self.rois], f"camera {self.name!r} ROI")
        return self

    @model_validator(mode="after")
    def _password_from_environment(self) -> CameraSourceConfig:
        if self.password_env is None:
            return self
        parts = urlsplit(self.url)
        if parts.scheme not in NETWORK_CAMERA_SCHEMES:
            raise ValueError(f"camera {self.name!r}: password_env applies to network cameras "
                             f"({', '.join(NETWORK_CAMERA_SCHEMES)} URLs); remove it")
        if parts.password is not None:
            raise ValueError(f"camera {self.name!r}: the url holds a password and password_env "
                             "is set; remove the password from the url "
                             f"({redact_credentials(self.url)})")
        if not parts.username:
            raise ValueError(f"camera {self.name!r}: password_env needs the user name in the "
                             "url, e.g. rtsp://admin@192.168.1.30/stream")
        return self

    def summary(self) -> str:
        """One line for `edge-agent check-config`."""
        rois = ", ".join(r.name for r in self.rois) or "whole frame"
        return f"camera:    {self.name} {redact_credentials(self.url)} (regions: {rois})"


NETWORK_CAMERA_SCHEMES = ("rtsp", "rtsps", "http", "https")


def _source_type(value: Any) -> str:
    kind = value.get("type", "opcua") if isinstance(value, dict) else getattr(value, "type", "")
    return kind if kind in ("opcua", "camera") else "opcua"


SourceConfig = Annotated[
    Annotated[OpcUaSourceConfig, Tag("opcua")] | Annotated[CameraSourceConfig, Tag("camera")],
    Discriminator(_source_type),
]

