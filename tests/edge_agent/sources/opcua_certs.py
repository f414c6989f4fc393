"""Self-signed OPC-UA application certificates for tests, written as PEM files."""

from __future__ import annotations

import socket
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID


def write_app_certificate(folder: Path, name: str, application_uri: str,
                          server: bool = False) -> tuple[Path, Path]:
    """Create `<name>.pem` and `<name>-key.pem` in `folder`; return (certificate, key) paths."""
    key = cert_gen.generate_private_key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        name,
        {"organizationName": "edge-mlops tests"},
        [
            x509.UniformResourceIdentifier(application_uri),
            x509.DNSName(socket.gethostname()),
            x509.DNSName("localhost"),
        ],
        extended=[usage],
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path
