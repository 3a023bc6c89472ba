"""Stream negotiation fed raw XML through Twisted's StringTransport: the exact RFC 6120 answers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.words.protocols.jabber.xmlstream import NS_STREAMS
from twisted.words.xish import domish
from zope.interface import implementer

from sns_xmpp.auth.checker import AuthenticationFailed, ILoginChecker, LoginResult
from sns_xmpp.xmpp.c2s import ClientStream, ClientStreamFactory, StreamLimits
from sns_xmpp.xmpp.negotiation import NS_BIND, C2SSettings, ClientNegotiator, bind_result_text
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import NS_CLIENT
from tests.fuzz import strategies as fs

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>")


@implementer(ILoginChecker)
class OnePasswordChecker:
    mechanisms = ("SCRAM-SHA-256", "PLAIN")

    def mechanisms_for(self, claimed_jid: str | None, domain: str) -> tuple[str, ...]:
        return self.mechanisms

    def check_plain(self, authcid: str, password: str, authzid: str | None, domain: str) -> defer.Deferred:
        if (authcid, password) == ("alice", "right"):
            return defer.succeed(LoginResult(f"alice@{domain}", "PLAIN"))
        return defer.fail(AuthenticationFailed("not-authorized", "wrong"))

    def scram_lookup(self, authcid: str, mechanism: str, domain: str) -> defer.Deferred:
        raise NotImplementedError

    def throttle_key(self, authcid: str, domain: str) -> str:
        return "account:" + authcid.lower()


@implementer(ITLSTransport)
class TLSlessTransport(StringTransport):
    tls_started: object = None

    def startTLS(self, context: object) -> None:
        self.tls_started = context


def no_sessions() -> SessionManager:
    """A session core with no features: these streams go no further than authentication."""
    return SessionManager(["localhost"], None, MemoryReactorClock(), lambda stanza: None)  # type: ignore[arg-type]


def connect(
    secure: bool = False, max_stanza_bytes: int = 4096, tls: bool = True
) -> tuple[ClientStream, StringTransport]:
    settings = C2SSettings(domains=["localhost"], checker=OnePasswordChecker(), sessions=no_sessions(),
                           tls_context=object() if tls else None, require_tls=True)
    factory = ClientStreamFactory(lambda: ClientNegotiator(settings), StreamLimits(max_stanza_bytes),
                                  MemoryReactorClock(), secure)
    stream = factory.buildProtocol(None)
    transport = TLSlessTransport()
    stream.makeConnection(transport)
    return stream, transport


def output(transport: StringTransport) -> str:
    data = transport.value().decode()
    transport.clear()
    return data


def stream_error(data: str) -> str:
    match = re.search(r"<stream:error><([a-z-]+) xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", data)
    assert match, data
    assert data.endswith("</stream:stream>")
    return match.group(1)


@pytest.mark.parametrize(
    ("data", "condition"),
    [
        (HEADER.format(to="elsewhere.example"), "host-unknown"),
        (HEADER.format(to="localhost").replace("jabber:client", "jabber:server"), "invalid-namespace"),
        (HEADER.format(to="localhost").replace("http://etherx.jabber.org/streams", "urn:wrong"),
         "invalid-namespace"),
        (HEADER.format(to="localhost").replace("version='1.0'", "version='0.9'"), "unsupported-version"),
        ("garbage \x00\xff <<", "not-well-formed"),  # a NUL first is another encoding's: unsupported-encoding
        (HEADER.format(to="localhost") + "<message><body>x</message>", "not-well-formed"),
        (HEADER.format(to="localhost") + "<message to='bob@localhost'><body>hi</body></message>", "not-authorized"),
    ],
)
def test_bad_streams_get_their_stream_error_and_are_closed(data: str, condition: str) -> None:
    stream, transport = connect()
    stream.dataReceived(data.encode("utf-8", "surrogateescape") if "\xff" not in data else b"garbage \x00\xff <<")
    sent = output(transport)
    assert stream_error(sent) == condition
    assert sent.startswith("<stream:stream")  # the header comes first, even for a broken opening
    assert transport.disconnecting


def test_plain_is_not_offered_and_auth_refused_before_tls() -> None:
    stream, transport = connect()
    stream.dataReceived(HEADER.format(to="localhost").encode())
    features = output(transport)
    assert "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>" in features
    assert "mechanism" not in features
    stream.dataReceived(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                        b"AGFsaWNlAHJpZ2h0</auth>")
    assert "<encryption-required/>" in output(transport)


def test_starttls_then_plain_then_bind_features() -> None:
    stream, transport = connect()
    stream.dataReceived(HEADER.format(to="localhost").encode())
    output(transport)
    stream.dataReceived(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert output(transport) == "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    assert transport.tls_started is not None
    stream.dataReceived(HEADER.format(to="localhost").encode())
    features = output(transport)
    assert "<mechanism>PLAIN</mechanism>" in features and "starttls" not in features
    stream.dataReceived(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                        b"AGFsaWNlAHdyb25n</auth>")  # \0alice\0wrong
    assert output(transport) == ("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/>"
                                 "<text>wrong</text></failure>")
    stream.dataReceived(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>not base64!</auth>")
    assert "<incorrect-encoding/>" in output(transport)
    stream.dataReceived(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-UNKNOWN'/>")
    assert "<invalid-mechanism/>" in output(transport)
    assert transport.disconnecting, "three failures end the stream"

    stream, transport = connect(secure=True)
    stream.dataReceived(HEADER.format(to="localhost").encode())
    output(transport)
    stream.dataReceived(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                        b"AGFsaWNlAHJpZ2h0</auth>")
    assert output(transport) == "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    stream.dataReceived(HEADER.format(to="localhost").encode())
    features = output(transport)
    assert "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>" in features and "mechanism" not in features
    stream.dataReceived(b" \n \t ")  # whitespace keepalives (RFC 6120 4.6.1) are ignored
    assert output(transport) == "" and not transport.disconnecting


def test_oversized_stanza_is_a_policy_violation_before_it_completes() -> None:
    stream, transport = connect(secure=True, max_stanza_bytes=2048)
    stream.dataReceived(HEADER.format(to="localhost").encode())
    output(transport)
    stream.dataReceived(b"<message><body>" + b"x" * 1500)
    assert not transport.disconnecting
    stream.dataReceived(b"x" * 1500)
    assert stream_error(output(transport)) == "policy-violation"


def test_size_limit_counts_stanzas_not_keepalives() -> None:
    """(Many small stanzas in one read: tests/fuzz, test_stanza_size_is_counted_per_stanza.)"""
    stream, transport = connect(secure=True, max_stanza_bytes=2048)
    stream.dataReceived(HEADER.format(to="localhost").encode())
    output(transport)
    for _ in range(3):
        stream.dataReceived(b" " * 1500)  # keepalives between stanzas count for nothing
    assert not transport.disconnecting
    stream.dataReceived(b"<message to='" + b"x" * 1500)  # an unfinished start tag counts too
    stream.dataReceived(b"x" * 1500)
    assert stream_error(output(transport)) == "policy-violation"


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        ("<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;'>]>"
         "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' "
         "version='1.0'>", "restricted-xml"),
        (HEADER.format(to="localhost") + "<!-- a comment -->", "restricted-xml"),
        (HEADER.format(to="localhost") + "<?php evil ?>", "restricted-xml"),
        (HEADER.format(to="localhost") + "<message>" + "<x>" * 60, "policy-violation"),
        (HEADER.format(to="localhost") + "<message " + " ".join(f"a{n}='1'" for n in range(80)) + "/>",
         "policy-violation"),
        (HEADER.format(to="localhost") + "<message><body>&undefined;</body></message>", "not-well-formed"),
    ],
)
def test_hostile_xml_is_refused_before_it_is_expanded(payload: str, condition: str) -> None:
    stream, transport = connect(secure=True, max_stanza_bytes=65536)
    stream.dataReceived(payload.encode())
    assert stream_error(output(transport)) == condition
    assert transport.disconnecting


@pytest.mark.parametrize("reads", [
    [b"\x00", b'"', b"?>-->]]>'\">", b"</stream:stream>"],  # the fuzz find: a literal UTF-16 kept open
    [b'\x00"'],
    [b"\xfe\xff\x00<"],  # UTF-16BE's byte-order mark
    [b"\xff\xfe<\x00"],  # UTF-16LE's
    [b"<", b"\x00?\x00"],  # UTF-16LE without one, the NUL in a second read
    [b"\x00\x00\x00<"],  # UTF-32BE
])
def test_a_stream_in_another_encoding_than_utf8_is_refused_at_once(reads: list[bytes]) -> None:
    """RFC 6120 section 11.6: expat takes a document whose first bytes look like UTF-16 or UTF-32 for
    one even when told it is UTF-8, and then waited for more; the stream ends at once with
    unsupported-encoding (section 4.9.3.22) instead."""
    stream, transport = connect(secure=True)
    for read in reads:
        stream.dataReceived(read)
        if transport.disconnecting:
            break
    assert stream_error(output(transport)) == "unsupported-encoding"
    assert transport.disconnecting


def test_a_nul_inside_the_stream_stays_expats_not_well_formed() -> None:
    """Only a document's first two bytes say its encoding: a NUL after them is a character XML
    does not allow. (Each restart, after STARTTLS or SASL, starts a new document and parser, whose
    first bytes are checked again.)"""
    stream, transport = connect(secure=True)
    stream.dataReceived(HEADER.format(to="localhost").encode())
    output(transport)
    stream.dataReceived(b"<message><body>a NUL later is expat's: \x00</body></message>")
    assert stream_error(output(transport)) == "not-well-formed"


def test_invalid_utf8_is_not_well_formed() -> None:
    stream, transport = connect(secure=True)
    stream.dataReceived(HEADER.format(to="localhost").encode() + b"<message><body>\xc3\x28</body></message>")
    assert stream_error(output(transport)) == "not-well-formed"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), fs.weird_value(huge=False)), fs.weird_value(huge=False))
def test_the_bind_result_as_text_is_the_element_as_the_stream_writes_it(identifier: str | None, jid: str) -> None:
    """bind_result_text writes exactly what building the result element and serialising it on a
    client stream would."""
    result = domish.Element((None, "iq"))
    result["type"] = "result"
    if identifier is not None:
        result["id"] = identifier
    result.addElement((NS_BIND, "bind")).addElement("jid", content=jid)
    serialized = result.toXml(prefixes={NS_STREAMS: "stream"}, defaultUri=NS_CLIENT, prefixesInScope=["stream"])
    assert bind_result_text(identifier, jid) == serialized
