"""Every built-in site, the tiny third-party plugin and the example plugin keep the site contract;
a broken plugin makes the contract suite fail naming the property it broke."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
import pytest_twisted
from sns_xmpp_rsa_cookie.contract import RsaCookieContract
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from sns_xmpp.sites.facebook import sign_request
from sns_xmpp.sites.interface import (
    IBearerSite,
    ISite,
    ISiteWithPages,
    LoginStart,
    Rejection,
    SiteConfigError,
    SiteContext,
    SiteRejection,
    VerifiedAccount,
)
from sns_xmpp.testing import (
    BadSettings,
    ContractViolation,
    Credentials,
    SiteContract,
    SiteContractTests,
    UnreachableProvider,
    assert_site_contract,
    check_site_contract,
)
from sns_xmpp.testing.inputs import positions, replacements
from tests.oidc_provider import OIDCProvider

HMAC_KEYS = {"k1": "0123456789abcdef0123", "k2": "fedcba9876543210fedcba"}
FACEBOOK_SECRET = "facebook-app-secret-0123456789"
TINY_SECRET = "tiny-secret-0123456789"


# -- hmac and demo ---------------------------------------------------------------------------------


class HmacContract(SiteContract):
    plugin = "hmac"
    site_id = "sns-example"

    def settings(self) -> Mapping[str, Any]:
        return {"keys": HMAC_KEYS, "login_url": "https://sns.example/login?r={callback}&s={state}"}

    def bad_settings(self) -> Iterable[BadSettings]:
        good = self.settings()
        yield BadSettings.without(good, "keys")
        yield BadSettings.without(good, "login_url")
        yield BadSettings.changed(good, "login_url", "ftp://sns.example/")
        yield BadSettings.changed(good, "keys", {"k1": "short"}, names="keys.k1")
        yield BadSettings.changed(good, "signing_key", "k9")
        yield BadSettings.changed(good, "max_lifetime", -1)
        yield BadSettings.changed(good, "single_use", "yes")
        yield BadSettings.changed(good, "keys_file", str(self.workdir / "missing.toml"),
                                  label="both keys and keys_file")

    def secrets(self) -> Iterable[str]:
        return HMAC_KEYS.values()

    def credentials(self, site: Any, now: float) -> Credentials:
        identifier, token = site.mint("alice", "s1", int(now) + 600)
        return Credentials(identifier, token, "alice")

    def expired_credentials(self, site: Any, now: float) -> Credentials:
        identifier, token = site.mint("alice", "s0", int(now) - 3600)
        return Credentials(identifier, token, "alice")


class DemoContract(HmacContract):
    plugin = "demo"
    site_id = "demo"
    interfaces = (ISiteWithPages,)

    def settings(self) -> Mapping[str, Any]:
        return {}

    def bad_settings(self) -> Iterable[BadSettings]:
        yield BadSettings.changed({}, "max_lifetime", "long")
        yield BadSettings.changed({}, "leeway", 99999)
        yield BadSettings.changed({}, "display_name", "")
        yield BadSettings.changed({}, "keys", {"demo1": "0123456789abcdef"}, label="keys of its own")

    def secrets(self) -> Iterable[str]:
        return [(self.workdir / "data" / "demo-site.key").read_text().strip()]


class TestHmacSite(SiteContractTests):
    contract = HmacContract


class TestDemoSite(SiteContractTests):
    contract = DemoContract


# -- facebook --------------------------------------------------------------------------------------


class FacebookContract(SiteContract):
    plugin = "facebook"
    site_id = "facebook"

    def settings(self) -> Mapping[str, Any]:
        return {"app_id": "1234", "app_secret": FACEBOOK_SECRET}

    def bad_settings(self) -> Iterable[BadSettings]:
        good = self.settings()
        yield BadSettings.without(good, "app_id")
        yield BadSettings.without(good, "app_secret")
        yield BadSettings.changed(good, "app_id", "abc")
        yield BadSettings.changed(good, "app_secret", "short")
        yield BadSettings.changed(good, "app_secret_file", str(self.workdir / "missing"),
                                  label="both app_secret and app_secret_file")
        yield BadSettings.changed({"app_id": "1234"}, "app_secret_file", str(self.workdir / "missing"),
                                  label="an app_secret_file that does not exist")
        yield BadSettings.changed(good, "login_url", "javascript:alert(1)")

    def secrets(self) -> Iterable[str]:
        return [FACEBOOK_SECRET]

    def credentials(self, site: ISite, now: float) -> Credentials:
        payload = {"algorithm": "HMAC-SHA256", "user_id": "10001", "issued_at": int(now)}
        return Credentials("10001", sign_request(FACEBOOK_SECRET, payload), "10001")

    def expired_credentials(self, site: ISite, now: float) -> Credentials:
        payload = {"algorithm": "HMAC-SHA256", "user_id": "10001", "issued_at": int(now) - 7200}
        return Credentials("10001", sign_request(FACEBOOK_SECRET, payload), "10001")




class TestFacebookSite(SiteContractTests):
    contract = FacebookContract


# -- oidc ------------------------------------------------------------------------------------------


class OIDCContract(SiteContract):
    plugin = "oidc"
    site_id = "idp"
    interfaces = (IBearerSite,)
    provider: OIDCProvider

    async def set_up(self) -> None:
        self.provider = OIDCProvider()
        self.provider.listen(self.reactor)

    async def tear_down(self) -> None:
        await self.provider.stop()

    def settings(self) -> Mapping[str, Any]:
        return {"issuer": self.provider.issuer, "client_id": self.provider.client_id,
                "client_secret": self.provider.client_secret}

    def bad_settings(self) -> Iterable[BadSettings]:
        good = self.settings()
        yield BadSettings.without(good, "issuer")
        yield BadSettings.without(good, "client_id")
        yield BadSettings.without(good, "client_secret")
        yield BadSettings.changed(good, "issuer", "http://idp.example/", label="a plain-http issuer off loopback")
        yield BadSettings.changed(good, "scopes", ["profile"])
        yield BadSettings.changed(good, "request_timeout", 0)
        yield BadSettings.changed(good, "client_secret_file", str(self.workdir / "missing"),
                                  label="both client_secret and client_secret_file")

    def secrets(self) -> Iterable[str]:
        nonce_secret = (self.workdir / "data" / f"oidc-{self.site_id}.secret").read_text().strip()
        return [self.provider.client_secret, nonce_secret]

    def credentials(self, site: Any, now: float) -> Credentials:
        return Credentials(self.provider.sub, self.provider.id_token(now, site.issue_nonce()), self.provider.sub)

    def expired_credentials(self, site: Any, now: float) -> Credentials:
        token = self.provider.id_token(now - 1200, site.issue_nonce())
        return Credentials(self.provider.sub, token, self.provider.sub)

    def unreachable_provider(self, url: str) -> UnreachableProvider:
        return UnreachableProvider({**self.settings(), "issuer": url, "request_timeout": 0.3}, timeout=0.3)


class TestOIDCSite(SiteContractTests):
    contract = OIDCContract


# -- the tiny third-party plugin (tests/plugin_package) ------------------------------------------------


class TinyContract(SiteContract):
    plugin = "tiny-example"
    site_id = "tiny"
    refuses_unknown_keys = False

    def settings(self) -> Mapping[str, Any]:
        return {"secret": TINY_SECRET}

    def bad_settings(self) -> Iterable[BadSettings]:
        yield BadSettings.without(self.settings(), "secret")
        yield BadSettings.changed(self.settings(), "secret", "short")

    def secrets(self) -> Iterable[str]:
        return [TINY_SECRET]

    def credentials(self, site: ISite, now: float) -> Credentials:
        from sns_xmpp_tiny_site import token_for

        return Credentials("alice", token_for(TINY_SECRET, "alice", int(now) + 600), "alice")

    def expired_credentials(self, site: ISite, now: float) -> Credentials:
        from sns_xmpp_tiny_site import token_for

        return Credentials("alice", token_for(TINY_SECRET, "alice", int(now) - 10), "alice")


class TestTinySite(SiteContractTests):
    contract = TinyContract


# -- the example plugin (examples/rsa-cookie-site) -----------------------------------------------------


class TestRsaCookieExample(SiteContractTests):
    contract = RsaCookieContract


# -- the suite itself ------------------------------------------------------------------------------------


def test_tampering_samples_both_ends_and_every_separator() -> None:
    """Long tokens are sampled, but always at both ends and around every separator (where base64 segments
    end); a base64url character gets a near change (its lowest bit, the one lenient decoders drop)."""
    text = "A" * 100 + "." + "B" * 100
    chosen = positions(text, 20)
    assert {0, 4, 99, 100, 101, 196, 200} <= set(chosen)
    assert len(chosen) < 40
    assert positions("abc", 20) == [0, 1, 2]
    assert replacements("A")[0] == "B" and replacements("4")[0] == "5"
    assert all(r != c for c in ".-_Az9~" for r in replacements(c))


# -- a broken plugin: each flaw must make the suite fail, naming the property ----------------------------

log = Logger()


def broken_token(secret: str, user: str, expires: int) -> str:
    return f"{expires}.{hmac.new(secret.encode(), f'{user}|{expires}'.encode(), hashlib.sha256).hexdigest()}"


@implementer(ISite)
class BrokenSite:
    """A site with one deliberate flaw: 'blocks', 'logs-secret' or 'accepts-tampered'."""

    display_name = "Broken"
    single_use = False

    def __init__(self, site_id: str, secret: str, flaw: str) -> None:
        self.site_id = site_id
        self._secret = secret
        self.flaw = flaw

    def parse_identifier(self, identifier: str) -> str:
        if not identifier.isascii() or not identifier.isalpha() or not 0 < len(identifier) <= 20:
            raise SiteRejection(Rejection.MALFORMED, "user names are 1-20 letters")
        return identifier

    def _check(self, identifier: str, token: str, now: float) -> VerifiedAccount:
        user = self.parse_identifier(identifier)
        if self.flaw == "blocks":
            time.sleep(0.12)  # a synchronous call to the social site
        if self.flaw == "logs-secret":
            log.debug("broken.verify user={user} key={key}", user=user, key=self._secret)
        head, _, mac = token.partition(".")
        if not head.isascii() or not head.isdigit() or len(head) > 12 or not mac.isascii():
            raise SiteRejection(Rejection.MALFORMED, "not a broken token")
        expected = broken_token(self._secret, user, int(head))
        compared = 40 if self.flaw == "accepts-tampered" else len(expected)  # the flaw: a truncated compare
        if len(token) != len(expected) or not hmac.compare_digest(expected[:compared].encode(),
                                                                  token[:compared].encode()):
            raise SiteRejection(Rejection.BAD_SIGNATURE, "wrong token")
        if now > int(head):
            raise SiteRejection(Rejection.EXPIRED, "token expired")
        return VerifiedAccount(self.site_id, user, float(head), hashlib.sha256(token.encode()).digest())

    def verify(self, identifier: str, token: str, now: float) -> Deferred[VerifiedAccount]:
        return defer.maybeDeferred(self._check, identifier, token, now)

    def scram_password(self, identifier: str, now: float) -> None:
        return None

    def start_login(self, callback_url: str, state: str) -> Deferred[LoginStart]:
        return defer.succeed(LoginStart("https://broken.example/login"))

    def finish_login(self, params: Mapping[str, str], pending: Mapping[str, str], now: float) -> Deferred[Any]:
        return defer.fail(SiteRejection(Rejection.MALFORMED, "no login here"))

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def status(self) -> str:
        return "ok"


def make_broken_site(site_id: str, settings: Mapping[str, Any], context: SiteContext) -> BrokenSite:
    for key in settings:
        if key not in ("secret", "flaw"):
            raise SiteConfigError(key, "unknown key")
    secret = settings.get("secret")
    if not isinstance(secret, str) or len(secret) < 16:
        raise SiteConfigError("secret", "required, at least 16 characters")
    return BrokenSite(site_id, secret, str(settings.get("flaw", "")))


class BrokenContract(SiteContract):
    site_id = "broken"
    secret = "broken-secret-0123456789"

    def __init__(self, flaw: str) -> None:
        self.flaw = flaw

    def load_factory(self) -> Any:
        return make_broken_site

    def settings(self) -> Mapping[str, Any]:
        return {"secret": self.secret, "flaw": self.flaw}

    def bad_settings(self) -> Iterable[BadSettings]:
        yield BadSettings.without(self.settings(), "secret")

    def secrets(self) -> Iterable[str]:
        return [self.secret]

    def credentials(self, site: ISite, now: float) -> Credentials:
        return Credentials("bob", broken_token(self.secret, "bob", int(now) + 600), "bob")

    def expired_credentials(self, site: ISite, now: float) -> Credentials:
        return Credentials("bob", broken_token(self.secret, "bob", int(now) - 10), "bob")


@pytest_twisted.ensureDeferred
async def test_the_broken_site_without_a_flaw_keeps_the_contract() -> None:
    """The broken plugin's flaws are switches: without one it passes, so each failure below is the flaw's."""
    assert await check_site_contract(BrokenContract(flaw="")) == []


@pytest_twisted.ensureDeferred
async def test_a_site_that_blocks_the_reactor_fails_the_suite() -> None:
    """time.sleep in verify is reported as blocking the reactor, with the time and the limit."""
    messages = await check_site_contract(BrokenContract(flaw="blocks"), checks=["reactor_not_blocked"])
    assert messages
    assert all(m.startswith("contract violated: verification blocked the reactor for 0.1") for m in messages)
    assert "(limit 0.05 s) with a valid token [reactor_not_blocked]" in messages[0]


@pytest_twisted.ensureDeferred
async def test_a_site_that_logs_its_secret_fails_the_suite() -> None:
    """A secret in a log event is reported, naming the event but never the secret."""
    messages = await check_site_contract(BrokenContract(flaw="logs-secret"))
    assert messages == ["contract violated: secret #1 of SiteContract.secrets() appeared in a log event "
                        "(event tests.unit.test_contract: 'broken.verify user={user} key={key}') [no_secrets_logged]"]
    assert BrokenContract.secret not in messages[0]


@pytest_twisted.ensureDeferred
async def test_a_site_that_accepts_a_tampered_token_fails_the_suite() -> None:
    """A truncated signature compare is reported as accepting tampered tokens, naming the changed character."""
    with pytest.raises(ContractViolation) as caught:
        await assert_site_contract(BrokenContract(flaw="accepts-tampered"))
    messages = caught.value.messages
    assert messages[0].startswith("contract violated: a tampered token (character 41 of 75 changed from ")
    assert messages[0].endswith(") was accepted [tampered_tokens]")
    assert all(m.endswith("[tampered_tokens]") for m in messages)


