"""The initiating side of a server-to-server stream (RFC 6120 4-6, XEP-0178, XEP-0220).

One `Outbound` drives one connection to a remote domain's server: our header, STARTTLS
(unless the connection is direct TLS, XEP-0368), then

- for stanzas (``verify is None``): SASL EXTERNAL when the peer offers it and our
  certificate names our domain, and when that fails (ejabberd offers EXTERNAL to every TLS
  peer, then fails a self-signed one) dialback on the same stream (XEP-0220 2.1.1); the
  verdict, and which method won, go to `on_authenticated` / `on_failed`;
- for a dialback verification (``verify`` set: we are the receiving server checking a key
  with the originating domain's authoritative server, XEP-0220 2.1.2): <db:verify/> once
  the stream is encrypted, its answer to the callback, and the stream closed.

Nothing is sent before the verdict but negotiation: the link (federation.py) queues stanzas
until `on_authenticated`, as ejabberd closes a stream that carries one earlier.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

from OpenSSL import SSL
from twisted.internet.interfaces import ITLSTransport
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.s2s.certificates import PeerClientTLS, TrustStore, peer_certificates
from sns_xmpp.xmpp.s2s.dialback import (
    NS_DIALBACK,
    NS_SASL,
    NS_SERVER,
    NS_TLS,
    dialback_key,
    dialback_offered,
    mechanisms_offered,
    result_request,
    starttls_offered,
    verify_request,
)
from sns_xmpp.xmpp.s2s.stream import ServerStream

log = GatedLogger()


@dataclass(frozen=True)
class OutboundSettings:
    secret: str
    client_context: SSL.Context
    trust: TrustStore
    require_encryption: bool = True
    require_valid_certificates: bool = False
    external_domains: frozenset[str] = frozenset()  # local domains our certificate names (XEP-0178)


@dataclass
class VerifyRequest:
    """A key to check with the authoritative server (XEP-0220 2.1.2): *receiving* is ours."""

    receiving: str
    originating: str
    stream_id: str
    key: str
    answered: Callable[[bool], None]


class Outbound:
    """Negotiates one outgoing stream from *local* to *remote*."""

    stream: ServerStream

    def __init__(self, settings: OutboundSettings, local: str, remote: str,
                 on_authenticated: Callable[[Outbound, str], None], on_failed: Callable[[Outbound, str, str], None],
                 verify: VerifyRequest | None = None) -> None:
        self.settings = settings
        self.local = local
        self.remote = remote
        self.on_authenticated = on_authenticated
        self.on_failed = on_failed
        self.verify = verify
        self.state = "connecting"
        self.method: str | None = None
        self.external_tried = False
        self.external_done = False
        self.dialback_declared = False  # the peer's header bound the db prefix (pre-feature servers)
        self.finished = False  # on_authenticated or on_failed has run
        self.features: domish.Element | None = None  # the peer's latest <stream:features/>

    # -- the stream's handler ------------------------------------------------

    def connection_made(self) -> None:
        self.state = "negotiating"
        self.stream.header_from = self.local
        self.stream.header_to = self.remote
        self.stream.sendHeader()

    def stream_started(self, root: domish.Element) -> None:
        if root.uri != xmlstream.NS_STREAMS or root.name != "stream" or root.defaultUri != NS_SERVER:
            self._fail(StreamError("invalid-namespace"), "remote-server-not-found", "bad stream header")
            return
        if not self.stream.sid:
            self._fail(StreamError("invalid-xml"), "remote-server-not-found", "no stream id")
            return
        self.dialback_declared = NS_DIALBACK in root.localPrefixes.values()

    def element_received(self, element: domish.Element) -> None:
        uri, name = element.uri, element.name
        if uri == xmlstream.NS_STREAMS and name == "features":
            self._features(element)
        elif uri == NS_TLS and name == "proceed":
            self._start_tls()
        elif uri == NS_TLS and name == "failure":
            self._give_up("remote-server-not-found", "STARTTLS failed")
        elif uri == NS_SASL and name == "success" and self.external_tried:
            # RFC 6120 6.4.6: a new stream over the authenticated one.
            self.external_done = True
            self.stream.restart()
            self.stream.sendHeader()
        elif uri == NS_SASL and name == "failure" and self.external_tried:
            log.info("s2s.external_refused local={local} remote={remote}", local=self.local, remote=self.remote)
            self._dialback(self.features)
        elif uri == NS_DIALBACK and name == "result" and self.verify is None:
            self._result(element)
        elif uri == NS_DIALBACK and name == "verify" and self.verify is not None:
            self._verified(element)
        else:
            log.debug("s2s.unexpected_element name={name} remote={remote}", name=name, remote=self.remote)

    def connection_lost(self, reason: Failure) -> None:
        if self.verify is not None and not self.finished:
            self.finished = True
            self.on_failed(self, "remote-server-not-found", "connection lost before the verdict")
            return
        if not self.finished:
            self.finished = True
            condition = self.stream.error_received or "connection lost"
            self.on_failed(self, "remote-server-not-found", f"closed during negotiation: {condition}")

    # -- negotiation -----------------------------------------------------------

    def _features(self, features: domish.Element) -> None:
        stream = self.stream
        self.features = features
        if not stream.secure:
            if starttls_offered(features):
                stream.send(f"<starttls xmlns='{NS_TLS}'/>")
                return
            if self.settings.require_encryption:
                self._fail(StreamError("policy-violation", text="encryption required"), "remote-server-not-found",
                           "the peer offers no STARTTLS")
                return
        if self.external_done:
            self._authenticated("tls+external")
            return
        if self.settings.require_valid_certificates and not self._peer_certificate_valid():
            self._fail(StreamError("policy-violation", text="certificate not valid for " + self.remote),
                       "remote-server-not-found", "the peer's certificate is not valid for its domain")
            return
        if self.verify is not None:
            request = self.verify
            self.state = "verifying"
            stream.send(verify_request(request.receiving, request.originating, request.stream_id, request.key))
            return
        if (stream.secure and not self.external_tried and "EXTERNAL" in mechanisms_offered(features)
                and self.local in self.settings.external_domains):
            self.external_tried = True
            authzid = base64.b64encode(self.local.encode()).decode()
            stream.send(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>{authzid}</auth>")
            return
        self._dialback(features)

    def _peer_certificate_valid(self) -> bool:
        leaf, chain = peer_certificates(self.stream.transport)
        return self.settings.trust.valid_for(self.remote, leaf, chain)

    def _start_tls(self) -> None:
        stream = self.stream
        ITLSTransport(stream.transport).startTLS(PeerClientTLS(self.settings.client_context, self.remote))
        stream.secure = True
        stream.restart()
        stream.sendHeader()

    def _dialback(self, features: domish.Element | None) -> None:
        if self.settings.require_valid_certificates:
            self._fail(StreamError("not-authorized"), "remote-server-not-found",
                       "SASL EXTERNAL failed and dialback is not allowed")
            return
        if not (self.dialback_declared or (features is not None and dialback_offered(features))):
            self._fail(StreamError("not-authorized"), "remote-server-not-found", "no authentication method in common")
            return
        assert self.stream.sid is not None
        self.state = "dialback"
        key = dialback_key(self.settings.secret, self.remote, self.local, self.stream.sid)
        self.stream.send(result_request(self.local, self.remote, key))

    def _result(self, element: domish.Element) -> None:
        if element.getAttribute("from") != self.remote or element.getAttribute("to") != self.local:
            return  # an answer about another pair: not ours to judge
        kind = element.getAttribute("type")
        if kind == "valid":
            self._authenticated("tls+dialback" if self.stream.secure else "dialback")
        else:
            condition = next((child.name for error in element.elements() if error.name == "error"
                              for child in error.elements()), None)
            self._give_up("remote-server-not-found", f"dialback {kind}" + (f" ({condition})" if condition else ""))

    def _verified(self, element: domish.Element) -> None:
        request = self.verify
        assert request is not None
        if element.getAttribute("id") != request.stream_id or element.getAttribute("from") != request.originating:
            return
        self.finished = True
        request.answered(element.getAttribute("type") == "valid")
        self.stream.close()

    def _authenticated(self, method: str) -> None:
        self.state = "authenticated"
        self.method = method
        if not self.finished:
            self.finished = True
            self.on_authenticated(self, method)

    def _give_up(self, condition: str, reason: str) -> None:
        """The peer said no: report it and end the stream properly."""
        if not self.finished:
            self.finished = True
            self.on_failed(self, condition, reason)
        self.stream.close()

    def _fail(self, problem: StreamError, condition: str, reason: str) -> None:
        """We refuse the peer: our stream error first (the report closes the stream), then the report."""
        report = not self.finished
        self.finished = True
        self.stream.fail(problem)
        if report:
            self.on_failed(self, condition, reason)
