"""The patent's scheme: account access info signed with a key agreed beforehand (HMAC-SHA256).

Wire format (docs/sites.md): the identifier is ``<user>.<session>.<expires>.<kid>``
with user and session in ``[a-z0-9_-]``, expires in seconds since the epoch and
kid the key's name; the token (the XMPP password) is the unpadded base64url
HMAC-SHA256, under key ``kid``, of ``"sns-xmpp-hmac-v1:" + site_id + ":" + identifier``.
Everything in the identifier is lower-case and legal in an XMPP localpart, so a
client may also carry it in a JID (``<identifier>\\40<site>@domain``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from sns_xmpp import settings as framework
from sns_xmpp.sites import settings as check
from sns_xmpp.sites.interface import (
    ISite,
    LoginStart,
    Rejection,
    SiteConfigError,
    SiteContext,
    SiteRejection,
    SocialCredentials,
    VerifiedAccount,
)

IDENTIFIER = re.compile(r"([a-z0-9_-]{1,64})\.([a-z0-9_-]{1,64})\.([0-9]{1,12})\.([a-z0-9_-]{1,32})")
KEY_ID = re.compile(r"[a-z0-9_-]{1,32}")
MAX_TOKEN_CHARS = 64  # 43 for a SHA-256 MAC; anything much longer is not ours


@dataclass(frozen=True)
class HmacPolicy:
    keys: Mapping[str, bytes]
    signing_key: str
    max_lifetime: float
    leeway: float
    single_use: bool


def read_policy(settings: Mapping[str, Any], extra_keys: tuple[str, ...] = ()) -> HmacPolicy:
    check.refuse_unknown(settings, ("keys", "keys_file", "signing_key", "max_lifetime", "leeway", "single_use",
                                    *extra_keys))
    keys = _keys(settings)
    signing_key = settings.get("signing_key", list(keys)[-1])
    if not isinstance(signing_key, str) or signing_key not in keys:
        raise SiteConfigError("signing_key", "must name one of the keys")
    return HmacPolicy(
        keys=keys,
        signing_key=signing_key,
        max_lifetime=check.number(settings, "max_lifetime", 86400, 1, 366 * 86400),
        leeway=check.number(settings, "leeway", 60, 0, 3600),
        single_use=check.flag(settings, "single_use", False),
    )


def _keys(settings: Mapping[str, Any]) -> dict[str, bytes]:
    """The keys, inline as ``keys = { kid = "secret" }`` or as ``keys_file``, a TOML file of that table."""
    given: tuple[str, Any] = framework.secret(settings, "keys") or ("keys", None)
    where, table = given
    if where == "keys_file":
        try:
            table = tomllib.loads(table)
        except tomllib.TOMLDecodeError as error:
            raise SiteConfigError(where, f"cannot read {settings[where]}: {error}") from None
    if not isinstance(table, dict) or not table:
        raise SiteConfigError(where, "required: a table of key id = secret")
    keys: dict[str, bytes] = {}
    for kid, value in table.items():
        if not KEY_ID.fullmatch(kid):
            raise SiteConfigError(f"{where}.{kid}", "key ids are 1-32 of a-z 0-9 _ -")
        if not isinstance(value, str) or len(value) < 16:
            raise SiteConfigError(f"{where}.{kid}", "must be a secret of at least 16 characters")
        keys[kid] = value.encode("utf-8")
    return keys


def sign(site_id: str, key: bytes, identifier: str) -> str:
    mac = hmac.new(key, f"sns-xmpp-hmac-v1:{site_id}:{identifier}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


@implementer(ISite)
class HmacSite:
    """A site that signs ``user.session.expires.kid`` with a shared key."""

    def __init__(self, site_id: str, display_name: str, policy: HmacPolicy, login_url: str) -> None:
        self.site_id = site_id
        self.display_name = display_name
        self.policy = policy
        self.single_use = policy.single_use
        self.login_url = login_url

    # -- tokens ---------------------------------------------------------------

    def mint(self, user: str, session: str, expires: int, kid: str | None = None) -> tuple[str, str]:
        """Sign account access info, as the social site does: (identifier, token)."""
        kid = kid or self.policy.signing_key
        identifier = f"{user}.{session}.{expires}.{kid}"
        if not IDENTIFIER.fullmatch(identifier):
            raise ValueError("user and session must be 1-64 of a-z 0-9 _ -")
        return identifier, sign(self.site_id, self.policy.keys[kid], identifier)

    def _parse(self, identifier: str) -> tuple[str, str, int, str]:
        match = IDENTIFIER.fullmatch(identifier)
        if match is None:
            raise SiteRejection(Rejection.MALFORMED, "the account identifier is not user.session.expires.kid")
        user, session, expires, kid = match.groups()
        return user, session, int(expires), kid

    def parse_identifier(self, identifier: str) -> str:
        return self._parse(identifier)[0]

    def scram_password(self, identifier: str, now: float) -> str | None:
        try:
            kid = self._parse(identifier)[3]
        except SiteRejection:
            return None
        key = self.policy.keys.get(kid)
        return None if key is None else sign(self.site_id, key, identifier)

    def check(self, identifier: str, token: str, now: float) -> VerifiedAccount:
        user, _session, expires, kid = self._parse(identifier)
        key = self.policy.keys.get(kid)
        if key is None:
            raise SiteRejection(Rejection.UNKNOWN_KEY, f"key '{kid}' is not (or no longer) accepted")
        if len(token) > MAX_TOKEN_CHARS or not hmac.compare_digest(
                sign(self.site_id, key, identifier).encode(), token.encode("utf-8", "replace")):
            raise SiteRejection(Rejection.BAD_SIGNATURE, "the signature does not match")
        if now > expires + self.policy.leeway:
            raise SiteRejection(Rejection.EXPIRED, "the credentials have expired")
        if expires - now > self.policy.max_lifetime + self.policy.leeway:
            raise SiteRejection(Rejection.LIFETIME_EXCEEDED, "the expiry is beyond the site's lifetime cap")
        digest = hashlib.sha256(f"{identifier}:{token}".encode()).digest()
        # The identifier carries no issue time: taken as max_lifetime before the expiry, which is
        # exact for a site that issues tokens for max_lifetime (the demo site does) and earlier
        # for shorter ones, the safe side after a revocation (docs/sites.md).
        # The account name is all the site says of the person: it is their name here too.
        return VerifiedAccount(self.site_id, user, float(expires), digest, display_name=user,
                               issued_at=float(expires) - self.policy.max_lifetime)

    def verify(self, identifier: str, token: str, now: float) -> Deferred[VerifiedAccount]:
        try:
            return defer.succeed(self.check(identifier, token, now))
        except Exception:
            return defer.fail()

    # -- the browser flow -----------------------------------------------------

    def start_login(self, callback_url: str, state: str) -> Deferred[LoginStart]:
        url = self.login_url.replace("{callback}", urllib.parse.quote(callback_url, safe=""))
        url = url.replace("{state}", urllib.parse.quote(state, safe=""))
        return defer.succeed(LoginStart(url))

    def finish_login(self, params: Mapping[str, str], pending: Mapping[str, str],
                     now: float) -> Deferred[SocialCredentials]:
        identifier, token = params.get("identifier", ""), params.get("signature", "")

        def credentials(account: VerifiedAccount) -> SocialCredentials:
            return SocialCredentials(f"{identifier}@{self.site_id}", token, account.expires, account=account.account)

        return self.verify(identifier, token, now).addCallback(credentials)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def status(self) -> str:
        return f"ok ({len(self.policy.keys)} key(s), signing with '{self.policy.signing_key}')"


def make_hmac_site(site_id: str, settings: Mapping[str, Any], context: SiteContext) -> HmacSite:
    """Entry point ``hmac``: needs ``keys`` and ``login_url`` (with {callback} and {state})."""
    login_url = check.text(settings, "login_url")
    if not login_url.startswith(("https://", "http://")):
        raise SiteConfigError("login_url", "must be an http(s) URL")
    display_name = check.text(settings, "display_name", site_id)
    policy = read_policy({k: v for k, v in settings.items() if k not in ("login_url", "display_name")})
    return HmacSite(site_id, display_name, policy, login_url)
