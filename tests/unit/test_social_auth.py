"""Telling social user names from local ones, and linking, on a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from sns_xmpp.auth.checker import AuthenticationFailed
from sns_xmpp.auth.local import LocalAccountChecker
from sns_xmpp.auth.social import SocialLoginChecker, social_localpart, split_social
from sns_xmpp.sites.interface import SiteContext
from sns_xmpp.sites.registry import load_sites
from sns_xmpp.store.sqlite import SQLiteDatabase, ThreadedStore


@pytest.mark.parametrize(
    ("authcid", "expected"),
    [
        ("alice", None),
        ("alice@localhost", None),
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
