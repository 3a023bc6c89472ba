"""The per-account login throttle counts failures against the account, however its name is spelled."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from sns_xmpp.auth.local import LocalAccountChecker
from sns_xmpp.auth.scram import derive_all
from sns_xmpp.auth.social import SocialLoginChecker
from sns_xmpp.auth.throttle import AuthThrottle, ThrottlePolicy
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
        # Blocks after 4 failures of one account; no delays, so that every answer comes at once.
        throttle = AuthThrottle(self.clock, ThrottlePolicy(free_failures=100, block_after=4))
        settings = C2SSettings(domains=["localhost"], checker=checker, sessions=no_sessions(),
                               tls_context=None, require_tls=False, allow_plain_without_tls=True,
                               throttle=throttle, max_auth_failures=100)
        self.factory = ClientStreamFactory(lambda: ClientNegotiator(settings), StreamLimits(65536), self.clock)
        self.factory.startFactory()
        self.addresses = 0

    def login(self, authcid: str, password: str) -> str:
        """PLAIN from a new address each time (so that only the account can be throttled): the answer."""
        self.addresses += 1
        host = f"192.0.2.{self.addresses}"
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
