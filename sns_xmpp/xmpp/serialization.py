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

from typing import Any

from twisted.words.xish import domish

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;",
                          "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})


def escape_uri(uri: str) -> str:
    """A namespace URI as the value of an xmlns attribute that parses back to the same URI."""
    return uri.translate(_ESCAPES)


class EscapingSerializer(domish._ListSerializer):
    """Twisted's serialiser with namespace URIs escaped (see the module's docstring)."""

    def serialize(self, elem: Any, closeElement: int = 1, defaultUri: str = "") -> None:
        write = self.writelist.append
        if isinstance(elem, domish.SerializedXML):
            write(elem)
            return
        if isinstance(elem, str):
            write(domish.escapeToXml(elem))
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
                write(f" {attribute_prefix}:{attribute_name}='{domish.escapeToXml(value, 1)}'")
            else:
                write(f" {key}='{domish.escapeToXml(value, 1)}'")

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


def install() -> None:
    """Make `EscapingSerializer` the serialiser of ``domish.Element.toXml``; idempotent."""
    domish.SerializerClass = EscapingSerializer


install()
