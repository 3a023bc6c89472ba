"""The HTTP side of social login: per-site entries, callbacks, the site list and the front page.

``GET /login-using-<site>`` answers 302 to the site's login page, with a
single-use state bound to the browser by a cookie; ``GET /callback/<site>``
checks both, lets the site finish its flow and hands over the XMPP credentials
(the JID the account is linked to, and a password carrying the site's signed
access info), as HTML for people or JSON for clients that ask for it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Callable, Mapping
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import pages, resource, server
from twisted.web.server import Request

from sns_xmpp.auth.social import handover_password
from sns_xmpp.http import handover_page, style
from sns_xmpp.http.logout import AccountTokens
from sns_xmpp.http.pending import PendingLogins, StateProblem
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.sites.interface import (
    IBearerSite,
    ISite,
    ISiteWithPages,
    ProviderUnavailable,
    SiteRejection,
    SocialCredentials,
)
from sns_xmpp.sites.registry import SiteRegistry

log = GatedLogger()

Linker = Callable[[str, str, str], "Deferred[str]"]
RefreshKeeper = Callable[[str, str, str, str], "Deferred[None]"]
"""(site id, account id, JID, refresh token): keep it to re-confirm the account later."""
"""(site id, account id, domain) -> the JID the account is linked to, made if new
(`auth.social.SocialLoginChecker.linked_jid`)."""

STATE_COOKIE = b"sns_xmpp_login"
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
{stylesheet}</head>
<body>
<h1>{title}</h1>
{body}
</body></html>
"""


def _page(request: Request, title: str, body: str, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    return PAGE.format(title=html.escape(title), body=body, stylesheet=style.LINK).encode()


def _json(request: Request, document: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(document, indent=1).encode() + b"\n"


def _wants_json(request: Request) -> bool:
    return b"application/json" in (request.getHeader(b"accept") or b"")


def _params(request: Request) -> dict[str, str]:
    """The first value of each query (and, for POST, form) field."""
    return {key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
            for key, values in (request.args or {}).items() if values}


# Marks a POST hand-over this server has relayed from its own origin (see Callback.render_POST).
RELAYED = "sns_xmpp_relayed"
MAX_RELAYED_FIELDS = 16
RELAY_BODY = """<p>Finishing the login&hellip;</p>
<form method="post" action="{action}">
{fields}
<input type="hidden" name="{relayed}" value="1">
<noscript><button type="submit">Continue</button></noscript>
</form>
<script>{script}</script>"""
RELAY_SCRIPT = "document.forms[0].submit()"
# The relay page's own policy: the default (http/site.py) and its one script, by its hash.
RELAY_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'sha256-"
    + base64.b64encode(hashlib.sha256(RELAY_SCRIPT.encode()).digest()).decode()
    + "'; style-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


class SocialWeb:
    """What the pages share: the sites, the pending logins and the public addresses."""

    def __init__(self, sites: SiteRegistry, pending: PendingLogins, public_url: str, xmpp_domain: str,
                 clock: IReactorTime, link: Linker, account_tokens: AccountTokens | None = None,
                 keep_refresh_token: RefreshKeeper | None = None) -> None:
        self.link = link
        self.keep_refresh_token = keep_refresh_token  # auth/reconfirm.Reconfirmer.keep
        self.account_tokens = account_tokens  # for the hand-over's "log out everywhere" (http/logout.py)
        self.sites = sites
        self.pending = pending
        self.public_url = public_url
        self.xmpp_domain = xmpp_domain
        self.clock = clock

    def entry_url(self, site: ISite) -> str:
        return f"{self.public_url}/login-using-{site.site_id}"

    def callback_url(self, site: ISite) -> str:
        return f"{self.public_url}/callback/{site.site_id}"

    def site_list(self) -> dict[str, Any]:
        return {
            "xmpp_domain": self.xmpp_domain,
            "sites": [{"id": site.site_id, "name": site.display_name, "login": self.entry_url(site),
                       "oauthbearer": IBearerSite.providedBy(site)} for site in self.sites],
        }


class Root(resource.Resource):
    def __init__(self, web: SocialWeb) -> None:
        super().__init__()
        self.web = web
        self.putChild(b"sites", SiteList(web))
        self.putChild(b"callback", CallbackRoot(web))
        for site in web.sites:
            if not ISiteWithPages.providedBy(site):
                continue
            for name, page in cast(ISiteWithPages, site).pages().items():
                self.putChild(name, page)

    def getChild(self, path: bytes, request: Request) -> resource.IResource:
        if path == b"":
            return FrontPage(self.web)
        prefix = b"login-using-"
        if path.startswith(prefix):
            site = self.web.sites.get(path[len(prefix):].decode("utf-8", "replace"))
            if site is not None:
                return LoginEntry(self.web, site)
            return UnknownSite(self.web)
        return pages.notFound()


class FrontPage(resource.Resource):
    isLeaf = True

    def __init__(self, web: SocialWeb) -> None:
        super().__init__()
        self.web = web

    def render_GET(self, request: Request) -> bytes:
        buttons = "\n".join(
            f'<p><a href="{html.escape(self.web.entry_url(site))}"><button>Log in with '
            f"{html.escape(site.display_name)}</button></a></p>" for site in self.web.sites)
        body = (f"<p>Log in to XMPP at <b>{html.escape(self.web.xmpp_domain)}</b> with an account you already "
                f"have.</p>\n{buttons or '<p>No social sites are enabled.</p>'}")
        return _page(request, "sns-xmpp", body)


class SiteList(resource.Resource):
    isLeaf = True

    def __init__(self, web: SocialWeb) -> None:
        super().__init__()
        self.web = web

    def render_GET(self, request: Request) -> bytes:
        return _json(request, self.web.site_list())


class UnknownSite(SiteList):
    def render_GET(self, request: Request) -> bytes:
        if _wants_json(request):
            return _json(request, {"error": "unknown site", **self.web.site_list()}, 404)
        items = "".join(f'<li><a href="{html.escape(self.web.entry_url(site))}">{html.escape(site.display_name)}'
                        f"</a> ({html.escape(site.site_id)})</li>" for site in self.web.sites)
        return _page(request, "Unknown site", f"<p>There is no such site here. Sites:</p><ul>{items}</ul>", 404)


class LoginEntry(resource.Resource):
    isLeaf = True

    def __init__(self, web: SocialWeb, site: ISite) -> None:
        super().__init__()
        self.web = web
        self.site = site

    def render_GET(self, request: Request) -> int:
        state = self.web.pending.new_state()
        d: Deferred[Any] = self.site.start_login(self.web.callback_url(self.site), state)

        def redirect(start: Any) -> None:
            # The browser carries the attempt (sealed, expiring); the server keeps nothing per start.
            try:
                sealed = self.web.pending.seal(state, self.site.site_id, start.pending)
            except ValueError:  # the plugin's pending data does not fit in a cookie: its bug
                log.failure("http.login_state_too_large site={site}", site=self.site.site_id)
                request.write(_page(request, "Login unavailable", "<p>This site's login cannot start.</p>", 500))
                request.finish()
                return
            secure = "; Secure" if self.web.public_url.startswith("https://") else ""
            cookie = (f"{STATE_COOKIE.decode()}={sealed}; Path=/callback/{self.site.site_id}; "
                      f"Max-Age={int(self.web.pending.ttl)}; HttpOnly; SameSite=Lax{secure}")
            request.setHeader(b"set-cookie", cookie.encode())
            request.setHeader(b"cache-control", b"no-store")
            request.redirect(start.url.encode())
            request.finish()

        def unavailable(reason: Failure) -> None:
            if not isinstance(reason.value, SiteRejection):
                log.failure("http.login_start_failed site={site}", reason, site=self.site.site_id)
            request.write(_page(request, "Try again later", "<p>The site cannot be reached right now.</p>", 503))
            request.finish()

        d.addCallbacks(redirect, unavailable)
        return server.NOT_DONE_YET


class CallbackRoot(resource.Resource):
    def __init__(self, web: SocialWeb) -> None:
        super().__init__()
        self.web = web

    def getChild(self, path: bytes, request: Request) -> resource.IResource:
        site = self.web.sites.get(path.decode("utf-8", "replace"))
        return Callback(self.web, site) if site is not None else UnknownSite(self.web)


class Callback(resource.Resource):
    isLeaf = True

    def __init__(self, web: SocialWeb, site: ISite) -> None:
        super().__init__()
        self.web = web
        self.site = site

    def _refuse(self, request: Request, problem: str, code: int = 400) -> bytes:
        again = self.web.entry_url(self.site)
        if _wants_json(request):
            return _json(request, {"error": problem, "login": again}, code)
        return _page(request, "Login failed", f"<p>{html.escape(problem)}</p>"
                     f'<p><a href="{html.escape(again)}">Start again</a></p>', code)

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader(b"cache-control", b"no-store")
        params = _params(request)
        cookie = (request.getCookie(STATE_COOKIE) or b"").decode("ascii", "replace")
        # The state must be one this server sealed into this browser's cookie, for this site,
        # unexpired: no login CSRF, and no server-side list for a flood to fill.
        try:
            entry = self.web.pending.open(cookie, params.get("state", ""), self.site.site_id)
        except StateProblem as problem:
            log.info("http.callback_state_refused site={site} problem={problem}", site=self.site.site_id,
                     problem=str(problem))
            return self._refuse(request, str(problem))
        request.addCookie(STATE_COOKIE, b"", path=f"/callback/{self.site.site_id}".encode(), max_age=b"0")
        d: Deferred[Any] = self.site.finish_login(params, entry.data, self.web.clock.seconds())
        d.addCallback(self._linked)
        d.addCallbacks(lambda handed: self._hand_over(request, *handed),
                       lambda reason: self._failed(request, reason))
        return server.NOT_DONE_YET

    def _linked(self, credentials: SocialCredentials) -> Deferred[tuple[SocialCredentials, str]]:
        """The credentials and the JID their account is linked to (made now on a first login), so
        that the JID handed over is exactly the one the client will be bound as."""
        identifier = credentials.username.rpartition("@")[0]
        if credentials.account is not None:
            account: Deferred[Any] = Deferred()
            account.callback(credentials.account)
        else:  # a plugin that does not say: its own verification names the account
            account = self.site.verify(identifier, credentials.password, self.web.clock.seconds())
            account.addCallback(lambda verified: verified.account)
        linked: list[str] = []

        def link(account_id: str) -> Deferred[str]:
            linked.append(account_id)
            return self.web.link(self.site.site_id, account_id, self.web.xmpp_domain)

        def keep(jid: str) -> Deferred[Any] | str:
            keeper, token = self.web.keep_refresh_token, credentials.refresh_token
            if keeper is None or token is None:
                return jid
            return keeper(self.site.site_id, linked[0], jid, token).addCallback(lambda _: jid)

        account.addCallback(link)
        account.addCallback(keep)
        return account.addCallback(lambda jid: (credentials, jid))

    def render_POST(self, request: Request) -> bytes | int:
        """The same hand-over as GET, with the fields in the body, out of URLs, history and logs.

        Browsers do not send a SameSite=Lax cookie with a POST that another site's page makes, so
        a POST without our cookie is answered once with a form that posts the same fields again
        from this origin, where the cookie comes along. The state check then runs as for GET: a
        relayed POST that still has no cookie, or another browser's state, is refused.
        """
        params = _params(request)
        if request.getCookie(STATE_COOKIE) is None and RELAYED not in params:
            return self._relay(request, params)
        return self.render_GET(request)

    def _relay(self, request: Request, params: Mapping[str, str]) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        if len(params) > MAX_RELAYED_FIELDS:
            return self._refuse(request, "too many fields in the hand-over")
        fields = "\n".join(f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
                           for name, value in params.items())
        body = RELAY_BODY.format(action=html.escape(self.web.callback_url(self.site)), fields=fields,
                                 relayed=RELAYED, script=RELAY_SCRIPT)
        request.setHeader(b"content-security-policy", RELAY_CONTENT_SECURITY_POLICY.encode())
        return _page(request, f"Logging in with {self.site.display_name}", body)

    def _failed(self, request: Request, reason: Failure) -> None:
        if isinstance(reason.value, SiteRejection):
            log.info("http.callback_refused site={site} kind={kind}", site=self.site.site_id,
                     kind=reason.value.kind.value)
            code = 400
            if isinstance(reason.value, ProviderUnavailable):  # the provider failed, not the person's login
                code = 503 if reason.value.known_down else 502
            request.write(self._refuse(request, str(reason.value), code))
        else:
            log.failure("http.callback_failed site={site}", reason, site=self.site.site_id)
            request.write(self._refuse(request, "the site could not be reached", 503))
        request.finish()

    def _hand_over(self, request: Request, credentials: SocialCredentials, jid: str) -> None:
        identifier = credentials.username.rpartition("@")[0]
        password = handover_password(self.site.site_id, identifier, credentials.password)
        log.info("http.callback_ok site={site}", site=self.site.site_id)
        tokens = self.web.account_tokens
        token = tokens.issue(jid) if tokens is not None else None
        if _wants_json(request):
            document = {"jid": jid, "password": password, "expires": credentials.expires,
                        "display_name": credentials.display_name,
                        # The older pair, the site's own token under its identifier:
                        "username": credentials.username, "token": credentials.password}
            if token is not None:  # POST it as `token` to these (docs/protocol.md)
                document |= {"account_token": token, "logout_url": f"{self.web.public_url}/logout",
                             "devices_url": f"{self.web.public_url}/devices"}
            request.write(_json(request, document))
        else:  # for people, on a phone too: copy buttons and a QR code (http/handover_page.py)
            request.setHeader(b"content-security-policy", handover_page.CONTENT_SECURITY_POLICY)
            body = handover_page.handover_body(jid, password, credentials.display_name,
                                               (self.web.public_url, token) if token is not None else None)
            request.write(_page(request, f"Logged in with {self.site.display_name}", body))
        request.finish()
