"""The receiving side of a server-to-server stream (RFC 6120 4-6, XEP-0178, XEP-0220).

The header must be jabber:server and name a domain served here. STARTTLS comes first, and
with ``require_encryption`` nothing else is accepted before it (``policy-violation``, as
Prosody and ejabberd answer). After TLS the features offer SASL EXTERNAL only when the
peer's certificate verifies for the domain in its header (XEP-0178 3), and dialback
(XEP-0220 2.1.1, ``<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>``)
unless valid certificates are required.

A <db:result/> is checked over a separate connection back to the claimed domain's
authoritative server (<db:verify/>, federation.py); the verdict is written back, and a key
found invalid ends the stream with ``not-authorized`` after the invalid result. A
<db:verify/> from a peer that has not authenticated is answered for keys this process
issued (XEP-0185: computed again from the secret). A stanza is routed only from a domain
the stream has authenticated (else ``invalid-from``, or ``not-authorized`` before any) and
to a domain served here (else ``host-unknown``), after its namespace becomes jabber:client.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ITLSTransport
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.s2s.certificates import TrustStore, peer_certificates
from sns_xmpp.xmpp.s2s.dialback import (
    NS_DIALBACK,
    NS_DIALBACK_FEATURE,
    NS_SASL,
    NS_SERVER,
    NS_TLS,
    key_is_valid,
    result_answer,
    result_error,
    verify_answer,
)
from sns_xmpp.xmpp.s2s.stream import ServerStream, to_client_namespace

log = GatedLogger()

STANZAS = ("message", "presence", "iq")
MAX_PENDING_VERIFICATIONS = 8  # <db:result/>s of one stream being verified at once (each dials out)


class InboundHost(Protocol):
    """What a receiving stream needs of the federation (federation.py provides it)."""

    def serves(self, domain: str) -> bool: ...

    def denied(self, domain: str) -> bool: ...

    def verify(self, receiving: str, originating: str, stream_id: str, key: str) -> Deferred[bool]: ...

    def deliver(self, stanza: domish.Element) -> None: ...

    def claimed(self, stream: ServerStream, domain: str) -> bool: ...


@dataclass(frozen=True)
class InboundSettings:
    secret: str
    server_tls: IOpenSSLServerConnectionCreator
    trust: TrustStore
    require_encryption: bool = True
    require_valid_certificates: bool = False


@dataclass
class Inbound:
    """Negotiates one incoming stream and checks its stanzas."""

    settings: InboundSettings
    host: InboundHost
    stream: ServerStream = field(init=False)
    claimed: str | None = None  # the header's 'from'
    counted: str | None = None  # the domain this stream counts against (streams per domain)
    external_ok: bool = False  # the certificate is valid for the claimed domain (EXTERNAL offered)
    sasl_done: bool = False
    authenticated: set[str] = field(default_factory=set)  # remote domains this stream may send from
    method: str | None = None
    pending: set[tuple[str, str]] = field(default_factory=set)  # (remote, local) pairs being verified
    on_authenticated: Callable[[Inbound, str, str], None] | None = None
    refusal: StreamError | None = None  # set by the federation when this stream may not start

    @property
    def state(self) -> str:
        return "authenticated" if self.authenticated else "negotiating"

    def connection_made(self) -> None:
        if self.refusal is not None:
            self.stream.fail(self.refusal)

    def connection_lost(self, reason: Failure) -> None:
        pass

    # -- the header and the features ------------------------------------------

    def stream_started(self, root: domish.Element) -> None:
        stream = self.stream
        stream.sid = secrets.token_hex(12)  # RFC 6120 4.7.3: a new id for every (restarted) stream
        if root.uri != xmlstream.NS_STREAMS or root.name != "stream" or root.defaultUri != NS_SERVER:
            stream.fail(StreamError("invalid-namespace"))
            return
        to = root.getAttribute("to")
        if not to or not self.host.serves(to):
            stream.fail(StreamError("host-unknown"))
            return
        claimed = root.getAttribute("from")
        if self.sasl_done and claimed != self.claimed:
            stream.fail(StreamError("invalid-from"))
            return
        stream.header_from = to
        stream.header_to = claimed
        if not _version_at_least_1(root.getAttribute("version")):
            stream.fail(StreamError("unsupported-version"))  # no features, so no STARTTLS
            return
        if claimed:
            if self.host.denied(claimed):
                log.info("s2s.denied domain={domain} peer={peer}", domain=claimed, peer=stream.peer)
                stream.fail(StreamError("policy-violation", text="not accepted here"))
                return
            if self.counted is None:
                if not self.host.claimed(stream, claimed):
                    stream.fail(StreamError("policy-violation", text="too many streams from your domain"))
                    return
                self.counted = claimed  # the first claim: a later header may name another domain
        self.claimed = claimed
        stream.sendHeader()
        stream.send(self._features())

    def _features(self) -> str:
        stream = self.stream
        if self.sasl_done:
            return "<stream:features/>"
        offered = ""
        if not stream.secure:
            required = "<required/>" if self.settings.require_encryption else ""
            offered += f"<starttls xmlns='{NS_TLS}'>{required}</starttls>"
        else:
            leaf, chain = peer_certificates(stream.transport)
            self.external_ok = bool(self.claimed) and self.settings.trust.valid_for(self.claimed or "", leaf, chain)
            if self.external_ok:
                offered += f"<mechanisms xmlns='{NS_SASL}'><mechanism>EXTERNAL</mechanism></mechanisms>"
        if self._dialback_allowed():
            offered += f"<dialback xmlns='{NS_DIALBACK_FEATURE}'><errors/></dialback>"
        return f"<stream:features>{offered}</stream:features>"

    def _dialback_allowed(self) -> bool:
        if self.settings.require_valid_certificates:
            return False
        return self.stream.secure or not self.settings.require_encryption

    # -- elements ----------------------------------------------------------------

    def element_received(self, element: domish.Element) -> None:
        stream = self.stream
        uri, name = element.uri, element.name
        if uri == NS_TLS and name == "starttls":
            self._starttls()
            return
        if not stream.secure and self.settings.require_encryption:
            stream.fail(StreamError("policy-violation", text="STARTTLS first"))
            return
        if uri == NS_SASL:
            self._sasl(element)
        elif uri == NS_DIALBACK and name == "result":
            self._result(element)
        elif uri == NS_DIALBACK and name == "verify":
            self._verify(element)
        elif uri == NS_SERVER and name in STANZAS:
            self._stanza(element)
        else:
            stream.fail(StreamError("unsupported-stanza-type"))

    def _starttls(self) -> None:
        stream = self.stream
        if stream.secure:
            stream.send(f"<failure xmlns='{NS_TLS}'/>")
            stream.close()
            return
        stream.send(f"<proceed xmlns='{NS_TLS}'/>")
        ITLSTransport(stream.transport).startTLS(self.settings.server_tls)
        stream.secure = True
        stream.restart()

    def _sasl(self, element: domish.Element) -> None:
        """SASL EXTERNAL (RFC 6120 6.4, XEP-0178 3): the authorisation identity, if any, must be
        the domain the certificate was found valid for."""
        stream = self.stream
        if element.name != "auth" or self.sasl_done or self.authenticated:
            stream.fail(StreamError("not-authorized"))
            return
        if element.getAttribute("mechanism") != "EXTERNAL" or not self.external_ok:
            stream.send(f"<failure xmlns='{NS_SASL}'><invalid-mechanism/></failure>")
            return
        text = str(element).strip()
        try:
            authzid = base64.b64decode(text, validate=True).decode() if text and text != "=" else ""
        except (binascii.Error, UnicodeDecodeError):
            stream.send(f"<failure xmlns='{NS_SASL}'><incorrect-encoding/></failure>")
            return
        claimed = self.claimed or ""
        if authzid and authzid != claimed:
            stream.send(f"<failure xmlns='{NS_SASL}'><invalid-authzid/></failure>")
            return
        self.sasl_done = True
        self._authenticate(claimed, stream.header_from or "", "tls+external")
        stream.send(f"<success xmlns='{NS_SASL}'/>")
        stream.restart()

    def _result(self, element: domish.Element) -> None:
        """XEP-0220 2.1.2: a <db:result/> from the originating server: verified with its
        authoritative server before any verdict."""
        stream = self.stream
        remote, local, key = element.getAttribute("from"), element.getAttribute("to"), str(element).strip()
        if not self._dialback_allowed():
            stream.fail(StreamError("not-authorized"))
            return
        if not remote or not local or not key or element.getAttribute("type"):
            stream.fail(StreamError("invalid-xml"))
            return
        if not self.host.serves(local):
            stream.send(result_error(local, remote, "item-not-found"))
            return
        if not _domain(remote) or self.host.denied(remote):
            stream.send(result_error(local, remote, "forbidden"))
            return
        if (remote, local) in self.pending:
            return  # its verdict is on its way
        if remote in self.authenticated:
            # Proven on this stream already (another of our domains, or asked twice): no new check.
            stream.send(result_answer(local, remote, True))
            return
        if stream.secure and self.settings.trust.valid_for(remote, *peer_certificates(stream.transport)):
            # XEP-0344 2.4, "dialback without dialback": the certificate already proves the
            # domain, so there is no need to ask its authoritative server.
            stream.send(result_answer(local, remote, True))
            self._authenticate(remote, local, "tls+dialback-certificate")
            return
        if len(self.pending) >= MAX_PENDING_VERIFICATIONS:
            # Each claim costs a connection of ours to the claimed domain: a peer does not get to
            # make this server dial out without bound.
            stream.fail(StreamError("policy-violation", text="too many dialback requests at once"))
            return
        assert stream.sid is not None
        self.pending.add((remote, local))
        d = self.host.verify(local, remote, stream.sid, key)

        def verdict(valid: bool) -> None:
            self.pending.discard((remote, local))
            if stream.closed:
                return
            stream.send(result_answer(local, remote, valid))
            if valid:
                self._authenticate(remote, local, "tls+dialback" if stream.secure else "dialback")
            else:
                log.warn("s2s.dialback_refused remote={remote} local={local} peer={peer}", remote=remote,
                         local=local, peer=stream.peer)
                stream.fail(StreamError("not-authorized", text="dialback key not valid"))

        def unverifiable(reason: Failure) -> None:
            self.pending.discard((remote, local))
            log.info("s2s.dialback_unverifiable remote={remote} reason={reason}", remote=remote,
                     reason=str(reason.value))
            if not stream.closed:
                stream.send(result_error(local, remote, "remote-server-not-found"))

        d.addCallbacks(verdict, unverifiable)

    def _verify(self, element: domish.Element) -> None:
        """XEP-0220 2.1.2, the authoritative side: is this a key we issued?"""
        receiving, originating = element.getAttribute("from"), element.getAttribute("to")
        stream_id, key = element.getAttribute("id"), str(element).strip()
        if not receiving or not originating or not stream_id:
            self.stream.fail(StreamError("invalid-xml"))
            return
        valid = self.host.serves(originating) and key_is_valid(self.settings.secret, receiving, originating,
                                                                stream_id, key)
        log.info("s2s.dialback_verify receiving={receiving} originating={originating} valid={valid}",
                 receiving=receiving, originating=originating, valid=valid)
        self.stream.send(verify_answer(originating, receiving, stream_id, valid))

    def _authenticate(self, remote: str, local: str, method: str) -> None:
        self.authenticated.add(remote)
        self.method = method
        log.info("s2s.authenticated direction={direction} remote={remote} local={local} method={method} "
                 "peer={peer}", direction="in", remote=remote, local=local, method=method, peer=self.stream.peer)
        if self.on_authenticated is not None:
            self.on_authenticated(self, remote, local)

    # -- stanzas -----------------------------------------------------------------

    def _stanza(self, stanza: domish.Element) -> None:
        stream = self.stream
        if not self.authenticated:
            stream.fail(StreamError("not-authorized"))
            return
        sender, recipient = stanza.getAttribute("from"), stanza.getAttribute("to")
        if not sender or not recipient:
            stream.fail(StreamError("improper-addressing"))
            return
        try:
            sender_host = parse_jid(sender).host
        except InvalidFormat:
            sender_host = None
        if sender_host not in self.authenticated:
            log.warn("s2s.invalid_from from={sender} peer={peer}", sender=sender, peer=stream.peer)
            stream.fail(StreamError("invalid-from"))
            return
        try:
            recipient_host = parse_jid(recipient).host
        except InvalidFormat:
            recipient_host = None
        if recipient_host is None or not self.host.serves(recipient_host):
            stream.fail(StreamError("host-unknown"))
            return
        to_client_namespace(stanza)
        self.host.deliver(stanza)


def _domain(name: str) -> bool:
    try:
        parsed = parse_jid(name)
    except InvalidFormat:
        return False
    return parsed.user is None and parsed.resource is None


def _version_at_least_1(version: str | None) -> bool:
    try:
        return int((version or "0.0").split(".")[0]) >= 1
    except ValueError:
        return False
