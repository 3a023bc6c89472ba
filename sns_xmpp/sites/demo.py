"""The demo social site: an `hmac` site plus a stand-in for the social site itself.

It lets the embedded default run the whole patent flow on one machine with no
internet: /login-using-demo sends the browser to /demo-site/login, a form that
takes any account name, signs the account access info with the site's key and
sends the browser back to /callback/demo. It is a demonstration: anyone can
log in as anyone. Its key is made on first start, never shipped.
"""

from __future__ import annotations

import html
import secrets
import urllib.parse
from collections.abc import Mapping
from typing import Any

from twisted.web import resource
from twisted.web.server import Request
from zope.interface import implementer

from sns_xmpp.keyfiles import ensure_secret
from sns_xmpp.sites import settings as check
from sns_xmpp.sites.hmac import HmacPolicy, HmacSite, read_policy
from sns_xmpp.sites.interface import ISiteWithPages, SiteContext

ACCOUNT_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-"
DEMO_KEY_ID = "demo1"


@implementer(ISiteWithPages)
class DemoSite(HmacSite):
    def __init__(self, site_id: str, display_name: str, policy: HmacPolicy, context: SiteContext) -> None:
        self.callback_url = f"{context.public_url}/callback/{site_id}"
        self.clock = context.reactor
        login_url = f"{context.public_url}/demo-site/login?return_to={{callback}}&state={{state}}"
        super().__init__(site_id, display_name, policy, login_url)

    def pages(self) -> Mapping[bytes, resource.IResource]:
        return {b"demo-site": DemoPages(self)}


class DemoPages(resource.Resource):
    def __init__(self, site: DemoSite) -> None:
        super().__init__()
        self.putChild(b"login", DemoLoginForm(site))


FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Demo social site</title>
<link rel="stylesheet" href="/static/sns-xmpp.css"></head>
<body>
<h1>Demo social site <span class="demo">DEMO</span></h1>
<p><strong>This is a demonstration site</strong>: it signs in anyone under any name.
A real deployment lists real social sites instead.</p>
<form method="post" action="/demo-site/login">
<input type="hidden" name="return_to" value="{return_to}">
<input type="hidden" name="state" value="{state}">
<label>Account name <input name="account" pattern="[a-z0-9_-]{{1,32}}" required autofocus></label>
<button type="submit">Sign in and go back to the XMPP server</button>
</form>
<p>{error}</p>
</body></html>
"""


class DemoLoginForm(resource.Resource):
    isLeaf = True

    def __init__(self, site: DemoSite) -> None:
        super().__init__()
        self.site = site

    def _arg(self, request: Request, name: str) -> str:
        values = (request.args or {}).get(name.encode(), [b""])
        return values[0].decode("utf-8", "replace")

    def _form(self, request: Request, error: str = "") -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return FORM.format(return_to=html.escape(self._arg(request, "return_to")),
                           state=html.escape(self._arg(request, "state")), error=html.escape(error)).encode()

    def render_GET(self, request: Request) -> bytes:
        if self._arg(request, "return_to") != self.site.callback_url:
            request.setResponseCode(400)
            return b"this demo site only returns to its own XMPP server's callback\n"
        return self._form(request)

    def render_POST(self, request: Request) -> bytes:
        # Only ever back to our own callback: no open redirect through the demo site.
        if self._arg(request, "return_to") != self.site.callback_url:
            request.setResponseCode(400)
            return b"this demo site only returns to its own XMPP server's callback\n"
        account = self._arg(request, "account").strip().lower()
        if not 1 <= len(account) <= 32 or any(c not in ACCOUNT_NAME_CHARS for c in account):
            request.setResponseCode(400)
            return self._form(request, "Account names are 1-32 of a-z, 0-9, _ and -.")
        expires = int(self.site.clock.seconds() + self.site.policy.max_lifetime)
        identifier, token = self.site.mint(account, secrets.token_hex(8), expires)
        query = urllib.parse.urlencode({"identifier": identifier, "signature": token,
                                        "state": self._arg(request, "state")})
        request.redirect(f"{self.site.callback_url}?{query}".encode())
        return b""


def make_demo_site(site_id: str, settings: Mapping[str, Any], context: SiteContext) -> DemoSite:
    """Entry point ``demo``: optional ``max_lifetime``, ``leeway``, ``single_use``, ``display_name``."""
    check.refuse_unknown(settings, ("max_lifetime", "leeway", "single_use", "display_name"))
    display_name = check.text(settings, "display_name", "Demo social site")
    table = {key: value for key, value in settings.items() if key != "display_name"}
    table.setdefault("max_lifetime", 3600)
    policy = read_policy({**table, "keys": {DEMO_KEY_ID: ensure_secret(context.data_dir / "demo-site.key")}})
    return DemoSite(site_id, display_name, policy, context)
