"""The web chat (issue 19): ``/chat``, a real XMPP client in the page where the social login ended.

The hand-over page's "Open chat" button posts the hand-over's account token to ``POST /chat``.
That makes a device password for this one browser (issue 15's device sessions, labelled
``web chat <random>``) and answers with Converse.js, configured to log in as the account with it
over this server's WebSocket (RFC 7395, ``/xmpp-websocket``), so nobody types anything. The
browser never sees the site's signed access info: only the device password, which works for
this device alone, expires with the device lifetime of the account's site, and goes away when
the page's logout posts its logout token to ``POST /chat/logout``. Each opening makes a new one
(the page is not cached, so a reload posts again); the account keeps at most MAX_WEB_CHATS of
them, the oldest going first. An account whose site wants its sessions to end with its
credentials (``session_policy = "token"``) gets no device password, so no web chat: the page
says so (Converse.js cannot use a FAST token, and the site's own token is not for a browser).

Converse.js comes from npm, pinned by ``webchat/package-lock.json``; ``scripts/run`` installs it
with ``npm ci`` where Node.js is present, and this module serves its ``dist`` folder at
``/chat/dist/`` (no CDN, no external font). Where it is not installed, the page says how to get it
and still shows the JID and the device password for any other client.

The chat page carries a credential, so it is sent with ``Cache-Control: no-store``, and with a
Content-Security-Policy of its own: scripts, styles, fonts and images from this server only, the
WebSocket endpoint as the one place to connect to besides it, no framing. The configuration
travels in a JSON data block (not a script), read by ``/chat/start.js``; Converse.js's bundle
needs neither ``'unsafe-eval'`` nor ``'unsafe-inline'`` for scripts. Its components do write
inline styles, so ``style-src`` has ``'unsafe-inline'``: a style runs no code, and the other
directives keep it from loading anything from anywhere but this server.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
import warnings
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.server import Request

from sns_xmpp.auth.devices import DeviceRefused
from sns_xmpp.http.devices import DeviceAccounts
from sns_xmpp.http.host_meta import websocket_url
from sns_xmpp.http.logout import AccountTokens, page
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.sites.jose import JOSEError, b64url_decode, b64url_encode
from sns_xmpp.store.records import DevicePassword

with warnings.catch_warnings():  # its module-level doubles of old resources warn as it is imported
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web import static

log = GatedLogger()

# The project's web client folder (package.json, package-lock.json; node_modules once installed).
WEBCHAT_FOLDER = Path(__file__).resolve().parents[2] / "webchat"
CONVERSE_DIST = Path("node_modules") / "converse.js" / "dist"
DEVICE_LABEL_PREFIX = "web chat "
MAX_WEB_CHATS = 4  # device passwords of web chats per account; a fifth chat removes the oldest
LOGOUT_TOKEN_CONTEXT = b"sns-xmpp-webchat-logout-v1:"

# An ES module: Converse.js 14's bundle is one too (its default export is the `converse` object).
START_SCRIPT = b"""\
import converse from "./dist/converse.min.js";

{
  const config = JSON.parse(document.getElementById("sns-chat-config").textContent);
  const logout = document.getElementById("sns-chat-logout");
  // Logging out in Converse ends this browser's device: the form posts its logout token.
  converse.plugins.add("sns-xmpp-logout", {
    initialize: function () {
      this._converse.api.listen.on("logout", function () { logout.submit(); });
    }
  });
  converse.initialize({
    assets_path: config.assets_path,
    websocket_url: config.websocket_url,
    discover_connection_methods: false,
    authentication: "login",
    auto_login: true,
    auto_reconnect: true,
    jid: config.jid,
    password: config.password,
    view_mode: "fullscreen",
    allow_logout: true,
    clear_cache_on_logout: true,
    i18n: "en",
    show_client_info: false,
    whitelisted_plugins: ["sns-xmpp-logout"]
  });
}
"""


def content_security_policy(public_url: str, websocket: str) -> bytes:
    """The chat page's policy: Converse.js's bundle, its chunks, styles, fonts, sounds and images
    from this server, the WebSocket endpoint to connect to, and nothing else."""
    return "; ".join([
        "default-src 'none'",
        "script-src 'self'",
        # Converse.js's components (lit) write <style> elements and style attributes at run time,
        # with contents no hash can name in advance: styles need 'unsafe-inline' (scripts do not).
        "style-src 'self' 'unsafe-inline'",
        "font-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self'",
        f"connect-src 'self' {websocket}",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]).encode()


class LogoutTokens:
    """The chat page's proof that it may remove its own device password, and nothing else: the
    JID, the device's id and its random label, under HMAC-SHA256 with the per-install key in a
    context of its own (an account token can never pass for one, nor one for an account token).
    The label makes it name exactly one device, even if the store reuses a removed device's id."""

    def __init__(self, secret: bytes) -> None:
        self._key = secret

    def _mac(self, payload: str) -> str:
        return b64url_encode(hmac.new(self._key, LOGOUT_TOKEN_CONTEXT + payload.encode(), hashlib.sha256).digest())

    def issue(self, jid: str, device: DevicePassword) -> str:
        payload = b64url_encode(json.dumps([jid, device.id, device.label], separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}"

    def open(self, token: str) -> tuple[str, int, str] | None:
        """(JID, device id, label) of a valid token; None otherwise."""
        payload, _, mac = token.partition(".")
        if not hmac.compare_digest(self._mac(payload).encode(), mac.encode("ascii", "replace")):
            return None
        try:
            jid, device_id, label = json.loads(b64url_decode(payload))
            return str(jid), int(device_id), str(label)
        except (ValueError, TypeError, JOSEError):
            return None


def _fields(request: Request) -> dict[str, str]:
    return {key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
            for key, values in (request.args or {}).items() if values}


class Assets(static.File):
    """Converse.js's ``dist`` files, with the types a strict browser checks (nosniff) and no
    folder listings."""

    contentTypes = {**static.File.contentTypes, ".js": "text/javascript", ".mjs": "text/javascript",
                    ".css": "text/css", ".json": "application/json", ".map": "application/json",
                    ".wasm": "application/wasm", ".ttf": "font/ttf", ".woff": "font/woff",
                    ".woff2": "font/woff2", ".svg": "image/svg+xml", ".mp3": "audio/mpeg",
                    ".ogg": "audio/ogg", ".ico": "image/x-icon"}

    def directoryListing(self) -> resource.Resource:
        return resource.NoResource("no listing here")

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"cache-control", b"no-cache")  # revalidated: an npm ci may change them
        return super().render_GET(request)


# Converse.js's full-screen login splash has a footer of sponsors' logos from its own web site:
# the policy blocks them, and this hides the empty frames.
STYLE = b"""\
converse-footer { display: none; }
"""


class Fixed(resource.Resource):
    """A small file of this module's own (the start script, the style sheet)."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        return self.body


class WebChat(resource.Resource):
    """``/chat``: POST with the hand-over's account token opens the chat; GET says where to start."""

    def __init__(self, account_tokens: AccountTokens, accounts: DeviceAccounts, logout_tokens: LogoutTokens,
                 public_url: str, websocket_path: str | None, folder: Path = WEBCHAT_FOLDER) -> None:
        """*websocket_path*: where the WebSocket endpoint is served; None when it is off ([http]
        websocket = false), and the page then hands out the credentials only."""
        super().__init__()
        self.account_tokens = account_tokens
        self.accounts = accounts
        self.logout_tokens = logout_tokens
        self.public_url = public_url
        self.websocket = websocket_url(public_url, websocket_path) if websocket_path is not None else None
        self.folder = folder
        self.policy = content_security_policy(public_url, self.websocket or "")
        self.putChild(b"start.js", Fixed(START_SCRIPT, b"text/javascript; charset=utf-8"))
        self.putChild(b"chat.css", Fixed(STYLE, b"text/css; charset=utf-8"))
        self.putChild(b"logout", ChatLogout(logout_tokens, accounts, public_url))

    @property
    def dist(self) -> Path:
        return self.folder / CONVERSE_DIST

    def installed(self) -> bool:
        return (self.dist / "converse.min.js").is_file()

    def why_not(self) -> str | None:
        """Why the chat cannot run here, in words for the person; None when it can."""
        if self.websocket is None:
            return ("The web chat needs this server's WebSocket endpoint, which its operator has turned off "
                    "(<code>[http] websocket</code>).")
        if not self.installed():
            return ("The web chat is not installed on this server: it needs Node.js to install Converse.js. "
                    "Its operator can run <code>apt-get install nodejs npm</code> (Debian) and start the server "
                    "with <code>scripts/run</code>, which installs it (<code>npm ci</code> in <code>webchat/</code>).")
        return None

    def getChild(self, path: bytes, request: Request) -> resource.IResource:
        if path == b"":
            return self
        if path == b"dist" and self.installed():
            return Assets(str(self.dist))
        return resource.NoResource()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        return page("Chat", f'<p>Log in first: the chat opens from the page your login ends on. '
                    f'<a href="{html.escape(self.public_url)}/">Log in</a></p>')

    def render_POST(self, request: Request) -> bytes | int:
        request.setHeader(b"cache-control", b"no-store")
        jid = self.account_tokens.open(_fields(request).get("token", ""))
        if jid is None:
            request.setResponseCode(400)
            return page("Chat not opened", "<p>This link is not valid or has expired: log in at the site again "
                        f'and open the chat from the new page. <a href="{html.escape(self.public_url)}/">Log in</a>'
                        "</p>")
        label = DEVICE_LABEL_PREFIX + secrets.token_hex(4)
        made: Deferred[Any] = self.accounts.listing(jid)
        made.addCallback(lambda devices: self._make_room(jid, devices))
        made.addCallback(lambda _: self.accounts.create(jid, label))
        made.addCallback(lambda password: self.accounts.listing(jid).addCallback(
            lambda devices: self._opened(request, jid, password, [d for d in devices if d.label == label])))
        made.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _make_room(self, jid: str, devices: list[DevicePassword]) -> Deferred[Any] | None:
        """Remove the account's oldest web chats beyond MAX_WEB_CHATS - 1: a chat closed without
        logging out leaves its device password behind (until it expires), and opening the chat
        again and again must neither fill the account's device passwords (auth/devices.py
        MAX_DEVICES) nor leave old tabs' passwords working for ever. A tab whose password goes
        keeps its session until that ends, and then cannot log in again."""
        chats = sorted((d for d in devices if d.label.startswith(DEVICE_LABEL_PREFIX)),
                       key=lambda d: (d.created_at, d.id))
        excess = chats[:max(0, len(chats) - MAX_WEB_CHATS + 1)]
        if not excess:
            return None
        log.info("http.webchat_old_devices_removed jid={jid} count={count}", jid=jid, count=len(excess))
        removals = [self.accounts.remove(jid, device.id) for device in excess]
        return DeferredList(removals, fireOnOneErrback=True, consumeErrors=True)

    def _opened(self, request: Request, jid: str, password: str, made: list[DevicePassword]) -> None:
        if len(made) != 1:  # removed between its making and the listing: nothing to hand out
            raise DeviceRefused("the chat's device password was removed as it was made: try again")
        logout = self.logout_tokens.issue(jid, made[0])
        log.info("http.webchat_opened jid={jid} device={device}", jid=jid, device=made[0].id)
        request.setHeader(b"content-security-policy", self.policy)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        problem = self.why_not()
        request.write((self._chat(jid, password, logout) if problem is None
                       else self._not_installed(problem, jid, password, logout)).encode())
        request.finish()

    def _logout_form(self, logout: str, visible: bool) -> str:
        button = '<button type="submit">Log out of the chat</button>' if visible else ""
        return (f'<form id="sns-chat-logout" method="post" action="{html.escape(self.public_url)}/chat/logout"'
                f'{"" if visible else " hidden"}><input type="hidden" name="token" value="{html.escape(logout)}">'
                f"{button}</form>")

    def _chat(self, jid: str, password: str, logout: str) -> str:
        config = {"jid": jid, "password": password, "websocket_url": self.websocket,
                  "assets_path": f"{self.public_url}/chat/dist/"}
        # In a data block, "</script>" must not appear: JSON may escape every "<".
        data = json.dumps(config).replace("<", "\\u003c")
        base = html.escape(self.public_url)
        return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                '<meta name="viewport" content="width=device-width, initial-scale=1"><title>Chat</title>'
                f'<link rel="stylesheet" href="{base}/chat/dist/converse.min.css">'
                f'<link rel="stylesheet" href="{base}/chat/chat.css">'
                '</head>'
                f'<body class="converse-fullscreen">{self._logout_form(logout, visible=False)}'
                f'<script type="application/json" id="sns-chat-config">{data}</script>'
                f'<script type="module" src="{base}/chat/start.js"></script></body></html>\n')

    def _not_installed(self, problem: str, jid: str, password: str, logout: str) -> str:
        body = (f"<p>{problem}</p><p>Meanwhile, log in with any XMPP client using:</p><dl>"
                f"<dt>JID</dt><dd><code id=\"jid\">{html.escape(jid)}</code></dd>"
                f"<dt>Password</dt><dd><code id=\"password\">{html.escape(password)}</code></dd></dl>"
                "<p>This password is for one device: remove it when you are done.</p>"
                + self._logout_form(logout, visible=True))
        return page("Chat", body).decode()

    def _failed(self, reason: Failure, request: Request) -> None:
        if isinstance(reason.value, DeviceRefused):
            request.setResponseCode(400)
            request.write(page("Chat not opened", f"<p>{html.escape(str(reason.value))}.</p>"))
        else:
            log.failure("http.webchat_failed", reason)
            request.setResponseCode(503)
            request.write(page("Try again later", "<p>The chat's device password could not be made.</p>"))
        request.finish()


class ChatLogout(resource.Resource):
    """``POST /chat/logout`` with the chat page's logout token: remove that page's device password."""

    isLeaf = True

    def __init__(self, tokens: LogoutTokens, accounts: DeviceAccounts, public_url: str) -> None:
        super().__init__()
        self.tokens = tokens
        self.accounts = accounts
        self.public_url = public_url

    def render_POST(self, request: Request) -> bytes | int:
        request.setHeader(b"cache-control", b"no-store")
        opened = self.tokens.open(_fields(request).get("token", ""))
        if opened is None:
            request.setResponseCode(400)
            return page("Not logged out", "<p>This logout link is not valid.</p>")
        jid, device_id, label = opened
        d: Deferred[Any] = self.accounts.listing(jid)

        def remove(devices: list[DevicePassword]) -> Deferred[bool] | bool:
            if any(device.id == device_id and device.label == label for device in devices):
                return self.accounts.remove(jid, device_id)
            return False  # already gone (removed on /devices, expired, or the account logged out)

        d.addCallback(remove)
        d.addCallbacks(lambda removed: self._done(request, jid, device_id, removed),
                       lambda reason: self._failed(request, reason))
        return server.NOT_DONE_YET

    def _done(self, request: Request, jid: str, device_id: int, removed: bool) -> None:
        log.info("http.webchat_logout jid={jid} device={device} removed={removed}", jid=jid, device=device_id,
                 removed=removed)
        request.write(page("Logged out of the chat", "<p>This browser's device password is removed. "
                           f'<a href="{html.escape(self.public_url)}/">Log in again</a></p>'))
        request.finish()

    def _failed(self, request: Request, reason: Failure) -> None:
        log.failure("http.webchat_logout_failed", reason)
        request.setResponseCode(503)
        request.write(page("Try again later", "<p>The device password could not be removed.</p>"))
        request.finish()
