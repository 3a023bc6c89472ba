"""Message Archive Management (XEP-0313) for the user archive, with XEP-0359 stanza-ids and
XEP-0441 preferences, as a feature module: raw XML in through Twisted's doubles, exact answers
out; the archive's SQL on both engines."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.config import MAMConfig, XMPPConfig
from sns_xmpp.jid import InvalidFormat
from sns_xmpp.store import mam as archive_sql
from sns_xmpp.store.mam import ArchiveQuery, Prefs, UnknownArchiveId
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.features import FeatureRegistry
from sns_xmpp.xmpp.features.built_in import install_features
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.test_limits import connect, factory_and_clock
from tests.unit.test_negotiation import HEADER
from tests.unit.test_store import Backend, backend  # noqa: F401 (the fixture)
from tests.unit.test_stream_management import MemoryStore, output, stanzas

MAM = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
CLIENT = "jabber:client"
ALICE, BOB = "alice@localhost", "bob@localhost"


class World:
    """Alice and Bob, local accounts, each with one available resource; the archive's rows go to
    the MemoryStore's in-memory SQLite database (the real SQL)."""

    def __init__(self, **mam: Any) -> None:
        factory, self.clock = factory_and_clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore()
        for jid in (ALICE, BOB):
            self.store.database.create_account(jid, [], 0.0, social=True)
        self.sessions = SessionManager(["localhost"], self.store, self.clock,  # type: ignore[arg-type]
                                       lambda stanza: self.sessions.deliver(stanza))
        self.registry: FeatureRegistry = install_features(self.sessions, config=XMPPConfig(mam=MAMConfig(**mam)))
        self.clients: dict[str, tuple[ClientStream, StringTransport]] = {}
        for n, jid in enumerate((ALICE, BOB)):
            self.log_in(jid, "r", f"192.0.2.{n + 1}")

    def log_in(self, jid: str, resource: str, host: str) -> None:
        stream, transport = connect(self.factory_for(host), host)
        stream.dataReceived(HEADER.format(to="localhost").encode())
        self.sessions.bind(stream, LoginResult(jid, "PLAIN"), resource)
        stream.dataReceived(b"<presence/>")
        self.clients[f"{jid}/{resource}"] = (stream, transport)
        output(transport)

    def factory_for(self, host: str):
        factory, _ = factory_and_clock(clock=self.clock)
        return factory

    def send(self, full: str, xml: str) -> list[ET.Element]:
        """Feed *xml* to *full*'s stream; the stanzas written back to it."""
        stream, transport = self.clients[full]
        stream.dataReceived(xml.encode())
        return stanzas(output(transport))

    def read(self, full: str) -> list[ET.Element]:
        return stanzas(output(self.clients[full][1]))

    def chat(self, sender: str, to: str, body: str) -> None:
        self.send(sender, f"<message to='{to}' type='chat'><body>{body}</body></message>")

    def query(self, full: str, form: str = "", rsm: str = "", queryid: str = "q", extra: str = "") -> tuple[
            list[ET.Element], ET.Element]:
        """A query (section 4); the result messages and the final IQ."""
        output(self.clients[full][1])  # what came before (the chat itself) is not the answer
        x = (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM}</value>"
             f"</field>{form}</x>") if form else ""
        answer = self.send(full, f"<iq type='set' id='q1'><query xmlns='{MAM}' queryid='{queryid}'>{x}{rsm}{extra}"
                                 "</query></iq>")
        *results, iq = answer
        assert iq.tag == f"{{{CLIENT}}}iq" and iq.get("id") == "q1", ET.tostring(iq)
        return results, iq


def bodies(results: list[ET.Element]) -> list[str]:
    return [r.findtext(f"{{{MAM}}}result/{{{FORWARD}}}forwarded/{{{CLIENT}}}message/{{{CLIENT}}}body") or ""
            for r in results]


def fin_set(iq: ET.Element) -> dict[str, Any]:
    fin = iq.find(f"{{{MAM}}}fin")
    assert fin is not None, ET.tostring(iq)
    rsm = fin.find(f"{{{RSM}}}set")
    assert rsm is not None
    first = rsm.find(f"{{{RSM}}}first")
    return {"complete": fin.get("complete"), "first": rsm.findtext(f"{{{RSM}}}first"),
            "index": first.get("index") if first is not None else None,
            "last": rsm.findtext(f"{{{RSM}}}last"), "count": rsm.findtext(f"{{{RSM}}}count")}


def error_condition(iq: ET.Element) -> str:
    assert iq.get("type") == "error", ET.tostring(iq)
    error = iq.find(f"{{{CLIENT}}}error")
    assert error is not None
    [condition] = [child.tag.split("}")[1] for child in error if child.tag.endswith("}text") is False]
    return condition


# -- the feature --------------------------------------------------------------------------------


def test_messages_both_ways_are_archived_for_both_and_stamped_for_the_recipient_only() -> None:
    """Sections 3.5 and 4.2: what Alice sends Bob reaches Bob with a stanza-id by Bob's bare JID
    (and none of Alice's: her archive is not Bob's to read); each archive returns the messages
    both ways, oldest first, in <result queryid id><forwarded><delay/>original</forwarded>, and
    the IQ result's <fin complete='true'> names the first and last UIDs and the count."""
    world = World()
    world.chat(f"{ALICE}/r", BOB, "hello bob")
    [delivered] = world.read(f"{BOB}/r")
    stamps = delivered.findall(f"{{{SID}}}stanza-id")
    assert [(s.get("by"), bool(s.get("id"))) for s in stamps] == [(BOB, True)]
    world.clock.advance(2)
    world.chat(f"{BOB}/r", ALICE, "hello alice")
    [to_alice] = world.read(f"{ALICE}/r")
    [alice_stamp] = to_alice.findall(f"{{{SID}}}stanza-id")
    assert alice_stamp.get("by") == ALICE

    results, iq = world.query(f"{ALICE}/r")
    assert bodies(results) == ["hello bob", "hello alice"]
    for result in results:
        assert result.get("from") == ALICE and result.get("to") == f"{ALICE}/r"
        [item] = result
        assert item.tag == f"{{{MAM}}}result" and item.get("queryid") == "q"
        delay = item.find(f"{{{FORWARD}}}forwarded/{{urn:xmpp:delay}}delay")
        assert delay is not None and delay.get("stamp", "").startswith("2023-11-14T22:13:2")
    sent, received = (r.find(f"{{{MAM}}}result/{{{FORWARD}}}forwarded/{{{CLIENT}}}message") for r in results)
    assert sent is not None and received is not None
    assert (sent.get("from"), sent.get("to")) == (f"{ALICE}/r", BOB)
    assert (received.get("from"), received.get("to")) == (f"{BOB}/r", ALICE)
    ids = [r[0].get("id") for r in results]
    assert ids[1] == alice_stamp.get("id")  # the UID the message was stamped with
    assert fin_set(iq) == {"complete": "true", "first": ids[0], "index": "0", "last": ids[1], "count": "2"}

    bob_results, _ = world.query(f"{BOB}/r")
    assert bodies(bob_results) == ["hello bob", "hello alice"]
    assert bob_results[0][0].get("id") == stamps[0].get("id")


def test_paging_returns_every_message_once_in_order_forwards_and_backwards() -> None:
    """XEP-0059 through section 4.3: 23 messages in pages of 5, by <after/> from the start and by
    <before/> from the last page (<before/> empty), each give every message exactly once in
    order, the last page of each walk complete='true' and the others not; <max>0</max> gives
    the count alone; <index/> jumps."""
    world = World()
    for n in range(23):
        world.chat(f"{ALICE}/r" if n % 2 else f"{BOB}/r", BOB if n % 2 else ALICE, f"m{n}")
        world.clock.advance(0.5)
    expected = [f"m{n}" for n in range(23)]

    seen, after, pages = [], "", []
    while True:
        results, iq = world.query(f"{ALICE}/r", rsm=f"<set xmlns='{RSM}'><max>5</max>{after}</set>")
        page = fin_set(iq)
        seen += bodies(results)
        pages.append(page["complete"])
        if page["complete"] == "true":
            break
        assert page["count"] == "23" and page["index"] == str(len(seen) - len(results))
        after = f"<after>{page['last']}</after>"
    assert seen == expected and pages == [None] * 4 + ["true"]

    seen_backwards: list[str] = []
    before = "<before/>"
    while True:
        results, iq = world.query(f"{ALICE}/r", rsm=f"<set xmlns='{RSM}'><max>5</max>{before}</set>")
        page = fin_set(iq)
        seen_backwards = bodies(results) + seen_backwards
        if page["complete"] == "true":
            break
        before = f"<before>{page['first']}</before>"
    assert seen_backwards == expected

    results, iq = world.query(f"{ALICE}/r", rsm=f"<set xmlns='{RSM}'><max>0</max></set>")
    assert results == [] and fin_set(iq)["count"] == "23" and fin_set(iq)["first"] is None
    results, iq = world.query(f"{ALICE}/r", rsm=f"<set xmlns='{RSM}'><max>3</max><index>20</index></set>")
    assert bodies(results) == ["m20", "m21", "m22"] and fin_set(iq)["complete"] == "true"
    results, _ = world.query(f"{ALICE}/r", rsm=f"<set xmlns='{RSM}'><max>3</max></set>", extra="<flip-page/>")
    assert bodies(results) == ["m2", "m1", "m0"]


def test_filters_with_start_end_and_the_extended_ids() -> None:
    """Section 4.1: 'with' a bare JID matches every resource, a full JID only that one; 'start'
    and 'end' are inclusive XEP-0082 times; after-id and before-id bound without paging
    backwards; 'ids' fetches single messages; the metadata names the first and last."""
    world = World()
    world.log_in(BOB, "phone", "192.0.2.9")
    world.chat(f"{ALICE}/r", f"{BOB}/r", "to bob r")  # 2023-11-14T22:13:20Z
    world.clock.advance(60)
    world.chat(f"{ALICE}/r", f"{BOB}/phone", "to bob phone")  # 22:14:20
    world.clock.advance(60)
    world.chat(f"{ALICE}/r", ALICE, "note to self")  # 22:15:20
    world.clock.advance(60)
    world.chat(f"{BOB}/phone", ALICE, "from bob phone")  # 22:16:20

    def with_(jid: str) -> list[str]:
        return bodies(world.query(f"{ALICE}/r", f"<field var='with'><value>{jid}</value></field>")[0])

    assert with_(BOB) == ["to bob r", "to bob phone", "from bob phone"]
    assert with_(f"{BOB}/phone") == ["to bob phone", "from bob phone"]
    assert with_(ALICE) == ["note to self"]
    window = ("<field var='start'><value>2023-11-14T22:14:20Z</value></field>"
              "<field var='end'><value>2023-11-14T23:15:20+01:00</value></field>")
    results, iq = world.query(f"{ALICE}/r", window)
    assert bodies(results) == ["to bob phone", "note to self"] and fin_set(iq)["count"] == "2"

    everything, _ = world.query(f"{ALICE}/r")
    ids = [r[0].get("id") for r in everything]
    between = (f"<field var='after-id'><value>{ids[0]}</value></field>"
               f"<field var='before-id'><value>{ids[3]}</value></field>")
    assert bodies(world.query(f"{ALICE}/r", between)[0]) == ["to bob phone", "note to self"]
    picked = f"<field var='ids'><value>{ids[3]}</value><value>{ids[1]}</value></field>"
    assert bodies(world.query(f"{ALICE}/r", picked)[0]) == ["to bob phone", "from bob phone"]
    [meta] = world.send(f"{ALICE}/r", f"<iq type='get' id='m'><metadata xmlns='{MAM}'/></iq>")
    start, end = meta.find(f"{{{MAM}}}metadata/{{{MAM}}}start"), meta.find(f"{{{MAM}}}metadata/{{{MAM}}}end")
    assert start is not None and end is not None
    assert (start.get("id"), end.get("id")) == (ids[0], ids[3])
    assert end.get("timestamp", "").startswith("2023-11-14T22:16:20")


def test_what_is_not_archived() -> None:
    """Section 5.1.1: no errors, headlines, groupchat, messages without a body (a chat state),
    nor those with the <no-store/> or <no-permanent-store/> hint; <store/> archives a message
    without a body. None of them gets a stanza-id."""
    world = World()
    for xml in ("<message to='bob@localhost' type='headline'><body>h</body></message>",
                "<message to='bob@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/>"
                "</message>",
                "<message to='bob@localhost' type='chat'><body>n</body><no-store xmlns='urn:xmpp:hints'/></message>",
                "<message to='bob@localhost'><body>p</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>"):
        world.send(f"{ALICE}/r", xml)
    for delivered in world.read(f"{BOB}/r"):
        assert delivered.find(f"{{{SID}}}stanza-id") is None, ET.tostring(delivered)
    world.send(f"{ALICE}/r", "<message to='bob@localhost' type='chat'><store xmlns='urn:xmpp:hints'/>"
                             "<x xmlns='urn:example'/></message>")
    results, _ = world.query(f"{BOB}/r")
    assert len(results) == 1 and results[0].find(".//{urn:example}x") is not None


def test_a_stanza_id_claiming_to_be_the_recipients_is_removed() -> None:
    """XEP-0359 section 5: a stanza-id whose 'by' is the recipient's bare JID, arriving from
    outside, could make a client think the message was archived under that id: it is removed
    (even from a message that is not archived), and replaced by the server's own; one by another
    entity (a MUC, a remote archive) is left alone."""
    world = World()
    world.send(f"{ALICE}/r", f"<message to='bob@localhost' type='chat'><body>x</body>"
                             f"<stanza-id xmlns='{SID}' by='bob@localhost' id='forged'/>"
                             f"<stanza-id xmlns='{SID}' by='Bob@LOCALHOST' id='forged-too'/>"
                             f"<stanza-id xmlns='{SID}' by='room@muc.example.org' id='theirs'/></message>")
    [delivered] = world.read(f"{BOB}/r")
    stamps = [(s.get("by"), s.get("id")) for s in delivered.findall(f"{{{SID}}}stanza-id")]
    assert ("room@muc.example.org", "theirs") in stamps and len(stamps) == 2
    [(by, uid)] = [s for s in stamps if s[0] == BOB]
    assert uid not in ("forged", "forged-too")
    results, _ = world.query(f"{BOB}/r")
    [archived] = results
    assert archived[0].get("id") == uid
    stored = archived.find(f".//{{{FORWARD}}}forwarded/{{{CLIENT}}}message")
    assert stored is not None and "forged" not in ET.tostring(stored).decode()
    world.send(f"{ALICE}/r", f"<message to='bob@localhost' type='headline'><body>h</body>"
                             f"<stanza-id xmlns='{SID}' by='bob@localhost' id='forged'/></message>")
    [headline] = world.read(f"{BOB}/r")
    assert headline.find(f"{{{SID}}}stanza-id") is None


def test_a_sent_messages_stanza_id_reaches_the_carbon_copy_not_the_contact() -> None:
    """Section 3.5: the stanza-id of a message the account sends goes in its XEP-0280 copy to
    the account's other resources, never to the contact."""
    world = World()
    world.log_in(ALICE, "desktop", "192.0.2.7")
    for resource in ("r", "desktop"):
        world.send(f"{ALICE}/{resource}", "<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
    world.chat(f"{ALICE}/r", BOB, "carbon me")
    [delivered] = world.read(f"{BOB}/r")
    assert [s.get("by") for s in delivered.findall(f"{{{SID}}}stanza-id")] == [BOB]
    [copy] = world.read(f"{ALICE}/desktop")
    original = copy.find(f"{{urn:xmpp:carbons:2}}sent/{{{FORWARD}}}forwarded/{{{CLIENT}}}message")
    assert original is not None
    [stamp] = original.findall(f"{{{SID}}}stanza-id")
    [archived], _ = world.query(f"{ALICE}/r")
    assert stamp.get("by") == ALICE and stamp.get("id") == archived[0].get("id")


def test_preferences_are_kept_and_decide_what_is_archived() -> None:
    """XEP-0441: the default answer is 'always' with empty lists; a set is answered with the
    preferences as set, normalised; 'never' for a JID leaves its messages out (and unstamped);
    default 'roster' archives only contacts on the roster (or in 'always')."""
    world = World()
    [default] = world.send(f"{ALICE}/r", f"<iq type='get' id='p'><prefs xmlns='{MAM}'/></iq>")
    prefs = default.find(f"{{{MAM}}}prefs")
    assert prefs is not None and prefs.get("default") == "always" and not prefs.findall(f".//{{{MAM}}}jid")
    [answer] = world.send(f"{ALICE}/r", f"<iq type='set' id='p'><prefs xmlns='{MAM}' default='roster'>"
                                         f"<always><jid>Carol@Localhost</jid></always>"
                                         f"<never><jid>bob@localhost</jid></never></prefs></iq>")
    prefs = answer.find(f"{{{MAM}}}prefs")
    assert prefs is not None and prefs.get("default") == "roster"
    assert [j.text for j in prefs.findall(f"{{{MAM}}}always/{{{MAM}}}jid")] == ["carol@localhost"]
    assert [j.text for j in prefs.findall(f"{{{MAM}}}never/{{{MAM}}}jid")] == [BOB]
    assert world.store.database.query("SELECT default_mode FROM mam_prefs WHERE owner = ?", (ALICE,)) == [("roster",)]

    world.chat(f"{BOB}/r", ALICE, "not kept")
    [delivered] = world.read(f"{ALICE}/r")
    assert delivered.find(f"{{{SID}}}stanza-id") is None
    assert world.query(f"{ALICE}/r")[0] == []
    assert bodies(world.query(f"{BOB}/r")[0]) == ["not kept"]  # Bob's archive is his

    world.send(f"{ALICE}/r", f"<iq type='set' id='p'><prefs xmlns='{MAM}' default='always'/></iq>")
    assert world.store.database.query("SELECT COUNT(*) FROM mam_prefs") == [(0,)]
    world.chat(f"{BOB}/r", ALICE, "kept")
    assert bodies(world.query(f"{ALICE}/r")[0]) == ["kept"]


def test_bad_queries_get_the_xeps_errors_and_only_the_owner_may_query() -> None:
    """Section 4.1.5: an unknown field is feature-not-implemented; a wrong FORM_TYPE, a time that
    is not XEP-0082 or RSM <after/> with <before/> is bad-request; an unknown UID (RSM after, or
    after-id) is item-not-found (section 4.3.2); another account's archive is forbidden
    (section 7.1); the form's fields are listed for a get."""
    world = World()
    world.chat(f"{ALICE}/r", BOB, "one")

    def condition(xml: str) -> str:
        [iq] = world.send(f"{ALICE}/r", xml)
        return error_condition(iq)

    def form(fields: str) -> str:
        return (f"<iq type='set' id='e'><query xmlns='{MAM}'><x xmlns='jabber:x:data' type='submit'>{fields}"
                "</x></query></iq>")

    hidden = f"<field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>"
    assert condition(form(hidden + "<field var='include-groupchat'><value>true</value></field>")) == \
        "feature-not-implemented"
    assert condition(form("<field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field>")) == "bad-request"
    assert condition(form(hidden + "<field var='start'><value>yesterday</value></field>")) == "bad-request"
    assert condition(form(hidden + "<field var='start'><value>2010-08-07</value></field>")) == "bad-request"
    assert condition(form(hidden + "<field var='after-id'><value>123-nope</value></field>")) == "item-not-found"
    assert condition(f"<iq type='set' id='e'><query xmlns='{MAM}'><set xmlns='{RSM}'><after>zz</after></set>"
                     "</query></iq>") == "item-not-found"
    assert condition(f"<iq type='set' id='e'><query xmlns='{MAM}'><set xmlns='{RSM}'><after>a</after><before/>"
                     "</set></query></iq>") == "bad-request"
    assert condition(f"<iq type='set' id='e' to='{BOB}'><query xmlns='{MAM}'/></iq>") == "forbidden"
    [fields] = world.send(f"{ALICE}/r", f"<iq type='get' id='f'><query xmlns='{MAM}'/></iq>")
    assert [f.get("var") for f in fields.iter("{jabber:x:data}field")] == [
        "FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"]
    results, iq = world.query(f"{ALICE}/r", rsm=f"<set xmlns='{RSM}'><max>100000</max></set>")
    assert bodies(results) == ["one"] and fin_set(iq)["complete"] == "true"


def test_each_batch_is_one_transaction_and_nothing_is_lost_at_stop() -> None:
    """Rows are written off the message's path: none while the batch is neither full nor old, one
    transaction per batch when it is, and whatever waits is written when the server stops (the
    registry's stop actions run before the store closes). A query sees unwritten rows: it
    flushes first."""
    world = World(flush_rows=4, flush_interval_ms=500)
    transactions: list[int] = []
    run = world.store.run_aside

    def counting(work: Any) -> Any:
        if getattr(work, "func", None) is archive_sql.write_rows:
            transactions.append(len(work.keywords["rows"]))
        return run(work)

    world.store.run_aside = counting  # type: ignore[method-assign]
    world.chat(f"{ALICE}/r", BOB, "a")  # two rows: Alice's and Bob's
    assert transactions == []
    world.chat(f"{ALICE}/r", BOB, "b")
    assert transactions == [4]
    world.chat(f"{ALICE}/r", BOB, "c")
    world.clock.advance(0.5)
    assert transactions == [4, 2]
    world.chat(f"{ALICE}/r", BOB, "d")
    assert bodies(world.query(f"{BOB}/r")[0]) == ["a", "b", "c", "d"]
    assert transactions == [4, 2, 2]
    world.chat(f"{ALICE}/r", BOB, "e")
    stopped = world.registry.stop()
    assert stopped.called and transactions == [4, 2, 2, 2]
    count = world.store.database.query("SELECT owner, COUNT(*) FROM mam_messages GROUP BY owner ORDER BY owner")
    assert count == [(ALICE, 5), (BOB, 5)]


def test_messages_for_an_account_with_no_session_are_archived_once_and_stored_stamped() -> None:
    """A message kept offline is archived too, and the stored copy carries its stanza-id; a
    message delivered again (XEP-0198's unacknowledged stanzas) is not archived twice."""
    world = World()
    world.store.database.create_account("carol@localhost", [], 0.0, social=True)
    world.chat(f"{ALICE}/r", "carol@localhost", "while you were out")
    [kept] = world.store.offline["carol@localhost"]
    stored = ET.fromstring(kept.stanza)
    [stamp] = stored.findall(f"{{{SID}}}stanza-id")
    assert stamp.get("by") == "carol@localhost"
    world.registry.stop()
    assert world.store.database.query("SELECT id FROM mam_messages WHERE owner = ?", ("carol@localhost",)) == [
        (stamp.get("id"),)]


# -- the SQL, on both engines -------------------------------------------------------------------


def test_the_archives_sql_in_each_engine(backend: Backend) -> None:  # noqa: F811
    """The rows keep the order given, a row of an unknown account is left out, the filters and
    pages read the same in SQLite and PostgreSQL, an unknown UID is refused, expiry takes the
    oldest first in bounded batches, and preferences round-trip."""
    db = backend.open()
    try:
        db.create_account(ALICE, [], 1.0, social=True)
        db.create_account(BOB, [], 1.0, social=True)
        rows = []
        for n in range(10):
            seq = archive_sql.seq_at(1000 + n)
            rows.append((seq, ALICE, f"{seq:x}-t", BOB if n % 3 else "carol@x", "r" if n % 2 else "", f"<m>{n}</m>"))
        rows.append((archive_sql.seq_at(2000), "nobody@localhost", "x-t", BOB, "", "<m/>"))
        assert archive_sql.write_rows(db, rows) == 10
        assert archive_sql.write_rows(db, rows[:2]) == 0  # their seqs are taken: left out, no error

        def page(**asked: Any) -> archive_sql.Page:
            return archive_sql.query(db, ArchiveQuery(owner=ALICE, **{"max": 4, **asked}))

        first = page()
        assert [r[2] for r in first.rows] == ["<m>0</m>", "<m>1</m>", "<m>2</m>", "<m>3</m>"]
        assert (first.count, first.first_index, first.complete) == (10, 0, False)
        assert first.rows[0][1] == 1000.0
        last = page(last_page=True)
        assert [r[2] for r in last.rows] == [f"<m>{n}</m>" for n in (6, 7, 8, 9)] and last.first_index == 6
        assert page(before=last.rows[0][0]).first_index == 2
        assert [r[2] for r in page(with_bare=BOB, with_resource="r", max=10).rows] == [
            f"<m>{n}</m>" for n in (1, 5, 7)]
        assert page(start=1003, end=1004, max=10).count == 2
        assert [r[2] for r in page(after=first.rows[3][0], max=10).rows][0] == "<m>4</m>"
        with pytest.raises(UnknownArchiveId):
            page(after="5-t")
        with pytest.raises(UnknownArchiveId):
            page(ids=(first.rows[0][0], "zz"))
        assert archive_sql.metadata(db, BOB) is None
        meta = archive_sql.metadata(db, ALICE)
        assert meta is not None and meta[0][1] == 1000.0 and meta[1][1] == 1009.0

        assert archive_sql.expire(db, 1005, limit=3) == 3
        assert archive_sql.expire(db, 1005, limit=3) == 2
        assert archive_sql.expire(db, 1005, limit=3) == 0
        assert page(max=0).count == 5

        archive_sql.put_prefs(db, ALICE, Prefs("never", frozenset({BOB}), frozenset()))
        assert archive_sql.all_prefs(db) == {ALICE: Prefs("never", frozenset({BOB}), frozenset())}
        archive_sql.delete_prefs(db, ALICE)
        assert archive_sql.all_prefs(db) == {}
        assert db.delete_account(ALICE)
        assert db.query("SELECT COUNT(*) FROM mam_messages") == [(0,)]
        # More rows than one statement takes on SQLite, in one batch with an unknown account's
        # (ALICE's, deleted just now).
        many = [(archive_sql.seq_at(3000 + n), BOB, f"m{n}", ALICE, "", "<m/>") for n in range(1200)]
        assert archive_sql.write_rows(db, [*many[:700], rows[0], *many[700:]]) == 1200
        assert archive_sql.query(db, ArchiveQuery(owner=BOB, max=0)).count == 1200
    finally:
        db.close()


def test_the_writer_gives_the_store_nothing_on_the_clock_until_it_must() -> None:
    """No timer runs while nothing waits; the retention sweep runs on the clock and reschedules."""
    world = World(retention_days=1)
    clock: MemoryReactorClock = world.clock
    world.chat(f"{ALICE}/r", BOB, "old")
    world.clock.advance(1)
    assert world.store.database.query("SELECT COUNT(*) FROM mam_messages") == [(2,)]
    clock.advance(2 * 86400)
    assert world.store.database.query("SELECT COUNT(*) FROM mam_messages") == [(0,)]
    assert any(call.active() for call in clock.getDelayedCalls())


def test_a_batch_the_store_fails_is_written_with_the_next_in_its_place() -> None:
    """A database that fails a moment (PostgreSQL restarting) loses no archived message: the
    failed batch's rows go back in front and are written with the next batch, in their order;
    a batch that keeps failing is given up after a few tries, so it cannot hold up the rest."""
    from twisted.internet import defer

    world = World(flush_rows=2)
    failing = [1]
    run = world.store.run_aside

    def flaky(work: Any) -> Any:
        if getattr(work, "func", None) is archive_sql.write_rows and failing[0]:
            failing[0] -= 1
            return defer.fail(RuntimeError("the database went away"))
        return run(work)

    world.store.run_aside = flaky  # type: ignore[method-assign]
    world.chat(f"{ALICE}/r", BOB, "first")  # its batch fails
    assert world.store.database.query("SELECT COUNT(*) FROM mam_messages") == [(0,)]
    world.clock.advance(1)  # written again
    world.chat(f"{ALICE}/r", BOB, "second")
    assert bodies(world.query(f"{BOB}/r")[0]) == ["first", "second"]

    failing[0] = 10
    world.chat(f"{ALICE}/r", BOB, "lost")
    for _ in range(3):
        world.clock.advance(1)
    assert failing[0] == 10 - 3  # three tries, then given up
    failing[0] = 0
    world.chat(f"{ALICE}/r", BOB, "third")
    assert bodies(world.query(f"{BOB}/r")[0]) == ["first", "second", "third"]


def test_a_store_that_falls_behind_slows_the_sender_and_loses_no_message() -> None:
    """Flow control, not loss: once half of max_buffered_rows wait or are being written, the
    client whose message adds one stops being read (its connection paused) until the store is
    back under a quarter; what it already sent is delivered and archived. Before, a store that
    fell behind made every message past the bound go unarchived (the benchmark's closed loop, on
    a fast machine: most of them)."""
    from twisted.internet import defer

    world = World(flush_rows=10, max_buffered_rows=100)  # paused from 50 rows, read again at 25
    writes: list[tuple[defer.Deferred[Any], Any]] = []
    run = world.store.run_aside

    def slow(work: Any) -> Any:
        if getattr(work, "func", None) is archive_sql.write_rows:
            d: defer.Deferred[Any] = defer.Deferred()
            writes.append((d, work))
            return d
        return run(work)

    world.store.run_aside = slow  # type: ignore[method-assign]
    alice_transport = world.clients[f"{ALICE}/r"][1]
    bob_transport = world.clients[f"{BOB}/r"][1]

    def write_one() -> None:
        d, work = writes.pop(0)
        d.callback(run(work).result)

    for n in range(25):  # two rows each: 50 waiting or being written, the sender's checked at 49
        world.chat(f"{ALICE}/r", BOB, f"m{n}")
    assert alice_transport.producerState == "producing"
    world.chat(f"{ALICE}/r", BOB, "m25")  # its row is the 51st
    assert alice_transport.producerState == "paused" and bob_transport.producerState == "producing"
    # A read already under way goes on: its messages are delivered and archived (the bound, 100,
    # is far off), then the client waits in its socket.
    world.chat(f"{ALICE}/r", BOB, "m26")
    assert [b.findtext(f"{{{CLIENT}}}body") for b in world.read(f"{BOB}/r")][-2:] == ["m25", "m26"]
    assert len(writes) == 5  # 50 rows being written, 4 waiting
    for _ in range(2):
        write_one()  # 34 rows left: still above 25
    assert alice_transport.producerState == "paused"
    write_one()  # 24
    assert alice_transport.producerState == "producing"
    while writes:
        write_one()
    world.clock.advance(1)  # the last rows' timer
    while writes:
        write_one()
    assert world.store.database.query("SELECT COUNT(*) FROM mam_messages") == [(54,)]
    assert "mam-backlog" not in _limits_hit(world)


def test_held_senders_do_not_wait_for_a_batch_that_would_never_fill() -> None:
    """With flush_rows above the point where senders are held, the waiting rows go to the store
    at once rather than when their batch is full or old: the held sender is read again as soon as
    they are written, not after flush_interval_ms."""
    world = World(flush_rows=1000, flush_interval_ms=60000, max_buffered_rows=100)
    alice_transport = world.clients[f"{ALICE}/r"][1]
    for n in range(26):
        world.chat(f"{ALICE}/r", BOB, f"m{n}")
    # The 26th message's row for its sender is the 51st: held, and the 51 rows written (the clock stands).
    assert world.store.database.query("SELECT COUNT(*) FROM mam_messages") == [(51,)]
    assert alice_transport.producerState == "producing"
    assert "mam-backlog" not in _limits_hit(world)


def test_held_senders_do_not_hurry_a_failed_batch_into_its_next_tries() -> None:
    """A batch the store failed is tried again on its timer, even while senders are held: a sender
    held meanwhile does not send it to the store at once, which would use up its tries (and give
    its rows up) within one moment of a database that is down."""
    from twisted.internet import defer

    world = World(flush_rows=1000, flush_interval_ms=500, max_buffered_rows=100)
    attempts = [0]
    run = world.store.run_aside

    def failing_once(work: Any) -> Any:
        if getattr(work, "func", None) is archive_sql.write_rows:
            attempts[0] += 1
            if attempts[0] == 1:
                return defer.fail(RuntimeError("the database went away"))
        return run(work)

    world.store.run_aside = failing_once  # type: ignore[method-assign]
    for n in range(26):  # the 26th holds Alice and sends the 51 rows waiting: that write fails
        world.chat(f"{ALICE}/r", BOB, f"a{n}")
    assert attempts == [1] and world.clients[f"{ALICE}/r"][1].producerState == "paused"
    world.chat(f"{BOB}/r", ALICE, "b")  # Bob is held too; the failed rows wait for their timer
    assert attempts == [1] and world.clients[f"{BOB}/r"][1].producerState == "paused"
    world.clock.advance(0.5)
    assert attempts == [2]
    assert world.store.database.query("SELECT COUNT(*) FROM mam_messages") == [(54,)]
    assert {world.clients[f"{jid}/r"][1].producerState for jid in (ALICE, BOB)} == {"producing"}


def _limits_hit(world: World) -> set[str]:
    metric = world.sessions.metrics.limits_hit
    return {sample.labels["limit"] for family in metric.collect() for sample in family.samples
            if sample.name.endswith("_total") and sample.value}


def test_query_results_a_session_never_acknowledged_are_not_kept_offline() -> None:
    """XEP-0198 delivers a session's unacknowledged messages again when it ends; MAM results are
    answers to that session's query, so they are dropped instead of landing in offline storage
    (and in the next client's inbox); an ordinary unacknowledged message is still kept."""
    world = World()
    world.chat(f"{BOB}/r", ALICE, "archived")
    stream, transport = world.clients[f"{ALICE}/r"]
    stream.dataReceived(b"<enable xmlns='urn:xmpp:sm:3'/>")
    output(transport)
    results, _ = world.query(f"{ALICE}/r")
    assert bodies(results) == ["archived"]
    world.chat(f"{BOB}/r", ALICE, "unacknowledged")
    stream.dataReceived(b"</stream:stream>")  # closed, not resumable: unacked messages go again
    stream.connectionLost(None)  # type: ignore[arg-type]
    kept = [ET.fromstring(m.stanza) for m in world.store.offline.get(ALICE, [])]
    assert [m.findtext(f"{{{CLIENT}}}body") for m in kept] == ["unacknowledged"]


def test_a_message_is_stored_as_the_full_serialiser_writes_it() -> None:
    """The stored text (written by hand around `plain_xml` for speed) parses back to the same
    message as Twisted's own serialiser writes, whatever the message holds."""
    from wokkel.generic import parseXml

    from sns_xmpp.xmpp.features.mam import stanza_text

    for xml in ("<message xmlns='jabber:client' to='b@x' type='chat' id='a&amp;&lt;&apos;'><body>1 &lt; 2 &amp; "
                "'q'</body><x xmlns='urn:example' a='&quot;'/></message>",
                "<message xmlns='jabber:client' to='b@x'><p:x xmlns:p='urn:prefixed'><p:y/></p:x></message>",
                "<message xmlns='jabber:component:accept' to='b@x'><body>from a component</body></message>"):
        message = parseXml(xml)
        stored = stanza_text(message)
        assert ET.tostring(ET.fromstring(stored)) == ET.tostring(ET.fromstring(message.toXml())), stored


def test_schemas_16_and_17_keep_the_archive_and_index_it_by_owner_and_seq(backend: Backend,  # noqa: F811
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A database made before schema 16 keeps its archived messages when it is opened: the one
    index becomes (owner, seq), without with_bare (each written row's entry is shorter), then
    (17) the rows get the key n in their seq order, the index becomes unique, and queries with a
    'with' filter, pages and expiry read the same as before. New batches go in sorted by owner,
    each account's rows in their order, and after the migrated ones."""
    from sns_xmpp.store import postgres, sqlite
    from sns_xmpp.store.common import load_schema_scripts

    scripts = load_schema_scripts()
    assert [script.name for script in scripts[15:17]] == ["016_mam_index.sql", "017_mam_batch_order.sql"]
    for engine in (sqlite, postgres):
        monkeypatch.setattr(engine, "load_schema_scripts", lambda: scripts[:15])
    db = backend.open()
    try:
        assert db.schema_version == 15
        db.create_account(ALICE, [], 1.0, social=True)
        db.create_account(BOB, [], 1.0, social=True)
        rows = [(archive_sql.seq_at(1000 + n), ALICE, f"{archive_sql.seq_at(1000 + n):x}-t",
                 BOB if n % 2 else "carol@x", "", f"<m>{n}</m>") for n in reversed(range(6))]
        with db.transaction() as tx:  # as schema 15's writer did, here in the reverse of seq's order
            tx.insert_rows("mam_messages", archive_sql.COLUMNS, rows, "ON CONFLICT (seq) DO NOTHING")
    finally:
        db.close()
    monkeypatch.undo()
    db = backend.open()
    try:
        assert db.schema_version == len(scripts)
        if backend.name == "sqlite":
            columns = [row[2] for row in db.query("PRAGMA index_info(mam_messages_owner_seq)")]
        else:
            columns = [row[0] for row in db.query(
                "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE c.relname = 'mam_messages_owner_seq' ORDER BY array_position(i.indkey, a.attnum)")]
        assert columns == ["owner", "seq"]
        page = archive_sql.query(db, ArchiveQuery(owner=ALICE, max=10, with_bare=BOB))
        assert [r[2] for r in page.rows] == ["<m>1</m>", "<m>3</m>", "<m>5</m>"] and page.count == 3
        assert archive_sql.query(db, ArchiveQuery(owner=ALICE, max=2)).count == 6
        assert [row[0] for row in db.query("SELECT stanza FROM mam_messages ORDER BY n")] == [
            f"<m>{n}</m>" for n in range(6)]
        later = [(archive_sql.seq_at(2000 + n), owner, f"{archive_sql.seq_at(2000 + n):x}-t", "carol@x", "",
                  f"<{owner[0]}>{n}</{owner[0]}>") for n, owner in enumerate([BOB, ALICE, BOB, ALICE, BOB])]
        assert archive_sql.write_rows(db, later) == 5
        assert archive_sql.write_rows(db, later[:1]) == 0  # Bob's seq is taken: left out, no error
        assert [row[0] for row in db.query("SELECT stanza FROM mam_messages WHERE n > 6 ORDER BY n")] == [
            "<a>1</a>", "<a>3</a>", "<b>0</b>", "<b>2</b>", "<b>4</b>"]
        assert archive_sql.expire(db, 1002, limit=10) == 2
        assert archive_sql.expire(db, 1002, limit=10) == 0
    finally:
        db.close()


def test_the_addresses_the_archive_remembers_are_prepared_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive remembers each address's bare JID and resource (Twisted's JID makes the bare
    JID anew each time): as prepared (a 'with' query finds the messages to Bob however his address
    was written), and no more than ADDRESSES_KEPT of them, whatever the clients send to."""
    from sns_xmpp.xmpp.features import mam
    from sns_xmpp.xmpp.hooks import MESSAGE_FROM_CLIENT

    monkeypatch.setattr(mam, "ADDRESSES_KEPT", 3)
    world = World()
    bound_to = {getattr(handler, "__self__", None) for handler in world.sessions.hooks.chain(MESSAGE_FROM_CLIENT)}
    [archive] = [owner for owner in bound_to if isinstance(owner, mam.Archive)]
    for n in range(7):
        world.clock.advance(1)
        world.chat(f"{ALICE}/r", f"Bob@LocalHost/res{n % 5}", f"m{n}")
    assert len(archive.addresses) <= 3
    assert archive.address("Bob@LocalHost/res1") == (BOB, "res1")
    found = bodies(world.query(f"{ALICE}/r", f"<field var='with'><value>{BOB}</value></field>")[0])
    assert found == [f"m{n}" for n in range(7)]
    with pytest.raises(InvalidFormat):
        archive.address("@localhost")
