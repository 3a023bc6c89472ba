"""A settled, silent stream holds no XML parser, and gets one back without losing a byte."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.xmpp.c2s import RELEASE_PARSER_AFTER, priming_header
from sns_xmpp.xmpp.parsing import GuardedElementStream
from sns_xmpp.xmpp.serialization import escape_uri
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.feature_tables import FeatureTables
from tests.unit.featured import featured
from tests.unit.test_limits import connect, factory_and_clock
from tests.unit.test_negotiation import output

# A header as a client may write it: another prefix for the streams namespace, and one more
# prefix that stanzas use later.
HEADER = (b"<s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' "
          b"xmlns:x='urn:example:x' to='localhost' version='1.0'>")


class EmptyStore(FeatureTables):
    def load_roster(self, owner: str) -> defer.Deferred:
        return defer.succeed(([], [], 0))

    def offline_messages(self, owner: str) -> defer.Deferred:
        return defer.succeed([])


def test_the_parser_goes_after_the_initial_presence_and_comes_back_with_the_next_read() -> None:
    factory, clock = factory_and_clock()
    delivered: list = []
    sessions = featured(SessionManager(["localhost"], EmptyStore(), clock, delivered.append))  # type: ignore[arg-type]
    stream, transport = connect(factory)
    stream.dataReceived(HEADER)
    sessions.bind(stream, LoginResult("alice@localhost", "PLAIN"), "phone")
    output(transport)
    stream.dataReceived(b"<presence/>")
    assert stream.stream is None, "the parser outlived the login"

    # The next read parses as if the parser had never gone: the prefix from the header still works.
    stream.dataReceived(b"<message to='bob@localhost' type='chat'><x:y a='1'/><body>hi</body></message>")
    [message] = delivered
    assert message.firstChildElement().uri == "urn:example:x" and str(message.body) == "hi"

    # Not while a stanza, or a part of a tag, waits in the parser.
    stream.dataReceived(b"<message to='bob@localhost'><body>a")
    assert not stream.release_parser()
    stream.dataReceived(b"b</body></message><message to='bob@localhost' type='chat' id='")
    assert not stream.release_parser()
    stream.dataReceived(b"m3'><body>c</body></message>")
    assert [str(m.body) for m in delivered] == ["hi", "ab", "c"]

    # Silence: the sweep lets it go; the client's footer then ends the stream properly.
    clock.advance(RELEASE_PARSER_AFTER + 20)
    assert stream.stream is None
    stream.dataReceived(b"</s:stream>")
    assert transport.disconnecting and output(transport).endswith("</stream:stream>")


_PREFIX = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True).filter(lambda p: not p.startswith("xml"))
# Any text but a space, which is expat's namespace separator here (a URI holding one is refused).
_URI = st.text(st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters=" ") | st.sampled_from("\t\n\r"),
               min_size=1, max_size=12).map(lambda u: "urn:" + u)


def _parsed(data: bytes) -> tuple[list[Any], list[str]]:
    """What a fresh stream reports for *data*: its stanzas' shapes and whether the document ended."""
    stream = GuardedElementStream(max_stanza_bytes=1 << 16)
    seen: list[Any] = []
    ended: list[str] = []

    def shape(node: Any) -> Any:
        if isinstance(node, str):
            return node
        return (node.uri, node.name, sorted(node.attributes.items(), key=repr), [shape(c) for c in node.children])

    stream.DocumentStartEvent = lambda root: seen.append(root)
    stream.ElementEvent = lambda element: seen.append(shape(element))
    stream.DocumentEndEvent = lambda: ended.append("end")
    stream.parse(data)
    return seen, ended


@settings(max_examples=200, deadline=None)
@given(_PREFIX, st.dictionaries(_PREFIX, _URI, max_size=3))
def test_a_primed_parser_reads_what_the_clients_own_header_would(stream_prefix: str, extra: dict[str, str]) -> None:
    extra.pop(stream_prefix, None)
    declarations = "".join(f" xmlns:{p}='{escape_uri(u)}'" for p, u in extra.items())
    header = (f"<{stream_prefix}:stream xmlns='jabber:client' xmlns:{stream_prefix}="
              f"'http://etherx.jabber.org/streams'{declarations} to='localhost' version='1.0' xml:lang='en'>")
    rest = ("<message to='a@localhost'>" + "".join(f"<{p}:x {p}:a='1'><y/></{p}:x>" for p in extra)
            + f"<body>hi</body></message></{stream_prefix}:stream>").encode()
    [root, *stanzas], ended = _parsed(header.encode() + rest)
    assert ended == ["end"] and len(stanzas) == 1
    [primed_root, *primed_stanzas], primed_ended = _parsed(priming_header(root) + rest)
    assert (primed_stanzas, primed_ended) == (stanzas, ended)
    assert primed_root.localPrefixes == root.localPrefixes
