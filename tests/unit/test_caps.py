"""Entity capabilities (XEP-0115): section 5's verification string and hash, checked against the
XEP's own worked examples, and the server's use of them: an unknown ver is asked once with
disco#info, cached only when the answer verifies, and the queries are bounded in time."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from wokkel.generic import parseXml

from sns_xmpp.xmpp.features import caps as caps_module
from sns_xmpp.xmpp.features.caps import QUERY_TIMEOUT, IllFormed, ver_of, ver_string, verifies
from tests.unit.test_pep import DISCO_INFO, Person, two_people

# Section 5.2, the simple example (Exodus 0.9.1).
EXODUS = ("<query xmlns='http://jabber.org/protocol/disco#info'>"
          "<identity category='client' name='Exodus 0.9.1' type='pc'/>"
          "<feature var='http://jabber.org/protocol/caps'/>"
          "<feature var='http://jabber.org/protocol/disco#info'/>"
          "<feature var='http://jabber.org/protocol/disco#items'/>"
          "<feature var='http://jabber.org/protocol/muc'/></query>")
EXODUS_VER = "QgayPKawpkPSDYmwT/WM94uAlu0="

# Section 5.3, the complex example (Psi 0.11, two identities in two languages, an extended form).
PSI = ("<query xmlns='http://jabber.org/protocol/disco#info'>"
       "<identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>"
       "<identity xml:lang='el' category='client' name='\u03a8 0.11' type='pc'/>"
       "<feature var='http://jabber.org/protocol/caps'/>"
       "<feature var='http://jabber.org/protocol/disco#info'/>"
       "<feature var='http://jabber.org/protocol/disco#items'/>"
       "<feature var='http://jabber.org/protocol/muc'/>"
       "<x xmlns='jabber:x:data' type='result'>"
       "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>"
       "<field var='ip_version' type='text-multi'><value>ipv4</value><value>ipv6</value></field>"
       "<field var='os'><value>Mac</value></field>"
       "<field var='os_version'><value>10.5.1</value></field>"
       "<field var='software'><value>Psi</value></field>"
       "<field var='software_version'><value>0.11</value></field></x></query>")
PSI_VER = "q07IKJEyjvHSyhy//CH0CxmKi8w="


def test_the_xeps_worked_examples_verify() -> None:
    """Sections 5.2 and 5.3: the string and sha-1 ver the XEP gives for its two examples."""
    assert ver_string(parseXml(EXODUS)) == ("client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<"
                                            "http://jabber.org/protocol/disco#info<"
                                            "http://jabber.org/protocol/disco#items<http://jabber.org/protocol/muc<")
    assert ver_of(parseXml(EXODUS)) == EXODUS_VER
    assert verifies(EXODUS_VER, parseXml(EXODUS))
    assert ver_of(parseXml(PSI)) == PSI_VER
    assert not verifies(PSI_VER, parseXml(EXODUS))


def test_section_5_4s_ill_formed_answers_are_refused() -> None:
    """A duplicate feature or identity, or a FORM_TYPE with two values, makes an answer that must
    not be cached, whatever its hash; a FORM_TYPE that is not hidden makes its form ignored."""
    with pytest.raises(IllFormed):
        ver_string(parseXml(EXODUS.replace("</query>", "<feature var='http://jabber.org/protocol/muc'/></query>")))
    with pytest.raises(IllFormed):
        ver_string(parseXml(EXODUS.replace("</query>", "<identity category='client' name='Exodus 0.9.1'"
                                                        " type='pc'/></query>")))
    with pytest.raises(IllFormed):
        ver_string(parseXml(PSI.replace("<value>urn:xmpp:dataforms:softwareinfo</value>",
                                        "<value>a</value><value>b</value>")))
    assert not verifies(ver_of(parseXml(EXODUS)), parseXml(EXODUS.replace(
        "</query>", "<feature var='http://jabber.org/protocol/muc'/></query>")))
    unhidden = PSI.replace("var='FORM_TYPE' type='hidden'", "var='FORM_TYPE'")
    assert ver_of(parseXml(unhidden)) == ver_of(parseXml(PSI[:PSI.index("<x ")] + "</query>"))


def exodus_presence() -> str:
    return f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='x' ver='{EXODUS_VER}'/></presence>"


def caps_query_of(person: Person) -> tuple[str, str]:
    """The (id, node) of the server's disco#info query to *person*."""
    [query] = [(s.get("id"), s.find(f"{{{DISCO_INFO}}}query").get("node"))  # type: ignore[union-attr]
               for s in person.stanzas() if s.find(f"{{{DISCO_INFO}}}query") is not None]
    return query  # type: ignore[return-value]


def test_a_ver_is_asked_once_and_cached_only_when_it_verifies() -> None:
    """Section 6.2: bob announces Exodus' ver; the server asks bob's resource with node#ver, the
    answer verifies, and a second resource with the same ver is not asked. A presence with a ver
    whose answer does not match is asked, used for that resource, and never cached: the next
    resource with that ver is asked again."""
    world = two_people()
    sessions, alice, bob, clock, entity_caps = world.sessions, world.alice, world.bob, world.clock, world.caps
    alice.send("<presence/>")
    bob.send(f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://exodus.jabberstudio.org/'"
             f" ver='{EXODUS_VER}'/></presence>")
    query_id, node = caps_query_of(bob)
    assert node == f"http://exodus.jabberstudio.org/#{EXODUS_VER}"
    answer = EXODUS.replace("<query ", f"<query node={node!r} ")
    bob.send(f"<iq type='result' id='{query_id}' to='alice@localhost'>{answer}</iq>")
    assert entity_caps.cache[EXODUS_VER] == frozenset(
        f"http://jabber.org/protocol/{f}" for f in ("caps", "disco#info", "disco#items", "muc"))
    assert entity_caps.seen("alice@localhost")["bob@localhost/laptop"] == entity_caps.cache[EXODUS_VER]
    assert sessions.hooks.responses == {}
    desk = world.person("bob@localhost", "desk", "192.0.2.3")
    desk.send(exodus_presence())
    assert [s for s in desk.stanzas() if s.find(f"{{{DISCO_INFO}}}query") is not None] == []  # cached: not asked
    assert entity_caps.seen("alice@localhost")["bob@localhost/desk"] == entity_caps.cache[EXODUS_VER]

    wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
    bob.send(f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='{wrong}'/></presence>")
    query_id, _node = caps_query_of(bob)
    bob.send(f"<iq type='result' id='{query_id}' to='alice@localhost'>{EXODUS}</iq>")
    assert wrong not in entity_caps.cache
    assert "http://jabber.org/protocol/muc" in entity_caps.seen("alice@localhost")["bob@localhost/laptop"]
    bob.send("<presence type='unavailable'/>")
    bob.send(f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='{wrong}'/></presence>")
    caps_query_of(bob)  # asked again: an unverified ver is not trusted for anyone else
    assert len(sessions.hooks.responses) == 1
    clock.advance(QUERY_TIMEOUT)
    assert sessions.hooks.responses == {}  # an unanswered query is given up, not kept


def test_an_answer_from_another_address_is_not_taken() -> None:
    """The answer must come from the full JID asked (the core matches its 'from' and id): eve,
    who guesses the id, cannot set bob's features."""
    world = two_people()
    alice, bob = world.alice, world.bob
    alice.send("<presence/>")
    bob.send(exodus_presence())
    query_id, _node = caps_query_of(bob)
    eve = world.person("eve@localhost")
    eve.send(f"<iq type='result' id='{query_id}' to='alice@localhost'>{EXODUS}</iq>")
    assert len(world.sessions.hooks.responses) == 1
    assert "bob@localhost/laptop" not in world.caps.seen("alice@localhost")


def test_the_cache_keeps_the_newest_vers_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ver cache is bounded (least recently used out): with room for one, Psi's verified ver
    pushes Exodus' out."""
    monkeypatch.setattr(caps_module, "MAX_CACHED", 1)
    world = two_people()
    bob = world.bob
    for ver, answer in ((EXODUS_VER, EXODUS), (PSI_VER, PSI)):
        bob.send(f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='x' ver='{ver}'/></presence>")
        query_id, _node = caps_query_of(bob)
        bob.send(f"<iq type='result' id='{query_id}' to='bob@localhost'>{answer}</iq>")
    assert list(world.caps.cache) == [PSI_VER]


def test_the_others_waiting_on_a_ver_are_asked_when_the_first_does_not_answer() -> None:
    """One query per ver: bob's laptop is asked, his desk waits on it. The laptop answers with an
    error; the desk is asked then, and its verified answer is cached. A query no one answers is
    given up after QUERY_TIMEOUT and the next waiter asked."""
    world = two_people()
    bob = world.bob
    desk = world.person("bob@localhost", "desk", "192.0.2.3")
    bob.send(exodus_presence())
    desk.send(exodus_presence())
    query_id, _node = caps_query_of(bob)
    assert [s for s in desk.stanzas() if s.find(f"{{{DISCO_INFO}}}query") is not None] == []  # it waits
    bob.send(f"<iq type='error' id='{query_id}' to='bob@localhost'><error type='cancel'>"
             "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
    query_id, _node = caps_query_of(desk)
    desk.send(f"<iq type='result' id='{query_id}' to='bob@localhost'>{EXODUS}</iq>")
    assert EXODUS_VER in world.caps.cache
    assert "bob@localhost/desk" in world.caps.seen("bob@localhost")

    bob.send(exodus_presence().replace(EXODUS_VER, PSI_VER))
    desk.send(exodus_presence().replace(EXODUS_VER, PSI_VER))
    caps_query_of(bob)
    world.clock.advance(QUERY_TIMEOUT)
    query_id, _node = caps_query_of(desk)  # the laptop never answered: the desk is asked
    desk.send(f"<iq type='result' id='{query_id}' to='bob@localhost'>{PSI}</iq>")
    assert PSI_VER in world.caps.cache and world.sessions.hooks.responses == {}


def test_the_server_announces_its_own_caps_in_the_stream_features_and_they_verify() -> None:
    """Section 6.3: after authentication the stream features carry the server's <c/>, whose ver
    is the sha-1 of the domain's disco#info answer (asked with node#ver, as a client would)."""
    world = two_people()
    [make] = [make for make in world.sessions.hooks.features_after_auth
              if (element := make("localhost")) is not None and element.uri == caps_module.NS_CAPS]
    caps = make("localhost")
    assert caps is not None and make("localhost") is caps  # the same element: the features are cached
    assert (caps["hash"], caps["node"]) == ("sha-1", caps_module.SERVER_NODE)
    answer = world.alice.ask(f"<iq type='get' id='s1' to='localhost'><query xmlns='{DISCO_INFO}'"
                             f" node='{caps['node']}#{caps['ver']}'/></iq>")
    query = answer.find(f"{{{DISCO_INFO}}}query")
    assert query is not None and query.get("node") == f"{caps['node']}#{caps['ver']}"
    assert verifies(caps["ver"], parseXml(ET.tostring(query, encoding="unicode")))
    assert "http://jabber.org/protocol/pubsub#publish-options" in {f.get("var") for f in query}


def test_the_resources_an_account_keeps_capabilities_of_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for one resource per account, bob's second resource is not kept for alice,
    even with a ver already verified, and the limit is counted."""
    monkeypatch.setattr(caps_module, "MAX_SEEN", 1)
    world = two_people()
    bob = world.bob
    bob.send(exodus_presence())
    query_id, _node = caps_query_of(bob)
    bob.send(f"<iq type='result' id='{query_id}' to='bob@localhost'>{EXODUS}</iq>")
    world.person("bob@localhost", "desk", "192.0.2.3").send(exodus_presence())
    assert list(world.caps.seen("alice@localhost")) == ["bob@localhost/laptop"]
    assert world.sessions.metrics.limits_hit.labels("caps-seen")._value.get() >= 1


def test_a_ver_of_another_hash_or_none_is_asked_and_used_but_never_cached() -> None:
    """Section 5.4: only a hash this server can check (sha-1) is cached by ver; a legacy <c/>
    without 'hash' (section 1.3's old form) or another algorithm is still asked, and what the
    resource answers is used for it alone (for each account that saw its presence)."""
    world = two_people()
    bob = world.bob
    desk = world.person("bob@localhost", "desk", "192.0.2.3")
    other_hash = f"<c xmlns='http://jabber.org/protocol/caps' hash='md5' node='x' ver='{EXODUS_VER}'/>"
    for client, legacy in ((bob, "<c xmlns='http://jabber.org/protocol/caps' node='x' ver='1.0'/>"),
                           (desk, other_hash)):
        client.send(f"<presence>{legacy}</presence>")
        query_id, _node = caps_query_of(client)  # one query, however many accounts wait on it
        client.send(f"<iq type='result' id='{query_id}' to='bob@localhost'>{EXODUS}</iq>")
    assert world.caps.cache == {}
    assert set(world.caps.seen("alice@localhost")) == {"bob@localhost/laptop", "bob@localhost/desk"}
    assert set(world.caps.seen("bob@localhost")) == {"bob@localhost/laptop", "bob@localhost/desk"}
