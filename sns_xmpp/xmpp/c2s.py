"""One client-to-server XML stream (RFC 6120) and the factory that makes them.

The stream owns parsing, the stanza size limit and the error boundary: a
handler that raises turns into ``internal-server-error`` for that stanza, a
parse error into ``not-well-formed`` for this stream alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet import abstract, protocol, task
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.tally import Tally
from sns_xmpp.xmpp import serialization
from sns_xmpp.xmpp.parsing import HostileXML, guarded_stream
from sns_xmpp.xmpp.serialization import escape_attribute, escape_uri, plain_xml
from sns_xmpp.xmpp.stanzas import NS_CLIENT, add_element, error_reply, may_bounce

log = GatedLogger()

ElementHandler = Callable[[domish.Element], None]

RELEASE_PARSER_AFTER = 60.0  # seconds of silence after which a bound stream drops its parser
BACKLOG_CHECK_EVERY = 65536  # bytes written between two looks at what the client has not read yet
CLOSE_GRACE = 5.0  # seconds a stream ended with an error has to take it before the connection is cut


def _connection(transport: object) -> object:
    """The transport under *transport*'s layers: each layer that names one (a WebSocket's framing,
    a PROXY protocol reader under it) is passed, then any direct TLS layer."""
    inner = getattr(transport, "inner_transport", None)
    while inner is not None and inner is not transport:
        transport, inner = inner, getattr(inner, "inner_transport", None)
    while isinstance(transport, TLSMemoryBIOProtocol):
        transport = transport.transport
    return transport


def buffered_bytes(transport: object) -> int:
    """Bytes written to *transport* that the kernel has not taken yet, i.e. the server's memory held
    for a client that does not read. Twisted's `FileDescriptor` keeps them (`tcp.Server` and the
    project's `FlushingServer`, whose round's writes wait in the same two buffers; with STARTTLS the
    ciphertext lands there too); under a `TLSMemoryBIOProtocol` (direct TLS) it is the wrapped
    transport's, the ciphertext being handed on as soon as it is made. Transports that keep no
    such buffer (test doubles) count 0; a WebSocket's framing (`websocket.FramedTransport`) names
    the transport under it as ``inner_transport``, and so does a PROXY protocol reader
    (`proxy_protocol.ProxyHeaderReader`, which a direct TLS layer's attribute lookup reaches too).
    Twisted has no public accessor: these are the names `FileDescriptor.write` and `doWrite` use,
    and a tripwire test watches them."""
    transport = _connection(transport)
    if isinstance(transport, abstract.FileDescriptor):
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return 0


def _ignore(element: domish.Element | str) -> None:
    pass


def _count_nothing(limit: str) -> None:
    pass


def priming_header(root: domish.Element) -> bytes:
    """A start tag that leaves a new parser where the client's stream header left the old one: the
    root's prefixes bound to the same namespaces, jabber:client the default namespace (the
    negotiator refuses any other), the stream element under the prefix Twisted's serialiser
    would give it (the last one bound to the streams namespace). The header's attributes are left
    out: a primed parser's root element is dropped unread. About a quarter of the cost of
    serialising the root (docs/performance.md)."""
    prefix = "stream"
    declarations = ""
    for name, uri in root.localPrefixes.items():
        if uri == xmlstream.NS_STREAMS:
            prefix = name
        declarations += f" xmlns:{name}='{escape_uri(uri)}'"
    return f"<{prefix}:stream xmlns='{NS_CLIENT}'{declarations}>".encode()


class ClientStream(xmlstream.XmlStream):
    """A c2s stream whose elements go straight to one handler, not xpath observers."""

    # Twisted declares these as None only.
    sid: str | None  # type: ignore[assignment]
    thisEntity: JID | None  # type: ignore[assignment]
    otherEntity: JID | None  # type: ignore[assignment]
    stream: Any

    def __init__(self, authenticator: xmlstream.Authenticator, max_stanza_bytes: int,
                 clock: IReactorTime, secure: bool, max_outbound_bytes: int = 8 * 1024 * 1024) -> None:
        super().__init__(authenticator)
        # What may wait, unread by the client, in the transport's buffer before the stream ends
        # with policy-violation (a client that never reads would otherwise grow it without end).
        self.max_outbound_bytes = max_outbound_bytes
        self._unchecked = 0  # bytes written since the last look at the backlog
        self.lost = False  # connectionLost has run
        self._cut_call: IDelayedCall | None = None
        self.on_limit: Callable[[str], None] = _count_nothing  # the factory's metrics hook
        self.namespace = NS_CLIENT
        self.max_stanza_bytes = max_stanza_bytes
        self.clock = clock
        self.secure = secure
        self.closed = False
        self.footer_sent = False
        self.on_close: list[Callable[[], None]] = []
        self.element_handler: ElementHandler = self._refuse
        # How the stream writes a stanza of its own (idle ping, error answer): the bound session's
        # send once there is one, so that stream management counts and keeps it (XEP-0198).
        self.send_stanza: Callable[[domish.Element | str], object] = self.send
        self._fed = 0  # bytes given to the current parser
        self._root: domish.Element | None = None  # the client's stream header, until release_parser() needs it
        self._header: bytes | None = None
        self._release_after_read = False
        self.opened_at = self.last_active = clock.seconds()
        self.pinged_at: float | None = None
        self._bound = False
        # Called once, when the stream stops being a login in progress: at bind, or at its close
        # if it never bound (the factory's count of logins in progress per address).
        self.on_settled: list[Callable[[], object]] = []
        self.refusal: StreamError | None = None  # set by the factory when this stream may not start
        self.ended_by: str | None = None  # "client" or "server" once either closes the stream properly
        self._peer: str | None = None

    @property
    def bound(self) -> bool:
        """A resource is bound: the idle rules apply, not the authentication deadline."""
        return self._bound

    @bound.setter
    def bound(self, value: bool) -> None:
        self._bound = value
        if value:
            self.settle()

    def settle(self) -> None:
        """The stream is no longer a login in progress: run `on_settled`, once."""
        settled, self.on_settled = self.on_settled, []
        for callback in settled:
            callback()

    # Nothing observes a c2s stream's events (elements go to element_handler, stream errors are
    # handled in onElement), so the connection and the stream header skip Twisted's event
    # dispatch and the per-header XPath observer it would register.

    @property
    def max_stanza_bytes(self) -> int:
        return self._max_stanza_bytes

    @max_stanza_bytes.setter
    def max_stanza_bytes(self, limit: int) -> None:
        # One limit for the stream and its parser, which checks it at every event.
        self._max_stanza_bytes = limit
        parser = getattr(self, "stream", None)
        if parser is not None:
            parser.max_stanza_bytes = limit

    def reader(self) -> IPushProducer | None:
        """What stops and restarts the reading of this client's bytes, for flow control
        (`pauseProducing`, `resumeProducing`): the connection under any TLS layer, WebSocket framing
        or PROXY protocol reader, whose socket then leaves the reactor's read set. None when the
        connection is gone or cannot be paused."""
        if self.lost or self.transport is None:
            return None
        connection = _connection(self.transport)
        return connection if IPushProducer.providedBy(connection) else None

    def connectionMade(self) -> None:
        self._initializeStream()
        self.authenticator.connectionMade()
        if self.refusal is not None:
            self.fail(self.refusal)

    def onDocumentStart(self, rootElement: domish.Element) -> None:
        self._root, self._header = rootElement, None
        self.authenticator.streamStarted(rootElement)

    # -- no parser while a settled stream is silent ----------------------------------
    #
    # An expat parser costs about 10 KiB even fresh (its name tables and string pools), more once
    # it has seen a login; most streams then stay silent for hours. So once the login is over,
    # and again after a spell of silence, the parser is dropped, and the next read gets a new one
    # primed with a header binding the client's prefixes (priming_header; 13 microseconds on the
    # benchmark machine).

    def release_parser_after_read(self) -> None:
        """Drop the parser once the current read is parsed (see release_parser)."""
        self._release_after_read = True

    def release_parser(self) -> bool:
        """Drop the parser if nothing is lost by it: between stanzas (depth 1), with every byte
        received consumed (no part of a tag is buffered in the parser)."""
        parser = self.stream
        if (parser is None or parser.depth != 1 or self.closed or self._root is None and self._header is None
                or parser.parser.CurrentByteIndex != self._fed):
            return False
        if self._header is None:
            assert self._root is not None
            self._header = priming_header(self._root)
            self._root = None
        parser.retire()
        self.stream = None
        return True

    def _prime_parser(self) -> None:
        assert self._header is not None
        self._initializeStream()
        primed = self.stream
        primed.DocumentStartEvent = lambda root: None
        primed.parse(self._header)
        primed.DocumentStartEvent = self.onDocumentStart
        self._fed = len(self._header)
        assert primed.depth == 1
        primed.mark = self._fed

    def sendHeader(self) -> None:
        """The stream header, as Twisted writes it for a receiving entity with no extra prefixes,
        without building and serialising an element for it."""
        attributes = ""
        if self.otherEntity is not None:
            attributes += f" to='{escape_attribute(self.otherEntity.userhost())}'"
        if self.thisEntity is not None:
            attributes += f" from='{escape_attribute(self.thisEntity.userhost())}'"
        if self.sid:
            attributes += f" id='{escape_attribute(self.sid)}'"
        if self.version >= (1, 0):
            attributes += f" version='{self.version[0]}.{self.version[1]}'"
        self.send(f"<stream:stream xmlns:stream='{xmlstream.NS_STREAMS}' xmlns='{NS_CLIENT}'{attributes}>")
        self._headerSent = True

    def restart(self) -> None:
        """A stream restart (after <proceed/> or <success/>): nothing left in the read that
        carried the command may count, or plaintext could ride into the TLS stream
        (the STARTTLS command-injection class of bug)."""
        old = self.stream
        if old is None:
            return
        old.retire()
        self.reset()

    def _initializeStream(self) -> None:
        self.stream = guarded_stream(self.max_stanza_bytes, self)
        self._fed = 0

    def _callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(*args, **kwargs)

    @property
    def peer(self) -> str:
        """host:port of the client, for the log (worked out once: every login logs it twice)."""
        if self._peer is None:
            if self.transport is None:
                return "?:?"
            address = self.transport.getPeer()
            self._peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        return self._peer

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_active = self.clock.seconds()
        if self.stream is None:
            if data.strip() == b"</stream:stream>":  # the usual last read of a silent stream
                self.onDocumentEnd()
                return
            self._prime_parser()
        self._fed += len(data)
        try:
            self.stream.parse(data)
            # A stanza still open after this read is bounded here, one read (at most 64 KiB) at a
            # time, long before parsing could finish it.
            if self.stream is not None:
                self.stream.measure(self._fed)
        except domish.ParserError:
            self.fail(StreamError("not-well-formed"))
            return
        except HostileXML as hostile:
            self.fail(StreamError(hostile.condition, text=hostile.text))
            return
        if self._release_after_read:
            self._release_after_read = False
            self.release_parser()

    def onElement(self, element: domish.Element) -> None:
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
                self.send_stanza(reply)

    def onDocumentEnd(self) -> None:
        self.ended_by = self.ended_by or "client"
        self.close()

    def fail(self, error: StreamError) -> None:
        """Send a stream error and close this stream only."""
        if self.closed:
            return
        self.closed = True
        self.ended_by = self.ended_by or "server"
        log.info("c2s.stream_error condition={condition} peer={peer}", condition=error.condition, peer=self.peer)
        self.sendStreamError(error)
        # A client that does not read never lets the error and the data before it drain, and the
        # connection would stay (with its buffer) until TCP gives up: cut it after a grace period.
        if not self.lost:
            self._cut_call = self.clock.callLater(CLOSE_GRACE, self._cut)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ended_by = self.ended_by or "server"
        if self._headerSent:
            self.sendFooter()
        if self.transport is not None:
            self.transport.loseConnection()

    def send(self, obj: domish.Element | str | bytes) -> int:
        """Write *obj*; the number of bytes written (0 once the stream is over)."""
        # Between the footer and connectionLost the session is still bound and stanzas are still
        # routed here; RFC 6120 4.4: nothing follows </stream:stream>.
        if self.transport is None or self.footer_sent:
            return 0
        # Twisted's two send layers, without their interface checks: only elements, text and
        # bytes come here.
        if isinstance(obj, bytes):
            data = obj
        else:
            data = (obj if isinstance(obj, str) else self.serialize(obj)).encode("utf-8")
        self.transport.write(data)
        self._unchecked += len(data)
        if self._unchecked >= BACKLOG_CHECK_EVERY:
            self._unchecked = 0
            self._check_backlog()
        return len(data)

    def _check_backlog(self) -> None:
        """End the stream of a client that lets more than max_outbound_bytes pile up unread. Its
        session ends with it: stanzas kept for XEP-0198 go to the user's other resources or offline
        storage. After CLOSE_GRACE the connection is cut (see fail), dropping what it still holds."""
        if self.closed or buffered_bytes(self.transport) <= self.max_outbound_bytes:
            return
        self.on_limit("outbound-backlog")
        self.fail(StreamError("policy-violation", text="too much unread data"))

    def _cut(self) -> None:
        self._cut_call = None
        transport = self.transport
        if self.lost or transport is None:
            return
        if ITCPTransport.providedBy(transport):  # TCP, and TLS over it
            cast(ITCPTransport, transport).abortConnection()
        else:
            transport.loseConnection()

    def serialize(self, element: domish.Element) -> str:
        """*element* as a child of this stream's root: its default namespace and prefixes in scope."""
        plain = plain_xml(element, self.namespace, self.prefixes)
        if plain is not None:
            return plain
        return element.toXml(prefixes=self.prefixes, defaultUri=self.namespace,
                             prefixesInScope=list(self.prefixes.values()))

    def sendFooter(self) -> None:
        super().sendFooter()
        self.footer_sent = True

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.closed = True
        self.lost = True
        if self._cut_call is not None and self._cut_call.active():
            self._cut_call.cancel()
        self._cut_call = None
        self.settle()  # closed before it bound: no longer a login in progress
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.failure("c2s.close_callback_failed")
        if self.stream is not None:
            self.stream.retire()
        super().connectionLost(reason)
        # The stream's cycles (its parser's handlers, its negotiator, its session's handler, its
        # own _refuse) are cut, so that reference counting frees the connection now rather than
        # the cycle collector later (see parsing.py). Late answers still find a closed stream.
        self.element_handler = _ignore
        self.send_stanza = _ignore
        self.authenticator = None

    def _refuse(self, element: domish.Element) -> None:
        self.fail(StreamError("not-authorized"))


@dataclass(frozen=True)
class StreamLimits:
    max_stanza_bytes: int = 262144
    auth_timeout: float = 30
    idle_timeout: float = 300
    ping_timeout: float = 60
    max_connections_per_ip: int = 10_000
    max_outbound_bytes: int = 8 * 1024 * 1024
    max_unauthenticated_per_ip: int = 1_000


class ClientStreamFactory(protocol.Factory):
    """Makes a `ClientStream` with a fresh negotiator per connection, and keeps watch over them.

    One sweep every few seconds ends streams that did not authenticate in time,
    pings bound streams that have been silent, and ends those that do not
    answer: one timer for all streams, and a clock read per read from the network.
    """

    def __init__(self, make_authenticator: Callable[[], xmlstream.Authenticator], limits: StreamLimits,
                 clock: IReactorTime, secure: bool = False, on_limit: Callable[[str], None] | None = None) -> None:
        if not serialization.installed():
            # Twisted's own serialiser would relay a client's namespace URI unescaped (stanza injection).
            raise RuntimeError("sns_xmpp.startup.install() must run before a client stream factory is made")
        self.make_authenticator = make_authenticator
        self.limits = limits
        self.clock = clock
        self.secure = secure
        self.on_limit = on_limit or (lambda name: None)
        self.streams: set[ClientStream] = set()
        # Two caps per address. Carrier-grade NAT puts thousands of people behind one address,
        # each with a long-lived stream, so the cap on all streams is a backstop on one address's
        # share of the descriptors; an account holds at most max_resources of them. Logins in
        # progress (not yet bound: anonymous, each a TLS handshake, held up to auth_timeout) have
        # a cap of their own.
        self.per_address = Tally()
        self.unbound_per_address = Tally()
        self._sweeper: task.LoopingCall | None = None
        self._pings = 0

    def startFactory(self) -> None:
        interval = max(1.0, min(self.limits.auth_timeout, self.limits.idle_timeout, self.limits.ping_timeout) / 3)
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(interval, now=False)

    def stopFactory(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()

    def buildProtocol(self, addr: IAddress | None) -> ClientStream:
        stream = ClientStream(self.make_authenticator(), self.limits.max_stanza_bytes, self.clock, self.secure,
                              self.limits.max_outbound_bytes)
        stream.factory = self
        stream.on_limit = self.on_limit
        self.streams.add(stream)
        host = str(getattr(addr, "host", "?"))
        count = self.per_address.add(host)
        unbound = self.unbound_per_address.add(host)
        stream.on_settled.append(lambda: self.unbound_per_address.remove(host))
        if count > self.limits.max_connections_per_ip:
            self.on_limit("connections-per-address")
            stream.refusal = StreamError("policy-violation", text="too many connections from your address")
        elif unbound > self.limits.max_unauthenticated_per_ip:
            self.on_limit("unauthenticated-per-address")
            stream.refusal = StreamError("policy-violation", text="too many logins in progress from your address")
        stream.on_close.append(lambda: self._closed(stream, host))
        return stream

    def _closed(self, stream: ClientStream, host: str) -> None:
        self.streams.discard(stream)
        self.per_address.remove(host)

    def sweep(self) -> None:
        now = self.clock.seconds()
        limits = self.limits
        for stream in list(self.streams):
            if stream.closed:
                continue
            if not stream.bound:
                if now - stream.opened_at > limits.auth_timeout:
                    self.on_limit("authentication-timeout")
                    stream.fail(StreamError("connection-timeout", text="authenticate sooner"))
                continue
            if stream.pinged_at is not None and stream.last_active >= stream.pinged_at:
                stream.pinged_at = None
            if stream.pinged_at is not None:
                if now - stream.pinged_at > limits.ping_timeout:
                    self.on_limit("idle-timeout")
                    stream.fail(StreamError("connection-timeout", text="no answer to a ping"))
            elif now - stream.last_active > limits.idle_timeout:
                self._ping(stream, now)
            elif stream.stream is not None and now - stream.last_active > RELEASE_PARSER_AFTER:
                stream.release_parser()

    def _ping(self, stream: ClientStream, now: float) -> None:
        self._pings += 1
        iq = domish.Element((None, "iq"))
        iq["type"] = "get"
        iq["id"] = f"idle-{self._pings}"
        if stream.thisEntity is not None:
            iq["from"] = stream.thisEntity.full()
        if stream.otherEntity is not None:
            iq["to"] = stream.otherEntity.full()
        add_element(iq, ("urn:xmpp:ping", "ping"))
        stream.send_stanza(iq)
        stream.pinged_at = now

    def shut_down(self) -> None:
        """End every stream with <system-shutdown/> (RFC 6120 4.9.3.17), as the server stops."""
        for stream in list(self.streams):
            stream.fail(StreamError("system-shutdown"))
