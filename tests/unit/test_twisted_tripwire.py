"""A tripwire for every private name of Twisted (and pyOpenSSL) that sns-xmpp touches.

Each departure from stock Twisted (docs/architecture.md, "Departures from stock Twisted") leans on
names Twisted does not promise to keep. A Twisted upgrade that removes or changes one fails here, by
name, before it fails somewhere deep in a stream. When this test fails: read the new Twisted's code
for that name, adapt the module named in the row, and update the row.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet import abstract, epollreactor, posixbase, protocol, tcp
from twisted.words.protocols.jabber import xmlstream as jabber_xmlstream
from twisted.words.xish import domish
from twisted.words.xish import xmlstream as xish_xmlstream


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# (owner, name, what sns-xmpp assumes of it, the module that relies on it)
METHODS = [
    (xish_xmlstream.XmlStream, "_initializeStream", ["self"], "xmpp/c2s.py, xmpp/components.py: the hardened parser"),
    (jabber_xmlstream.XmlStream, "_callLater", ["self", "args", "kwargs"],
     "xmpp/c2s.py, components.py: the injected clock"),
    (domish.ExpatElementStream, "_onStartElement", ["self", "name", "attrs"], "xmpp/parsing.py"),
    (domish.ExpatElementStream, "_onEndElement", ["self", "_"], "xmpp/parsing.py"),
    (domish.ExpatElementStream, "_onCdata", ["self", "data"], "xmpp/parsing.py"),
    (posixbase._PollLikeMixin, "_doReadOrWrite", ["self", "selectable", "fd", "event"], "xmpp/reactor.py"),
]
CLASS_ATTRIBUTES = [
    (jabber_xmlstream.XmlStream, "_headerSent", False, "xmpp/c2s.py, components.py: the header written as text"),
    (tcp.Server, "_aborting", False, "xmpp/transport.py: nothing is sent after abortConnection"),
    (tcp.Server, "_shouldShutdown", True, "xmpp/transport.py: closing without shutdown()"),
    (abstract.FileDescriptor, "_writeDisconnecting", False, "xmpp/transport.py"),
]


@pytest.mark.parametrize(("owner", "name", "expected", "user"), METHODS,
                         ids=[f"{owner.__name__}.{name}" for owner, name, _, _ in METHODS])
def test_private_methods_still_exist_with_their_parameters(owner: type, name: str, expected: list[str],
                                                           user: str) -> None:
    assert parameters(getattr(owner, name)) == expected, user


@pytest.mark.parametrize(("owner", "name", "expected", "user"), CLASS_ATTRIBUTES,
                         ids=[f"{owner.__name__}.{name}" for owner, name, _, _ in CLASS_ATTRIBUTES])
def test_private_class_attributes_still_have_their_defaults(owner: type, name: str, expected: object,
                                                            user: str) -> None:
    assert getattr(owner, name) is expected, user


def test_the_serialiser_base_and_its_hooks() -> None:
    """xmpp/serialization.EscapingSerializer subclasses domish._ListSerializer and is installed as
    domish.SerializerClass; it uses the base's prefix bookkeeping and writelist."""
    serializer = domish._ListSerializer()
    for name in ("writelist", "prefixes", "prefixStack", "prefixCounter"):
        assert hasattr(serializer, name), name
    for name in ("getPrefix", "prefixInScope", "serialize", "getValue"):
        assert callable(getattr(serializer, name)), name
    assert hasattr(domish, "SerializerClass")


def test_the_expat_stream_keeps_its_parser_and_document_state() -> None:
    """xmpp/parsing.GuardedElementStream reads and replaces these instance names of Twisted's."""
    stream = domish.ExpatElementStream()
    assert hasattr(stream.parser, "Parse") and hasattr(stream.parser, "CurrentByteIndex")
    assert stream.documentStarted == 0
    for name in ("DocumentStartEvent", "ElementEvent", "DocumentEndEvent", "currElem"):
        assert hasattr(stream, name), name


def test_the_epoll_reactors_poller_and_selectables() -> None:
    """xmpp/reactor.LeanEPollReactor calls _poller.poll(timeout, maxevents) and reads _selectables."""
    reactor = epollreactor.EPollReactor()
    try:
        assert isinstance(reactor._selectables, dict)
        assert reactor._poller.poll(0, 1) == []
    finally:
        reactor.removeAll()
        reactor._poller.close()


def test_a_file_descriptors_write_buffers() -> None:
    """xmpp/transport.FlushingServer sends _tempDataBuffer itself, and xmpp/c2s.buffered_bytes counts
    dataBuffer[offset:] plus _tempDataLen: a write lands in the temporary buffer, as these assume."""
    left, right = socket.socketpair()
    try:
        from twisted.internet.testing import MemoryReactor

        server = tcp.Server(left, protocol.Protocol(), ("127.0.0.1", 1), None, 1, MemoryReactor())  # type: ignore[arg-type]
        assert (server.dataBuffer, server.offset, server._tempDataBuffer, server._tempDataLen) == (b"", 0, [], 0)
        server.write(b"abc")
        assert (server._tempDataBuffer, server._tempDataLen) == ([b"abc"], 3)
    finally:
        left.close()
        right.close()


def test_the_tls_layers_write_aggregator_and_its_clock() -> None:
    """xmpp/transport.FlushingServer.startTLS gives the STARTTLS layer's write aggregator (which
    Twisted makes itself, on the global reactor) the round-end clock: the layer keeps it as
    `_aggregator`, which schedules its flush with `_clock.callLater(0, ...)` and keeps that call
    as `_scheduled` (cancelled when it closes)."""
    from twisted.internet.task import Clock
    from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, _AggregateSmallWrites

    assert TLSMemoryBIOFactory.protocol is BufferingTLSTransport
    clock = Clock()
    aggregator = _AggregateSmallWrites(lambda data: None, clock)
    assert aggregator._clock is clock
    aggregator.write(b"abc")
    assert aggregator._scheduled is not None and [call.getTime() for call in clock.getDelayedCalls()] == [0]
    assert "self._aggregator = _AggregateSmallWrites(" in inspect.getsource(BufferingTLSTransport.__init__)


def test_pyopenssls_no_overlapping_protocols_marker() -> None:
    """xmpp/tls._select_alpn answers SSL.NO_OVERLAPPING_PROTOCOLS, typed by its private class."""
    from OpenSSL.SSL import _NoOverlappingProtocols

    assert isinstance(SSL.NO_OVERLAPPING_PROTOCOLS, _NoOverlappingProtocols)


def test_the_proxy_protocol_parsers_and_their_errors() -> None:
    """xmpp/proxy_protocol.ProxyHeaderReader frames a PROXY protocol header itself and parses it
    with Twisted's parsers from the private modules of twisted.protocols.haproxy: their signatures
    (the v2 one, the v1 word and UNKNOWN), parse() of one whole header (v1 without its CRLF), and
    the error classes the reader names in its log. V1Parser still refuses a bare "PROXY UNKNOWN",
    which the reader takes itself: if it stops refusing it, the reader's own case can go."""
    from twisted.protocols.haproxy._exceptions import InvalidNetworkProtocol, InvalidProxyHeader, MissingAddressData
    from twisted.protocols.haproxy._v1parser import V1Parser
    from twisted.protocols.haproxy._v2parser import V2Parser

    assert V2Parser.PREFIX == b"\r\n\r\n\x00\r\nQUIT\n" and V1Parser.PROXYSTR == b"PROXY"
    assert V1Parser.UNKNOWN_PROTO == b"UNKNOWN"
    assert issubclass(InvalidNetworkProtocol, InvalidProxyHeader)
    assert issubclass(MissingAddressData, InvalidProxyHeader)
    info = V1Parser.parse(b"PROXY TCP4 192.0.2.7 192.0.2.1 50000 5222")
    assert (info.source.host, info.source.port, info.destination.port) == ("192.0.2.7", 50000, 5222)
    assert V1Parser.parse(b"PROXY UNKNOWN x").source is None
    with pytest.raises(InvalidNetworkProtocol):
        V1Parser.parse(b"PROXY UNKNOWN")
    header = V2Parser.PREFIX + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 7, 192, 0, 2, 1]) + b"\xc3\x50\x14\x66"
    info = V2Parser.parse(header)
    assert (info.source.host, info.source.port, info.destination.port) == ("192.0.2.7", 50000, 5222)
    assert V2Parser.parse(V2Parser.PREFIX + b"\x20\x00\x00\x00").source is None  # LOCAL
