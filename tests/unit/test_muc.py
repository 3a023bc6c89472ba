"""The conference service (XEP-0045) from a client's side: rooms created on entry, presence with its
status codes, groupchat and private messages, subject, history, leaving, occupant ids (XEP-0421),
self-ping (XEP-0410), disco. The world here (a server with the service, raw XML in, exact
answers out) serves the other MUC tests too."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.config import MUCConfig, XMPPConfig
from sns_xmpp.xmpp.c2s import ClientStream, ClientStreamFactory
from sns_xmpp.xmpp.features import FeatureRegistry
from sns_xmpp.xmpp.features.built_in import install_features
from sns_xmpp.xmpp.features.muc import muc_service
from sns_xmpp.xmpp.features.muc.service import MUCService
from sns_xmpp.xmpp.routing import LocalRoute, StanzaRouter
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.synchronous_store import SynchronousStore
from tests.unit.test_limits import connect, factory_and_clock
from tests.unit.test_negotiation import HEADER, output

ROOM = "room@conference.localhost"
MUC = "http://jabber.org/protocol/muc"
USER = MUC + "#user"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@dataclass
class Client:
    jid: str  # full
    stream: ClientStream
    transport: StringTransport

    def send(self, xml: str) -> None:
        self.stream.dataReceived(xml.encode())

    def text(self) -> str:
        return output(self.transport)

    def read(self) -> list[ET.Element]:
        """What the server wrote since the last read, as elements."""
        return list(ET.fromstring(f"<all xmlns='jabber:client'>{self.text()}</all>"))


@dataclass
class World:
    sessions: SessionManager
    factory: ClientStreamFactory
    clock: MemoryReactorClock
    registry: FeatureRegistry
    store: SynchronousStore
    clients: list[Client] = field(default_factory=list)

    @property
    def muc(self) -> MUCService:
        found = muc_service(self.registry.services)
        assert found is not None
        return found

    def log_in(self, jid: str, resource: str = "r", display_name: str | None = None,
               available: bool = True) -> Client:
        stream, transport = connect(self.factory, f"192.0.2.{len(self.clients) // 2 + 1}")
        stream.dataReceived(HEADER.format(to="localhost").encode())
        self.sessions.bind(stream, LoginResult(jid, "PLAIN", display_name=display_name), resource)
        client = Client(f"{jid}/{resource}", stream, transport)
        if available:
            client.send("<presence/>")
        output(transport)
        self.clients.append(client)
        return client


def world(path: Path | str = ":memory:", **muc: Any) -> World:
    factory, clock = factory_and_clock()
    router = StanzaRouter()
    store = SynchronousStore(path)
    sessions = SessionManager(["localhost"], store, clock, router.route)  # type: ignore[arg-type]
    router.addRoute("localhost", LocalRoute(sessions.deliver))
    registry = install_features(sessions, router, clock, config=XMPPConfig(muc=MUCConfig(**muc)))
    return World(sessions, factory, clock, registry, store)


def join(client: Client, room: str = ROOM, nick: str = "", extra: str = "") -> list[ET.Element]:
    client.send(f"<presence to='{room}/{nick or client.jid.split('@')[0]}'><x xmlns='{MUC}'>{extra}</x></presence>")
    return client.read()


def instant(client: Client, room: str = ROOM) -> None:
    """Section 10.1.2: accept the default configuration."""
    client.send(f"<iq type='set' id='instant' to='{room}'><query xmlns='{MUC}#owner'>"
                "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
    [answer] = client.read()
    assert answer.get("type") == "result", ET.tostring(answer)


def configure(client: Client, fields: dict[str, str], room: str = ROOM) -> ET.Element:
    values = "".join(f"<field var='{var}'><value>{value}</value></field>" for var, value in fields.items())
    client.send(f"<iq type='set' id='conf' to='{room}'><query xmlns='{MUC}#owner'>"
                f"<x xmlns='jabber:x:data' type='submit'>{values}</x></query></iq>")
    answers = client.read()
    [answer] = [a for a in answers if a.tag.endswith("iq")]
    return answer


def codes(presence: ET.Element) -> list[str]:
    return [status.get("code", "") for status in presence.iter(f"{{{USER}}}status")]


def item(presence: ET.Element) -> dict[str, str]:
    found = presence.find(f"{{{USER}}}x/{{{USER}}}item")
    assert found is not None, ET.tostring(presence)
    return dict(found.attrib)


def condition(stanza: ET.Element) -> str:
    error = stanza.find("{jabber:client}error")
    assert error is not None and stanza.get("type") == "error", ET.tostring(stanza)
    return f"{error.get('type')}/{next(iter(error)).tag.split('}')[1]}"


def body(message: ET.Element) -> str | None:
    found = message.find("{jabber:client}body")
    return found.text if found is not None else None


def test_the_first_to_enter_creates_and_owns_a_locked_room_then_everyone_chats() -> None:
    """Section 10.1: the creator's own presence says 110 and 201, as owner and moderator, and
    the empty subject follows (7.2.16); others hear item-not-found until the owner accepts the
    instant room (10.1.2). Then a second user enters (7.2.3: the others' presence first, then
    its own; semi-anonymous: only the moderator sees its real JID), and a groupchat message
    reaches both, from the sender's occupant JID, with its id and an occupant id (XEP-0421)."""
    w = world()
    alice = w.log_in("alice@localhost")
    bob = w.log_in("bob@localhost")
    own, subject = join(alice, nick="Alice")
    assert own.get("from") == f"{ROOM}/Alice" and own.get("to") == "alice@localhost/r"
    assert codes(own) == ["110", "201"]
    assert item(own) == {"affiliation": "owner", "role": "moderator", "jid": "alice@localhost/r"}
    assert subject.tag == "{jabber:client}message" and subject.get("from") == ROOM
    assert subject.get("type") == "groupchat" and subject.find("{jabber:client}subject") is not None

    [refused] = join(bob, nick="Bob")
    assert refused.get("from") == f"{ROOM}/Bob" and condition(refused) == "cancel/item-not-found"
    instant(alice)

    alices_presence, own, subject = join(bob, nick="Bob")
    assert alices_presence.get("from") == f"{ROOM}/Alice"
    assert item(alices_presence) == {"affiliation": "owner", "role": "moderator"}  # no jid for bob
    assert codes(own) == ["110"] and item(own) == {"affiliation": "none", "role": "participant",
                                                   "jid": "bob@localhost/r"}
    assert subject.find("{jabber:client}subject") is not None
    [bob_arrives] = alice.read()
    assert item(bob_arrives) == {"affiliation": "none", "role": "participant", "jid": "bob@localhost/r"}
    occupant_id = bob_arrives.find("{urn:xmpp:occupant-id:0}occupant-id")
    assert occupant_id is not None and len(occupant_id.get("id", "")) == 24

    bob.send(f"<message to='{ROOM}' type='groupchat' id='m1'><body>hello &amp; welcome</body>"
             "<occupant-id xmlns='urn:xmpp:occupant-id:0' id='forged'/></message>")
    expected = (f"<message to='{{to}}' from='{ROOM}/Bob' type='groupchat' id='m1'><body>hello &amp; welcome</body>"
                f"<occupant-id xmlns='urn:xmpp:occupant-id:0' id='{occupant_id.get('id')}'/></message>")
    assert alice.text() == expected.format(to="alice@localhost/r")
    assert bob.text() == expected.format(to="bob@localhost/r")


def test_a_taken_nick_a_missing_nick_and_a_stranger_speaking_are_refused() -> None:
    """7.2.9: conflict; 7.2.2: a room JID with no nick is jid-malformed; 7.4 and 7.5: someone
    not in the room may neither speak nor whisper (not-acceptable); 7.5: a private message to an
    absent nick is item-not-found, and one of type groupchat is a bad-request."""
    w = world()
    alice, bob, carol = w.log_in("alice@localhost"), w.log_in("bob@localhost"), w.log_in("carol@localhost")
    join(alice, nick="Alice")
    instant(alice)
    [refused] = join(bob, nick="Alice")
    assert condition(refused) == "cancel/conflict" and refused.get("from") == f"{ROOM}/Alice"
    bob.send(f"<presence to='{ROOM}'/>")
    [refused] = bob.read()
    assert condition(refused) == "modify/jid-malformed"
    carol.send(f"<message to='{ROOM}' type='groupchat'><body>hi</body></message>")
    [refused] = carol.read()
    assert condition(refused) == "modify/not-acceptable" and refused.get("from") == ROOM
    carol.send(f"<message to='{ROOM}/Alice' type='chat'><body>psst</body></message>")
    assert condition(carol.read()[0]) == "modify/not-acceptable"
    join(bob, nick="Bob")
    alice.read()
    bob.send(f"<message to='{ROOM}/Nobody' type='chat'><body>psst</body></message>")
    assert condition(bob.read()[0]) == "cancel/item-not-found"
    bob.send(f"<message to='{ROOM}/Alice' type='groupchat'><body>psst</body></message>")
    assert condition(bob.read()[0]) == "modify/bad-request"
    assert alice.text() == ""


def test_private_messages_nick_changes_presence_updates_and_leaving() -> None:
    """7.5: a private message reaches one occupant from the sender's occupant JID with an empty
    #user x; 7.6: a nick change is unavailable with 303 and the new nick, then available; 7.3:
    a new show reaches everyone; 7.14: leaving is unavailable to all, 110 to oneself; the last
    one out of a temporary room ends it."""
    w = world()
    alice, bob = w.log_in("alice@localhost"), w.log_in("bob@localhost")
    join(alice, nick="Alice")
    instant(alice)
    join(bob, nick="Bob")
    alice.read()
    bob.send(f"<message to='{ROOM}/Alice' type='chat' id='p1'><body>psst</body></message>")
    [private] = alice.read()  # routed as any message to a user (MAM keeps it: a stanza-id)
    assert private.get("from") == f"{ROOM}/Bob" and private.get("id") == "p1" and body(private) == "psst"
    assert private.find(f"{{{USER}}}x") is not None
    assert bob.text() == ""

    bob.send(f"<presence to='{ROOM}/Robert'/>")
    gone, back = alice.read()
    assert gone.get("type") == "unavailable" and gone.get("from") == f"{ROOM}/Bob" and codes(gone) == ["303"]
    assert item(gone)["nick"] == "Robert" and back.get("from") == f"{ROOM}/Robert" and back.get("type") is None
    own_gone, own_back = bob.read()
    assert codes(own_gone) == ["303", "110"] and codes(own_back) == ["110"]
    [refused] = join(alice, nick="Robert")
    assert condition(refused) == "cancel/conflict"

    bob.send(f"<presence to='{ROOM}/Robert'><show>away</show></presence>")
    [away] = alice.read()
    assert away.findtext("{jabber:client}show") == "away" and item(away)["role"] == "participant"
    bob.read()

    bob.send(f"<presence to='{ROOM}/Robert' type='unavailable'><status>bye</status></presence>")
    [left] = alice.read()
    assert left.get("type") == "unavailable" and left.findtext("{jabber:client}status") == "bye"
    assert item(left) == {"affiliation": "none", "role": "none", "jid": "bob@localhost/r"}
    [own_left] = bob.read()
    assert codes(own_left) == ["110"]
    assert ROOM in w.muc.rooms
    alice.send(f"<presence to='{ROOM}/Alice' type='unavailable'/>")
    assert codes(alice.read()[0]) == ["110"]
    assert ROOM not in w.muc.rooms and w.muc.created == {}


def test_a_session_that_ends_leaves_its_rooms() -> None:
    """RFC 6121 4.6: the server sends unavailable presence to where the session sent directed
    presence; the room takes that as leaving."""
    w = world()
    alice, bob = w.log_in("alice@localhost"), w.log_in("bob@localhost")
    join(alice, nick="Alice")
    instant(alice)
    join(bob, nick="Bob")
    alice.read()
    bob.stream.connectionLost(None)  # type: ignore[arg-type]
    [left] = alice.read()
    assert left.get("type") == "unavailable" and left.get("from") == f"{ROOM}/Bob"
    assert list(w.muc.rooms[ROOM].occupants) == ["Alice"]


def test_a_session_that_never_sent_presence_still_leaves_its_rooms_as_it_ends() -> None:
    """A client may enter a room without its initial presence (go-sendxmpp does): its end sends
    the room no unavailable presence (RFC 6121 4.6 is about available sessions), so the service
    takes it out itself, with status 333, and the next message goes to no ghost."""
    w = world()
    alice = w.log_in("alice@localhost")
    quiet = w.log_in("bob@localhost", available=False)
    join(alice, nick="Alice")
    instant(alice)
    join(quiet, nick="Bob")
    alice.read()
    quiet.stream.connectionLost(None)  # type: ignore[arg-type]
    [left] = alice.read()
    assert left.get("type") == "unavailable" and left.get("from") == f"{ROOM}/Bob" and codes(left) == ["333"]
    assert list(w.muc.rooms[ROOM].occupants) == ["Alice"] and "bob@localhost/r" not in w.muc.occupancies


def test_history_goes_to_later_occupants_within_the_limits_they_ask() -> None:
    """7.2.15: the newest messages with bodies, each with a XEP-0203 delay from the room, before
    the subject; maxstanzas, maxchars and seconds each bound what is sent; the room keeps its
    configured number."""
    w = world(default_history=3)
    alice, bob = w.log_in("alice@localhost"), w.log_in("bob@localhost")
    join(alice, nick="Alice")
    instant(alice)
    for n in range(5):
        w.clock.advance(60)
        alice.send(f"<message to='{ROOM}' type='groupchat'><body>m{n}</body></message>")
    alice.send(f"<message to='{ROOM}' type='groupchat'><composing xmlns='http://jabber.org/protocol/chatstates'/>"
               "</message>")
    alice.read()
    received = join(bob, nick="Bob")
    history = [m for m in received if m.tag == "{jabber:client}message" and body(m)]
    assert [body(m) for m in history] == ["m2", "m3", "m4"]
    delay = history[0].find("{urn:xmpp:delay}delay")
    assert delay is not None and delay.get("from") == ROOM and delay.get("stamp") == "1970-01-01T00:03:00.000000Z"
    assert received[-1].find("{jabber:client}subject") is not None  # the subject comes last
    bob.send(f"<presence to='{ROOM}/Bob' type='unavailable'/>")
    for asked, expected in (("maxstanzas='1'", ["m4"]), ("maxchars='0'", []), ("seconds='90'", ["m3", "m4"]),
                            ("since='1970-01-01T00:04:00Z'", ["m3", "m4"]), ("maxstanzas='x'", ["m2", "m3", "m4"])):
        bob.read()
        received = join(bob, nick="Bob", extra=f"<history {asked}/>")
        assert [body(m) for m in received if m.tag == "{jabber:client}message" and body(m)] == expected, asked
        bob.send(f"<presence to='{ROOM}/Bob' type='unavailable'/>")


def test_the_subject_is_the_moderators_unless_the_room_lets_participants_change_it() -> None:
    """8.1: a message with a subject and no body changes it, for every occupant and for those who
    enter later; a participant is refused (forbidden) unless muc#roomconfig_changesubject."""
    w = world()
    alice, bob, carol = w.log_in("alice@localhost"), w.log_in("bob@localhost"), w.log_in("carol@localhost")
    join(alice, nick="Alice")
    instant(alice)
    join(bob, nick="Bob")
    alice.read()
    bob.send(f"<message to='{ROOM}' type='groupchat'><subject>mine</subject></message>")
    assert condition(bob.read()[0]) == "auth/forbidden"
    alice.send(f"<message to='{ROOM}' type='groupchat'><subject>Plans</subject></message>")
    assert bob.read()[0].findtext("{jabber:client}subject") == "Plans"
    *_, subject = join(carol, nick="Carol")
    assert subject.get("from") == f"{ROOM}/Alice" and subject.findtext("{jabber:client}subject") == "Plans"
    assert configure(alice, {"muc#roomconfig_changesubject": "1"}).get("type") == "result"
    bob.read()
    bob.send(f"<message to='{ROOM}' type='groupchat'><subject>ours</subject></message>")
    assert carol.read()[-1].findtext("{jabber:client}subject") == "ours"


def test_self_ping_is_answered_by_the_service_and_other_iqs_go_to_the_occupant() -> None:
    """XEP-0410 3.3: a ping to one's own occupant JID is answered by the room; from someone not
    in the room it is not-acceptable. An IQ to another occupant reaches its client from the
    asker's occupant JID, and the answer comes back with the asker's id."""
    w = world()
    alice, bob, carol = w.log_in("alice@localhost"), w.log_in("bob@localhost"), w.log_in("carol@localhost")
    join(alice, nick="Alice")
    instant(alice)
    join(bob, nick="Bob")
    alice.read()
    alice.send(f"<iq type='get' id='ping1' to='{ROOM}/Alice'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert alice.text() == f"<iq type='result' id='ping1' to='alice@localhost/r' from='{ROOM}/Alice'/>"
    carol.send(f"<iq type='get' id='ping2' to='{ROOM}/Alice'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert condition(carol.read()[0]) == "cancel/not-acceptable"
    bob.send(f"<iq type='get' id='v1' to='{ROOM}/Alice'><query xmlns='jabber:iq:version'/></iq>")
    [forwarded] = alice.read()
    assert forwarded.get("from") == f"{ROOM}/Bob" and forwarded.get("id") != "v1"
    alice.send(f"<iq type='result' id='{forwarded.get('id')}' to='{ROOM}/Bob'>"
               "<query xmlns='jabber:iq:version'><name>x</name></query></iq>")
    [answer] = bob.read()
    assert answer.get("id") == "v1" and answer.get("from") == f"{ROOM}/Alice" and answer.get("type") == "result"


def test_disco_finds_the_service_its_public_rooms_and_what_a_room_is() -> None:
    """6.1-6.4: the server lists conference.localhost; the service is conference/text with the
    MUC feature; its items are the unlocked public rooms; a room's info has its muc_* features,
    XEP-0421 and XEP-0410, and the muc#roominfo form."""
    w = world()
    alice = w.log_in("alice@localhost")
    alice.send("<iq type='get' id='d0' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert "<item jid='conference.localhost'/>" in alice.text()
    alice.send("<iq type='get' id='d1' to='conference.localhost'>"
               "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    info = alice.text()
    assert "<identity category='conference' type='text' name='Chat rooms'/>" in info
    assert f"<feature var='{MUC}'/>" in info
    join(alice, nick="Alice")
    alice.send("<iq type='get' id='d2' to='conference.localhost'>"
               "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert alice.text() == ("<iq type='result' id='d2' to='alice@localhost/r' from='conference.localhost'>"
                            "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")  # locked: not listed
    configure(alice, {"muc#roomconfig_roomname": "The Room"})
    alice.send("<iq type='get' id='d3' to='conference.localhost'>"
               "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert f"<item jid='{ROOM}' name='The Room'/>" in alice.text()
    alice.send(f"<iq type='get' id='d4' to='{ROOM}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    [answer] = alice.read()
    query = answer.find("{http://jabber.org/protocol/disco#info}query")
    assert query is not None
    features = [f.get("var") for f in query.iter("{http://jabber.org/protocol/disco#info}feature")]
    assert features == [MUC, "http://jabber.org/protocol/disco#info", "urn:xmpp:occupant-id:0",
                        MUC + "#self-ping-optimization", "muc_public", "muc_temporary", "muc_open",
                        "muc_unmoderated", "muc_semianonymous", "muc_unsecured"]
    fields = {f.get("var"): f.findtext("{jabber:x:data}value") for f in query.iter("{jabber:x:data}field")}
    assert fields["FORM_TYPE"] == MUC + "#roominfo" and fields["muc#roominfo_occupants"] == "1"
    assert fields["muc#roomconfig_roomname"] == "The Room"
    configure(alice, {"muc#roomconfig_publicroom": "0"})
    alice.send("<iq type='get' id='d6' to='conference.localhost'>"
               "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert "<item " not in alice.text()  # hidden (muc_hidden): not listed
    alice.send("<iq type='get' id='d5' to='nowhere@conference.localhost'>"
               "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert condition(alice.read()[0]) == "cancel/item-not-found"


@dataclass
class OtherNodes:
    """A cluster's side of the shared listing (cluster/listings.py), without Redis: what this
    node told it, and what the other nodes list."""

    theirs: dict[str, str]
    told: list[tuple[str, str, str | None]] = field(default_factory=list)

    def put(self, listing: str, entity: str, name: str | None) -> None:
        self.told.append((listing, entity, name))

    def others(self, listing: str) -> Deferred[dict[str, str]]:
        return succeed(dict(self.theirs))


def listed(client: Client) -> list[tuple[str | None, str | None]]:
    client.send("<iq type='get' id='items' to='conference.localhost'>"
                "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    [answer] = client.read()
    return [(found.get("jid"), found.get("name")) for found in answer.iter("{http://jabber.org/protocol/disco#items}item")]


def test_in_a_cluster_the_rooms_listed_are_the_stores_persistent_ones_and_every_nodes_temporary_ones() -> None:
    """6.3 in a cluster: the service tells the shared listing of each temporary public room of
    its memory as it is unlocked, renamed, hidden or gone (not of locked, hidden or persistent
    ones), and answers disco#items with the persistent public rooms of the store, the other
    nodes' temporary ones and its own, in the order of their JIDs, one node's answer."""
    w = world()
    others = OtherNodes({"far@conference.localhost": "", "near@conference.localhost": "Near"})
    listing = w.registry.listings["muc-rooms"]
    listing.across = others
    alice = w.log_in("alice@localhost")
    join(alice, nick="Alice")
    assert others.told == [], "a locked room is not listed"
    instant(alice)
    configure(alice, {"muc#roomconfig_roomname": "The Room"})
    for room, values in (("kept@conference.localhost", {"muc#roomconfig_persistentroom": "1",
                                                          "muc#roomconfig_roomname": "Kept"}),
                         ("hidden@conference.localhost", {"muc#roomconfig_publicroom": "0"})):
        join(alice, room, "Alice")
        configure(alice, values, room)
    assert others.told == [("muc-rooms", ROOM, ""), ("muc-rooms", ROOM, "The Room")]
    assert listed(alice) == [("far@conference.localhost", "far"), ("kept@conference.localhost", "Kept"),
                             ("near@conference.localhost", "Near"), (ROOM, "The Room")]
    assert listing.listed_here() == {ROOM: "The Room"}

    del others.told[:]
    configure(alice, {"muc#roomconfig_persistentroom": "1"})  # the store's now, not this node's memory's
    configure(alice, {"muc#roomconfig_persistentroom": "0"})
    configure(alice, {"muc#roomconfig_publicroom": "0"})
    alice.send("<presence type='unavailable' to='hidden@conference.localhost/Alice'/>")
    alice.read()
    assert others.told == [("muc-rooms", ROOM, None), ("muc-rooms", ROOM, "The Room"), ("muc-rooms", ROOM, None)]
    configure(alice, {"muc#roomconfig_publicroom": "1"})
    alice.send(f"<presence type='unavailable' to='{ROOM}/Alice'/>")  # a temporary room, empty: gone
    alice.read()
    assert others.told[-2:] == [("muc-rooms", ROOM, "The Room"), ("muc-rooms", ROOM, None)]
    alice.send("<iq type='set' id='gone' to='kept@conference.localhost'>"
               f"<query xmlns='{MUC}#owner'><destroy/></query></iq>")
    alice.read()
    assert listed(alice) == [("far@conference.localhost", "far"), ("near@conference.localhost", "Near")]


def test_a_non_anonymous_room_shows_every_real_jid_and_says_so() -> None:
    """7.2.4: with whois 'anyone' the entering occupant hears status 100, and participants see
    real JIDs; switching an existing room's whois tells the occupants 104 and 172 (10.2.1)."""
    w = world()
    alice, bob = w.log_in("alice@localhost"), w.log_in("bob@localhost")
    join(alice, nick="Alice")
    instant(alice)
    join(bob, nick="Bob")
    alice.read()
    configure(alice, {"muc#roomconfig_whois": "anyone"})
    [notice] = bob.read()
    assert notice.get("from") == ROOM and codes(notice) == ["104", "172"]
    bob.send(f"<presence to='{ROOM}/Bob' type='unavailable'/>")
    bob.read()
    alices, own, _subject = join(bob, nick="Bob")
    assert item(alices)["jid"] == "alice@localhost/r" and codes(own) == ["110", "100"]


def test_what_reaches_a_room_that_is_not_there_or_that_it_does_not_know() -> None:
    """A message to a room that does not exist is item-not-found; the reserved-nick query (7.12)
    is answered for it all the same (it asks about the user: the social login's display name);
    an IQ the room does not know is feature-not-implemented (get) or service-unavailable (set);
    an error presence from an occupant's client takes it out of the room (it is gone)."""
    w = world()
    rosa = w.log_in("rosa@localhost", display_name="Rosa R")
    bob = w.log_in("bob@localhost")
    rosa.send(f"<message to='{ROOM}' type='groupchat'><body>anyone?</body></message>")
    assert condition(rosa.read()[0]) == "cancel/item-not-found"
    rosa.send(f"<iq type='get' id='n' to='{ROOM}'><query xmlns='http://jabber.org/protocol/disco#info' "
              "node='x-roomuser-item'/></iq>")
    assert rosa.text() == (f"<iq type='result' id='n' to='rosa@localhost/r' from='{ROOM}'>"
                           "<query xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'>"
                           "<identity category='conference' type='text' name='Rosa R'/></query></iq>")
    assert ROOM not in w.muc.rooms
    join(rosa, nick="Rosa R")
    instant(rosa)
    rosa.send(f"<iq type='get' id='v' to='{ROOM}'><query xmlns='jabber:iq:version'/></iq>")
    assert condition(rosa.read()[0]) == "cancel/feature-not-implemented"
    rosa.send(f"<iq type='set' id='v' to='{ROOM}'><query xmlns='jabber:iq:version'/></iq>")
    assert condition(rosa.read()[0]) == "cancel/service-unavailable"
    join(bob, nick="Bob")
    rosa.read()
    bob.send(f"<presence to='{ROOM}/Bob' type='error'><error type='cancel'><gone xmlns='{STANZAS}'/></error>"
             "</presence>")
    [left] = rosa.read()
    assert left.get("type") == "unavailable" and left.get("from") == f"{ROOM}/Bob"
    assert list(w.muc.rooms[ROOM].occupants) == ["Rosa R"]
