"""GuardedElementStream builds exactly the elements Twisted's ExpatElementStream builds, for any
stanza the fuzz suite can make (well-formed or mutated), except where it refuses input that RFC
6120 restricts or that breaks its limits."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.words.xish import domish

from sns_xmpp.xmpp.parsing import GuardedElementStream, HostileXML
from tests.fuzz import strategies as fs

HEADER = (b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
          b"xmlns:x='urn:x-prefixed' to='localhost' version='1.0'>")


def events(stream: Any, chunks: list[bytes]) -> tuple[list[Any], str | None]:
    """What the stream reports for *chunks*: each element's serialisation, attributes in order
    and namespace bookkeeping, and how parsing ended."""
    seen: list[Any] = []
    stream.DocumentStartEvent = lambda root: seen.append(("start", root.toXml(closeElement=0),
                                                           list(root.attributes.items())))

    def element(e: domish.Element) -> None:
        def shape(node: Any) -> Any:
            if isinstance(node, str):
                return node
            return (node.uri, node.name, node.defaultUri, dict(node.localPrefixes), list(node.attributes.items()),
                    [shape(child) for child in node.children])

        seen.append(("element", e.toXml(), shape(e)))

    stream.ElementEvent = element
    stream.DocumentEndEvent = lambda: seen.append(("end",))
    try:
        for chunk in chunks:
            stream.parse(chunk)
    except domish.ParserError:
        return seen, "ParserError"
    return seen, None


def documents() -> st.SearchStrategy[list[bytes]]:
    stanzas = st.lists(fs.stanza().map(lambda node: node.xml().encode("utf-8")), min_size=1, max_size=3)
    with_lang = st.just(b"<message xml:lang='en' x:a='1' b='2' xmlns:y='urn:y' y:c='3'><body>hi</body></message>")
    whole = st.tuples(stanzas, st.lists(with_lang, max_size=1), st.booleans()).map(
        lambda parts: HEADER + b" ".join(parts[0] + parts[1]) + (b"</stream:stream>" if parts[2] else b""))
    return st.one_of(whole, whole.flatmap(lambda data: fs.mutated(data))).flatmap(lambda data: fs.split(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_guarded_stream_builds_what_twisted_builds(chunks: list[bytes]) -> None:
    ours = GuardedElementStream(max_stanza_bytes=1 << 30)
    try:
        built, ended = events(ours, chunks)
    except HostileXML:
        return  # refused on purpose (restricted XML, too deep, too many attributes)
    assert (built, ended) == events(domish.ExpatElementStream(), chunks)


def test_a_stream_retired_while_it_parses_reports_nothing_more_and_lets_expat_go() -> None:
    stream = GuardedElementStream(max_stanza_bytes=1 << 16)
    seen: list[str] = []

    def element(e: domish.Element) -> None:
        seen.append(e.name)
        stream.retire()  # as a stream restart does from a handler, with the read half parsed

    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = element
    stream.parse(HEADER + b"<auth>x</auth><message><body>b</body></message><iq/>")
    assert seen == ["auth"]
    assert stream.parser is None, "expat (holding the stream's handlers) outlived the read"


def test_text_read_in_many_small_pieces_is_gathered_in_linear_time() -> None:
    """A body read 16 bytes at a time: twice the text takes about twice as long, not four times
    (Twisted appends each piece to the text so far, copying it: quadratic in the text's size)."""
    import time

    def parse(size: int) -> float:
        stream = GuardedElementStream(max_stanza_bytes=1 << 30)
        got: list[domish.Element] = []
        stream.DocumentStartEvent = lambda root: None
        stream.ElementEvent = got.append
        data = b"<message><body>" + b"0123456789abcdef" * (size // 16) + b"</body></message>"
        pieces = [data[n:n + 16] for n in range(0, len(data), 16)]
        stream.parse(HEADER)
        started = time.perf_counter()
        for piece in pieces:
            stream.parse(piece)
        elapsed = time.perf_counter() - started
        assert len(str(got[0].body)) == size // 16 * 16
        return elapsed

    once = min(parse(256 * 1024) for _ in range(3))
    twice = min(parse(512 * 1024) for _ in range(3))
    assert twice < 3 * once, f"{once * 1000:.0f} ms for 256 KiB, {twice * 1000:.0f} ms for 512 KiB"
