"""The XEP-0114 component port with Twisted's doubles: the hardened parser, the handshake deadline,
the cap on streams that have not shaken hands, and one component per domain."""

from __future__ import annotations

import hashlib
import re
import time

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.words.xish import domish

from sns_xmpp.xmpp.components import ComponentLimits, ComponentServerFactory, ComponentStream
from sns_xmpp.xmpp.parsing import GuardedElementStream
from sns_xmpp.xmpp.routing import StanzaRouter

SECRET = "echo-secret-0123456789"
HEADER = ("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'"
          " to='echo.localhost'>")


def billion_laughs(levels: int = 6) -> bytes:
    """About 500 bytes that Twisted's plain parser expands into 4 MB of text, one entity at a time
    (each a string concatenation, so minutes of CPU at 6 levels)."""
    entities = ['<!ENTITY l0 "' + "x" * 40 + '">']
    entities += [f'<!ENTITY l{n} "' + f"&l{n - 1};" * 10 + '">' for n in range(1, levels)]
    return (f"<?xml version='1.0'?><!DOCTYPE stream:stream [{''.join(entities)}]>"
            f"{HEADER}<handshake>&l{levels - 1};</handshake>").encode()


def make_factory(limits: ComponentLimits | None = None) -> tuple[ComponentServerFactory, StanzaRouter, Clock]:
    router, clock = StanzaRouter(), Clock()
    return ComponentServerFactory(router, {"echo.localhost": SECRET}, clock, limits), router, clock


def connect(factory: ComponentServerFactory, host: str = "127.0.0.1") -> tuple[ComponentStream, StringTransport]:
    address = IPv4Address("TCP", host, 40000)
    xs = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    xs.makeConnection(transport)
    return xs, transport


def stream_error(transport: StringTransport) -> str | None:
    found = re.search(r"<stream:error><([a-z-]+) xmlns='urn:ietf:params:xml:ns:xmpp-streams'",
                      transport.value().decode())
    return found.group(1) if found else None


def handshake(xs: ComponentStream, secret: str = SECRET) -> None:
    xs.dataReceived(f"<handshake>{hashlib.sha1((xs.sid + secret).encode()).hexdigest()}</handshake>".encode())


def test_a_dtd_is_refused_at_once_with_restricted_xml() -> None:
    """The billion-laughs header that held the plain parser for minutes is refused before any
    entity is declared, and the stream is closed."""
    factory, _, _ = make_factory()
    xs, transport = connect(factory)
    # Tripwire: Twisted's XmlStream makes its parser in the private _initializeStream, overridden.
    assert isinstance(xs.stream, GuardedElementStream)
    started = time.perf_counter()
    xs.dataReceived(billion_laughs())
    assert time.perf_counter() - started < 1.0
    assert stream_error(transport) == "restricted-xml"
    assert transport.value().startswith(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' "
                                        b"xmlns='jabber:component:accept'")
    assert transport.disconnecting
    xs.dataReceived(b"<handshake>more</handshake>")  # nothing more is read
    assert transport.value().count(b"<stream:error>") == 1


@pytest.mark.parametrize(("data", "condition"), [
    (HEADER + "<!-- a comment -->", "restricted-xml"),
    (HEADER + "<?php evil ?>", "restricted-xml"),
    (HEADER + "<handshake>&undeclared;</handshake>", "not-well-formed"),
    (HEADER + "<handshake></wrong>", "not-well-formed"),
    (HEADER + "<handshake>" + "a" * 5000, "policy-violation"),
    (HEADER + "<a>" * 60, "policy-violation"),
])
def test_the_client_ports_restrictions_and_limits_hold_here(data: str, condition: str) -> None:
    """Comments, processing instructions, bad XML, oversized and overdeep stanzas get the same
    stream errors as on the client port."""
    factory, _, _ = make_factory(ComponentLimits(max_stanza_bytes=4096))
    xs, transport = connect(factory)
    for n in range(0, len(data), 700):  # in pieces: the limits do not depend on how reads split
        xs.dataReceived(data[n:n + 700].encode())
    assert stream_error(transport) == condition
    assert transport.disconnecting


def test_a_silent_stream_is_ended_at_the_handshake_deadline_and_a_component_in_time_is_not() -> None:
    """A stream that does not shake hands within handshake_timeout ends with connection-timeout;
    one that did is left alone."""
    factory, _, clock = make_factory(ComponentLimits(handshake_timeout=10))
    silent, silent_transport = connect(factory)
    silent.dataReceived(HEADER.encode())
    honest, honest_transport = connect(factory)
    honest.dataReceived(HEADER.replace("echo.localhost", "echo.localhost").encode())
    clock.advance(5)
    assert stream_error(silent_transport) is None
    handshake(honest)
    assert honest_transport.value().endswith(b"<handshake/>")
    clock.advance(5.5)
    assert stream_error(silent_transport) == "connection-timeout"
    assert silent_transport.disconnecting
    assert not honest_transport.disconnecting
    assert not clock.getDelayedCalls() or all(not call.active() for call in clock.getDelayedCalls())


def test_one_address_may_hold_only_so_many_streams_before_their_handshake() -> None:
    """Past max_unauthenticated_per_ip, a stream from that address is refused with
    policy-violation; a stream that has shaken hands, or has gone, no longer counts, and other
    addresses are not affected."""
    factory, _, _ = make_factory(ComponentLimits(max_unauthenticated_per_ip=2))
    first, _ = connect(factory)
    second, second_transport = connect(factory)
    third, third_transport = connect(factory)
    assert stream_error(third_transport) == "policy-violation"
    third.connectionLost(None)  # type: ignore[arg-type]
    _, elsewhere = connect(factory, "127.0.0.2")
    assert stream_error(elsewhere) is None

    first.dataReceived(HEADER.encode())
    handshake(first)  # shaken hands: no longer counted
    _, fourth_transport = connect(factory)
    assert stream_error(fourth_transport) is None
    fifth, fifth_transport = connect(factory)
    assert stream_error(fifth_transport) == "policy-violation"
    fifth.connectionLost(None)  # type: ignore[arg-type]
    second.connectionLost(None)  # type: ignore[arg-type]
    _, sixth_transport = connect(factory)
    assert stream_error(sixth_transport) is None


def test_two_handshakes_for_one_domain_the_second_is_refused_with_conflict() -> None:
    """Two streams for one domain open before either shakes hands: the first handshake wins, the
    second gets <conflict/> (logged with the domain and peer), and the route stays the first's."""
    factory, router, _ = make_factory()
    first, first_transport = connect(factory)
    second, second_transport = connect(factory, "127.0.0.9")
    first.dataReceived(HEADER.encode())
    second.dataReceived(HEADER.encode())
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        handshake(first)
        handshake(second)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert first_transport.value().endswith(b"<handshake/>")
    assert stream_error(second_transport) == "conflict"
    assert b"<handshake/>" not in second_transport.value()
    [conflict] = [e for e in events if e.get("log_format", "").startswith("component.conflict")]
    assert (conflict["domain"], conflict["peer"]) == ("echo.localhost", "127.0.0.9:40000")

    message = domish.Element((None, "message"))
    message["to"], message["from"] = "echo.localhost", "alice@localhost"
    router.route(message)
    assert first_transport.value().endswith(b"<message to='echo.localhost' from='alice@localhost'/>")


@pytest.mark.parametrize(("header", "condition"), [
    (HEADER.replace("echo.localhost", "a..b"), "host-unknown"),  # Twisted's JID parser raised IndexError on it
    (HEADER.replace("echo.localhost", "other.localhost"), "host-unknown"),
    (HEADER.replace(" to='echo.localhost'", ""), "improper-addressing"),
    (HEADER.replace("jabber:component:accept", "jabber:client"), "invalid-namespace"),
    (HEADER.replace("xmlns:stream=", "xmlns:s='urn:other' xmlns:stream="), None),
])
def test_stream_headers_get_a_stream_error_not_an_exception(header: str, condition: str | None) -> None:
    """A header naming an unparseable, unknown or no domain, or the wrong namespace, is answered
    with a stream error (found by tests/fuzz/test_component_fuzz.py); the answer's header is in
    the component namespace with the usual stream prefix, whatever the component declared."""
    factory, _, _ = make_factory()
    xs, transport = connect(factory)
    xs.dataReceived(header.encode())
    assert stream_error(transport) == condition
    assert transport.value().startswith(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' "
                                        b"xmlns='jabber:component:accept'")


@pytest.mark.parametrize("ending", [b"</stream:stream>",
                                    b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                                    b"</stream:error>"])
def test_a_component_that_ends_its_stream_gets_our_end_too(ending: bytes) -> None:
    """RFC 6120 4.4 and 4.9.1.1: the component's </stream:stream> or stream error is answered
    with ours, not by dropping the connection; its route goes with the connection."""
    factory, router, _ = make_factory()
    xs, transport = connect(factory)
    xs.dataReceived(HEADER.encode())
    handshake(xs)
    assert "echo.localhost" in router.routes
    xs.dataReceived(ending)
    assert transport.value().endswith(b"<handshake/></stream:stream>")
    assert transport.disconnecting
    xs.connectionLost(None)  # type: ignore[arg-type]
    assert "echo.localhost" not in router.routes
