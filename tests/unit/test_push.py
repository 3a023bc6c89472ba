"""Push Notifications (XEP-0357) with Twisted's doubles and the real SQL: enabling and disabling
(sections 5 and 6) with their error conditions and limit, the exact publish of section 7 for a
message to an offline device, no body or sender unless configured, a device asleep (XEP-0352) or
detached (XEP-0198) notified too, one publish per interval, errors that disable (section 7.1),
and the feature's own SQL on both engines."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.words.xish import domish
from wokkel.generic import parseXml

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.config import C2SConfig, PushConfig, XMPPConfig
from sns_xmpp.jid import parse_jid
from sns_xmpp.store.push import (
    StoredRegistration,
    TooManyRegistrations,
    all_registrations,
    delete_registrations,
    put_registration,
)
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.features.built_in import install_features
from sns_xmpp.xmpp.features.push import ANSWER_TIMEOUT, MAX_TRANSIENT_ERRORS
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.synchronous_store import SynchronousStore
from tests.unit.test_limits import connect, factory_and_clock
from tests.unit.test_negotiation import HEADER, output
from tests.unit.test_private_storage import error_condition
from tests.unit.test_store import NOW, Backend, backend  # noqa: F401 - the fixture

PUSH = "urn:xmpp:push:0"
ALICE = "alice@localhost"  # a social account
BOB = "bob@localhost"  # a local one
OPTIONS = ("<x xmlns='jabber:x:data' type='submit'>"
           "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
           "<field var='secret'><value>eruio234vzxc2kla-91</value></field></x>")


@dataclass
class World:
    store: SynchronousStore
    sessions: SessionManager
    clock: MemoryReactorClock
    sent: list[domish.Element] = field(default_factory=list)  # what went to other domains
    factory: object = None

    def log_in(self, jid: str, resource: str, host: str) -> tuple[ClientStream, StringTransport]:
        stream, transport = connect(self.factory, host)  # type: ignore[arg-type]
        stream.dataReceived(HEADER.format(to="localhost").encode())
        self.sessions.bind(stream, LoginResult(jid, "PLAIN"), resource)
        stream.dataReceived(b"<presence/>")
        output(transport)
        return stream, transport

    def publishes(self) -> list[str]:
        """The notifications sent since the last look, as XML with their ids made 'ID'."""
        sent, self.sent = self.sent, []
        texts = []
        for iq in sent:
            text = iq.toXml().replace("<iq xmlns='jabber:client' ", "<iq ", 1)  # as a jabber:client stream writes it
            texts.append(text.replace(f"id='{iq['id']}'", "id='ID'"))
        return texts

    def answer(self, iq_id: str, error: str | None = None, kind: str = "cancel") -> None:
        """The app server's answer to publish *iq_id*."""
        if error is None:
            xml = f"<iq xmlns='jabber:client' type='result' from='push.example' to='localhost' id='{iq_id}'/>"
        else:
            xml = (f"<iq xmlns='jabber:client' type='error' from='push.example' to='localhost' id='{iq_id}'>"
                   f"<error type='{kind}'><{error} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
        self.sessions.deliver(parseXml(xml))


def world(**push: object) -> World:
    store = SynchronousStore()
    assert store.database.create_account(ALICE, (), NOW, social=True)
    assert store.database.create_account(BOB, (), NOW)
    factory, clock = factory_and_clock()
    made = World(store, None, clock, factory=factory)  # type: ignore[arg-type]

    def route(stanza: domish.Element) -> object:
        if parse_jid(stanza.getAttribute("to", "")).host == "localhost":
            return sessions.deliver(stanza)
        made.sent.append(stanza)
        return None

    sessions = SessionManager(["localhost"], store, clock, route)  # type: ignore[arg-type]
    install_features(sessions, config=XMPPConfig(c2s=C2SConfig(), push=PushConfig(**push)))  # type: ignore[arg-type]
    made.sessions = sessions
    return made


def enable(stream: ClientStream, transport: StringTransport, attributes: str = "jid='push.example' node='n1'",
           form: str = "", iq_id: str = "x42") -> str:
    stream.dataReceived(f"<iq type='set' id='{iq_id}'><enable xmlns='{PUSH}' {attributes}>{form}</enable>"
                        "</iq>".encode())
    return output(transport)


def rows(made: World) -> list[tuple[str, str, str, str | None]]:
    return [(r.owner, r.service, r.node, r.options) for r in all_registrations(made.store.database)]


def chat(sender: ClientStream, body: str = "Wherefore art thou, Romeo?", extra: str = "") -> None:
    sender.dataReceived(f"<message to='{ALICE}' type='chat' id='m'><body>{body}</body>{extra}</message>".encode())


def log_out(stream: ClientStream) -> None:
    stream.dataReceived(b"</stream:stream>")
    stream.connectionLost(None)  # type: ignore[arg-type]


def summary(count: int, *fields: str) -> str:
    return ("<iq type='set' from='localhost' to='push.example' id='ID'>"
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n1'><item>"
            f"<notification xmlns='{PUSH}'><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>"
            f"<field var='message-count'><value>{count}</value></field>{''.join(fields)}"
            "</x></notification></item></publish></pubsub></iq>")


def test_enabling_and_disabling_follow_sections_5_and_6() -> None:
    """Examples 5 and 6: alice's phone enables push, with publish options, and hears an empty
    result; the pair enabled again keeps the last request's options (one row), another node is
    another registration. Example 7 disables one node, example 8 the whole service; disabling
    what is not enabled succeeds. Bob, at alice's bare JID, is forbidden and changes nothing. No
    'jid', a malformed one, a form of another FORM_TYPE and a get are refused; past
    max_registrations the account hears resource-constraint. Her disco#info announces push."""
    made = world(max_registrations=2)
    phone, phone_out = made.log_in(ALICE, "phone", "192.0.2.10")
    bob, bob_out = made.log_in(BOB, "desk", "192.0.2.11")
    assert enable(phone, phone_out) == f"<iq type='result' id='x42' to='{ALICE}/phone'/>"
    assert enable(phone, phone_out, form=OPTIONS, iq_id="x43") == f"<iq type='result' id='x43' to='{ALICE}/phone'/>"
    assert rows(made) == [(ALICE, "push.example", "n1", OPTIONS)]
    assert "type='result'" in enable(phone, phone_out, "jid='push.example' node='n2'")
    assert sorted(r[2] for r in rows(made)) == ["n1", "n2"]

    refused = {
        "bad-request": enable(phone, phone_out, "node='n3'"),
        "jid-malformed": enable(phone, phone_out, "jid='@bad' node='n3'"),
        "resource-constraint": enable(phone, phone_out, "jid='push.example' node='n3'"),
    }
    for condition, answer in refused.items():
        assert error_condition(answer) == condition, answer
    other_form = OPTIONS.replace("pubsub#publish-options", "pubsub#node_config")
    assert error_condition(enable(phone, phone_out, form=other_form)) == "bad-request"
    phone.dataReceived(f"<iq type='get' id='g'><enable xmlns='{PUSH}' jid='push.example' node='n1'/></iq>".encode())
    assert error_condition(output(phone_out)) == "bad-request"
    bob.dataReceived(f"<iq type='set' to='{ALICE}' id='b'><disable xmlns='{PUSH}' jid='push.example'/></iq>".encode())
    assert error_condition(output(bob_out)) == "forbidden"
    assert len(rows(made)) == 2

    phone.dataReceived(f"<iq type='set' id='x97'><disable xmlns='{PUSH}' jid='push.example' node='n2'/></iq>".encode())
    assert output(phone_out) == f"<iq type='result' id='x97' to='{ALICE}/phone'/>"
    assert [r[2] for r in rows(made)] == ["n1"]
    phone.dataReceived(f"<iq type='set' id='x98'><disable xmlns='{PUSH}' jid='push.example'/></iq>".encode())
    assert output(phone_out) == f"<iq type='result' id='x98' to='{ALICE}/phone'/>"
    assert rows(made) == []
    phone.dataReceived(f"<iq type='set' id='x99'><disable xmlns='{PUSH}' jid='other.example'/></iq>".encode())
    assert "type='result'" in output(phone_out)

    phone.dataReceived(b"<iq type='get' id='d'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert f"<feature var='{PUSH}'/>" in output(phone_out)


def test_a_message_to_an_offline_device_is_published_without_body_or_sender() -> None:
    """Section 7, example 10: alice's phone enables push with publish options and goes offline;
    bob's message becomes one publish from the server's JID to the app server's node, with the
    summary form's count and the publish options as the phone gave them, and neither the body
    nor the sender (off by default). The message itself is kept offline as ever. Back online, the
    phone is awake, and a message then publishes nothing."""
    made = world()
    phone, phone_out = made.log_in(ALICE, "phone", "192.0.2.10")
    bob, _bob_out = made.log_in(BOB, "desk", "192.0.2.11")
    enable(phone, phone_out, form=OPTIONS)
    log_out(phone)
    chat(bob)
    [published] = made.publishes()
    assert published == summary(1).replace(
        "</pubsub>", f"<publish-options>{OPTIONS}</publish-options></pubsub>")
    assert "Romeo" not in published and BOB not in published

    [kept] = made.store.database.offline_messages(ALICE)
    assert "Romeo" in kept.stanza
    made.log_in(ALICE, "phone", "192.0.2.12")
    made.clock.advance(5)
    chat(bob, "again")
    assert made.publishes() == []


def test_body_and_sender_go_only_when_configured() -> None:
    """With include_body and include_sender on, the summary form carries last-message-sender (the
    sender's full JID) and last-message-body, as in the XEP's example 9."""
    made = world(include_body=True, include_sender=True)
    phone, phone_out = made.log_in(ALICE, "phone", "192.0.2.10")
    bob, _bob_out = made.log_in(BOB, "desk", "192.0.2.11")
    enable(phone, phone_out)
    log_out(phone)
    chat(bob)
    assert made.publishes() == [summary(
        1, f"<field var='last-message-sender'><value>{BOB}/desk</value></field>",
        "<field var='last-message-body'><value>Wherefore art thou, Romeo?</value></field>")]


def test_an_inactive_or_detached_device_is_notified_and_an_awake_one_is_not() -> None:
    """XEP-0352: the phone says it is inactive; a message with a body still reaches it (held
    stanzas are only presence and chat states) and is published too, since the phone's app
    sleeps. Active again: nothing is published. A chat state alone never is. XEP-0198: the phone's
    connection drops with a resumable session; the message waits in the session and is published."""
    made = world()
    phone, phone_out = made.log_in(ALICE, "phone", "192.0.2.10")
    bob, _bob_out = made.log_in(BOB, "desk", "192.0.2.11")
    enable(phone, phone_out)
    chat(bob, "awake?")
    assert made.publishes() == []

    phone.dataReceived(b"<inactive xmlns='urn:xmpp:csi:0'/>")
    chat(bob, "asleep?")
    assert "asleep?" in output(phone_out)
    [first] = made.sent
    assert made.publishes() == [summary(1)]
    made.answer(first["id"])
    bob.dataReceived(f"<message to='{ALICE}' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/>"
                     "</message>".encode())
    made.clock.advance(5)
    assert made.publishes() == []

    phone.dataReceived(b"<active xmlns='urn:xmpp:csi:0'/>")
    chat(bob, "awake again")
    made.clock.advance(5)
    assert made.publishes() == []

    phone.dataReceived(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    phone.connectionLost(None)  # type: ignore[arg-type]  # dropped without </stream:stream>: kept for a resumption
    [session] = made.sessions.resources(ALICE)
    assert session.detached
    chat(bob, "there?")
    assert made.publishes() == [summary(1)]


def test_one_publish_per_interval_and_in_flight_and_the_next_tells_the_count() -> None:
    """Three messages at once cost the device one publish; the next waits for the app server's
    answer and the interval's end, and its count says three messages wait."""
    made = world(min_interval_ms=2000)
    phone, phone_out = made.log_in(ALICE, "phone", "192.0.2.10")
    bob, _bob_out = made.log_in(BOB, "desk", "192.0.2.11")
    enable(phone, phone_out)
    log_out(phone)
    chat(bob, "1")
    [first] = made.sent
    assert made.publishes() == [summary(1)]
    chat(bob, "2")
    chat(bob, "3")
    made.clock.advance(3)
    assert made.publishes() == [], "nothing while the first is unanswered"
    made.answer(first["id"])
    assert made.publishes() == [summary(3)], "the interval is over: at once"
    made.clock.advance(100)
    assert made.publishes() == []


def test_a_permanent_error_disables_and_a_transient_one_does_not() -> None:
    """Section 7.1: a remote-server-not-found (the path failing) keeps the registration; the app
    server's item-not-found disables it, in memory and in the store, and the next message
    publishes nothing."""
    made = world(min_interval_ms=0)
    phone, phone_out = made.log_in(ALICE, "phone", "192.0.2.10")
    bob, _bob_out = made.log_in(BOB, "desk", "192.0.2.11")
    enable(phone, phone_out)
    log_out(phone)
    chat(bob)
    [first] = made.sent
    made.sent.clear()
    made.answer(first["id"], "remote-server-not-found")
    chat(bob)
    [second] = made.sent
    made.sent.clear()
    assert rows(made) != []
    made.answer(second["id"], "item-not-found")
    assert rows(made) == []
    chat(bob)
    assert made.sent == []
    assert made.sessions.hooks.responses == {}


def test_the_sql_keeps_replaces_and_forgets_in_each_engine(backend: Backend) -> None:  # noqa: F811
    """The feature's own SQL on SQLite and PostgreSQL: a pair enabled again replaces its row; the
    limit counts the others and writes nothing past it; disabling a node or a whole service; the
    rows go with the account."""
    db = backend.open()
    for jid in (ALICE, BOB):
        assert db.create_account(jid, (), NOW)
    put_registration(db, StoredRegistration(ALICE, "push.example", "n1", "phone", OPTIONS), NOW, 2)
    put_registration(db, StoredRegistration(ALICE, "push.example", "n1", "tablet", None), NOW + 1, 2)
    put_registration(db, StoredRegistration(ALICE, "push.example", "n2", "phone", "é"), NOW + 2, 2)
    put_registration(db, StoredRegistration(BOB, "push.example", "n1", "desk", None), NOW, 2)
    with pytest.raises(TooManyRegistrations):
        put_registration(db, StoredRegistration(ALICE, "other.example", "n", "phone", None), NOW, 2)
    assert all_registrations(db) == [
        StoredRegistration(ALICE, "push.example", "n1", "tablet", None),
        StoredRegistration(ALICE, "push.example", "n2", "phone", "é"),
        StoredRegistration(BOB, "push.example", "n1", "desk", None),
    ]
    delete_registrations(db, ALICE, "push.example", "n2")
    assert [r.node for r in all_registrations(db) if r.owner == ALICE] == ["n1"]
    delete_registrations(db, BOB, "push.example", None)
    assert [r.owner for r in all_registrations(db)] == [ALICE]
    assert db.delete_account(ALICE)
    assert backend.rows("SELECT COUNT(*) FROM push_registrations") == [(0,)]
    db.close()


def test_transient_errors_disable_only_in_a_row_and_an_unanswered_publish_frees_the_way() -> None:
    """Section 7.1's "until a sufficient number of errors have been received in a row": four
    'wait' errors keep the registration, the fifth disables it. A publish nobody answers stops
    being awaited after ANSWER_TIMEOUT, and the messages meanwhile go in the next publish.
    Section 8: the app server's affiliation 'none' for the account disables its registration."""
    made = world(min_interval_ms=0)
    phone, phone_out = made.log_in(ALICE, "phone", "192.0.2.10")
    bob, _bob_out = made.log_in(BOB, "desk", "192.0.2.11")
    enable(phone, phone_out)
    log_out(phone)
    chat(bob)
    [unanswered] = made.sent
    made.sent.clear()
    chat(bob)
    made.clock.advance(ANSWER_TIMEOUT)
    [second] = made.sent
    assert made.publishes() == [summary(2)], "the second message, once the first publish is given up"
    made.answer(second["id"])
    assert (unanswered["to"], unanswered["id"]) not in made.sessions.hooks.responses
    for n in range(MAX_TRANSIENT_ERRORS):
        chat(bob)
        [sent] = made.sent
        made.sent.clear()
        assert rows(made) != [], f"disabled after {n} errors"
        made.answer(sent["id"], "resource-constraint", kind="wait")
    assert rows(made) == []

    phone, phone_out = made.log_in(ALICE, "phone", "192.0.2.12")
    enable(phone, phone_out)
    assert len(rows(made)) == 1
    log_out(phone)
    made.sessions.deliver(parseXml(
        f"<message xmlns='jabber:client' from='push.example' to='{ALICE}'><pubsub xmlns='http://jabber.org/protocol/"
        f"pubsub' node='n1'><affiliation jid='{ALICE}' affiliation='none'/></pubsub></message>"))
    assert rows(made) == []
    chat(bob)
    assert made.sent == []
