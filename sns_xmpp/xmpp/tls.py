"""TLS for client streams: the certificate on disk, and the server's TLS connections.

With no certificate configured, a self-signed one for every hosted domain is
made on first start and kept in the data folder, so the embedded default runs
with TLS and nothing secret is ever shipped in the repository. It is a leaf
(``CA:FALSE``, for server authentication only); one made by an earlier version as a CA
certificate is replaced on start.

Connections (STARTTLS on 5222, direct TLS on 5223) come from `ServerTLS`: it selects the
ALPN protocol ``xmpp-client`` when the client offers it (XEP-0368 asks for it on direct TLS;
Go's crypto/tls, Conversations and Monal offer it) and otherwise completes the handshake
without one. After STARTTLS the same: XEP-0368 asks nothing there, but a client that offers
``xmpp-client`` (Go's does) is speaking it, so confirming it is true and costs nothing.
Twisted's ``CertificateOptions`` alone aborts the handshake of every client that offers ALPN
(an ``internal_error`` alert: its select callback answers an empty protocol name when it has
no protocols to choose from), which locked out every Go client.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from sns_xmpp.observe.log_gate import GatedLogger

if TYPE_CHECKING:
    from OpenSSL.SSL import _NoOverlappingProtocols

log = GatedLogger()

# XEP-0368 / IANA's ALPN registry: the protocol id of a client-to-server XMPP stream.
ALPN_XMPP_CLIENT = b"xmpp-client"


def ensure_self_signed(directory: Path, domains: Sequence[str], now: datetime.datetime) -> tuple[Path, Path]:
    """Return (certificate, key) paths in *directory*, creating them when absent, and replacing
    them when they are a CA certificate an earlier version of this server made there."""
    certificate_path = directory / "self-signed.crt"
    key_path = directory / "self-signed.key"
    if certificate_path.exists() and key_path.exists():
        if not _old_self_made_ca(certificate_path, key_path):
            return certificate_path, key_path
        log.info("tls.self_signed_replaced path={path} reason={reason}", path=str(certificate_path),
                 reason="a CA certificate (CA:TRUE) made by an earlier version; now a leaf (CA:FALSE)")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = self_signed_leaf(key, domains, now)
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


def self_signed_leaf(key: ec.EllipticCurvePrivateKey, domains: Sequence[str],
                     now: datetime.datetime) -> x509.Certificate:
    """A self-signed server certificate for *domains*: an end entity (``CA:FALSE``) that may
    sign TLS handshakes and serve as a TLS server, and nothing else (RFC 5280 4.2.1)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _old_self_made_ca(certificate_path: Path, key_path: Path) -> bool:
    """Whether the pair is what earlier versions made in the data folder: one self-signed
    ``CA:TRUE`` certificate, without extended key usage, for the key beside it. Anything
    else (a certificate someone put there, a chain, a key of another pair, a file that does
    not parse) is left alone."""
    try:
        blocks = _pem_blocks(certificate_path.read_bytes())
        if len(blocks) != 1:
            return False
        certificate = x509.load_pem_x509_certificate(blocks[0])
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (ValueError, TypeError, x509.ExtensionNotFound):
        return False
    try:
        certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        return False
    except x509.ExtensionNotFound:
        pass
    if not constraints.ca or not _same_key(key, certificate):
        return False
    try:
        certificate.verify_directly_issued_by(certificate)  # self-signed: names and signature
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _same_key(key: Any, certificate: x509.Certificate) -> bool:
    def der(public_key: Any) -> bytes:
        return bytes(public_key.public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo))

    return der(key.public_key()) == der(certificate.public_key())


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> bytes | _NoOverlappingProtocols:
    """``xmpp-client`` when offered; otherwise no protocol, and the handshake goes on.

    RFC 7301 lets a server refuse a client whose protocols it does not speak; this server
    does not, because the stream's first bytes show what it speaks, and a client that sends
    ALPN on STARTTLS or names another protocol is still a client to answer, not to cut off.
    """
    return ALPN_XMPP_CLIENT if ALPN_XMPP_CLIENT in offered else SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The server side of every client TLS connection, STARTTLS and direct TLS alike: the
    context of Twisted's ``CertificateOptions`` (protocol versions, ciphers, session tickets),
    with this module's ALPN selection in place of Twisted's."""

    def __init__(self, options: ssl.CertificateOptions) -> None:
        self.options = options
        self._context: SSL.Context = options.getContext()
        self._context.set_alpn_select_callback(_select_alpn)

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:  # noqa: N802,N803
        return SSL.Connection(self._context)


def server_context(certificate_path: Path, key_path: Path) -> ServerTLS:
    """The TLS 1.2+ server side for the given PEM files."""
    pem = certificate_path.read_bytes() + b"\n" + key_path.read_bytes()
    certificate = ssl.PrivateCertificate.loadPEM(pem)
    chain = [
        ssl.Certificate.loadPEM(block).original
        for block in _pem_blocks(certificate_path.read_bytes())[1:]
    ]
    return ServerTLS(ssl.CertificateOptions(
        privateKey=certificate.privateKey.original,
        certificate=certificate.original,
        extraCertChain=chain or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    ))


def _pem_blocks(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
