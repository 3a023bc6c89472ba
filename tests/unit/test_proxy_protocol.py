"""The PROXY protocol on the listeners (sns_xmpp/xmpp/proxy_protocol.py): the client's address
behind a balancer, for the c2s streams, the login throttle and the HTTP side, on Twisted's doubles."""

from __future__ import annotations

import base64
import ipaddress
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import abstract, protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IOpenSSLServerConnectionCreator, ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import resource, server
from zope.interface import implementer

from sns_xmpp.auth.throttle import ThrottlePolicy
from sns_xmpp.config import ConfigError, parse_config
from sns_xmpp.http.site import HTTPLimits, web_site
from sns_xmpp.xmpp.c2s import buffered_bytes
from sns_xmpp.xmpp.proxy_protocol import HEADER_TIMEOUT, ProxyHeaderFactory, TrustedProxies
from sns_xmpp.xmpp.transport import NoDelayTCPServerEndpoint
from tests.unit.http_exchange import parse_response
from tests.unit.test_auth_throttle import FairServer
from tests.unit.test_negotiation import HEADER, TLSlessTransport, output

BALANCER = IPv4Address("TCP", "10.0.0.5", 41000)
TRUSTED = TrustedProxies(["10.0.0.0/24"])
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source: str, port: int = 50000, to_port: int = 5222) -> bytes:
    family, destination = ("TCP6", "2001:db8::1") if ":" in source else ("TCP4", "192.0.2.1")
    return f"PROXY {family} {source} {destination} {port} {to_port}\r\n".encode()


def v2(source: str, port: int = 50000, to_port: int = 5222) -> bytes:
    if ":" in source:
        family, addresses = 0x21, socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(
            socket.AF_INET6, "2001:db8::1")
    else:
        family, addresses = 0x11, socket.inet_aton(source) + socket.inet_aton("192.0.2.1")
    body = addresses + struct.pack("!HH", port, to_port)
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


V2_LOCAL = V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)  # a balancer's own health check


class Recorder(protocol.Protocol):
    def __init__(self, addr: IAddress | None) -> None:
        self.built_for = addr
        self.received = b""
        self.made = False
        self.lost = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class Recording(protocol.Factory):
    """Builds a Recorder per connection, remembering the address it was built for."""

    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: IAddress | None) -> Recorder:
        built = Recorder(addr)
        self.built.append(built)
        return built


@pytest.fixture
def events() -> Any:
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def connect(factory: protocol.Factory, peer: IAddress = BALANCER,
            kind: type[StringTransport] = TLSlessTransport) -> tuple[Any, StringTransport]:
    reader = factory.buildProtocol(peer)
    transport = kind(peerAddress=peer, hostAddress=IPv4Address("TCP", "10.0.0.9", 5222))
    if reader is not None:
        reader.makeConnection(transport)
    return reader, transport


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
@pytest.mark.parametrize("client", ["203.0.113.7", "2001:db8::7"])
def test_a_trusted_balancers_header_names_the_client_to_the_listeners_factory_and_protocol(
        header: Any, client: str) -> None:
    """From a trusted address, the header (v1 or v2, IPv4 or IPv6) comes off the connection: the
    listener's factory builds its protocol for the client's address (the per-address caps), the
    protocol is connected only then and sees the client as its peer, and the bytes after the
    header, in the same read, reach it unchanged."""
    inner = Recording()
    reader, transport = connect(ProxyHeaderFactory(inner, TRUSTED, MemoryReactorClock()))
    assert inner.built == []  # nothing is made before the header says who the client is
    reader.dataReceived(header(client, 50123) + b"<stream:stream>")
    [made] = inner.built
    assert made.made and made.received == b"<stream:stream>"
    assert (made.built_for.host, made.built_for.port) == (client, 50123)
    peer = made.transport.getPeer()
    assert isinstance(peer, IPv6Address if ":" in client else IPv4Address)
    assert (peer.host, peer.port) == (client, 50123)
    reader.dataReceived(b"<presence/>")
    assert made.received == b"<stream:stream><presence/>"
    made.transport.write(b"<stream:stream>")
    assert transport.value() == b"<stream:stream>"  # writes go straight to the connection


@pytest.mark.parametrize("header", [v1("203.0.113.7"), v2("203.0.113.7")], ids=["v1", "v2"])
def test_a_header_split_over_many_reads_is_read_whole(header: bytes) -> None:
    """A balancer's header may arrive a byte at a time (Twisted's own wrapper closes a connection
    whose first read is shorter than 16 bytes)."""
    inner = Recording()
    reader, transport = connect(ProxyHeaderFactory(inner, TRUSTED, MemoryReactorClock()))
    for byte in header + b"hi":
        reader.dataReceived(bytes([byte]))
    [made] = inner.built
    assert made.built_for.host == "203.0.113.7" and made.received == b"hi"
    assert not transport.disconnecting


def test_an_untrusted_address_is_refused_as_it_is_accepted(events: list[dict[str, Any]]) -> None:
    """Only the balancer may name a client's address: a connection from anywhere else gets no
    protocol (the port closes the socket), header or not, and the log says why."""
    inner = Recording()
    factory = ProxyHeaderFactory(inner, TRUSTED, MemoryReactorClock())
    assert factory.buildProtocol(IPv4Address("TCP", "198.51.100.9", 40000)) is None
    assert inner.built == []
    [event] = [e for e in events if e.get("log_format", "").startswith("proxy.refused")]
    assert event["peer"] == "198.51.100.9:40000"
    assert factory.buildProtocol(BALANCER) is not None


@pytest.mark.parametrize(("data", "reason"), [
    (b"<?xml version='1.0'?><stream:stream>", "no-header"),  # a client straight to the node
    (b"GET / HTTP/1.1\r\n\r\n", "no-header"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 50000\r\n", "missing-address-data"),
    (b"PROXY SCTP 203.0.113.7 192.0.2.1 50000 5222\r\n", "invalid-network-protocol"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 http 5222\r\n", "invalid-header"),  # a ValueError in V1Parser
    (b"PROXY TCP4 evil.example 192.0.2.1 50000 5222\r\n", "invalid-header"),  # V1Parser takes any text
    (b"PROXY TCP4 2001:db8::7 192.0.2.1 50000 5222\r\n", "invalid-header"),  # and any family
    (b"PROXY TCP4 " + b"1" * 120, "invalid-header"),  # no end of line within 107 bytes
    (V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12, "invalid-header"),  # version 3
    (V2_SIGNATURE + b"\x21\x11\x00\x02" + b"\x00\x00", "missing-address-data"),
])
def test_a_trusted_connection_without_a_valid_header_is_closed_with_the_reason(
        data: bytes, reason: str, events: list[dict[str, Any]]) -> None:
    """A connection from the balancer's address that does not start with a valid header is
    closed before anything is made for it, and the log names the reason and the peer."""
    inner = Recording()
    reader, transport = connect(ProxyHeaderFactory(inner, TRUSTED, MemoryReactorClock()))
    reader.dataReceived(data)
    assert transport.disconnecting and inner.built == []
    [event] = [e for e in events if e.get("log_format", "").startswith("proxy.bad_header")]
    assert (event["reason"], event["peer"]) == (reason, "10.0.0.5:41000")
    reader.dataReceived(b"more")  # what still arrives before the close is dropped
    assert inner.built == []


def test_a_trusted_connection_silent_past_the_deadline_is_closed(events: list[dict[str, Any]]) -> None:
    """The header is due with the connection: a trusted peer that sends none (or half of one)
    is closed after HEADER_TIMEOUT, reason timeout; one that sent it in time is not."""
    clock = MemoryReactorClock()
    factory = ProxyHeaderFactory(Recording(), TRUSTED, clock)
    silent, silent_transport = connect(factory)
    silent.dataReceived(b"PROXY TCP4 203.0")
    prompt, prompt_transport = connect(factory)
    prompt.dataReceived(v2("203.0.113.7"))
    clock.advance(HEADER_TIMEOUT)
    assert silent_transport.disconnecting and not prompt_transport.disconnecting
    assert [e["reason"] for e in events if e.get("log_format", "").startswith("proxy.bad_header")] == ["timeout"]
    assert not clock.getDelayedCalls()
    silent.connectionLost(None)


def test_a_header_without_an_address_leaves_the_balancers_address() -> None:
    """v2 LOCAL and v1 UNKNOWN (the balancer's health checks) carry no client: the connection is
    the balancer's own, as the protocol's specification says."""
    for header in (V2_LOCAL, b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n"):
        inner = Recording()
        reader, transport = connect(ProxyHeaderFactory(inner, TRUSTED, MemoryReactorClock()))
        reader.dataReceived(header + b"x")
        [made] = inner.built
        assert made.built_for == BALANCER and made.received == b"x" and not transport.disconnecting
        assert made.transport.getPeer() == BALANCER


@pytest.mark.parametrize("header", [v1("203.0.113.7", 50123), v2("2001:db8::7", 50123),
                                    v1("2001:db8::7", 50123), v2("203.0.113.7", 50123)])
def test_peer_host_and_data_equal_twisteds_own_wrapper(header: bytes) -> None:
    """For a header Twisted's HAProxyWrappingFactory reads, the reader gives the wrapped protocol
    the same peer, host and bytes; an IPv6 address is written as the kernel writes it (Twisted's
    v2 parser leaves it uncompressed)."""
    ours, theirs = Recording(), Recording()
    reader, _ = connect(ProxyHeaderFactory(ours, TRUSTED, MemoryReactorClock()))
    wrapper, _ = connect(HAProxyWrappingFactory(theirs))
    for side in (reader, wrapper):
        side.dataReceived(header + b"payload")
    [mine], [twisteds] = ours.built, theirs.built
    for ours_address, theirs_address in ((mine.transport.getPeer(), twisteds.transport.getPeer()),
                                         (mine.transport.getHost(), twisteds.transport.getHost())):
        assert type(ours_address) is type(theirs_address) and ours_address.port == theirs_address.port
        assert ours_address.host == str(ipaddress.ip_address(theirs_address.host))
    assert mine.received == twisteds.received == b"payload"


def test_a_refusal_by_the_listeners_factory_closes_the_connection() -> None:
    """A factory that refuses the client (returns None, as the HTTP cap does) gets the connection
    closed, as a listening port would close it."""

    class Refusing(protocol.Factory):
        def buildProtocol(self, addr: IAddress | None) -> None:
            return None

    reader, transport = connect(ProxyHeaderFactory(Refusing(), TRUSTED, MemoryReactorClock()))
    reader.dataReceived(v1("203.0.113.7") + b"GET")
    assert transport.disconnecting


def test_the_lost_connection_reaches_the_protocol_and_the_deadline_goes() -> None:
    clock = MemoryReactorClock()
    inner = Recording()
    reader, _ = connect(ProxyHeaderFactory(inner, TRUSTED, clock))
    reader.dataReceived(v1("203.0.113.7"))
    reader.connectionLost(None)
    assert inner.built[0].lost and not clock.getDelayedCalls()
    before_header, _ = connect(ProxyHeaderFactory(inner, TRUSTED, clock))
    before_header.connectionLost(None)
    assert not clock.getDelayedCalls()


def test_trusted_networks_match_addresses_and_ipv4_mapped_ones() -> None:
    trusted = TrustedProxies(["10.0.0.0/24", "2001:db8::1"])
    assert trusted.trusts("10.0.0.200") and trusted.trusts("::ffff:10.0.0.7") and trusted.trusts("2001:db8::1")
    assert not trusted.trusts("10.0.1.1") and not trusted.trusts("2001:db8::2") and not trusted.trusts("unix")
    assert not TrustedProxies([])


# -- downstream: the throttle, the c2s per-address cap, the HTTP side ------------------------------


def plain_login(factory: protocol.Factory, header: bytes, authcid: str, password: str) -> str:
    reader, transport = connect(factory)
    payload = base64.b64encode(f"\x00{authcid}\x00{password}".encode()).decode()
    reader.dataReceived(header + HEADER.format(to="localhost").encode()
                        + f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
                        .encode())
    answer = output(transport)
    reader.connectionLost(None)
    return answer


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_the_login_throttle_counts_the_clients_address_not_the_balancers(tmp_path: Path, header: Any) -> None:
    """Two clients behind one balancer: the first blocks its (address, bob) pair with wrong
    passwords; the second, whose header names another address, still logs in as bob. Without the
    header read (both seen as the balancer) the second is refused: the control."""
    policy = ThrottlePolicy(free_failures=100, block_after=2)
    behind = FairServer(tmp_path, policy)
    factory = ProxyHeaderFactory(behind.factory, TRUSTED, behind.clock)
    for _ in range(2):
        assert "<not-authorized/>" in plain_login(factory, header("203.0.113.7"), "bob", "wrong")
    assert "<temporary-auth-failure/>" in plain_login(factory, header("203.0.113.7"), "bob", "bobs")
    assert "<success" in plain_login(factory, header("198.51.100.9"), "bob", "bobs")

    blind = FairServer(tmp_path, policy)
    for _ in range(2):
        assert "<not-authorized/>" in plain_login(blind.factory, b"", "bob", "wrong")
    assert "<temporary-auth-failure/>" in plain_login(blind.factory, b"", "bob", "bobs")


def test_the_c2s_stream_counts_and_logs_the_clients_address(tmp_path: Path) -> None:
    """The c2s factory's per-address count and the stream's log name the client."""
    behind = FairServer(tmp_path)
    reader, _ = connect(ProxyHeaderFactory(behind.factory, TRUSTED, behind.clock))
    reader.dataReceived(v2("203.0.113.7", 50123) + HEADER.format(to="localhost").encode())
    assert behind.factory.per_address["203.0.113.7"] == 1 and behind.factory.per_address["10.0.0.5"] == 0
    [stream] = behind.factory.streams
    assert stream.peer == "203.0.113.7:50123"


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        return str(getattr(request.getClientAddress(), "host", "?")).encode()


def test_the_http_side_sees_the_clients_address_and_caps_it() -> None:
    """twisted.web's getClientAddress() names the client, and the per-address cap counts clients,
    not the balancer: a second client behind it is served while the first is at its cap."""
    site = web_site(Hello(), MemoryReactorClock(), HTTPLimits(max_connections_per_ip=1))
    factory = ProxyHeaderFactory(site, TRUSTED, MemoryReactorClock())
    first, first_transport = connect(factory, kind=StringTransport)
    first.dataReceived(v1("203.0.113.7") + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert parse_response(first_transport.value()).body == b"203.0.113.7"
    second, second_transport = connect(factory, kind=StringTransport)
    second.dataReceived(v1("203.0.113.7") + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert second_transport.disconnecting and second_transport.value() == b""  # at its cap
    other, other_transport = connect(factory, kind=StringTransport)
    other.dataReceived(v2("198.51.100.9") + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert parse_response(other_transport.value()).body == b"198.51.100.9"


def test_the_unread_data_limit_sees_through_the_reader() -> None:
    """c2s.buffered_bytes (the max_outbound_bytes limit) finds the TCP transport's buffer under the
    reader, as it does without one."""
    reactor = MemoryReactorClock()
    tcp_like = abstract.FileDescriptor(reactor)
    tcp_like.connected = True
    tcp_like.getPeer = lambda: BALANCER  # type: ignore[method-assign]
    reader = ProxyHeaderFactory(Recording(), TRUSTED, reactor).buildProtocol(BALANCER)
    reader.makeConnection(tcp_like)
    reader.dataReceived(v1("203.0.113.7"))
    reader.write(b"x" * 1000)
    assert buffered_bytes(reader) == 1000


def test_the_endpoint_wraps_outside_tls_and_not_at_all_when_off() -> None:
    """For direct TLS the header comes before the handshake: the reader is the outermost layer,
    TLS inside it. With no trusted balancers there is no reader at all."""
    from twisted.internet import reactor

    @implementer(IOpenSSLServerConnectionCreator)
    class Context:  # what TLSMemoryBIOFactory keeps; no handshake happens here
        def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:  # noqa: N802, N803 - Twisted's names
            raise AssertionError("no connection is made")

    ports = []
    try:
        for proxies in (TRUSTED, TrustedProxies([])):
            endpoint = NoDelayTCPServerEndpoint(reactor, 0, interface="127.0.0.1", tls=Context(), proxies=proxies)
            port = endpoint.listen(Recording()).result
            ports.append(port)
        wrapped, plain = (port.factory for port in ports)
        assert isinstance(wrapped, ProxyHeaderFactory) and isinstance(wrapped.wrappedFactory, TLSMemoryBIOFactory)
        assert isinstance(plain, TLSMemoryBIOFactory)
    finally:
        for port in ports:
            port.stopListening()


@pytest.mark.parametrize(("value", "problem"), [
    ("'10.0.0.5'", "must be a list of IP addresses or networks (non-empty strings)"),
    ("['balancer.example']", "'balancer.example' is not an IP address or network such as 10.0.0.0/8"),
    ("['10.0.0.5/24']", "'10.0.0.5/24' has host bits set (the network is 10.0.0.0/24)"),
])
@pytest.mark.parametrize("table", ["xmpp.c2s", "http"])
def test_a_bad_proxy_protocol_setting_is_one_line_naming_the_key(table: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[{table}]\nproxy_protocol_from = {value}")
    assert str(caught.value) == f"sns-xmpp: config error at '{table}.proxy_protocol_from': {problem}"


def test_the_setting_is_off_by_default_and_keeps_networks() -> None:
    assert parse_config("").xmpp.c2s.proxy_protocol_from == () == parse_config("").http.proxy_protocol_from
    config = parse_config("[xmpp.c2s]\nproxy_protocol_from = ['127.0.0.1', '10.0.0.0/8', '::1']")
    assert config.xmpp.c2s.proxy_protocol_from == ("127.0.0.1/32", "10.0.0.0/8", "::1/128")


def test_starttls_goes_to_the_connection_under_the_reader() -> None:
    """STARTTLS after the header: the stream asks its transport (the reader) for TLS, and the
    connection under it starts TLS (Twisted puts the TLS layer below the reader: the header is
    already off the bytes)."""
    inner = Recording()
    reader, transport = connect(ProxyHeaderFactory(inner, TRUSTED, MemoryReactorClock()))
    reader.dataReceived(v1("203.0.113.7"))
    context = object()
    ITLSTransport(inner.built[0].transport).startTLS(context)
    assert transport.tls_started is context


def test_a_websocket_taken_over_from_the_http_channel_keeps_the_clients_address(tmp_path: Path) -> None:
    """The WebSocket endpoint takes the connection over from the HTTP channel (autobahn swaps the
    reader's wrapped protocol): the XMPP stream behind it is counted and logged under the client's
    address, and the client's next frames reach it."""
    from sns_xmpp.xmpp.websocket import XMPPWebSocketFactory, XMPPWebSocketResource

    behind = FairServer(tmp_path)
    root = resource.Resource()
    root.putChild(b"xmpp-websocket", XMPPWebSocketResource(XMPPWebSocketFactory(behind.factory, 65536, ())))
    site = web_site(root, behind.clock)
    reader, transport = connect(ProxyHeaderFactory(site, TRUSTED, behind.clock), kind=StringTransport)
    reader.dataReceived(v2("203.0.113.7", 50123) + b"GET /xmpp-websocket HTTP/1.1\r\nHost: x\r\n"
                        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 101")
    [stream] = behind.factory.streams
    assert stream.peer == "203.0.113.7:50123" and behind.factory.per_address["203.0.113.7"] == 1
    transport.clear()
    opening = b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>"
    mask = b"\x01\x02\x03\x04"
    frame = bytes([0x81, 0x80 | len(opening)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(opening))
    reader.dataReceived(frame)
    assert b"urn:ietf:params:xml:ns:xmpp-framing" in transport.value()  # the stream's <open/> answer
