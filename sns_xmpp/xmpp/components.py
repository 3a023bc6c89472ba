"""XEP-0114 external components, on wokkel's component server and Router.

Each component domain has its own secret (no default); the handshake is
compared in constant time (wokkel compares with ``!=``), an unknown domain gets
``host-unknown``, and a component may only send from its own domain.

The port gets the client port's defences, not wokkel's plain stream: the
hardened parser (no DTDs, entities, comments or processing instructions; the
stanza size, depth and attribute limits), a deadline for the handshake, and a
cap on the connections one address may hold before they have shaken hands. A
domain is connected once: a second component for it is refused with
``<conflict/>``, when its stream opens and again when its handshake succeeds.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from secrets import token_hex
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import error, jid, xmlstream
from twisted.words.xish import domish
from wokkel.component import NS_COMPONENT_ACCEPT, ListenComponentAuthenticator, XMPPComponentServerFactory

from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.tally import Tally
from sns_xmpp.xmpp.parsing import HostileXML, guarded_stream
from sns_xmpp.xmpp.routing import StanzaRouter
from sns_xmpp.xmpp.stanzas import NS_CLIENT

log = GatedLogger()


@dataclass(frozen=True)
class ComponentLimits:
    max_stanza_bytes: int = 262144
    handshake_timeout: float = 10
    # Components connect from loopback, a handful at a time; an address holding more streams that
    # have not shaken hands is not a component.
    max_unauthenticated_per_ip: int = 16


class ComponentStream(xmlstream.XmlStream):
    """A component's stream: Twisted's jabber XmlStream on the hardened parser (parsing.py), with
    the parse errors and the limits turned into stream errors for this stream alone."""

    # Twisted declares these as None only.
    thisEntity: Any
    stream: Any

    def __init__(self, authenticator: xmlstream.Authenticator, max_stanza_bytes: int, clock: IReactorTime) -> None:
        super().__init__(authenticator)
        self.namespace = NS_COMPONENT_ACCEPT  # for the header of an error before the component's
        self.max_stanza_bytes = max_stanza_bytes
        self.clock = clock
        self.closed = False
        self.footer_sent = False
        self.refusal: error.StreamError | None = None  # set by the factory when this stream may not start
        self.on_settled: list[Callable[[], object]] = []  # run once: at the handshake or at the end
        self.deadline: IDelayedCall | None = None
        self._fed = 0  # bytes given to the current parser

    @property
    def peer(self) -> str:
        address = self.transport.getPeer() if self.transport is not None else None
        return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"

    def _initializeStream(self) -> None:
        self.stream = guarded_stream(self.max_stanza_bytes, self)
        self._fed = 0

    def _callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(*args, **kwargs)

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.refusal is not None:
            self.fail(self.refusal)

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        self._fed += len(data)
        try:
            self.stream.parse(data)
            if not self.closed:
                self.stream.measure(self._fed)
        except domish.ParserError:
            self.fail(error.StreamError("not-well-formed"))
        except HostileXML as hostile:
            self.fail(error.StreamError(hostile.condition, text=hostile.text))

    # The error boundary: a handler that raises ends this stream with internal-server-error.

    def onDocumentStart(self, rootElement: domish.Element) -> None:  # noqa: N802, N803 - Twisted's names
        try:
            super().onDocumentStart(rootElement)
        except Exception:
            log.failure("component.handler_failed peer={peer}", peer=self.peer)
            self.fail(error.StreamError("internal-server-error"))

    def onElement(self, element: domish.Element) -> None:  # noqa: N802 - Twisted's name
        if self.closed:
            return
        try:
            super().onElement(element)
        except Exception:
            log.failure("component.handler_failed peer={peer}", peer=self.peer)
            self.fail(error.StreamError("internal-server-error"))

    def fail(self, problem: error.StreamError) -> None:
        """Send a stream error and close this stream only."""
        if self.closed:
            return
        log.info("component.stream_error condition={condition} peer={peer}", condition=problem.condition,
                 peer=self.peer)
        self.sendStreamError(problem)

    def send(self, obj: domish.Element | str | bytes) -> None:
        # Between our footer and connectionLost the route is still there; nothing follows the footer.
        if not self.footer_sent:
            super().send(obj)

    def sendFooter(self) -> None:  # noqa: N802 - Twisted's name
        super().sendFooter()
        self.footer_sent = True

    def onStreamError(self, errelem: domish.Element) -> None:  # noqa: N802 - Twisted's name
        """The component sent a stream error: end our stream too (RFC 6120 4.9.1.1), after
        Twisted's event for the factory's log."""
        if self.closed:
            return
        self.dispatch(Failure(error.exceptionFromStreamError(errelem)), xmlstream.STREAM_ERROR_EVENT)
        self.onDocumentEnd()

    def onDocumentEnd(self) -> None:  # noqa: N802 - Twisted's name
        """The component ended its stream: end ours too (RFC 6120 4.4; Twisted only drops the
        connection)."""
        if self.closed:
            return
        self.closed = True
        if self._headerSent:
            self.sendFooter()
        if self.transport is not None:
            self.transport.loseConnection()

    def sendStreamError(self, streamError: error.StreamError) -> None:  # noqa: N803 - Twisted's name
        # wokkel's authenticator calls this directly: whatever else the read holds is not parsed.
        if self.closed:
            return
        self.closed = True
        if self.stream is not None:
            self.stream.retire()
        super().sendStreamError(streamError)

    def settle(self) -> None:
        """The handshake is done or the stream is over: the deadline and the address's count of
        streams that have not shaken hands no longer apply."""
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None
        callbacks, self.on_settled = self.on_settled, []
        for callback in callbacks:
            callback()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.closed = True
        self.settle()
        if self.stream is not None:
            self.stream.retire()
        super().connectionLost(reason)


class ComponentAuthenticator(ListenComponentAuthenticator):
    def __init__(self, secrets: Mapping[str, str], connected: Mapping[str, object]) -> None:
        super().__init__(secret=None)
        self.secrets = secrets
        self.connected = connected

    def streamStarted(self, rootElement: domish.Element) -> None:
        # As Twisted's and wokkel's, but the domain is looked up before it is parsed as a JID (which
        # raises on some names, "a..b" say), and the header we answer with keeps our own prefixes
        # and namespace whatever the component's header declared.
        xs = self.xmlstream
        xmlstream.Authenticator.streamStarted(self, rootElement)
        xs.sid = token_hex(8)
        domain = rootElement.getAttribute("to")
        if rootElement.defaultUri != self.namespace:
            xs.sendStreamError(error.StreamError("invalid-namespace"))
            return
        if domain is None:
            xs.sendStreamError(error.StreamError("improper-addressing"))
            return
        if domain not in self.secrets:
            xs.sendStreamError(error.StreamError("host-unknown"))
            return
        xs.thisEntity = jid.internJID(domain)  # a configured domain: checked when the config was read
        if domain in self.connected:
            self._conflict(domain)
            return
        self.secret = self.secrets[domain]
        xs.sendHeader()
        xs.addOnetimeObserver("/*", self.onElement)

    def onHandshake(self, handshake: str) -> None:
        domain = self.xmlstream.thisEntity.host
        expected = xmlstream.hashPassword(self.xmlstream.sid, self.secret)
        if not hmac.compare_digest(handshake.strip().lower().encode(), expected.encode()):
            log.info("component.refused domain={domain}", domain=domain)
            self.xmlstream.sendStreamError(error.StreamError("not-authorized", text="invalid handshake"))
            return
        # Checked again: another stream for the domain may have shaken hands since this one opened.
        if domain in self.connected:
            self._conflict(domain)
            return
        log.info("component.connected domain={domain}", domain=domain)
        self.xmlstream.send("<handshake/>")
        self.xmlstream.dispatch(self.xmlstream, xmlstream.STREAM_AUTHD_EVENT)

    def _conflict(self, domain: str) -> None:
        log.warn("component.conflict domain={domain} peer={peer}", domain=domain, peer=self.xmlstream.peer)
        self.xmlstream.sendStreamError(error.StreamError("conflict", text="that component is connected"))


def _to_client_namespace(element: domish.Element) -> None:
    """Stanzas from a component are in jabber:component:accept; inside the server they are jabber:client."""
    if element.uri == NS_COMPONENT_ACCEPT:
        element.uri = NS_CLIENT
    if element.defaultUri == NS_COMPONENT_ACCEPT:
        element.defaultUri = NS_CLIENT
    for child in element.elements():
        _to_client_namespace(child)


class ComponentRoute:
    """The Router's route to one component: stanzas leave in the component's namespace.

    Serialising with jabber:client as the default leaves those elements without
    an xmlns, so on the component's stream they read as jabber:component:accept,
    without changing the (possibly shared) element.
    """

    def __init__(self, xs: xmlstream.XmlStream) -> None:
        self.xs = xs

    def send(self, stanza: domish.Element) -> None:
        self.xs.send(stanza.toXml(defaultUri=NS_CLIENT))


class ComponentServerFactory(XMPPComponentServerFactory):
    """Accepts the configured components and routes their domains to them."""

    def __init__(self, router: StanzaRouter, secrets: Mapping[str, str], clock: IReactorTime,
                 limits: ComponentLimits | None = None) -> None:
        super().__init__(router, secret=None)
        self.secrets = dict(secrets)
        self.clock = clock
        self.limits = limits or ComponentLimits()
        self.authenticatorFactory = lambda: ComponentAuthenticator(self.secrets, router.routes)
        self.streams: set[xmlstream.XmlStream] = set()
        self.unauthenticated = Tally()  # streams that have not shaken hands, by address

    def buildProtocol(self, addr: IAddress | None) -> ComponentStream:
        xs = ComponentStream(self.authenticatorFactory(), self.limits.max_stanza_bytes, self.clock)
        xs.factory = self
        self.installBootstraps(xs)
        host = str(getattr(addr, "host", "?"))
        count = self.unauthenticated.add(host)
        xs.on_settled.append(lambda: self.unauthenticated.remove(host))
        if count > self.limits.max_unauthenticated_per_ip:
            log.warn("component.too_many_unauthenticated peer={peer}", peer=host)
            xs.refusal = error.StreamError("policy-violation", text="too many unauthenticated connections")
        return xs

    def makeConnection(self, xs: ComponentStream) -> None:
        # wokkel's makeConnection only numbers the stream and logs its traffic when asked.
        xs.addObserver(xmlstream.STREAM_ERROR_EVENT, self.onError)
        self.streams.add(xs)
        xs.addObserver(xmlstream.STREAM_END_EVENT, lambda reason: self.streams.discard(xs))
        xs.deadline = self.clock.callLater(self.limits.handshake_timeout, self._deadline, xs)

    def _deadline(self, xs: ComponentStream) -> None:
        xs.deadline = None
        log.info("component.handshake_timeout peer={peer}", peer=xs.peer)
        xs.fail(error.StreamError("connection-timeout", text="shake hands sooner"))

    def connectionInitialized(self, xs: ComponentStream) -> None:
        # As wokkel's, but stanzas from the component pass a sender check on
        # their way to the router: a component speaks only for its own domain.
        xs.settle()
        assert xs.thisEntity is not None, "set from the stream header before the handshake"
        domain: str = xs.thisEntity.host
        self.router.routes[domain] = ComponentRoute(xs)
        for watch in self.router.component_watchers:
            watch(domain, True)
        xs.addObserver("/*", lambda stanza: self._from_component(domain, xs, stanza))
        xs.addObserver(xmlstream.STREAM_END_EVENT, self.connectionLost, 0, domain, xs)

    def _from_component(self, domain: str, xs: xmlstream.XmlStream, stanza: domish.Element) -> None:
        try:
            sender = parse_jid(stanza.getAttribute("from", ""))
        except InvalidFormat:
            sender = None
        if sender is None or sender.host != domain:
            xs.sendStreamError(error.StreamError("invalid-from"))
            return
        _to_client_namespace(stanza)
        self.router.route(stanza)

    def connectionLost(self, destination: str, xs: xmlstream.XmlStream, reason: object) -> None:
        log.info("component.disconnected domain={domain}", domain=destination)
        route = self.router.routes.get(destination)
        if isinstance(route, ComponentRoute) and route.xs is xs:
            del self.router.routes[destination]
            for watch in self.router.component_watchers:
                watch(destination, False)

    def onError(self, reason: object) -> None:
        log.info("component.stream_error_received reason={reason}", reason=str(reason))

    def shut_down(self) -> None:
        for xs in list(self.streams):
            xs.sendStreamError(error.StreamError("system-shutdown"))
