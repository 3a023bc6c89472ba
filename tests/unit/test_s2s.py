"""Server-to-server streams on Twisted's doubles: the exact negotiation both ways (RFC 6120 STARTTLS,
XEP-0178 EXTERNAL, XEP-0220 dialback), dialback keys verified and refused, the sender check, the
outgoing queue's bound, bounces and timeouts, the deny list, the limits and the idle sweep."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import crypto
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.words.xish import domish
from zope.interface import implementer

from sns_xmpp.xmpp.routing import LocalRoute, StanzaRouter
from sns_xmpp.xmpp.s2s.certificates import PeerServerTLS, TrustStore, client_context
from sns_xmpp.xmpp.s2s.dialback import dialback_key
from sns_xmpp.xmpp.s2s.federation import Federation, S2SLimits
from sns_xmpp.xmpp.s2s.inbound import InboundSettings
from sns_xmpp.xmpp.s2s.outbound import OutboundSettings
from sns_xmpp.xmpp.s2s.resolve import Target
from sns_xmpp.xmpp.s2s.stream import ServerStream
from sns_xmpp.xmpp.stanzas import NS_CLIENT
from sns_xmpp.xmpp.tls import ensure_self_signed

SECRET = "a-test-secret-of-this-install"
STREAMS = "http://etherx.jabber.org/streams"
HEADER_IN = ("<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
             "xmlns:db='jabber:server:dialback' from='b.test' to='a.test' version='1.0'>")


@implementer(ITLSTransport)
class TLSRecordingTransport(StringTransport):
    tls_started: object = None

    def startTLS(self, context: object) -> None:  # noqa: N802 - Twisted's name
        self.tls_started = context


class Trusting(TrustStore):
    """A trust store that finds every certificate valid for the domains given (the doubles have none)."""

    def __init__(self, valid: set[str] | None = None) -> None:
        super().__init__(None)
        self.valid = valid or set()

    def valid_for(self, domain: str, leaf: crypto.X509 | None, chain: list[crypto.X509]) -> bool:
        return domain in self.valid


class Resolver:
    def __init__(self, targets: dict[str, list[Target]]) -> None:
        self.targets = targets
        self.asked: list[str] = []

    def resolve(self, domain: str) -> defer.Deferred[list[Target]]:
        self.asked.append(domain)
        return defer.succeed(list(self.targets.get(domain, [])))


class World:
    """a.test served here (its users' stanzas land in `delivered`), b.test reachable at 192.0.2.2."""

    def __init__(self, tmp_path: Path, trust: TrustStore | None = None, limits: S2SLimits | None = None,
                 deny: tuple[str, ...] = (), valid_certificates_only: bool = False) -> None:
        self.clock = MemoryReactorClock()
        certificate, key = ensure_self_signed(tmp_path / "tls", ["a.test"],
                                              datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
        self.router = StanzaRouter()
        self.delivered: list[domish.Element] = []
        self.router.addRoute("a.test", LocalRoute(self.deliver))
        trust = trust or Trusting()
        self.resolver = Resolver({"b.test": [Target("192.0.2.2", 5269, False)]})
        self.federation = Federation(
            self.router, self.clock, self.resolver,  # type: ignore[arg-type]
            InboundSettings(SECRET, PeerServerTLS(certificate, key), trust,
                            require_valid_certificates=valid_certificates_only),
            OutboundSettings(SECRET, client_context(certificate, key), trust,
                             require_valid_certificates=valid_certificates_only,
                             external_domains=frozenset({"a.test"})),
            limits or S2SLimits(max_queued_stanzas=3), deny)
        self.router.remote = self.federation

    def deliver(self, stanza: domish.Element) -> None:
        self.delivered.append(stanza)

    def incoming(self) -> tuple[ServerStream, TLSRecordingTransport]:
        stream = self.federation.accept()
        transport = TLSRecordingTransport()
        stream.makeConnection(transport)
        return stream, transport

    def outgoing(self, index: int = -1) -> tuple[ServerStream, TLSRecordingTransport]:
        host, port, factory, timeout, bind = self.clock.tcpClients[index]
        stream = factory.buildProtocol(None)
        transport = TLSRecordingTransport()
        stream.makeConnection(transport)
        return stream, transport


def said(transport: StringTransport) -> str:
    text = transport.value().decode()
    transport.clear()
    return text


def message(sender: str, to: str, body: str = "hi") -> domish.Element:
    stanza = domish.Element((NS_CLIENT, "message"))
    stanza["from"], stanza["to"], stanza["type"] = sender, to, "chat"
    stanza.addElement("body", content=body)
    return stanza


def secured(world: World) -> tuple[ServerStream, TLSRecordingTransport]:
    """An incoming stream from b.test, through STARTTLS, at the features after TLS."""
    stream, transport = world.incoming()
    stream.dataReceived(HEADER_IN.encode())
    stream.dataReceived(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    stream.dataReceived(HEADER_IN.encode())
    transport.clear()
    return stream, transport


def test_incoming_stream_requires_starttls_then_offers_dialback_with_a_new_stream_id(tmp_path: Path) -> None:
    """RFC 6120 5.3 and XEP-0220 2.1.1, byte for byte: STARTTLS required before TLS; after it a
    new header with a new id, and dialback (with errors) but no EXTERNAL for an unvalidated
    certificate."""
    world = World(tmp_path)
    stream, transport = world.incoming()
    stream.dataReceived(HEADER_IN.encode())
    first_id = stream.sid
    assert said(transport) == (
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
        f"xmlns:db='jabber:server:dialback' from='a.test' to='b.test' id='{first_id}' version='1.0'>"
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
        "</stream:features>")
    stream.dataReceived(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><db:result from='b.test' to='a.test'>"
                        b"smuggled</db:result>")
    assert said(transport) == "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    assert transport.tls_started is world.federation.inbound_settings.server_tls
    stream.dataReceived(HEADER_IN.encode())
    assert stream.sid != first_id
    assert said(transport) == (
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
        f"xmlns:db='jabber:server:dialback' from='a.test' to='b.test' id='{stream.sid}' version='1.0'>"
        "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>")


@pytest.mark.parametrize(("header", "condition"), [
    (HEADER_IN.replace("xmlns='jabber:server'", "xmlns='jabber:client'"), "invalid-namespace"),
    (HEADER_IN.replace("to='a.test'", "to='elsewhere.test'"), "host-unknown"),
    (HEADER_IN.replace(" version='1.0'", ""), "unsupported-version"),
])
def test_a_bad_header_ends_the_stream_with_the_rfc_condition(tmp_path: Path, header: str, condition: str) -> None:
    world = World(tmp_path)
    stream, transport = world.incoming()
    stream.dataReceived(header.encode())
    assert f"<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>" \
           "</stream:stream>" in said(transport)
    assert transport.disconnecting


def test_nothing_but_starttls_is_accepted_before_tls(tmp_path: Path) -> None:
    """With require_encryption, dialback before STARTTLS is a policy violation (as Prosody and
    ejabberd answer), and nothing is verified."""
    world = World(tmp_path)
    stream, transport = world.incoming()
    stream.dataReceived(HEADER_IN.encode())
    transport.clear()
    stream.dataReceived(b"<db:result from='b.test' to='a.test'>0123</db:result>")
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in said(transport)
    assert world.clock.tcpClients == []


def verified_by_b(world: World, stream: ServerStream, transport: StringTransport, key: str, valid: bool) -> str:
    """Answer a.test's verification connection to b.test (XEP-0220 2.1.2) as b.test would; what the
    incoming stream then says."""
    verifier, out = world.outgoing()
    assert said(out) == ("<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
                         "xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0'>")
    verifier.dataReceived(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
                          b"xmlns:db='jabber:server:dialback' from='b.test' to='a.test' id='v1' version='1.0'>"
                          b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"
                          b"</starttls></stream:features>")
    assert said(out) == "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    verifier.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert out.tls_started is not None
    assert said(out).startswith("<stream:stream ")
    verifier.dataReceived(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
                          b"xmlns:db='jabber:server:dialback' from='b.test' to='a.test' id='v2' version='1.0'>"
                          b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
    assert said(out) == f"<db:verify from='a.test' to='b.test' id='{stream.sid}'>{key}</db:verify>"
    kind = "valid" if valid else "invalid"
    verifier.dataReceived(f"<db:verify from='b.test' to='a.test' id='{stream.sid}' type='{kind}'/>".encode())
    assert said(out) == "</stream:stream>" and out.disconnecting  # the verification stream is done
    return said(transport)


def test_a_dialback_key_verified_valid_lets_stanzas_from_that_domain_in_and_no_other(tmp_path: Path) -> None:
    """XEP-0220 2.1.2/2.1.3: the key goes to b.test's authoritative server over a connection of
    a.test's own; on valid, b.test's stanzas are routed (as jabber:client); a stanza from any
    other domain ends the stream with invalid-from (RFC 6120 4.9.3.9)."""
    world = World(tmp_path)
    stream, transport = secured(world)
    stream.dataReceived(b"<db:result from='b.test' to='a.test'>the-key</db:result>")
    assert said(transport) == ""  # no verdict before the authoritative server's answer
    assert verified_by_b(world, stream, transport, "the-key", True) == \
        "<db:result from='a.test' to='b.test' type='valid'/>"
    stream.dataReceived(b"<message from='bob@b.test/x' to='alice@a.test' type='chat'><body>hello</body></message>")
    [delivered] = world.delivered
    assert (delivered.uri, delivered["from"], str(delivered.body)) == (NS_CLIENT, "bob@b.test/x", "hello")
    assert delivered.body.uri == NS_CLIENT
    stream.dataReceived(b"<message from='mallory@c.test' to='alice@a.test'><body>spoof</body></message>")
    assert said(transport) == ("<stream:error><invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                               "</stream:error></stream:stream>")
    assert len(world.delivered) == 1
    assert world.federation.domains()["b.test"]["in"][0]["method"] == "tls+dialback"


def test_a_wrong_dialback_key_is_answered_invalid_and_the_stream_refused(tmp_path: Path) -> None:
    """The authoritative server says invalid: <db:result type='invalid'/>, then not-authorized;
    a stanza sent before the verdict already ended the stream, and none is ever routed."""
    world = World(tmp_path)
    stream, transport = secured(world)
    stream.dataReceived(b"<db:result from='b.test' to='a.test'>made-up</db:result>")
    assert verified_by_b(world, stream, transport, "made-up", False) == (
        "<db:result from='a.test' to='b.test' type='invalid'/><stream:error><not-authorized "
        "xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>"
        "dialback key not valid</text></stream:error></stream:stream>")
    stream.dataReceived(b"<message from='bob@b.test' to='alice@a.test'><body>late</body></message>")
    assert world.delivered == []

    early, early_transport = secured(world)
    early.dataReceived(b"<db:result from='b.test' to='a.test'>k</db:result>"
                       b"<message from='bob@b.test' to='alice@a.test'><body>too soon</body></message>")
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in said(early_transport)
    assert world.delivered == []


def test_db_verify_is_answered_for_keys_this_server_issued_only(tmp_path: Path) -> None:
    """XEP-0220 2.1.2 Examples 5 and 6, XEP-0185: the authoritative side answers an unauthenticated
    peer; valid only for the key made from our secret, the two domains and that stream id."""
    world = World(tmp_path)
    stream, transport = secured(world)
    good = dialback_key(SECRET, "b.test", "a.test", "s1")
    stream.dataReceived(f"<db:verify from='b.test' to='a.test' id='s1'>{good}</db:verify>".encode())
    assert said(transport) == "<db:verify from='a.test' to='b.test' id='s1' type='valid'/>"
    for wrong in (dialback_key(SECRET, "b.test", "a.test", "s2"), dialback_key("other", "b.test", "a.test", "s1"),
                  dialback_key(SECRET, "c.test", "a.test", "s1")):
        stream.dataReceived(f"<db:verify from='b.test' to='a.test' id='s1'>{wrong}</db:verify>".encode())
        assert said(transport) == "<db:verify from='a.test' to='b.test' id='s1' type='invalid'/>"
    # XEP-0185 section 2, computed here from its text: HMAC-SHA256(SHA256(secret) in hex, "R O id").
    hashed = hashlib.sha256(SECRET.encode()).hexdigest().encode()
    assert good == hmac.new(hashed, b"b.test a.test s1", hashlib.sha256).hexdigest()


def test_external_is_offered_only_for_a_certificate_valid_for_the_claimed_domain(tmp_path: Path) -> None:
    """XEP-0178: with b.test's certificate validated, EXTERNAL is offered; an authorisation
    identity of another domain fails; b.test's succeeds, the stream restarts, and stanzas flow."""
    world = World(tmp_path, trust=Trusting({"b.test"}))
    stream, transport = secured(world)
    # secured() cleared the features; ask again through a fresh stream to see them.
    stream2, transport2 = world.incoming()
    stream2.dataReceived(HEADER_IN.encode())
    stream2.dataReceived(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    transport2.clear()
    stream2.dataReceived(HEADER_IN.encode())
    assert said(transport2).endswith(
        "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism>"
        "</mechanisms><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>")
    other = base64.b64encode(b"c.test").decode()
    stream2.dataReceived(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{other}</auth>".encode())
    assert said(transport2) == "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-authzid/></failure>"
    mine = base64.b64encode(b"b.test").decode()
    stream2.dataReceived(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{mine}</auth>".encode())
    assert said(transport2) == "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    stream2.dataReceived(HEADER_IN.encode())
    assert said(transport2).endswith("<stream:features/>")
    stream2.dataReceived(b"<presence from='bob@b.test/x' to='alice@a.test'/>")
    assert [stanza.name for stanza in world.delivered] == ["presence"]


def test_outgoing_negotiation_tries_external_falls_back_to_dialback_and_then_sends_the_queue(tmp_path: Path) -> None:
    """The connecting side, byte for byte: header, STARTTLS, a new header over TLS, EXTERNAL as
    offered (ejabberd offers it to everyone), on <failure/> dialback on the same stream with
    XEP-0185's key, and only after type='valid' the stanzas that waited, in jabber:server."""
    world = World(tmp_path)
    world.router.route(message("alice@a.test/phone", "bob@b.test", "first"))
    world.router.route(message("alice@a.test/phone", "bob@b.test", "second"))
    assert world.resolver.asked == ["b.test"]
    [(host, port, *_)] = world.clock.tcpClients
    assert (host, port) == ("192.0.2.2", 5269)
    stream, transport = world.outgoing()
    header = ("<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
              "xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0'>")
    assert said(transport) == header
    stream.dataReceived(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
                        b"xmlns:db='jabber:server:dialback' from='b.test' id='one' version='1.0'>"
                        b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")
    assert said(transport) == "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    stream.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert transport.tls_started is not None and said(transport) == header
    stream.dataReceived(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
                        b"xmlns:db='jabber:server:dialback' from='b.test' id='two' version='1.0'>"
                        b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                        b"<mechanism>EXTERNAL</mechanism></mechanisms>"
                        b"<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
    assert said(transport) == "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>YS50ZXN0</auth>"
    stream.dataReceived(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>")
    key = dialback_key(SECRET, "b.test", "a.test", "two")
    assert said(transport) == f"<db:result from='a.test' to='b.test'>{key}</db:result>"
    assert world.federation.domains()["b.test"]["out"][0]["queued"] == 2
    stream.dataReceived(b"<db:result from='b.test' to='a.test' type='valid'/>")
    assert said(transport) == (
        "<message from='alice@a.test/phone' to='bob@b.test' type='chat'><body>first</body></message>"
        "<message from='alice@a.test/phone' to='bob@b.test' type='chat'><body>second</body></message>")
    world.router.route(message("alice@a.test/phone", "bob@b.test", "third"))
    assert said(transport) == "<message from='alice@a.test/phone' to='bob@b.test' type='chat'><body>third</body>" \
                              "</message>"
    [link] = world.federation.domains()["b.test"]["out"]
    assert (link["state"], link["method"], link["sent"]) == ("authenticated", "tls+dialback", 3)


def test_the_queue_is_bounded_and_a_failed_link_bounces_what_waits(tmp_path: Path) -> None:
    """Past max_queued_stanzas a stanza bounces at once (resource-constraint); when no target
    accepts the connection, the queue bounces remote-server-not-found (RFC 6120 8.3.3.16) to
    the local senders; a new stanza opens a new link."""
    world = World(tmp_path)
    for n in range(4):
        world.router.route(message("alice@a.test/phone", "bob@b.test", str(n)))
    [overflow] = world.delivered
    assert (overflow["type"], overflow["to"], overflow.error.firstChildElement().name) == \
        ("error", "alice@a.test/phone", "resource-constraint")
    host, port, factory, *_ = world.clock.tcpClients[0]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    bounced = world.delivered[1:]
    assert [(b["type"], str(b.body), b.error.firstChildElement().name) for b in bounced] == \
        [("error", str(n), "remote-server-not-found") for n in range(3)]
    assert world.federation.links == {}
    world.router.route(message("alice@a.test/phone", "bob@b.test", "again"))
    assert len(world.clock.tcpClients) == 2


def test_a_link_not_authenticated_in_time_bounces_with_remote_server_timeout(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.router.route(message("alice@a.test/phone", "bob@b.test"))
    stream, transport = world.outgoing()  # connected, but the peer never answers
    world.clock.advance(24.9)
    assert world.delivered == []
    world.clock.advance(0.2)
    [bounce] = world.delivered
    assert bounce.error.firstChildElement().name == "remote-server-timeout"
    assert transport.disconnecting


def test_a_domain_that_resolves_nowhere_bounces_and_errors_never_bounce(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.router.route(message("alice@a.test/phone", "nobody@nowhere.test"))
    error = message("alice@a.test/phone", "nobody@nowhere.test")
    error["type"] = "error"
    world.router.route(error)
    [bounce] = world.delivered
    assert (bounce["from"], bounce.error.firstChildElement().name) == ("nobody@nowhere.test", "remote-server-not-found")


def test_the_deny_list_holds_both_ways(tmp_path: Path) -> None:
    """A denied domain's stanzas bounce policy-violation without a connection; its incoming
    stream ends with policy-violation at the header."""
    world = World(tmp_path, deny=("b.test",))
    world.router.route(message("alice@a.test/phone", "bob@b.test"))
    [bounce] = world.delivered
    assert bounce.error.firstChildElement().name == "policy-violation"
    assert world.clock.tcpClients == []
    stream, transport = world.incoming()
    stream.dataReceived(HEADER_IN.encode())
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in said(transport)


def test_streams_per_domain_are_limited_and_the_count_falls_when_one_ends(tmp_path: Path) -> None:
    world = World(tmp_path, limits=S2SLimits(max_streams_per_domain=2))
    streams = [world.incoming() for _ in range(3)]
    for stream, _ in streams:
        stream.dataReceived(HEADER_IN.encode())
    assert ["policy-violation" in said(t) for _, t in streams] == [False, False, True]
    streams[0][0].connectionLost(Failure(ConnectionDone()))
    again, transport = world.incoming()
    again.dataReceived(HEADER_IN.encode())
    assert "policy-violation" not in said(transport)


def test_the_sweep_closes_silent_streams_and_unauthenticated_ones(tmp_path: Path) -> None:
    """An incoming stream that never authenticates ends connection-timeout after auth_timeout; an
    authenticated one silent for idle_timeout is closed properly (footer)."""
    world = World(tmp_path, limits=S2SLimits(idle_timeout=100, auth_timeout=30))
    world.federation.startService()
    try:
        idle, idle_transport = world.incoming()
        idle.dataReceived(HEADER_IN.encode())
        world.clock.advance(31)
        world.clock.advance(10)
        assert "<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in said(idle_transport)
        stream, transport = secured(world)
        stream.dataReceived(b"<db:result from='b.test' to='a.test'>k</db:result>")
        verified_by_b(world, stream, transport, "k", True)
        world.clock.advance(90)
        assert not transport.disconnecting
        world.clock.advance(40)
        assert said(transport) == "</stream:stream>" and transport.disconnecting
    finally:
        world.federation.stopService()


def test_local_domains_are_routed_first_and_an_absent_component_is_not_sought_remotely(tmp_path: Path) -> None:
    """The router's local lookup comes first; only a domain with no route reaches the federation;
    a configured component that is not connected bounces service-unavailable, as before."""
    world = World(tmp_path)
    world.router.component_domains.add("bot.a.test")
    world.router.route(message("bob@b.test", "alice@a.test"))
    world.router.route(message("alice@a.test/phone", "bot.a.test"))
    assert [s["to"] for s in world.delivered] == ["alice@a.test", "alice@a.test/phone"]
    assert world.delivered[1].error.firstChildElement().name == "service-unavailable"
    assert world.clock.tcpClients == [] and world.federation.links == {}


def test_a_stanza_over_the_size_limit_ends_the_peers_stream(tmp_path: Path) -> None:
    world = World(tmp_path, limits=S2SLimits(max_stanza_bytes=1024))
    stream, transport = secured(world)
    stream.dataReceived(b"<message from='bob@b.test' to='alice@a.test'><body>" + b"x" * 2000)
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'" in said(transport)



def handshake(server: Any, client: Any) -> None:
    """Run a TLS handshake between two memory-BIO pyOpenSSL connections."""
    from OpenSSL import SSL
    for _ in range(20):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        for source, sink in ((client, server), (server, client)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            sink.bio_write(data)
    client.do_handshake()
    server.do_handshake()


def test_the_listener_completes_a_handshake_that_offers_alpn_and_sees_the_peers_certificate(tmp_path: Path) -> None:
    """Prosody offers ALPN xmpp-server even on STARTTLS: the listener answers it (Twisted's context
    alone aborted with internal_error, which cut Prosody off), asks for the peer's certificate, and
    the trust store finds it valid for its domain only when the CA file lists it."""
    from OpenSSL import SSL
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    ours, our_key = ensure_self_signed(tmp_path / "a", ["a.test"], when)
    theirs, their_key = ensure_self_signed(tmp_path / "b", ["b.test"], when)
    server = PeerServerTLS(ours, our_key).serverConnectionForTLS(None)  # type: ignore[arg-type]
    server.set_accept_state()
    client = SSL.Connection(client_context(theirs, their_key, direct_tls=True))
    client.set_connect_state()
    handshake(server, client)
    assert server.get_alpn_proto_negotiated() == b"xmpp-server"
    leaf = server.get_peer_certificate()
    assert leaf is not None and leaf.to_cryptography().subject.rfc4514_string() == "CN=b.test"
    pinned = TrustStore(theirs)
    assert pinned.valid_for("b.test", leaf, []) is True
    assert pinned.valid_for("c.test", leaf, []) is False
    assert TrustStore(ours).valid_for("b.test", leaf, []) is False
    assert TrustStore(None).valid_for("b.test", leaf, []) is False


def test_a_direct_tls_target_gets_tls_from_the_first_byte_and_no_starttls(tmp_path: Path) -> None:
    """XEP-0368: an _xmpps-server target is connected through a TLS wrapper (ALPN xmpp-server),
    the stream counts as encrypted from the start, and goes to authentication without STARTTLS."""
    from twisted.protocols.tls import TLSMemoryBIOFactory
    world = World(tmp_path)
    world.resolver.targets["b.test"] = [Target("192.0.2.2", 5270, True)]
    world.router.route(message("alice@a.test/phone", "bob@b.test"))
    [(host, port, factory, *_)] = world.clock.tcpClients
    assert (host, port, type(factory)) == ("192.0.2.2", 5270, TLSMemoryBIOFactory)
    stream = factory.wrappedFactory.buildProtocol(None)
    transport = TLSRecordingTransport()
    stream.makeConnection(transport)
    assert stream.secure
    said(transport)
    stream.dataReceived(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
                        b"xmlns:db='jabber:server:dialback' from='b.test' id='d1' version='1.0'>"
                        b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
    key = dialback_key(SECRET, "b.test", "a.test", "d1")
    assert said(transport) == f"<db:result from='a.test' to='b.test'>{key}</db:result>"
    assert transport.tls_started is None


def test_an_outgoing_stream_without_starttls_is_refused_when_encryption_is_required(tmp_path: Path) -> None:
    """A peer that offers no STARTTLS gets policy-violation, and what waited bounces."""
    world = World(tmp_path)
    world.router.route(message("alice@a.test/phone", "bob@b.test"))
    stream, transport = world.outgoing()
    said(transport)
    stream.dataReceived(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
                        b"xmlns:db='jabber:server:dialback' from='b.test' id='p1' version='1.0'>"
                        b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in said(transport)
    [bounce] = world.delivered
    assert bounce.error.firstChildElement().name == "remote-server-not-found"


def test_metrics_and_the_console_show_the_streams_per_domain(tmp_path: Path) -> None:
    """/metrics counts s2s streams by direction and state; the console's s2s() lists each remote
    domain's links with state, method and queue, and says when s2s is off."""
    from prometheus_client import generate_latest

    from sns_xmpp.observe.metrics import Metrics
    from sns_xmpp.ops.console import namespace
    world = World(tmp_path)
    metrics = Metrics()
    metrics.watch_s2s(world.federation.stream_states)
    world.router.route(message("alice@a.test/phone", "bob@b.test"))
    incoming, _ = secured(world)
    scraped = generate_latest(metrics.registry).decode()
    assert 'sns_xmpp_s2s_streams{direction="out",state="negotiating"} 1.0' not in scraped  # not connected yet
    assert 'sns_xmpp_s2s_streams{direction="out",state="connecting"} 1.0' in scraped
    assert 'sns_xmpp_s2s_streams{direction="in",state="negotiating"} 1.0' in scraped

    class Server:
        federation: Federation | None = world.federation
        sessions = type("Sessions", (), {"clock": world.clock})()

    s2s = namespace(Server())["s2s"]  # type: ignore[arg-type]
    assert s2s("B.test") == {
        "out": [{"local": "a.test", "state": "connecting", "method": None, "queued": 1, "sent": 0, "peer": None}],
        "in": [{"state": "negotiating", "method": None, "peer": "192.168.1.1:54321", "local": "a.test"}]}
    Server.federation = None
    assert namespace(Server())["s2s"]() == "server-to-server is off ([xmpp.s2s] port = -1)"  # type: ignore[arg-type]


def test_with_valid_certificates_required_only_external_is_offered_and_dialback_refused(tmp_path: Path) -> None:
    """require_valid_certificates: no dialback feature, a <db:result/> is not-authorized, and an
    outgoing stream to a peer whose certificate does not verify is given up (and bounces)."""
    trust = Trusting({"b.test"})
    world = World(tmp_path, trust=trust, valid_certificates_only=True)
    stream, transport = world.incoming()
    stream.dataReceived(HEADER_IN.encode())
    stream.dataReceived(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    transport.clear()
    stream.dataReceived(HEADER_IN.encode())
    assert said(transport).endswith(
        "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism>"
        "</mechanisms></stream:features>")
    stream.dataReceived(b"<db:result from='b.test' to='a.test'>k</db:result>")
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in said(transport)

    trust.valid.clear()  # b.test's server certificate, seen by the outgoing stream, does not verify
    world.router.route(message("alice@a.test/phone", "bob@b.test"))
    out, out_transport = world.outgoing()
    out.dataReceived(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
                     b"from='b.test' id='r1' version='1.0'><stream:features>"
                     b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")
    out.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    out_transport.clear()
    out.dataReceived(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
                     b"from='b.test' id='r2' version='1.0'><stream:features>"
                     b"<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in said(out_transport)
    [bounce] = world.delivered
    assert bounce.error.firstChildElement().name == "remote-server-not-found"


def test_a_dialback_claim_for_a_domain_that_resolves_nowhere_gets_a_dialback_error(tmp_path: Path) -> None:
    """XEP-0220 2.4: the authoritative server cannot be found, so the <db:result/> gets an error
    result (the feature advertised <errors/>), and the stream stays unauthenticated."""
    world = World(tmp_path)
    stream, transport = world.incoming()
    header = HEADER_IN.replace("b.test", "c.test")
    stream.dataReceived(header.encode())
    stream.dataReceived(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    stream.dataReceived(header.encode())
    transport.clear()
    stream.dataReceived(b"<db:result from='c.test' to='a.test'>k</db:result>")
    assert said(transport) == ("<db:result from='a.test' to='c.test' type='error'><error type='cancel'>"
                               "<remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
                               "</db:result>")
    stream.dataReceived(b"<message from='x@c.test' to='alice@a.test'><body>no</body></message>")
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in said(transport)
    assert world.delivered == []


def test_a_peer_may_not_make_this_server_dial_out_without_bound(tmp_path: Path) -> None:
    """Every <db:result/> makes a verification connection: past eight at once on one stream, the
    stream ends with policy-violation and no ninth connection is made."""
    world = World(tmp_path)
    for n in range(8):
        world.resolver.targets[f"d{n}.test"] = [Target("192.0.2.9", 5269, False)]
    world.resolver.targets["d8.test"] = [Target("192.0.2.9", 5269, False)]
    stream, transport = secured(world)
    for n in range(9):
        stream.dataReceived(f"<db:result from='d{n}.test' to='a.test'>k</db:result>".encode())
    assert len(world.clock.tcpClients) == 8
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in said(transport)


def test_one_address_holds_a_bounded_number_of_unauthenticated_streams(tmp_path: Path) -> None:
    """Past max_unauthenticated_per_address, a new stream from that address ends policy-violation
    at once; authenticating (or closing) one frees its place."""
    world = World(tmp_path, limits=S2SLimits(max_unauthenticated_per_address=2))
    first, first_transport = secured(world)
    world.incoming()
    third, third_transport = world.incoming()
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in said(third_transport)
    first.dataReceived(b"<db:result from='b.test' to='a.test'>k</db:result>")
    verified_by_b(world, first, first_transport, "k", True)
    fourth, fourth_transport = world.incoming()
    assert said(fourth_transport) == ""


def test_a_peer_that_drops_during_negotiation_bounces_what_waited(tmp_path: Path) -> None:
    """The connection is lost after STARTTLS, before the verdict: the queued stanzas bounce
    remote-server-not-found, and the link is gone so the next stanza starts afresh."""
    world = World(tmp_path)
    world.router.route(message("alice@a.test/phone", "bob@b.test", "one"))
    world.router.route(message("alice@a.test/phone", "bob@b.test", "two"))
    stream, transport = world.outgoing()
    stream.dataReceived(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
                        b"from='b.test' id='x1' version='1.0'><stream:features>"
                        b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")
    stream.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    stream.connectionLost(Failure(ConnectionDone()))
    assert [(str(b.body), b.error.firstChildElement().name) for b in world.delivered] == \
        [("one", "remote-server-not-found"), ("two", "remote-server-not-found")]
    assert world.federation.links == {}


def authenticated_link(world: World) -> tuple[ServerStream, TLSRecordingTransport]:
    """An outgoing stream to b.test through STARTTLS and dialback, its first stanza sent."""
    world.router.route(message("alice@a.test/phone", "bob@b.test", "first"))
    stream, transport = world.outgoing()
    stream.dataReceived(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
                        b"from='b.test' id='one' version='1.0'><stream:features>"
                        b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")
    stream.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    stream.dataReceived(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
                        b"from='b.test' id='two' version='1.0'><stream:features>"
                        b"<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
    stream.dataReceived(b"<result xmlns='jabber:server:dialback' from='b.test' to='a.test' type='valid'/>")
    assert said(transport).endswith("<body>first</body></message>")
    return stream, transport


def test_a_stanza_while_the_peer_closes_the_stream_opens_a_new_one_instead_of_bouncing(tmp_path: Path) -> None:
    """The peer ended its stream (RFC 6120 4.4) and the connection is not gone yet: a stanza
    routed now goes to a new link, not to the closing stream, and nothing bounces when the old
    connection is lost."""
    world = World(tmp_path)
    stream, transport = authenticated_link(world)
    stream.dataReceived(b"</stream:stream>")
    assert said(transport) == "</stream:stream>" and transport.disconnecting
    world.router.route(message("alice@a.test/phone", "bob@b.test", "second"))
    assert len(world.clock.tcpClients) == 2
    stream.connectionLost(Failure(ConnectionDone()))
    assert world.delivered == []
    [link] = world.federation.domains()["b.test"]["out"]
    assert (link["state"], link["queued"]) == ("connecting", 1)


@pytest.mark.parametrize(("table", "key", "problem"), [
    ("connect_timeout = 30", "xmpp.s2s.connect_timeout", "29"),
    ("port = 70000", "xmpp.s2s.port", "65535"),
    ('deny = ["a@b.test"]', "xmpp.s2s.deny", "not a bare domain"),
    ("[xmpp.s2s.hosts]\n'b.test' = 5", "xmpp.s2s.hosts", "host"),
])
def test_a_bad_s2s_setting_names_its_key(table: str, key: str, problem: str) -> None:
    from sns_xmpp.config import ConfigError, parse_config
    text = table if table.startswith("[xmpp.s2s.") else f"[xmpp.s2s]\n{table}"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert f"'{key}'" in str(caught.value) and problem in str(caught.value), str(caught.value)


def test_port_minus_one_leaves_the_server_an_island_and_a_port_makes_the_listener(tmp_path: Path) -> None:
    """[xmpp.s2s] port = -1: no listener, no federation, remote stanzas bounce as before; with a
    port, the listener, the router's remote route and the dialback secret (0600) are there."""
    from sns_xmpp.config import parse_config
    from sns_xmpp.observe import log_gate
    from sns_xmpp.service import build_server

    gate = log_gate._minimum[0]  # build_server sets the process's log level
    try:
        off = build_server(parse_config(f'[server]\ndata_dir = "{tmp_path / "off"}"\n[xmpp.s2s]\nport = -1\n'),
                           MemoryReactorClock())  # type: ignore[arg-type]
        on = build_server(parse_config(f'[server]\ndata_dir = "{tmp_path / "on"}"\n[xmpp.s2s]\nport = 0\n'),
                          MemoryReactorClock())  # type: ignore[arg-type]
    finally:
        log_gate._minimum[0] = gate
    assert off.federation is None and off.router.remote is None
    assert "s2s" not in [listener.name for listener in off.top]
    assert on.router.remote is on.federation is not None
    assert on.listener("s2s").factory is not None
    assert "s2s-direct-tls" not in [listener.name for listener in on.top]  # XEP-0368's port: off by default
    assert (tmp_path / "on" / "dialback.key").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "off" / "dialback.key").exists()


def test_a_stream_counts_against_the_domain_it_first_claimed_until_it_ends(tmp_path: Path) -> None:
    """A peer that names another domain in its header after STARTTLS still counts against the
    first (and only once); when the stream ends the count falls back to nothing."""
    world = World(tmp_path)
    stream, transport = world.incoming()
    stream.dataReceived(HEADER_IN.encode())
    stream.dataReceived(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    stream.dataReceived(HEADER_IN.replace("from='b.test'", "from='c.test'").encode())
    assert (world.federation.per_domain["b.test"], world.federation.per_domain["c.test"]) == (1, 0)
    stream.connectionLost(Failure(ConnectionDone()))
    assert len(world.federation.per_domain) == 0


def test_a_second_claim_of_a_proven_domain_is_answered_at_once(tmp_path: Path) -> None:
    """b.test, proven by dialback on this stream, asks again for another domain served here
    (XEP-0220 multiplexing): answered valid without a second verification connection."""
    world = World(tmp_path)
    world.router.addRoute("conference.a.test", LocalRoute(world.deliver))
    stream, transport = secured(world)
    stream.dataReceived(b"<db:result from='b.test' to='a.test'>k</db:result>")
    verified_by_b(world, stream, transport, "k", True)
    stream.dataReceived(b"<db:result from='b.test' to='conference.a.test'>k2</db:result>")
    assert said(transport) == "<db:result from='conference.a.test' to='b.test' type='valid'/>"
    assert len(world.clock.tcpClients) == 1


def test_a_claim_the_certificate_already_proves_is_answered_without_calling_back(tmp_path: Path) -> None:
    """XEP-0344 2.4 ("dialback without dialback"): over TLS with a certificate valid for the
    claimed domain, the <db:result/> is answered valid at once, no verification connection."""
    world = World(tmp_path, trust=Trusting({"b.test"}))
    stream, transport = secured(world)
    stream.dataReceived(b"<db:result from='b.test' to='a.test'>any</db:result>")
    assert said(transport) == "<db:result from='a.test' to='b.test' type='valid'/>"
    assert world.clock.tcpClients == []
    assert world.federation.domains()["b.test"]["in"][0]["method"] == "tls+dialback-certificate"


def test_a_peer_that_reads_nothing_loses_its_stream_before_it_holds_our_memory(tmp_path: Path) -> None:
    """An authenticated outgoing stream whose peer takes no data: once more than
    max_outbound_bytes wait unread, the stream ends with policy-violation; the next stanza for
    that domain starts a new link rather than adding to the stalled one."""
    from twisted.internet import abstract
    from twisted.internet.address import IPv4Address

    class StalledSocket(abstract.FileDescriptor):
        connected = 1

        def writeSomeData(self, data: bytes) -> int:
            return 0

        def getPeer(self) -> IPv4Address:
            return IPv4Address("TCP", "192.0.2.2", 5269)

        def startTLS(self, context: object) -> None:
            pass

    world = World(tmp_path, limits=S2SLimits(max_outbound_bytes=100_000))
    stream, transport = authenticated_link(world)
    stalled = StalledSocket(reactor=world.clock)
    stream.transport = stalled
    for _ in range(400):
        world.router.route(message("alice@a.test/phone", "bob@b.test", "x" * 1000))
    assert stream.closed
    assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in b"".join(stalled._tempDataBuffer)
    assert 100_000 < len(b"".join(stalled._tempDataBuffer)) < 100_000 + 70_000 + 2_000
    assert len(world.clock.tcpClients) == 2  # the stanzas after it went to a new link


def test_the_log_says_how_each_stream_authenticated_and_never_holds_a_key_or_a_body(tmp_path: Path) -> None:
    """Both directions log s2s.authenticated with the method (tls+dialback here); no event carries
    the dialback key or a message body."""
    from twisted.logger import LogEvent, formatEvent, globalLogPublisher
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        world = World(tmp_path)
        stream, transport = authenticated_link(world)
        incoming, incoming_transport = secured(world)
        incoming.dataReceived(b"<db:result from='b.test' to='a.test'>secret-key-material</db:result>")
        verified_by_b(world, incoming, incoming_transport, "secret-key-material", True)
        incoming.dataReceived(b"<message from='bob@b.test' to='alice@a.test'><body>private words</body></message>")
    finally:
        globalLogPublisher.removeObserver(events.append)
    authenticated = sorted((e["direction"], e["method"]) for e in events
                           if e.get("log_format", "").startswith("s2s.authenticated"))
    assert authenticated == [("in", "tls+dialback"), ("out", "tls+dialback")]
    outgoing_key = dialback_key(SECRET, "b.test", "a.test", "two")
    for event in events:
        text = formatEvent(event) + repr({k: v for k, v in event.items() if not k.startswith("log_")})
        assert "secret-key-material" not in text and outgoing_key not in text and "private words" not in text
