"""A TCP transport that sends what a reactor round wrote once the round is over, without
watching for writability.

Twisted's ``tcp.Server`` buffers every write, registers the socket for writability
(``epoll_ctl``), sends in the reactor's next round and unregisters it again (``epoll_ctl``):
two system calls and one more event for each answer. An XMPP login is seven such exchanges
(docs/performance.md).

`FlushingServer` buffers the same way, and its port's `Flusher` sends each written-to
connection's buffer in one ``send`` when the round's events have all been handled: after them
where the reactor offers that (``LeanEPollReactor.after_events``), else from a zero-delay call.
A round's answers to one client (its stanza's replies, messages routed to it from other
clients' reads, store results) thus still go out together, as Twisted's buffer would send them.
Sending at the end of each read instead was dearer: it woke the client once per answer.

Only what the socket does not take at once waits for writability in Twisted's usual way, and
so does everything of a connection that has a producer or a half-closed write side, or whose
send fails: that path, which reports errors, is Twisted's own. A connection told to close whose
last words the socket takes at once is closed at once, as Twisted's doWrite would have closed it
one round later.

`FlushingTCPServerEndpoint` listens with it (IPv4 or IPv6, from the interface), and with TLS
from the first byte when given a TLS context (as Twisted's ``SSL4ServerEndpoint`` does). Given
trusted balancers, both endpoints read a PROXY protocol header first, outside the TLS layer
(`sns_xmpp.xmpp.proxy_protocol`).

Every accepted socket has ``TCP_NODELAY`` (`NoDelayServer`, which `FlushingServer` extends;
`NoDelayTCPServerEndpoint` listens with it for the HTTP, component and console listeners).
Without it Nagle's algorithm holds a small write back while an earlier one is unacknowledged,
and the peer delays its acknowledgement by up to 40 ms: a TLS handshake's second flight and
the stream features after it are such writes, so every TLS login waited about 40 ms for
nothing. This server already sends a round's writes to one peer in one ``send``, which is what
Nagle's algorithm would otherwise have saved.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, tcp
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorFDSet,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.main import CONNECTION_DONE
from twisted.protocols.tls import TLSMemoryBIOFactory, _AggregateSmallWrites
from twisted.python.failure import Failure
from zope.interface import implementer

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.reactors import IServerReactor, RoundEndClock, at_round_end
from sns_xmpp.xmpp.proxy_protocol import ProxyHeaderFactory, TrustedProxies

log = GatedLogger()


# The reason every connection closed by `FlushingServer.flush` ends with, made once: a Failure works
# out its exception's class names (`Failure.parents`) the first time it is checked, and Twisted's
# connectionLost checks each one (`reason.check(ConnectionAborted)`); about 1% of a FAST login when
# made per connection (docs/performance.md). It carries no traceback, and nothing changes it.
_CONNECTION_DONE = Failure(CONNECTION_DONE)


class Flusher:
    """Sends, once per reactor round, the buffers of a port's connections written to in it: after
    the round's events where the reactor offers that (`LeanEPollReactor.after_events`), else from
    a zero-delay call, which runs before the reactor next waits."""

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._waiting: list[FlushingServer] = []
        self._scheduled = False

    def add(self, connection: FlushingServer) -> None:
        self._waiting.append(connection)
        if not self._scheduled:
            self._scheduled = True
            at_round_end(self._reactor, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        for connection in waiting:
            try:
                connection.flush()  # may close it, which runs its protocol's connectionLost
            except Exception:
                # As the reactor does for an event: that connection's error, logged; the other
                # connections of the round are still sent, or their buffers would wait forever.
                log.failure("transport.flush_failed")


class NoDelayServer(tcp.Server):
    """Twisted's TCP server connection, with ``TCP_NODELAY`` set as it is accepted."""

    def __init__(self, sock: socket.socket, protocol: Any, client: Any, server: tcp.Port, sessionno: int,
                 reactor: IReactorFDSet) -> None:
        super().__init__(sock, protocol, client, server, sessionno, reactor)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # already reset by the peer: its first read will say so
            pass


class NoDelayPort(tcp.Port):
    transport = NoDelayServer
    # SO_REUSEPORT: several nodes of a cluster on one machine listen on the same port, and the
    # kernel spreads new connections between them (docs/scaling.md).
    reuse_port = False

    def createInternetSocket(self) -> socket.socket:  # noqa: N802 - Twisted's name
        sock: socket.socket = super().createInternetSocket()
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock


class FlushingServer(NoDelayServer):
    server: FlushingPort
    # close() alone ends the connection with a FIN: this process never shares its sockets with
    # another (no fork), which is what Twisted's shutdown() before close() is for. One system call
    # fewer per connection.
    _shouldShutdown = False
    _flush_due = False  # buffered data waits for the end of the round
    _writer_registered = False  # the reactor watches the socket for writability (Twisted's path)

    def startWriting(self) -> None:
        if self._writer_registered or self._flush_due:
            return
        self._flush_due = True
        self.server.flusher.add(self)

    def stopWriting(self) -> None:
        if self._writer_registered:
            self._writer_registered = False
            super().stopWriting()

    def flush(self) -> None:
        """Send the buffered data now; leave to the reactor only what the socket would not take."""
        if not self._flush_due:
            return
        self._flush_due = False
        if not self.connected or self._aborting:  # abortConnection: nothing more is sent
            return
        if self._writeDisconnecting or self.producer is not None or self.dataBuffer:
            self._register_writer()
            return
        data = b"".join(self._tempDataBuffer)
        self._tempDataBuffer = []
        self._tempDataLen = 0
        try:
            sent = self.socket.send(data) if data else 0  # Python retries an interrupted send (PEP 475)
        except OSError:
            # Full (EAGAIN, ENOBUFS): the rest waits for writability. Failed: the reactor's doWrite
            # meets the error again and closes the connection its way.
            sent = 0
        if sent < len(data):
            self.dataBuffer = data
            self.offset = sent
            self._register_writer()
        elif self.disconnecting:
            # loseConnection, and its last words are sent: closed now, as the reactor's doWrite
            # would close it next round after watching for writability (Twisted's
            # _disconnectSelectable for a connection done). Every login ends this way.
            self.stopReading()
            self.connectionLost(_CONNECTION_DONE)

    def _register_writer(self) -> None:
        self._writer_registered = True
        super().startWriting()

    def startTLS(self, ctx: Any, normal: bool = True) -> None:  # noqa: N802 - Twisted's name
        """Twisted's STARTTLS layer, its gathered writes encrypted at the end of the round
        (`RoundEndClock`). Twisted makes that layer's factory itself, on the global reactor's
        clock, and offers no way to pass another: the aggregator's clock is replaced. Should
        Twisted rename it, tests/unit/test_reactor.py's STARTTLS test fails (its reactor is not
        the global one, which would then flush the layer)."""
        super().startTLS(ctx, normal)
        aggregator = getattr(self.protocol, "_aggregator", None)
        if isinstance(aggregator, _AggregateSmallWrites):
            aggregator._clock = self.server.round_end_clock


class FlushingPort(NoDelayPort):
    transport = FlushingServer

    def __init__(self, port: int, factory: IProtocolFactory, backlog: int, interface: str,
                 reactor: IServerReactor) -> None:
        super().__init__(port, factory, backlog, interface, reactor)
        self.flusher = Flusher(reactor)
        self.round_end_clock = RoundEndClock(reactor)


@implementer(IStreamServerEndpoint)
class NoDelayTCPServerEndpoint:
    """A TCP server endpoint (IPv4 or IPv6 by the interface) whose connections are
    `NoDelayServer`s (Twisted's, with ``TCP_NODELAY``), with TLS from the first byte when given
    a TLS context, and behind a PROXY protocol header when given trusted balancers (an empty
    `TrustedProxies`, the default, is no wrapper at all)."""

    def __init__(self, reactor: IServerReactor, port: int, backlog: int = 50, interface: str = "",
                 tls: IOpenSSLServerConnectionCreator | None = None, reuse_port: bool = False,
                 proxies: TrustedProxies | None = None) -> None:
        self._reactor = reactor
        self._port_number = port
        self._backlog = backlog
        self._interface = interface
        self._tls = tls
        self._reuse_port = reuse_port
        self._proxies = proxies if proxies else None

    def _port(self, factory: IProtocolFactory) -> NoDelayPort:
        return NoDelayPort(self._port_number, factory, self._backlog, self._interface, self._reactor)

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:  # noqa: N803 - Twisted's name
        factory = protocolFactory if self._tls is None else TLSMemoryBIOFactory(
            self._tls, False, protocolFactory, clock=RoundEndClock(self._reactor))
        if self._proxies is not None:
            # Outermost: the balancer's header comes before the client's TLS handshake.
            factory = ProxyHeaderFactory(factory, self._proxies, self._reactor)

        def start() -> IListeningPort:
            port = self._port(factory)
            port.reuse_port = self._reuse_port
            port.startListening()
            return port

        return defer.execute(start)


class FlushingTCPServerEndpoint(NoDelayTCPServerEndpoint):
    """A TCP server endpoint (IPv4 or IPv6 by the interface) whose connections are `FlushingServer`s."""

    def _port(self, factory: IProtocolFactory) -> NoDelayPort:
        return FlushingPort(self._port_number, factory, self._backlog, self._interface, self._reactor)
