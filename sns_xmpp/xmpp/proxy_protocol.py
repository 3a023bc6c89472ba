"""The PROXY protocol (HAProxy's, v1 and v2) on a listener: the client's address behind a balancer.

Behind a TCP balancer every connection comes from the balancer's address, so everything keyed by
the peer's address (the per-address connection caps, the login throttle's per-address records,
the logs, the HTTP side's cap and access log) would see the balancer, not the client. A balancer
that speaks the PROXY protocol (HAProxy's ``send-proxy-v2``) writes the client's address in a
header before the connection's first byte; `ProxyHeaderFactory` reads it and makes the listener's
own protocol only then, with the client's address, so that ``buildProtocol(addr)``,
``transport.getPeer()`` and twisted.web's ``request.getClientAddress()`` all name the client.

The rules (``[xmpp.c2s] proxy_protocol_from``, ``[http] proxy_protocol_from``): a connection from
an address outside the trusted networks is refused as it is accepted (nobody else may claim an
address); a connection from a trusted address must send a valid header within
`HEADER_TIMEOUT`, or it is closed with ``proxy.bad_header`` naming the reason. A header with no
address (v2 ``LOCAL``, v1 ``UNKNOWN``: the balancer's own health checks) leaves the balancer's
address, as the protocol's specification says.

Why not Twisted's `HAProxyWrappingFactory` as it is (its parsers are used, below): it builds and
connects the wrapped protocol before the header has arrived, so a factory's ``buildProtocol(addr)``
(the per-address caps) and a protocol's ``connectionMade`` see the balancer; it closes a
connection whose first read is shorter than 16 bytes (a header split over two segments); it lets
a v1 header's non-numeric port escape as a ``ValueError`` and takes any text as a v1 address; it
trusts every peer; and it logs nothing. Its parsers read one whole header each (the reader frames
it: the v2 length field, the v1 CRLF), but for the shortest v1 header, ``PROXY UNKNOWN`` with
nothing after it, which ``V1Parser`` refuses and the reader takes itself. The parsers
(``V1Parser.parse``, ``V2Parser.parse``) are in private modules of ``twisted.protocols.haproxy``:
the tripwire test (tests/unit/test_twisted_tripwire.py) names them.

The wrapping is outermost: for direct TLS the header comes before the TLS handshake, so the TLS
layer is made inside it (`sns_xmpp.xmpp.transport.NoDelayTCPServerEndpoint`). With the option off
no wrapper exists and a connection costs what it did.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any, cast

from twisted.internet import address, protocol
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.protocols import policies
from twisted.protocols.haproxy._exceptions import InvalidNetworkProtocol, InvalidProxyHeader, MissingAddressData
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from sns_xmpp.observe.log_gate import GatedLogger

log = GatedLogger()

__all__ = ["HEADER_TIMEOUT", "ProxyHeaderFactory", "ProxyHeaderReader", "TrustedProxies"]

# A balancer writes the header as it connects, in the connection's first segment: a trusted peer
# silent for this long is no balancer doing its job (and holds a descriptor).
HEADER_TIMEOUT = 10.0

_V2_SIGNATURE = V2Parser.PREFIX  # 12 bytes, then the version and command, the family, the length
_V2_FIXED = 16  # the v2 header's fixed part, its last two bytes the length of the rest
_V1_SIGNATURE = V1Parser.PROXYSTR + b" "
_V1_UNKNOWN = V1Parser.PROXYSTR + b" " + V1Parser.UNKNOWN_PROTO  # with nothing after it: no address
_V1_LONGEST = 107  # the v1 specification's longest header, CRLF included

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The networks whose connections must (and alone may) start with a PROXY header."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[_Network, ...] = tuple(ipaddress.ip_network(network) for network in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str) -> bool:
        try:
            parsed = ipaddress.ip_address(host)
        except ValueError:
            return False
        # A dual-stack listener names an IPv4 balancer as ::ffff:a.b.c.d.
        mapped = parsed.ipv4_mapped if isinstance(parsed, ipaddress.IPv6Address) else None
        return any(parsed in network or (mapped is not None and mapped in network) for network in self.networks)


def _ip_address(found: IAddress | None) -> IAddress | None:
    """*found*, its host in the text the kernel would give (V2Parser writes IPv6 uncompressed:
    ``2001:db8:0:0:0:0:0:7``, which would count apart from ``2001:db8::7``), if it is a TCP address
    whose host is an IP address of its family; `InvalidProxyHeader` if it is one whose host is not
    (V1Parser takes any text there); None for no address or another family."""
    if not isinstance(found, address.IPv4Address | address.IPv6Address):
        return None  # LOCAL, UNKNOWN, or a UNIX address: the connection's own address stands
    try:
        parsed = ipaddress.ip_address(found.host)
    except ValueError:
        raise InvalidProxyHeader() from None
    if (parsed.version == 6) != isinstance(found, address.IPv6Address):
        raise InvalidProxyHeader()  # "TCP4" with an IPv6 address, or the reverse
    canonical = str(parsed)
    return found if canonical == found.host else type(found)(found.type, canonical, found.port)


_REASONS: dict[type[Exception], str] = {
    InvalidNetworkProtocol: "invalid-network-protocol",
    MissingAddressData: "missing-address-data",
}


class ProxyHeaderReader(policies.ProtocolWrapper):
    """Reads one connection's PROXY header, then makes the listener's protocol with the client's
    address and stands between it and the transport as Twisted's wrappers do (`getPeer` names the
    client; everything else goes to the transport)."""

    factory: ProxyHeaderFactory
    wrappedProtocol: IProtocol | None  # type: ignore[assignment]  # None until the header is read

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        self.factory = factory
        self.wrappedProtocol = None
        self._buffer = b""  # the header's bytes so far
        self._source: IAddress | None = None
        self._destination: IAddress | None = None
        self._deadline: IDelayedCall | None = None
        self._refused = False

    def makeConnection(self, transport: Any) -> None:  # noqa: N802 - Twisted's name
        # As ProtocolWrapper.makeConnection, but the wrapped protocol waits for the header.
        directlyProvides(self, providedBy(transport))
        protocol.Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self._deadline = self.factory.clock.callLater(HEADER_TIMEOUT, self._refuse, "timeout")

    @property
    def inner_transport(self) -> Any:
        """The TCP transport, for `sns_xmpp.xmpp.c2s.buffered_bytes` (the unread-data limit)."""
        return self.transport

    def getPeer(self) -> IAddress:  # noqa: N802 - Twisted's name
        if self._source is not None:
            return self._source
        assert self.transport is not None
        peer: IAddress = self.transport.getPeer()
        return peer

    def getHost(self) -> IAddress:  # noqa: N802 - Twisted's name
        if self._destination is not None:
            return self._destination
        assert self.transport is not None
        host: IAddress = self.transport.getHost()
        return host

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        wrapped = self.wrappedProtocol
        if wrapped is not None:
            wrapped.dataReceived(data)
        elif not self._refused:
            self._read_header(data)

    def _read_header(self, data: bytes) -> None:
        # The framing is read here, each header whole before it is parsed: V2Parser.feed wants 16
        # bytes at its first call, and V1Parser refuses the shortest v1 header, "PROXY UNKNOWN".
        buffer = self._buffer = self._buffer + data
        if buffer.startswith(_V2_SIGNATURE):
            if len(buffer) < _V2_FIXED:
                return
            size = _V2_FIXED + int.from_bytes(buffer[_V2_FIXED - 2:_V2_FIXED], "big")
            if len(buffer) < size:
                return
            header, rest, parse = buffer[:size], buffer[size:], V2Parser.parse
        elif buffer.startswith(_V1_SIGNATURE):
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) >= _V1_LONGEST:
                    self._refuse("invalid-header")
                return
            header, rest, parse = buffer[:end], buffer[end + 2:], V1Parser.parse
            if header == _V1_UNKNOWN:
                self._header_read(None, None, rest)
                return
        elif _V2_SIGNATURE.startswith(buffer) or _V1_SIGNATURE.startswith(buffer):
            return  # the start of a signature, split across reads
        else:
            self._refuse("no-header")
            return
        try:
            info = parse(header)
            source, destination = _ip_address(info.source), _ip_address(info.destination)
        except InvalidProxyHeader as error:
            self._refuse(_REASONS.get(type(error), "invalid-header"))
            return
        except ValueError:  # V1Parser: a port that is no number, an address that is no ASCII
            self._refuse("invalid-header")
            return
        self._header_read(source, destination, rest)

    def _header_read(self, source: IAddress | None, destination: IAddress | None, rest: bytes) -> None:
        self._cancel_deadline()
        self._buffer = b""
        self._source, self._destination = source, destination
        wrapped = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if wrapped is None:  # the factory refused it (a per-address cap): close, as a port would
            assert self.transport is not None
            self.transport.loseConnection()
            self._refused = True
            return
        self.wrappedProtocol = wrapped
        wrapped.makeConnection(cast(ITransport, self))  # it provides the transport's interfaces
        if rest and self.wrappedProtocol is not None and not self.disconnecting:
            self.wrappedProtocol.dataReceived(rest)

    def _refuse(self, reason: str) -> None:
        self._cancel_deadline()  # (a fired one is no longer active)
        self._refused = True
        self._buffer = b""
        assert self.transport is not None
        log.warn("proxy.bad_header peer={peer} reason={reason}", peer=_host_port(self.transport.getPeer()),
                 reason=reason)
        self.transport.loseConnection()

    def _cancel_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802 - Twisted's name
        self._cancel_deadline()
        wrapped, self.wrappedProtocol = self.wrappedProtocol, None
        if wrapped is not None:
            wrapped.connectionLost(reason)


class ProxyHeaderFactory(protocol.ServerFactory):
    """Wraps a listener's factory: each connection from a trusted address starts with a PROXY
    header (`ProxyHeaderReader`), and every other one is refused as it is accepted."""

    noisy = False  # the wrapped factory logs its own start and stop

    def __init__(self, wrappedFactory: IProtocolFactory, trusted: TrustedProxies,  # noqa: N803 - Twisted's name
                 clock: IReactorTime) -> None:
        self.wrappedFactory = wrappedFactory
        self.trusted = trusted
        self.clock = clock

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        wrapped = self.wrappedFactory
        prefix = wrapped.logPrefix() if ILoggingContext.providedBy(wrapped) else type(wrapped).__name__
        return f"{prefix} (PROXY)"

    def doStart(self) -> None:  # noqa: N802 - Twisted's name
        self.wrappedFactory.doStart()
        super().doStart()

    def doStop(self) -> None:  # noqa: N802 - Twisted's name
        self.wrappedFactory.doStop()
        super().doStop()

    def buildProtocol(self, addr: IAddress | None) -> Any:  # noqa: N802 - Twisted's name (a ProxyHeaderReader)
        host = str(getattr(addr, "host", ""))
        if not self.trusted.trusts(host):
            # Only the balancer may name a client's address; a connection from anyone else
            # would otherwise be taken as coming from whatever it claims.
            log.info("proxy.refused peer={peer} reason=untrusted-source", peer=_host_port(addr))
            return None  # the listening port closes the socket at once
        return ProxyHeaderReader(self)


def _host_port(addr: IAddress | None) -> str:
    return f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}"
