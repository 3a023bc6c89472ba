"""The feature modules: each provides IFeature and registers what it handles in one registry; the
configuration leaves some out; hooks run by priority and may take a stanza; XEP-0202 (the
worked example) answers as the XEP's example does; what features store goes with the account."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.words.xish import domish
from wokkel.generic import parseXml
from zope.interface.verify import verifyObject

from sns_xmpp.config import ConfigError
from sns_xmpp.xmpp.features import ChangedMeanwhile, Feature, FeatureRegistry, IFeature
from sns_xmpp.xmpp.features.built_in import BUILT_IN, install_features
from sns_xmpp.xmpp.hooks import MESSAGE_FROM_CLIENT, MESSAGE_TO_LOCAL, SESSION_AVAILABLE, Hooks
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.test_iq_answers import Session


class Router:
    def __init__(self) -> None:
        self.routes: dict[str | None, object] = {}  # its own: services claim their domains in it


def served(clock: MemoryReactorClock) -> SessionManager:
    sessions = SessionManager(["localhost"], store=None, clock=clock, route=lambda e: None)  # type: ignore[arg-type]
    install_features(sessions, Router(), clock)  # type: ignore[arg-type]
    return sessions


def ask(sessions: SessionManager, xml: str) -> domish.Element:
    session = Session()
    sessions.answer_iq(parseXml(xml), session)  # type: ignore[arg-type]
    [reply] = session.sent
    return reply


def test_every_built_in_feature_provides_the_interface() -> None:
    names = [feature.name for feature in BUILT_IN]
    assert len(names) == len(set(names))
    for feature in BUILT_IN:
        assert verifyObject(IFeature, feature)


def test_two_features_cannot_answer_the_same_iq() -> None:
    """A second module claiming an IQ is a start-up error, not a silent replacement."""
    clock = MemoryReactorClock()
    sessions = served(clock)
    again = Feature("again", lambda registry: registry.iq("urn:xmpp:time", "time", lambda iq: None))
    with pytest.raises(ValueError, match="urn:xmpp:time"):
        again.install(FeatureRegistry(sessions, clock))


def test_entity_time_answers_as_the_xeps_example() -> None:
    """XEP-0202 example 2 asks <time xmlns='urn:xmpp:time'/>; the answer carries tzo and utc (UTC,
    from the injected clock), and a set is a bad-request."""
    clock = MemoryReactorClock()
    clock.advance(1166551115)  # 2006-12-19T17:58:35Z, the XEP's example time
    sessions = served(clock)
    reply = ask(sessions, "<iq type='get' from='alice@localhost/home' to='localhost' id='time_1' "
                          "xmlns='jabber:client'><time xmlns='urn:xmpp:time'/></iq>")
    assert reply.getAttribute("type") == "result" and reply.getAttribute("id") == "time_1"
    [time] = list(reply.elements("urn:xmpp:time", "time"))
    assert str(next(time.elements("urn:xmpp:time", "tzo"))) == "+00:00"
    assert str(next(time.elements("urn:xmpp:time", "utc"))) == "2006-12-19T17:58:35Z"
    refused = ask(sessions, "<iq type='set' to='localhost' id='t2' xmlns='jabber:client'>"
                            "<time xmlns='urn:xmpp:time'/></iq>")
    assert refused.getAttribute("type") == "error"
    assert next(refused.elements(None, "error")).firstChildElement().name == "bad-request"


def test_disco_info_announces_what_the_installed_features_registered() -> None:
    sessions = served(MemoryReactorClock())
    reply = ask(sessions, "<iq type='get' to='localhost' id='d1' xmlns='jabber:client'>"
                          "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    [query] = list(reply.elements("http://jabber.org/protocol/disco#info", "query"))
    announced = {feature["var"] for feature in query.elements("http://jabber.org/protocol/disco#info", "feature")}
    assert {"urn:xmpp:time", "urn:xmpp:ping", "jabber:iq:version", "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items", "jabber:iq:roster", "msgoffline"} <= announced


def test_a_service_domain_gets_its_stanzas_and_is_listed_in_the_servers_items() -> None:
    """registry.service_domains: an in-process service at <label>.<domain> (MUC, upload) receives
    what the router sends there, that domain's disco#items lists it, and a second claim fails."""
    from sns_xmpp.xmpp.routing import StanzaRouter

    clock = MemoryReactorClock()
    router = StanzaRouter()
    sessions = SessionManager(["localhost", "example.org"], store=None, clock=clock, route=router.route)  # type: ignore[arg-type]
    registry = install_features(sessions, router, clock, disabled=["muc"])  # the label is the test's here
    received: list[domish.Element] = []
    assert registry.service_domains("conference", received.append) == ["conference.example.org",
                                                                       "conference.localhost"]
    router.route(parseXml("<presence to='room@conference.localhost/nick' from='alice@localhost/phone'/>"))
    assert [stanza["to"] for stanza in received] == ["room@conference.localhost/nick"]
    reply = ask(sessions, "<iq type='get' to='localhost' id='i1' xmlns='jabber:client'>"
                          "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    items = [item["jid"] for item in reply.firstChildElement().elements()]
    # Each domain lists its own services: a client of localhost must not pick example.org's.
    assert [item for item in items if item.startswith("conference.")] == ["conference.localhost"]
    with pytest.raises(ValueError, match="conference.example.org"):
        registry.service_domains("conference", received.append)


def test_hooks_run_highest_priority_first_and_stop_at_the_first_answer() -> None:
    """Prosody's event semantics: by priority (ties in registration order); a handler that returns
    a value ends the chain and `fire` returns it; an unknown event is a start-up error."""
    hooks = Hooks()
    ran: list[str] = []

    def handler(name: str, answer: object = None) -> Callable[..., object]:
        return lambda *args: ran.append(name) or answer

    hooks.hook(SESSION_AVAILABLE, handler("low"), priority=-5)
    hooks.hook(SESSION_AVAILABLE, handler("first of 0"))
    hooks.hook(SESSION_AVAILABLE, handler("high"), priority=10)
    hooks.hook(SESSION_AVAILABLE, handler("second of 0", "taken"))
    assert hooks.fire(SESSION_AVAILABLE, object()) == "taken"
    assert ran == ["high", "first of 0", "second of 0"]
    with pytest.raises(ValueError, match="no event"):
        hooks.hook("message/sideways", handler("x"))


def test_a_feature_sees_messages_both_ways_and_may_take_one() -> None:
    """MESSAGE_FROM_CLIENT runs on what a bound client sends (stamped with its sender) before
    routing, MESSAGE_TO_LOCAL on what a local user receives before delivery; a handler that
    answers takes the stanza: it is neither routed nor delivered, and XEP-0198 still counts it."""
    from tests.unit.test_stream_management import log_in, output, world

    sessions, factory, _clock = world()
    seen: list[tuple[str, str, str]] = []

    def outbound(session: Any, message: domish.Element) -> object:
        seen.append(("out", message["from"], str(message.body)))
        return True if str(message.body) == "swallow me" else None

    def inbound(message: domish.Element, to: Any) -> object:
        seen.append(("in", to.full(), str(message.body)))
        return None

    registry = FeatureRegistry(sessions, sessions.clock)
    registry.hook(MESSAGE_FROM_CLIENT, outbound)
    registry.hook(MESSAGE_TO_LOCAL, inbound)
    alice, alice_out, _ = log_in(sessions, factory, "alice@localhost", "192.0.2.1")
    bob, bob_out, _ = log_in(sessions, factory, "bob@localhost", "192.0.2.2")
    for stream in (alice, bob):
        stream.dataReceived(b"<presence/>")
    output(alice_out), output(bob_out)
    alice.dataReceived(b"<message to='bob@localhost' type='chat'><body>hello</body></message>"
                       b"<message to='bob@localhost' type='chat'><body>swallow me</body></message>"
                       b"<r xmlns='urn:xmpp:sm:3'/>")
    assert seen == [("out", "alice@localhost/r", "hello"), ("in", "bob@localhost", "hello"),
                    ("out", "alice@localhost/r", "swallow me")]
    delivered = output(bob_out)
    assert "hello" in delivered and "swallow me" not in delivered
    assert "<a xmlns='urn:xmpp:sm:3' h='3'/>" in output(alice_out)  # presence and both messages


def test_features_the_configuration_leaves_out_are_not_there(tmp_path: Path) -> None:
    """[xmpp.features] disabled: the module's IQ is unanswered (service-unavailable), its disco
    feature and stream feature are gone; a name no feature has stops the start with one line
    naming the key (a typo must not leave on what the operator meant to turn off)."""
    from sns_xmpp.config import C2SConfig, FeaturesConfig, XMPPConfig, parse_config
    from sns_xmpp.observe import log_gate
    from sns_xmpp.service import build_server

    clock = MemoryReactorClock()
    sessions = SessionManager(["localhost"], store=None, clock=clock, route=lambda e: None)  # type: ignore[arg-type]
    config = XMPPConfig(C2SConfig(), features=FeaturesConfig(disabled=("entity-time", "stream-management")))
    registry = install_features(sessions, Router(), clock, config=config,  # type: ignore[arg-type]
                                disabled=config.features.disabled)
    assert "entity-time" not in registry.installed and "ping" in registry.installed
    refused = ask(sessions, "<iq type='get' to='localhost' id='t' xmlns='jabber:client'>"
                            "<time xmlns='urn:xmpp:time'/></iq>")
    assert refused.error.firstChildElement().name == "service-unavailable"
    assert "urn:xmpp:time" not in registry.disco_features
    assert [make("localhost").uri for make in sessions.hooks.features_after_auth] == [
        "urn:xmpp:features:rosterver", "urn:xmpp:features:pre-approval", "urn:ietf:params:xml:ns:xmpp-session",
        "urn:xmpp:csi:0", "http://jabber.org/protocol/caps"]  # no sm:3

    gate = log_gate._minimum[0]  # build_server sets the process's log level
    try:
        with pytest.raises(ConfigError) as caught:
            build_server(parse_config(f'[server]\ndata_dir = "{tmp_path}"\n[xmpp.features]\n'
                                      'disabled = ["entity-tiem"]\n'), MemoryReactorClock())
    finally:
        log_gate._minimum[0] = gate
    assert str(caught.value).startswith("sns-xmpp: config error at 'xmpp.features.disabled': no feature entity-tiem")


def test_disco_on_an_account_answers_the_owner_and_the_contacts_it_shares_presence_with() -> None:
    """XEP-0030 3.1: the account's bare JID has the identities account/registered and pubsub/pep
    (XEP-0163 section 6) and the account features; a stranger hears service-unavailable, as of an
    account that does not exist."""
    from twisted.internet import defer

    from sns_xmpp.store.records import RosterItem
    from sns_xmpp.xmpp.roster import Roster
    from tests.unit.feature_tables import FeatureTables

    routed: list[domish.Element] = []
    sessions = SessionManager(["localhost"], store=FeatureTables(), clock=MemoryReactorClock(),  # type: ignore[arg-type]
                              route=routed.append)
    install_features(sessions)
    roster = Roster("alice@localhost", {"bob@localhost": RosterItem("bob@localhost", None, (), "from", False, False)})
    sessions.roster_of_account = (  # type: ignore[method-assign]
        lambda owner: defer.succeed(roster if owner == "alice@localhost" else None))
    query = "<query xmlns='http://jabber.org/protocol/disco#info'/>"
    own = Session()
    own_query = parseXml(f"<iq type='get' id='1' to='alice@localhost' xmlns='jabber:client'>{query}</iq>")
    sessions.answer_account_iq(own_query, "alice@localhost", own)  # type: ignore[arg-type]
    for asker in ("bob@localhost/phone", "eve@localhost/x"):
        sessions.deliver(parseXml(f"<iq type='get' id='2' from='{asker}' to='alice@localhost' "
                                  f"xmlns='jabber:client'>{query}</iq>"))
    answers = [own.sent[0], *routed]
    identities = answers[0].query.elements("http://jabber.org/protocol/disco#info", "identity")
    assert [(i["category"], i["type"]) for i in identities] == [("account", "registered"), ("pubsub", "pep")]
    assert [(a["type"], a.getAttribute("to")) for a in answers] == [
        ("result", None), ("result", "bob@localhost/phone"), ("error", "eve@localhost/x")]
    assert routed[1].error.firstChildElement().name == "service-unavailable"


def test_bind2_inline_actions_are_declared_and_act() -> None:
    """XEP-0386: a feature says what it can do inside a Bind2 request; stream management's
    <enable/> inline enables it on the new session and answers <enabled/> for <bound/>."""
    from tests.unit.test_stream_management import log_in, world

    sessions, factory, _clock = world()
    _stream, _transport, session = log_in(sessions, factory, "bob@localhost", "192.0.2.2", sm=False)
    action = sessions.hooks.inline["urn:xmpp:sm:3"]
    assert action.feature == "stream-management"
    answer = action.act(session, parseXml("<enable xmlns='urn:xmpp:sm:3' resume='true'/>"))
    assert answer is not None and answer.name == "enabled" and answer["resume"] == "true"
    assert session.ledger is not None
    again = action.act(session, parseXml("<enable xmlns='urn:xmpp:sm:3'/>"))
    assert again is not None and again.name == "failed"


def test_every_table_is_claimed_and_what_a_feature_keeps_per_account_goes_with_the_account() -> None:
    """Each table of the schema belongs to the core or to the feature that declared it, and each
    per-account table cascades from accounts, so that deleting an account (the admin tool)
    leaves nothing of it behind; checked on the real SQLite schema."""
    import sqlite3

    from sns_xmpp.store.sqlite import SQLiteDatabase

    sessions = SessionManager(["localhost"], store=None, clock=MemoryReactorClock(), route=lambda e: None)  # type: ignore[arg-type]
    install_features(sessions)
    declared = {storage.table: storage for storage in sessions.hooks.storage}
    assert {storage.feature for storage in declared.values()} >= {"roster", "offline", "private-storage"}
    database = SQLiteDatabase(":memory:")
    connection: sqlite3.Connection = database._conn  # the schema as the migrations made it
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
              if not row[0].startswith("sqlite_")}
    assert tables - set(declared) == CORE_TABLES
    for table, storage in declared.items():
        keys = {(row[2], row[6]) for row in connection.execute(f"PRAGMA foreign_key_list({table})")}
        if storage.per_account:
            assert ("accounts", "CASCADE") in keys, table
        else:  # a service's own (MUC's rooms): no account's rows, so nothing to cascade from accounts
            assert storage.table in SERVICE_TABLES and not any(parent == "accounts" for parent, _ in keys), table


SERVICE_TABLES = {"muc_rooms", "muc_affiliations", "muc_archive"}  # declared per_account=False, the only such tables
CORE_TABLES = {"schema_version", "accounts", "scram_credentials", "social_links", "used_tokens", "revocations",
               "fast_tokens", "device_passwords", "refresh_tokens"}


def test_feature_modules_write_stanzas_only_through_the_counted_path() -> None:
    """A stanza a feature writes straight to a stream would slip past XEP-0198's count (the
    client's honest <a h/> would then look too high): only stream management itself writes its
    own elements, which are not stanzas, to the stream."""
    import ast
    import inspect

    from sns_xmpp.xmpp import features

    for path in Path(inspect.getfile(features)).parent.glob("*.py"):
        if path.name == "stream_management.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "send" and isinstance(node.value, ast.Attribute):
                assert node.value.attr != "stream", f"{path.name}:{node.lineno} writes to the stream"


def test_a_session_bound_by_its_sites_credentials_ends_when_they_expire() -> None:
    """session_policy = "token": the login carries the credentials' expiry and the session ends
    then with not-authorized and the reason; a session without one, and one that ended before,
    are left alone."""
    from sns_xmpp.auth.checker import LoginResult
    from tests.unit.test_limits import connect
    from tests.unit.test_negotiation import HEADER
    from tests.unit.test_stream_management import log_in, output, world

    sessions, factory, clock = world()
    device, device_out, _ = log_in(sessions, factory, "bob@localhost", "192.0.2.2")
    streams = []
    for resource, lasts in (("phone", 60.0), ("gone", 30.0)):
        stream, transport = connect(factory, "192.0.2.1")
        stream.dataReceived(HEADER.format(to="localhost").encode())
        sessions.bind(stream, LoginResult("zoe\\40sns@localhost", "PLAIN", site="sns",
                                          expires=clock.seconds() + lasts), resource)
        output(transport)
        streams.append((stream, transport))
    (phone, phone_out), (gone, _) = streams
    gone.dataReceived(b"</stream:stream>")  # ended by its client before its credentials did
    clock.advance(59.0)
    assert "not-authorized" not in output(phone_out)
    clock.advance(1.0)
    ended = output(phone_out)
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in ended
    assert "the site's credentials have expired" in ended
    clock.advance(3600.0)
    assert "not-authorized" not in output(device_out) and sessions.resources("bob@localhost")


def test_shared_account_state_needs_a_resync_or_what_it_holds_and_by_default_reads_each_held_account() -> None:
    """A node whose subscriber reconnects must be able to read every feature's shared state again:
    a state that says neither how (resync) nor what it holds (held) is refused at install; with
    held only, the resync calls changed_elsewhere for each account held (a copy: the calls may
    change what is held)."""
    sessions = SessionManager(["localhost"], store=None, clock=MemoryReactorClock(), route=lambda e: None)  # type: ignore[arg-type]
    registry = FeatureRegistry(sessions, sessions.clock)
    with pytest.raises(ValueError):
        registry.shared_account_state("nothing", lambda account: None)
    held = {"alice@localhost": 1, "bob@localhost": 2}
    read_again: list[str] = []

    def changed_elsewhere(account: str) -> None:
        read_again.append(account)
        held.pop(account)

    registry.shared_account_state("held", changed_elsewhere, held=lambda: held)
    mine: list[str] = []
    registry.shared_account_state("own", lambda account: None, resync=lambda: mine.append("all") and None)
    for resync in sessions.hooks.resyncs.values():
        resync()
    assert sorted(read_again) == ["alice@localhost", "bob@localhost"] and mine == ["all"]
    assert "nothing" not in sessions.hooks.shared_state


def test_changes_made_meanwhile_are_those_noted_while_a_resync_watches() -> None:
    meanwhile = ChangedMeanwhile()
    meanwhile.note("before@localhost")
    first = meanwhile.watch()
    meanwhile.note("alice@localhost")
    second = meanwhile.watch()
    meanwhile.note("bob@localhost")
    meanwhile.done(first)
    meanwhile.note("carol@localhost")
    assert first == {"alice@localhost", "bob@localhost"}
    assert second == {"bob@localhost", "carol@localhost"}
