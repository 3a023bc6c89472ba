"""One client-to-server XML stream (RFC 6120) and the factory that makes them.

The stream owns parsing, the stanza size limit and the error boundary: a
handler that raises turns into ``internal-server-error`` for that stanza, a
parse error into ``not-well-formed`` for this stream alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from sns_xmpp.xmpp.stanzas import NS_CLIENT, error_reply, may_bounce

log = Logger()

ElementHandler = Callable[[domish.Element], None]

MAX_DEPTH = 48  # stanzas nest a handful of levels; data forms and Jingle stay well below this
MAX_ATTRIBUTES = 64


class HostileXML(Exception):
    """Input RFC 6120 forbids or this server will not parse, with the stream error it earns."""

    def __init__(self, condition: str, text: str) -> None:
        super().__init__(condition, text)
        self.condition = condition
        self.text = text


def harden(parser: Any) -> None:
    """Refuse what RFC 6120 11.1 restricts (DTDs, entity declarations, comments, processing
    instructions) so billion-laughs and external entities never start, and bound the depth
    and the attribute count of what remains."""

    def restricted(*args: object) -> None:
        raise HostileXML("restricted-xml", "DTDs, comments, processing instructions and entities are not allowed")

    for handler in ("StartDoctypeDeclHandler", "EntityDeclHandler", "UnparsedEntityDeclHandler",
                    "NotationDeclHandler", "CommentHandler", "ProcessingInstructionHandler",
                    "ExternalEntityRefHandler", "SkippedEntityHandler"):
        setattr(parser, handler, restricted)
    start, end = parser.StartElementHandler, parser.EndElementHandler
    depth = [0]

    def bounded_start(name: str, attributes: dict[str, str]) -> None:
        depth[0] += 1
        if depth[0] > MAX_DEPTH:
            raise HostileXML("policy-violation", "elements nested too deeply")
        if len(attributes) > MAX_ATTRIBUTES:
            raise HostileXML("policy-violation", "too many attributes")
        start(name, attributes)

    def bounded_end(name: str) -> None:
        depth[0] -= 1
        end(name)

    parser.StartElementHandler = bounded_start
    parser.EndElementHandler = bounded_end


class ClientStream(xmlstream.XmlStream):
    """A c2s stream whose elements go straight to one handler, not xpath observers."""

    # Twisted declares these as None only.
    sid: str | None  # type: ignore[assignment]
    thisEntity: JID | None  # type: ignore[assignment]
    otherEntity: JID | None  # type: ignore[assignment]
    stream: Any

    def __init__(self, authenticator: xmlstream.Authenticator, max_stanza_bytes: int,
                 clock: IReactorTime, secure: bool) -> None:
        super().__init__(authenticator)
        self.namespace = NS_CLIENT
        self.max_stanza_bytes = max_stanza_bytes
        self.clock = clock
        self.secure = secure
        self.closed = False
        self.on_close: list[Callable[[], None]] = []
        self.element_handler: ElementHandler = self._refuse
        self._unparsed = 0

    def _initializeStream(self) -> None:
        super()._initializeStream()
        harden(self.stream.parser)

    def _callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(*args, **kwargs)

    @property
    def peer(self) -> str:
        address = self.transport.getPeer() if self.transport else None
        return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        # Counting bytes since the last complete top-level element bounds the
        # memory one stanza can take before parsing has finished it.
        self._unparsed += len(data)
        if self._unparsed > self.max_stanza_bytes:
            self.fail(StreamError("policy-violation", text="stanza too large"))
            return
        try:
            self.stream.parse(data)
        except domish.ParserError:
            self.fail(StreamError("not-well-formed"))
        except HostileXML as hostile:
            self.fail(StreamError(hostile.condition, text=hostile.text))

    def onElement(self, element: domish.Element) -> None:
        self._unparsed = 0
        if self.closed:
            return
        if element.uri == xmlstream.NS_STREAMS and element.name == "error":
            self.close()
            return
        try:
            self.element_handler(element)
        except Exception:
            log.failure("c2s.handler_failed peer={peer}", peer=self.peer)
            if element.name in ("message", "presence", "iq") and may_bounce(element):
                reply = error_reply(element, "internal-server-error")
                reply.attributes.pop("from", None)
                self.send(reply)

    def onDocumentEnd(self) -> None:
        self.close()

    def fail(self, error: StreamError) -> None:
        """Send a stream error and close this stream only."""
        if self.closed:
            return
        self.closed = True
        log.info("c2s.stream_error condition={condition} peer={peer}", condition=error.condition, peer=self.peer)
        self.sendStreamError(error)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._headerSent:
            self.sendFooter()
        if self.transport is not None:
            self.transport.loseConnection()

    def send(self, obj: domish.Element | str | bytes) -> None:
        if self.transport is not None:
            super().send(obj)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.closed = True
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.failure("c2s.close_callback_failed")
        super().connectionLost(reason)

    def _refuse(self, element: domish.Element) -> None:
        self.fail(StreamError("not-authorized"))


class ClientStreamFactory(protocol.Factory):
    """Makes a `ClientStream` with a fresh negotiator per connection."""

    def __init__(self, make_authenticator: Callable[[], xmlstream.Authenticator], max_stanza_bytes: int,
                 clock: IReactorTime, secure: bool = False) -> None:
        self.make_authenticator = make_authenticator
        self.max_stanza_bytes = max_stanza_bytes
        self.clock = clock
        self.secure = secure
        self.streams: set[ClientStream] = set()

    def buildProtocol(self, addr: IAddress | None) -> ClientStream:
        stream = ClientStream(self.make_authenticator(), self.max_stanza_bytes, self.clock, self.secure)
        stream.factory = self
        self.streams.add(stream)
        stream.on_close.append(lambda: self.streams.discard(stream))
        return stream

    def shut_down(self) -> None:
        """End every stream with <system-shutdown/> (RFC 6120 4.9.3.17), as the server stops."""
        for stream in list(self.streams):
            stream.fail(StreamError("system-shutdown"))
