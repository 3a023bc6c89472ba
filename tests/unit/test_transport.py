"""FlushingServer over real loopback sockets: answers go out without the reactor watching for
writability, and what the socket does not take, closing and failures take Twisted's usual path."""

from __future__ import annotations

import hashlib
import socket
from typing import Any

import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionDone

from sns_xmpp.xmpp.transport import FlushingServer, FlushingTCPServerEndpoint


class Recorder(protocol.Protocol):
    """Server side: answers each read with the writes it is given; remembers how it ended."""

    def __init__(self, answer: list[bytes]) -> None:
        self.answer = answer
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Any = None
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for chunk in self.answer:
            self.transport.write(chunk)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        self.lost.callback(None)


class Server:
    def __init__(self, answer: list[bytes]) -> None:
        self.answer = answer
        self.protocols: list[Recorder] = []
        self.built: defer.Deferred[Recorder] = defer.Deferred()

    def factory(self) -> protocol.Factory:
        def build(addr: Any) -> Recorder:
            made = Recorder(self.answer)
            self.protocols.append(made)
            if not self.built.called:
                self.built.callback(made)
            return made

        return _Factory(build)


class _Factory(protocol.Factory):
    def __init__(self, build: Any) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> Recorder:
        return self._build(addr)  # type: ignore[no-any-return]


async def listen(answer: list[bytes]) -> tuple[Server, Any]:
    from twisted.internet import reactor

    server = Server(answer)
    port = await FlushingTCPServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server.factory())
    return server, port


def connect(port: Any) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.setblocking(False)
    return client


async def turn() -> None:
    """Let the reactor run a round (and the zero-delay flush it schedules)."""
    from twisted.internet import reactor

    done: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0, reactor.callLater, 0, done.callback, None)
    await done


async def read_until(client: socket.socket, size: int, rounds: int = 10_000) -> bytes:
    data = b""
    for _ in range(rounds):
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            await turn()
            continue
        if not chunk:
            break
        data += chunk
        if len(data) >= size:
            break
    return data


async def greeted() -> tuple[Any, socket.socket, Recorder]:
    """A connection to a server that answers nothing, whose first read has been received."""
    server, port = await listen([])
    client = connect(port)
    client.send(b"hello")
    recorder = await server.built
    while not recorder.received:
        await turn()
    return port, client, recorder


@pytest_twisted.ensureDeferred
async def test_answers_go_out_in_one_send_without_watching_for_writability() -> None:
    from twisted.internet import reactor

    server, port = await listen([b"<a/>", b"<b/>", b"<c/>"])
    added: list[Any] = []
    original = reactor.addWriter
    reactor.addWriter = lambda writer: (added.append(writer), original(writer))[1]  # type: ignore[method-assign]
    client = connect(port)
    try:
        recorder = await server.built
        for request in (b"one", b"two"):
            client.send(request)
            assert await read_until(client, 12) == b"<a/><b/><c/>"
        assert isinstance(recorder.transport, FlushingServer)
        assert recorder.received == b"onetwo"
        assert added == []
    finally:
        reactor.addWriter = original  # type: ignore[method-assign]
        client.close()
        await recorder.lost
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_what_the_socket_does_not_take_is_sent_when_it_can_and_the_connection_closes_after() -> None:
    from twisted.internet import reactor

    payload = hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32)  # far more than a socket buffer
    server, port = await listen([payload])
    client = connect(port)
    client.send(b"go")
    recorder = await server.built
    await turn()
    # The socket took part of it; the rest waits in Twisted's buffer, watched for writability.
    assert recorder.transport in reactor.getWriters()
    recorder.transport.loseConnection()  # type: ignore[union-attr]
    received = await read_until(client, len(payload) + 1, rounds=1_000_000)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    await recorder.lost
    assert recorder.reason.check(ConnectionDone)
    assert recorder.transport not in reactor.getWriters()
    client.close()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_writes_made_outside_a_read_are_sent_in_the_same_round() -> None:
    from twisted.internet import reactor

    port, client, recorder = await greeted()
    # As a message routed from another client's read, or a store result, would be written.
    reactor.callLater(0, recorder.transport.write, b"<routed/>")  # type: ignore[union-attr]
    reactor.callLater(0, recorder.transport.write, b"<second/>")  # type: ignore[union-attr]
    assert await read_until(client, 18) == b"<routed/><second/>"
    assert recorder.transport not in reactor.getWriters()
    client.close()
    await recorder.lost
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_reset_loses_the_connection_on_the_next_write() -> None:
    import struct

    port, client, recorder = await greeted()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    for _ in range(100):
        if recorder.lost.called:
            break
        recorder.transport.write(b"<lost/>")  # type: ignore[union-attr]
        await turn()
    await recorder.lost
    assert not recorder.reason.check(ConnectionDone)  # lost, not closed cleanly
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_nothing_is_sent_after_an_abort() -> None:
    port, client, recorder = await greeted()
    recorder.transport.write(b"<never/>")  # type: ignore[union-attr]
    recorder.transport.abortConnection()  # type: ignore[union-attr]
    await recorder.lost
    client.setblocking(True)
    client.settimeout(5)
    try:
        received = client.recv(100)
    except ConnectionResetError:  # an abort closes with a reset
        received = b""
    assert received == b""  # <never/> was not sent
    client.close()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_closing_connection_sends_its_last_words_and_closes_without_watching_for_writability() -> None:
    from twisted.internet import reactor

    port, client, recorder = await greeted()
    added: list[Any] = []
    original = reactor.addWriter
    reactor.addWriter = lambda writer: (added.append(writer), original(writer))[1]  # type: ignore[method-assign]
    try:
        recorder.transport.write(b"</stream:stream>")  # type: ignore[union-attr]
        recorder.transport.loseConnection()  # type: ignore[union-attr]
        await recorder.lost
        assert recorder.reason.check(ConnectionDone)
        assert added == []
        assert await read_until(client, 17) == b"</stream:stream>"  # then the end of the stream
        assert client.recv(10) == b""
    finally:
        reactor.addWriter = original  # type: ignore[method-assign]
        client.close()
        await port.stopListening()


class BrokenOnClose(Recorder):
    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        raise RuntimeError("a protocol whose connectionLost fails")


@pytest_twisted.ensureDeferred
async def test_a_connection_that_fails_as_it_closes_does_not_hold_back_the_others() -> None:
    server, port = await listen([])
    broken_client, other_client = connect(port), connect(port)
    broken_client.send(b"a")
    other_client.send(b"b")
    while len(server.protocols) < 2 or not all(p.received for p in server.protocols):
        await turn()
    server.protocols[0].__class__ = BrokenOnClose  # the first connection's close will raise
    first, second = server.protocols
    # Both written in one round: the first is closed (and fails) as the round's sends go out.
    first.transport.write(b"</stream:stream>")  # type: ignore[union-attr]
    first.transport.loseConnection()  # type: ignore[union-attr]
    second.transport.write(b"<still-here/>")  # type: ignore[union-attr]
    await first.lost
    assert await read_until(other_client if second.received == b"b" else broken_client, 13) == b"<still-here/>"
    broken_client.close()
    other_client.close()
    await second.lost
    await port.stopListening()


def accepted_socket(reactor: Any, client: socket.socket) -> socket.socket | None:
    """The server's end of *client*'s connection, once the reactor has accepted it."""
    from twisted.internet import tcp

    local = client.getsockname()[1]
    for reader in reactor.getReaders():
        if isinstance(reader, tcp.Server) and reader.getPeer().port == local:
            return reader.socket  # type: ignore[no-any-return]
    return None


def nodelay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


COMPONENT = """
[xmpp.components]
port = {port}

[components."echo.localhost"]
secret = "echo-secret-0123456789"
"""


@pytest_twisted.ensureDeferred
async def test_every_listener_of_the_server_accepts_with_tcp_nodelay(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Client (STARTTLS and direct TLS), component and HTTP connections have TCP_NODELAY on the
    server's side, so that a small answer is not held back by Nagle's algorithm until the
    peer's delayed ACK (about 40 ms per TLS login before)."""
    from twisted.internet import reactor

    from tests.conftest import DEMO_SITE, free_port, make_config

    server = await start_server(make_config(tmp_path, DEMO_SITE + COMPONENT.format(port=free_port())))
    listeners = {name: server.server.listener(name).port_number
                 for name in ("c2s", "c2s-direct-tls", "components", "http")}
    clients = {name: socket.create_connection(("127.0.0.1", port)) for name, port in listeners.items()}
    try:
        found: dict[str, socket.socket] = {}
        for _ in range(10_000):
            found = {name: accepted for name, client in clients.items()
                     if (accepted := accepted_socket(reactor, client)) is not None}
            if len(found) == len(clients):
                break
            await turn()
        assert sorted(found) == sorted(listeners)
        assert {name: nodelay(accepted) for name, accepted in found.items()} == dict.fromkeys(listeners, True)
    finally:
        for client in clients.values():
            client.close()


@pytest_twisted.ensureDeferred
async def test_the_plain_listener_accepts_with_tcp_nodelay_and_twisteds_own_transport() -> None:
    """NoDelayTCPServerEndpoint (HTTP, components, console) is Twisted's transport with NODELAY."""
    from twisted.internet import reactor, tcp

    from sns_xmpp.xmpp.transport import NoDelayTCPServerEndpoint

    server = Server([b"<a/>"])
    port = await NoDelayTCPServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server.factory())
    client = connect(port)
    client.send(b"hi")
    recorder = await server.built
    assert await read_until(client, 4) == b"<a/>"
    assert type(recorder.transport).__mro__[1] is tcp.Server  # nothing of FlushingServer's
    assert nodelay(recorder.transport.socket)  # type: ignore[union-attr]
    client.close()
    await recorder.lost
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_nodes_of_a_cluster_share_a_port_only_when_they_ask_for_it() -> None:
    """[cluster] reuse_port: a second listener on a taken port binds with SO_REUSEPORT (the
    kernel then spreads connections between the nodes), and is refused without it, as before."""
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    first = await FlushingTCPServerEndpoint(reactor, 0, 50, "127.0.0.1", reuse_port=True).listen(
        protocol.Factory.forProtocol(protocol.Protocol))
    port = first.getHost().port  # type: ignore[attr-defined]
    try:
        second = await FlushingTCPServerEndpoint(reactor, port, 50, "127.0.0.1", reuse_port=True).listen(
            protocol.Factory.forProtocol(protocol.Protocol))
        assert second.getHost().port == port  # type: ignore[attr-defined]
        await second.stopListening()
        try:
            third = await FlushingTCPServerEndpoint(reactor, port, 50, "127.0.0.1").listen(
                protocol.Factory.forProtocol(protocol.Protocol))
        except CannotListenError:
            pass
        else:
            await third.stopListening()
            raise AssertionError("a listener without reuse_port took a port in use")
    finally:
        await first.stopListening()
