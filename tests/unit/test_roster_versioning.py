"""Roster versioning (RFC 6121 section 2.6, XEP-0237) with Twisted's doubles and the real SQL: the
stream feature, an empty result while the client's version is current, the whole roster with the
version otherwise, a version on every push, and a version that moves with every change to the
items, whichever feature made it (roster sets and presence subscriptions alike)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from twisted.internet.testing import StringTransport
from twisted.words.protocols.jabber.xmlstream import NS_STREAMS

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.xmpp.c2s import ClientStream, ClientStreamFactory
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.featured import featured
from tests.unit.synchronous_store import SynchronousStore
from tests.unit.test_limits import connect, factory_and_clock
from tests.unit.test_negotiation import HEADER, output

ROSTER = "jabber:iq:roster"
NOW = 1_700_000_000.0


def world(store: SynchronousStore) -> tuple[SessionManager, ClientStreamFactory]:
    factory, clock = factory_and_clock()
    sessions = featured(SessionManager(["localhost"], store, clock,  # type: ignore[arg-type]
                                       lambda stanza: sessions.deliver(stanza)))
    return sessions, factory


def log_in(sessions: SessionManager, factory: ClientStreamFactory, jid: str, host: str,
           resource: str = "r") -> tuple[ClientStream, StringTransport]:
    stream, transport = connect(factory, host)
    stream.dataReceived(HEADER.format(to="localhost").encode())
    sessions.bind(stream, LoginResult(jid, "PLAIN"), resource)
    output(transport)
    return stream, transport


def said(transport: StringTransport) -> list[ET.Element]:
    """What the server wrote since the last look, as elements (namespaces in Clark notation)."""
    text = output(transport)
    assert "</stream:stream>" not in text, text
    return list(ET.fromstring(f"<r xmlns='jabber:client' xmlns:stream='{NS_STREAMS}'>{text}</r>"))


def ask(stream: ClientStream, transport: StringTransport, xml: str) -> list[ET.Element]:
    stream.dataReceived(xml.encode())
    return said(transport)


def query_of(iq: ET.Element) -> ET.Element | None:
    return iq.find(f"{{{ROSTER}}}query")


def test_the_stream_feature_is_offered_after_authentication() -> None:
    """2.6.1: <ver xmlns='urn:xmpp:features:rosterver'/> among the features after authentication."""
    store = SynchronousStore()
    sessions, _factory = world(store)
    offered = [make("localhost") for make in sessions.hooks.features_after_auth]
    assert "<ver xmlns='urn:xmpp:features:rosterver'/>" in [element.toXml() for element in offered if element]


def test_a_current_version_gets_an_empty_result_and_every_change_a_new_version() -> None:
    """2.6.2 and 2.6.3, the RFC's examples: ver='' bootstraps (the whole roster and its version);
    a roster set pushes the item with the new version; a get naming the current version is
    answered with an empty result, one naming an older version with the whole roster and the
    current version; a get without 'ver' gets the roster without one (a client that does not
    version). Presence subscriptions (presence.py) move the version too, on both sides, and the
    store holds the same version as the session's pushes said."""
    store = SynchronousStore()
    for jid in ("juliet@localhost", "romeo@localhost"):
        assert store.database.create_account(jid, (), NOW, social=True)
    sessions, factory = world(store)
    juliet, juliet_out = log_in(sessions, factory, "juliet@localhost", "192.0.2.10")
    romeo, romeo_out = log_in(sessions, factory, "romeo@localhost", "192.0.2.11")

    [result] = ask(juliet, juliet_out, f"<iq type='get' id='v1'><query xmlns='{ROSTER}' ver=''/></iq>")
    query = query_of(result)
    assert result.get("type") == "result" and query is not None and query.get("ver") == "0" and list(query) == []

    answers = ask(juliet, juliet_out, f"<iq type='set' id='s1'><query xmlns='{ROSTER}'>"
                                      "<item jid='nurse@localhost' name='Nurse'><group>Servants</group></item>"
                                      "</query></iq>")
    push, result = answers
    assert push.get("type") == "set" and query_of(push).get("ver") == "1"  # type: ignore[union-attr]
    assert [item.get("jid") for item in query_of(push)] == ["nurse@localhost"]  # type: ignore[union-attr]
    assert result.get("type") == "result" and result.get("id") == "s1"

    [unchanged] = ask(juliet, juliet_out, f"<iq type='get' id='v2'><query xmlns='{ROSTER}' ver='1'/></iq>")
    assert unchanged.get("type") == "result" and list(unchanged) == []  # 2.6.3: empty, no <query/>

    [stale] = ask(juliet, juliet_out, f"<iq type='get' id='v3'><query xmlns='{ROSTER}' ver='0'/></iq>")
    assert query_of(stale).get("ver") == "1"  # type: ignore[union-attr]
    assert [item.get("jid") for item in query_of(stale)] == ["nurse@localhost"]  # type: ignore[union-attr]
    [plain] = ask(juliet, juliet_out, f"<iq type='get' id='v4'><query xmlns='{ROSTER}'/></iq>")
    assert query_of(plain).get("ver") is None and len(query_of(plain)) == 1  # type: ignore[union-attr, arg-type]

    # A subscription, through presence.py: juliet's item for romeo (ask) is version 2.
    said(romeo_out)
    ask(romeo, romeo_out, f"<iq type='get' id='r1'><query xmlns='{ROSTER}' ver=''/></iq>")
    [push] = [e for e in ask(juliet, juliet_out, "<presence type='subscribe' to='romeo@localhost'/>")
              if e.tag == "{jabber:client}iq"]
    assert query_of(push).get("ver") == "2"  # type: ignore[union-attr]
    # Romeo approves: his item (from) is his version 1; juliet's (to) her version 3.
    romeo_said = ask(romeo, romeo_out, "<presence type='subscribed' to='juliet@localhost'/>")
    assert [query_of(e).get("ver") for e in romeo_said if e.tag == "{jabber:client}iq"] == ["1"]  # type: ignore[union-attr]
    juliet_pushes = [e for e in said(juliet_out) if e.tag == "{jabber:client}iq"]
    assert [query_of(e).get("ver") for e in juliet_pushes] == ["3"]  # type: ignore[union-attr]
    # A removal is a change too.
    answers = ask(juliet, juliet_out, f"<iq type='set' id='s2'><query xmlns='{ROSTER}'>"
                                      "<item jid='nurse@localhost' subscription='remove'/></query></iq>")
    assert [query_of(e).get("ver") for e in answers if e.get("type") == "set"] == ["4"]  # type: ignore[union-attr]

    assert store.database.load_roster("juliet@localhost")[2] == 4
    assert store.database.load_roster("romeo@localhost")[2] == 1


def test_a_new_session_with_the_current_version_gets_an_empty_result() -> None:
    """The version lives in the store: after every session ended (the roster gone from memory), a
    new session naming the version its last push carried gets an empty result; one whose roster
    changed while it was away (another resource's set) gets the whole roster and the new version."""
    store = SynchronousStore()
    assert store.database.create_account("juliet@localhost", (), NOW, social=True)
    sessions, factory = world(store)
    juliet, juliet_out = log_in(sessions, factory, "juliet@localhost", "192.0.2.10", "balcony")
    ask(juliet, juliet_out, f"<iq type='set' id='s1'><query xmlns='{ROSTER}'><item jid='nurse@localhost'/>"
                            "</query></iq>")
    juliet.connectionLost(None)  # type: ignore[arg-type]
    assert sessions.rosters.cached("juliet@localhost") is None, "the roster left memory"

    again, again_out = log_in(sessions, factory, "juliet@localhost", "192.0.2.12", "balcony")
    [unchanged] = ask(again, again_out, f"<iq type='get' id='v1'><query xmlns='{ROSTER}' ver='1'/></iq>")
    assert unchanged.get("type") == "result" and list(unchanged) == []

    again.connectionLost(None)  # type: ignore[arg-type]

    other, other_out = log_in(sessions, factory, "juliet@localhost", "192.0.2.13", "chamber")
    ask(other, other_out, f"<iq type='set' id='s2'><query xmlns='{ROSTER}'><item jid='tybalt@localhost'/>"
                          "</query></iq>")
    other.connectionLost(None)  # type: ignore[arg-type]
    back, back_out = log_in(sessions, factory, "juliet@localhost", "192.0.2.14", "balcony")
    [changed] = ask(back, back_out, f"<iq type='get' id='v2'><query xmlns='{ROSTER}' ver='1'/></iq>")
    assert query_of(changed).get("ver") == "2"  # type: ignore[union-attr]
    assert sorted(item.get("jid") for item in query_of(changed)) == ["nurse@localhost", "tybalt@localhost"]  # type: ignore[union-attr, type-var]
