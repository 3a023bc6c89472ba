"""Logging out everywhere: from the provider (OpenID Connect Back-Channel Logout 1.0,
``POST /backchannel-logout/<site>``) and from the hand-over page (``POST /logout``).

When a person logs out at the provider, the provider posts a signed logout token here (register
``<public_url>/backchannel-logout/<site>`` as the client's ``backchannel_logout_uri``). The site
checks it as an ID token and as a logout token (`ILogoutSite.verify_logout`); the account it
names is then logged out everywhere: its sessions end within seconds and the credentials issued
until now stop working (`auth.social.SocialLoginChecker.log_out`). Answers as section 2.8 says:
200 when done (nothing to do counts as done), 400 with an OAuth error document otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.server import Request

from sns_xmpp.http import style
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.sites.interface import ILogoutSite, SiteRejection
from sns_xmpp.sites.jose import JOSEError, b64url_decode, b64url_encode
from sns_xmpp.sites.registry import SiteRegistry

log = GatedLogger()

LogOut = Callable[[str, str, bytes, float], "Deferred[int]"]
"""(site id, account id, the logout token's digest, until when to remember it) -> how many sessions
ended here (the other nodes end theirs within seconds); fails with SiteRejection(REPLAYED) for a
token already used."""

MAX_LOGOUT_TOKEN_AGE = 300.0  # as sites/oidc_tokens: how long a used logout token is remembered


class BackChannelLogoutRoot(resource.Resource):
    def __init__(self, sites: SiteRegistry, log_out: LogOut, clock: IReactorTime) -> None:
        super().__init__()
        self.sites = sites
        self.log_out = log_out
        self.clock = clock

    def getChild(self, path: bytes, request: Request) -> resource.IResource:
        site = self.sites.get(path.decode("utf-8", "replace"))
        if site is None or not ILogoutSite.providedBy(site):
            return resource.NoResource("no site here takes back-channel logouts")
        return BackChannelLogout(cast(ILogoutSite, site), self.log_out, self.clock)


class BackChannelLogout(resource.Resource):
    isLeaf = True

    def __init__(self, site: ILogoutSite, log_out: LogOut, clock: IReactorTime) -> None:
        super().__init__()
        self.site = site
        self.log_out = log_out
        self.clock = clock

    def render_POST(self, request: Request) -> bytes | int:
        request.setHeader(b"cache-control", b"no-store")
        tokens = (request.args or {}).get(b"logout_token") or []
        if len(tokens) != 1:
            return _refuse(request, "one logout_token is required")
        now = self.clock.seconds()
        d: Deferred[Any] = self.site.verify_logout(tokens[0].decode("utf-8", "replace"), now)
        d.addCallback(lambda verified: self.log_out(self.site.site_id, verified[0], verified[1],
                                                    now + MAX_LOGOUT_TOKEN_AGE))
        d.addCallbacks(lambda ended: self._done(request, ended), lambda reason: self._failed(request, reason))
        return server.NOT_DONE_YET

    def _done(self, request: Request, ended: int) -> None:
        log.info("http.backchannel_logout site={site} sessions={sessions}", site=self.site.site_id, sessions=ended)
        request.finish()

    def _failed(self, request: Request, reason: Failure) -> None:
        if isinstance(reason.value, SiteRejection):
            request.write(_refuse(request, str(reason.value)))
        else:
            log.failure("http.backchannel_logout_failed site={site}", reason, site=self.site.site_id)
            request.setResponseCode(503)
        request.finish()


def _refuse(request: Request, description: str) -> bytes:
    request.setResponseCode(400)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"error": "invalid_request", "error_description": description}).encode()


# -- "log out everywhere" on the web ---------------------------------------------------------

ACCOUNT_TOKEN_CONTEXT = b"sns-xmpp-account-token-v1:"
ACCOUNT_TOKEN_SECONDS = 86400.0  # how long the hand-over page's account buttons work


class AccountTokens:
    """The proof, given with the credentials at the hand-over, that its holder may manage the
    account on the web (log it out everywhere, make and remove device passwords): the JID and an
    expiry, sealed with HMAC-SHA256 under the per-install key (its own context: a login state can
    never pass for one). As secret as the password beside it."""

    def __init__(self, secret: bytes, clock: IReactorTime, ttl: float = ACCOUNT_TOKEN_SECONDS) -> None:
        self._key = secret
        self.clock = clock
        self.ttl = ttl

    def _mac(self, payload: str) -> str:
        return b64url_encode(hmac.new(self._key, ACCOUNT_TOKEN_CONTEXT + payload.encode(), hashlib.sha256).digest())

    def issue(self, jid: str) -> str:
        document = {"jid": jid, "expires": self.clock.seconds() + self.ttl}
        payload = b64url_encode(json.dumps(document, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}"

    def open(self, token: str) -> str | None:
        """The JID a valid, unexpired token names; None otherwise."""
        payload, _, mac = token.partition(".")
        if not hmac.compare_digest(self._mac(payload).encode(), mac.encode("ascii", "replace")):
            return None
        try:
            document = json.loads(b64url_decode(payload))
            jid, expires = str(document["jid"]), float(document["expires"])
        except (ValueError, KeyError, TypeError, JOSEError):
            return None
        return jid if self.clock.seconds() <= expires else None


LogOutEverywhere = Callable[[str], "Deferred[int]"]
"""(bare JID) -> how many sessions ended here: the account is revoked as `IStore.revoke` does."""


class WebLogout(resource.Resource):
    """``POST /logout`` with the hand-over's ``token``: log the account out everywhere."""

    isLeaf = True

    def __init__(self, tokens: AccountTokens, log_out: LogOutEverywhere) -> None:
        super().__init__()
        self.tokens = tokens
        self.log_out = log_out

    def render_POST(self, request: Request) -> bytes | int:
        request.setHeader(b"cache-control", b"no-store")
        given = (request.args or {}).get(b"token") or [b""]
        jid = self.tokens.open(given[0].decode("ascii", "replace"))
        if jid is None:
            request.setResponseCode(400)
            return page("Not logged out", "<p>This logout link is not valid or has expired: log in at the "
                         "site again and use the new page's button.</p>")
        d = self.log_out(jid)
        d.addCallbacks(lambda ended: self._done(request, jid, ended), lambda reason: self._failed(request, reason))
        return server.NOT_DONE_YET

    def _done(self, request: Request, jid: str, ended: int) -> None:
        log.info("http.web_logout jid={jid} sessions={sessions}", jid=jid, sessions=ended)
        request.write(page("Logged out everywhere", f"<p>{html.escape(jid)} is logged out on every device; "
                            "the credentials given until now no longer work. Log in at the site again "
                            "for new ones.</p>"))
        request.finish()

    def _failed(self, request: Request, reason: Failure) -> None:
        log.failure("http.web_logout_failed", reason)
        request.setResponseCode(503)
        request.write(page("Try again later", "<p>The logout could not be recorded.</p>"))
        request.finish()


def page(title: str, body: str) -> bytes:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>'
            f'{style.LINK}</head>'
            f"<body><h1>{title}</h1>{body}</body></html>").encode()
