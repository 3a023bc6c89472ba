"""The server's TLS: ALPN never costs a client its handshake, and the self-made certificate is a
server leaf (replacing the CA certificate earlier versions made, and nothing else)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import protocol, ssl
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test.iosim import connectedServerAndClient
from zope.interface import implementer

from sns_xmpp.xmpp.tls import ensure_self_signed, server_context

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
DOMAINS = ["localhost", "example.org"]


@implementer(IHandshakeListener)
class Side(protocol.Protocol):
    """One end of a TLS connection: whether its handshake completed and whether it was lost."""

    def __init__(self) -> None:
        self.handshake_done = False
        self.lost: Any = None

    def handshakeCompleted(self) -> None:  # noqa: N802 - Twisted's name
        self.handshake_done = True

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted's name
        self.lost = reason


def handshake(tmp_path: Path, offered: Sequence[bytes] | None) -> tuple[TLSMemoryBIOProtocol, Side, Side]:
    """A TLS handshake in memory between the server's TLS and a client offering *offered* over ALPN."""
    certificate, key = ensure_self_signed(tmp_path, DOMAINS, NOW)
    sides = Side(), Side()
    server_factory = TLSMemoryBIOFactory(server_context(certificate, key), False,
                                         protocol.Factory.forProtocol(lambda: sides[0]))
    # The client verifies the certificate (pinned as its own trust root) and the name, as a
    # client that has accepted the self-made certificate does.
    client_options = ssl.optionsForClientTLS("example.org", ssl.Certificate.loadPEM(certificate.read_bytes()),
                                             acceptableProtocols=offered)
    client_factory = TLSMemoryBIOFactory(client_options, True, protocol.Factory.forProtocol(lambda: sides[1]))
    client, server, pump = connectedServerAndClient(lambda: server_factory.buildProtocol(None),
                                                    lambda: client_factory.buildProtocol(None))
    pump.flush()
    return client, sides[0], sides[1]


@pytest.mark.parametrize(("offered", "selected"), [
    ([b"xmpp-client"], b"xmpp-client"),  # Go's crypto/tls, Conversations, Monal on direct TLS
    ([b"h2", b"xmpp-client"], b"xmpp-client"),
    ([b"http/1.1"], None),  # not ours: no protocol, but the handshake completes
    (None, None),  # no ALPN at all (slixmpp, most STARTTLS clients)
])
def test_alpn_selects_xmpp_client_and_never_aborts_the_handshake(
        tmp_path: Path, offered: list[bytes] | None, selected: bytes | None) -> None:
    """A client offering ALPN completes its handshake; xmpp-client is chosen when offered
    (XEP-0368). Twisted's CertificateOptions alone answered an offer with internal_error."""
    client, server_side, client_side = handshake(tmp_path, offered)
    assert (server_side.handshake_done, client_side.handshake_done) == (True, True)
    assert (server_side.lost, client_side.lost) == (None, None)
    assert client.negotiatedProtocol == selected


def test_the_self_made_certificate_is_a_server_leaf(tmp_path: Path) -> None:
    """Not a CA: CA:FALSE, may sign handshakes and authenticate a TLS server, nothing more, and
    names its key; its names are the hosted domains."""
    certificate_path, key_path = ensure_self_signed(tmp_path, DOMAINS, NOW)
    certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    extensions = certificate.extensions
    constraints = extensions.get_extension_for_class(x509.BasicConstraints)
    assert (constraints.critical, constraints.value.ca) == (True, False)
    usage = extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.digital_signature, usage.key_cert_sign, usage.crl_sign) == (True, False, False)
    assert list(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())
    names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == DOMAINS
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"


def write_ca_pair(directory: Path, issuer_key: ec.EllipticCurvePrivateKey | None = None,
                  extended_usage: bool = False) -> bytes:
    """A certificate as earlier versions made it (self-signed, CA:TRUE), or the same names but
    signed by another key, or with extended key usage; returns the certificate's PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if extended_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    pem = builder.sign(issuer_key or key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    (directory / "self-signed.crt").write_bytes(pem)
    (directory / "self-signed.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return pem


def test_an_old_self_made_ca_certificate_is_replaced_by_a_leaf_and_logged(tmp_path: Path) -> None:
    """A deployment's data/tls/self-signed.crt from an earlier version (CA:TRUE) is made again,
    as a leaf, on start, and the log says so; the new one is kept on the next start."""
    old = write_ca_pair(tmp_path)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        certificate_path, _ = ensure_self_signed(tmp_path, DOMAINS, NOW)
    finally:
        globalLogPublisher.removeObserver(events.append)
    new = certificate_path.read_bytes()
    assert new != old
    assert not x509.load_pem_x509_certificate(new).extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert [event["log_format"].split()[0] for event in events if event.get("log_namespace") == "sns_xmpp.xmpp.tls"] \
        == ["tls.self_signed_replaced", "tls.self_signed_created"]
    ensure_self_signed(tmp_path, DOMAINS, NOW)
    assert certificate_path.read_bytes() == new


@pytest.mark.parametrize("kind", ["issued-by-another-ca", "with-extended-key-usage"])
def test_a_ca_certificate_this_server_did_not_make_is_left_alone(tmp_path: Path, kind: str) -> None:
    """Only the exact shape earlier versions made is replaced: a certificate signed by another
    key, or one with extended key usage (someone else's), stays as it is."""
    if kind == "issued-by-another-ca":
        old = write_ca_pair(tmp_path, issuer_key=ec.generate_private_key(ec.SECP256R1()))
    else:
        old = write_ca_pair(tmp_path, extended_usage=True)
    certificate_path, _ = ensure_self_signed(tmp_path, DOMAINS, NOW)
    assert certificate_path.read_bytes() == old
