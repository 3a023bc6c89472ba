"""Personal eventing (XEP-0163 on XEP-0060) as a feature module, with Twisted's doubles: the XEPs'
examples fed as raw XML, the exact answers and errors, the access models, notifications to the
resources whose entity capabilities show +notify, and the in-process API other features use."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest
import pytest_twisted
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from wokkel.generic import parseXml
from zope.interface.verify import verifyObject

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.store import pep as store_pep
from sns_xmpp.store.pep import StoredItem
from sns_xmpp.store.records import RosterItem
from sns_xmpp.xmpp.c2s import ClientStream, ClientStreamFactory
from sns_xmpp.xmpp.features import FeatureRegistry
from sns_xmpp.xmpp.features.built_in import install_features
from sns_xmpp.xmpp.features.caps import EntityCaps, entity_caps, ver_of
from sns_xmpp.xmpp.features.pep import pep_service
from sns_xmpp.xmpp.pubsub import transactions
from sns_xmpp.xmpp.pubsub.nodes import Limits, options_form
from sns_xmpp.xmpp.pubsub.service import IPEPService, PEPService
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.test_limits import connect, factory_and_clock
from tests.unit.test_negotiation import HEADER
from tests.unit.test_store import NOW, Backend, backend  # noqa: F401 (the fixture)
from tests.unit.test_stream_management import MemoryStore, output

PUBSUB = "http://jabber.org/protocol/pubsub"
OWNER = PUBSUB + "#owner"
EVENT = PUBSUB + "#event"
ERRORS = PUBSUB + "#errors"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NICK = "http://jabber.org/protocol/nick"
DEVICELIST = "eu.siacs.conversations.axolotl.devicelist"
CLIENT_FEATURES = ("http://jabber.org/protocol/disco#info", NICK, NICK + "+notify",
                   DEVICELIST + "+notify", "urn:xmpp:avatar:metadata+notify")
DISCO_INFO = "http://jabber.org/protocol/disco#info"


class Person:
    def __init__(self, sessions: SessionManager, factory: ClientStreamFactory, jid: str, resource: str,
                 host: str) -> None:
        self.jid = jid
        self.full = f"{jid}/{resource}"
        stream, transport = connect(factory, host)
        stream.dataReceived(HEADER.format(to="localhost").encode())
        sessions.bind(stream, LoginResult(jid, "PLAIN"), resource)
        self.stream: ClientStream = stream
        self.transport: StringTransport = transport
        output(transport)

    def send(self, xml: str) -> None:
        self.stream.dataReceived(xml.encode())

    def stanzas(self) -> list[ET.Element]:
        return list(ET.fromstring(f"<x xmlns='jabber:client'>{output(self.transport)}</x>"))

    def ask(self, xml: str) -> ET.Element:
        """Send an IQ; its answer (the one stanza with its id)."""
        iq = ET.fromstring(xml)
        self.send(xml)
        [answer] = [s for s in self.stanzas() if s.get("id") == iq.get("id") and s.tag.endswith("iq")]
        return answer


def identity_query(features: tuple[str, ...]) -> str:
    return (f"<query xmlns='{DISCO_INFO}'><identity category='client' type='pc' name='t'/>"
            + "".join(f"<feature var='{f}'/>" for f in features) + "</query>")


def caps_presence(features: tuple[str, ...] = CLIENT_FEATURES) -> tuple[str, str]:
    """An available presence with caps for *features*, and the ver."""
    ver = ver_of(parseXml(identity_query(features)))
    return (f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://t.example'"
            f" ver='{ver}'/></presence>", ver)


def answer_caps_query(person: Person, features: tuple[str, ...] = CLIENT_FEATURES) -> list[ET.Element]:
    """Answer the server's disco#info query to *person*; the other stanzas it had."""
    rest = []
    for stanza in person.stanzas():
        query = stanza.find(f"{{{DISCO_INFO}}}query")
        if stanza.tag.endswith("iq") and stanza.get("type") == "get" and query is not None:
            person.send(f"<iq type='result' id='{stanza.get('id')}' to='{stanza.get('from')}'>"
                        f"{identity_query(features).replace('<query ', '<query node=' + repr(query.get('node')) + ' ')}"
                        "</iq>")
        else:
            rest.append(stanza)
    return rest


def contacts(store: MemoryStore, *pairs: tuple[str, str, str]) -> None:
    for owner, contact, subscription in pairs:
        store.rosters.setdefault(owner, {})[contact] = RosterItem(contact, subscription=subscription)


@dataclass
class World:
    sessions: SessionManager
    registry: FeatureRegistry
    store: MemoryStore
    alice: Person
    bob: Person
    clock: MemoryReactorClock
    factory: ClientStreamFactory

    @property
    def pep(self) -> PEPService:
        service = pep_service(self.registry)
        assert service is not None
        return service

    @property
    def caps(self) -> EntityCaps:
        tracker = entity_caps(self.registry)
        assert tracker is not None
        return tracker

    def person(self, jid: str, resource: str = "r", host: str = "192.0.2.9") -> Person:
        return Person(self.sessions, self.factory, jid, resource, host)


def two_people(subscription: str = "both") -> World:
    """alice and bob, contacts with *subscription* both ways, each with a bound resource; eve
    has an account and is nobody's contact."""
    store = MemoryStore()
    for jid in ("alice@localhost", "bob@localhost", "eve@localhost"):
        store.database.create_account(jid, [], 0.0)
    contacts(store, ("alice@localhost", "bob@localhost", subscription),
             ("bob@localhost", "alice@localhost", subscription))
    factory, clock = factory_and_clock()
    sessions = SessionManager(["localhost"], store, clock,  # type: ignore[arg-type]
                              lambda stanza: sessions.deliver(stanza))
    registry = install_features(sessions)
    alice = Person(sessions, factory, "alice@localhost", "phone", "192.0.2.1")
    bob = Person(sessions, factory, "bob@localhost", "laptop", "192.0.2.2")
    return World(sessions, registry, store, alice, bob, clock, factory)


def publish(person: Person, node: str, payload: str, item_id: str = "current", options: str = "") -> ET.Element:
    return person.ask(f"<iq type='set' id='pub1'><pubsub xmlns='{PUBSUB}'><publish node='{node}'>"
                      f"<item id='{item_id}'>{payload}</item></publish>{options}</pubsub></iq>")


def error_of(answer: ET.Element) -> tuple[str | None, list[str]]:
    error = answer.find("{jabber:client}error")
    assert answer.get("type") == "error" and error is not None, ET.tostring(answer)
    return error.get("type"), [child.tag for child in error if child.tag != f"{{{STANZAS}}}text"]


def test_a_published_nick_reaches_a_contact_with_notify_and_the_last_item_comes_on_presence() -> None:
    """XEP-0163 section 4 (XEP-0172's example): alice publishes her nick; bob, her contact, whose
    caps (verified by the server's disco#info query) show the nick+notify, gets the headline
    <event/>; when he comes online again he gets the last item (section 4.3.2)."""
    world = two_people()
    alice, bob = world.alice, world.bob
    presence, _ver = caps_presence()
    bob.send(presence)
    alice.send("<presence/>")
    answer_caps_query(bob)
    answer = publish(alice, NICK, f"<nick xmlns='{NICK}'>Alice</nick>")
    assert answer.get("type") == "result"
    published = answer.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish/{{{PUBSUB}}}item")
    assert published is not None and published.get("id") == "current"
    [message] = [s for s in bob.stanzas() if s.tag.endswith("message")]
    assert message.get("type") == "headline" and message.get("from") == "alice@localhost"
    item = message.find(f"{{{EVENT}}}event/{{{EVENT}}}items[@node='{NICK}']/{{{EVENT}}}item[@id='current']")
    assert item is not None and item.findtext(f"{{{NICK}}}nick") == "Alice"

    bob.send("<presence type='unavailable'/>")
    bob.stanzas()
    bob.send(presence)  # the ver is cached now: no query, the last item at once
    [message] = [s for s in bob.stanzas() if s.tag.endswith("message")]
    assert message.findtext(f"{{{EVENT}}}event/{{{EVENT}}}items/{{{EVENT}}}item/{{{NICK}}}nick") == "Alice"


def test_the_access_models_refuse_with_the_xeps_errors() -> None:
    """XEP-0060 section 6.5.9: eve, no contact, asking a presence-access node hears not-authorized
    with presence-subscription-required (type auth); bob, a contact, reading a whitelist node (XEP-0223
    private storage) hears not-allowed with closed-node (type cancel); an open node (OMEMO's
    bundles) is read by anyone; a node that is not there is item-not-found."""
    world = two_people()
    alice, bob = world.alice, world.bob
    eve = world.person("eve@localhost")
    publish(alice, NICK, f"<nick xmlns='{NICK}'>Alice</nick>")
    private = (f"<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
               f"<value>{PUBSUB}#publish-options</value></field><field var='pubsub#access_model'><value>whitelist"
               "</value></field><field var='pubsub#persist_items'><value>true</value></field></x></publish-options>")
    stored = publish(alice, "storage:bookmarks", "<storage xmlns='storage:bookmarks'/>", options=private)
    assert stored.get("type") == "result"
    bundle = private.replace("whitelist", "open")
    assert publish(alice, f"{DEVICELIST}", "<list xmlns='eu.siacs.conversations.axolotl'><device id='7'/></list>",
                   options=bundle).get("type") == "result"

    def items(person: Person, node: str) -> ET.Element:
        return person.ask(f"<iq type='get' id='i1' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>"
                          f"<items node='{node}'/></pubsub></iq>")

    assert error_of(items(eve, NICK)) == ("auth", [f"{{{STANZAS}}}not-authorized",
                                                  f"{{{ERRORS}}}presence-subscription-required"])
    assert error_of(items(bob, "storage:bookmarks")) == ("cancel", [f"{{{STANZAS}}}not-allowed",
                                                                    f"{{{ERRORS}}}closed-node"])
    assert error_of(items(bob, "no-such-node")) == ("cancel", [f"{{{STANZAS}}}item-not-found"])
    assert items(bob, NICK).find(f".//{{{NICK}}}nick").text == "Alice"  # type: ignore[union-attr]
    assert items(eve, DEVICELIST).find(f".//{{{PUBSUB}}}item").get("id") == "current"  # type: ignore[union-attr]
    assert items(alice, "storage:bookmarks").find(f".//{{{PUBSUB}}}item") is not None  # the owner sees her own

    def disco_items(person: Person) -> set[str | None]:
        answer = person.ask("<iq type='get' id='d1' to='alice@localhost'>"
                            "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        return {item.get("node") for item in answer.iter("{http://jabber.org/protocol/disco#items}item")}

    assert disco_items(alice) == {NICK, "storage:bookmarks", DEVICELIST}
    assert disco_items(bob) == {NICK, DEVICELIST}  # the whitelist node is not shown to a contact
    assert disco_items(eve) == {DEVICELIST}
    forged = bob.ask(f"<iq type='set' id='f1' to='alice@localhost'><pubsub xmlns='{PUBSUB}'><publish node='{NICK}'>"
                     f"<item><nick xmlns='{NICK}'>Mallory</nick></item></publish></pubsub></iq>")
    assert error_of(forged) == ("auth", [f"{{{STANZAS}}}forbidden"])


def options(**fields: str) -> str:
    return (f"<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{PUBSUB}#publish-options</value></field>"
            + "".join(f"<field var='pubsub#{k}'><value>{v}</value></field>" for k, v in fields.items())
            + "</x></publish-options>")


def test_publish_options_create_the_node_and_a_mismatch_is_precondition_not_met() -> None:
    """XEP-0060 section 7.1.5: the first publish creates the node with the options (XEP-0402's
    bookmarks: whitelist, persist, max_items=max, never send the last item); the same options
    again publish; other options are refused with conflict and precondition-not-met (type
    cancel), and the item is not published."""
    world = two_people()
    alice = world.alice
    bookmarks = options(access_model="whitelist", persist_items="true", max_items="max",
                        send_last_published_item="never")
    conference = "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='true'/>"
    assert publish(alice, "urn:xmpp:bookmarks:1", conference, "room1@muc", bookmarks).get("type") == "result"
    assert publish(alice, "urn:xmpp:bookmarks:1", conference, "room2@muc", bookmarks).get("type") == "result"
    refused = publish(alice, "urn:xmpp:bookmarks:1", conference, "room3@muc", options(access_model="open"))
    assert error_of(refused) == ("cancel", [f"{{{STANZAS}}}conflict", f"{{{ERRORS}}}precondition-not-met"])
    unknown_value = publish(alice, "urn:xmpp:bookmarks:1", conference, "room3@muc", options(access_model="roster"))
    assert error_of(unknown_value)[1][1] == f"{{{ERRORS}}}precondition-not-met"
    answer = alice.ask(f"<iq type='get' id='i2'><pubsub xmlns='{PUBSUB}'><items node='urn:xmpp:bookmarks:1'/>"
                       "</pubsub></iq>")
    assert [item.get("id") for item in answer.iter(f"{{{PUBSUB}}}item")] == ["room1@muc", "room2@muc"]
    config = alice.ask(f"<iq type='get' id='c1'><pubsub xmlns='{OWNER}'><configure node='urn:xmpp:bookmarks:1'/>"
                       "</pubsub></iq>")
    values = {field.get("var"): field.findtext("{jabber:x:data}value")
              for field in config.iter("{jabber:x:data}field")}
    assert values["pubsub#access_model"] == "whitelist" and values["pubsub#max_items"] == "256"
    assert values["pubsub#send_last_published_item"] == "never" and values["FORM_TYPE"] == f"{PUBSUB}#node_config"


def test_retract_purge_and_delete_notify_and_configuration_is_the_owners() -> None:
    """Sections 7.2 (retract with notify), 8.2 (configure: get the form, submit max_items=2, a
    third item pushes the oldest out; a bad value is not-acceptable), 8.5 (purge) and 8.4 (delete
    with <delete/> to the +notify contacts)."""
    world = two_people()
    alice, bob = world.alice, world.bob
    features = CLIENT_FEATURES + ("urn:xmpp:microblog:0+notify",)
    presence, _ver = caps_presence(features)
    bob.send(presence)
    answer_caps_query(bob, features)
    node = "urn:xmpp:microblog:0"
    publish(alice, node, "<entry xmlns='http://www.w3.org/2005/Atom'>1</entry>", "one")
    [message] = bob.stanzas()
    assert message.find(f".//{{{EVENT}}}item").get("id") == "one"  # type: ignore[union-attr]
    form = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{PUBSUB}#node_config</value></field><field var='pubsub#max_items'><value>{{}}</value></field></x>")
    answer = alice.ask(f"<iq type='set' id='c2'><pubsub xmlns='{OWNER}'><configure node='{node}'>"
                       f"{form.format(2)}</configure></pubsub></iq>")
    assert answer.get("type") == "result"
    bad = alice.ask(f"<iq type='set' id='c3'><pubsub xmlns='{OWNER}'><configure node='{node}'>"
                    f"{form.format('lots')}</configure></pubsub></iq>")
    assert error_of(bad) == ("modify", [f"{{{STANZAS}}}not-acceptable"])
    not_hers = bob.ask(f"<iq type='get' id='c4' to='alice@localhost'><pubsub xmlns='{OWNER}'><configure node='{node}'/>"
                       "</pubsub></iq>")
    assert error_of(not_hers) == ("auth", [f"{{{STANZAS}}}forbidden"])
    for n in ("two", "three"):
        publish(alice, node, f"<entry xmlns='http://www.w3.org/2005/Atom'>{n}</entry>", n)
    bob.stanzas()
    answer = alice.ask(f"<iq type='get' id='i3'><pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub></iq>")
    assert [item.get("id") for item in answer.iter(f"{{{PUBSUB}}}item")] == ["two", "three"]
    answer = alice.ask(f"<iq type='get' id='i4'><pubsub xmlns='{PUBSUB}'><items node='{node}' max_items='1'/>"
                       "</pubsub></iq>")
    assert [item.get("id") for item in answer.iter(f"{{{PUBSUB}}}item")] == ["three"]
    answer = alice.ask(f"<iq type='get' id='i5'><pubsub xmlns='{PUBSUB}'><items node='{node}'><item id='two'/></items>"
                       "</pubsub></iq>")
    assert [item.get("id") for item in answer.iter(f"{{{PUBSUB}}}item")] == ["two"]

    answer = alice.ask(f"<iq type='set' id='r1'><pubsub xmlns='{PUBSUB}'><retract node='{node}' notify='true'>"
                       "<item id='two'/></retract></pubsub></iq>")
    assert answer.get("type") == "result"
    [message] = bob.stanzas()
    retracted = message.find(f"{{{EVENT}}}event/{{{EVENT}}}items[@node='{node}']/{{{EVENT}}}retract")
    assert retracted is not None and retracted.get("id") == "two"
    gone = alice.ask(f"<iq type='set' id='r2'><pubsub xmlns='{PUBSUB}'><retract node='{node}'>"
                     "<item id='two'/></retract></pubsub></iq>")
    assert error_of(gone) == ("cancel", [f"{{{STANZAS}}}item-not-found"])

    purged = alice.ask(f"<iq type='set' id='p1'><pubsub xmlns='{OWNER}'><purge node='{node}'/></pubsub></iq>")
    assert purged.get("type") == "result"
    [message] = bob.stanzas()
    assert message.find(f"{{{EVENT}}}event/{{{EVENT}}}purge").get("node") == node  # type: ignore[union-attr]
    deleted = alice.ask(f"<iq type='set' id='x1'><pubsub xmlns='{OWNER}'><delete node='{node}'/></pubsub></iq>")
    assert deleted.get("type") == "result"
    [message] = bob.stanzas()
    assert message.find(f"{{{EVENT}}}event/{{{EVENT}}}delete").get("node") == node  # type: ignore[union-attr]
    answer = alice.ask(f"<iq type='get' id='i6'><pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub></iq>")
    assert error_of(answer) == ("cancel", [f"{{{STANZAS}}}item-not-found"])


def test_the_account_answers_disco_info_with_its_identities_and_pep_features() -> None:
    """XEP-0030 section 3.1 and XEP-0163 section 6: the bare JID is account/registered and
    pubsub/pep, with publish-options (what Conversations' server-info screen looks for; Profanity
    looks for publish-options on the domain, so it is there too)."""
    world = two_people()
    answer = world.alice.ask("<iq type='get' id='d2' to='alice@localhost'>"
                             f"<query xmlns='{DISCO_INFO}'/></iq>")
    identities = {(i.get("category"), i.get("type")) for i in answer.iter(f"{{{DISCO_INFO}}}identity")}
    assert identities == {("account", "registered"), ("pubsub", "pep")}
    features = {f.get("var") for f in answer.iter(f"{{{DISCO_INFO}}}feature")}
    assert {PUBSUB, PUBSUB + "#publish-options", PUBSUB + "#access-whitelist", PUBSUB + "#auto-create",
            "http://jabber.org/protocol/caps"} <= features
    domain = world.alice.ask(f"<iq type='get' id='d4' to='localhost'><query xmlns='{DISCO_INFO}'/></iq>")
    assert PUBSUB + "#publish-options" in {f.get("var") for f in domain.iter(f"{{{DISCO_INFO}}}feature")}  # Profanity
    assert {(i.get("category"), i.get("type")) for i in world.bob.ask(
        "<iq type='get' id='d3' to='alice@localhost'>"
        f"<query xmlns='{DISCO_INFO}'/></iq>").iter(f"{{{DISCO_INFO}}}identity")} == identities


def test_limits_refuse_with_the_xeps_errors() -> None:
    """Section 7.1.3.4: a payload over the item limit is not-acceptable with payload-too-big;
    nodes beyond the account's limit are not-allowed with max-nodes-exceeded; two payloads in one
    item are bad-request with invalid-payload (7.1.3.6). Nothing is stored for any of them."""
    world = two_people()
    alice = world.alice
    world.pep.limits = Limits(nodes_per_account=2, item_bytes=1000)
    big = publish(alice, "big", f"<data xmlns='urn:xmpp:avatar:data'>{'A' * 1000}</data>")
    assert error_of(big) == ("modify", [f"{{{STANZAS}}}not-acceptable", f"{{{ERRORS}}}payload-too-big"])
    for node in ("a", "b"):
        assert publish(alice, node, "<x xmlns='y'/>").get("type") == "result"
    third = publish(alice, "c", "<x xmlns='y'/>")
    assert error_of(third) == ("cancel", [f"{{{STANZAS}}}not-allowed", f"{{{ERRORS}}}max-nodes-exceeded"])
    two = publish(alice, "a", "<x xmlns='y'/><z xmlns='y'/>")
    assert error_of(two) == ("modify", [f"{{{STANZAS}}}bad-request", f"{{{ERRORS}}}invalid-payload"])
    assert sorted(world.store.database.query("SELECT node FROM pep_nodes WHERE owner = ?", ("alice@localhost",))) \
        == [("a",), ("b",)]


@pytest_twisted.inlineCallbacks
def test_the_in_process_api_publishes_notifies_and_reads():
    """What the vCard feature calls (XEP-0398, XEP-0172 on first login): publish through the
    service with publish-options notifies the +notify contacts and tells the listeners; items
    reads it back; a mismatched option is the same StanzaError as over XMPP."""
    world = two_people()
    bob = world.bob
    presence, _ver = caps_presence()
    bob.send(presence)
    answer_caps_query(bob)
    heard: list[tuple[str, str, str]] = []
    world.pep.on_publish(lambda owner, node, item: heard.append((owner, node, item.item_id)))
    nick = domish.Element((NICK, "nick"))
    nick.addContent("Alice A.")
    item_id = yield world.pep.publish("alice@localhost", NICK, nick, options={"pubsub#access_model": "presence"})
    assert heard == [("alice@localhost", NICK, item_id)]
    [message] = bob.stanzas()
    assert message.find(f".//{{{NICK}}}nick").text == "Alice A."  # type: ignore[union-attr]
    items = yield world.pep.items("alice@localhost", NICK)
    assert [(i.item_id, str(i.payload)) for i in items] == [(item_id, "Alice A.")]
    with pytest.raises(StanzaError) as refused:
        yield world.pep.publish("alice@localhost", NICK, nick, options={"pubsub#access_model": "open"})
    assert refused.value.condition == "conflict"


def test_the_sql_of_pep_in_each_engine(backend: Backend) -> None:  # noqa: F811 - the fixture
    """store/pep.py on SQLite and PostgreSQL, through the service's own work functions: auto-create,
    a republished id becoming the newest, max_items trimming the oldest, the last item of each
    node, retract, and the account's deletion taking its nodes and items (the cascade)."""
    db = backend.open()
    try:
        db.create_account("alice@x", [], NOW)
        db.create_account("bob@x", [], NOW)
        limits = Limits()
        two = options_form({"pubsub#max_items": "2"})
        for n, item_id in enumerate(("a", "b", "a", "c")):
            item = StoredItem(item_id, f"<n xmlns='urn:t'>{n}</n>", "alice@x", NOW + n)
            config, evicted = transactions.publish(db, "alice@x", "urn:t", item, two, limits)
        assert config.max_items == 2 and evicted == ["b"]
        assert [(i.item_id, i.payload) for i in store_pep.items(db, "alice@x", "urn:t")] == [
            ("a", "<n xmlns='urn:t'>2</n>"), ("c", "<n xmlns='urn:t'>3</n>")]
        assert [i.item_id for i in store_pep.items(db, "alice@x", "urn:t", newest=1)] == ["c"]
        assert [i.item_id for i in store_pep.items(db, "alice@x", "urn:t", ids=("c", "a", "zz"))] == ["c", "a"]
        other = StoredItem("1", "<o xmlns='urn:o'/>", "alice@x", NOW)
        transactions.publish(db, "alice@x", "urn:other", other, None, limits)
        transactions.publish(db, "bob@x", "urn:t", StoredItem("b1", "<n xmlns='urn:t'/>", "bob@x", NOW), None, limits)
        assert {node: item.item_id for node, item in store_pep.last_items(db, "alice@x").items()} == {
            "urn:t": "c", "urn:other": "1"}
        with pytest.raises(StanzaError):
            transactions.publish(db, "alice@x", "urn:t", StoredItem("d", "<n xmlns='urn:t'/>", "alice@x", NOW),
                             options_form({"pubsub#max_items": "3"}), limits)
        assert transactions.retract(db, "alice@x", "urn:t", ("a", "zz"))[1] == ["a"]
        assert db.delete_account("alice@x")
        assert backend.rows("SELECT COUNT(*) FROM pep_items WHERE owner = 'alice@x'") == [(0,)]
        assert backend.rows("SELECT COUNT(*) FROM pep_nodes WHERE owner = 'alice@x'") == [(0,)]
        assert store_pep.nodes(db, "bob@x").keys() == {"urn:t"}
    finally:
        db.close()


def test_the_owners_own_resources_get_the_last_items_and_whitelist_notifications_only_they() -> None:
    """XEP-0163 section 4.3.2 for the owner: alice's second resource, showing +notify for her
    nick and her private node, gets both last items when it comes online; a later publish to the
    whitelist node notifies it but not bob, who also shows +notify for that node (XEP-0223:
    the owner alone); a node whose send_last_published_item is never (XEP-0402's bookmarks) sends
    no last item."""
    world = two_people()
    alice, bob = world.alice, world.bob
    private = "urn:example:private"
    features = CLIENT_FEATURES + (private + "+notify", "urn:xmpp:bookmarks:1+notify")
    presence, _ver = caps_presence(features)
    bob.send(presence)
    answer_caps_query(bob, features)
    publish(alice, NICK, f"<nick xmlns='{NICK}'>Alice</nick>")
    publish(alice, private, "<notes xmlns='urn:example:private'>1</notes>", options=options(access_model="whitelist"))
    publish(alice, "urn:xmpp:bookmarks:1", "<conference xmlns='urn:xmpp:bookmarks:1'/>", "room@muc",
            options(access_model="whitelist", send_last_published_item="never"))
    assert [m.find(f".//{{{EVENT}}}items").get("node") for m in bob.stanzas()] == [NICK]  # type: ignore[union-attr]

    desk = world.person("alice@localhost", "desk", "192.0.2.5")
    desk.send(presence)
    arrived = desk.stanzas()
    assert [s for s in arrived if s.find(f"{{{DISCO_INFO}}}query") is not None] == []  # the ver is cached
    delivered = {m.find(f".//{{{EVENT}}}items").get("node") for m in arrived  # type: ignore[union-attr]
                 if m.tag.endswith("message")}
    assert delivered == {NICK, private} and len([m for m in arrived if m.tag.endswith("message")]) == 2
    publish(alice, private, "<notes xmlns='urn:example:private'>2</notes>")
    [notified] = [m for m in desk.stanzas() if m.tag.endswith("message")]
    assert notified.findtext(".//{urn:example:private}notes") == "2"
    assert [s for s in bob.stanzas() if s.tag.endswith("message")] == []  # (he saw desk's presence)


def test_malformed_requests_hear_the_xeps_errors() -> None:
    """XEP-0060 section 7.1.3.6: a publish without an item is bad-request with item-required, an
    item without a payload bad-request with payload-required; an empty <pubsub/> is bad-request;
    a subscription (which PEP has implicitly, from presence) is feature-not-implemented with
    unsupported feature='subscribe' (section 6.1.3.12)."""
    alice = two_people().alice
    no_item = alice.ask(f"<iq type='set' id='m1'><pubsub xmlns='{PUBSUB}'><publish node='n'/></pubsub></iq>")
    assert error_of(no_item) == ("modify", [f"{{{STANZAS}}}bad-request", f"{{{ERRORS}}}item-required"])
    no_payload = alice.ask(f"<iq type='set' id='m2'><pubsub xmlns='{PUBSUB}'><publish node='n'><item id='1'/>"
                           "</publish></pubsub></iq>")
    assert error_of(no_payload) == ("modify", [f"{{{STANZAS}}}bad-request", f"{{{ERRORS}}}payload-required"])
    empty = alice.ask(f"<iq type='set' id='m3'><pubsub xmlns='{PUBSUB}'/></iq>")
    assert error_of(empty) == ("modify", [f"{{{STANZAS}}}bad-request"])
    subscribe = alice.ask(f"<iq type='set' id='m4' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>"
                          "<subscribe node='n' jid='alice@localhost'/></pubsub></iq>")
    assert error_of(subscribe) == ("cancel", [f"{{{STANZAS}}}feature-not-implemented", f"{{{ERRORS}}}unsupported"])
    unsupported = subscribe.find(f"{{jabber:client}}error/{{{ERRORS}}}unsupported")
    assert unsupported is not None and unsupported.get("feature") == "subscribe"


def test_create_with_a_configuration_then_conflict() -> None:
    """XEP-0060 sections 8.1.1 and 8.1.3: create-and-configure makes the node as asked (here open
    access, read by eve, no contact); creating it again is conflict."""
    world = two_people()
    alice = world.alice
    form = (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{PUBSUB}#node_config"
            "</value></field><field var='pubsub#access_model'><value>open</value></field></x>")
    create = (f"<iq type='set' id='{{}}'><pubsub xmlns='{PUBSUB}'><create node='urn:xmpp:omemo:2:bundles'/>"
              f"<configure>{form}</configure></pubsub></iq>")
    assert alice.ask(create.format("c1")).get("type") == "result"
    assert error_of(alice.ask(create.format("c2"))) == ("cancel", [f"{{{STANZAS}}}conflict"])
    publish(alice, "urn:xmpp:omemo:2:bundles", "<bundle xmlns='urn:xmpp:omemo:2'/>", "31415")
    eve = world.person("eve@localhost")
    answer = eve.ask(f"<iq type='get' id='e1' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>"
                     "<items node='urn:xmpp:omemo:2:bundles'/></pubsub></iq>")
    assert [item.get("id") for item in answer.iter(f"{{{PUBSUB}}}item")] == ["31415"]


def test_the_service_provides_its_interface() -> None:
    """The in-process API other features call is a zope interface, and the installed service
    provides it."""
    assert verifyObject(IPEPService, two_people().pep)


TUNE = "http://jabber.org/protocol/tune"
# XEP-0163 section 3 (Example 1), the account owner publishing her tune, as the XEP has it.
XEP_0163_EXAMPLE_1 = f"""<iq type='set' id='pub1'>
  <pubsub xmlns='http://jabber.org/protocol/pubsub'>
    <publish node='{TUNE}'>
      <item>
        <tune xmlns='{TUNE}'>
          <artist>Gerald Finzi</artist>
          <length>255</length>
          <source>Music for "Love's Labors Lost" (Suite for small orchestra)</source>
          <title>Introduction (Allegro vigoroso)</title>
          <track>1</track>
        </tune>
      </item>
    </publish>
  </pubsub>
</iq>"""


def test_xep_0163s_own_example_publishes_and_notifies_with_the_payload_as_sent() -> None:
    """XEP-0163 section 3: the owner's publish without an item id gets the id the service chose
    (XEP-0060 7.1.2), and the contact with tune+notify gets the notification with the very tune
    (section 4.3.2's shape: a message from the bare JID, <event><items node><item id>payload)."""
    world = two_people()
    alice, bob = world.alice, world.bob
    features = CLIENT_FEATURES + (TUNE + "+notify",)
    presence, _ver = caps_presence(features)
    bob.send(presence)
    answer_caps_query(bob, features)
    answer = alice.ask(XEP_0163_EXAMPLE_1)
    published = answer.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish[@node='{TUNE}']/{{{PUBSUB}}}item")
    assert answer.get("type") == "result" and published is not None and published.get("id")
    [message] = bob.stanzas()
    assert (message.get("from"), message.get("to"), message.get("type")) == (
        "alice@localhost", "bob@localhost/laptop", "headline")
    [event] = list(message)
    [items] = list(event)
    [item] = list(items)
    assert (event.tag, items.tag, items.get("node"), item.get("id")) == (
        f"{{{EVENT}}}event", f"{{{EVENT}}}items", TUNE, published.get("id"))
    sent = ET.fromstring(XEP_0163_EXAMPLE_1).find(f".//{{{TUNE}}}tune")
    assert sent is not None
    sent.tail = item[0].tail = None  # the whitespace after the element is not the element's
    assert ET.tostring(item[0]) == ET.tostring(sent)


def test_submitted_forms_whose_form_type_has_no_type_are_taken() -> None:
    """XEP-0068 1.3 lets a submitted form's FORM_TYPE come without type='hidden' (slixmpp and
    Profanity send it so): publish-options are then applied, not ignored (XEP-0060 7.1.5; OMEMO's
    open bundles), and Profanity's configuration form is applied, not refused (8.2.5). A
    publish-options element whose form is of another FORM_TYPE is bad-request, not ignored."""
    world = two_people()
    alice = world.alice
    eve = world.person("eve@localhost")
    typeless = ("<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
                f"<value>{PUBSUB}#publish-options</value></field><field var='pubsub#access_model'><value>open"
                "</value></field></x></publish-options>")
    assert publish(alice, DEVICELIST, "<list xmlns='eu.siacs.conversations.axolotl'><device id='1'/></list>",
                   options=typeless).get("type") == "result"
    read = eve.ask(f"<iq type='get' id='e2' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>"
                   f"<items node='{DEVICELIST}'/></pubsub></iq>")
    assert read.get("type") == "result"  # open, as asked
    publish(alice, NICK, f"<nick xmlns='{NICK}'>Alice</nick>")
    profanity = (f"<iq type='set' id='p2'><pubsub xmlns='{OWNER}'><configure node='{NICK}'>"
                 "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
                 f"<value>{PUBSUB}#node_config</value></field><field var='pubsub#access_model'><value>open</value>"
                 "</field><field var='pubsub#max_items'><value>1</value></field><field var='pubsub#publish_model'>"
                 "<value>publishers</value></field></x></configure></pubsub></iq>")
    assert alice.ask(profanity).get("type") == "result"
    read = eve.ask(f"<iq type='get' id='e3' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>"
                   f"<items node='{NICK}'/></pubsub></iq>")
    assert read.get("type") == "result"
    other = publish(alice, NICK, f"<nick xmlns='{NICK}'>A</nick>", options=typeless.replace(
        f"{PUBSUB}#publish-options", f"{PUBSUB}#node_config"))
    assert error_of(other) == ("modify", [f"{{{STANZAS}}}bad-request"])


def test_names_too_long_for_the_stores_index_are_refused() -> None:
    """A node name or item id over 1024 bytes (they are keys of an index, and PostgreSQL's rows
    hold some 2.7 KB) is policy-violation, and nothing is stored; so is asking for more than 100
    items by id at once."""
    world = two_people()
    alice = world.alice
    assert error_of(publish(alice, "n" * 1025, "<x xmlns='y'/>"))[1] == [f"{{{STANZAS}}}policy-violation"]
    assert error_of(publish(alice, "n", "<x xmlns='y'/>", "\u00e9" * 513))[1] == [f"{{{STANZAS}}}policy-violation"]
    assert publish(alice, "n" * 1024, "<x xmlns='y'/>", "i" * 1024).get("type") == "result"
    assert world.store.database.query("SELECT COUNT(*) FROM pep_items", ()) == [(1,)]
    ids = "".join(f"<item id='{n}'/>" for n in range(101))
    too_many = alice.ask(f"<iq type='get' id='i9'><pubsub xmlns='{PUBSUB}'><items node='n'>{ids}</items></pubsub></iq>")
    assert error_of(too_many) == ("modify", [f"{{{STANZAS}}}policy-violation"])  # at most 100 by id
