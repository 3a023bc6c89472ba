"""This plugin described for the sns-xmpp contract suite (``sns_xmpp.testing``).

Shipped with the package so that anyone can check it against the server they
run: ``python -m sns_xmpp.testing sns_xmpp_rsa_cookie.contract:RsaCookieContract``.
The suite plays the social site: it makes a key pair, signs cookies, and runs
a small session service on 127.0.0.1 that the plugin asks about sessions.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sns_xmpp.sites.interface import ISite
from sns_xmpp.testing import BadSettings, Credentials, SiteContract, UnreachableProvider
from twisted.internet.defer import maybeDeferred
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from sns_xmpp_rsa_cookie.cookie import sign_cookie

_KEYS: dict[str, rsa.RSAPrivateKey] = {}


def site_key() -> rsa.RSAPrivateKey:
    """The fictional site's signing key, made once per process (RSA key generation is slow)."""
    if "site" not in _KEYS:
        _KEYS["site"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS["site"]


def pem(key: Any, private: bool = False) -> bytes:
    if private:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class SessionService(Resource):
    """The site's session API: ``GET /sessions/<sid>`` -> ``{"active": true}``, 404 for ended sessions."""

    isLeaf = True

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.ended: set[str] = set()
        self.asked: list[str] = []

    def render_GET(self, request: Request) -> bytes:
        given = request.getHeader("authorization") or ""
        request.setHeader("content-type", "application/json")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            request.setResponseCode(401)
            return b'{"error": "unauthorized"}'
        sid = (request.path or b"").decode("ascii", "replace").removeprefix("/sessions/")
        self.asked.append(sid)
        if sid in self.ended:
            request.setResponseCode(404)
            return b'{"active": false}'
        return json.dumps({"active": True}).encode()


class _QuietSite(Site):
    def log(self, request: http.Request) -> None:
        pass  # no access log lines in the log capture


class RsaCookieContract(SiteContract):
    plugin = "rsa-cookie-example"
    site_id = "rsa-cookie"

    async def set_up(self) -> None:
        self.private_key = site_key()
        self.public_key_file = self.workdir / "site-public.pem"
        self.public_key_file.write_bytes(pem(self.private_key))
        self.status_token = "st-" + secrets.token_urlsafe(24)
        self.status_token_file = self.workdir / "status-token"
        self.status_token_file.write_text(self.status_token + "\n")
        self.sessions = SessionService(self.status_token)
        self._port = self.reactor.listenTCP(0, _QuietSite(self.sessions), interface="127.0.0.1")

    async def tear_down(self) -> None:
        await maybeDeferred(self._port.stopListening)

    def settings(self) -> Mapping[str, Any]:
        return {
            "public_key_file": str(self.public_key_file),
            "login_url": "https://rsa-cookie.example/login?return_to={callback}&state={state}",
            "status_url": f"http://127.0.0.1:{self._port.getHost().port}/sessions/{{sid}}",
            "status_token_file": str(self.status_token_file),
            "request_timeout": 2,
        }

    def bad_settings(self) -> Iterable[BadSettings]:
        good = self.settings()
        private = self.workdir / "site-private.pem"
        private.write_bytes(pem(self.private_key, private=True))
        not_rsa = self.workdir / "ec-public.pem"
        not_rsa.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
        yield BadSettings.without(good, "public_key_file")
        yield BadSettings.changed(good, "public_key_file", str(self.workdir / "missing.pem"),
                                  label="a missing key file")
        yield BadSettings.changed(good, "public_key_file", str(private), label="a private key file")
        yield BadSettings.changed(good, "public_key_file", str(not_rsa), label="an EC key file")
        yield BadSettings.changed(good, "public_key_file", str(self.status_token_file), label="a file that is no key")
        yield BadSettings.without(good, "login_url")
        yield BadSettings.changed(good, "status_url", "ftp://rsa-cookie.example/{sid}")
        yield BadSettings.changed(good, "status_url", "https://rsa-cookie.example/sessions", label="no {sid}")
        yield BadSettings.changed(good, "status_token", "abc", names="status_token_file",
                                  label="both status_token and status_token_file")
        yield BadSettings.changed({k: v for k, v in good.items() if k != "status_url"}, "status_token_file",
                                  str(self.status_token_file), label="a status token without status_url")
        yield BadSettings.changed(good, "request_timeout", 0)
        yield BadSettings.changed(good, "single_use", "yes")

    def secrets(self) -> Iterable[str]:
        return [self.status_token]

    def credentials(self, site: ISite, now: float) -> Credentials:
        cookie = sign_cookie(self.private_key, "alice", secrets.token_urlsafe(8), int(now), int(now) + 600)
        return Credentials("alice", cookie, "alice")

    def expired_credentials(self, site: ISite, now: float) -> Credentials:
        cookie = sign_cookie(self.private_key, "alice", secrets.token_urlsafe(8), int(now) - 7200, int(now) - 3600)
        return Credentials("alice", cookie, "alice")

    def unreachable_provider(self, url: str) -> UnreachableProvider:
        return UnreachableProvider({**self.settings(), "status_url": url + "/sessions/{sid}", "request_timeout": 0.3},
                                   timeout=0.3)
