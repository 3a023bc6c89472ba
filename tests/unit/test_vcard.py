"""vcard-temp (XEP-0054), the avatar hash in presence (XEP-0153 as XEP-0398 section 4 has servers
do it) and the site's name as a social user's first vCard, with Twisted's doubles: raw XML in,
the exact answers and error conditions out."""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.auth.scram import derive_all
from sns_xmpp.config import VCardConfig, XMPPConfig
from sns_xmpp.sites.interface import VerifiedAccount
from sns_xmpp.store import vcard as vcard_store
from sns_xmpp.store.records import RosterItem
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.features import caps, disco, pep, presence, roster, vcard
from sns_xmpp.xmpp.features.built_in import install_features
from sns_xmpp.xmpp.features.vcard import MAX_VCARD_BYTES
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.test_limits import connect, factory_and_clock
from tests.unit.test_negotiation import HEADER
from tests.unit.test_social_auth import OpenSite, _with_checker
from tests.unit.test_store import NOW, Backend, backend  # noqa: F401 - the fixture
from tests.unit.test_stream_management import MemoryStore, output, stanzas, world

VCARD = "vcard-temp"
UPDATE = "vcard-temp:x:update"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
CLIENT = "jabber:client"

# XEP-0054 section 3.2's example 3 (vCard Update Request), as the client sends it.
PETER = (
    "<vCard xmlns='vcard-temp'><FN>Peter Saint-Andre</FN><N><FAMILY>Saint-Andre</FAMILY><GIVEN>Peter</GIVEN>"
    "<MIDDLE/></N><NICKNAME>stpeter</NICKNAME><URL>http://www.xmpp.org/xsf/people/stpeter.shtml</URL>"
    "<BDAY>1966-08-06</BDAY><ORG><ORGNAME>XMPP Standards Foundation</ORGNAME><ORGUNIT/></ORG>"
    "<TITLE>Executive Director</TITLE><ROLE>Patron Saint</ROLE>"
    "<TEL><WORK/><VOICE/><NUMBER>303-308-3282</NUMBER></TEL>"
    "<ADR><WORK/><EXTADD>Suite 600</EXTADD><STREET>1899 Wynkoop Street</STREET><LOCALITY>Denver</LOCALITY>"
    "<REGION>CO</REGION><PCODE>80202</PCODE><CTRY>USA</CTRY></ADR>"
    "<EMAIL><INTERNET/><PREF/><USERID>stpeter@jabber.org</USERID></EMAIL><JABBERID>stpeter@jabber.org</JABBERID>"
    "<DESC>\n      Check out my blog at https://stpeter.im/\n    </DESC></vCard>"
)
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # not a real picture; the hash is of the bytes


def with_photo(image: bytes, fn: str = "Peter") -> str:
    encoded = base64.b64encode(image).decode()
    wrapped = "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))  # XEP-0153: line breaks allowed
    return (f"<vCard xmlns='vcard-temp'><FN>{fn}</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{wrapped}</BINVAL></PHOTO>"
            "</vCard>")


class Person:
    """A bound client: its stream, and what the server wrote to it since last asked."""

    def __init__(self, sessions: SessionManager, factory: Any, jid: str, host: str, login: LoginResult | None = None,
                 resource: str = "r") -> None:
        self.stream: ClientStream
        self.transport: StringTransport
        self.stream, self.transport = connect(factory, host)
        self.stream.dataReceived(HEADER.format(to="localhost").encode())
        sessions.bind(self.stream, login or LoginResult(jid, "PLAIN"), resource)
        output(self.transport)

    def send(self, xml: str) -> list[ET.Element]:
        self.stream.dataReceived(xml.encode())
        return self.received()

    def received(self) -> list[ET.Element]:
        return stanzas(output(self.transport))


def one(answers: list[ET.Element]) -> ET.Element:
    assert len(answers) == 1, [ET.tostring(a) for a in answers]
    return answers[0]


def error_of(answer: ET.Element) -> tuple[str | None, list[str]]:
    error = answer.find(f"{{{CLIENT}}}error")
    assert answer.get("type") == "error" and error is not None, ET.tostring(answer)
    return error.get("type"), [child.tag.split("}")[1] for child in error
                               if child.tag.startswith(f"{{{STANZAS}}}") and not child.tag.endswith("}text")]


def a_world(*accounts: str, config: XMPPConfig | None = None) -> tuple[SessionManager, Any, MemoryStore]:
    """The built-in features (with *config*) on a store holding *accounts*."""
    store = MemoryStore()
    for jid in accounts:
        store.database.create_account(jid, (), NOW)
    factory, clock = factory_and_clock()
    sessions = SessionManager(["localhost"], store, clock, lambda stanza: sessions.deliver(stanza))  # type: ignore[arg-type]
    install_features(sessions, config=config or XMPPConfig())
    return sessions, factory, store


def test_xep_0054_examples_own_vcard_and_another_users() -> None:
    """Section 3.1: the owner's vCard, never set, is an empty <vCard/>; section 3.2: the owner
    sets the example vCard and hears an empty result; section 3.3: another user gets it from the
    owner's bare JID, answered by the server, exactly as it was set."""
    sessions, factory, _store = a_world("stpeter@localhost", "jer@localhost")
    peter = Person(sessions, factory, "stpeter@localhost", "192.0.2.1")
    jer = Person(sessions, factory, "jer@localhost", "192.0.2.2")

    empty = one(peter.send("<iq id='v1' type='get'><vCard xmlns='vcard-temp'/></iq>"))
    assert (empty.get("type"), empty.get("id"), empty.get("from")) == ("result", "v1", None)
    [card] = empty
    assert card.tag == f"{{{VCARD}}}vCard" and len(card) == 0 and not (card.text or "").strip()

    done = one(peter.send(f"<iq id='v2' type='set'>{PETER}</iq>"))
    assert (done.get("type"), done.get("id"), len(done)) == ("result", "v2", 0)

    mine = one(peter.send("<iq id='v1b' type='get'><vCard xmlns='vcard-temp'/></iq>"))
    theirs = one(jer.send("<iq id='v3' type='get' to='stpeter@localhost'><vCard xmlns='vcard-temp'/></iq>"))
    assert (theirs.get("type"), theirs.get("from"), theirs.get("to")) == ("result", "stpeter@localhost",
                                                                         "jer@localhost/r")
    expected = ET.tostring(ET.fromstring(PETER))
    assert ET.tostring(mine[0]) == expected and ET.tostring(theirs[0]) == expected
    assert mine[0].findtext(f"{{{VCARD}}}N/{{{VCARD}}}GIVEN") == "Peter"


def test_xep_0054_errors_and_limits() -> None:
    """Section 3.2: setting another user's vCard is <forbidden/> (auth) and changes nothing;
    section 3.3: no vCard, and no such account, are the same <service-unavailable/> (so the
    answer tells nobody which accounts exist); a vCard over the size limit is <not-acceptable/>,
    a PHOTO whose BINVAL is not base64 <bad-request/>; neither is stored."""
    assert XMPPConfig().vcard.max_bytes == MAX_VCARD_BYTES
    # [xmpp.vcard] max_bytes, below the test streams' stanza limit.
    sessions, factory, store = a_world("alice@localhost", "bob@localhost",
                                       config=XMPPConfig(vcard=VCardConfig(max_bytes=2000)))
    alice = Person(sessions, factory, "alice@localhost", "192.0.2.1")
    bob = Person(sessions, factory, "bob@localhost", "192.0.2.2")
    alice.send("<iq id='s' type='set'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>")

    forged = one(bob.send("<iq id='f' type='set' to='alice@localhost'><vCard xmlns='vcard-temp'>"
                          "<FN>Mallory</FN></vCard></iq>"))
    assert error_of(forged) == ("auth", ["forbidden"])
    assert "<FN>Alice</FN>" in vcard_store.get_vcard(store.database, "alice@localhost").xml  # type: ignore[union-attr]

    for absent in ("bob@localhost", "nobody@localhost"):
        alice_asks = one(alice.send(f"<iq id='g' type='get' to='{absent}'><vCard xmlns='vcard-temp'/></iq>"))
        assert error_of(alice_asks) == ("cancel", ["service-unavailable"]), absent

    def sized(size: int) -> str:
        return "<vCard xmlns='vcard-temp'><DESC>" + "x" * (size - 47) + "</DESC></vCard>"

    assert len(sized(2000)) == 2000
    big = sized(2001)
    assert error_of(one(bob.send(f"<iq id='b' type='set'>{big}</iq>"))) == ("modify", ["not-acceptable"])
    assert one(alice.send(f"<iq id='fits' type='set'>{sized(2000)}</iq>")).get("type") == "result"
    bad = "<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>not*base64</BINVAL></PHOTO></vCard>"
    assert error_of(one(bob.send(f"<iq id='p' type='set'>{bad}</iq>"))) == ("modify", ["bad-request"])
    assert vcard_store.get_vcard(store.database, "bob@localhost") is None
    assert error_of(one(bob.send("<iq id='x' type='put'><vCard xmlns='vcard-temp'/></iq>")))[1] == ["bad-request"]


def photo_in(presence: ET.Element) -> str | None:
    """The text of the presence's XEP-0153 <photo/> ('' for an empty one), None without one."""
    photo = presence.find(f"{{{UPDATE}}}x/{{{UPDATE}}}photo")
    return None if photo is None else (photo.text or "")


def test_the_photo_hash_goes_into_presence_and_a_new_photo_goes_out_again() -> None:
    """XEP-0398 section 4: the server puts the vCard photo's hash in its user's available
    presence, broadcast and directed ('' while there is none), leaves a client's own <photo/>
    alone, and fills an <x/> without one. A new photo (XEP-0153 section 3.1) sends each
    available resource's presence again, to contacts and to the user's other resources, with
    the image's SHA-1; the same photo again sends nothing."""
    store = MemoryStore()
    for jid in ("alice@localhost", "bob@localhost"):
        store.database.create_account(jid, (), NOW)
    store.rosters["alice@localhost"] = {"bob@localhost": RosterItem("bob@localhost", subscription="both")}
    store.rosters["bob@localhost"] = {"alice@localhost": RosterItem("alice@localhost", subscription="both")}
    sessions, factory, _clock = world(store)
    bob = Person(sessions, factory, "bob@localhost", "192.0.2.2")
    bob.send("<presence/>")
    alice = Person(sessions, factory, "alice@localhost", "192.0.2.1", resource="phone")
    tablet = Person(sessions, factory, "alice@localhost", "192.0.2.3", resource="tablet")
    tablet.send("<presence/>")
    alice.send("<presence><show>away</show></presence>")
    [seen] = [p for p in bob.received() if p.get("from") == "alice@localhost/phone"]
    assert photo_in(seen) == "" and seen.findtext(f"{{{CLIENT}}}show") == "away"
    assert [photo_in(p) for p in tablet.received() if p.get("from") == "alice@localhost/phone"] == [""]

    answers = alice.send(f"<iq id='a' type='set'>{with_photo(IMAGE)}</iq>")
    digest = hashlib.sha1(IMAGE).hexdigest()
    assert [(a.tag.split("}")[1], a.get("from"), photo_in(a)) for a in answers] == [
        ("presence", "alice@localhost/phone", digest), ("presence", "alice@localhost/tablet", digest),
        ("iq", None, None)]
    again = bob.received()
    assert [(p.get("from"), photo_in(p), p.findtext(f"{{{CLIENT}}}show")) for p in again] == [
        ("alice@localhost/phone", digest, "away"), ("alice@localhost/tablet", digest, None)]
    mirrored = [p for p in tablet.received() if p.get("from") == "alice@localhost/phone"]
    assert [photo_in(p) for p in mirrored] == [digest]
    alice.send(f"<iq id='b' type='set'>{with_photo(IMAGE, fn='Alice')}</iq>")
    assert [p for p in bob.received() if p.tag == f"{{{CLIENT}}}presence"] == []

    alice.send(f"<presence><x xmlns='{UPDATE}'><photo/></x></presence>")  # "not ready to advertise"
    assert [photo_in(p) for p in bob.received()] == [""]
    alice.send(f"<presence><x xmlns='{UPDATE}'/></presence>")
    assert [photo_in(p) for p in bob.received()] == [digest]
    alice.send("<presence to='room@conference.localhost/alice'/>")  # directed (a MUC join): routed out
    alice.send("<presence type='unavailable'/>")
    assert [photo_in(p) for p in bob.received()] == [None]


def test_a_social_users_first_login_makes_the_sites_name_their_vcard() -> None:
    """A social login carries the site's name for the person: with no vCard stored, it becomes
    the FN, seen by the owner's very first get; a vCard the user set (even an empty one) is
    never replaced by a later login's name."""
    sessions, factory, store = a_world("rosa\\40demo@localhost", "sam\\40demo@localhost")
    rosa = Person(sessions, factory, "", "192.0.2.1",
                  LoginResult("rosa\\40demo@localhost", "PLAIN", site="demo", display_name="Rosa Parks"))
    card = one(rosa.send("<iq id='v' type='get'><vCard xmlns='vcard-temp'/></iq>"))[0]
    assert [(child.tag, child.text) for child in card] == [(f"{{{VCARD}}}FN", "Rosa Parks")]

    sam_login = LoginResult("sam\\40demo@localhost", "PLAIN", site="demo", display_name="Sam")
    sam = Person(sessions, factory, "", "192.0.2.2", sam_login)
    sam.send("<iq id='e' type='set'><vCard xmlns='vcard-temp'/></iq>")  # Sam clears his vCard
    [ended] = sessions.resources("sam\\40demo@localhost")
    sessions.unbind(ended)
    assert sessions.resources("sam\\40demo@localhost") == []
    sam = Person(sessions, factory, "", "192.0.2.4", sam_login)
    assert len(one(sam.send("<iq id='v' type='get'><vCard xmlns='vcard-temp'/></iq>"))[0]) == 0


def test_the_vcard_sql_in_each_engine(backend: Backend) -> None:  # noqa: F811 - the fixture
    """The feature's own table: a vCard replaces the last, the site's first vCard goes only where
    there is none and only for an existing account, and deleting the account takes it along."""
    db = backend.open()
    try:
        db.create_account("a@x", (), NOW)
        assert vcard_store.get_vcard(db, "a@x") is None and vcard_store.photo_hash(db, "a@x") is None
        assert vcard_store.put_first_vcard(db, "a@x", "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>", "", NOW)
        assert not vcard_store.put_first_vcard(db, "a@x", "<vCard xmlns='vcard-temp'><FN>B</FN></vCard>", "", NOW)
        assert not vcard_store.put_first_vcard(db, "nobody@x", "<vCard xmlns='vcard-temp'/>", "", NOW)
        assert vcard_store.get_vcard(db, "a@x") == vcard_store.StoredVCard(
            "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>", "")
        vcard_store.put_vcard(db, "a@x", "<vCard xmlns='vcard-temp'/>", "ab" * 20, NOW + 1)
        assert vcard_store.photo_hash(db, "a@x") == "ab" * 20
        with pytest.raises(Exception):  # noqa: B017 - the engines' own integrity errors
            vcard_store.put_vcard(db, "nobody@x", "<vCard xmlns='vcard-temp'/>", "", NOW)
        assert db.delete_account("a@x")
        assert backend.rows("SELECT COUNT(*) FROM vcards")[0][0] == 0
    finally:
        db.close()


# -- XEP-0398 (with PEP) ---------------------------------------------------------------------------

PUBSUB = "http://jabber.org/protocol/pubsub"
DATA = "urn:xmpp:avatar:data"
METADATA = "urn:xmpp:avatar:metadata"
OTHER_IMAGE = b"\xff\xd8\xff\xe0" + b"a JPEG, as far as its first bytes go" * 8


def pep_world(*accounts: str) -> tuple[SessionManager, Any, MemoryStore]:
    """The features the conversion needs, PEP among them, whatever the built-in list holds."""
    store = MemoryStore()
    for jid in accounts:
        store.database.create_account(jid, (), NOW)
    for owner, contact in zip(accounts, reversed(accounts), strict=True):
        if owner != contact:
            store.rosters[owner] = {contact: RosterItem(contact, subscription="both")}
    factory, clock = factory_and_clock()
    sessions = SessionManager(["localhost"], store, clock, lambda stanza: sessions.deliver(stanza))  # type: ignore[arg-type]
    install_features(sessions, features=(roster.FEATURE, presence.FEATURE, disco.FEATURE, caps.FEATURE, pep.FEATURE,
                                         vcard.FEATURE))
    return sessions, factory, store


def publish(node: str, item_id: str, payload: str, iq_id: str = "pub") -> str:
    return (f"<iq type='set' id='{iq_id}'><pubsub xmlns='{PUBSUB}'><publish node='{node}'>"
            f"<item id='{item_id}'>{payload}</item></publish></pubsub></iq>")


def items_of(person: Person, node: str) -> list[ET.Element]:
    [answer] = [s for s in person.send(f"<iq type='get' id='items'><pubsub xmlns='{PUBSUB}'><items node='{node}'/>"
                                       "</pubsub></iq>") if s.get("id") == "items"]
    assert answer.get("type") == "result", ET.tostring(answer)
    return list(answer.iterfind(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item"))


def vcard_of(person: Person) -> ET.Element:
    [answer] = [s for s in person.send("<iq id='vc' type='get'><vCard xmlns='vcard-temp'/></iq>")
                if s.get("id") == "vc"]
    return answer[0]


def test_a_pep_avatar_becomes_the_vcard_photo_and_a_vcard_photo_the_pep_avatar() -> None:
    """XEP-0398 section 3.1: the XEP-0084 examples' data then metadata publish put the image in
    the vCard's PHOTO (its TYPE from the metadata), keeping the vCard's other fields, and the
    contact sees the new hash in presence; an image whose SHA-1 is not its id, and metadata
    pointing only to a URL, change nothing; empty metadata (publishing disabled) takes the photo
    out. Section 3.2: a vCard set with a photo publishes it to the data node and its <info/> to
    the metadata node, under the image's SHA-1. Section 2: the account announces the conversion."""
    sessions, factory, _store = pep_world("alice@localhost", "bob@localhost")
    bob = Person(sessions, factory, "bob@localhost", "192.0.2.2")
    bob.send("<presence/>")
    alice = Person(sessions, factory, "alice@localhost", "192.0.2.1")
    alice.send("<presence/>")
    alice.send("<iq id='fn' type='set'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>")
    bob.received()
    features = {f.get("var") for f in one(alice.send(
        "<iq id='d' type='get' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ))[0]}
    assert {"urn:xmpp:pep-vcard-conversion:0", "vcard-temp"} <= features

    digest = hashlib.sha1(IMAGE).hexdigest()
    encoded = base64.b64encode(IMAGE).decode()
    alice.send(publish(DATA, digest, f"<data xmlns='{DATA}'>{encoded}</data>"))
    alice.send(publish(METADATA, digest, f"<metadata xmlns='{METADATA}'><info bytes='{len(IMAGE)}' id='{digest}'"
                                         " height='64' width='64' type='image/png'/></metadata>"))
    card = vcard_of(alice)
    assert card.findtext(f"{{{VCARD}}}FN") == "Alice"
    assert card.findtext(f"{{{VCARD}}}PHOTO/{{{VCARD}}}TYPE") == "image/png"
    assert base64.b64decode(card.findtext(f"{{{VCARD}}}PHOTO/{{{VCARD}}}BINVAL") or "") == IMAGE
    assert [photo_in(p) for p in bob.received() if p.tag == f"{{{CLIENT}}}presence"] == [digest]

    forged = hashlib.sha1(b"another picture").hexdigest()
    alice.send(publish(DATA, forged, f"<data xmlns='{DATA}'>{base64.b64encode(OTHER_IMAGE).decode()}</data>"))
    alice.send(publish(METADATA, forged, f"<metadata xmlns='{METADATA}'><info bytes='9' id='{forged}'"
                                         " type='image/jpeg'/></metadata>"))
    alice.send(publish(METADATA, "elsewhere", f"<metadata xmlns='{METADATA}'><info bytes='9' id='{forged}'"
                                              " type='image/jpeg' url='https://example.org/a.jpg'/></metadata>"))
    assert base64.b64decode(vcard_of(alice).findtext(f"{{{VCARD}}}PHOTO/{{{VCARD}}}BINVAL") or "") == IMAGE
    assert [p for p in bob.received() if p.tag == f"{{{CLIENT}}}presence"] == []

    alice.send(publish(METADATA, "off", f"<metadata xmlns='{METADATA}'/>"))
    assert vcard_of(alice).find(f"{{{VCARD}}}PHOTO") is None
    assert [photo_in(p) for p in bob.received() if p.tag == f"{{{CLIENT}}}presence"] == [""]

    other = hashlib.sha1(OTHER_IMAGE).hexdigest()
    untyped = with_photo(OTHER_IMAGE).replace("<TYPE>image/png</TYPE>", "")  # the type from the image's bytes
    set_answer = [s for s in alice.send(f"<iq id='v' type='set'>{untyped}</iq>") if s.get("id") == "v"]
    assert [s.get("type") for s in set_answer] == ["result"]
    [data] = [item for item in items_of(alice, DATA) if item.get("id") == other]
    assert base64.b64decode(data.findtext(f"{{{DATA}}}data") or "") == OTHER_IMAGE
    [newest] = items_of(alice, METADATA)
    info = newest.find(f"{{{METADATA}}}metadata/{{{METADATA}}}info")
    assert newest.get("id") == other and info is not None
    assert (info.get("id"), info.get("bytes"), info.get("type")) == (other, str(len(OTHER_IMAGE)), "image/jpeg")
    assert vcard_of(alice).findtext(f"{{{VCARD}}}FN") == "Peter"  # what the set said, not rewritten


def test_the_sites_name_is_also_the_first_nickname_in_pep() -> None:
    """XEP-0172 in PEP: the first login's name from the site, which made the vCard's FN, is
    published as the account's nickname too; a later login publishes nothing again."""
    sessions, factory, _store = pep_world("rosa\\40demo@localhost")
    login = LoginResult("rosa\\40demo@localhost", "PLAIN", site="demo", display_name="Rosa")
    rosa = Person(sessions, factory, "", "192.0.2.1", login)
    [nick] = items_of(rosa, "http://jabber.org/protocol/nick")
    assert nick.findtext("{http://jabber.org/protocol/nick}nick") == "Rosa"
    sessions.unbind(sessions.resources("rosa\\40demo@localhost")[0])
    rosa = Person(sessions, factory, "", "192.0.2.3", login)
    assert len(items_of(rosa, "http://jabber.org/protocol/nick")) == 1


class SlowReads(MemoryStore):
    """Reads answered only when the test says so (a round trip to PostgreSQL); writes at once."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[tuple[Deferred[Any], Callable[[Any], Any]]] = []

    def run_read(self, work: Callable[[Any], Any]) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        self.waiting.append((answer, work))
        return answer

    def answer_reads(self) -> None:
        while self.waiting:
            answer, work = self.waiting.pop(0)
            answer.callback(work(self.database))


def test_presence_sent_before_the_hash_is_read_waits_for_it() -> None:
    """The hash is read once, when the account's first session binds; a presence (or the owner's
    vCard get) that arrives before the read is answered is held, then goes on with the hash, in
    order, rather than without one."""
    store = SlowReads()
    for jid in ("alice@localhost", "bob@localhost"):
        store.database.create_account(jid, (), NOW)
    store.rosters["alice@localhost"] = {"bob@localhost": RosterItem("bob@localhost", subscription="both")}
    store.rosters["bob@localhost"] = {"alice@localhost": RosterItem("alice@localhost", subscription="both")}
    vcard_store.put_vcard(store.database, "alice@localhost", with_photo(IMAGE), hashlib.sha1(IMAGE).hexdigest(), NOW)
    sessions, factory, _clock = world(store)
    bob = Person(sessions, factory, "bob@localhost", "192.0.2.2")
    bob.send("<presence/>")
    store.answer_reads()
    alice = Person(sessions, factory, "alice@localhost", "192.0.2.1")
    assert len(store.waiting) == 1  # the hash, read at bind
    assert alice.send("<presence><status>first</status></presence>") == []
    assert alice.send("<presence><status>second</status></presence>") == []
    assert alice.send("<iq id='v' type='get'><vCard xmlns='vcard-temp'/></iq>") == []
    assert [p for p in bob.received() if p.get("from") == "alice@localhost/r"] == []
    store.answer_reads()
    digest = hashlib.sha1(IMAGE).hexdigest()
    assert [(p.findtext(f"{{{CLIENT}}}status"), photo_in(p)) for p in bob.received()] == [
        ("first", digest), ("second", digest)]
    store.answer_reads()  # the vCard get's own read
    [card] = [s for s in alice.received() if s.get("id") == "v"]
    assert card[0].findtext(f"{{{VCARD}}}FN") == "Peter"


def test_a_presence_held_for_the_hash_goes_nowhere_if_its_session_ends_and_on_without_a_hash_if_the_read_fails(
) -> None:
    """A session that ends while its presence waits for the hash leaves no presence behind (no
    contact sees it come online after it went); a read that fails lets presence go on without
    a hash rather than not at all."""
    store = SlowReads()
    for jid in ("alice@localhost", "bob@localhost"):
        store.database.create_account(jid, (), NOW)
    store.rosters["alice@localhost"] = {"bob@localhost": RosterItem("bob@localhost", subscription="both")}
    store.rosters["bob@localhost"] = {"alice@localhost": RosterItem("alice@localhost", subscription="both")}
    sessions, factory, _clock = world(store)
    bob = Person(sessions, factory, "bob@localhost", "192.0.2.2")
    bob.send("<presence/>")
    store.answer_reads()
    bob.received()  # his own presence, held for his hash until now
    Person(sessions, factory, "alice@localhost", "192.0.2.4", resource="tablet")  # keeps her roster loaded
    alice = Person(sessions, factory, "alice@localhost", "192.0.2.1")
    alice.send("<presence/>")
    [phone] = [s for s in sessions.resources("alice@localhost") if s.resource == "r"]
    sessions.unbind(phone)
    store.answer_reads()
    assert bob.received() == []

    def broken(work: Callable[[Any], Any]) -> Deferred[Any]:
        return defer.fail(RuntimeError("the store is down"))

    for left in sessions.resources("alice@localhost"):
        sessions.unbind(left)
    bob.received()
    store.run_read = broken  # type: ignore[method-assign]
    alice = Person(sessions, factory, "alice@localhost", "192.0.2.3")
    alice.send("<presence><status>here</status></presence>")
    assert [(p.findtext(f"{{{CLIENT}}}status"), photo_in(p)) for p in bob.received()] == [("here", None)]


class NamedSite(OpenSite):
    """A site that says the person's name, as an OpenID provider's `name` claim does."""

    def verify(self, identifier: str, token: str, now: float) -> Deferred[VerifiedAccount]:
        return defer.succeed(VerifiedAccount(self.site_id, identifier, now + 60, identifier.encode(),
                                             display_name="Ada Lovelace"))


@pytest_twisted.ensureDeferred
async def test_a_social_login_carries_the_sites_name_for_the_person(tmp_path: Path) -> None:
    """What the vCard feature reads at bind: the name the site vouched for (an hmac site's account
    name, all it says of the person; a provider's name claim), and none for a local account."""

    async def work(checker: Any, sites: Any, store: Any) -> None:
        sites.sites["named"] = NamedSite("named")
        identifier, token = sites.get("sns").mint("zoe", "s1", 1500)
        assert (await checker.check_plain(f"{identifier}@sns", token, None, "localhost")).display_name == "zoe"
        assert (await checker.check_plain("ada@named", "ok", None, "localhost")).display_name == "Ada Lovelace"
        await store.create_account("local@localhost", derive_all("secret"), 1000.0)
        local = await checker.check_plain("local", "secret", None, "localhost")
        assert (local.jid, local.display_name) == ("local@localhost", None)

    await _with_checker(tmp_path, work)


def test_without_pep_the_vcard_works_and_no_conversion_is_announced() -> None:
    """PEP turned off ([xmpp.features] disabled): vCards and the hash in presence work as before,
    and the account does not announce XEP-0398's conversion it cannot do."""
    store = MemoryStore()
    store.database.create_account("alice@localhost", (), NOW)
    factory, clock = factory_and_clock()
    sessions = SessionManager(["localhost"], store, clock, lambda stanza: sessions.deliver(stanza))  # type: ignore[arg-type]
    install_features(sessions, disabled=["pep"])
    assert "vcard-temp" in sessions.hooks.account_disco_features
    assert "urn:xmpp:pep-vcard-conversion:0" not in sessions.hooks.account_disco_features
    alice = Person(sessions, factory, "alice@localhost", "192.0.2.1")
    assert one(alice.send(f"<iq id='v' type='set'>{with_photo(IMAGE)}</iq>")).get("type") == "result"
    [reflected] = alice.send("<presence/>")
    assert photo_in(reflected) == hashlib.sha1(IMAGE).hexdigest()
