"""TLS between servers: our certificate both ways, and whether a peer's certificate is valid
for the domain it claims (XEP-0178; RFC 6120 13.7.2).

Both sides present the server's certificate (the c2s one: self-signed per hosted domain
unless one is configured). Neither side refuses a certificate during the handshake: the
answer matters only for SASL EXTERNAL, which the listener offers only to a peer whose
certificate verifies for the domain in its stream header, against the trust store (the
system's, or ``[xmpp.s2s] ca_file`` for a private federation); everyone else may still use
dialback over the encrypted stream (XEP-0344), unless ``require_valid_certificates``.
"""

from __future__ import annotations

import ssl as stdlib_ssl
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.sasl2 import tls_connection

if TYPE_CHECKING:
    from OpenSSL.SSL import _NoOverlappingProtocols

log = GatedLogger()

ALPN_XMPP_SERVER = b"xmpp-server"  # XEP-0368: direct TLS to a server


def _accept_any(connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    # The verdict is taken after the handshake (peer_identity): dialback peers with self-signed
    # certificates are welcome on an encrypted stream.
    return True


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> bytes | _NoOverlappingProtocols:
    """``xmpp-server`` when offered (XEP-0368), else no protocol and the handshake goes on."""
    return ALPN_XMPP_SERVER if ALPN_XMPP_SERVER in offered else SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLServerConnectionCreator)
class PeerServerTLS:
    """The listening side: our certificate, and the peer asked for its own (VERIFY_PEER without
    FAIL_IF_NO_PEER_CERT: a peer without one can still use dialback)."""

    def __init__(self, certificate_path: Path, key_path: Path) -> None:
        pem = certificate_path.read_bytes() + b"\n" + key_path.read_bytes()
        certificate = ssl.PrivateCertificate.loadPEM(pem)
        options = ssl.CertificateOptions(privateKey=certificate.privateKey.original,
                                         certificate=certificate.original, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        self.context: SSL.Context = options.getContext()
        self.context.set_verify(SSL.VERIFY_PEER, _accept_any)
        # Twisted's context answers a peer that offers ALPN (Prosody does, with xmpp-server, even on
        # STARTTLS) with an internal_error alert when it has no protocols to choose from (tls.py).
        self.context.set_alpn_select_callback(_select_alpn)
        # Session ids are per context: without one, a client certificate request fails resumption.
        self.context.set_session_id(b"sns-xmpp-s2s")

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:  # noqa: N802,N803
        return SSL.Connection(self.context)


@implementer(IOpenSSLClientConnectionCreator)
class PeerClientTLS:
    """The connecting side, for one remote domain: SNI names it, our certificate goes along for
    EXTERNAL, and ALPN says xmpp-server on direct TLS (XEP-0368)."""

    def __init__(self, context: SSL.Context, server_name: str) -> None:
        self.context = context
        self.server_name = server_name

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:  # noqa: N802,N803
        connection = SSL.Connection(self.context)
        try:
            connection.set_tlsext_host_name(self.server_name.encode("idna"))
        except UnicodeError:
            pass
        return connection


def client_context(certificate_path: Path, key_path: Path, direct_tls: bool = False) -> SSL.Context:
    pem = certificate_path.read_bytes() + b"\n" + key_path.read_bytes()
    certificate = ssl.PrivateCertificate.loadPEM(pem)
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate(certificate.original)
    context.use_privatekey(certificate.privateKey.original)
    context.set_verify(SSL.VERIFY_PEER, _accept_any)
    if direct_tls:
        context.set_alpn_protos([ALPN_XMPP_SERVER])
    return context


class TrustStore:
    """Which certificates count as valid for a domain: a chain to a trusted root (the system's
    roots, or the CA file; a certificate listed in the CA file itself is trusted too, for
    pinned self-signed peers) that names the domain (RFC 6125, through service_identity)."""

    def __init__(self, ca_file: Path | None = None) -> None:
        self.store = crypto.X509Store()
        if ca_file is not None:
            self.store.load_locations(str(ca_file))
        else:
            paths = stdlib_ssl.get_default_verify_paths()
            try:
                self.store.load_locations(paths.cafile, paths.capath)
            except crypto.Error:
                log.warn("s2s.no_system_trust_store cafile={cafile} capath={capath}", cafile=paths.cafile,
                         capath=paths.capath)
        self.store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)

    def valid_for(self, domain: str, leaf: crypto.X509 | None, chain: list[crypto.X509]) -> bool:
        if leaf is None:
            return False
        try:
            crypto.X509StoreContext(self.store, leaf, [c for c in chain if c.digest("sha256") !=
                                                       leaf.digest("sha256")]).verify_certificate()
        except crypto.X509StoreContextError:
            return False
        return names_domain(leaf.to_cryptography(), domain)


def names_domain(certificate: x509.Certificate, domain: str) -> bool:
    try:
        verify_certificate_hostname(certificate, domain)
    except (VerificationError, ValueError):
        return False
    return True


def peer_certificates(transport: object) -> tuple[crypto.X509 | None, list[crypto.X509]]:
    """The peer's certificate and the chain it sent, from a stream's TLS transport."""
    connection = tls_connection(transport)
    if connection is None:
        return None, []
    leaf = connection.get_peer_certificate()
    chain = connection.get_peer_cert_chain() or []
    return leaf, list(chain)
