"""Private XML storage (XEP-0049) with Twisted's doubles and the real SQL: the XEP's five examples
and its error conditions, bookmarks (XEP-0048) as one more fragment, the limits, and the feature's
own SQL on both engines."""

from __future__ import annotations

import pytest
from twisted.internet.testing import StringTransport

from sns_xmpp.store.private_storage import OverQuota, Quota, fragment, put_fragments
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.features.private_storage import MAX_FRAGMENT_BYTES, QUOTA
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.synchronous_store import SynchronousStore
from tests.unit.test_negotiation import output
from tests.unit.test_roster_versioning import log_in, world
from tests.unit.test_store import NOW, Backend, backend  # noqa: F401 - the fixture

PRIVATE = "jabber:iq:private"
HAMLET = "hamlet@localhost"
MACBETH = "macbeth@localhost"
EXODUS = "<exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus>"


def error_condition(answer: str) -> str:
    """The defined condition of the one error stanza in *answer*."""
    assert "type='error'" in answer, answer
    after = answer.split("<error", 1)[1]
    return after.split("<", 1)[1].split(" ", 1)[0]


def two_accounts() -> tuple[SynchronousStore, SessionManager, ClientStream, StringTransport, ClientStream,
                            StringTransport]:
    """Hamlet (a social account) and macbeth (a local one), each with a bound session."""
    store = SynchronousStore()
    for jid in (HAMLET, MACBETH):
        assert store.database.create_account(jid, (), NOW, social=jid == HAMLET)
    sessions, factory = world(store)
    hamlet, hamlet_out = log_in(sessions, factory, HAMLET, "192.0.2.10", "denmark")
    macbeth, macbeth_out = log_in(sessions, factory, MACBETH, "192.0.2.11", "castle")
    return store, sessions, hamlet, hamlet_out, macbeth, macbeth_out


def test_the_xeps_examples() -> None:
    """Examples 1 and 2: hamlet stores his preferences and reads them back as stored. Example 3:
    macbeth, setting or getting at hamlet's bare JID, hears forbidden (the condition the XEP
    prefers) and changes nothing. Example 4: a set with no element is not acceptable, a get with
    none a bad request. Example 5: a reserved namespace is not acceptable."""
    store, _sessions, hamlet, hamlet_out, macbeth, macbeth_out = two_accounts()
    hamlet.dataReceived(f"<iq type='set' id='1001'><query xmlns='{PRIVATE}'>{EXODUS}</query></iq>".encode())
    assert output(hamlet_out) == f"<iq type='result' id='1001' to='{HAMLET}/denmark'/>"
    hamlet.dataReceived(f"<iq type='get' id='1002'><query xmlns='{PRIVATE}'><exodus xmlns='exodus:prefs'/>"
                        "</query></iq>".encode())
    assert output(hamlet_out) == (f"<iq type='result' id='1002' to='{HAMLET}/denmark'>"
                                  f"<query xmlns='{PRIVATE}'>{EXODUS}</query></iq>")

    for kind, payload in (("set", "<exodus xmlns='exodus:prefs'><defaultnick>Macbeth</defaultnick></exodus>"),
                          ("get", "<exodus xmlns='exodus:prefs'/>")):
        macbeth.dataReceived(f"<iq type='{kind}' to='{HAMLET}' id='1003'><query xmlns='{PRIVATE}'>{payload}"
                             "</query></iq>".encode())
        assert error_condition(output(macbeth_out)) == "forbidden"
    assert fragment(store.database, HAMLET, "exodus:prefs") == EXODUS
    assert fragment(store.database, MACBETH, "exodus:prefs") is None

    hamlet.dataReceived(f"<iq type='set' id='1004'><query xmlns='{PRIVATE}'/></iq>".encode())
    assert error_condition(output(hamlet_out)) == "not-acceptable"
    hamlet.dataReceived(f"<iq type='get' id='1004b'><query xmlns='{PRIVATE}'/></iq>".encode())
    assert error_condition(output(hamlet_out)) == "bad-request"

    for reserved in ("<vCard xmlns='vcard-temp'><FN>Hamlet</FN></vCard>", "<query xmlns='jabber:iq:roster'/>",
                     "<x xmlns='http://jabber.org/protocol/muc'/>", "<bare/>"):  # the last: jabber:iq:private
        for kind in ("set", "get"):
            hamlet.dataReceived(f"<iq type='{kind}' id='1005'><query xmlns='{PRIVATE}'>{reserved}</query></iq>"
                                .encode())
            assert error_condition(output(hamlet_out)) == "not-acceptable", (kind, reserved)
    assert store.database.query("SELECT namespace FROM private_storage") == [("exodus:prefs",)]


def test_fragments_by_namespace_and_bookmarks_among_them() -> None:
    """A get for a namespace never stored answers the element as asked. One set may hold
    elements of several namespaces (each kept apart) and several of one (kept together, 2.3);
    bookmarks (XEP-0048) are a fragment like any other; a get naming two namespaces is a bad
    request; an empty element forgets its namespace."""
    store, _sessions, hamlet, hamlet_out, _macbeth, _macbeth_out = two_accounts()
    hamlet.dataReceived(f"<iq type='get' id='g1'><query xmlns='{PRIVATE}'><notes xmlns='storage:rosternotes'/>"
                        "</query></iq>".encode())
    assert output(hamlet_out) == (f"<iq type='result' id='g1' to='{HAMLET}/denmark'><query xmlns='{PRIVATE}'>"
                                  "<notes xmlns='storage:rosternotes'/></query></iq>")

    bookmarks = ("<storage xmlns='storage:bookmarks'><conference jid='elsinore@conference.localhost' "
                 "autojoin='true' name='Elsinore'><nick>Hamlet</nick></conference></storage>")
    hints = "<hint xmlns='urn:example:hints'>one</hint><hint xmlns='urn:example:hints'>two</hint>"
    hamlet.dataReceived(f"<iq type='set' id='s1'><query xmlns='{PRIVATE}'>{bookmarks}{hints}</query></iq>".encode())
    assert "type='result'" in output(hamlet_out)
    hamlet.dataReceived(f"<iq type='get' id='g2'><query xmlns='{PRIVATE}'><storage xmlns='storage:bookmarks'/>"
                        "</query></iq>".encode())
    assert output(hamlet_out) == (f"<iq type='result' id='g2' to='{HAMLET}/denmark'><query xmlns='{PRIVATE}'>"
                                  f"{bookmarks}</query></iq>")
    hamlet.dataReceived(f"<iq type='get' id='g3'><query xmlns='{PRIVATE}'><hint xmlns='urn:example:hints'/>"
                        "</query></iq>".encode())
    assert f"<query xmlns='{PRIVATE}'>{hints}</query>" in output(hamlet_out)
    hamlet.dataReceived(f"<iq type='get' id='g4'><query xmlns='{PRIVATE}'><storage xmlns='storage:bookmarks'/>"
                        "<hint xmlns='urn:example:hints'/></query></iq>".encode())
    assert error_condition(output(hamlet_out)) == "bad-request"

    hamlet.dataReceived(f"<iq type='set' id='s2'><query xmlns='{PRIVATE}'><hint xmlns='urn:example:hints'/>"
                        "</query></iq>".encode())
    assert "type='result'" in output(hamlet_out)
    assert store.database.query("SELECT namespace FROM private_storage WHERE owner = ?", (HAMLET,)) == [
        ("storage:bookmarks",)]


def test_a_fragment_and_an_account_have_their_limits() -> None:
    """A fragment over the limit is not acceptable and nothing of its set is kept; past
    the account's namespaces the set is refused with resource-constraint, and the namespaces
    already kept stay as they were."""
    store, sessions, hamlet, hamlet_out, _macbeth, _macbeth_out = two_accounts()
    storage = sessions.hooks.account_iqs[(PRIVATE, "query")].__self__  # type: ignore[attr-defined]
    assert storage.max_fragment_bytes == MAX_FRAGMENT_BYTES
    storage.max_fragment_bytes = 4096  # within the test stream's stanza limit (the default is above it)
    big = "x" * 4096
    hamlet.dataReceived(f"<iq type='set' id='big'><query xmlns='{PRIVATE}'>{EXODUS}<big xmlns='urn:example:big'>"
                        f"{big}</big></query></iq>".encode())
    assert error_condition(output(hamlet_out)) == "not-acceptable"
    assert fragment(store.database, HAMLET, "exodus:prefs") is None, "the set is refused as a whole"

    for n in range(QUOTA.max_namespaces):
        hamlet.dataReceived(f"<iq type='set' id='n{n}'><query xmlns='{PRIVATE}'><v xmlns='urn:example:{n}'>{n}</v>"
                            "</query></iq>".encode())
        assert "type='result'" in output(hamlet_out)
    hamlet.dataReceived(f"<iq type='set' id='full'><query xmlns='{PRIVATE}'>{EXODUS}</query></iq>".encode())
    assert error_condition(output(hamlet_out)) == "resource-constraint"
    assert store.database.query("SELECT COUNT(*) FROM private_storage WHERE owner = ?", (HAMLET,)) == [
        (QUOTA.max_namespaces,)]
    hamlet.dataReceived(f"<iq type='set' id='again'><query xmlns='{PRIVATE}'><v xmlns='urn:example:0'>new</v>"
                        "</query></iq>".encode())
    assert "type='result'" in output(hamlet_out), "replacing a namespace already kept adds none"


def test_the_sql_keeps_replaces_forgets_and_refuses_over_quota_in_each_engine(backend: Backend) -> None:  # noqa: F811
    """The feature's own SQL on SQLite and PostgreSQL: a write replaces the namespaces it names and
    forgets those given None; one that would take the account over its bytes writes nothing at
    all; each account's data are its own, and go with the account."""
    db = backend.open()
    for jid in (HAMLET, MACBETH):
        assert db.create_account(jid, (), NOW)
    quota = Quota(max_namespaces=5, max_bytes=100)
    put_fragments(db, HAMLET, {"a:1": "<a xmlns='a:1'/>", "b:2": "<b xmlns='b:2'>é</b>"}, quota)
    put_fragments(db, MACBETH, {"a:1": "<a xmlns='a:1'>macbeth</a>"}, quota)
    put_fragments(db, HAMLET, {"a:1": "<a xmlns='a:1'>new</a>", "b:2": None}, quota)
    assert fragment(db, HAMLET, "a:1") == "<a xmlns='a:1'>new</a>" and fragment(db, HAMLET, "b:2") is None
    with pytest.raises(OverQuota):
        put_fragments(db, HAMLET, {"c:3": "<c xmlns='c:3'/>", "d:4": "<d xmlns='d:4'>" + "é" * 40 + "</d>"}, quota)
    assert fragment(db, HAMLET, "c:3") is None and fragment(db, HAMLET, "a:1") == "<a xmlns='a:1'>new</a>"
    assert fragment(db, MACBETH, "a:1") == "<a xmlns='a:1'>macbeth</a>"
    assert db.delete_account(HAMLET)
    assert backend.rows("SELECT COUNT(*) FROM private_storage WHERE owner = ?", (HAMLET,)) == [(0,)]
    assert fragment(db, MACBETH, "a:1") == "<a xmlns='a:1'>macbeth</a>"
    db.close()
