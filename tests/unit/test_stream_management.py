"""XEP-0198 with Twisted's test doubles: every stanza the server sends after <enabled/> is counted
and kept for a resumption, whichever feature sends it, so the client's honest <a h/> is accepted."""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.words.protocols.jabber.xmlstream import NS_STREAMS
from twisted.words.xish import domish
from wokkel.generic import parseXml

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.store.common import Database
from sns_xmpp.store.records import OfflineMessage, RosterItem
from sns_xmpp.store.sqlite import SQLiteDatabase
from sns_xmpp.xmpp.c2s import ClientStream, ClientStreamFactory
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features.stream_management import NS_SM
from sns_xmpp.xmpp.hooks import PRESENCE_FROM_CLIENT
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import NS_CLIENT
from tests.unit.featured import featured
from tests.unit.test_limits import connect, factory_and_clock
from tests.unit.test_negotiation import HEADER, output

STANZAS = {f"{{{NS_CLIENT}}}{name}" for name in ("message", "presence", "iq")}


class MemoryStore:
    """The store calls the session core makes, in memory, answering at once."""

    def __init__(self) -> None:
        self.rosters: dict[str, dict[str, RosterItem]] = {}
        self.requests: dict[str, list[str]] = {}
        self.offline: dict[str, list[OfflineMessage]] = {}
        self._ids = 0

    def load_roster(self, owner: str) -> defer.Deferred:
        return defer.succeed((list(self.rosters.get(owner, {}).values()), list(self.requests.get(owner, [])), 0))

    def account_exists(self, owner: str) -> defer.Deferred:
        return defer.succeed(True)

    def put_roster_item(self, owner: str, item: RosterItem) -> defer.Deferred:
        self.rosters.setdefault(owner, {})[item.contact] = item
        return defer.succeed(None)

    def remove_roster_item(self, owner: str, contact: str) -> defer.Deferred:
        self.rosters.get(owner, {}).pop(contact, None)
        return defer.succeed(None)

    def add_subscription_request(self, owner: str, contact: str) -> defer.Deferred:
        return defer.succeed(None)

    def remove_subscription_request(self, owner: str, contact: str) -> defer.Deferred:
        return defer.succeed(None)

    def store_offline(self, owner: str, stanza: str, now: float) -> defer.Deferred:
        self._ids += 1
        self.offline.setdefault(owner, []).append(OfflineMessage(self._ids, stanza, now))
        return defer.succeed(self._ids)

    def store_offline_capped(self, owner: str, stanza: str, now: float, cap: int,
                             max_size: int | None = None) -> defer.Deferred:
        waiting = self.offline.get(owner, [])
        size = sum(len(m.stanza) for m in waiting) + len(stanza)
        if len(waiting) >= cap or max_size is not None and size > max_size:
            return defer.succeed(None)
        return self.store_offline(owner, stanza, now)

    def run(self, work: Callable[[Database], Any]) -> defer.Deferred:
        """A feature's own SQL (IStore.run), on a real SQLite database in memory, answered at once.
        Its accounts table starts empty: a test whose feature writes per-account rows creates
        the accounts there (``store.database.create_account``)."""
        return defer.execute(work, self.database)

    run_read = run_aside = run

    @functools.cached_property
    def database(self) -> SQLiteDatabase:
        return SQLiteDatabase(":memory:")

    def offline_messages(self, owner: str) -> defer.Deferred:
        return defer.succeed(list(self.offline.get(owner, [])))

    def delete_offline(self, owner: str, ids: Sequence[int]) -> defer.Deferred:
        gone = set(ids)
        self.offline[owner] = [m for m in self.offline.get(owner, []) if m.id not in gone]
        return defer.succeed(None)


def stanzas(data: str) -> list[ET.Element]:
    """The stanzas (not the nonzas) among what the server wrote, in order."""
    if "</stream:stream>" in data:
        raise AssertionError(f"the stream ended: {data}")
    root = ET.fromstring(f"<r xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}'>{data}</r>")
    return [element for element in root if element.tag in STANZAS]


def queued(session: ClientSession) -> list[ET.Element]:
    """The session's resend queue, parsed as the stream would write it."""
    assert session.ledger is not None
    written = "".join(entry if isinstance(entry, str) else session.stream.serialize(entry)
                      for entry in session.ledger.unacked)
    return stanzas(written)


def same(a: list[ET.Element], b: list[ET.Element]) -> bool:
    return [ET.tostring(e) for e in a] == [ET.tostring(e) for e in b]


def world(store: MemoryStore | None = None) -> tuple[SessionManager, ClientStreamFactory, MemoryReactorClock]:
    factory, clock = factory_and_clock()
    sessions = featured(SessionManager(["localhost"], store or MemoryStore(), clock,  # type: ignore[arg-type]
                                       lambda stanza: sessions.deliver(stanza)))
    return sessions, factory, clock


def one_stored_for_bob(body: str) -> MemoryStore:
    """A store holding one offline message for bob (from erin), whose body is *body*."""
    store = MemoryStore()
    store.offline["bob@localhost"] = [OfflineMessage(
        1, "<message xmlns='jabber:client' to='bob@localhost' from='erin@localhost/x' type='chat'>"
           f"<body>{body}</body></message>", 0.0)]
    store._ids = 1
    return store


def log_in(sessions: SessionManager, factory: ClientStreamFactory, jid: str, host: str,
           sm: bool = True) -> tuple[ClientStream, StringTransport, ClientSession]:
    stream, transport = connect(factory, host)
    stream.dataReceived(HEADER.format(to="localhost").encode())
    sessions.bind(stream, LoginResult(jid, "PLAIN"), "r")
    output(transport)
    if sm:
        stream.dataReceived(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        assert "<enabled xmlns='urn:xmpp:sm:3'" in output(transport)
    [session] = sessions.resources(jid)
    return stream, transport, session


def ack(stream: ClientStream, transport: StringTransport, h: int) -> str:
    """Acknowledge *h* stanzas; what the server wrote in answer."""
    stream.dataReceived(f"<a xmlns='urn:xmpp:sm:3' h='{h}'/>".encode())
    answer = output(transport)
    assert "<stream:error>" not in answer, "an honest ack ends the stream"
    return answer


def test_everything_a_login_delivers_is_counted_and_queued_for_resumption() -> None:
    """A client that enabled stream management and then logs in gets its roster, the presences of
    its contacts (answers to its probes), a pending subscription request, its offline messages and
    a roster push: each counts once, each is in the resend queue, and acking them all is fine."""
    store = MemoryStore()
    store.rosters["bob@localhost"] = {
        "alice@localhost": RosterItem("alice@localhost", subscription="both"),
        "carol@localhost": RosterItem("carol@localhost", subscription="to"),
    }
    store.rosters["alice@localhost"] = {"bob@localhost": RosterItem("bob@localhost", subscription="both")}
    store.rosters["carol@localhost"] = {"bob@localhost": RosterItem("bob@localhost", subscription="from")}
    store.requests["bob@localhost"] = ["dave@localhost"]
    for n in range(3):
        store.offline.setdefault("bob@localhost", []).append(OfflineMessage(
            n + 1, f"<message xmlns='jabber:client' to='bob@localhost' from='erin@localhost/x' type='chat'>"
                   f"<body>stored {n}</body></message>", 0.0))
    store._ids = 3
    sessions, factory, clock = world(store)
    alice, alice_transport, _ = log_in(sessions, factory, "alice@localhost", "192.0.2.1", sm=False)
    alice.dataReceived(b"<presence/>")
    bob, transport, session = log_in(sessions, factory, "bob@localhost", "192.0.2.2")

    bob.dataReceived(b"<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq><presence/>"
                     b"<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='erin@localhost'/></query></iq>")
    sent = stanzas(output(transport))
    bodies = [e.findtext(f"{{{NS_CLIENT}}}body") for e in sent if e.tag.endswith("message")]
    assert bodies == ["stored 0", "stored 1", "stored 2"]
    froms = {e.get("from") for e in sent if e.tag.endswith("presence")}
    assert {"alice@localhost/r", "carol@localhost", "dave@localhost", "bob@localhost/r"} <= froms
    assert [e.get("type") for e in sent if e.tag.endswith("iq")] == ["result", "set", "result"]
    assert session.ledger is not None and session.ledger.sent == len(sent)
    assert same(queued(session), sent), "every stanza is kept until acknowledged"
    assert store.offline["bob@localhost"] == []

    ack(bob, transport, len(sent))
    assert not session.ledger.unacked and not bob.closed


def test_server_pings_and_error_answers_are_counted_too() -> None:
    """The idle ping the stream's factory sends and the internal-server-error answer to a stanza
    whose handler failed are stanzas: counted and queued like the rest."""
    sessions, factory, clock = world()
    bob, transport, session = log_in(sessions, factory, "bob@localhost", "192.0.2.2")

    def broken(session: ClientSession, presence: domish.Element) -> None:
        raise KeyError("a bug")

    sessions.hooks.hook(PRESENCE_FROM_CLIENT, broken, priority=100)  # before the presence feature
    bob.dataReceived(b"<presence id='p'/>")
    clock.advance(factory.limits.idle_timeout + 20)
    sent = stanzas(output(transport))
    assert [(e.tag.split("}")[1], e.get("type")) for e in sent] == [("presence", "error"), ("iq", "get")]
    assert same(queued(session), sent)
    ack(bob, transport, 2)
    assert session.ledger is not None and not session.ledger.unacked


def test_offline_messages_unacknowledged_at_a_drop_go_back_to_storage() -> None:
    """Offline messages delivered but never acknowledged are not lost when the session ends."""
    store = one_stored_for_bob("kept")
    sessions, factory, clock = world(store)
    bob, transport, session = log_in(sessions, factory, "bob@localhost", "192.0.2.2")
    bob.dataReceived(b"<presence/>")
    assert "kept" in output(transport) and store.offline["bob@localhost"] == []
    bob.dataReceived(b"</stream:stream>")  # closed, not resumable: unacked messages are redelivered
    bob.connectionLost(None)  # type: ignore[arg-type]
    assert ["kept" in m.stanza for m in store.offline["bob@localhost"]] == [True]


@pytest.mark.parametrize("asked_again", [False, True], ids=["once", "asked-again"])
def test_a_full_offline_queue_is_delivered_in_steps_as_the_client_acks(asked_again: bool) -> None:
    """More stored messages than the unacknowledged-stanza cap: sent as room frees, not all at once
    (which would end the client's stream with policy-violation). Asked for again meanwhile (a
    cluster's node: STORED_MESSAGES_WAITING) while the first delivery holds the rest back for
    room, what the first one has in hand is left out, so every message arrives once."""
    from sns_xmpp.xmpp.features import stream_management
    from sns_xmpp.xmpp.hooks import STORED_MESSAGES_WAITING

    store = MemoryStore()
    total = stream_management.MAX_UNACKED + 200
    store.offline["bob@localhost"] = [OfflineMessage(
        n, f"<message xmlns='jabber:client' to='bob@localhost' type='chat'><body>{n}</body></message>", 0.0)
        for n in range(1, total + 1)]
    store._ids = total
    sessions, factory, clock = world(store)
    bob, transport, session = log_in(sessions, factory, "bob@localhost", "192.0.2.2")
    bob.dataReceived(b"<presence/>")
    if asked_again:
        sessions.hooks.fire(STORED_MESSAGES_WAITING, session)
    received: list[str] = []
    written = output(transport)
    for _ in range(10):
        sent = stanzas(written)
        received += [e.findtext(f"{{{NS_CLIENT}}}body") or "" for e in sent if e.tag.endswith("message")]
        assert session.ledger is not None and len(session.ledger.unacked) <= stream_management.MAX_UNACKED // 2
        if not sent:
            break
        written = ack(bob, transport, session.ledger.sent)
    assert received == [str(n) for n in range(1, total + 1)]
    assert store.offline["bob@localhost"] == []


def test_unacknowledged_text_another_node_forwarded_is_delivered_again_and_a_stored_message_kept_as_it_is() -> None:
    """What a session never acknowledged goes on when it ends: a stored offline message back into
    storage as it was, and text a cluster's node forwarded (a stanza, as its text) through delivery
    as any stanza would, so offline storage stamps it with its <delay/>. Both were kept as they
    were, the forwarded one unstamped, past the offline hooks (found by the cluster's xmpp.js test)."""
    store = one_stored_for_bob("stored")
    sessions, factory, clock = world(store)
    bob, transport, session = log_in(sessions, factory, "bob@localhost", "192.0.2.2")
    bob.dataReceived(b"<presence/>")
    session.send("<message xmlns='jabber:client' to='bob@localhost/r' from='alice@localhost/pc' "
                 "type='chat'><body>forwarded</body></message>")  # as cluster/inbox.py hands it over
    assert "stored" in output(transport) and store.offline["bob@localhost"] == []
    bob.dataReceived(b"</stream:stream>")  # closed, not resumable: what it never acknowledged goes on
    bob.connectionLost(None)  # type: ignore[arg-type]
    kept = {("stored" in m.stanza, "urn:xmpp:delay" in m.stanza) for m in store.offline["bob@localhost"]}
    assert kept == {(True, False), (False, True)}


def test_a_message_whose_offline_write_ends_after_the_recipients_login_read_reaches_her_then() -> None:
    """Bob's initial presence reads his stored messages while a message for him is still on its
    way to the disk: once it is written, it goes to his session then, once, not at his next login."""
    store = MemoryStore()
    writes: list[defer.Deferred] = []
    real_store = store.store_offline_capped

    def slow_store(*args: Any, **kwargs: Any) -> defer.Deferred:
        written: defer.Deferred = defer.Deferred()
        writes.append(written)
        written.addCallback(lambda _: real_store(*args, **kwargs))
        return written

    store.store_offline_capped = slow_store  # type: ignore[method-assign]
    sessions, factory, clock = world(store)
    bob, transport, session = log_in(sessions, factory, "bob@localhost", "192.0.2.2", sm=False)
    message = parseXml("<message xmlns='jabber:client' from='alice@localhost/pc' to='bob@localhost' type='chat'>"
                       "<body>late</body></message>")
    sessions.deliver(message)  # bob is bound but not available: stored
    assert len(writes) == 1 and store.offline == {}
    bob.dataReceived(b"<presence/>")  # reads the stored messages: none yet
    assert [e for e in stanzas(output(transport)) if e.tag.endswith("message")] == []
    writes[0].callback(None)
    delivered = [e.findtext(f"{{{NS_CLIENT}}}body") for e in stanzas(output(transport)) if e.tag.endswith("message")]
    assert delivered == ["late"]
    assert store.offline["bob@localhost"] == []
    sessions.hooks.fire(PRESENCE_FROM_CLIENT, session, parseXml("<presence xmlns='jabber:client'/>"))
    assert [e for e in stanzas(output(transport)) if e.tag.endswith("message")] == []


def test_a_message_to_a_resource_that_is_gone_goes_as_rfc_6121_says_by_its_type() -> None:
    """RFC 6121 8.5.3.2.1: a chat or normal message to a full JID no session holds goes to the
    bare JID's resources; a headline (a PEP notification to a session that ended) is not given to
    them but silently ignored."""
    sessions, factory, clock = world()
    bob, transport, session = log_in(sessions, factory, "bob@localhost", "192.0.2.2", sm=False)
    bob.dataReceived(b"<presence/>")
    output(transport)
    for kind in ("chat", "normal", "headline"):
        sessions.deliver(parseXml(f"<message xmlns='jabber:client' from='alice@localhost/pc' "
                                  f"to='bob@localhost/gone' type='{kind}'><body>{kind}</body></message>"))
    delivered = [e.findtext(f"{{{NS_CLIENT}}}body") for e in stanzas(output(transport)) if e.tag.endswith("message")]
    assert delivered == ["chat", "normal"]


def test_acks_waiting_on_many_pending_writes_cost_linear_time() -> None:
    """A client that sends thousands of messages to offline users (each acknowledged only once on
    disk) and then <r/> makes every completed write ask "what is handled now?": answered from a
    heap, not by scanning every pending write (quadratic: seconds of the reactor's time)."""
    import time

    from sns_xmpp.xmpp.features.stream_management import StreamManagement

    class Writer:
        def __init__(self) -> None:
            self.written = b""

        def send(self, element: domish.Element) -> None:
            self.written += element.toXml().encode()

        def value(self) -> bytes:
            return self.written

    stream = Writer()
    sm = StreamManagement(stream, False, 300)  # type: ignore[arg-type]
    writes: list[defer.Deferred[None]] = []

    def pending_write() -> defer.Deferred[None]:
        writes.append(defer.Deferred())
        return writes[-1]

    for _ in range(20_000):
        sm.process(pending_write)
    sm.request()
    assert b"<a " not in stream.value()
    started = time.perf_counter()
    for write in writes[:-1]:
        write.callback(None)
    assert b"<a " not in stream.value(), "the last write is still pending"
    writes[-1].callback(None)
    elapsed = time.perf_counter() - started
    assert b"h='20000'" in stream.value()
    assert elapsed < 0.5, f"20,000 completions took {elapsed:.3f} s"


def test_a_client_that_reads_but_never_acks_is_bounded_in_bytes_too() -> None:
    """The resend queue holds what the client has not acknowledged: bounded by the stream's
    max_outbound_bytes as well as by count, or a client that reads and never acks could make the
    server keep a thousand 256 KiB stanzas. Past it the stream ends with policy-violation and the
    queued messages go to offline storage, none lost."""
    store = MemoryStore()
    sessions, factory, clock = world(store)
    bob, transport, session = log_in(sessions, factory, "bob@localhost", "192.0.2.2")
    bob.max_outbound_bytes = 1024 * 1024
    bob.dataReceived(b"<presence/>")
    output(transport)
    body = "x" * 65536
    for n in range(40):
        message = domish.Element((None, "message"))
        message["to"], message["from"], message["type"] = "bob@localhost", "alice@localhost/r", "chat"
        message.addElement("body", content=f"{n} {body}")
        sessions.deliver(message)
    written = output(transport)
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in written
    assert len(written) < 1024 * 1024 + 2 * 70_000
    bob.connectionLost(None)  # type: ignore[arg-type]
    kept = sorted(int(m.stanza.split("<body>")[1].split()[0]) for m in store.offline["bob@localhost"])
    assert kept == list(range(40))


def test_a_stream_whose_client_does_not_read_ends_at_the_outbound_bound() -> None:
    """Without stream management too: once more than max_outbound_bytes wait unread in the
    transport's buffer (a socket that takes nothing), the stream ends with policy-violation, the
    buffer stops growing, and after CLOSE_GRACE the connection is let go of."""
    from twisted.internet import abstract
    from twisted.internet.address import IPv4Address
    from twisted.internet.interfaces import ITCPTransport
    from zope.interface import implementer

    from sns_xmpp.xmpp.c2s import CLOSE_GRACE, buffered_bytes

    @implementer(ITCPTransport)
    class StalledSocket(abstract.FileDescriptor):
        """A connected socket whose peer reads nothing: every write stays in the buffer."""

        connected = 1
        aborted = False

        def abortConnection(self) -> None:
            self.aborted = True

        def writeSomeData(self, data: bytes) -> int:
            return 0

        def getPeer(self) -> IPv4Address:
            return IPv4Address("TCP", "192.0.2.3", 5000)

        def getHost(self) -> IPv4Address:
            return IPv4Address("TCP", "127.0.0.1", 5222)

    sessions, factory, clock = world()
    stream = factory.buildProtocol(IPv4Address("TCP", "192.0.2.3", 5000))
    transport = StalledSocket(reactor=clock)
    stream.makeConnection(transport)
    stream.max_outbound_bytes = 1024 * 1024
    stream.dataReceived(HEADER.format(to="localhost").encode())
    sessions.bind(stream, LoginResult("bob@localhost", "PLAIN"), "r")
    stream.dataReceived(b"<presence/>")
    backlog = []
    for n in range(40):
        message = domish.Element((None, "message"))
        message["to"], message["from"], message["type"] = "bob@localhost", "alice@localhost/r", "chat"
        message.addElement("body", content=f"{n} " + "x" * 65536)
        sessions.deliver(message)
        backlog.append(buffered_bytes(transport))
    assert stream.closed and max(backlog) < 1024 * 1024 + 2 * 70_000
    transport.doWrite()  # the socket still takes nothing
    written = b"".join(transport._tempDataBuffer) + transport.dataBuffer
    assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in written
    clock.advance(CLOSE_GRACE - 0.1)
    assert not transport.aborted, "the client gets a moment to read its error"
    clock.advance(0.1)
    assert transport.aborted


def test_a_resumed_session_gets_its_unacknowledged_offline_messages_again() -> None:
    """The connection drops after offline messages went out unacknowledged; the <resume/> on a new
    connection (h=0) gets them again, as they were stored, before anything new."""
    store = one_stored_for_bob("kept")
    sessions, factory, clock = world(store)
    bob, transport, session = log_in(sessions, factory, "bob@localhost", "192.0.2.2")
    bob.dataReceived(b"<presence/>")
    assert "kept" in output(transport)
    assert session.ledger is not None and session.ledger.resume_id is not None
    previd = session.ledger.resume_id
    bob.connectionLost(None)  # type: ignore[arg-type]  # dropped: no </stream:stream>
    assert session.detached and store.offline["bob@localhost"] == []

    again, again_transport = connect(factory, "192.0.2.2")
    again.dataReceived(HEADER.format(to="localhost").encode())
    output(again_transport)
    resume = sessions.hooks.before_bind[(NS_SM, "resume")]
    resume(again, LoginResult("bob@localhost", "PLAIN"), parseXml(f"<resume xmlns='{NS_SM}' previd='{previd}' h='0'/>"))
    answer = output(again_transport)
    assert answer.startswith("<resumed ") and [e.findtext(f"{{{NS_CLIENT}}}body") for e in stanzas(answer)
                                               if e.tag.endswith("message")] == ["kept"]
    ack(again, again_transport, len(stanzas(answer)))
    assert not session.ledger.unacked and not session.detached


def test_an_asynchronous_step_before_storage_still_holds_the_ack() -> None:
    """The ack-after-disk promise travels with the stanza's handling (a returned Deferred), not
    through a module global: with a step that waits (here a second) between routing and the
    offline write, <a/> still counts the message only once it is on disk."""
    from twisted.internet import task

    from tests.unit.test_limits import PendingWritesStore

    store = PendingWritesStore()
    writes = store.writes
    factory, clock = factory_and_clock()

    def route_after_a_second(stanza: domish.Element) -> defer.Deferred:
        return task.deferLater(clock, 1.0, sessions.deliver, stanza)

    sessions = featured(SessionManager(["localhost"], store, clock, route_after_a_second))  # type: ignore[arg-type]
    stream, transport = connect(factory)
    stream.dataReceived(HEADER.format(to="localhost").encode())
    sessions.bind(stream, LoginResult("bob@localhost", "PLAIN"), "r")
    output(transport)
    stream.dataReceived(b"<enable xmlns='urn:xmpp:sm:3'/>")
    assert "<enabled xmlns='urn:xmpp:sm:3'/>" in output(transport)
    stream.dataReceived(b"<message to='alice@localhost' type='chat'><body>hi</body></message>"
                        b"<r xmlns='urn:xmpp:sm:3'/>")
    assert "<a " not in output(transport), "not acknowledged while the message is on its way"
    clock.advance(1.0)
    assert len(writes) == 1
    assert "<a " not in output(transport), "not acknowledged while the write is pending"
    writes[0].callback(1)
    assert "<a xmlns='urn:xmpp:sm:3' h='1'/>" in output(transport)


def test_a_session_taken_out_of_one_node_resumes_on_another_with_its_ledger() -> None:
    """XEP-0198 across a cluster's nodes, without Redis: one node takes a detached session out
    (its state through the cluster's codec, as it crosses Redis), the other binds it and resumes
    it on a new connection: <resumed h/> with the count the first node had, the unacknowledged
    stanzas again (a stored offline message as stored), then new ones; the first node sent no
    unavailable presence and delivers nothing again; carbons and the roster request came along."""
    from sns_xmpp.cluster.resumption import decode, encode

    store = one_stored_for_bob("kept")
    store.rosters["bob@localhost"] = {"alice@localhost": RosterItem("alice@localhost", subscription="both")}
    store.rosters["alice@localhost"] = {"bob@localhost": RosterItem("bob@localhost", subscription="both")}
    one, factory, clock = world(store)
    two = featured(SessionManager(["localhost"], store, clock,  # type: ignore[arg-type]
                                  lambda stanza: two.deliver(stanza)))
    alice, alice_transport, _ = log_in(one, factory, "alice@localhost", "192.0.2.1", sm=False)
    alice.dataReceived(b"<presence/>")
    bob, transport, session = log_in(one, factory, "bob@localhost", "192.0.2.2")
    bob.dataReceived(b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>"
                     b"<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq><presence/>"
                     b"<message to='alice@localhost' type='chat'><body>sent before</body></message>")
    assert "kept" in output(transport)
    output(alice_transport)
    assert session.ledger is not None and session.ledger.resume_id is not None
    previd, handled = session.ledger.resume_id, session.ledger.handled
    bob.connectionLost(None)  # type: ignore[arg-type]  # dropped: no </stream:stream>
    alice.dataReceived(b"<message to='bob@localhost/r' type='chat'><body>while away</body></message>")

    holder = one.hooks.before_bind[(NS_SM, "resume")].__self__  # type: ignore[attr-defined]
    assert holder.take_out(previd, "alice@localhost") is None, "only its own account may take it"
    state = decode(encode(holder.take_out(previd, "bob@localhost")))
    assert one.resources("bob@localhost") == [] and not store.offline.get("bob@localhost")
    assert "unavailable" not in output(alice_transport), "the session did not end"

    again, again_transport = connect(factory, "192.0.2.3")
    again.dataReceived(HEADER.format(to="localhost").encode())
    output(again_transport)
    asker = two.hooks.before_bind[(NS_SM, "resume")].__self__  # type: ignore[attr-defined]
    arrived = asker.arrive(state, again)
    [moved] = two.resources("bob@localhost")
    assert arrived.result is moved and moved.detached
    assert moved.available and moved.roster_requested and moved.carbons
    asker.resume(again, LoginResult("bob@localhost", "PLAIN"),
                 parseXml(f"<resume xmlns='{NS_SM}' previd='{previd}' h='0'/>"))
    answer = output(again_transport)
    assert answer.startswith(f"<resumed xmlns='{NS_SM}' previd='{previd}' h='{handled}'/>")
    bodies = [e.findtext(f"{{{NS_CLIENT}}}body") for e in stanzas(answer) if e.tag.endswith("message")]
    assert bodies == ["kept", "while away"]
    moved.send(parseXml("<message xmlns='jabber:client' to='bob@localhost/r'><body>after</body></message>"))
    assert [e.findtext(f"{{{NS_CLIENT}}}body") for e in stanzas(output(again_transport))] == ["after"]
    ack(again, again_transport, len(stanzas(answer)) + 1)
    assert not moved.ledger.unacked and not moved.detached  # type: ignore[union-attr]
