"""The RSA-cookie site as an sns-xmpp site plugin.

A social login is ``<uid>@<site id>`` with the site's session cookie as the
password. The signature is checked offline with the site's public key; when
``status_url`` is set, the site's session service is asked (with treq, under a
timeout) whether the session is still live, so a logout at the site ends XMPP
logins too.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import treq
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
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
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import Agent
from zope.interface import implementer

from sns_xmpp_rsa_cookie.cookie import UID, Session, b64url_decode, check_times, read_cookie

log = Logger()

MAX_STATUS_BYTES = 64 * 1024
KNOWN_KEYS = ("public_key_file", "login_url", "status_url", "status_token", "status_token_file", "request_timeout",
              "max_lifetime", "leeway", "single_use", "display_name")


class SessionServiceError(Exception):
    """The session service could not be asked; the message is safe to log (no URL, no token)."""


@implementer(ISite)
class RsaCookieSite:
    def __init__(self, site_id: str, display_name: str, public_key: rsa.RSAPublicKey, login_url: str,
                 context: SiteContext, *, status_url: str | None = None, status_token: str | None = None,
                 request_timeout: float = 5, max_lifetime: float = 86400, leeway: float = 60,
                 single_use: bool = False) -> None:
        self.site_id = site_id
        self.display_name = display_name
        self.single_use = single_use
        self.public_key = public_key
        self.login_url = login_url
        self.status_url = status_url
        self._status_token = status_token
        self.request_timeout = request_timeout
        self.max_lifetime = max_lifetime
        self.leeway = leeway
        self._reactor = context.reactor
        self._http = context.http_client
        der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key_fingerprint = hashlib.sha256(der).hexdigest()[:16]
        self._health = "ok"

    # -- tokens ----------------------------------------------------------------------------------

    def parse_identifier(self, identifier: str) -> str:
        if not UID.fullmatch(identifier):
            raise SiteRejection(Rejection.MALFORMED, "the user name is not a uid (1-64 of a-z 0-9 _ -)")
        return identifier

    def verify(self, identifier: str, token: str, now: float) -> Deferred[VerifiedAccount]:
        # fromCoroutine runs the offline checks at once; a SiteRejection they raise fails the Deferred.
        return Deferred.fromCoroutine(self._verify(identifier, token, now))

    async def _verify(self, identifier: str, token: str, now: float) -> VerifiedAccount:
        uid = self.parse_identifier(identifier)
        session = read_cookie(self.public_key, token)  # an RSA verify: well under a millisecond
        if session.uid != uid:
            raise SiteRejection(Rejection.MALFORMED, "the cookie is for another user")
        check_times(session, now, self.leeway, self.max_lifetime)
        if self.status_url is not None:
            await self._session_is_live(self.status_url, session)
        digest = hashlib.sha256(token.encode("ascii")).digest()  # never keep or log the cookie itself
        return VerifiedAccount(self.site_id, uid, float(session.expires), digest)

    def scram_password(self, identifier: str, now: float) -> str | None:
        return None  # a cookie cannot be recomputed from the user name

    # -- the session service (treq, with a timeout) -----------------------------------------------

    async def _session_is_live(self, status_url: str, session: Session) -> None:
        try:
            code, body = await self._ask(status_url, session.sid)
        except SessionServiceError as error:
            self._health = f"session service unreachable: {error}"
            log.warn("rsa_cookie.session_service_failed site={site} reason={reason}", site=self.site_id,
                     reason=str(error))
            raise SiteRejection(Rejection.PROVIDER_UNAVAILABLE, "the site's session service did not answer") from None
        if code >= 500 or code in (401, 403):
            self._health = f"session service answered HTTP {code}"
            log.warn("rsa_cookie.session_service_refused site={site} code={code}", site=self.site_id, code=code)
            raise SiteRejection(Rejection.PROVIDER_UNAVAILABLE, "the site's session service failed")
        self._health = "ok"
        try:
            live = code == 200 and json.loads(body).get("active") is True
        except (ValueError, AttributeError):
            live = False
        if not live:
            raise SiteRejection(Rejection.EXPIRED, "the site has ended this session")

    async def _ask(self, status_url: str, sid: str) -> tuple[int, bytes]:
        """GET the session's state: (HTTP status, body), all of it within request_timeout."""
        if self._http is None:
            self._http = treq.client.HTTPClient(Agent(self._reactor, connectTimeout=self.request_timeout))
        http = self._http
        url = status_url.replace("{sid}", urllib.parse.quote(sid, safe=""))
        headers = {"Accept": ["application/json"]}
        if self._status_token is not None:
            headers["Authorization"] = [f"Bearer {self._status_token}"]

        async def fetch() -> tuple[int, bytes]:
            response = await http.get(url, headers=headers, allow_redirects=False)
            chunks: list[bytes] = []

            def collect(chunk: bytes) -> None:
                chunks.append(chunk)
                if sum(map(len, chunks)) > MAX_STATUS_BYTES:
                    raise SessionServiceError("answer too large")

            await treq.collect(response, collect)
            return response.code, b"".join(chunks)

        def timed_out(result: object, timeout: float) -> tuple[int, bytes]:
            raise SessionServiceError(f"no answer within {timeout:g} s")

        request = Deferred.fromCoroutine(fetch())
        request.addTimeout(self.request_timeout, self._reactor, onTimeoutCancel=timed_out)
        try:
            return await request
        except SessionServiceError:
            raise
        except Exception as error:  # connection refused, DNS, TLS...: the type, never the URL
            raise SessionServiceError(f"request failed ({type(error).__name__})") from None

    # -- the browser flow ------------------------------------------------------------------------

    def start_login(self, callback_url: str, state: str) -> Deferred[LoginStart]:
        url = (self.login_url.replace("{callback}", urllib.parse.quote(callback_url, safe=""))
               .replace("{state}", urllib.parse.quote(state, safe="")))
        return defer.succeed(LoginStart(url))

    def finish_login(self, params: Mapping[str, str], pending: Mapping[str, str],
                     now: float) -> Deferred[SocialCredentials]:
        cookie = params.get("cookie", "")
        try:  # the uid, unverified, only to know whom to verify the cookie for
            uid = json.loads(b64url_decode(cookie.partition(".")[0])).get("uid")
        except (SiteRejection, ValueError, AttributeError):
            uid = None
        if not isinstance(uid, str):
            return defer.fail(SiteRejection(Rejection.MALFORMED, "the callback carries no session cookie"))

        def credentials(account: VerifiedAccount) -> SocialCredentials:
            return SocialCredentials(f"{uid}@{self.site_id}", cookie, account.expires)

        return self.verify(uid, cookie, now).addCallback(credentials)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        return None  # nothing to fetch: the key came from a file at configuration time

    def stop(self) -> None:
        return None

    def status(self) -> str:
        return f"{self._health} (key sha256:{self.key_fingerprint})"


# -- settings ------------------------------------------------------------------------------------


def _text(settings: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = settings.get(key, default)
    if value is None:
        raise SiteConfigError(key, "required")
    if not isinstance(value, str) or not value:
        raise SiteConfigError(key, "must be a non-empty string")
    return value


def _number(settings: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise SiteConfigError(key, f"must be a number from {low:g} to {high:g}")
    return float(value)


def _url(settings: Mapping[str, Any], key: str) -> str:
    value = _text(settings, key)
    if not value.startswith(("https://", "http://")):
        raise SiteConfigError(key, "must be an http(s) URL")
    return value


def _public_key(settings: Mapping[str, Any]) -> rsa.RSAPublicKey:
    path = Path(_text(settings, "public_key_file"))
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SiteConfigError("public_key_file", f"cannot read {path}: {error.strerror}") from None
    if b"PRIVATE KEY" in data:  # never echo the file: it may be a key someone pasted by mistake
        raise SiteConfigError("public_key_file", "holds a private key; give the site's public key only")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise SiteConfigError("public_key_file", "is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise SiteConfigError("public_key_file", "is not an RSA key")
    if key.key_size < 2048:
        raise SiteConfigError("public_key_file", "the RSA key must have at least 2048 bits")
    return key


def _status_token(settings: Mapping[str, Any]) -> str | None:
    """The session service's bearer token, inline or as ``status_token_file``; never echoed."""
    if "status_token" in settings and "status_token_file" in settings:
        raise SiteConfigError("status_token_file", "give either 'status_token' or 'status_token_file', not both")
    if "status_token_file" in settings:
        path = Path(_text(settings, "status_token_file"))
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise SiteConfigError("status_token_file", f"cannot read {path}: "
                                  f"{getattr(error, 'strerror', None) or 'not UTF-8 text'}") from None
        key = "status_token_file"
    elif "status_token" in settings:
        token, key = _text(settings, "status_token"), "status_token"
    else:
        return None
    if "status_url" not in settings:
        raise SiteConfigError(key, "only makes sense with status_url")
    if len(token) < 16 or not token.isascii() or not token.isprintable():
        raise SiteConfigError(key, "must be at least 16 printable ASCII characters")
    return token


def make_site(site_id: str, settings: Mapping[str, Any], context: SiteContext) -> RsaCookieSite:
    """The ``rsa-cookie-example`` entry point: check every setting, then build the site (no I/O after this)."""
    for key in settings:
        if key not in KNOWN_KEYS:
            raise SiteConfigError(key, "unknown key")
    login_url = _url(settings, "login_url")
    status_url = _url(settings, "status_url") if "status_url" in settings else None
    if status_url is not None and "{sid}" not in status_url:
        raise SiteConfigError("status_url", "must contain {sid}")
    single_use = settings.get("single_use", False)
    if not isinstance(single_use, bool):
        raise SiteConfigError("single_use", "must be true or false")
    return RsaCookieSite(
        site_id,
        _text(settings, "display_name", "RSA Cookie Example"),
        _public_key(settings),
        login_url,
        context,
        status_url=status_url,
        status_token=_status_token(settings),
        request_timeout=_number(settings, "request_timeout", 5, 0.05, 60),
        max_lifetime=_number(settings, "max_lifetime", 86400, 60, 30 * 86400),
        leeway=_number(settings, "leeway", 60, 0, 3600),
        single_use=single_use,
    )
