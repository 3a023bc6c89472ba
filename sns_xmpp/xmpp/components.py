"""XEP-0114 external components, on wokkel's component server and Router.

Each component domain has its own secret (no default); the handshake is
compared in constant time (wokkel compares with ``!=``), an unknown domain gets
``host-unknown``, and a component may only send from its own domain.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from twisted.words.protocols.jabber import error, xmlstream
from twisted.words.xish import domish
from wokkel.component import NS_COMPONENT_ACCEPT, ListenComponentAuthenticator, XMPPComponentServerFactory

from sns_xmpp.ops.log_gate import GatedLogger
from sns_xmpp.xmpp.addressing import InvalidFormat, parse_jid
from sns_xmpp.xmpp.routing import StanzaRouter
from sns_xmpp.xmpp.stanzas import NS_CLIENT

log = GatedLogger()


class ComponentAuthenticator(ListenComponentAuthenticator):
    def __init__(self, secrets: Mapping[str, str], connected: Mapping[str, object]) -> None:
        super().__init__(secret=None)
        self.secrets = secrets
        self.connected = connected

    def streamStarted(self, rootElement: domish.Element) -> None:
        domain = rootElement.getAttribute("to")
        # The header we answer with (before any error) needs the stream's namespace and id.
        xmlstream.ListenAuthenticator.streamStarted(self, rootElement)
        if domain not in self.secrets:
            self.xmlstream.sendStreamError(error.StreamError("host-unknown"))
            return
        if domain in self.connected:
            self.xmlstream.sendStreamError(error.StreamError("conflict", text="that component is connected"))
            return
        self.secret = self.secrets[domain]
        super().streamStarted(rootElement)

    def onHandshake(self, handshake: str) -> None:
        expected = xmlstream.hashPassword(self.xmlstream.sid, self.secret)
        if not hmac.compare_digest(handshake.strip().lower().encode(), expected.encode()):
            log.info("component.refused domain={domain}", domain=self.xmlstream.thisEntity.host)
            self.xmlstream.sendStreamError(error.StreamError("not-authorized", text="invalid handshake"))
            return
        log.info("component.connected domain={domain}", domain=self.xmlstream.thisEntity.host)
        self.xmlstream.send("<handshake/>")
        self.xmlstream.dispatch(self.xmlstream, xmlstream.STREAM_AUTHD_EVENT)


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

    def __init__(self, router: StanzaRouter, secrets: Mapping[str, str]) -> None:
        super().__init__(router, secret=None)
        self.secrets = dict(secrets)
        self.authenticatorFactory = lambda: ComponentAuthenticator(self.secrets, router.routes)
        self.streams: set[xmlstream.XmlStream] = set()

    def makeConnection(self, xs: xmlstream.XmlStream) -> None:
        super().makeConnection(xs)
        self.streams.add(xs)
        xs.addObserver(xmlstream.STREAM_END_EVENT, lambda reason: self.streams.discard(xs))

    def connectionInitialized(self, xs: xmlstream.XmlStream) -> None:
        # As wokkel's, but stanzas from the component pass a sender check on
        # their way to the router: a component speaks only for its own domain.
        assert xs.thisEntity is not None, "set from the stream header before the handshake"
        domain: str = xs.thisEntity.host
        self.router.routes[domain] = ComponentRoute(xs)
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

    def onError(self, reason: object) -> None:
        log.info("component.stream_error reason={reason}", reason=str(reason))

    def shut_down(self) -> None:
        for xs in list(self.streams):
            xs.sendStreamError(error.StreamError("system-shutdown"))
