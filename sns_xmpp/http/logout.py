"""OpenID Connect Back-Channel Logout 1.0: ``POST /backchannel-logout/<site>``.

When a person logs out at the provider, the provider posts a signed logout token here (register
``<public_url>/backchannel-logout/<site>`` as the client's ``backchannel_logout_uri``). The site
checks it as an ID token and as a logout token (`ILogoutSite.verify_logout`); the account it
names is then logged out everywhere: its sessions end within seconds and the credentials issued
until now stop working (`auth.social.SocialLoginChecker.log_out`). Answers as section 2.8 says:
200 when done (nothing to do counts as done), 400 with an OAuth error document otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.server import Request

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.sites.interface import ILogoutSite, SiteRejection
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
