"""LeanEPollReactor (twistd --reactor=sns-epoll) serves TCP like Twisted's epoll reactor, and an
error that escapes Twisted's own handling of an event is logged without stopping the loop."""

from __future__ import annotations

import socket
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


def exchange(reactor: LeanEPollReactor, port: int, data: bytes) -> bytes:
    client = socket.create_connection(("127.0.0.1", port))
    client.setblocking(False)
    client.send(data)
    received = b""

    def answered() -> bool:
        nonlocal received
        try:
            received += client.recv(1024)
        except BlockingIOError:
            pass
        return len(received) >= len(data)

    spin(reactor, answered)
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
