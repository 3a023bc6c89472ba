"""A settled, silent stream holds no XML parser, and gets one back without losing a byte."""

from __future__ import annotations

from twisted.internet import defer

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.xmpp.c2s import RELEASE_PARSER_AFTER
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.test_limits import connect, factory_and_clock
from tests.unit.test_negotiation import output

# A header as a client may write it: another prefix for the streams namespace, and one more
# prefix that stanzas use later.
HEADER = (b"<s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' "
          b"xmlns:x='urn:example:x' to='localhost' version='1.0'>")


class EmptyStore:
    def load_roster(self, owner: str) -> defer.Deferred:
        return defer.succeed(([], []))

    def offline_messages(self, owner: str) -> defer.Deferred:
        return defer.succeed([])


def test_the_parser_goes_after_the_initial_presence_and_comes_back_with_the_next_read() -> None:
    factory, clock = factory_and_clock()
    delivered: list = []
    sessions = SessionManager(["localhost"], EmptyStore(), clock, delivered.append)  # type: ignore[arg-type]
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
