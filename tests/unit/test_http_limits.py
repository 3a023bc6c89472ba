"""The HTTP side against slow and greedy clients: header and body deadlines, a per-address cap."""

from __future__ import annotations

from twisted.internet import task
from twisted.web import resource, server
from twisted.web.resource import IResource

from sns_xmpp.http.site import HTTPLimits, web_site
from tests.unit.http_exchange import Connection, parse_response, request

LIMITS = HTTPLimits(header_timeout=20, body_timeout=30, idle_timeout=60, max_connections_per_ip=256)
ATTACKER = "203.0.113.66"
HONEST = "198.51.100.7"


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        return b"hello"

    def render_POST(self, request: server.Request) -> bytes:
        assert request.content is not None
        return b"got " + request.content.read()


def make_site(clock: task.Clock, limits: HTTPLimits = LIMITS) -> server.Site:
    root: IResource = Hello()
    return web_site(root, clock, limits)


def trickle(clock: task.Clock, connection: Connection, data: bytes, every: float, until: float) -> float:
    """Send *data* one byte each *every* seconds while the connection is open, up to *until*
    seconds; the seconds it stayed open."""
    began = clock.seconds()
    for byte in data:
        if connection.closed or clock.seconds() - began >= until:
            break
        connection.send(bytes([byte]))
        clock.advance(every)
    return clock.seconds() - began


def test_headers_trickled_slower_than_the_deadline_are_closed() -> None:
    """Slowloris: a client sending its headers a byte every 5 s (well inside Twisted's 60 s idle
    timeout, which each byte restarts) is cut off at the 20 s header deadline, not held for ever."""
    clock = task.Clock()
    site = make_site(clock)
    connection = Connection(site, ATTACKER)
    headers = b"GET / HTTP/1.1\r\nHost: xmpp.example\r\n" + b"X-Padding: " + b"a" * 400 + b"\r\n\r\n"
    held = trickle(clock, connection, headers, every=5, until=600)
    assert connection.closed
    assert held <= LIMITS.header_timeout + 5
    assert not connection.transport.value()  # no answer to a request never finished


def test_a_stalled_body_is_closed_and_a_prompt_one_is_answered() -> None:
    """A request whose body trickles past the body deadline is closed; one that sends its body
    promptly, on the same kept-alive connection afterwards included, is answered."""
    clock = task.Clock()
    site = make_site(clock)
    prompt = Connection(site, HONEST)
    prompt.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert parse_response(prompt.transport.value()).body == b"got hello"
    prompt.transport.clear()
    clock.advance(19)  # idle on the kept-alive connection, under the idle timeout
    prompt.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert parse_response(prompt.transport.value()).body == b"hello"

    stalled = Connection(site, ATTACKER)
    stalled.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    held = trickle(clock, stalled, b"b" * 1000, every=5, until=600)
    assert stalled.closed
    assert held <= LIMITS.body_timeout + 5
    assert not stalled.transport.value()


def test_one_address_holds_at_most_the_cap_and_others_are_still_served() -> None:
    """256 open connections from one address are allowed (carrier-grade NAT); the next one from
    that address is closed at once, while other addresses are served; a closed connection frees
    its place."""
    clock = task.Clock()
    site = make_site(clock)
    held = [Connection(site, ATTACKER, 10_000 + n) for n in range(LIMITS.max_connections_per_ip)]
    for connection in held:
        connection.send(b"GET / HTTP/1.1\r\n")
    assert Connection(site, ATTACKER, 9_999).refused
    assert Connection(site, ATTACKER, 9_998).refused
    assert request(site, "GET", "/", host=HONEST).body == b"hello"
    held[0].close()
    assert request(site, "GET", "/", host=ATTACKER).body == b"hello"


def test_an_honest_request_is_answered_during_a_slowloris_of_many_sockets() -> None:
    """2,000 sockets from 8 addresses trickling headers do not keep an honest client waiting, and
    within the header deadline the server holds none of them any more."""
    clock = task.Clock()
    site = make_site(clock)
    attackers = [Connection(site, f"203.0.113.{n % 8}", 20_000 + n) for n in range(2_000)]
    for second in range(0, 120, 5):
        for connection in attackers:
            if not connection.closed:
                connection.send(b"GET / HTTP/1.1\r\n" if second == 0 else b"X")
        clock.advance(5)
        if second == 10:
            assert request(site, "GET", "/", host=HONEST).body == b"hello"
    open_attackers = sum(not connection.closed for connection in attackers)
    assert open_attackers == 0


def test_answers_equal_stock_twisted_and_the_hooks_it_overrides_are_still_called() -> None:
    """Tripwire for the HTTPChannel hooks GuardedChannel overrides (allHeadersReceived,
    allContentReceived, requestDone): requests answered on a kept-alive connection leave no
    deadline behind (if Twisted stopped calling a hook, the header deadline would close it);
    and an answer is byte for byte stock twisted.web's, but for the headers every answer here
    carries (Referrer-Policy, nosniff and the default Content-Security-Policy)."""
    clock = task.Clock()
    site = make_site(clock)
    kept = Connection(site, HONEST)
    for _ in range(3):
        kept.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        clock.advance(LIMITS.header_timeout + 1)
    assert not kept.closed
    assert kept.transport.value().count(b"HTTP/1.1 200 OK") == 3
    clock.advance(LIMITS.idle_timeout)  # Twisted's own idle timeout still ends it
    assert kept.closed

    ours = request(site, "GET", "/")
    stock = request(server.Site(Hello(), reactor=clock), "GET", "/")
    assert ours.headers.pop("referrer-policy") == ["no-referrer"]
    assert ours.headers.pop("x-content-type-options") == ["nosniff"]
    assert "frame-ancestors 'none'" in ours.headers.pop("content-security-policy")[0]
    ours.headers.pop("date"), stock.headers.pop("date")  # the wall clock's second may differ
    assert (ours.code, ours.headers, ours.body) == (stock.code, stock.headers, stock.body)


def test_a_body_over_its_paths_limit_is_refused_before_it_is_read() -> None:
    """A declared Content-Length over the limit is answered 413 as soon as the headers are in (no
    100 Continue first); a chunked body is cut off where it passes the limit, with nothing handed
    to the resource; the upload path's own, larger limit lets its body through; and requests
    within the limit, on other connections, are answered as usual."""
    clock = task.Clock()
    limits = HTTPLimits(max_body_bytes=100, body_limits={b"upload": 1000})
    site = make_site(clock, limits)

    declared = Connection(site, ATTACKER)
    declared.send(b"POST /login HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n"
                  + b"b" * 101)  # what came with the headers is dropped unread
    answer = declared.transport.value()
    assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer and b"got" not in answer
    assert declared.closed

    chunked = Connection(site, ATTACKER)
    chunked.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        chunked.send(b"40\r\n" + b"c" * 0x40 + b"\r\n")
    chunked.send(b"0\r\n\r\n")
    answer = chunked.transport.value()
    assert answer.startswith(b"HTTP/1.1 413 ") and b"got" not in answer
    assert chunked.closed

    upload = Connection(site, HONEST)
    upload.send(b"POST /upload/slot/file HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n" + b"u" * 500)
    assert parse_response(upload.transport.value()).body == b"got " + b"u" * 500
    small = Connection(site, HONEST)
    small.send(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"s" * 100)
    assert parse_response(small.transport.value()).body == b"got " + b"s" * 100
