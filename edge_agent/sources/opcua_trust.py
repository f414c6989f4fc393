"""Trust on first use for an OPC-UA server configured without `server_certificate`: the
certificate it presents first is kept in the agent's data folder, and a different one later is
refused until a person deletes that file (or configures the certificate)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from asyncua import Client, ua

from edge_agent.kernel.atomic_files import write_atomically

log = logging.getLogger(__name__)

TRUST_FOLDER = "opcua-trust"  # under the agent's data_dir: one <source name>.der per server


class UntrustedServerCertificate(Exception):
    """The server presents a certificate other than the one trusted for it."""


def trust_file(trust_dir: Path, source_name: str) -> Path:
    return trust_dir / f"{source_name}.der"


async def trusted_server_certificate(client: Client, policy_uri: str,
                                     mode: ua.MessageSecurityMode, pin: Path) -> Path:
    """The file of the certificate the server presents for this policy and mode, once it is
    the trusted one; the first certificate ever seen is trusted and written to `pin`."""
    endpoints = await client.connect_and_get_server_endpoints()
    endpoint = Client.find_endpoint(endpoints, mode, policy_uri)
    check_or_pin(first_der_certificate(endpoint.ServerCertificate), pin, endpoint.EndpointUrl)
    return pin


def check_or_pin(presented: bytes, pin: Path, server: str) -> None:
    """Keep `presented` in `pin` if nothing is trusted yet; refuse it if it differs from it."""
    if not pin.exists():
        pin.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(pin, presented)
        log.warning("server certificate trusted on first use server=%s sha256=%s file=%s",
                    server, fingerprint(presented), pin)
        return
    trusted = pin.read_bytes()
    if trusted != presented:
        raise UntrustedServerCertificate(
            f"the server {server} presents a certificate (SHA-256 {fingerprint(presented)}) "
            f"other than the one trusted for it (SHA-256 {fingerprint(trusted)}, kept in "
            f"{pin}); if the server's certificate was replaced on purpose, delete {pin} to "
            "trust the new one, or set server_certificate to it")


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def first_der_certificate(data: bytes) -> bytes:
    """The first certificate of a DER chain (servers may send theirs followed by its issuers)."""
    if len(data) < 2 or data[0] != 0x30:  # not a DER SEQUENCE: compare it as it is
        return data
    length = data[1]
    if length < 0x80:
        return data[:2 + length]
    size = length & 0x7F
    return data[:2 + size + int.from_bytes(data[2:2 + size], "big")]
