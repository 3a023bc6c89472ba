"""The server's links to other XMPP servers: the router's route for remote domains, the
listener's streams, and the bookkeeping the limits, /metrics and the console read.

Outgoing: one link per (local domain, remote domain) pair, as dialback authorises pairs
(XEP-0220 2.1). A stanza for a remote domain opens the link (resolve.py, then each target in
turn) or joins its queue; the queue is bounded (``resource-constraint`` past it) and is sent
once the stream is authenticated. If the link fails (nowhere to connect, TLS or
authentication refused, the peer gone mid-negotiation) or is not authenticated within
``connect_timeout`` (under 30 s), what it holds bounces to its senders with
``remote-server-not-found`` or ``remote-server-timeout`` (RFC 6120 8.3.3.16 and 8.3.3.17).

Incoming: streams from the listener (inbound.py); a <db:result/> is verified over a new
outgoing connection in verify mode (outbound.py). The deny list holds both ways. One sweep
every few seconds ends streams silent for ``idle_timeout`` and incoming ones still
unauthenticated after ``auth_timeout``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from cryptography import x509
from OpenSSL import SSL
from twisted.application import service
from twisted.internet import protocol, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IConnector, IDelayedCall
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from sns_xmpp.config import S2SConfig
from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.reactors import IServerReactor
from sns_xmpp.tally import Tally
from sns_xmpp.xmpp.routing import StanzaRouter
from sns_xmpp.xmpp.s2s.certificates import PeerClientTLS, PeerServerTLS, TrustStore, client_context, names_domain
from sns_xmpp.xmpp.s2s.inbound import Inbound, InboundSettings
from sns_xmpp.xmpp.s2s.outbound import Outbound, OutboundSettings, VerifyRequest
from sns_xmpp.xmpp.s2s.resolve import ServerResolver, Target
from sns_xmpp.xmpp.s2s.stream import ServerStream
from sns_xmpp.xmpp.stanzas import error_reply, may_bounce

log = GatedLogger()


class Resolver(Protocol):
    def resolve(self, domain: str) -> Deferred[list[Target]]: ...


@dataclass(frozen=True)
class S2SLimits:
    max_streams_per_domain: int = 8  # incoming streams one remote domain may hold
    max_queued_stanzas: int = 1000  # per outgoing link, waiting for its stream
    max_stanza_bytes: int = 262144
    idle_timeout: float = 600  # seconds of silence both ways before a stream is closed
    connect_timeout: float = 25  # resolving, connecting and authenticating an outgoing stream
    auth_timeout: float = 60  # an incoming stream's time to authenticate
    max_unauthenticated_per_address: int = 32  # incoming streams one address holds before authenticating
    max_outbound_bytes: int = 8 * 1024 * 1024  # unread by a peer before its stream ends


@dataclass
class Link:
    """The outgoing stream from *local* to *remote*, and the stanzas waiting for it."""

    local: str
    remote: str
    state: str = "resolving"  # resolving, connecting, negotiating, authenticated
    queue: deque[domish.Element] = field(default_factory=deque)
    outbound: Outbound | None = None  # the negotiation under way or done
    stream: ServerStream | None = None  # its stream, once connected
    connector: IConnector | None = None
    deadline: IDelayedCall | None = None
    method: str | None = None
    sent: int = 0


class _OutboundFactory(protocol.ClientFactory):
    def __init__(self, build: Callable[[], ServerStream], failed: Callable[[Failure], None]) -> None:
        self.build = build
        self.failed = failed

    def buildProtocol(self, addr: IAddress | None) -> ServerStream:  # noqa: N802 - Twisted's name
        return self.build()

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:  # noqa: N802
        self.failed(reason)


class _InboundFactory(protocol.Factory):
    def __init__(self, federation: Federation, secure: bool) -> None:
        self.federation = federation
        self.secure = secure  # behind a TLS wrapper from the first byte (XEP-0368)

    def buildProtocol(self, addr: IAddress | None) -> ServerStream:  # noqa: N802 - Twisted's name
        return self.federation.accept(str(getattr(addr, "host", "?")), self.secure)


class Federation(service.Service):
    """The route for remote domains (`StanzaRouter.remote`) and the owner of every s2s stream."""

    def __init__(self, router: StanzaRouter, reactor: IServerReactor, resolver: Resolver,
                 inbound: InboundSettings, outbound: OutboundSettings, limits: S2SLimits | None = None,
                 deny: Iterable[str] = (), direct_tls_context: SSL.Context | None = None) -> None:
        self.router = router
        self.reactor = reactor
        self.resolver = resolver
        self.inbound_settings = inbound
        self.outbound_settings = outbound
        self.limits = limits or S2SLimits()
        self.deny = frozenset(domain.lower() for domain in deny)
        self.direct_tls_context = direct_tls_context or outbound.client_context
        self.links: dict[tuple[str, str], Link] = {}
        self.incoming: dict[ServerStream, Inbound] = {}
        self.verifications: set[ServerStream] = set()
        self.per_domain = Tally()
        self.unauthenticated = Tally()
        self._sweeper: task.LoopingCall | None = None

    # -- the router's route for remote domains -----------------------------------

    def send(self, stanza: domish.Element) -> None:
        try:
            remote = parse_jid(stanza.getAttribute("to", "")).host
            local = parse_jid(stanza.getAttribute("from", "")).host
        except InvalidFormat:
            return
        if not self.serves(local):
            log.debug("s2s.not_relayed from={sender} to={to}", sender=local, to=remote)
            return  # never relay between two other servers
        if remote in self.deny:
            self._bounce(stanza, "policy-violation")
            return
        link = self.links.get((local, remote))
        if link is not None and link.state == "authenticated":
            stream = link.stream
            if stream is not None and not stream.closed:
                link.sent += 1
                stream.send(stanza)
                return
            # The stream is ending (the peer closed it, or the idle sweep did): a new one for this.
            del self.links[(local, remote)]
            link = None
        if link is None:
            # Queued before the link starts: resolution may answer (and fail) at once.
            link = self.links[(local, remote)] = Link(local, remote)
            link.queue.append(stanza)
            self._start(link)
            return
        if len(link.queue) >= self.limits.max_queued_stanzas:
            self.router.metrics.limit("s2s-queue")
            self._bounce(stanza, "resource-constraint")
            return
        link.queue.append(stanza)

    def _start(self, link: Link) -> None:
        link.deadline = self.reactor.callLater(self.limits.connect_timeout, self._timed_out, link)
        self.resolver.resolve(link.remote).addCallback(lambda targets: self._connect(link, list(targets)))

    def _connect(self, link: Link, targets: list[Target]) -> None:
        if self.links.get((link.local, link.remote)) is not link:
            return  # given up meanwhile
        if not targets:
            self._failed(link, "remote-server-not-found", "resolves nowhere" if link.state == "resolving"
                         else "no target answered")
            return
        target, rest = targets[0], targets[1:]
        link.state = "connecting"
        outbound = Outbound(self.outbound_settings, link.local, link.remote, self._authenticated,
                            lambda o, condition, reason: self._outbound_failed(link, o, condition, reason))
        link.outbound = outbound

        def build() -> ServerStream:
            stream = ServerStream(outbound, "out", self.limits.max_stanza_bytes, self.reactor, target.direct_tls,
                                  self.limits.max_outbound_bytes)
            outbound.stream = link.stream = stream
            link.state = "negotiating"
            return stream

        def failed(reason: Failure) -> None:
            log.info("s2s.connect_failed remote={remote} target={host}:{port} reason={reason}", remote=link.remote,
                     host=target.host, port=target.port, reason=reason.getErrorMessage())
            self._connect(link, rest)

        link.connector = self._connect_tcp(target, link.remote, _OutboundFactory(build, failed))

    def _connect_tcp(self, target: Target, remote: str, factory: protocol.ClientFactory) -> IConnector:
        wrapped: protocol.ClientFactory = factory
        if target.direct_tls:  # XEP-0368: TLS from the first byte
            wrapped = cast(protocol.ClientFactory,
                           TLSMemoryBIOFactory(PeerClientTLS(self.direct_tls_context, remote), True, factory))
        return self.reactor.connectTCP(target.host, target.port, wrapped, timeout=self.limits.connect_timeout)

    def _authenticated(self, outbound: Outbound, method: str) -> None:
        link = self.links.get((outbound.local, outbound.remote))
        if link is None or link.outbound is not outbound:
            outbound.stream.close()
            return
        link.state = "authenticated"
        link.method = method
        if link.deadline is not None and link.deadline.active():
            link.deadline.cancel()
        link.deadline = None
        stream = outbound.stream
        log.info("s2s.authenticated direction={direction} local={local} remote={remote} method={method} "
                 "peer={peer}", direction="out", local=link.local, remote=link.remote, method=method, peer=stream.peer)
        stream.on_close.append(lambda: self._closed(link))
        while link.queue and not stream.closed:
            link.sent += 1
            stream.send(link.queue.popleft())

    def _outbound_failed(self, link: Link, outbound: Outbound, condition: str, reason: str) -> None:
        if self.links.get((link.local, link.remote)) is not link or link.outbound is not outbound:
            return
        self._failed(link, condition, reason)

    def _closed(self, link: Link) -> None:
        """An authenticated stream ended: the next stanza opens a new one; anything queued
        meanwhile bounces (RFC 6120 8.3.3.16: the peer is gone)."""
        if self.links.get((link.local, link.remote)) is link:
            del self.links[(link.local, link.remote)]
        log.info("s2s.closed direction={direction} local={local} remote={remote}", direction="out",
                 local=link.local, remote=link.remote)
        self._bounce_all(link, "remote-server-not-found")

    def _timed_out(self, link: Link) -> None:
        link.deadline = None
        self._failed(link, "remote-server-timeout", f"not authenticated within {self.limits.connect_timeout:g} s")

    def _failed(self, link: Link, condition: str, reason: str) -> None:
        if self.links.get((link.local, link.remote)) is link:
            del self.links[(link.local, link.remote)]
        if link.deadline is not None and link.deadline.active():
            link.deadline.cancel()
        link.deadline = None
        log.info("s2s.link_failed local={local} remote={remote} condition={condition} reason={reason} "
                 "bounced={count}", local=link.local, remote=link.remote, condition=condition, reason=reason,
                 count=len(link.queue))
        stream = link.stream
        if stream is not None and not stream.closed:
            stream.close()
        elif link.connector is not None and stream is None:
            link.connector.disconnect()
        self._bounce_all(link, condition)

    def _bounce_all(self, link: Link, condition: str) -> None:
        while link.queue:
            self._bounce(link.queue.popleft(), condition)

    def _bounce(self, stanza: domish.Element, condition: str) -> None:
        if not may_bounce(stanza) or not stanza.getAttribute("from"):
            return
        reply = error_reply(stanza, condition)
        try:
            back_to = parse_jid(reply.getAttribute("to", "")).host
        except InvalidFormat:
            return
        if self.serves(back_to):
            self.router.route(reply)

    # -- dialback verification for the listener ----------------------------------

    def verify(self, receiving: str, originating: str, stream_id: str, key: str) -> Deferred[bool]:
        """Ask *originating*'s authoritative server whether *key* is its (XEP-0220 2.1.2), over a
        connection of its own; fails when that server cannot be reached in time."""
        answer: Deferred[bool] = Deferred()
        streams: list[ServerStream] = []

        def answered(valid: bool) -> None:
            if not answer.called:
                answer.callback(valid)

        def failed(condition: str, reason: str) -> None:
            if not answer.called:
                answer.errback(Failure(ConnectionError(f"{condition}: {reason}")))

        request = VerifyRequest(receiving, originating, stream_id, key, answered)
        deadline = self.reactor.callLater(self.limits.connect_timeout, failed, "remote-server-timeout",
                                          "no verdict in time")

        def settle(result: object) -> object:
            if deadline.active():
                deadline.cancel()
            for stream in streams:
                self.verifications.discard(stream)
                if not stream.closed:
                    stream.close()
            return result

        answer.addBoth(settle)

        def connect(targets: list[Target]) -> None:
            if answer.called:
                return
            if not targets:
                failed("remote-server-not-found", "resolves nowhere")
                return
            target, rest = targets[0], targets[1:]
            outbound = Outbound(self.outbound_settings, receiving, originating, lambda o, m: None,
                                lambda o, condition, reason: failed(condition, reason), verify=request)

            def build() -> ServerStream:
                stream = ServerStream(outbound, "out", self.limits.max_stanza_bytes, self.reactor,
                                      target.direct_tls, self.limits.max_outbound_bytes)
                outbound.stream = stream
                streams.append(stream)
                self.verifications.add(stream)
                return stream

            self._connect_tcp(target, originating, _OutboundFactory(build, lambda reason: connect(rest)))

        self.resolver.resolve(originating).addCallback(lambda targets: connect(list(targets)))
        return answer

    # -- the listener's streams ---------------------------------------------------

    def listener_factory(self, direct_tls: bool = False) -> protocol.Factory:
        """The listener's factory; *direct_tls* for a port whose endpoint wraps TLS around it."""
        return _InboundFactory(self, direct_tls)

    def accept(self, address: str = "?", secure: bool = False) -> ServerStream:
        inbound = Inbound(self.inbound_settings, self)
        stream = ServerStream(inbound, "in", self.limits.max_stanza_bytes, self.reactor, secure,
                              self.limits.max_outbound_bytes)
        inbound.stream = stream
        self.incoming[stream] = inbound
        # Streams that have not authenticated, by address: each costs a TLS handshake and maybe
        # dialback connections of ours, so one address gets a bounded number at once.
        settled: list[bool] = []

        def settle(*args: object) -> None:
            if not settled:
                settled.append(True)
                self.unauthenticated.remove(address)

        if self.unauthenticated.add(address) > self.limits.max_unauthenticated_per_address:
            settle()
            self.router.metrics.limit("s2s-unauthenticated-per-address")
            inbound.refusal = StreamError("policy-violation", text="too many unauthenticated streams")
        else:
            inbound.on_authenticated = settle
            stream.on_close.append(settle)
        stream.on_close.append(lambda: self._incoming_closed(stream, inbound))
        return stream

    def _incoming_closed(self, stream: ServerStream, inbound: Inbound) -> None:
        self.incoming.pop(stream, None)
        if inbound.counted is not None:
            self.per_domain.remove(inbound.counted)

    def serves(self, domain: str | None) -> bool:
        """Whether *domain* is served here: a hosted domain, a service of one, a component."""
        return domain is not None and domain in self.router.routes

    def denied(self, domain: str) -> bool:
        return domain.lower() in self.deny

    def claimed(self, stream: ServerStream, domain: str) -> bool:
        """Count an incoming stream against its domain's limit; False past it."""
        if self.per_domain.add(domain) > self.limits.max_streams_per_domain:
            self.per_domain.remove(domain)  # refused: it does not hold a place
            self.router.metrics.limit("s2s-streams-per-domain")
            return False
        return True

    def deliver(self, stanza: domish.Element) -> None:
        self.router.route(stanza)

    # -- upkeep ----------------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        interval = max(1.0, min(self.limits.idle_timeout, self.limits.auth_timeout) / 4)
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(interval, now=False)

    def stopService(self) -> None:  # noqa: N802 - Twisted's name
        super().stopService()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self.shut_down()

    def sweep(self) -> None:
        now = self.reactor.seconds()
        limits = self.limits
        for stream, inbound in list(self.incoming.items()):
            if stream.closed:
                continue
            if not inbound.authenticated and now - stream.opened_at > limits.auth_timeout:
                stream.fail(StreamError("connection-timeout", text="authenticate sooner"))
            elif now - stream.last_active > limits.idle_timeout:
                log.info("s2s.idle_closed direction={direction} peer={peer}", direction="in", peer=stream.peer)
                stream.close()
        for link in list(self.links.values()):
            outgoing = link.stream
            if (link.state == "authenticated" and outgoing is not None
                    and now - outgoing.last_active > limits.idle_timeout):
                log.info("s2s.idle_closed direction={direction} remote={remote}", direction="out", remote=link.remote)
                outgoing.close()

    def shut_down(self) -> None:
        """End every stream with <system-shutdown/> (RFC 6120 4.9.3.17); bounce what waits."""
        for stream in [*self.incoming, *self.verifications]:
            stream.fail(StreamError("system-shutdown"))
        for link in list(self.links.values()):
            outgoing = link.stream
            if outgoing is not None:
                outgoing.fail(StreamError("system-shutdown"))
            self._failed(link, "remote-server-not-found", "server shutting down")

    # -- what operators see ------------------------------------------------------

    def stream_states(self) -> list[tuple[str, str]]:
        """(direction, state) of every stream, for /metrics."""
        # A scrape runs in a thread: copies (atomic under the GIL) to iterate.
        states = [("in", inbound.state) for stream, inbound in list(self.incoming.items()) if not stream.closed]
        states += [("out", link.state) for link in list(self.links.values())]
        states += [("out", "verifying") for stream in list(self.verifications) if not stream.closed]
        return states

    def domains(self) -> dict[str, dict[str, Any]]:
        """Per remote domain: its outgoing links and incoming streams (the console's s2s())."""
        view: dict[str, dict[str, Any]] = {}
        for link in self.links.values():
            entry = view.setdefault(link.remote, {"out": [], "in": []})
            entry["out"].append({"local": link.local, "state": link.state, "method": link.method,
                                 "queued": len(link.queue), "sent": link.sent,
                                 "peer": link.stream.peer if link.stream is not None else None})
        for stream, inbound in self.incoming.items():
            for remote in sorted(inbound.authenticated) or [inbound.claimed or "?"]:
                entry = view.setdefault(remote, {"out": [], "in": []})
                entry["in"].append({"state": inbound.state, "method": inbound.method, "peer": stream.peer,
                                    "local": stream.header_from})
        return view


def make_federation(router: StanzaRouter, reactor: IServerReactor, config: S2SConfig, certificate: Path,
                    key: Path, secret: str, base_dir: Path) -> Federation:
    """The federation as `[xmpp.s2s]` describes it, with the server's certificate both ways."""
    trust = TrustStore(base_dir / config.ca_file if config.ca_file else None)
    ours = x509.load_pem_x509_certificate(certificate.read_bytes())
    local_domains = [domain for domain in router.routes if domain is not None]
    inbound = InboundSettings(secret, PeerServerTLS(certificate, key), trust, config.require_encryption,
                              config.require_valid_certificates)
    outbound = OutboundSettings(secret, client_context(certificate, key), trust, config.require_encryption,
                                config.require_valid_certificates,
                                frozenset(domain for domain in local_domains if names_domain(ours, domain)))
    limits = S2SLimits(config.max_streams_per_domain, config.max_queued_stanzas, config.max_stanza_bytes,
                       config.idle_timeout, config.connect_timeout, config.auth_timeout,
                       config.max_unauthenticated_per_ip, config.max_outbound_bytes)
    resolver = ServerResolver(reactor, overrides=dict(config.hosts))
    return Federation(router, reactor, resolver, inbound, outbound, limits, config.deny,
                      client_context(certificate, key, direct_tls=True))
