"""RFC 7395's framing, translated both ways (sns_xmpp/xmpp/websocket.py), and who counts as a
private WebSocket: what the e2e test cannot reach."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.words.xish import domish

from sns_xmpp.xmpp.serialization import plain_xml
from sns_xmpp.xmpp.websocket import NS_FRAMING, XMPPWebSocketFactory, frames, framing_element, stream_header
from tests.fuzz import strategies as fs
from tests.unit.test_serialization import STREAM_PREFIXES, parsed_stanzas

CLIENT = "jabber:client"


def test_the_framing_elements_are_known_by_their_namespace_only() -> None:
    assert framing_element(f"<open xmlns='{NS_FRAMING}' to='localhost' version='1.0'/>") == (
        "open", {"xmlns": NS_FRAMING, "to": "localhost", "version": "1.0"})
    assert framing_element(f'<close xmlns="{NS_FRAMING}" />') == ("close", {"xmlns": NS_FRAMING})
    assert framing_element("<open xmlns='jabber:client' to='localhost'/>") is None  # a stanza named open
    assert framing_element(f"<open xmlns='{NS_FRAMING}' to='a'>text</open>") is None
    assert stream_header({"xmlns": NS_FRAMING, "to": "a'b", "version": "1.0"}) == (
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
        b"to='a&apos;b' version='1.0'>")


def test_the_streams_writes_become_one_document_per_message() -> None:
    written = ("<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' "
               "from='localhost' id='abc' version='1.0'>"
               "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
               "<message to='a@localhost' id='x xmlns=y'><body>1 &lt; 2</body><b/></message>"
               "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></stream:stream>")
    assert frames(written) == [
        f"<open xmlns='{NS_FRAMING}' from='localhost' id='abc' version='1.0'/>",
        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"
        "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>",
        "<message xmlns='jabber:client' to='a@localhost' id='x xmlns=y'><body>1 &lt; 2</body><b/></message>",
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
        f"<close xmlns='{NS_FRAMING}'/>",
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(fs.stanza(), min_size=1, max_size=3))
def test_every_stanza_the_stream_writes_arrives_as_the_same_element(stanzas: list[fs.Node]) -> None:
    """Whatever a client sent that the server relays (the fuzz suite's stanzas), written as the
    c2s stream writes it, becomes messages that each parse alone into the element the stream
    meant: same names, namespaces, attributes and text."""
    elements = list(parsed_stanzas("".join(node.xml() for node in stanzas).encode("utf-8")))
    # A top-level <stream:stream/> is the stream's own header, never a stanza the server relays
    # (the header is written as text); the framing rightly turns it into <open/>.
    assume(not any(e.name == "stream" and e.uri == "http://etherx.jabber.org/streams" for e in elements))
    written = []
    for element in elements:
        text = plain_xml(element, CLIENT, STREAM_PREFIXES) or element.toXml(
            prefixes=STREAM_PREFIXES, defaultUri=CLIENT, prefixesInScope=list(STREAM_PREFIXES.values()))
        written.append(text)
    messages = frames("".join(written))
    assert len(messages) == len(elements)
    for message, element in zip(messages, elements, strict=True):
        assert _canonical(ET.fromstring(message)) == _canonical(ET.fromstring(_in_stream(element)))


def _in_stream(element: domish.Element) -> str:
    """*element* as a TCP stream's client would read it: in the stream's default namespace."""
    inner = element.toXml(prefixes=STREAM_PREFIXES, defaultUri=CLIENT, prefixesInScope=["stream"])
    wrapped = ET.fromstring(f"<stream:stream xmlns='{CLIENT}' xmlns:stream='http://etherx.jabber.org/streams'>"
                            f"{inner}</stream:stream>")
    return ET.tostring(wrapped[0], encoding="unicode")


def _canonical(element: ET.Element) -> tuple:
    return (element.tag, sorted(element.attrib.items()), (element.text or "").strip(),
            [_canonical(child) for child in element], (element.tail or "").strip())


def test_only_a_trusted_proxy_names_the_client_and_says_it_is_private() -> None:
    factory = XMPPWebSocketFactory(streams=None, max_message_bytes=16384, trusted_proxies=["10.0.0.2"])  # type: ignore[arg-type]
    forwarded = {"x-forwarded-for": "198.51.100.7, 203.0.113.9", "x-forwarded-proto": "https"}
    address, private = factory.client(IPv4Address("TCP", "10.0.0.2", 4000), forwarded)
    assert (address.host, private) == ("203.0.113.9", True)  # type: ignore[attr-defined]
    address, private = factory.client(IPv4Address("TCP", "10.0.0.2", 4000), {"x-forwarded-proto": "http"})
    assert (address.host, private) == ("10.0.0.2", False)  # type: ignore[attr-defined]
    address, private = factory.client(IPv4Address("TCP", "192.0.2.1", 4000), forwarded)  # not a proxy of ours
    assert (address.host, private) == ("192.0.2.1", False)  # type: ignore[attr-defined]
    address, private = factory.client(IPv4Address("TCP", "127.0.0.1", 4000), {})
    assert (address.host, private) == ("127.0.0.1", True)  # type: ignore[attr-defined]
