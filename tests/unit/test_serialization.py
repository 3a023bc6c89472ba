"""The serialiser every stanza leaves through keeps what a client wrote inside its element."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.words.xish import domish

from sns_xmpp.store.records import RosterItem
from sns_xmpp.xmpp.features.presence import readdressed
from sns_xmpp.xmpp.parsing import GuardedElementStream, HostileXML
from sns_xmpp.xmpp.roster import Roster, roster_result
from sns_xmpp.xmpp.serialization import EscapingSerializer, plain_xml
from sns_xmpp.xmpp.stanzas import append_child, error_reply
from tests.fuzz import strategies as fs

# XML 1.0 Char, without the C0 controls a parser refuses.
XML_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff")
                   | st.sampled_from("\t\n\r'\"<>&"), max_size=30)
# What expat lets through as a namespace URI: no blank (its namespace separator), and a prefix
# may not be bound to the empty URI (Namespaces in XML 1.0, 3).
URI = XML_TEXT.filter(lambda uri: " " not in uri)
PREFIXED_URI = URI.filter(bool)


def parse_stanza(xml: str) -> domish.Element:
    """One top-level element of a c2s stream, parsed as the server parses it."""
    elements: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = elements.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(b"<stream xmlns='jabber:client'>" + xml.encode("utf-8"))
    [element] = elements
    return element


def test_installed_for_every_element() -> None:
    """tests/conftest.py makes the start-up call, as the service does."""
    assert domish.SerializerClass is EscapingSerializer


@given(default=URI, prefixed=PREFIXED_URI, attribute=PREFIXED_URI, value=XML_TEXT)
def test_namespaces_parse_back_to_what_was_received(default: str, prefixed: str, attribute: str,
                                                    value: str) -> None:
    message = domish.Element(("jabber:client", "message"))
    message["to"] = "bob@localhost"
    child = message.addElement((default, "x"))
    grandchild = child.addElement((prefixed, "y"), defaultUri=default)
    grandchild[(attribute, "a")] = value
    wire = EscapingSerializer()
    wire.serialize(message, defaultUri="jabber:client")
    parsed = parse_stanza(wire.getValue())
    assert [(c.uri, c.name) for c in parsed.elements()] == [(default, "x")]
    [parsed_child] = parsed.elements()
    [parsed_grandchild] = parsed_child.elements()
    assert (parsed_grandchild.uri, parsed_grandchild.name) == (prefixed, "y")
    assert parsed_grandchild.attributes == {(attribute, "a"): value.replace("\t", " ").replace("\n", " ")
                                            .replace("\r", " ")}


def test_ordinary_stanzas_serialise_as_twisted_does() -> None:
    """Same bytes for what clients normally send, so no client sees a difference."""
    xml = ("<message xmlns='jabber:client' to='a@b' type='chat'><body>hi &amp; &lt;bye&gt;</body>"
           "<x xmlns='jabber:x:data' type='form'><field var='v'><value>1</value></field></x>"
           "<p:q xmlns:p='urn:p' p:attr='1'/><delay xmlns='urn:xmpp:delay' stamp='s'/></message>")
    message = parse_stanza(xml)
    ours, theirs = EscapingSerializer(), domish._ListSerializer()
    ours.serialize(message, defaultUri="jabber:client")
    theirs.serialize(message, defaultUri="jabber:client")
    assert ours.getValue() == theirs.getValue()


STREAM_PREFIXES = {"http://etherx.jabber.org/streams": "stream"}


def full_xml(element: domish.Element) -> str:
    """What a c2s stream writes through the full serialiser."""
    return element.toXml(prefixes=STREAM_PREFIXES, defaultUri="jabber:client",
                         prefixesInScope=list(STREAM_PREFIXES.values()))


def parsed_stanzas(data: bytes) -> list[domish.Element]:
    elements: list[domish.Element] = []
    stream = GuardedElementStream(max_stanza_bytes=1 << 20)
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = elements.append
    stream.DocumentEndEvent = lambda: None
    try:
        stream.parse(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
                     + data)
    except (domish.ParserError, HostileXML):
        pass
    return elements


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fs.stanza(), min_size=1, max_size=3))
def test_the_plain_writer_writes_what_the_full_serialiser_writes(stanzas: list[fs.Node]) -> None:
    for element in parsed_stanzas("".join(node.xml() for node in stanzas).encode("utf-8")):
        plain = plain_xml(element, "jabber:client", STREAM_PREFIXES)
        if plain is not None:
            assert plain == full_xml(element)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fs.stanza(), min_size=1, max_size=2), st.data())
def test_a_remembered_serialisation_is_reused_only_as_written_again(stanzas: list[fs.Node],
                                                                   data: st.DataObject) -> None:
    """MAM serialises a message with *remember*; the stream then writes it again after the message
    path changed it the ways it does (readdressed, a stanza-id or delay appended, children
    filtered or replaced) or not at all: each time, the same bytes as a fresh serialisation."""
    for element in parsed_stanzas("".join(node.xml() for node in stanzas).encode("utf-8")):
        if plain_xml(element, "jabber:client", STREAM_PREFIXES, remember=True) is None:
            continue
        change = data.draw(st.sampled_from(["none", "readdress", "stamp", "delay", "filter", "replace", "text"]))
        if change == "readdress":
            element["to"] = data.draw(XML_TEXT)
        elif change == "stamp":
            element.children = [*element.children, domish.SerializedXML("<stanza-id xmlns='urn:xmpp:sid:0' id='1'/>")]
        elif change == "delay":
            append_child(element, domish.Element(("urn:xmpp:delay", "delay"), attribs={"stamp": "x"}))
        elif change == "filter" and element.children:
            element.children = element.children[1:]
        elif change == "replace" and element.children:
            element.children = [domish.Element((None, "body")), *element.children[1:]]
        elif change == "text":
            element.children.append(data.draw(XML_TEXT))
        fresh = domish.Element((None, "x"))  # a plain_xml of another element forgets nothing of this one's
        again = plain_xml(element, "jabber:client", STREAM_PREFIXES)
        assert again == full_xml(element)
        assert plain_xml(fresh, "jabber:client", STREAM_PREFIXES) == "<x/>"


def test_the_stanzas_clients_send_and_the_server_builds_are_plain() -> None:
    [message, presence] = parsed_stanzas(
        b"<message to='bob@localhost' type='chat' id='m&amp;1'><body>a &lt;b&gt; &amp; 'c'</body>"
        b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        b"<presence><show>away</show><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v='/>"
        b"</presence>")
    iq = domish.Element((None, "iq"))
    iq["type"] = "result"
    append_child(iq, roster_result(Roster("a@localhost", {"b@localhost": RosterItem(
        "b@localhost", "B \"quoted\"", ("friends", "<work>"), "both", False, False)}, set())))
    built = [readdressed(message, "carol@localhost/r", "alice@localhost/x"), iq,
             error_reply(message, "service-unavailable")]
    for element in [message, presence, *built]:
        plain = plain_xml(element, "jabber:client", STREAM_PREFIXES)
        assert plain is not None and plain == full_xml(element)
    # What the full serialiser is for: a prefix, a namespaced attribute, the stream's own namespace.
    [prefixed, lang, streams] = parsed_stanzas(
        b"<message><p:x xmlns:p='urn:p'/></message><message xml:lang='en'/>"
        b"<stream:error xmlns:stream='http://etherx.jabber.org/streams'/>")
    assert [plain_xml(e, "jabber:client", STREAM_PREFIXES) for e in (prefixed, lang, streams)] == [None] * 3


@given(default=URI, value=XML_TEXT, text=XML_TEXT)
def test_the_plain_writer_escapes_as_the_full_serialiser_does(default: str, value: str, text: str) -> None:
    """Namespaces, attribute values and text a client chose: the same bytes, so the same parse."""
    message = domish.Element(("jabber:client", "message"))
    message["to"] = value
    child = append_child(message, domish.Element((default, "x")))
    child["a"] = value
    child.addContent(text)
    plain = plain_xml(message, "jabber:client", STREAM_PREFIXES)
    assert plain is not None and plain == full_xml(message)
    [parsed] = parsed_stanzas(plain.encode("utf-8"))
    [parsed_child] = parsed.elements()
    lines = text.replace("\r\n", "\n").replace("\r", "\n")  # XML 1.0 2.11: line ends as read
    attribute = value.replace("\r\n", "\n").translate(str.maketrans("\t\n\r", "   "))  # 3.3.3
    assert (parsed_child.uri, parsed_child.getAttribute("a"), str(parsed_child)) == (default, attribute, lines)


def test_a_remembered_serialisation_holds_to_the_same_child_objects_not_equal_ones() -> None:
    """The reuse compares children by identity: a text child equal to a SerializedXML child it
    replaced is escaped when written, so the remembered text (with the raw XML) must not be used."""
    [message] = parsed_stanzas(b"<message to='bob@localhost'><body>hi</body></message>")
    raw = domish.SerializedXML("<b/>")
    message.children.append(raw)
    assert plain_xml(message, "jabber:client", STREAM_PREFIXES, remember=True) == (
        "<message to='bob@localhost'><body>hi</body><b/></message>")
    message.children = [message.children[0], "<b/>"]  # an equal str, not the same object
    assert plain_xml(message, "jabber:client", STREAM_PREFIXES) == full_xml(message) == (
        "<message to='bob@localhost'><body>hi</body>&lt;b/&gt;</message>")
