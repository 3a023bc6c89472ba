"""Login attempts between the redirect to a site and the browser's return, carried by the browser.

The server keeps nothing per started login: what the callback needs (the state,
the site, the site's own pending data such as an OpenID nonce and PKCE verifier,
the expiry) travels in a cookie sealed with HMAC-SHA256 under a per-install key.
A flood of login starts therefore costs the server no memory and cannot push an
honest browser's attempt out of any list; the cookie binds the attempt to the
browser that started it (no login CSRF). The cookie is signed, not encrypted:
its holder, the person logging in, can read it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from sns_xmpp.sites.jose import JOSEError, b64url_decode, b64url_encode

SEAL_CONTEXT = b"sns-xmpp-login-state-v1:"
MAX_COOKIE_CHARS = 3800  # browsers keep cookies up to 4096 bytes, name and attributes included


@dataclass(frozen=True)
class PendingLogin:
    site_id: str
    data: Mapping[str, str]
    created: float


class StateProblem(Exception):
    """Why a callback's state is refused, in words for the person at the browser."""


class PendingLogins:
    """Seals a started login into a cookie value and opens it again at the callback, once verified.

    ``secret`` is the per-install key (``<data_dir>/login-state.key``); without one, a random key
    for this process only is made, so cookies do not survive a restart.
    """

    def __init__(self, clock: IReactorTime, ttl: float = 600, secret: bytes | None = None) -> None:
        self.clock = clock
        self.ttl = ttl
        self._key = secret if secret is not None else secrets.token_bytes(32)

    def new_state(self) -> str:
        return secrets.token_urlsafe(24)

    def _mac(self, payload: str) -> str:
        mac = hmac.new(self._key, SEAL_CONTEXT + payload.encode("ascii", "replace"), hashlib.sha256)
        return b64url_encode(mac.digest())

    def seal(self, state: str, site_id: str, data: Mapping[str, str]) -> str:
        """The cookie value for a login to *site_id* started now with *state*."""
        now = self.clock.seconds()
        document = {"state": state, "site": site_id, "created": now, "expires": now + self.ttl, "data": dict(data)}
        payload = b64url_encode(json.dumps(document, separators=(",", ":")).encode())
        value = f"{payload}.{self._mac(payload)}"
        if len(value) > MAX_COOKIE_CHARS:
            raise ValueError(f"the site's pending data makes a {len(value)}-character cookie")
        return value

    def open(self, cookie: str, state: str, site_id: str) -> PendingLogin:
        """The login the cookie holds, if it is this server's, unexpired, for *site_id* and *state*.

        Raises StateProblem with the reason otherwise."""
        if not cookie:
            raise StateProblem("the login state cookie is missing: start the login again in this browser")
        payload, _, mac = cookie.partition(".")
        if not hmac.compare_digest(self._mac(payload).encode(), mac.encode("ascii", "replace")):
            raise StateProblem("the login state cookie is not one this server issued")
        try:
            document = json.loads(b64url_decode(payload))
            sealed_state, sealed_site = str(document["state"]), str(document["site"])
            created, expires = float(document["created"]), float(document["expires"])
            data = {str(key): str(value) for key, value in dict(document["data"]).items()}
        except (ValueError, KeyError, TypeError, JOSEError):
            raise StateProblem("the login state cookie is not one this server issued") from None
        if sealed_site != site_id:
            raise StateProblem("the login state cookie belongs to a login at another site")
        if not state or not hmac.compare_digest(sealed_state.encode(), state.encode("utf-8", "replace")):
            raise StateProblem("the login state is missing or was issued to another browser")
        if self.clock.seconds() > expires:
            raise StateProblem("the login state has expired: start the login again")
        return PendingLogin(site_id, data, created)
