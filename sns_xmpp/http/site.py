"""The HTTP side's twisted.web Site: deadlines for a request's headers and body, a per-address
connection cap, no Referer leaks, and the query-free access log.

Twisted's own idle timeout restarts with every byte, so a client that trickles its
headers (slowloris) holds a socket for ever. Here a request's headers must be complete
within ``header_timeout`` seconds of its first byte (or of the connection's opening),
and its body within ``body_timeout`` seconds of its headers; a connection that misses
a deadline is closed. A request body may be ``max_body_bytes`` long, or what ``body_limits`` gives
for the first segment of its path (HTTP upload's files): a longer Content-Length is answered 413
as soon as the headers are in, and a chunked body that grows past the limit is cut off there, so
that nothing larger is ever read (twisted.web would read any body whole, into a temporary file,
before a resource saw it). One address may hold ``max_connections_per_ip`` connections at
once; more are closed as soon as they are accepted, so that a flood of them costs no
descriptor (an answer would hold each one until it was written). The channel is Twisted's HTTP/1.1
``HTTPChannel`` (this listener is plain HTTP: no ALPN, so no HTTP/2 to negotiate).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource

from sns_xmpp.http.access_log import query_free_log_line
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.tally import Tally

log = GatedLogger()

@dataclass(frozen=True)
class HTTPLimits:
    header_timeout: float = 20
    body_timeout: float = 30
    idle_timeout: float = 60  # between requests on a kept-alive connection (Twisted's default)
    max_connections_per_ip: int = 512
    max_body_bytes: int = 1 << 20  # forms, logout tokens: a few kilobytes
    body_limits: Mapping[bytes, int] = field(default_factory=dict)  # by the path's first segment

    def body_limit(self, path: bytes) -> int:
        """The longest body a request for *path* may have."""
        segment = path.split(b"?", 1)[0].lstrip(b"/").split(b"/", 1)[0]
        return self.body_limits.get(segment, self.max_body_bytes)


# What every answer may do unless its resource says otherwise (the hand-over page's script, the
# login relay's, an uploaded file's sandbox): no script, no plugin, no framing (clickjacking of
# the login and device pages), forms only to this server, styles and images from it.
DEFAULT_CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self' data:; "
                                   "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


class PrivateRequest(server.Request):
    """Every answer says ``Referrer-Policy: no-referrer`` (callback URLs can carry credentials, and
    no page of this side should leak its own address to where it links or redirects),
    ``X-Content-Type-Options: nosniff``, and `DEFAULT_CONTENT_SECURITY_POLICY` unless its resource
    sets a policy of its own."""

    def process(self) -> None:
        self.setHeader(b"referrer-policy", b"no-referrer")
        self.setHeader(b"x-content-type-options", b"nosniff")
        self.setHeader(b"content-security-policy", DEFAULT_CONTENT_SECURITY_POLICY.encode())
        super().process()

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if isinstance(channel, GuardedChannel) and not channel.body_within_limit(len(data)):
            return
        super().handleContentChunk(data)


def _host(address: IAddress | None) -> str:
    return str(getattr(address, "host", "-"))


class GuardedChannel(http.HTTPChannel):
    """An HTTPChannel with a deadline for each request's headers and for its body."""

    site: GuardedSite
    counted_host: str | None = None  # the address this connection counts against, until it closes
    _deadline: IDelayedCall | None = None
    _phase = "headers"  # "headers", "body", "answering" (the request is out of our hands), "idle"

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm("headers", self.site.limits.header_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._phase == "refused":
            return
        if self._phase == "idle" and data:
            self._arm("headers", self.site.limits.header_timeout)
        super().dataReceived(data)

    _body_left = 0  # bytes the current request's body may still have

    def allHeadersReceived(self) -> None:
        self._body_left = self.site.limits.body_limit(self._path)
        if self.length is not None and self.length > self._body_left:
            self._too_large()  # before Twisted would answer "Expect: 100-continue"
            return
        self._arm("body", self.site.limits.body_timeout)
        super().allHeadersReceived()

    def hand_over(self) -> None:
        """The connection leaves HTTP (a WebSocket takes it over, as a client stream): the
        channel's deadlines and idle timeout no longer apply, and its place in its address's
        count goes back at once. The stream is counted by the client streams' own caps per
        address from then on (xmpp/c2s.py): logins in progress, then all streams, which
        carrier-grade NAT needs to be far more than this listener's cap."""
        self._disarm("handed-over")
        self.setTimeout(None)
        self.site.connection_closed(self)

    def body_within_limit(self, size: int) -> bool:
        """Count *size* more bytes of the request's body; past the limit, answer 413 and close."""
        self._body_left -= size
        if self._body_left < 0:
            self._too_large()
            return False
        return True

    def _too_large(self) -> None:
        if self._phase == "refused":
            return
        log.info("http.body_too_large peer={peer} limit={limit}", peer=self.counted_host,
                 limit=self.site.limits.body_limit(self._path))
        self._disarm("refused")  # what else arrives before the close is dropped unread
        if self.transport is not None:
            self.transport.write(b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()

    def rawDataReceived(self, data: bytes) -> None:
        if self._phase != "refused":
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._disarm("answering")
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        # Before Twisted replays pipelined bytes, which start the next request's deadline.
        self._phase = "idle"
        super().requestDone(request)

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm(phase)
        self._deadline = self.site.clock.callLater(seconds, self._missed, phase)

    def _disarm(self, phase: str) -> None:
        self._phase = phase
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _missed(self, phase: str) -> None:
        self._deadline = None
        log.info("http.request_timeout peer={peer} phase={phase}", peer=self.counted_host, phase=phase)
        self.timeoutConnection()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._disarm("closed")
        self.site.connection_closed(self)
        super().connectionLost(reason)


class GuardedSite(server.Site):
    protocol = GuardedChannel  # type: ignore[assignment]
    requestFactory = PrivateRequest

    def __init__(self, root: IResource, clock: IReactorTime, limits: HTTPLimits) -> None:
        super().__init__(root, logFormatter=query_free_log_line, timeout=limits.idle_timeout, reactor=clock)
        self.clock = clock
        self.limits = limits
        self.connections = Tally()
        self._refusing: set[str] = set()  # addresses at their cap: logged once per episode

    def buildProtocol(self, addr: IAddress | None) -> Any:
        host = _host(addr)
        if self.connections[host] >= self.limits.max_connections_per_ip:
            if host not in self._refusing:
                self._refusing.add(host)
                log.warn("http.connections_capped peer={peer} open={open}", peer=host, open=self.connections[host])
            return None  # the listening port closes the socket at once
        channel = super().buildProtocol(addr)
        self.connections.add(host)
        channel.counted_host = host
        return channel

    def connection_closed(self, channel: GuardedChannel) -> None:
        host = channel.counted_host
        if host is None:
            return
        channel.counted_host = None
        if self.connections.remove(host) < self.limits.max_connections_per_ip:
            self._refusing.discard(host)


def web_site(root: IResource, clock: IReactorTime, limits: HTTPLimits | None = None) -> server.Site:
    return GuardedSite(root, clock, limits or HTTPLimits())
