"""One server-to-server XML stream (RFC 6120, 'jabber:server'), either direction.

As the client and component streams: Twisted's jabber XmlStream on the hardened parser
(parsing.py: no DTDs or entities, the stanza size, depth and attribute limits), parse errors
and limits as stream errors for this stream alone, a handler that raises ending only this
stream. The negotiation is the handler's (inbound.py, outbound.py); the stream carries bytes,
the header, the restarts after STARTTLS and SASL, and the times the idle sweep reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.c2s import BACKLOG_CHECK_EVERY, buffered_bytes
from sns_xmpp.xmpp.parsing import HostileXML, guarded_stream
from sns_xmpp.xmpp.s2s.dialback import NS_DIALBACK, NS_SERVER
from sns_xmpp.xmpp.serialization import escape_attribute, plain_xml
from sns_xmpp.xmpp.stanzas import NS_CLIENT

log = GatedLogger()

_PREFIXES = {xmlstream.NS_STREAMS: "stream", NS_DIALBACK: "db"}


class StreamHandler(Protocol):
    """What drives a stream: the receiving (inbound.py) or the initiating side (outbound.py)."""

    def connection_made(self) -> None: ...

    def stream_started(self, root: domish.Element) -> None: ...

    def element_received(self, element: domish.Element) -> None: ...

    def connection_lost(self, reason: Failure) -> None: ...


def to_client_namespace(element: domish.Element) -> None:
    """Stanzas from a peer are in jabber:server; inside this server they are jabber:client. (A
    loop over `children`, not a recursion over `elements()`: a third of the receiving side's
    cost per message went to the generators.)"""
    pending = [element]
    while pending:
        current = pending.pop()
        if current.uri == NS_SERVER:
            current.uri = NS_CLIENT
        if current.defaultUri == NS_SERVER:
            current.defaultUri = NS_CLIENT
        pending.extend(child for child in current.children if not isinstance(child, str))


class _Detached:
    """The handler of a stream whose connection is gone: it ignores everything."""

    def connection_made(self) -> None:
        pass

    def stream_started(self, root: domish.Element) -> None:
        pass

    def element_received(self, element: domish.Element) -> None:
        pass

    def connection_lost(self, reason: Failure) -> None:
        pass


_DETACHED = _Detached()


class ServerStream(xmlstream.XmlStream):
    # Twisted declares these as None only.
    sid: str | None  # type: ignore[assignment]
    stream: Any

    handler: StreamHandler

    def __init__(self, handler: StreamHandler, direction: str, max_stanza_bytes: int, clock: IReactorTime,
                 secure: bool = False, max_outbound_bytes: int = 8 * 1024 * 1024) -> None:
        super().__init__(xmlstream.Authenticator())
        self.authenticator = None  # the handler negotiates; Twisted's authenticator is never used
        self.handler = handler
        self.direction = direction  # "in" or "out"
        self.initiating = direction == "out"
        self.namespace = NS_SERVER
        self.prefixes = dict(_PREFIXES)
        self.max_stanza_bytes = max_stanza_bytes
        self.clock = clock
        self.secure = secure
        self.closed = False
        self.lost = False
        self.footer_sent = False
        self.opened_at = self.last_active = clock.seconds()
        self.header_from: str | None = None  # what our header says, set by the handler
        self.header_to: str | None = None
        self.on_close: list[Callable[[], None]] = []
        self.error_received: str | None = None  # the condition of a stream error the peer sent
        # What may wait unread by the peer before the stream ends (a server that accepts and never
        # reads would otherwise hold our memory for every stanza routed to its domain).
        self.max_outbound_bytes = max_outbound_bytes
        self._unchecked = 0  # bytes written since the last look at the backlog
        self._fed = 0

    @property
    def peer(self) -> str:
        address = self.transport.getPeer() if self.transport is not None else None
        return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"

    def _initializeStream(self) -> None:  # noqa: N802 - Twisted's name
        self.stream = guarded_stream(self.max_stanza_bytes, self)
        self._fed = 0

    def _callLater(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 - Twisted's name
        return self.clock.callLater(*args, **kwargs)

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self._initializeStream()
        self.handler.connection_made()

    def sendHeader(self) -> None:  # noqa: N802 - Twisted's name
        """Our stream header: jabber:server, the dialback prefix (XEP-0220 2.1.1), version 1.0."""
        attributes = ""
        if self.header_from:
            attributes += f" from='{escape_attribute(self.header_from)}'"
        if self.header_to:
            attributes += f" to='{escape_attribute(self.header_to)}'"
        if self.sid and not self.initiating:
            attributes += f" id='{escape_attribute(self.sid)}'"
        self.send(f"<stream:stream xmlns:stream='{xmlstream.NS_STREAMS}' xmlns='{NS_SERVER}' "
                  f"xmlns:db='{NS_DIALBACK}'{attributes} version='1.0'>")
        self._headerSent = True

    def restart(self) -> None:
        """A stream restart (after <proceed/> or SASL <success/>): what else the read held is
        dropped with the old parser (no plaintext rides into the TLS stream)."""
        old = self.stream
        if old is not None:
            old.retire()
        self.reset()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self.closed:
            return
        self.last_active = self.clock.seconds()
        self._fed += len(data)
        try:
            self.stream.parse(data)
            if self.stream is not None and not self.closed:
                self.stream.measure(self._fed)
        except domish.ParserError:
            self.fail(StreamError("not-well-formed"))
        except HostileXML as hostile:
            self.fail(StreamError(hostile.condition, text=hostile.text))

    def onDocumentStart(self, rootElement: domish.Element) -> None:  # noqa: N802, N803 - Twisted's names
        if self.initiating:
            self.sid = rootElement.getAttribute("id")
        try:
            self.handler.stream_started(rootElement)
        except Exception:
            log.failure("s2s.handler_failed peer={peer}", peer=self.peer)
            self.fail(StreamError("internal-server-error"))

    def onElement(self, element: domish.Element) -> None:  # noqa: N802 - Twisted's name
        if self.closed:
            return
        if element.uri == xmlstream.NS_STREAMS and element.name == "error":
            condition = next((child.name for child in element.elements()
                              if child.uri == "urn:ietf:params:xml:ns:xmpp-streams"), "undefined-condition")
            log.info("s2s.stream_error_received condition={condition} peer={peer} direction={direction}",
                     condition=condition, peer=self.peer, direction=self.direction)
            self.error_received = condition
            self.close()
            return
        try:
            self.handler.element_received(element)
        except Exception:
            log.failure("s2s.handler_failed peer={peer}", peer=self.peer)
            self.fail(StreamError("internal-server-error"))

    def onDocumentEnd(self) -> None:  # noqa: N802 - Twisted's name
        self.close()

    def fail(self, problem: StreamError) -> None:
        """Send a stream error and close this stream only."""
        if self.closed:
            return
        log.info("s2s.stream_error condition={condition} peer={peer} direction={direction}",
                 condition=problem.condition, peer=self.peer, direction=self.direction)
        self.closed = True
        if self.stream is not None:
            self.stream.retire()
        if self.transport is not None:
            self.sendStreamError(problem)

    def close(self) -> None:
        """End the stream properly: our footer, then the connection."""
        if self.closed:
            return
        self.closed = True
        if self._headerSent:
            self.sendFooter()
        if self.transport is not None:
            self.transport.loseConnection()

    def send(self, obj: domish.Element | str | bytes) -> None:
        if self.transport is None or self.footer_sent:
            return  # RFC 6120 4.4: nothing follows </stream:stream>
        if isinstance(obj, bytes):
            data = obj
        else:
            data = (obj if isinstance(obj, str) else self.serialize(obj)).encode("utf-8")
        self.last_active = self.clock.seconds()
        self.transport.write(data)
        self._unchecked += len(data)
        if self._unchecked >= BACKLOG_CHECK_EVERY:
            self._unchecked = 0
            if buffered_bytes(self.transport) > self.max_outbound_bytes:
                self.fail(StreamError("policy-violation", text="too much unread data"))

    def serialize(self, element: domish.Element) -> str:
        """A stanza of this server (jabber:client inside) written without a namespace, so that on
        this stream it reads as jabber:server; other elements with their own."""
        plain = plain_xml(element, NS_CLIENT, self.prefixes)
        if plain is not None:
            return plain
        return element.toXml(prefixes=self.prefixes, defaultUri=NS_CLIENT,
                             prefixesInScope=list(self.prefixes.values()))

    def sendFooter(self) -> None:  # noqa: N802 - Twisted's name
        super().sendFooter()
        self.footer_sent = True

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]  # noqa: N802
        self.closed = True
        self.lost = True
        if self.stream is not None:
            self.stream.retire()
        self.stream = None
        try:
            self.handler.connection_lost(reason)
        except Exception:
            log.failure("s2s.close_callback_failed")
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.failure("s2s.close_callback_failed")
        # The stream and its handler point at each other: cut that, so that reference counting
        # frees the connection now rather than the cycle collector later (see parsing.py).
        self.handler = _DETACHED
