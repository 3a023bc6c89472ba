"""A fictional social site whose tokens are ``<expires>-<hex HMAC-SHA256(secret, user|expires)>``."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from sns_xmpp.sites.interface import (
    ISite,
    LoginStart,
    Rejection,
    SiteConfigError,
    SiteRejection,
    SocialCredentials,
    VerifiedAccount,
)


def token_for(secret: str, user: str, expires: int) -> str:
    mac = hmac.new(secret.encode(), f"{user}|{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}-{mac}"


@implementer(ISite)
class TinySite:
    single_use = False

    def __init__(self, site_id: str, secret: str) -> None:
        self.site_id = site_id
        self.display_name = "Tiny Example"
        self._secret = secret

    def parse_identifier(self, identifier: str) -> str:
        if not re.fullmatch(r"[a-z]{1,20}", identifier):
            raise SiteRejection(Rejection.MALFORMED, "user names are 1-20 letters")
        return identifier

    def verify(self, identifier: str, token: str, now: float) -> defer.Deferred:
        try:
            user = self.parse_identifier(identifier)
            stamp = token.split("-", 1)[0]
            if not (stamp.isascii() and stamp.isdigit()):
                raise ValueError(stamp)
            expires = int(stamp)
        except ValueError:
            return defer.fail(SiteRejection(Rejection.MALFORMED, "not a tiny token"))
        except SiteRejection as rejection:
            return defer.fail(rejection)
        if not hmac.compare_digest(token_for(self._secret, user, expires).encode(), token.encode("utf-8", "replace")):
            return defer.fail(SiteRejection(Rejection.BAD_SIGNATURE, "wrong token"))
        if now > expires:
            return defer.fail(SiteRejection(Rejection.EXPIRED, "token expired"))
        digest = hashlib.sha256(token.encode()).digest()
        return defer.succeed(VerifiedAccount(self.site_id, user, float(expires), digest))

    def scram_password(self, identifier: str, now: float) -> str | None:
        return None

    def start_login(self, callback_url: str, state: str) -> defer.Deferred:
        return defer.succeed(LoginStart(f"https://tiny.example/login?state={state}"))

    def finish_login(self, params: Mapping[str, str], pending: Mapping[str, str], now: float) -> defer.Deferred:
        user, token = params.get("user", ""), params.get("token", "")
        return self.verify(user, token, now).addCallback(
            lambda account: SocialCredentials(f"{user}@{self.site_id}", token, account.expires))

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def status(self) -> str:
        return "ok"


def make_site(site_id: str, settings: Mapping[str, Any], context: Any) -> TinySite:
    secret = settings.get("secret")
    if not isinstance(secret, str) or len(secret) < 16:
        raise SiteConfigError("secret", "required, at least 16 characters")
    return TinySite(site_id, secret)
