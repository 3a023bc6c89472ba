"""LeanEPollReactor (twistd --reactor=sns-epoll) serves TCP like Twisted's epoll reactor, and an
error that escapes Twisted's own handling of an event is logged without stopping the loop."""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IReactorFDSet, IReactorTCP, IReactorTime
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from sns_xmpp.xmpp.reactor import LeanEPollReactor


class Answer(protocol.Protocol):
    explode_on_close = False

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data.upper())  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if self.explode_on_close:
            raise RuntimeError("a connectionLost that raises")


def spin(reactor: LeanEPollReactor, until: Any, rounds: int = 2000) -> None:
    """Run the reactor's rounds by hand (it is not the test process's global reactor)."""
    for _ in range(rounds):
        if until():
            return
        reactor.runUntilCurrent()
        reactor.doIteration(0.01)
    raise AssertionError("the reactor never got there")


def receive(reactor: LeanEPollReactor, client: socket.socket, size: int) -> bytes:
    """Run the reactor until *size* bytes have reached the (non-blocking) client."""
    received = b""

    def arrived() -> bool:
        nonlocal received
        try:
            received += client.recv(1024)
        except BlockingIOError:
            pass
        return len(received) >= size

    spin(reactor, arrived)
    return received


@contextmanager
def recording_timers_and_writers(reactor: LeanEPollReactor) -> Iterator[tuple[list[Any], list[Any]]]:
    """The timers the reactor is asked for (callLater's arguments) and the writability watches
    (addWriter's), meanwhile; its own methods come back after."""
    timers: list[Any] = []
    writers: list[Any] = []
    call_later, add_writer = reactor.callLater, reactor.addWriter
    reactor.callLater = lambda *args, **kwargs: (timers.append(args), call_later(*args, **kwargs))[1]  # type: ignore[method-assign]
    reactor.addWriter = lambda writer: (writers.append(writer), add_writer(writer))[1]  # type: ignore[method-assign]
    try:
        yield timers, writers
    finally:
        reactor.callLater, reactor.addWriter = call_later, add_writer  # type: ignore[method-assign]


def exchange(reactor: LeanEPollReactor, port: int, data: bytes) -> bytes:
    client = socket.create_connection(("127.0.0.1", port))
    client.setblocking(False)
    client.send(data)
    received = receive(reactor, client, len(data))
    client.close()
    return received


def test_serves_tcp_and_survives_an_error_twisted_does_not_catch() -> None:
    reactor = LeanEPollReactor()
    verifyObject(IReactorFDSet, reactor)
    verifyObject(IReactorTCP, reactor)
    verifyObject(IReactorTime, reactor)
    factory = protocol.Factory.forProtocol(Answer)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    idle = len(reactor.getReaders())  # the port and the reactor's own waker
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        assert exchange(reactor, port.getHost().port, b"hello") == b"HELLO"
        spin(reactor, lambda: len(reactor.getReaders()) == idle)  # the connection is gone
        Answer.explode_on_close = True  # raised from _disconnectSelectable, outside Twisted's try
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        spin(reactor, lambda: len(reactor.getReaders()) == idle + 1)  # accepted
        client.close()
        spin(reactor, lambda: any(event.get("isError") for event in logged))
        Answer.explode_on_close = False
        assert exchange(reactor, port.getHost().port, b"still there") == b"STILL THERE"
    finally:
        globalLogPublisher.removeObserver(logged.append)
        Answer.explode_on_close = False
        port.stopListening()
        reactor.removeAll()
    errors = [event for event in logged if event.get("isError")]
    assert errors and str(errors[0]["failure"].value) == "a connectionLost that raises"


def test_the_c2s_transport_sends_after_the_rounds_events_without_timers() -> None:
    """Answers written while events are dispatched go out after them, with no zero-delay call and
    no writability watch; a write from a timer (no events being dispatched) still goes out."""
    from sns_xmpp.xmpp.transport import FlushingPort

    reactor = LeanEPollReactor()
    servers: list[Answer] = []

    class Remembered(Answer):
        def connectionMade(self) -> None:
            servers.append(self)

    port = FlushingPort(0, protocol.Factory.forProtocol(Remembered), 50, "127.0.0.1", reactor)
    port.startListening()
    try:
        with recording_timers_and_writers(reactor) as (timers, writers):
            client = socket.create_connection(("127.0.0.1", port.getHost().port))
            client.setblocking(False)
            for word in (b"one", b"two"):
                client.send(word)
                assert receive(reactor, client, len(word)) == word.upper()
            assert (timers, writers) == ([], [])
            # The reactor's own callLater, not recorded: the write runs from a timer.
            LeanEPollReactor.callLater(reactor, 0, servers[0].transport.write, b"from a timer")  # type: ignore[union-attr]
            assert receive(reactor, client, 12) == b"from a timer"
            assert len(timers) == 1 and writers == []  # the fallback: one zero-delay call
        client.close()
    finally:
        port.stopListening()
        reactor.removeAll()


def test_the_c2s_transport_accepts_with_tcp_nodelay_under_the_lean_reactor() -> None:
    """What scripts/run uses (--reactor=sns-epoll and the flushing c2s port) sets TCP_NODELAY on
    each accepted socket: Nagle's algorithm would hold a small answer until the peer's ACK."""
    from sns_xmpp.xmpp.transport import FlushingPort

    reactor = LeanEPollReactor()
    servers: list[Answer] = []

    class Remembered(Answer):
        def connectionMade(self) -> None:
            servers.append(self)

    port = FlushingPort(0, protocol.Factory.forProtocol(Remembered), 50, "127.0.0.1", reactor)
    port.startListening()
    try:
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        spin(reactor, lambda: bool(servers))
        accepted = servers[0].transport.socket  # type: ignore[union-attr]
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client.close()
    finally:
        port.stopListening()
        reactor.removeAll()


class StartsTLS(Answer):
    """Answers upper-cased, as `Answer`; b"starttls" starts TLS (no answer) with the given context."""

    tls: Any = None
    made: list[StartsTLS]

    def connectionMade(self) -> None:
        self.made.append(self)

    def dataReceived(self, data: bytes) -> None:
        if data == b"starttls":
            self.transport.startTLS(self.tls)  # type: ignore[union-attr]
        else:
            super().dataReceived(data)


class TLSClient:
    """A non-blocking client socket with Python's TLS over memory BIOs, driven between the
    reactor's rounds (the reactor is not the test process's global one)."""

    def __init__(self, reactor: LeanEPollReactor, sock: socket.socket, trusted: Path) -> None:
        import ssl

        context = ssl.create_default_context(cafile=str(trusted))
        self.reactor = reactor
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def pump(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())
        try:
            self.incoming.write(self.sock.recv(1 << 16))
        except BlockingIOError:
            pass

    def handshake(self) -> None:
        import ssl

        def done() -> bool:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.pump()
                return False
            self.pump()
            return True

        spin(self.reactor, done)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.pump()

    def receive(self, size: int) -> bytes:
        import ssl

        received = b""

        def arrived() -> bool:
            nonlocal received
            self.pump()
            try:
                received += self.tls.read(1 << 16)
            except ssl.SSLWantReadError:
                pass
            return len(received) >= size

        spin(self.reactor, arrived)
        return received


def test_the_c2s_transport_sends_tls_answers_after_the_rounds_events_without_timers(tmp_path: Path) -> None:
    """Over STARTTLS and direct TLS alike, the answers a round wrote are encrypted and sent at the
    round's end: no zero-delay call (Twisted's TLS layer gathers small writes and encrypts them
    from one, on the global reactor's clock), no writability watch."""
    from sns_xmpp.xmpp.tls import ensure_self_signed, server_context
    from sns_xmpp.xmpp.transport import FlushingPort, FlushingTCPServerEndpoint

    certificate, key = ensure_self_signed(tmp_path, ["localhost"], datetime.datetime.now(datetime.UTC))
    reactor = LeanEPollReactor()
    made: list[StartsTLS] = []
    StartsTLS.tls, StartsTLS.made = server_context(certificate, key), made
    starttls_port = FlushingPort(0, protocol.Factory.forProtocol(StartsTLS), 50, "127.0.0.1", reactor)
    starttls_port.startListening()
    listening: list[Any] = []  # the endpoint's Deferred has fired: it listens at once
    FlushingTCPServerEndpoint(reactor, 0, interface="127.0.0.1", tls=server_context(certificate, key)).listen(
        protocol.Factory.forProtocol(StartsTLS)).addCallback(listening.append)
    direct_tls_port = listening[0]
    try:
        for port, starttls in ((starttls_port, True), (direct_tls_port, False)):
            sock = socket.create_connection(("127.0.0.1", port.getHost().port))
            sock.setblocking(False)
            if starttls:
                sock.send(b"starttls")
                spin(reactor, lambda: bool(made) and made[-1].transport.TLS)  # type: ignore[union-attr]
            client = TLSClient(reactor, sock, certificate)
            client.handshake()
            with recording_timers_and_writers(reactor) as (timers, writers):
                for word in (b"one", b"two"):
                    client.send(word)
                    assert client.receive(len(word)) == word.upper()
                assert (timers, writers) == ([], [])
            sock.close()
    finally:
        starttls_port.stopListening()
        direct_tls_port.stopListening()
        reactor.removeAll()


def test_the_round_end_clock_runs_a_zero_delay_call_at_the_rounds_end_and_times_the_rest() -> None:
    """What the TLS layer is given as its clock: a zero-delay call joins the round's end (and can
    be cancelled there); any other call, or one made outside a round's events, is the reactor's."""
    from twisted.internet.interfaces import IDelayedCall
    from twisted.internet.task import Clock

    from sns_xmpp.reactors import RoundEndClock

    class Reactor(Clock):
        def __init__(self) -> None:
            super().__init__()
            self.round: list[Any] | None = None

        def after_events(self, call: Any) -> bool:
            if self.round is None:
                return False
            self.round.append(call)
            return True

    reactor = Reactor()
    clock = RoundEndClock(reactor)
    verifyObject(IReactorTime, clock)
    ran: list[str] = []
    reactor.round = []
    kept = clock.callLater(0, ran.append, "kept")
    cancelled = clock.callLater(0, ran.append, "cancelled")
    clock.callLater(1, ran.append, "timed")
    verifyObject(IDelayedCall, kept)
    cancelled.cancel()
    assert (kept.active(), cancelled.active()) == (True, False)
    assert (len(reactor.round), len(reactor.getDelayedCalls())) == (2, 1)
    for call in reactor.round:
        call()
    assert ran == ["kept"] and not kept.active()
    reactor.round = None  # no events being dispatched: a timer, as before
    clock.callLater(0, ran.append, "outside")
    reactor.advance(1)
    assert ran == ["kept", "outside", "timed"]
