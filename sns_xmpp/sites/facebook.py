"""Facebook-style ``signed_request``: ``base64url(HMAC-SHA256(app secret, payload)) . payload``.

The payload is base64url JSON with ``algorithm`` ("HMAC-SHA256"), ``user_id``,
``issued_at`` and optionally ``expires``. The XMPP user name is
``<user_id>@<site_id>`` and the password is the whole signed request; the
signature covers the payload, and the user id in the name must be the payload's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

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
from sns_xmpp.sites.jose import JOSEError, b64url_decode

USER_ID = re.compile(r"[0-9]{1,32}")
MAX_SIGNED_REQUEST = 4096
DEFAULT_LOGIN_URL = ("https://www.facebook.com/dialog/oauth?client_id={app_id}"
                     "&redirect_uri={callback}&state={state}&response_type=signed_request")


def _unb64(text: str) -> bytes:
    """Strict base64url: one spelling per value, so a token cannot be re-spelt past single_use."""
    try:
        return b64url_decode(text)
    except JOSEError:
        raise SiteRejection(Rejection.MALFORMED, "the signed request is not base64url") from None


def sign_request(app_secret: str, payload: Mapping[str, Any]) -> str:
    """Make a signed request as the site does (for tests and tools)."""
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=")
    signature = hmac.new(app_secret.encode(), body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(signature).rstrip(b"=").decode() + "." + body.decode()


@implementer(ISite)
class FacebookSite:
    def __init__(self, site_id: str, display_name: str, app_id: str, app_secret: str, login_url: str,
                 max_lifetime: float, leeway: float, single_use: bool) -> None:
        self.site_id = site_id
        self.display_name = display_name
        self.app_id = app_id
        self._secret = app_secret.encode()
        self.login_url = login_url
        self.max_lifetime = max_lifetime
        self.leeway = leeway
        self.single_use = single_use

    def parse_identifier(self, identifier: str) -> str:
        if not USER_ID.fullmatch(identifier):
            raise SiteRejection(Rejection.MALFORMED, "the account identifier is not a numeric user id")
        return identifier

    def scram_password(self, identifier: str, now: float) -> str | None:
        return None

    def check(self, identifier: str, token: str, now: float) -> VerifiedAccount:
        user_id = self.parse_identifier(identifier)
        if len(token) > MAX_SIGNED_REQUEST or token.count(".") != 1:
            raise SiteRejection(Rejection.MALFORMED, "the password is not a signed request")
        encoded_signature, body = token.split(".")
        expected = hmac.new(self._secret, body.encode("ascii", "replace"), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(encoded_signature)):
            raise SiteRejection(Rejection.BAD_SIGNATURE, "the signature does not match")
        try:
            payload = json.loads(_unb64(body))
        except ValueError:
            raise SiteRejection(Rejection.MALFORMED, "the payload is not JSON") from None
        if not isinstance(payload, dict) or payload.get("algorithm", "").upper() != "HMAC-SHA256":
            raise SiteRejection(Rejection.MALFORMED, "the payload's algorithm is not HMAC-SHA256")
        issued_at, expires = payload.get("issued_at"), payload.get("expires")
        if not isinstance(issued_at, int) or (expires is not None and not isinstance(expires, int)):
            raise SiteRejection(Rejection.MALFORMED, "issued_at and expires must be integers")
        if str(payload.get("user_id")) != user_id:
            raise SiteRejection(Rejection.MALFORMED, "the signed request is for another user")
        ends = min(expires or issued_at + self.max_lifetime, issued_at + self.max_lifetime)
        if issued_at > now + self.leeway:
            raise SiteRejection(Rejection.MALFORMED, "issued in the future")
        if now > ends + self.leeway:
            raise SiteRejection(Rejection.EXPIRED, "the signed request has expired")
        if expires is not None and expires - issued_at > self.max_lifetime + self.leeway:
            raise SiteRejection(Rejection.LIFETIME_EXCEEDED, "the expiry is beyond the site's lifetime cap")
        return VerifiedAccount(self.site_id, user_id, float(ends), hashlib.sha256(token.encode()).digest(),
                               issued_at=float(issued_at))

    def verify(self, identifier: str, token: str, now: float) -> Deferred[VerifiedAccount]:
        return defer.maybeDeferred(self.check, identifier, token, now)

    def start_login(self, callback_url: str, state: str) -> Deferred[LoginStart]:
        url = (self.login_url.replace("{app_id}", urllib.parse.quote(self.app_id, safe=""))
               .replace("{callback}", urllib.parse.quote(callback_url, safe=""))
               .replace("{state}", urllib.parse.quote(state, safe="")))
        return defer.succeed(LoginStart(url))

    def finish_login(self, params: Mapping[str, str], pending: Mapping[str, str],
                     now: float) -> Deferred[SocialCredentials]:
        signed_request = params.get("signed_request", "")
        body = signed_request.partition(".")[2]
        try:
            user_id = str(json.loads(_unb64(body)).get("user_id", ""))
        except (ValueError, AttributeError, SiteRejection):
            return defer.fail(SiteRejection(Rejection.MALFORMED, "no signed request"))

        def credentials(account: VerifiedAccount) -> SocialCredentials:
            return SocialCredentials(f"{user_id}@{self.site_id}", signed_request, account.expires,
                                     account=account.account)

        return self.verify(user_id, signed_request, now).addCallback(credentials)

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def status(self) -> str:
        return "ok"


def make_facebook_site(site_id: str, settings: Mapping[str, Any], context: SiteContext) -> FacebookSite:
    """Entry point ``facebook``: ``app_id``, ``app_secret`` (or ``app_secret_file``), optional limits."""
    check.refuse_unknown(settings, ("app_id", "app_secret", "app_secret_file", "login_url", "display_name",
                                    "max_lifetime", "leeway", "single_use"))
    app_id = check.text(settings, "app_id")
    if not app_id.isdigit():
        raise SiteConfigError("app_id", "must be the numeric app id")
    login_url = check.text(settings, "login_url", DEFAULT_LOGIN_URL)
    if not login_url.startswith(("https://", "http://")):
        raise SiteConfigError("login_url", "must be an http(s) URL")
    return FacebookSite(
        site_id,
        check.text(settings, "display_name", "Facebook"),
        app_id,
        check.secret(settings, "app_secret"),
        login_url,
        max_lifetime=check.number(settings, "max_lifetime", 3600, 1, 30 * 86400),
        leeway=check.number(settings, "leeway", 60, 0, 3600),
        single_use=check.flag(settings, "single_use", False),
    )
