"""Serialising domish elements so that nothing a client wrote can leave its element.

Twisted's serialiser (``domish._ListSerializer``) escapes text and attribute values but writes
namespace URIs as they are. A namespace URI is text a client chooses (``xmlns='a&apos;/>...'``
reaches us as ``a'/>...``), so relaying such an element to another stream closed the element
early and let the sender write any stanza, "from" anyone, into the recipient's stream.

`EscapingSerializer` is Twisted's algorithm (same prefixes, same defaults, same output for
ordinary namespaces) with every namespace URI escaped like an attribute value, and blanks kept
as character references so that the URI reaches the recipient unchanged. `install` makes it
the serialiser of every ``Element.toXml`` in the process: the c2s streams, the component streams
behind wokkel's router and the offline store all serialise through ``toXml``.
"""

from __future__ import annotations

from operator import is_
from typing import Any

from twisted.words.xish import domish

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;",
                          "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})


def escape_uri(uri: str) -> str:
    """A namespace URI as the value of an xmlns attribute that parses back to the same URI."""
    return uri.translate(_ESCAPES)


def escape_text(text: str) -> str:
    """Character data as Twisted's escapeToXml writes it, which makes three passes over the text;
    most text needs none of them."""
    if "&" in text or "<" in text or ">" in text:
        return domish.escapeToXml(text)
    return text


def escape_attribute(value: str) -> str:
    """An attribute value as Twisted's escapeToXml writes it (five passes; most values need none)."""
    if "&" in value or "<" in value or ">" in value or "'" in value or '"' in value:
        return domish.escapeToXml(value, 1)
    return value


class EscapingSerializer(domish._ListSerializer):
    """Twisted's serialiser with namespace URIs escaped (see the module's docstring)."""

    def serialize(self, elem: Any, closeElement: int = 1, defaultUri: str = "") -> None:
        write = self.writelist.append
        if isinstance(elem, domish.SerializedXML):
            write(elem)
            return
        if isinstance(elem, str):
            write(escape_text(elem))
            return

        name = elem.name
        uri = elem.uri
        defaultUri, currentDefaultUri = elem.defaultUri, defaultUri
        local_prefixes = elem.localPrefixes
        for p, u in local_prefixes.items():
            self.prefixes[u] = p
        self.prefixStack.append(list(local_prefixes))

        if defaultUri is None:
            defaultUri = currentDefaultUri
        if uri is None:
            uri = defaultUri

        prefix = None
        in_scope = False
        if uri != defaultUri or uri in self.prefixes:
            prefix = self.getPrefix(uri)
            in_scope = self.prefixInScope(prefix)

        if not prefix:
            write("<" + name)
        else:
            write(f"<{prefix}:{name}")
            if not in_scope:
                write(f" xmlns:{prefix}='{escape_uri(uri)}'")
                self.prefixStack[-1].append(prefix)
                in_scope = True

        if defaultUri != currentDefaultUri and (uri != defaultUri or not prefix or not in_scope):
            write(f" xmlns='{escape_uri(defaultUri)}'")

        for p, u in local_prefixes.items():
            write(f" xmlns:{p}='{escape_uri(u)}'")

        for key, value in elem.attributes.items():
            if isinstance(key, tuple):
                attribute_uri, attribute_name = key
                attribute_prefix = self.getPrefix(attribute_uri)
                if not self.prefixInScope(attribute_prefix):
                    write(f" xmlns:{attribute_prefix}='{escape_uri(attribute_uri)}'")
                    self.prefixStack[-1].append(attribute_prefix)
                write(f" {attribute_prefix}:{attribute_name}='{escape_attribute(value)}'")
            else:
                write(f" {key}='{escape_attribute(value)}'")

        if closeElement == 0:
            write(">")
            return

        if elem.children:
            write(">")
            for child in elem.children:
                self.serialize(child, defaultUri=defaultUri)
            write(f"</{name}>" if not prefix else f"</{prefix}:{name}>")
        else:
            write("/>")
        self.prefixStack.pop()


class _NotPlain(Exception):
    """An element `plain_xml` leaves to the full serialiser."""


def plain_xml(element: domish.Element, default_uri: str, prefixed_uris: Any, *, remember: bool = False) -> str | None:
    """*element* serialised as `EscapingSerializer` would write it as a child of a stream whose
    default namespace is *default_uri* and whose prefixes are bound to *prefixed_uris*, when
    nothing in it has a prefix: no prefix declared, no namespaced attribute, no namespace that a
    prefix in scope could stand for. None otherwise, for the full serialiser.

    Stanzas are nearly always of that kind (a message with its body, a presence with its show
    and caps), and this writes them with none of the full serialiser's prefix bookkeeping: a
    third of the cost of routing a message in process (docs/performance.md). A property test
    holds it to the full serialiser's bytes for the fuzz suite's stanzas.

    With *remember*, the text is kept for the next call on the same element (see `_reuse`):
    MAM serialises a message to store it, and its delivery a moment later writes the same text
    with the stanza-id added, instead of serialising the message a second time."""
    global _remembered
    known = _remembered
    if known is not None and known[0] is element:
        text = _reuse(known, element, default_uri, prefixed_uris)
        if text is not None:
            return text
    parts: list[str] = []
    try:
        _write_plain(element, default_uri, prefixed_uris, parts)
    except _NotPlain:
        return None
    text = "".join(parts)
    if remember:
        # (element, its attributes and children as they were, the text, the context): a tuple,
        # and copies made in C, since this is on every archived message's path.
        _remembered = (element, element.attributes.copy(), element.children[:], text, default_uri, prefixed_uris)
    return text


_Remembered = tuple[domish.Element, dict[Any, str], list[Any], str, str, Any]


def _reuse(known: _Remembered, element: domish.Element, default_uri: str, prefixed_uris: Any) -> str | None:
    """The remembered serialisation of *element*, valid while its attributes are as they were and
    its children begin with the same child objects: the text is reused, and only children appended
    since are written. The message path changes a stanza between two serialisations only so (it
    readdresses it, or appends a stanza-id or a delay); what would change a child element in place
    has to serialise it without *remember*. One at a time: the last remembered."""
    known_children = known[2]
    now = element.children
    count = len(known_children)
    extra = len(now) - count
    # The same child objects (identity: a text equal to a SerializedXML is written otherwise);
    # past the first, compared in C (map stops at the shorter list).
    if (not count or extra < 0 or default_uri != known[4] or element.attributes != known[1]
            or (prefixed_uris is not known[5] and prefixed_uris != known[5])
            or now[0] is not known_children[0] or (count > 1 and not all(map(is_, now, known_children)))):
        return None
    text = known[3]
    if not extra:
        return text
    added = now[count:]
    if extra == 1 and type(added[0]) is not str and isinstance(added[0], domish.SerializedXML):
        closing = len(element.name) + 3  # </name>: a stanza-id stamped on, the common case
        return text[:-closing] + added[0] + text[-closing:]
    parts = [text[:-len(element.name) - 3]]
    inner_default = element.defaultUri if element.defaultUri is not None else default_uri
    try:
        for child in added:
            if type(child) is str:
                parts.append(escape_text(child))
            elif isinstance(child, domish.SerializedXML):
                parts.append(child)
            elif isinstance(child, domish.Element):
                _write_plain(child, inner_default, prefixed_uris, parts)
            else:
                return None
    except _NotPlain:
        return None
    parts.append(f"</{element.name}>")
    return "".join(parts)


_remembered: _Remembered | None = None

NS_CLIENT = "jabber:client"
CLIENT_STREAM_PREFIXES = {"http://etherx.jabber.org/streams": "stream"}  # what a client stream binds


def standalone_client_xml(element: domish.Element) -> str:
    """*element*, a jabber:client stanza, as a document of its own (its namespace declared), as a
    cluster's node hands it to another: written as a client stream writes it, reusing what
    `plain_xml` remembers (MAM serialised the message a moment before), the namespace then put in
    by hand; the full serialiser where `plain_xml` cannot."""
    if element.uri == NS_CLIENT and element.defaultUri == NS_CLIENT and not element.localPrefixes:
        text = plain_xml(element, NS_CLIENT, CLIENT_STREAM_PREFIXES)
        name = element.name
        if text is not None and text.startswith(name, 1):
            return f"<{name} xmlns='{NS_CLIENT}'{text[len(name) + 1:]}"
    return element.toXml()


def _write_plain(element: domish.Element, current_default: str, prefixed_uris: Any, parts: list[str]) -> None:
    if element.localPrefixes:
        raise _NotPlain
    default_uri = element.defaultUri
    if default_uri is None:
        default_uri = current_default
    uri = element.uri
    if uri is None:
        uri = default_uri
    if uri != default_uri or uri in prefixed_uris or uri in domish.G_PREFIXES:
        raise _NotPlain
    name = element.name
    parts.append("<" + name)
    if default_uri != current_default:
        parts.append(f" xmlns='{escape_uri(default_uri)}'")
    for key, value in element.attributes.items():
        if type(key) is not str:
            raise _NotPlain
        if "&" in value or "<" in value or ">" in value or "'" in value or '"' in value:
            value = domish.escapeToXml(value, 1)
        parts.append(f" {key}='{value}'")
    children = element.children
    if not children:
        parts.append("/>")
        return
    parts.append(">")
    for child in children:
        if type(child) is str:
            parts.append(escape_text(child))
        elif isinstance(child, domish.SerializedXML):
            parts.append(child)
        elif isinstance(child, domish.Element):
            _write_plain(child, default_uri, prefixed_uris, parts)
        else:
            raise _NotPlain
    parts.append(f"</{name}>")


def install() -> None:
    """Make `EscapingSerializer` the serialiser of ``domish.Element.toXml``; idempotent. Called by
    `sns_xmpp.startup.install`, never at import."""
    domish.SerializerClass = EscapingSerializer


def installed() -> bool:
    return domish.SerializerClass is EscapingSerializer
