"""Central's configuration: one YAML file, validated by these models (which document it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from central_sync.alert_rules import AlertsConfig
from central_sync.db.connection import POSTGRES_PREFIXES, SQLITE_PREFIX, redact
from central_sync.db.diagnostics import DEFAULT_CLOCK_WARN_OFFSET_S
from edge_agent.kernel.configfile import load_yaml_model, resolve_path
from edge_agent.kernel.contract import ID_PATTERN
from edge_agent.kernel.signing import Signer, trusted_public_pem
from edge_agent.kernel.transport import BrokerConfig

EXAMPLE = "deploy/central-sync.example.yaml"


class IngestLimits(BaseModel):
    """What one device may hold or ask of central: keeps one gateway from starving the rest."""

    model_config = ConfigDict(extra="forbid")

    pending_record_bytes_per_device: int = Field(
        256 * 1024 * 1024, ge=64 * 1024,
        description="Bytes of large records a device may have partly received at central "
        "(counted as pieces x piece size); pieces of a further record are refused until some "
        "complete or expire, and the device sends them again later")
    unfinished_record_expiry_s: float = Field(
        3600.0, gt=0, description="A large record with no new piece for this long is "
        "dropped (logged and counted); the device sends it again if it still has it")
    chunks_per_s_per_device: float = Field(
        64.0, gt=0, description="Artifact chunks central serves each device per second")
    chunk_burst_per_device: int = Field(
        128, ge=1, description="Artifact chunks a device may ask for at once before "
        "chunks_per_s_per_device applies; further requests are refused and asked again")


class WebConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address of central's web page and API")
    port: int = Field(8000, ge=0, le=65535, description="0 turns the web server off")
    password_checks_at_once: int = Field(
        2, ge=1, le=64, description="Logins whose password is checked at the same time "
        "(each check takes 64 MiB for a moment); further attempts get 503 at once and try "
        "again")
    max_upload_bytes: int = Field(
        512 * 2**20, ge=1024 * 1024, description="Largest upload of a model version from the "
        "model page (ONNX and metadata together); refused while it streams in, so a larger "
        "one never reaches the disk whole")
    public_url: str = Field(
        "", description="Address people reach central's pages at (https://central.plant."
        "example); notifications link to an alert's page with it. Empty: no link")


class ModelsConfig(BaseModel):
    """What a model version must pass before it reaches a line."""

    model_config = ConfigDict(extra="forbid")

    require_approval: bool = Field(
        True, description="Deploys and rollouts take only versions that were evaluated and "
        "then approved by a second account (engineer or admin, not the publisher); false: "
        "any published version that was not rejected or retired")
    max_evaluation_items: int = Field(
        20_000, ge=1, le=1_000_000, description="Items (images, or recorded predictions of "
        "a process model) an evaluation runs at most; a larger test split is sampled evenly")


class ClockConfig(BaseModel):
    """How central watches the gateways' clocks: a record's time is only as good as its
    gateway's clock."""

    model_config = ConfigDict(extra="forbid")

    probe_interval_s: float = Field(
        60.0, ge=1, description="Central measures a gateway's clock offset at most this often "
        "(a probe on the gateway's status, answered with its time)")
    warn_offset_s: float = Field(
        DEFAULT_CLOCK_WARN_OFFSET_S, gt=0, description="A gateway whose clock is further "
        "than this from central's is shown with a warning, and its records are flagged as "
        "having suspect times (as is a record made further than this in central's future)")


class ProvisioningConfig(BaseModel):
    """Where `central-sync device add|remove|rotate` keeps Mosquitto's accounts, and what the
    bundle for a new gateway says."""

    model_config = ConfigDict(extra="forbid")

    password_file: Path = Field(
        Path("/etc/mosquitto/edge-mlops/passwd"),
        description="Mosquitto's password_file, written by central-sync")
    acl_file: Path = Field(
        Path("/etc/mosquitto/edge-mlops/acl"), description="Mosquitto's acl_file, written by "
        "central-sync")
    reload_command: str | None = Field(
        None, description="Shell command that makes Mosquitto reread both files (SIGHUP), run "
        "after each change; unset where something else does it (mosquitto-accounts.path "
        "under systemd, the compose file's watcher)")
    bundle_dir: Path = Field(
        Path("var/central/bundles"), validate_default=True,
        description="Where device bundles (DEVICE.tar.gz) and SCADA readers' passwords "
        "(NAME.mqtt-password) are written")
    gateway_broker_host: str = Field(
        "mqtt.plant.example", description="Broker host name the gateways use; it must be "
        "in the server certificate (deploy/make-certs.sh server NAME)")
    gateway_broker_port: int = Field(8883, ge=1, le=65535, description="TLS port for gateways")
    ca_file: Path | None = Field(
        Path("/etc/mosquitto/edge-mlops/tls/ca.crt"),
        description="CA certificate the gateways trust, copied into each bundle; unset for a "
        "broker whose certificate a public CA signed")
    client_ca_key: Path | None = Field(
        None, description="The CA's private key: when set, each bundle also holds a client "
        "certificate for the mutual-TLS listener (8884)")

    @field_validator("password_file", "acl_file", "bundle_dir", "ca_file", "client_ca_key")
    @classmethod
    def _relative_to_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, info.context)


class CentralConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    central_id: Annotated[str, Field(pattern=ID_PATTERN)] = Field(
        "central", description="MQTT client id of this central process"
    )
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    database_url: str = Field(
        "sqlite:///var/central/central.db", validate_default=True,
        description="sqlite:///PATH (relative to this file) or an absolute sqlite:////PATH; "
        "or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (the `postgres` extra), which "
        "several central-sync processes can share",
    )
    artifact_dir: Path = Field(
        Path("var/central/artifacts"), validate_default=True,
        description="Model artifacts, stored by sha256",
    )
    chunk_size_bytes: int = Field(
        256 * 1024, ge=1024, le=4 * 1024 * 1024, description="Artifact chunk size on the wire"
    )
    offline_after_s: float = Field(
        120.0, gt=0, description="A device silent this long shows as offline"
    )
    ingest_group: Annotated[str, Field(pattern=ID_PATTERN)] | None = Field(
        None, description="Scale-out: central-sync processes with the same group (each with its "
        "own central_id, all on one PostgreSQL database) share the devices' messages through "
        "an MQTT shared subscription ($share/GROUP/...), each message going to one of them")
    web: WebConfig = Field(default_factory=WebConfig)
    ingest: IngestLimits = Field(default_factory=IngestLimits)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    clock: ClockConfig = Field(default_factory=ClockConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    provisioning: ProvisioningConfig = Field(
        default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    signing_key_path: Path = Field(
        Path("var/central/keys/signing.key"), validate_default=True,
        description="Ed25519 key that signs manifests and commands (`central-sync keys init`); "
        "its signing.pub beside it goes to every agent",
    )

    @field_validator("artifact_dir", "signing_key_path")
    @classmethod
    def _relative_to_file(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info.context)

    @field_validator("database_url")
    @classmethod
    def _sqlite_relative_to_file(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith(POSTGRES_PREFIXES):
            return value
        if not value.startswith(SQLITE_PREFIX):
            raise ValueError("use sqlite:///PATH (one file, the default) or "
                             "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        path = resolve_path(Path(value[len(SQLITE_PREFIX):]), info.context)
        return SQLITE_PREFIX + str(path)

    def signer(self) -> Signer:
        """The signing key; KeyFileError says how to create it when it is missing."""
        return Signer.from_file(self.signing_key_path)

    @property
    def next_signing_key_path(self) -> Path:
        """Where `central-sync keys next` keeps the key that replaces the current one."""
        return self.signing_key_path.with_name(f"{self.signing_key_path.stem}.next.key")

    def next_signer(self) -> Signer | None:
        path = self.next_signing_key_path
        return Signer.from_file(path) if path.exists() else None

    def trusted_public_pem(self) -> str:
        """What agents must trust: the current key, and during a key change the next one."""
        return trusted_public_pem(self.signer(), self.next_signer())

    @property
    def database_name(self) -> str:
        """The database for people: the SQLite file, or the URL without its password."""
        return redact(self.database_url.removeprefix(SQLITE_PREFIX))


def load_central_config(path: str | Path) -> CentralConfig:
    return load_yaml_model(path, CentralConfig, example=EXAMPLE)
