"""TLS for client streams: the certificate on disk, and the pyOpenSSL context.

With no certificate configured, a self-signed one for every hosted domain is
made on first start and kept in the data folder, so the embedded default runs
with TLS and nothing secret is ever shipped in the repository.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.logger import Logger

log = Logger()


def ensure_self_signed(directory: Path, domains: Sequence[str], now: datetime.datetime) -> tuple[Path, Path]:
    """Return (certificate, key) paths in *directory*, creating them when absent."""
    certificate_path = directory / "self-signed.crt"
    key_path = directory / "self-signed.key"
    if certificate_path.exists() and key_path.exists():
        return certificate_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(key_bytes)
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    log.info("tls.self_signed_created path={path} domains={domains}", path=str(certificate_path),
             domains=",".join(domains))
    return certificate_path, key_path


def server_context(certificate_path: Path, key_path: Path) -> ssl.CertificateOptions:
    """A TLS 1.2+ server context for the given PEM files."""
    pem = certificate_path.read_bytes() + b"\n" + key_path.read_bytes()
    certificate = ssl.PrivateCertificate.loadPEM(pem)
    chain = [
        ssl.Certificate.loadPEM(block).original
        for block in _pem_blocks(certificate_path.read_bytes())[1:]
    ]
    return ssl.CertificateOptions(
        privateKey=certificate.privateKey.original,
        certificate=certificate.original,
        extraCertChain=chain or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def _pem_blocks(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
