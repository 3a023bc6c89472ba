"""ejabberd's external authentication protocol (sns_xmpp/authserver/extauth.py) over a
StringTransport, on the real checkers, site plugin and SQL (a synchronous SQLite store): each
request kind, the refusals, the order of answers, the end of input, and no secret in the log."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher

from sns_xmpp.auth.external import ExternalAccounts
from sns_xmpp.auth.local import LocalAccountChecker
from sns_xmpp.auth.scram import derive_all
from sns_xmpp.auth.social import SocialLoginChecker, handover_password
from sns_xmpp.authserver.extauth import NO, YES, ExtauthProtocol, parse_request
from sns_xmpp.sites.interface import SiteContext
from sns_xmpp.sites.registry import load_sites
from sns_xmpp.store import composite
from tests.unit.synchronous_store import SynchronousStore

DOMAIN = "ejabberd.example"
KEY = "0123456789abcdef0123"


class Store(SynchronousStore):
    def social_login(self, site: str, account: str, candidates: Any, now: float) -> Deferred[Any]:
        return self.run(lambda db: composite.social_login(db, site, account, tuple(candidates), now))


class HalfCloseableTransport(StringTransport):
    """StringTransport that, like StandardIO, says when the protocol ends the stream."""

    def loseConnection(self) -> None:
        super().loseConnection()
        self.protocol.connectionLost(None)  # type: ignore[attr-defined]


def packet(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = Store()
        self.sites = load_sites({"sns": {"plugin": "hmac", "keys": {"k": KEY}, "login_url": "https://x/"}},
                                SiteContext(self.clock, "http://h", tmp_path, (DOMAIN,)))
        local = LocalAccountChecker(self.store, iterations=4096)  # type: ignore[arg-type]
        checker = SocialLoginChecker(self.store, self.sites, local, self.clock, "http://h", b"salt")  # type: ignore[arg-type]
        self.accounts = ExternalAccounts(checker, self.store, (DOMAIN,), local.hashing, 4096)  # type: ignore[arg-type]
        self.lost: list[bool] = []
        self.protocol = ExtauthProtocol(self.accounts, self.clock, on_lost=lambda: self.lost.append(True))
        self.transport = HalfCloseableTransport()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def ask(self, *requests: str) -> list[int]:
        """The answers (0 or 1) to *requests*, written at once as ejabberd's port would."""
        self.transport.clear()
        self.protocol.dataReceived(b"".join(packet(r) for r in requests))
        out = self.transport.value()
        assert len(out) == 4 * len(requests), out
        answers = [out[i:i + 4] for i in range(0, len(out), 4)]
        assert all(a in (YES, NO) for a in answers)
        return [a[3] for a in answers]

    def handover(self, account: str, expires: float) -> str:
        site: Any = self.sites.get("sns")
        identifier, token = site.mint(account, "s1", int(expires))
        return handover_password("sns", identifier, token)


@pytest.fixture(name="setup")
def make_setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_parse_request_keeps_colons_in_the_password_and_refuses_other_shapes() -> None:
    request = parse_request(b"auth:carol\\40sns:ejabberd.example:sns1:sns:abc:t:o:k")
    assert request is not None
    assert (request.op, request.user, request.server, request.password) == (
        "auth", "carol\\40sns", DOMAIN, "sns1:sns:abc:t:o:k")
    assert "sns1" not in repr(request)  # a request shown anywhere never shows its password
    assert parse_request(b"isuser:bob:ejabberd.example") is not None
    for bad in (b"isuser:bob:ejabberd.example:extra", b"auth:bob:ejabberd.example", b"certauth:a:b:c",
                b"\xff\xfe", b"", b"auth"):
        assert parse_request(bad) is None, bad


def test_a_social_login_with_the_handover_password_links_the_user_and_isuser_then_knows_it(setup: Setup) -> None:
    """The stable localpart with the sns1: password logs in; isuser says yes once linked (so
    ejabberd keeps offline messages), no before and for strangers."""
    password = setup.handover("carol", setup.clock.seconds() + 600)
    assert setup.ask("isuser:carol\\40sns:ejabberd.example") == [0]
    assert setup.ask(f"auth:carol\\40sns:{DOMAIN}:{password}", f"isuser:carol\\40sns:{DOMAIN}",
                     f"isuser:zed\\40sns:{DOMAIN}") == [1, 1, 0]
    links = setup.store.database.list_links()
    assert [(link.site, link.account, link.jid) for link in links] == [("sns", "carol", f"carol\\40sns@{DOMAIN}")]


def test_tampered_expired_and_misnamed_social_credentials_are_refused(setup: Setup) -> None:
    """A changed signature, credentials past their expiry, another account's credentials, an
    unhosted domain: all answered 0."""
    now = setup.clock.seconds()
    good = setup.handover("carol", now + 600)
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    expired = setup.handover("carol", now - 61)  # past the site's leeway (60 s)
    assert setup.ask(f"auth:carol\\40sns:{DOMAIN}:{good}") == [1]
    dave = setup.handover("dave", now + 600)
    assert setup.ask(f"auth:carol\\40sns:{DOMAIN}:{tampered}", f"auth:carol\\40sns:{DOMAIN}:{expired}",
                     f"auth:carol\\40sns:{DOMAIN}:{dave}", f"auth:carol\\40sns:elsewhere.example:{good}",
                     f"auth:carol\\40sns:{DOMAIN}:") == [0, 0, 0, 0, 0]
    setup.clock.advance(600 + 61)
    assert setup.ask(f"auth:carol\\40sns:{DOMAIN}:{good}") == [0]


def test_local_accounts_register_log_in_change_password_and_are_removed(setup: Setup) -> None:
    """tryregister makes a local account (never under a social name), auth checks its password,
    setpass changes it (not a social account's), removeuser3 needs the password, removeuser not."""
    assert setup.ask(f"tryregister:bob:{DOMAIN}:first", f"tryregister:bob:{DOMAIN}:again",
                     f"tryregister:x\\40sns:{DOMAIN}:pw", "tryregister:bob:elsewhere.example:pw") == [1, 0, 0, 0]
    assert setup.ask(f"auth:bob:{DOMAIN}:first", f"auth:bob:{DOMAIN}:wrong", f"auth:BOB:{DOMAIN}:first",
                     f"isuser:bob:{DOMAIN}") == [1, 0, 1, 1]
    # Requests about one account run in their order: the auth after setpass sees the new password.
    assert setup.ask(f"setpass:bob:{DOMAIN}:second", f"auth:bob:{DOMAIN}:second", f"auth:bob:{DOMAIN}:first",
                     f"removeuser3:bob:{DOMAIN}:first", f"removeuser3:bob:{DOMAIN}:second",
                     f"isuser:bob:{DOMAIN}") == [1, 1, 0, 0, 1, 0]
    password = setup.handover("carol", setup.clock.seconds() + 600)
    assert setup.ask(f"auth:carol\\40sns:{DOMAIN}:{password}", f"setpass:carol\\40sns:{DOMAIN}:mine",
                     f"removeuser:carol\\40sns:{DOMAIN}", f"isuser:carol\\40sns:{DOMAIN}",
                     f"removeuser:nobody:{DOMAIN}") == [1, 0, 1, 0, 0]
    setup.store.database.create_account(f"erin@{DOMAIN}", derive_all("pw", iterations=4096), 0)
    assert setup.ask(f"auth:erin:{DOMAIN}:pw") == [1]


def test_malformed_and_unknown_requests_are_answered_no_and_the_stream_goes_on(setup: Setup) -> None:
    assert setup.ask("certauth:bob:ejabberd.example:cert", "nonsense", f"isuser:a:b:{DOMAIN}",
                     f"auth:a@b:{DOMAIN}:pw", f"isuser:{'x' * 2000}:{DOMAIN}") == [0, 0, 0, 0, 0]
    setup.protocol.dataReceived(b"\x00\x05isu")  # a packet arriving in parts
    setup.protocol.dataReceived(b"ser" + packet(f"isuser:nobody:{DOMAIN}"))
    assert setup.transport.value()[-8:] == NO + NO


class SlowAccounts:
    """Answers each question with a Deferred the test fires."""

    def __init__(self) -> None:
        self.pending: dict[str, Deferred[bool]] = {}

    def exists(self, user: str, server: str) -> Deferred[bool]:
        self.pending[user] = Deferred()
        return self.pending[user]


def test_answers_go_out_in_the_order_of_the_requests_while_they_run_side_by_side() -> None:
    """The second request finishing first waits for the first: ejabberd matches answers by order."""
    accounts = SlowAccounts()
    protocol = ExtauthProtocol(accounts, Clock())  # type: ignore[arg-type]
    transport = HalfCloseableTransport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    protocol.dataReceived(packet(f"isuser:first:{DOMAIN}") + packet(f"isuser:second:{DOMAIN}"))
    assert set(accounts.pending) == {"first", "second"}  # both asked at once
    accounts.pending["second"].callback(True)
    assert transport.value() == b""
    accounts.pending["first"].callback(False)
    assert transport.value() == NO + YES


def test_end_of_input_still_answers_what_was_asked_then_ends(setup: Setup) -> None:
    """ejabberd closing the pipe (a restart) ends the program only after the answers it can still read."""
    accounts = SlowAccounts()
    lost: list[bool] = []
    protocol = ExtauthProtocol(accounts, Clock(), on_lost=lambda: lost.append(True))  # type: ignore[arg-type]
    transport = HalfCloseableTransport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    protocol.dataReceived(packet(f"isuser:first:{DOMAIN}"))
    protocol.readConnectionLost()
    assert not transport.disconnecting and not lost
    accounts.pending["first"].callback(True)
    assert transport.value() == YES
    assert transport.disconnecting and lost == [True]


def test_end_of_input_with_an_answer_that_never_comes_still_ends_the_program() -> None:
    """An orphaned extauth (its ejabberd gone, a check that hangs) must not live on for ever:
    after INPUT_CLOSED_GRACE the stream ends, and with it the program."""
    from sns_xmpp.authserver.extauth import INPUT_CLOSED_GRACE

    accounts, clock = SlowAccounts(), Clock()
    lost: list[bool] = []
    protocol = ExtauthProtocol(accounts, clock, on_lost=lambda: lost.append(True))  # type: ignore[arg-type]
    transport = HalfCloseableTransport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    protocol.dataReceived(packet(f"isuser:stuck:{DOMAIN}"))
    protocol.readConnectionLost()
    clock.advance(INPUT_CLOSED_GRACE - 1)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting and lost == [True]


def test_ejabberd_gone_ends_the_program_once() -> None:
    """Nobody reading the answers (ejabberd stopped) ends the program: StandardIO would stop
    reading and never report the end, which left orphaned extauth processes behind."""
    lost: list[bool] = []
    protocol = ExtauthProtocol(SlowAccounts(), Clock(), on_lost=lambda: lost.append(True))  # type: ignore[arg-type]
    transport = HalfCloseableTransport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    protocol.writeConnectionLost()
    assert lost == [True]
    protocol.connectionLost()
    assert lost == [True]


def test_a_failing_check_is_answered_no_and_logged_as_a_bug(setup: Setup) -> None:
    accounts = SlowAccounts()
    protocol = ExtauthProtocol(accounts, Clock())  # type: ignore[arg-type]
    transport = HalfCloseableTransport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        protocol.dataReceived(packet(f"isuser:first:{DOMAIN}"))
        accounts.pending["first"].errback(RuntimeError("the store broke"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert transport.value() == NO
    assert any(event.get("log_format", "").startswith("extauth.request_failed") for event in events)


def test_no_password_or_signature_reaches_the_log(setup: Setup) -> None:
    """Every request kind, accepted or refused: the passwords and tokens appear in no log event."""
    now = setup.clock.seconds()
    good, expired = setup.handover("carol", now + 600), setup.handover("carol", now - 100)
    secrets = [good, expired, good.rsplit(":", 1)[1], "local-secret-1", "local-secret-2"]
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        setup.ask(f"auth:carol\\40sns:{DOMAIN}:{good}", f"auth:carol\\40sns:{DOMAIN}:{expired}",
                  f"auth:carol\\40sns:{DOMAIN}:{good}x", f"tryregister:bob:{DOMAIN}:local-secret-1",
                  f"setpass:bob:{DOMAIN}:local-secret-2", f"auth:bob:{DOMAIN}:local-secret-1",
                  f"removeuser3:bob:{DOMAIN}:local-secret-2", "nonsense:local-secret-1")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert len(events) >= 6
    text = "\n".join(repr(event) for event in events)
    for secret in secrets:
        assert secret not in text


@pytest.mark.parametrize("request_text", ["isuser:bob", "auth:bob:ejabberd.example"])
def test_every_packet_gets_exactly_one_answer(setup: Setup, request_text: str) -> None:
    assert setup.ask(request_text) == [0]


def test_the_answers_are_ejabberds_two_byte_packets() -> None:
    assert YES == struct.pack("!HH", 2, 1) and NO == struct.pack("!HH", 2, 0)
