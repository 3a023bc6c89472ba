"""Telling social user names from local ones, and linking, on a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

from sns_xmpp.auth.checker import AuthenticationFailed
from sns_xmpp.auth.local import LocalAccountChecker
from sns_xmpp.auth.scram import derive_all
from sns_xmpp.auth.social import SocialLoginChecker, social_localpart, split_social
from sns_xmpp.sites.interface import ISite, Rejection, SiteContext, SiteRejection, VerifiedAccount
from sns_xmpp.sites.registry import load_sites
from sns_xmpp.store.sqlite import SQLiteDatabase, ThreadedStore
from sns_xmpp.xmpp.sasl import PlainAttempt, ScramAttempt, Success
from tests.unit.test_scram import client_final


@pytest.mark.parametrize(
    ("authcid", "expected"),
    [
        ("alice", None),
        ("alice@localhost", None),
        ("alice@LOCALHOST", None),
        ("12345@site", ("12345", "site")),
        ("a.b.1.k@demo", ("a.b.1.k", "demo")),
        ("a.b.1.k\\40demo", ("a.b.1.k", "demo")),
        ("a.b.1.k\\40demo@localhost", ("a.b.1.k", "demo")),
        ("x@y@demo", ("x@y", "demo")),
        ("someone@elsewhere.example", ("someone", "elsewhere.example")),
    ],
)
def test_split_social_never_makes_a_social_name_local(authcid: str, expected) -> None:  # type: ignore[no-untyped-def]
    assert split_social(authcid, "localhost") == expected


def test_social_localparts_are_distinct_and_case_safe() -> None:
    assert social_localpart("demo", "alice") == "alice\\40demo"
    assert social_localpart("oidc", "AbC") != social_localpart("oidc", "abc")
    assert social_localpart("oidc", "AbC").startswith("h-")


@pytest_twisted.ensureDeferred
async def test_simultaneous_first_logins_of_one_account_make_one_user(tmp_path: Path) -> None:
    from twisted.internet import reactor

    clock = Clock()
    clock.advance(1000)
    sites = load_sites({"sns": {"plugin": "hmac", "keys": {"k": "0123456789abcdef"},
                                "login_url": "https://x/", "single_use": True}},
                       SiteContext(clock, "http://h", tmp_path, ("localhost",)))
    store = ThreadedStore(lambda: SQLiteDatabase(tmp_path / "db.sqlite3"), reactor)
    store.startService()
    try:
        await first_logins(clock, sites, store)
    finally:
        await store.stopService()


async def first_logins(clock: Clock, sites, store: ThreadedStore) -> None:  # type: ignore[no-untyped-def]
    checker = SocialLoginChecker(store, sites, LocalAccountChecker(store), clock, "http://h", b"salt-key")
    site = sites.get("sns")
    first, second = site.mint("zoe", "s1", 1500), site.mint("zoe", "s2", 1500)
    results = await defer.gatherResults([
        checker.check_plain(f"{first[0]}@sns", first[1], None, "localhost"),
        checker.check_plain(f"{second[0]}@sns", second[1], None, "localhost")])
    assert {r.jid for r in results} == {"zoe\\40sns@localhost"}
    assert len(await store.list_links()) == 1
    assert await store.list_accounts() == ["zoe\\40sns@localhost"]

    with pytest.raises(AuthenticationFailed, match="^replayed"):  # single_use: the same token again
        await checker.check_plain(f"{first[0]}@sns", first[1], None, "localhost")
    third = site.mint("zoe", "s3", 1500)
    with pytest.raises(AuthenticationFailed) as caught:
        await checker.check_plain(f"{third[0]}@sns", third[1], "bob@localhost", "localhost")
    assert caught.value.condition == "invalid-authzid"
    for n, form in enumerate(("{id}@sns", "{id}\\40sns@localhost", "zoe\\40sns@localhost")):
        identifier, token = site.mint("zoe", f"authz{n}", 1500)
        result = await checker.check_plain(f"{identifier}@sns", token, form.format(id=identifier), "localhost")
        assert result.jid == "zoe\\40sns@localhost", form

    assert checker.mechanisms_for(f"{third[0]}\\40sns@localhost", "localhost") == checker.mechanisms


def test_a_client_naming_itself_gets_only_mechanisms_that_can_work(tmp_path: Path) -> None:
    """Stream 'from' naming a site without SCRAM: SCRAM is not offered (libstrophe never falls back)."""
    sites = load_sites({"facebook": {"app_id": "1", "app_secret": "0123456789abcdef"},
                        "sns": {"plugin": "hmac", "keys": {"k": "0123456789abcdef"}, "login_url": "https://x/"}},
                       SiteContext(Clock(), "http://h", tmp_path, ("localhost",)))
    checker = SocialLoginChecker(None, sites, LocalAccountChecker(None), Clock(), "http://h", b"k")  # type: ignore[arg-type]
    everything = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")
    assert checker.mechanisms_for("12345\\40facebook@localhost", "localhost") == ("PLAIN",)
    assert checker.mechanisms_for("a.b.99.k\\40sns@localhost", "localhost") == everything
    assert checker.mechanisms_for("alice@localhost", "localhost") == everything
    assert checker.mechanisms_for(None, "localhost") == everything


@implementer(ISite)
class OpenSite:
    """A site whose every identifier is its own account id, vouched for by the token "ok".

    Some real providers let a person choose the stable id (a user name taken at sign-up): the
    squatting tests need an attacker who picks any id."""

    single_use = False
    display_name = "Open"

    def __init__(self, site_id: str) -> None:
        self.site_id = site_id

    def parse_identifier(self, identifier: str) -> str:
        return identifier

    def verify(self, identifier: str, token: str, now: float) -> defer.Deferred:
        if token != "ok":
            return defer.fail(SiteRejection(Rejection.BAD_SIGNATURE, "wrong token"))
        return defer.succeed(VerifiedAccount(self.site_id, identifier, now + 60, identifier.encode()))

    def scram_password(self, identifier: str, now: float) -> str | None:
        return None


async def _with_checker(tmp_path: Path, work) -> None:  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    clock = Clock()
    clock.advance(1000)
    sites = load_sites({"sns": {"plugin": "hmac", "keys": {"k": "0123456789abcdef"}, "login_url": "https://x/"}},
                       SiteContext(clock, "http://h", tmp_path, ("localhost",)))
    sites.sites["open"] = OpenSite("open")
    store = ThreadedStore(lambda: SQLiteDatabase(tmp_path / "db.sqlite3"), reactor)
    store.startService()
    try:
        await work(SocialLoginChecker(store, sites, LocalAccountChecker(store), clock, "http://h", b"salt-key"),
                   sites, store)
    finally:
        await store.stopService()


def _scram_first(mechanism: str, authzid: str, username: str) -> tuple[bytes, str]:
    bare = f"n={username},r=cnonce"
    return f"n,a={authzid},{bare}".encode(), bare


@pytest_twisted.ensureDeferred
async def test_an_authzid_that_is_the_user_name_at_the_domain_means_none(tmp_path: Path) -> None:
    """Net::XMPP (sendxmpp) sends the authzid ``<authcid>@<domain>`` whatever the user name holds.

    For a social user name (``<identifier>@<site>``) that is no other identity: the login goes
    on as if no authzid had been sent, with raw PLAIN bytes and with SCRAM's ``a=``. Any other
    authzid is still ``invalid-authzid``."""

    async def work(checker, sites, store) -> None:  # type: ignore[no-untyped-def]
        site = sites.get("sns")
        identifier, token = site.mint("zoe", "s1", 1500)
        user = f"{identifier}@sns"
        plain = PlainAttempt(checker, "localhost")
        step = await plain.respond(f"{user}@localhost\x00{user}\x00{token}".encode())
        assert isinstance(step, Success) and step.result.jid == "zoe\\40sns@localhost"

        scram = ScramAttempt("SCRAM-SHA-256", checker, "localhost")
        first, bare = _scram_first("SCRAM-SHA-256", f"{user}@localhost", user)
        challenge = await scram.respond(first)
        final = client_final("SCRAM-SHA-256", token, bare, challenge.data,
                             gs2_header=f"n,a={user}@localhost,".encode())
        step = await scram.respond(final)
        assert isinstance(step, Success) and step.result.jid == "zoe\\40sns@localhost"

        await store.create_account("alice@localhost", derive_all("pw"), 1.0)
        step = await PlainAttempt(checker, "localhost").respond(b"alice@localhost@localhost\x00alice@localhost\x00pw")
        assert isinstance(step, Success) and step.result.jid == "alice@localhost"

        for authzid in (f"{user}@elsewhere", "bob@localhost", f"{user}@localhost/res"):
            with pytest.raises(AuthenticationFailed) as caught:
                await PlainAttempt(checker, "localhost").respond(f"{authzid}\x00{user}\x00{token}".encode())
            assert caught.value.condition == "invalid-authzid", authzid

    await _with_checker(tmp_path, work)


@pytest_twisted.ensureDeferred
async def test_a_chosen_literal_id_cannot_take_a_hashed_accounts_jid(tmp_path: Path) -> None:
    """JID squatting: an id that is not simple text gets ``h-<hash>\\40<site>``; an attacker who
    may choose a literal id picks exactly that text and logs in first. The victim must still get
    the JID documented for its id, and the attacker another one."""

    async def work(checker, sites, store) -> None:  # type: ignore[no-untyped-def]
        victim = "Victim-Subject"
        documented = social_localpart("open", victim) + "@localhost"
        squat = documented.split("\\40")[0]
        assert squat.startswith("h-")
        attacker = await checker.check_plain(f"{squat}@open", "ok", None, "localhost")
        assert attacker.jid != documented
        result = await checker.check_plain(f"{victim}@open", "ok", None, "localhost")
        assert result.jid == documented
        links = {link.account: link.jid for link in await store.list_links()}
        assert links == {squat: attacker.jid, victim: documented}

    await _with_checker(tmp_path, work)


@pytest_twisted.ensureDeferred
async def test_existing_links_keep_their_jids(tmp_path: Path) -> None:
    """A link made under an older naming scheme keeps its JID: the link table, not the scheme,
    says who a (site, account) is."""

    async def work(checker, sites, store) -> None:  # type: ignore[no-untyped-def]
        await store.social_login("open", "h-oldstyle", iter(["h-oldstyle\\40open@localhost"]), 1.0)
        result = await checker.check_plain("h-oldstyle@open", "ok", None, "localhost")
        assert result.jid == "h-oldstyle\\40open@localhost"

    await _with_checker(tmp_path, work)


def test_both_checkers_provide_the_checker_interface(tmp_path: Path) -> None:
    """Negotiation calls every ILoginChecker method (throttle_key too) on whichever it is given."""
    from zope.interface.verify import verifyObject

    from sns_xmpp.auth.checker import IBearerChecker, ILoginChecker

    sites = load_sites({}, SiteContext(Clock(), "http://h", tmp_path, ("localhost",)))
    local = LocalAccountChecker(None)  # type: ignore[arg-type]
    assert verifyObject(ILoginChecker, local)
    social = SocialLoginChecker(None, sites, local, Clock(), "http://h", b"k")  # type: ignore[arg-type]
    assert verifyObject(ILoginChecker, social)
    assert verifyObject(IBearerChecker, social)  # what OAUTHBEARER asks of it (xmpp/sasl.py)


@pytest_twisted.ensureDeferred
async def test_the_handed_over_jid_logs_in_with_its_password_and_no_other_account_can(tmp_path: Path) -> None:
    """Issue 15's stable identity: the callback hands over the linked JID (here a '-2' user, the
    first one being taken) and a password carrying the site, the access info and the signature.
    That pair logs in, as the localpart or the bare JID, twice, bound to exactly that JID; the
    older user name takes the same password; a password of another account is refused under this
    JID, and this one under another account's user name."""
    from sns_xmpp.auth.social import handover_password

    async def work(checker, sites, store) -> None:  # type: ignore[no-untyped-def]
        await store.create_account("zoe\\40sns@localhost", [], 1.0)  # taken: the link makes a -2
        site = sites.get("sns")
        identifier, token = site.mint("zoe", "s1", 1500)
        jid = await checker.linked_jid("sns", "zoe", "localhost")
        assert jid == "zoe\\40sns-2@localhost"
        password = handover_password("sns", identifier, token)
        for user_name in ("zoe\\40sns-2", "zoe\\40sns-2@localhost", "Zoe\\40SNS-2", f"{identifier}@sns"):
            assert (await checker.check_plain(user_name, password, None, "localhost")).jid == jid, user_name
        other_identifier, other_token = site.mint("yves", "s1", 1500)
        await checker.linked_jid("sns", "yves", "localhost")
        with pytest.raises(AuthenticationFailed, match="another account"):
            await checker.check_plain("zoe\\40sns-2", handover_password("sns", other_identifier, other_token),
                                      None, "localhost")
        with pytest.raises(AuthenticationFailed, match="another account"):
            await checker.check_plain(f"{other_identifier}@sns", password, None, "localhost")
        stale = handover_password("sns", *site.mint("zoe", "s2", 900))  # expired at 900, now 1000
        with pytest.raises(AuthenticationFailed, match="^expired"):
            await checker.check_plain("zoe\\40sns-2", stale, None, "localhost")

    await _with_checker(tmp_path, work)


@pytest_twisted.ensureDeferred
async def test_after_a_revocation_only_credentials_issued_later_log_in_and_to_the_same_user(tmp_path: Path) -> None:
    """Revoking (unlinking, logging out everywhere) keeps the link: credentials the site issued
    before it are refused with the reason 'revoked', then and later; credentials issued after it
    log in as the same user (not a new '-2' one)."""
    from sns_xmpp.auth.social import handover_password

    async def work(checker, sites, store) -> None:  # type: ignore[no-untyped-def]
        site = sites.get("sns")
        old = site.mint("zoe", "s1", 1500)
        jid = (await checker.check_plain(f"{old[0]}@sns", old[1], None, "localhost")).jid
        assert await store.revoke(jid, "logout", checker.clock.seconds()) is not None
        for user_name, password in ((f"{old[0]}@sns", old[1]), ("zoe\\40sns", handover_password("sns", *old))):
            with pytest.raises(AuthenticationFailed, match="^revoked"):
                await checker.check_plain(user_name, password, None, "localhost")
        checker.clock.advance(300)  # the person logs in at the site again: a token signed now
        fresh = site.mint("zoe", "s2", int(checker.clock.seconds()) + int(site.policy.max_lifetime))
        assert (await checker.check_plain(f"{fresh[0]}@sns", fresh[1], None, "localhost")).jid == jid
        [link] = await store.list_links(site="sns")
        assert link.jid == jid
        with pytest.raises(AuthenticationFailed, match="^revoked"):  # still: it was issued before
            await checker.check_plain(f"{old[0]}@sns", old[1], None, "localhost")

    await _with_checker(tmp_path, work)


@pytest_twisted.ensureDeferred
async def test_a_token_bound_site_gives_its_logins_the_credentials_expiry(tmp_path: Path) -> None:
    """session_policy = "token" (a registry key beside plugin and enabled): the login result carries
    the credentials' expiry, which ends the session (xmpp/features/credential_expiry.py); the
    default, "device", carries none; any other value is a one-line config error naming the key."""
    from twisted.internet import reactor

    from sns_xmpp.config import ConfigError

    clock = Clock()
    clock.advance(1000)
    context = SiteContext(clock, "http://h", tmp_path, ("localhost",))
    table = {"plugin": "hmac", "keys": {"k": "0123456789abcdef"}, "login_url": "https://x/"}
    sites = load_sites({"bound": {**table, "session_policy": "token"}, "free": table}, context)
    with pytest.raises(ConfigError, match="^sns-xmpp: config error at 'sites.odd.session_policy': must be one of"):
        load_sites({"odd": {**table, "session_policy": "forever"}}, context)
    store = ThreadedStore(lambda: SQLiteDatabase(tmp_path / "db.sqlite3"), reactor)
    store.startService()
    try:
        checker = SocialLoginChecker(store, sites, LocalAccountChecker(store), clock, "http://h", b"salt-key")
        for site_id, expected in (("bound", 1500.0), ("free", None)):
            identifier, token = sites.get(site_id).mint("zoe", "s1", 1500)
            result = await checker.check_plain(f"{identifier}@{site_id}", token, None, "localhost")
            assert result.expires == expected, site_id
    finally:
        await store.stopService()


@pytest_twisted.ensureDeferred
async def test_device_passwords_are_for_social_accounts_whose_site_does_not_keep_them_to_its_tokens(
        tmp_path: Path) -> None:
    """A device password is made for a linked social account; not for a local one, nor for one
    of a site whose sessions end with its credentials (session_policy = "token"); a label is
    1-64 printable characters."""
    from twisted.internet import reactor

    from sns_xmpp.auth.devices import DeviceRefused

    clock = Clock()
    clock.advance(1000)
    table = {"plugin": "hmac", "keys": {"k": "0123456789abcdef"}, "login_url": "https://x/"}
    sites = load_sites({"free": table, "bound": {**table, "session_policy": "token"}},
                       SiteContext(clock, "http://h", tmp_path, ("localhost",)))
    store = ThreadedStore(lambda: SQLiteDatabase(tmp_path / "db.sqlite3"), reactor)
    store.startService()
    try:
        checker = SocialLoginChecker(store, sites, LocalAccountChecker(store), clock, "http://h", b"salt-key")
        free = await checker.linked_jid("free", "zoe", "localhost")
        bound = await checker.linked_jid("bound", "zoe", "localhost")
        password = await checker.create_device_password(free, "phone")
        assert (await checker.check_plain(free.split("@")[0], password, None, "localhost")).jid == free
        assert free in checker.devices.accounts
        for jid, label, problem in ((bound, "phone", "end with its credentials"), ("alice@localhost", "x", "social"),
                                    (free, "", "printable"), (free, "x" * 65, "printable")):
            with pytest.raises(DeviceRefused, match=problem):
                await checker.create_device_password(jid, label)
    finally:
        await store.stopService()


@pytest_twisted.ensureDeferred
async def test_a_device_lasts_the_sites_device_lifetime_from_the_login_that_made_it(tmp_path: Path) -> None:
    """device_lifetime (a registry key beside session_policy): a social login says until when a
    device it sets up may last; a FAST token issued then expires by that time at the latest, and
    no rotation takes it further; a device password (made with the hand-over's token, right after
    a login at the site) lasts that long from its making."""
    from twisted.internet import reactor

    from sns_xmpp.auth.fast import FastTokens, initiator, token_hash
    from sns_xmpp.config import ConfigError

    clock = Clock()
    clock.advance(1000)
    table = {"plugin": "hmac", "keys": {"k": "0123456789abcdef"}, "login_url": "https://x/", "device_lifetime": 100}
    sites = load_sites({"sns": table}, SiteContext(clock, "http://h", tmp_path, ("localhost",)))
    store = ThreadedStore(lambda: SQLiteDatabase(tmp_path / "db.sqlite3"), reactor)
    store.startService()
    try:
        checker = SocialLoginChecker(store, sites, LocalAccountChecker(store), clock, "http://h", b"salt-key")
        identifier, token = sites.get("sns").mint("zoe", "s1", 1500)
        login = await checker.check_plain(f"{identifier}@sns", token, None, "localhost")
        assert login.confirmed_until == 1100.0
        fast = FastTokens(store, clock, lifetime=30 * 86400)
        issued = await fast.issue(login.jid, "phone", confirmed_until=login.confirmed_until)
        assert issued.expires_at == 1100.0
        clock.advance(50)
        again = await fast.log_in(issued.mechanism, "zoe\\40sns", initiator(token_hash(issued.token)), "localhost",
                                  "phone", 1, False)
        assert again.token.expires_at == 1100.0 and again.result.confirmed_until == 1100.0  # rotated, not renewed
        password = await checker.create_device_password(login.jid, "laptop")
        assert (await checker.check_plain("zoe\\40sns", password, None, "localhost")).jid == login.jid
        clock.advance(51)  # 1101: the device's lifetime is over
        with pytest.raises(AuthenticationFailed):
            await fast.log_in(again.token.mechanism, "zoe\\40sns", initiator(token_hash(again.token.token)),
                              "localhost", "phone", 2, False)
        assert (await checker.check_plain("zoe\\40sns", password, None, "localhost")).jid == login.jid
        clock.advance(50)  # 1151: the device password, made at 1050, has lived its 100 s
        with pytest.raises(AuthenticationFailed, match="wrong credentials"):
            await checker.check_plain("zoe\\40sns", password, None, "localhost")
        with pytest.raises(ConfigError, match="'sites.bad.device_lifetime'"):
            load_sites({"bad": {**table, "device_lifetime": 10}}, SiteContext(clock, "http://h", tmp_path, ()))
    finally:
        await store.stopService()


@pytest_twisted.ensureDeferred
async def test_the_row_decides_a_fast_login_on_every_node(tmp_path: Path) -> None:
    """Two nodes share the store: rotated on another node (the old token taken in its grace period
    there), or deleted by a revocation, a login is judged on the row as it is now, never on what
    this node saw before."""
    from twisted.internet import reactor

    from sns_xmpp.auth.fast import FastTokens, initiator, token_hash

    clock = Clock()
    clock.advance(1000)
    store = ThreadedStore(lambda: SQLiteDatabase(tmp_path / "db.sqlite3"), reactor)
    store.startService()
    try:
        await store.create_account("zoe@localhost", [], 1.0)
        here, there = FastTokens(store, clock, lifetime=86400), FastTokens(store, clock, lifetime=86400)
        issued = await here.issue("zoe@localhost", "phone")

        def proof(token: str) -> bytes:
            return initiator(token_hash(token))

        first = await here.log_in(issued.mechanism, "zoe", proof(issued.token), "localhost", "phone", 1, False)
        # The other node takes the old token in its grace period: the row rotates there.
        elsewhere = await there.log_in(issued.mechanism, "zoe", proof(issued.token), "localhost", "phone", 2, False)
        with pytest.raises(AuthenticationFailed):  # first.token is no longer current, nor the previous one
            await here.log_in(issued.mechanism, "zoe", proof(first.token.token), "localhost", "phone", 3, False)
        assert (await here.log_in(issued.mechanism, "zoe", proof(elsewhere.token.token), "localhost", "phone", 1,
                                  False)).result.jid == "zoe@localhost"
        await store.revoke("zoe@localhost", "logout", clock.seconds())
        with pytest.raises(AuthenticationFailed, match="wrong or expired token"):
            await here.log_in(issued.mechanism, "zoe", proof(elsewhere.token.token), "localhost", "phone", 9, False)
    finally:
        await store.stopService()
