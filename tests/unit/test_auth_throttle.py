"""The per-account login throttle counts failures against the account, however its name is spelled."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from sns_xmpp.auth.local import LocalAccountChecker
from sns_xmpp.auth.scram import derive_all
from sns_xmpp.auth.social import SocialLoginChecker
from sns_xmpp.auth.throttle import AuthThrottle, ThrottlePolicy
from sns_xmpp.config import ConfigError, load_config, parse_config
from sns_xmpp.sites.interface import SiteContext
from sns_xmpp.sites.registry import load_sites
from sns_xmpp.store.records import Account, SocialLink
from sns_xmpp.xmpp.c2s import ClientStreamFactory, StreamLimits
from sns_xmpp.xmpp.negotiation import C2SSettings, ClientNegotiator
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.test_negotiation import HEADER, TLSlessTransport, output

ALICE = Account("alice@localhost", 0.0, derive_all("right"), social=False)


def no_sessions() -> SessionManager:
    """A session core with no features: these streams go no further than authentication."""
    return SessionManager(["localhost"], None, MemoryReactorClock(), lambda stanza: None)  # type: ignore[arg-type]


class Store:
    """Just what a PLAIN login reads and writes, answered at once."""

    def get_account(self, jid: str) -> defer.Deferred:
        return defer.succeed(ALICE if jid == ALICE.jid else None)

    def social_login(self, site: str, account: str, candidates: Iterable[str], now: float) -> defer.Deferred:
        return defer.succeed(SocialLink(site, account, next(iter(candidates)), 0.0, now))

    def remember_token(self, site: str, digest: bytes, expires: float, now: float) -> defer.Deferred:
        return defer.succeed(True)

    def device_passwords(self, jid: str) -> defer.Deferred:
        return defer.succeed([])


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1000)
        self.sites = load_sites({"sns": {"plugin": "hmac", "keys": {"k": "0123456789abcdef"},
                                         "login_url": "https://x/"}},
                                SiteContext(self.clock, "http://h", tmp_path, ("localhost",)))
        store = Store()
        checker = SocialLoginChecker(store, self.sites, LocalAccountChecker(store), self.clock,  # type: ignore[arg-type]
                                     "http://h", b"salt-key")
        # Blocks an (address, account) pair after 4 failures; no delays, so that every answer comes at once.
        throttle = AuthThrottle(self.clock, ThrottlePolicy(free_failures=100, block_after=4))
        settings = C2SSettings(domains=["localhost"], checker=checker, sessions=no_sessions(),
                               tls_context=None, require_tls=False, allow_plain_without_tls=True,
                               throttle=throttle, max_auth_failures=100)
        self.factory = ClientStreamFactory(lambda: ClientNegotiator(settings), StreamLimits(65536), self.clock)
        self.factory.startFactory()

    def login(self, authcid: str, password: str) -> str:
        """PLAIN from one address (the throttle blocks an (address, account) pair): the answer."""
        host = "192.0.2.1"
        stream = self.factory.buildProtocol(IPv4Address("TCP", host, 5000))
        transport = TLSlessTransport(peerAddress=IPv4Address("TCP", host, 5000))
        stream.makeConnection(transport)
        payload = base64.b64encode(f"\x00{authcid}\x00{password}".encode()).decode()
        stream.dataReceived(HEADER.format(to="localhost").encode()
                            + f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
                              .encode())
        return output(transport)


@pytest.mark.parametrize("spellings", [
    ["alice", "alice@localhost", "\uff41\uff4c\uff49\uff43\uff45", "al\u00adice"],
    ["ALICE", "Alice@LOCALHOST", "alice", "a\u00adlice@localhost"],
])
def test_failures_under_every_spelling_of_a_local_account_count_together(tmp_path: Path,
                                                                         spellings: list[str]) -> None:
    """Four wrong passwords under four spellings of alice (bare JID, full-width, soft hyphen, case)
    block alice: the right password is then refused with temporary-auth-failure."""
    server = Server(tmp_path)
    assert "<success" in server.login("\uff41\uff4c\uff49\uff43\uff45", "right"), "every spelling is alice"
    for spelling in spellings:
        assert "<not-authorized/>" in server.login(spelling, "wrong")
    answer = server.login("alice", "right")
    assert "<temporary-auth-failure/>" in answer and "<success" not in answer


def test_failures_under_every_identifier_of_a_social_account_count_together(tmp_path: Path) -> None:
    """A social account is keyed on (site, account id): bad tokens for four different identifiers
    of zoe (other sessions, the JID form) block zoe, and not another account of the site."""
    server = Server(tmp_path)
    site = server.sites.get("sns")
    names = [site.mint("zoe", f"s{n}", 2000)[0] for n in range(4)]
    for n, identifier in enumerate(names):
        name = f"{identifier}\\40sns@localhost" if n % 2 else f"{identifier}@sns"
        assert "<not-authorized/>" in server.login(name, "bad-token")
    identifier, token = site.mint("zoe", "good", 2000)
    answer = server.login(f"{identifier}@sns", token)
    assert "<temporary-auth-failure/>" in answer and "<success" not in answer
    identifier, token = site.mint("yan", "good", 2000)
    assert "<success" in server.login(f"{identifier}@sns", token)


BOB = Account("bob@localhost", 0.0, derive_all("bobs"), social=False)
NAT = "203.0.113.7"  # one carrier-grade NAT address in front of many people


class FairServer(Server):
    """The shipped defaults (ThrottlePolicy()), bob as a second local account, and logins from any
    address the test names: the throttle as carrier-grade NAT meets it."""

    def __init__(self, tmp_path: Path, policy: ThrottlePolicy | None = None) -> None:
        super().__init__(tmp_path)
        self.policy = policy = policy or ThrottlePolicy()
        self.stream: Any = None
        accounts = {ALICE.jid: ALICE, BOB.jid: BOB}
        store = Store()
        store.get_account = lambda jid: defer.succeed(accounts.get(jid))  # type: ignore[method-assign]
        checker = SocialLoginChecker(store, self.sites, LocalAccountChecker(store), self.clock,  # type: ignore[arg-type]
                                     "http://h", b"salt-key")
        self.throttle = AuthThrottle(self.clock, policy)
        settings = C2SSettings(domains=["localhost"], checker=checker, sessions=no_sessions(),
                               tls_context=None, require_tls=False, allow_plain_without_tls=True,
                               throttle=self.throttle, max_auth_failures=100)
        self.factory = ClientStreamFactory(lambda: ClientNegotiator(settings), StreamLimits(65536), self.clock)
        self.factory.startFactory()

    def answer(self, authcid: str, password: str, host: str = NAT) -> str:
        """What the server says at once (no time passes) to one PLAIN login from *host*."""
        if self.stream is not None:
            self.stream.connectionLost(None)  # the previous one hangs up, as its client would
        stream = self.stream = self.factory.buildProtocol(IPv4Address("TCP", host, 5000))
        transport = TLSlessTransport(peerAddress=IPv4Address("TCP", host, 5000))
        stream.makeConnection(transport)
        self.transport = transport
        payload = base64.b64encode(f"\x00{authcid}\x00{password}".encode()).decode()
        stream.dataReceived(HEADER.format(to="localhost").encode()
                            + f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
                              .encode())
        return output(transport)

    def eventually(self, authcid: str, password: str, host: str = NAT) -> str:
        """The answer to one login however long the throttle holds it back."""
        answer = self.answer(authcid, password, host)
        self.clock.advance(self.policy.max_delay)
        return answer + output(self.transport)


def test_expired_credentials_neither_slow_nor_block_the_fresh_ones(tmp_path: Path) -> None:
    """A phone retrying its expired (validly signed) social credentials in the background, 15 times
    from one address, gets the clear reason each time at once, and its owner's fresh credentials
    then log in at once: expired credentials prove the client had real ones, they are no guess."""
    server = FairServer(tmp_path)
    site = server.sites.get("sns")
    stale, token = site.mint("zoe", "old", 900)  # the clock reads 1000
    for _ in range(15):
        answer = server.answer(f"{stale}@sns", token)
        assert "<not-authorized/>" in answer and "expired: " in answer, answer
    fresh, token = site.mint("zoe", "new", 2000)
    assert "<success" in server.answer(f"{fresh}@sns", token)


def test_wrong_passwords_for_one_account_do_not_stop_another_behind_the_same_address(tmp_path: Path) -> None:
    """15 wrong passwords for alice from one NAT address do not stop bob, behind the same address,
    from logging in with his right password at once; once alice's failures block the pair
    (address, alice), bob still logs in."""
    server = FairServer(tmp_path)
    for n in range(15):
        assert "<success" not in server.eventually("alice", f"wrong-{n}")
    assert "<success" in server.answer("bob", "bobs")
    for n in range(15, server.policy.block_after):
        server.eventually("alice", f"wrong-{n}")
    assert "<temporary-auth-failure/>" in server.answer("alice", "right"), "alice's pair is blocked"
    assert "<success" in server.answer("bob", "bobs")


def test_a_refused_right_password_gets_the_answer_a_wrong_one_gets(tmp_path: Path) -> None:
    """Whenever the throttle refuses alice's right password, a wrong one gets the very same answer,
    so that guessing through a block learns nothing: on a blocked pair, and from a fresh address
    after failures from many addresses (before, that answered a wrong guess 'not-authorized' and
    the right one 'temporary-auth-failure')."""
    server = FairServer(tmp_path)

    def after_features(answer: str) -> str:
        return answer.split("</stream:features>")[1]

    for n in range(server.policy.block_after):
        server.eventually("alice", f"wrong-{n}")
        server.eventually("alice", f"elsewhere-{n}", host=f"198.51.100.{n + 1}")
    for host in (NAT, "192.0.2.99"):
        wrong, right = server.eventually("alice", "wrong-again", host), server.eventually("alice", "right", host)
        assert "<success" not in wrong
        assert "<success" in right or after_features(wrong) == after_features(right), (host, wrong, right)
    assert "<temporary-auth-failure/>" in server.eventually("alice", "right"), "the pair (NAT, alice) is blocked"


def test_a_third_party_hammering_an_account_does_not_lock_its_owner_out(tmp_path: Path) -> None:
    """A botnet guessing alice's password from 200 addresses (past the account-wide cap) and one
    attacker hammering her from one address do not stop alice's right password from her own
    address; past the cap, a further bot is blocked after fewer failures than before."""
    server = FairServer(tmp_path)
    for n in range(15):
        server.eventually("alice", f"hammer-{n}", host="198.51.100.1")
    for n in range(200):
        server.eventually("alice", f"bot-{n}", host=f"10.{n // 250}.{n % 250}.1")
    assert "<success" in server.answer("alice", "right", host="192.0.2.200")
    for n in range(server.policy.free_failures):
        server.eventually("alice", f"late-{n}", host="10.9.9.9")
    assert "<temporary-auth-failure/>" in server.eventually("alice", "right", host="10.9.9.9")


def test_an_address_spraying_many_accounts_keeps_its_other_users(tmp_path: Path) -> None:
    """One address past the address-wide cap (wrong passwords for many accounts) still lets bob,
    who has no failures there, log in at once; the accounts it sprays are blocked there sooner."""
    policy = ThrottlePolicy()
    server = FairServer(tmp_path, policy)
    for n in range(policy.address_block_after):
        server.eventually(f"user{n // 5}", "guess")
    assert "<success" in server.answer("bob", "bobs")
    for n in range(policy.free_failures):
        server.eventually("alice", f"spray-{n}")
    assert "<temporary-auth-failure/>" in server.eventually("alice", "right")


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("auth_address_block_after", "1", "must be an integer 2-10000000"),
    ("auth_account_block_after", "'many'", "must be an integer 2-10000000"),
    ("auth_free_failures", "-1", "must be an integer 0-10000"),
    ("auth_max_delay", "61", "must be an integer 0-60"),
])
def test_throttle_settings_name_the_key(key: str, value: str, problem: str) -> None:
    """A bad throttle setting is refused in one line naming its key."""
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[xmpp.c2s]\n{key} = {value}")
    assert str(caught.value) == f"sns-xmpp: config error at 'xmpp.c2s.{key}': {problem}"


def test_the_shipped_configuration_lists_the_policy_defaults() -> None:
    """conf/sns-xmpp.toml carries every throttle key with the default ThrottlePolicy has."""
    c2s = load_config(Path(__file__).parents[2] / "conf" / "sns-xmpp.toml").xmpp.c2s
    text = (Path(__file__).parents[2] / "conf" / "sns-xmpp.toml").read_text()
    policy = ThrottlePolicy()
    shipped = {"auth_block_after": policy.block_after, "auth_block_seconds": policy.block_seconds,
               "auth_free_failures": policy.free_failures, "auth_max_delay": policy.max_delay,
               "auth_address_block_after": policy.address_block_after,
               "auth_account_block_after": policy.account_block_after}
    for key, default in shipped.items():
        assert f"\n{key} = " in text, key
        assert getattr(c2s, key) == default == getattr(parse_config("").xmpp.c2s, key), key


def test_has_pairs_follows_the_pair_records_of_an_address() -> None:
    """A right login skips the account's key where its address has no pair record (has_pairs):
    that answer must follow every way a pair record comes and goes (a failure, a success that
    clears it, the quiet window, pruning), or a blocked pair would be let through."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, ThrottlePolicy(window=60, block_seconds=30, block_after=2, max_records=4))
    assert not throttle.has_pairs("a")
    throttle.failed("a", None)  # no account named: the address's record only
    assert not throttle.has_pairs("a")
    throttle.failed("a", "alice")
    throttle.failed("a", "bob")
    assert throttle.has_pairs("a") and not throttle.has_pairs("b")
    throttle.succeeded("a", "alice")
    assert throttle.has_pairs("a"), "bob's pair is still there"
    throttle.succeeded("a", "bob")
    assert not throttle.has_pairs("a")
    throttle.failed("a", "alice")
    throttle.failed("a", "alice")  # blocked for 30 s
    clock.advance(61)
    assert throttle.has_pairs("a") and not throttle.blocked("a", "alice"), "kept until a look finds it stale"
    assert not throttle.has_pairs("a"), "the look forgot it"
    for host in ("b", "c", "d", "e"):  # max_records 4: pruning drops the oldest records
        throttle.failed(host, "alice")
    assert not throttle.has_pairs("b") and throttle.has_pairs("e")
