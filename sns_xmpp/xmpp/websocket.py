"""XMPP over WebSocket (RFC 7395) on the HTTP listener, at ``/xmpp-websocket``.

A WebSocket connection carries the same client stream as a TCP connection: the same
`c2s.ClientStream`, negotiation, hardened parser, limits, SASL (SASL2 and FAST included), stream
management and features. Only the framing differs, and this module translates it both ways:

- in: the client's ``<open/>`` (namespace ``urn:ietf:params:xml:ns:xmpp-framing``) becomes the stream
  header the stream expects, its ``<close/>`` the stream's end, and every other message, one
  complete element each (section 3.3.3), is fed to the stream as it is: it declares its own
  namespace, which is the stream's default anyway;
- out: the stream header becomes ``<open/>``, the stream's end ``<close/>``, and each element the
  stream writes is sent as a message of its own, its namespace declared on it (section 3.3.3:
  every message is a document of its own): ``xmlns='jabber:client'`` on stanzas, which a TCP
  stream leaves to the stream header, and ``xmlns:stream`` on ``<stream:features/>`` and
  ``<stream:error/>``.

The WebSocket protocol itself is autobahn's. The handshake must offer the ``xmpp`` subprotocol
(section 3.2); one that does not is refused with 400. PLAIN follows the TCP stream's rules: the
HTTP listener has no TLS of its own, so a WebSocket stream counts as secure only when it comes
from a loopback address or from a TLS-terminating proxy named in ``[http] trusted_proxies`` that
says ``X-Forwarded-Proto: https``; from such a proxy, the client's address (for the per-address
limits and the login throttle) is the last one in ``X-Forwarded-For``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, ITransport
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.protocols.jabber.xmlstream import NS_STREAMS
from zope.interface import implementer

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.c2s import ClientStream, ClientStreamFactory
from sns_xmpp.xmpp.serialization import escape_attribute
from sns_xmpp.xmpp.stanzas import NS_CLIENT

log = GatedLogger()

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SUBPROTOCOL = "xmpp"
PATH = b"xmpp-websocket"

_OPEN = re.compile(r"""\s*<open\s((?:\s*[\w:.-]+\s*=\s*(?:'[^']*'|"[^"]*"))*)\s*/>\s*\Z""")
_CLOSE = re.compile(r"""\s*<close(?:\s+[\w:.-]+\s*=\s*(?:'[^']*'|"[^"]*"))*\s*/>\s*\Z""")
_ATTRIBUTE = re.compile(r"""([\w:.-]+)\s*=\s*(?:'([^']*)'|"([^"]*)")""")
# The server's own output, well-formed and escaped by its serialisers: no '<' or '>' inside a tag's
# attribute values or in text, so its tags are found by a scan.
_TAG = re.compile(r"<(/?)([^\s/>]+)[^>]*?(/?)>")
_HEADER = re.compile(r"<stream:stream\b([^>]*)>")
_STREAM_ATTRIBUTES = ("from", "id", "version", "xml:lang")
_UNESCAPES = {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&apos;": "'", "&quot;": '"'}


def _attributes(text: str) -> dict[str, str]:
    """A start tag's attributes, character references for the five XML entities resolved."""
    found = {}
    for name, single, double in _ATTRIBUTE.findall(text):
        value = single if single or not double else double
        found[name] = re.sub(r"&(lt|gt|amp|apos|quot);", lambda m: _UNESCAPES[m.group(0)], value)
    return found


def framing_element(payload: str) -> tuple[str, dict[str, str]] | None:
    """("open" | "close", attributes) when *payload* is one of RFC 7395's framing elements in their
    namespace, else None."""
    opened = _OPEN.match(payload)
    if opened is not None:
        attributes = _attributes(opened.group(1))
        return ("open", attributes) if attributes.get("xmlns") == NS_FRAMING else None
    if _CLOSE.match(payload) is not None:
        attributes = _attributes(payload)
        return ("close", attributes) if attributes.get("xmlns") == NS_FRAMING else None
    return None


def stream_header(attributes: dict[str, str]) -> bytes:
    """The RFC 6120 stream header an ``<open/>`` stands for."""
    parts = [f"<stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}'"]
    for name in ("to", "from", "version", "xml:lang"):
        if name in attributes:
            parts.append(f" {name}='{escape_attribute(attributes[name])}'")
    parts.append(">")
    return "".join(parts).encode("utf-8")


def frames(written: str) -> list[str]:
    """What the stream wrote, as RFC 7395 messages: ``<open/>`` for its header, ``<close/>`` for
    its end, and each element on its own with its namespace declared."""
    single = _one_element(written)
    if single is not None:
        return [single]
    out: list[str] = []
    at, end = 0, len(written)
    while at < end:
        while at < end and written[at] in " \t\r\n":
            at += 1
        if at >= end:
            break
        if written.startswith("<stream:stream", at):
            header = _HEADER.match(written, at)
            if header is None:
                raise ValueError("a stream header not closed in one write")
            attributes = _attributes(header.group(1))
            kept = "".join(f" {name}='{escape_attribute(attributes[name])}'"
                           for name in _STREAM_ATTRIBUTES if name in attributes)
            out.append(f"<open xmlns='{NS_FRAMING}'{kept}/>")
            at = header.end()
        elif written.startswith("</stream:stream>", at):
            out.append(f"<close xmlns='{NS_FRAMING}'/>")
            at += len("</stream:stream>")
        else:
            element_end = _element_end(written, at)
            out.append(_declared(written[at:element_end]))
            at = element_end
    return out


def _one_element(written: str) -> str | None:
    """The common write, one stanza (`c2s.ClientStream.send` writes an element at a time), framed
    without scanning its tags: when it is one element, its end tag is what it ends with. None
    when that is not plain (the header, the footer, several elements: `frames` scans them)."""
    start = _TAG.match(written)
    if start is None or start.group(1) or written.startswith("<stream:stream"):
        return None
    if start.group(3):  # self-closing: one element only if nothing follows
        return _declared(written) if start.end() == len(written) else None
    name = start.group(2)
    if not written.endswith(f"</{name}>"):
        return None
    # The same name might close an inner element with text after it at the top level (not a
    # stanza this server writes, but then the scan decides).
    if written.count(f"<{name}") != 1 and _element_end(written, 0) != len(written):
        return None
    return _declared(written)


def _element_end(written: str, start: int) -> int:
    depth = 0
    for tag in _TAG.finditer(written, start):
        closing, _, empty = tag.groups()
        if closing:
            depth -= 1
        elif not empty:
            depth += 1
        if depth == 0:
            return tag.end()
    raise ValueError("an element not closed in one write")


def _declared(element: str) -> str:
    """*element* with the namespaces it had from the stream declared on itself: the default one,
    and the ``stream`` prefix wherever it is used inside (an element of the streams namespace a
    client put in a stanza is written with the stream's prefix)."""
    start = _TAG.match(element)
    assert start is not None
    name = start.group(2)
    insert_at = 1 + len(name)
    declarations = ""
    if "stream:" in element and "xmlns:stream=" not in start.group(0):
        declarations += f" xmlns:stream='{NS_STREAMS}'"  # maybe unused (text that says stream:): harmless
    # The attributes' names only: resolving their values (`_attributes`) was half of framing a stanza.
    if not name.startswith("stream:") and all(attribute != "xmlns" for attribute, _, _ in
                                               _ATTRIBUTE.findall(start.group(0), insert_at)):
        declarations += f" xmlns='{NS_CLIENT}'"
    return element[:insert_at] + declarations + element[insert_at:] if declarations else element


@implementer(ITransport)
class FramedTransport:
    """What the client stream writes to: each write becomes WebSocket messages."""

    def __init__(self, socket: XMPPWebSocket) -> None:
        self.socket = socket
        self.disconnecting = False
        # c2s.buffered_bytes looks through this to the TCP transport's buffer (the backlog limit)
        self.inner_transport = socket.transport

    def write(self, data: bytes) -> None:
        self.socket.send_written(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:  # noqa: N802 - Twisted's name
        self.write(b"".join(data))

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.disconnecting = True
        self.socket.close_after_stream()

    def abortConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.disconnecting = True
        self.socket.dropConnection(abort=True)

    def getPeer(self) -> IAddress:  # noqa: N802 - Twisted's name
        return self.socket.client_address

    def getHost(self) -> IAddress:  # noqa: N802 - Twisted's name
        assert self.socket.transport is not None
        return self.socket.transport.getHost()


class XMPPWebSocket(WebSocketServerProtocol):
    """One WebSocket connection: a client stream behind RFC 7395's framing."""

    factory: XMPPWebSocketFactory
    stream: ClientStream | None = None
    client_address: IAddress
    secure = False
    _closing = False

    def onConnect(self, request: ConnectionRequest) -> str:  # noqa: N802 - autobahn's name
        if SUBPROTOCOL not in request.protocols:
            log.info("websocket.refused peer={peer} reason=no-xmpp-subprotocol", peer=request.peer)
            raise ConnectionDeny(400, "the xmpp subprotocol is required (RFC 7395 section 3.2)")
        assert self.transport is not None
        self.client_address, self.secure = self.factory.client(self.transport.getPeer(), request.headers)
        return SUBPROTOCOL

    def onOpen(self) -> None:  # noqa: N802 - autobahn's name
        stream = self.factory.streams.buildProtocol(self.client_address)
        stream.secure = self.secure
        self.stream = stream
        stream.makeConnection(FramedTransport(self))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803 - autobahn's names
        stream = self.stream
        if stream is None or stream.closed:
            return
        if isBinary:
            stream.fail(StreamError("unsupported-encoding", text="XMPP over WebSocket is text messages"))
            return
        text = payload.decode("utf-8", "replace")
        framing = framing_element(text) if text.lstrip().startswith(("<open", "<close")) else None
        if framing is not None:
            kind, attributes = framing
            if kind == "open" and self.factory.see_other and not stream._headerSent:
                # Section 3.6.1: the client is sent elsewhere, before any stream starts here.
                elsewhere = escape_attribute(self.factory.see_other)
                self.sendMessage(f"<close xmlns='{NS_FRAMING}' see-other-uri='{elsewhere}'/>".encode(), isBinary=False)
                self.close_after_stream()
                return
            if kind == "open":
                stream.dataReceived(stream_header(attributes))
            else:
                stream.dataReceived(b"</stream:stream>")
            return
        if not stream._headerSent:
            # The first message must be <open/> (section 3.3.1): a TCP-style header, or anything
            # else, gets the stream's own answer to a header in the wrong namespace.
            stream.dataReceived(b"<stream:stream xmlns='jabber:client' xmlns:stream='urn:invalid'>")
            return
        stream.dataReceived(payload)

    def send_written(self, data: bytes) -> None:
        try:
            messages = frames(data.decode("utf-8"))
        except ValueError:
            log.error("websocket.unframeable_write bytes={size}", size=len(data))
            self.dropConnection(abort=True)
            return
        for message in messages:
            self.sendMessage(message.encode("utf-8"), isBinary=False)

    def close_after_stream(self) -> None:
        """The stream is over (its <close/> is sent): close the WebSocket (section 3.6.1)."""
        if not self._closing:
            self._closing = True
            self.sendClose(1000)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        stream, self.stream = self.stream, None
        if stream is not None and not stream.lost:
            stream.connectionLost(Failure(ConnectionError(f"websocket closed ({code})")))


class XMPPWebSocketFactory(WebSocketServerFactory):
    protocol = XMPPWebSocket  # type: ignore[assignment]

    def __init__(self, streams: ClientStreamFactory, max_message_bytes: int, trusted_proxies: Collection[str],
                 url: str | None = None, see_other: str = "") -> None:
        super().__init__(url, protocols=[SUBPROTOCOL])
        self.streams = streams
        self.see_other = see_other  # [http] websocket_see_other: where to send clients instead
        self.trusted_proxies = frozenset(trusted_proxies)
        # A message is one stanza: the stream's own limit applies inside, this one to the frame.
        self.setProtocolOptions(maxMessagePayloadSize=max_message_bytes, maxFramePayloadSize=max_message_bytes,
                                autoPingInterval=0, openHandshakeTimeout=20, closeHandshakeTimeout=5)

    def client(self, peer: IAddress, headers: dict[str, str]) -> tuple[IAddress, bool]:
        """The client's address and whether its connection is private: loopback, or through a
        trusted proxy that terminated TLS."""
        host = str(getattr(peer, "host", ""))
        if host in self.trusted_proxies:
            forwarded = [part.strip() for part in headers.get("x-forwarded-for", "").split(",") if part.strip()]
            secure = headers.get("x-forwarded-proto", "").lower() == "https"
            if forwarded:
                return _address(forwarded[-1], peer), secure
            return peer, secure
        try:
            return peer, ipaddress.ip_address(host).is_loopback
        except ValueError:
            return peer, False


def _address(text: str, fallback: IAddress) -> IAddress:
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        return fallback
    port = int(getattr(fallback, "port", 0))
    return IPv6Address("TCP", text, port) if parsed.version == 6 else IPv4Address("TCP", text, port)


class XMPPWebSocketResource(WebSocketResource):
    """autobahn's resource, which takes the connection over from the HTTP channel: the channel's
    deadlines are called off, and its place in the HTTP per-address count is given back at once
    (the client stream's caps per address count it from then on)."""

    def render(self, request: Any) -> Any:
        hand_over = getattr(request.channel, "hand_over", None)
        if hand_over is not None:
            hand_over()
        return super().render(request)
