"""Fuzzing the XEP-0114 component port with the client suite's strategies (strategies.py).

``ComponentServerFactory`` runs in process with Twisted's doubles (a recording ``StringTransport``,
``task.Clock``) and the real router. Each example opens a component stream with a generated or
mutated header, maybe shakes hands (with the right digest, a wrong one, or a mutated one), sends
hostile XML (DTDs, billion laughs, entities, comments, processing instructions, long text in many
pieces, deep nesting) and stanzas, all split into random reads. Properties, after every example:

- nothing raises out of ``dataReceived`` and nothing is logged as a failure or an error;
- the output is well-formed UTF-8 XML, each write one header, one element or one footer, nothing
  after the footer, at most one stream error, and only RFC 6120 conditions;
- a closed stream ends with ``<stream:error/>`` then ``</stream:stream>`` (or answers the
  component's own end); an open one has sent no footer;
- ``<handshake/>`` is only answered to the right digest for a configured domain, and the route
  is then that stream's;
- nothing hangs: a stream that has not shaken hands is ended by the deadline, and once its
  connection is lost it holds no parser, no route and no place in the per-address count;
- the outcome does not depend on how the input was split into reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sns_xmpp.xmpp.components import ComponentLimits, ComponentRoute, ComponentServerFactory, ComponentStream
from sns_xmpp.xmpp.routing import StanzaRouter
from tests.fuzz import strategies as fs
from tests.fuzz.harness import (
    END,
    NS_STREAMS,
    UNWIND,
    FuzzRun,
    LogWatch,
    ServerOutput,
    element_problems,
    note,
)
from tests.fuzz.harness import watch as watch  # the fixture: no failures in the log

DOMAIN = "echo.localhost"
SECRET = "echo-secret-0123456789"
LIMITS = ComponentLimits(max_stanza_bytes=65536, handshake_timeout=10, max_unauthenticated_per_ip=4)
STREAM_NS = "urn:ietf:params:xml:ns:xmpp-streams"


class RecordingTransport(StringTransport):
    """Each write goes to the output checker as one unit; writes after loseConnection are kept."""

    def __init__(self, output: ServerOutput, address: IPv4Address) -> None:
        super().__init__(peerAddress=address)
        self.output = output
        self.late = b""

    def write(self, data: bytes) -> None:
        if self.disconnecting and self.output.last is not None and self.output.last.ended:
            self.late += data
        super().write(data)
        self.output.feed_one(data)


class Peer:
    """One component connection."""

    def __init__(self, factory: ComponentServerFactory, host: str = "127.0.0.1") -> None:
        address = IPv4Address("TCP", host, 40000)
        self.output = ServerOutput()
        self.transport = RecordingTransport(self.output, address)
        stream = factory.buildProtocol(address)
        assert isinstance(stream, ComponentStream)
        self.stream = stream
        self.stream.makeConnection(self.transport)
        self.lost = False

    def feed(self, data: bytes) -> None:
        if not self.lost and data:
            self.stream.dataReceived(data)

    @property
    def sid(self) -> str | None:
        last = self.output.last
        return last.header.getAttribute("id") if last is not None and last.header is not None else None

    def lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.stream.connectionLost(Failure(ConnectionDone()))

    def problems(self) -> list[str]:
        output = self.output
        found = list(output.problems)
        for element in output.elements:
            found += element_problems(element)
        errors = output.find(NS_STREAMS, "error")
        if len(errors) > 1:
            found.append(f"{len(errors)} stream errors on one stream")
        if self.transport.late:
            found.append(f"written after the footer: {self.transport.late[:200]!r}")
        if self.lost:
            return found
        last = output.last
        if self.transport.disconnecting:
            if last is None or not last.ended:
                found.append("the transport was closed without </stream:stream>")
            elif not errors and not self.ended_by_peer:
                found.append("closed without a stream error or the component's end")
            elif errors and (not last.elements or last.elements[-1] is not errors[-1]):
                found.append("the stream error is not the last element before </stream:stream>")
        elif last is not None and last.ended:
            found.append("</stream:stream> was sent but the transport was left open")
        return found

    ended_by_peer = False

    def outcome(self) -> str:
        errors = self.output.find(NS_STREAMS, "error")
        if errors:
            conditions = [child.name for child in errors[-1].elements() if child.uri == STREAM_NS
                          and child.name != "text"]
            return f"stream error {conditions[0] if conditions else None}"
        if self.transport.disconnecting:
            return "closed by the component"
        if self.output.find(None, "handshake"):
            return "authenticated"
        return "open" if self.output.segments else "open, no header yet"


def check(peer: Peer, context: str) -> None:
    problems = peer.problems()
    assert not problems, f"{context}\n" + "\n".join(problems) + f"\n--- server output ---\n{peer.output.text()[-3000:]}"


def digest(sid: str, secret: str = SECRET) -> str:
    return hashlib.sha1((sid + secret).encode()).hexdigest()


HANDSHAKES = ("right", "right", "right", "wrong", "mutated", "uppercase", "none", "twice")


@st.composite
def component_header(draw: st.DrawFn) -> bytes:
    """Mostly a good component header (to the configured domain, or another), sometimes the client
    suite's fuzzed headers, a DTD before it, or byte mutations."""
    to = draw(st.sampled_from([DOMAIN] * 6 + ["other.localhost", "localhost", "", "a..b", "x" * 1100]))
    good = (f"<stream:stream xmlns='{fs.NS_COMPONENT}' xmlns:stream='{NS_STREAMS}'"
            f"{f' to={chr(39)}{to}{chr(39)}' if to else ''}>").encode()
    kind = draw(st.sampled_from(["good"] * 6 + ["fuzzed", "doctype", "declaration", "mutated"]))
    if kind == "fuzzed":
        return draw(fs.stream_header()).encode("utf-8", "surrogatepass")
    if kind == "doctype":
        return b"<?xml version='1.0'?>" + draw(fs.doctype()).encode() + good
    if kind == "declaration":
        return b"<?xml version='1.0'?>" + good
    if kind == "mutated":
        return draw(fs.mutated(good))
    return good


@st.composite
def after_header(draw: st.DrawFn) -> tuple[str, list[bytes], list[bytes]]:
    """What follows the header: a handshake kind, what comes before it, and what comes after it."""
    before = draw(st.lists(st.one_of(fs.hostile_xml(), st.just(b" ")), max_size=1))
    stanzas = st.one_of(
        fs.stanza().map(lambda node: node.xml().encode("utf-8", "surrogatepass")),
        st.sampled_from([f"<message from='bot@{DOMAIN}' to='{DOMAIN}'><body>hi</body></message>".encode(),
                         b"<message from='alice@localhost' to='bob@localhost'/>",
                         f"<iq type='get' id='1' from='{DOMAIN}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
                         .encode(), END,
                         f"<stream:error><conflict xmlns='{STREAM_NS}'/></stream:error>".encode()]),
        fs.hostile_xml())
    after = draw(st.lists(stanzas, max_size=3))
    if draw(st.booleans()):
        after = [draw(fs.mutated(b"".join(after)))]
    return draw(st.sampled_from(HANDSHAKES)), before, after


def handshake_bytes(kind: str, sid: str | None) -> tuple[bytes, bool]:
    """The handshake element for *kind*, and whether it carries the right digest."""
    if kind == "none":
        return b"", False
    right = digest(sid or "")
    text = {"right": right, "twice": right, "uppercase": right.upper(), "wrong": digest(sid or "", "wrong"),
            "mutated": right[:-1] + ("0" if right[-1] != "0" else "1")}[kind]
    element = f"<handshake>{text}</handshake>".encode()
    return (element * 2 if kind == "twice" else element), kind in ("right", "twice", "uppercase")


def run_script(factory: ComponentServerFactory, header: bytes, header_reads: list[bytes], kind: str,
               before: list[bytes], after: list[bytes], split: Callable[[bytes], list[bytes]]) -> tuple[Peer, bool]:
    """Feed one example to a new connection; returns it and whether the right digest was sent
    (after a header the server answered with an id)."""
    peer = Peer(factory)
    for read in header_reads:
        peer.feed(read)
    for read in split(b"".join(before)):
        peer.feed(read)
    shake, right = handshake_bytes(kind, peer.sid)
    for read in split(shake + b"".join(after)):
        peer.feed(read)
    peer.ended_by_peer = END in b"".join(after) or b"<stream:error>" in b"".join(after)
    return peer, right and peer.sid is not None


def test_fuzz_component_streams(watch: LogWatch) -> None:
    """Generated and hostile component streams, split into random reads, end properly or keep
    working; only the right digest shakes hands; the deadline ends the rest; nothing is left
    behind once the connections are lost; and two splits of the same input end the same way."""
    run = FuzzRun("component_streams")

    @given(component_header(), after_header(), st.data())
    def body(header: bytes, script: tuple[str, list[bytes], list[bytes]], data: st.DataObject) -> None:
        run.tick()
        kind, before, after = script
        outcomes = []
        for attempt in range(2):
            router, clock = StanzaRouter(), Clock()
            factory = ComponentServerFactory(router, {DOMAIN: SECRET}, clock, LIMITS)
            header_reads = data.draw(fs.split(header), label=f"header reads {attempt}")
            cuts = data.draw(st.lists(fs.POSITION, max_size=8), label=f"cuts {attempt}")

            def split(raw: bytes, cuts: list[int] = cuts) -> list[bytes]:
                points = sorted({0, len(raw), *(cut % len(raw) for cut in cuts if raw)})
                return [raw[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]

            peer, right = run_script(factory, header, header_reads, kind, before, after, split)
            check(peer, "after the input")
            shook = bool(peer.output.find(None, "handshake"))
            if shook:
                assert right, "<handshake/> without the right digest"
                route = router.routes.get(DOMAIN)
                assert isinstance(route, ComponentRoute) and route.xs is peer.stream
            outcome = peer.outcome()
            outcomes.append(outcome)
            clock.advance(LIMITS.handshake_timeout + 1)
            if not shook:
                assert peer.transport.disconnecting, "a stream that did not shake hands outlived the deadline"
            check(peer, "after the deadline")
            if not peer.transport.disconnecting:
                peer.feed(UNWIND + END)
                peer.ended_by_peer = True
                check(peer, "after the component ended its stream")
            peer.lose()
            check(peer, "after the connection was lost")
            assert peer.stream.stream is None or peer.stream.stream.parser is None, "a parser outlived its connection"
            assert not factory.unauthenticated and not factory.streams and DOMAIN not in router.routes
            assert not [call for call in clock.getDelayedCalls() if call.active()]
            watch.check()
        note(outcomes[0])
        assert outcomes[0] == outcomes[1], f"the same input ended two ways: {outcomes}"

    run(body, examples=150)


def test_fuzz_component_address_cap(watch: LogWatch) -> None:
    """Many streams from a few addresses, shaking hands or not, closing in any order: the count of
    unauthenticated streams per address never goes wrong, so the cap neither leaks nor locks out."""
    run = FuzzRun("component_address_cap")

    @given(st.lists(st.tuples(st.sampled_from(["127.0.0.1", "127.0.0.2"]),
                              st.sampled_from(["connect", "shake", "lose", "deadline"])), max_size=30))
    def body(steps: list[tuple[str, str]]) -> None:
        run.tick()
        router, clock = StanzaRouter(), Clock()
        factory = ComponentServerFactory(router, {DOMAIN: SECRET}, clock, LIMITS)
        open_peers: list[tuple[str, Peer]] = []
        for host, action in steps:
            if action == "connect":
                peer = Peer(factory, host)
                waiting = sum(1 for h, p in open_peers if h == host and not p.output.find(None, "handshake"))
                refused = peer.outcome() == "stream error policy-violation"
                assert refused == (waiting >= LIMITS.max_unauthenticated_per_ip), (waiting, peer.outcome())
                open_peers.append((host, peer))
                if not refused:
                    peer.feed(f"<stream:stream xmlns='{fs.NS_COMPONENT}' xmlns:stream='{NS_STREAMS}'"
                              f" to='{DOMAIN}'>".encode())
            elif action == "shake" and open_peers:
                _, peer = open_peers[-1]
                if peer.sid and not peer.transport.disconnecting:
                    peer.feed(handshake_bytes("right", peer.sid)[0])
            elif action == "lose" and open_peers:
                open_peers.pop(0)[1].lose()
            elif action == "deadline":
                clock.advance(LIMITS.handshake_timeout + 1)
                for _, peer in open_peers:
                    if peer.transport.disconnecting:
                        peer.lose()
                open_peers = [(h, p) for h, p in open_peers if not p.lost]
            for _, peer in open_peers:
                check(peer, f"after {action}")
        for _, peer in open_peers:
            peer.lose()
        assert not factory.unauthenticated and not factory.streams and DOMAIN not in router.routes
        note(f"{len(steps)} steps")
        watch.check()

    run(body, examples=100)


