"""Provisioning: per-device broker credentials, Mosquitto's password file and ACL, and the
bundle a new gateway is installed from.

Central's database holds the accounts; every change renders both Mosquitto files from it
(atomically) and has Mosquitto reread them. A device may publish only under its own topics
and read only what is addressed to it; a SCADA reader may only read the alert topics;
central's account reads and writes the whole tree.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import logging
import os
import secrets
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from central_sync.config import CentralConfig
from central_sync.db.broker_accounts import BrokerAccount
from edge_agent.kernel.atomic_files import write_atomically
from edge_agent.kernel.contract import DEVICE_TOPICS, Topics

log = logging.getLogger(__name__)

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd writes ($7$: PBKDF2-HMAC-SHA512)
SALT_BYTES = 12  # mosquitto_passwd's salt length
PASSWORD_BYTES = 24  # 192 random bits (32 characters): beyond guessing, easy to paste
# A SIGHUP or a service reload returns at once; this covers a loaded host without leaving
# `central-sync device ...` hanging on a command that never returns.
RELOAD_TIMEOUT_S = 20.0
# A client certificate is valid from a little before it is made, so a gateway whose clock is
# somewhat behind still accepts it ...
CERTIFICATE_BACKDATE = datetime.timedelta(minutes=5)
# ... and for 825 days, the longest leaf validity the CA/Browser Forum and Apple allowed (2018).
CERTIFICATE_VALIDITY = datetime.timedelta(days=825)


class ProvisioningError(Exception):
    """A provisioning step failed; the message says what to do."""


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """A password_file entry's hash, as `mosquitto_passwd` makes it."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, PBKDF2_ITERATIONS)
    return (f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def password_file_text(accounts: list[BrokerAccount]) -> str:
    return "".join(f"{a.username}:{a.password_hash}\n" for a in accounts if a.active)


def acl_text(accounts: list[BrokerAccount], topics: Topics) -> str:
    """Mosquitto's ACL: central everything, each device its own topics (from the contract),
    each SCADA reader the alert topics, read only."""
    lines = ["# Written by central-sync from its database; change it with `central-sync device`.",
             "# Whoever is not named here may neither publish nor subscribe.", ""]
    for account in accounts:
        if account.active:
            lines += [*_account_acl(account, topics), ""]
    return "\n".join(lines)


def _account_acl(account: BrokerAccount, topics: Topics) -> list[str]:
    user = account.username
    if account.kind == "central":
        return ["# central-sync: the whole topic tree", f"user {user}",
                f"topic readwrite {topics.prefix}/#"]
    if account.kind == "scada":
        # Read only: a SCADA host that could publish here could clear or forge open alerts.
        return [f"# SCADA reader {user}: central's alerts, read only", f"user {user}",
                f"topic read {topics.all_alerts()}"]
    lines = [f"# device {user}", f"user {user}"]
    for spec in DEVICE_TOPICS:
        access = "write" if spec.direction.startswith("agent") else "read"
        lines.append(f"topic {access} {topics.device(user, spec.leaf)}")
    # Artifacts are shared by every device fetching them; they are signed, not secret.
    return [*lines, f"topic read {topics.all_artifacts()}"]


def reader_password_path(config: CentralConfig, name: str) -> Path:
    """Where `device add-reader` and `rotate` leave a SCADA reader's password (mode 600)."""
    return config.provisioning.bundle_dir / f"{name}.mqtt-password"


def write_reader_password(config: CentralConfig, name: str, password: str) -> Path:
    """A SCADA reader's password in its own file, readable by central-sync's user alone."""
    target = reader_password_path(config, name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, password + "\n", mode=0o600)
    except OSError as exc:
        raise ProvisioningError(f"cannot write {target}: {exc.strerror}; central-sync needs "
                                "write access to provisioning.bundle_dir") from None
    return target


def apply(config: CentralConfig, accounts: list[BrokerAccount]) -> str:
    """Write the password file and ACL, then have Mosquitto reread them; says what it did."""
    settings = config.provisioning
    topics = Topics(config.broker.topic_prefix)
    _write_atomically(settings.password_file, password_file_text(accounts))
    _write_atomically(settings.acl_file, acl_text(accounts, topics))
    if not settings.reload_command:
        return (f"wrote {settings.password_file} and {settings.acl_file}; Mosquitto rereads "
                "them on SIGHUP (mosquitto-accounts.path does it under systemd)")
    try:
        done = subprocess.run(settings.reload_command, shell=True, capture_output=True,
                              text=True, timeout=RELOAD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ProvisioningError(f"provisioning.reload_command did not finish in "
                                f"{RELOAD_TIMEOUT_S:.0f} s: {settings.reload_command}") from None
    if done.returncode != 0:
        raise ProvisioningError(
            f"the accounts are written, but reloading Mosquitto failed (exit "
            f"{done.returncode}): {done.stderr.strip() or done.stdout.strip()}; fix "
            f"provisioning.reload_command ({settings.reload_command}) or send Mosquitto a "
            "SIGHUP yourself")
    return f"wrote {settings.password_file} and {settings.acl_file}; Mosquitto reloaded"


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step, readable by Mosquitto's group (never by others)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text, mode=0o640)
    except OSError as exc:
        raise ProvisioningError(
            f"cannot write {path}: {exc.strerror}; central-sync needs write access to "
            f"{path.parent} (see provisioning in the configuration)") from None


@dataclass(frozen=True)
class Bundle:
    path: Path
    has_client_certificate: bool


def write_bundle(config: CentralConfig, account: BrokerAccount, password: str,
                 public_key_pem: bytes) -> Bundle:
    """DEVICE.tar.gz: the gateway's edge-agent.yaml with its credentials, the CA certificate
    and central's signing key, for `deploy/install-agent.sh`."""
    settings = config.provisioning
    device = account.username
    files: dict[str, tuple[bytes, int]] = {
        "central-signing.pub": (public_key_pem, 0o644),
        "mqtt-password": (password.encode() + b"\n", 0o600),
    }
    if settings.ca_file is not None:
        try:
            files["ca.crt"] = (settings.ca_file.read_bytes(), 0o644)
        except OSError as exc:
            raise ProvisioningError(
                f"cannot read provisioning.ca_file {settings.ca_file}: {exc.strerror}; make the "
                "CA with deploy/make-certs.sh, or set ca_file to the plant CA's certificate"
            ) from None
    client_certificate = settings.client_ca_key is not None
    if client_certificate:
        cert, key = client_certificate_pem(config, device)
        files["client.crt"], files["client.key"] = (cert, 0o644), (key, 0o600)
    files["edge-agent.yaml"] = (agent_config_text(config, account, client_certificate).encode(),
                                0o640)
    settings.bundle_dir.mkdir(parents=True, exist_ok=True)
    target = settings.bundle_dir / f"{device}.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        folder = tarfile.TarInfo(device)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o750
        archive.addfile(folder)
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(f"{device}/{name}")
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(buffer.getvalue())
    os.chmod(target, 0o600)
    return Bundle(target, client_certificate)


def agent_config_text(config: CentralConfig, account: BrokerAccount,
                      client_certificate: bool) -> str:
    settings = config.provisioning
    labels = ", ".join(account.labels)
    tls_lines = "  ca_file: ca.crt\n" if settings.ca_file is not None else ""
    if client_certificate:
        tls_lines += "  cert_file: client.crt         # mutual TLS (port 8884)\n"
        tls_lines += "  key_file: client.key\n"
    return f"""# edge-agent configuration for {account.username}, from `central-sync device add`.
# Add this gateway's cameras and OPC-UA servers under sources and pipelines (see
# deploy/edge-agent.example.yaml), then check it:  edge-agent check-config -c edge-agent.yaml
# Relative paths are relative to this file.

device_id: {account.username}
labels: [{labels}]
data_dir: /var/lib/edge-agent

broker:
  host: {settings.gateway_broker_host}
  port: {settings.gateway_broker_port}
  tls: true
{tls_lines}  username: {account.username}
  password_file: mqtt-password  # rotate with `central-sync device rotate {account.username}`
  topic_prefix: {config.broker.topic_prefix}
  protocol: "{config.broker.protocol}"

security:
  verify_signatures: true       # only models and commands central signed are accepted
  central_public_key: central-signing.pub

sources: []
pipelines: []
"""


def client_certificate_pem(config: CentralConfig, device: str) -> tuple[bytes, bytes]:
    """A client certificate for `device` (CN = its id) signed by the plant CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    settings = config.provisioning
    assert settings.client_ca_key is not None and settings.ca_file is not None
    try:
        ca_key = serialization.load_pem_private_key(settings.client_ca_key.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(settings.ca_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ProvisioningError(f"cannot use the CA ({settings.ca_file}, {settings.client_ca_key})"
                                f" for client certificates: {exc}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CERTIFICATE_BACKDATE)
            .not_valid_after(now + CERTIFICATE_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
