"""The serialiser every stanza leaves through keeps what a client wrote inside its element."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.words.xish import domish

from sns_xmpp.xmpp.serialization import EscapingSerializer

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
    import sns_xmpp.xmpp  # noqa: F401  (installs it)

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
