"""The hardened XML parser of a client stream: Twisted's expat element stream with the limits
RFC 6120 asks for checked in its own handlers.

`GuardedElementStream` refuses what RFC 6120 11.1 restricts (DTDs, entity declarations,
comments, processing instructions), so billion-laughs and external entities never start, bounds
depth and attribute count, and measures the stanza it is in. `mark` is the stream offset from
which bytes count against the stanza size limit: the start of the open stanza, or the end of
what came last between stanzas, so that many stanzas in one read are each measured alone and
whitespace keepalives count for nothing. The size is checked at every event as well as after
every read (`measure`), so that which limit a stanza breaks first does not depend on how its
bytes were split into reads.

The checks sit in the element stream's own handlers rather than in a wrapper around Twisted's:
one Python call per parser event instead of two, 3.6% of the instructions of a login
(docs/performance.md). What the handlers build is Twisted's: ``domish.Element`` trees with
Twisted's namespace handling, but for one thing: a child's ``parent`` stays None.

That, and `retire`, keep the parser out of reference cycles. Twisted links each child to its
parent, so every stanza with a child (a message with a body) was a cycle, and expat holds the
stream's bound handlers while the stream holds expat: garbage only the cycle collector could
free, which cost the daemon about 9% of its CPU in a login run (docs/performance.md). Without
the cycles, reference counting frees a stanza when its handler is done with it, and a parser
when its stream restarts or ends.
"""

from __future__ import annotations

import pyexpat
from collections.abc import Callable
from typing import Any

from twisted.words.xish import domish

MAX_DEPTH = 48  # stanzas nest a handful of levels; data forms and Jingle stay well below this
MAX_ATTRIBUTES = 64


def _not_utf8_start(buffer: bytes, offset: int) -> bool:
    """Whether the document's first two bytes, *buffer* being the read that starts at *offset* in
    it, make expat take it for UTF-16 or UTF-32: a NUL in either, or a byte-order mark's 0xFE or
    0xFF first. Expat decides that from those bytes even when told the document is UTF-8, and then
    reads whatever follows as such: ``\x00"`` opened a literal that no UTF-8 byte could close, and
    the stream waited, unanswered, for its login timeout. RFC 6120 section 11.6: UTF-8 only, and
    anything else is the stream error unsupported-encoding (section 4.9.3.22)."""
    start = buffer[:2 - offset]
    return b"\x00" in start or (offset == 0 and start[:1] in (b"\xfe", b"\xff"))


class HostileXML(Exception):
    """Input RFC 6120 forbids or this server will not parse, with the stream error it earns."""

    def __init__(self, condition: str, text: str) -> None:
        super().__init__(condition, text)
        self.condition = condition
        self.text = text


# Errors expat finds in a start tag only once it has the whole tag (checking its attributes: their
# entities, character references, names and namespaces); others it reports where they stand.
_FOUND_AT_TAG_END = frozenset(pyexpat.errors.codes[getattr(pyexpat.errors, name)] for name in (
    "XML_ERROR_UNDEFINED_ENTITY", "XML_ERROR_BAD_CHAR_REF", "XML_ERROR_DUPLICATE_ATTRIBUTE",
    "XML_ERROR_UNBOUND_PREFIX", "XML_ERROR_BINARY_ENTITY_REF", "XML_ERROR_RECURSIVE_ENTITY_REF",
    "XML_ERROR_ATTRIBUTE_EXTERNAL_ENTITY_REF", "XML_ERROR_RESERVED_PREFIX_XML", "XML_ERROR_RESERVED_PREFIX_XMLNS",
    "XML_ERROR_RESERVED_NAMESPACE_URI", "XML_ERROR_UNDECLARING_PREFIX"))


def _ends_in_tag(buffer: bytes, in_tag_before: bool) -> bool:
    """Whether a read leaves the stream inside a tag, given whether it began inside one."""
    last_open, last_close = buffer.rfind(b"<"), buffer.rfind(b">")
    if last_open == last_close == -1:
        return in_tag_before
    return last_open > last_close


def _seen_at_error(buffer: bytes, at: int, in_tag_before: bool) -> int:
    """How far into *buffer* expat must have read to report an error at *at* (negative: in an
    earlier read): to the end of the tag the error is in (expat checks a tag's attributes once it
    has the whole tag, so read in pieces, the tag alone is measured first), else the error
    itself. The tag's end is taken as the next '>', which may also stand inside a quoted value:
    then the error counts a little early."""
    if at >= 0 and not _ends_in_tag(buffer[:at + 1], in_tag_before):  # expat may point at the tag's '<'
        return at  # in text
    end = buffer.find(b">", max(at, 0))
    return len(buffer) if end < 0 else end + 1


def _restricted(*args: object) -> None:
    raise HostileXML("restricted-xml", "DTDs, comments, processing instructions and entities are not allowed")


def _ignore(*args: object) -> None:
    pass


_RESTRICTED_HANDLERS = ("StartDoctypeDeclHandler", "EntityDeclHandler", "UnparsedEntityDeclHandler",
                        "NotationDeclHandler", "CommentHandler", "ProcessingInstructionHandler",
                        "ExternalEntityRefHandler", "SkippedEntityHandler")


class GuardedElementStream(domish.ExpatElementStream):
    """Twisted's ExpatElementStream with RFC 6120's restrictions and this server's limits."""

    # Twisted declares them as None until the stream's owner sets them.
    DocumentStartEvent: Callable[[domish.Element], None]
    ElementEvent: Callable[[domish.Element], None]
    DocumentEndEvent: Callable[[], None]
    parser: Any  # expat's; None once retired

    def __init__(self, max_stanza_bytes: int) -> None:
        super().__init__()
        self.max_stanza_bytes = max_stanza_bytes
        self.depth = 0  # 1 inside the stream's root element, 2 inside a stanza
        self.mark = 0
        # The open elements of the stanza, outermost first (Twisted's currElem is the last).
        self._open: list[domish.Element] = []
        # The innermost open element's text since its last child, in the pieces expat reported.
        self._text: list[str] = []
        self._parsing = False
        self._retired = False
        self._offset = 0  # the stream offset of the read being parsed (expat's byte indexes are)
        self._in_tag = False  # whether the reads so far end inside a tag (after a '<', before its '>')
        for handler in _RESTRICTED_HANDLERS:  # Twisted's __init__ has bound the element handlers below
            setattr(self.parser, handler, _restricted)

    def parse(self, buffer: bytes) -> None:
        offset = self._offset
        if offset < 2 and _not_utf8_start(buffer, offset):
            raise HostileXML("unsupported-encoding", "XMPP streams are UTF-8 (RFC 6120 section 11.6)")
        self._parsing = True
        self._offset = offset + len(buffer)
        in_tag_before = self._in_tag
        last_open, last_close = buffer.rfind(b"<"), buffer.rfind(b">")  # as _ends_in_tag, inline: every read
        if last_open != last_close:
            self._in_tag = last_open > last_close
        try:
            self.parser.Parse(buffer)
        except self.error as error:
            # Read in other pieces, a stanza that ran past the limit before expat reached the error
            # would have been refused as too large at the end of a read; so that the answer does not
            # depend on how the input was read, an error past the limit is the limit's.
            at = self.parser.ErrorByteIndex - offset
            if error.code in _FOUND_AT_TAG_END:
                at = _seen_at_error(buffer, at, in_tag_before)
            self.measure(at + offset)
            raise domish.ParserError(str(error)) from None
        finally:
            self._parsing = False
            if self._retired:
                self._drop_parser()

    def retire(self) -> None:
        """Report nothing more, and let go of expat (whose handlers hold this stream) as soon as it
        is not parsing: at once, or when the read that retired this stream (a handler restarting
        the stream, say) has been parsed to its end."""
        if self._retired:
            return
        self.DocumentStartEvent = self.ElementEvent = self.DocumentEndEvent = _ignore
        self._retired = True
        if not self._parsing:
            self._drop_parser()

    def _drop_parser(self) -> None:
        self.parser = None
        self._open = []
        self._text = []

    def measure(self, position: int) -> None:
        """Refuse the open stanza (or the tag between stanzas) if it reaches past *position*
        with more than max_stanza_bytes."""
        if position - self.mark > self.max_stanza_bytes:
            raise HostileXML("policy-violation", "stanza too large")

    def _onStartElement(self, name: str, attrs: dict[str, str]) -> None:  # noqa: N802 - Twisted's name
        depth = self.depth = self.depth + 1
        if depth == 2:
            self.mark = self.parser.CurrentByteIndex
        else:
            if self.parser.CurrentByteIndex - self.mark > self.max_stanza_bytes:
                raise HostileXML("policy-violation", "stanza too large")
            if depth > MAX_DEPTH:
                raise HostileXML("policy-violation", "elements nested too deeply")
        if len(attrs) > MAX_ATTRIBUTES:
            raise HostileXML("policy-violation", "too many attributes")
        # Twisted's _onStartElement from here, with its attribute rewriting done only when an
        # attribute is namespaced (names with a space), which stanzas rarely have.
        uri, _, local = name.rpartition(" ")
        if attrs and " " in "".join(attrs):  # one pass over the names, not a generator per element
            for key in [key for key in attrs if " " in key]:  # to the end, in order, as Twisted does
                attrs[tuple(key.rsplit(" ", 1))] = attrs.pop(key)  # type: ignore[index]
        element = domish.Element((uri, local), self.defaultNsStack[-1], attrs, self.localPrefixes)
        self.localPrefixes = {}
        if self.documentStarted == 1:
            self.elementCount += 1
            if self.elementCount > self.maxElementCount:
                raise domish.ParserError("Maximum element count exceeded")
            opened = self._open
            if opened:
                children = opened[-1].children
                text = self._text
                if text:  # the parent's text before this child, joined once (see _onCdata)
                    children.append(text[0] if len(text) == 1 else "".join(text))
                    text.clear()
                children.append(element)  # no element.parent: see the module's docstring
            opened.append(element)
        else:
            self.documentStarted = 1
            self.DocumentStartEvent(element)

    def _onEndElement(self, name: str) -> None:  # noqa: N802 - Twisted's name
        depth = self.depth = self.depth - 1
        if depth == 1:
            end = self.parser.CurrentByteIndex
            if end - self.mark > self.max_stanza_bytes:
                raise HostileXML("policy-violation", "stanza too large")
            self.mark = end
        opened = self._open
        if not opened:
            self.DocumentEndEvent()
            return
        current = opened.pop()
        text = self._text
        if text:
            current.children.append(text[0] if len(text) == 1 else "".join(text))
            text.clear()
        if not opened:
            self.elementCount = 0
            self.stanzaSize = 0
            self.ElementEvent(current)

    def _onCdata(self, data: str) -> None:  # noqa: N802 - Twisted's name
        if self.depth == 1:  # between stanzas: keepalives
            self.mark = self.parser.CurrentByteIndex + len(data.encode())
        elif self.parser.CurrentByteIndex - self.mark > self.max_stanza_bytes:
            raise HostileXML("policy-violation", "stanza too large")
        # Gathered, and joined once when a child starts or the element ends: Twisted appends each
        # piece to the text so far (``+=`` on a string the element's list also holds: a copy),
        # quadratic in a text read in many pieces or broken by many entity references. Joined
        # there, the text follows the element's last child, as Twisted's addContent would put it.
        if self._open:
            self._text.append(data)


def guarded_stream(max_stanza_bytes: int, handlers: Any) -> GuardedElementStream:
    """A new stream whose document and element events go to *handlers* (an XmlStream)."""
    stream = GuardedElementStream(max_stanza_bytes)
    stream.DocumentStartEvent = handlers.onDocumentStart
    stream.ElementEvent = handlers.onElement
    stream.DocumentEndEvent = handlers.onDocumentEnd
    return stream
