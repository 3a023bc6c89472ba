"""OpenID Connect site: log in with an ID token from an OpenID provider.

The password of a social login ``<sub>@<site_id>`` is an ID token the provider
issued to this server's client (the browser flow in ``start_login`` and
``finish_login`` hands it out). A token is accepted when a key from the
provider's JWKS signs it and its ``iss``, ``aud``, ``exp``, ``iat``, ``nonce`` and
``sub`` hold. The nonce is self-verifying, ``<random>.<HMAC-SHA256(random)>``
under a per-install secret kept in the data folder, so any token this server's
logins produced verifies without the server keeping per-login state, and tokens
the provider issued to the same client through some other path do not.

Provider metadata and keys are fetched with treq and cached; an unreachable
provider is logged and retried with backoff, never fatal. The discovery document's
endpoints must be on the issuer's origin or on one the operator listed in
``endpoint_origins``. When the ID token names no one, the userinfo endpoint is asked
for a display name (a failure there costs only the name).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import treq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError
from twisted.python.failure import Failure
from twisted.web.client import Agent
from zope.interface import implementer

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.sites import jose
from sns_xmpp.sites import settings as check
from sns_xmpp.sites.interface import (
    IBearerSite,
    ILogoutSite,
    IRefreshingSite,
    LoginStart,
    ProviderUnavailable,
    Rejection,
    SiteContext,
    SiteRejection,
    SocialCredentials,
    VerifiedAccount,
)
from sns_xmpp.sites.oidc_settings import OIDCSettings, load_or_create_secret, origin, parse_settings, url_problem
from sns_xmpp.sites.oidc_tokens import (
    NonceKey,
    check_claims,
    check_logout_claims,
    display_name,
    identifier_problem,
    replay_key,
)

log = GatedLogger()

DISCOVERY_PATH = "/.well-known/openid-configuration"
BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 section 2.1
MAX_DOCUMENT_BYTES = 1 << 20
MAX_REMEMBERED_NAMES = 4096
ENDPOINTS = ("jwks_uri", "authorization_endpoint", "token_endpoint", "userinfo_endpoint")
_JOSE_KINDS = {
    jose.MALFORMED: Rejection.MALFORMED,
    jose.BAD_SIGNATURE: Rejection.BAD_SIGNATURE,
    jose.UNSUPPORTED_ALGORITHM: Rejection.UNSUPPORTED_ALGORITHM,
    jose.UNKNOWN_KEY: Rejection.UNKNOWN_KEY,
}


# -- provider metadata ----------------------------------------------------------------------------


class ProviderError(Exception):
    """The provider could not be used; the message is safe to log and show."""


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    jwks_uri: str
    authorization_endpoint: str | None
    token_endpoint: str | None
    userinfo_endpoint: str | None = None
    token_auth_methods: tuple[str, ...] | None = None  # token_endpoint_auth_methods_supported, if given


def parse_metadata(document: Mapping[str, Any], issuer: str, site_id: str = "<id>",
                   endpoint_origins: Sequence[str] = ()) -> ProviderMetadata:
    """Check a discovery document (OIDC Discovery 3 and 4.3): its issuer, and endpoints that are
    URLs on the issuer's origin or on one of *endpoint_origins*."""
    if document.get("issuer") != issuer:
        raise ProviderError("discovery document names another issuer")
    allowed = {origin(issuer), *endpoint_origins}
    endpoints: dict[str, str | None] = {}
    for name in ENDPOINTS:
        value = document.get(name)
        if value is not None:
            problem = url_problem(value)
            if problem:
                raise ProviderError(f"discovery document: {name} {problem}")
            if origin(value) not in allowed:
                raise ProviderError(f"discovery document: {name} is on {origin(value)}, not the issuer's origin "
                                    f"(list it in sites.{site_id}.endpoint_origins if that is intended)")
        endpoints[name] = value
    jwks_uri = endpoints["jwks_uri"]
    if jwks_uri is None:
        raise ProviderError("discovery document has no jwks_uri")
    methods = document.get("token_endpoint_auth_methods_supported")
    token_auth_methods = (tuple(methods) if isinstance(methods, list) and all(isinstance(m, str) for m in methods)
                          else None)
    return ProviderMetadata(issuer, jwks_uri, endpoints["authorization_endpoint"], endpoints["token_endpoint"],
                            endpoints["userinfo_endpoint"], token_auth_methods)


def describe_failure(failure: Failure) -> str:
    """A short, secret-free reason for a failed provider request."""
    if failure.check(ProviderError):
        return str(failure.value)
    if failure.check(CancelledError):
        return "request cancelled"
    if failure.check(ConnectError):
        return f"cannot connect ({type(failure.value).__name__})"
    return f"request failed ({type(failure.value).__name__})"


class _SingleFlight:
    """Runs one coroutine at a time; every caller gets its own Deferred for the shared outcome."""

    def __init__(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._work = work
        self._running: Deferred[None] | None = None
        self._waiters: list[Deferred[None]] = []

    @property
    def busy(self) -> bool:
        return self._running is not None

    def __call__(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if self._running is None:
            self._running = Deferred.fromCoroutine(self._work())
            self._running.addBoth(self._done)
        return waiter

    def _done(self, result: None | Failure) -> None:
        self._running = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)

    def cancel(self) -> None:
        if self._running is not None:
            self._running.cancel()


# -- the site -------------------------------------------------------------------------------------


@implementer(IBearerSite, ILogoutSite, IRefreshingSite)
class OIDCSite:
    """An OpenID provider as a social site; also an OAUTHBEARER (RFC 7628) site."""

    def __init__(self, site_id: str, settings: OIDCSettings, context: SiteContext, nonces: NonceKey) -> None:
        self.site_id = site_id
        self.display_name = site_id
        self.settings = settings
        self.single_use = settings.single_use
        self.openid_configuration = settings.issuer.rstrip("/") + DISCOVERY_PATH
        self._reactor = context.reactor
        self._http = context.http_client
        self._nonces = nonces
        self._metadata: ProviderMetadata | None = None
        self._keys: tuple[jose.PublicJWK, ...] | None = None
        self._status = "starting"
        self._running = False
        self._timer: Any = None
        self._backoff = settings.retry_initial
        self._last_key_refetch: float | None = None
        self._ready: list[Deferred[None]] = []
        self._names: OrderedDict[str, str] = OrderedDict()  # sub -> display name from userinfo
        self._load = _SingleFlight(self._load_provider)
        self._refetch = _SingleFlight(self._refetch_keys)

    @property
    def issuer(self) -> str:
        return self.settings.issuer

    # lifecycle

    def start(self) -> None:
        self._running = True
        self._backoff = self.settings.retry_initial
        self._load().addErrback(lambda _: None)

    def stop(self) -> None:
        self._running = False
        self._cancel_timer()
        self._load.cancel()
        self._refetch.cancel()

    def status(self) -> str:
        return self._status

    def when_ready(self) -> Deferred[None]:
        """Fire once the provider's metadata and keys are loaded."""
        ready: Deferred[None] = Deferred()
        if self._keys is not None:
            ready.callback(None)
        else:
            self._ready.append(ready)
        return ready

    def issue_nonce(self) -> str:
        return self._nonces.issue()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, delay: float) -> None:
        self._cancel_timer()
        if self._running:
            self._timer = self._reactor.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._load().addErrback(lambda _: None)

    async def _load_provider(self) -> None:
        self._cancel_timer()
        try:
            metadata = parse_metadata(await self._get_json(self.openid_configuration, "discovery document"),
                                      self.settings.issuer, self.site_id, self.settings.endpoint_origins)
            keys = await self._get_keys(metadata.jwks_uri)
        except Exception:
            reason = describe_failure(Failure())
            stale = " (using cached keys)" if self._keys is not None else ""
            self._status = f"provider unreachable: {reason}{stale}"
            if self._running:
                log.warn("oidc.provider_unreachable site={site} reason={reason} retry_in={retry_in}",
                         site=self.site_id, reason=reason, retry_in=self._backoff)
                self._schedule(self._backoff)
                self._backoff = min(self._backoff * 2, self.settings.retry_max)
            raise ProviderError(reason) from None
        self._metadata, self._keys = metadata, keys
        self._status = "ok"
        self._backoff = self.settings.retry_initial
        log.info("oidc.provider_ready site={site} keys={keys}", site=self.site_id, keys=len(keys))
        self._schedule(self.settings.refresh_interval)
        ready, self._ready = self._ready, []
        for waiter in ready:
            if not waiter.called:
                waiter.callback(None)

    async def _refetch_keys(self) -> None:
        if self._metadata is None:
            raise ProviderError("no provider metadata")
        try:
            self._keys = await self._get_keys(self._metadata.jwks_uri)
        except Exception:
            reason = describe_failure(Failure())
            log.warn("oidc.keys_refetch_failed site={site} reason={reason}", site=self.site_id, reason=reason)
            raise ProviderError(reason) from None
        log.info("oidc.keys_refetched site={site} keys={keys}", site=self.site_id, keys=len(self._keys))

    # HTTP

    async def _request(self, method: str, url: str, headers: dict[str, str], data: bytes | None) -> tuple[int, bytes]:
        if self._http is None:
            self._http = treq.client.HTTPClient(Agent(self._reactor))
        response = await self._http.request(method, url, headers=headers, data=data, allow_redirects=False)
        chunks: list[bytes] = []
        size = 0

        def collect(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > MAX_DOCUMENT_BYTES:
                raise ProviderError("response too large")
            chunks.append(chunk)

        await treq.collect(response, collect)
        return response.code, b"".join(chunks)

    async def _fetch(self, method: str, url: str, headers: dict[str, str], data: bytes | None = None,
                     ) -> tuple[int, bytes]:
        def timed_out(result: object, timeout: float) -> None:
            raise ProviderError(f"request timed out after {timeout:g}s")

        request = Deferred.fromCoroutine(self._request(method, url, headers, data))
        request.addTimeout(self.settings.request_timeout, self._reactor, onTimeoutCancel=timed_out)
        return await request

    async def _get_json(self, url: str, what: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        code, body = await self._fetch("GET", url, {"Accept": "application/json", **(headers or {})})
        if code != 200:
            raise ProviderError(f"{what}: HTTP {code}")
        try:
            return jose.parse_json_object(body, what)
        except jose.JOSEError as e:
            raise ProviderError(e.reason) from None

    async def _get_keys(self, jwks_uri: str) -> tuple[jose.PublicJWK, ...]:
        document = await self._get_json(jwks_uri, "key set")
        try:
            keys, skipped = jose.load_jwks(document)
        except jose.JOSEError as e:
            raise ProviderError(e.reason) from None
        for reason in skipped:
            log.debug("oidc.key_skipped site={site} reason={reason}", site=self.site_id, reason=reason)
        if not keys:
            raise ProviderError("key set has no usable signing keys")
        return tuple(keys)

    # tokens

    async def _current_keys(self) -> tuple[jose.PublicJWK, ...]:
        if self._keys is None and self._load.busy:
            try:
                await self._load()
            except ProviderError:
                pass
        if self._keys is None:
            raise ProviderUnavailable("the provider's keys are not available", known_down=True)
        return self._keys

    async def _current_metadata(self) -> ProviderMetadata:
        if self._metadata is None:
            try:
                await self._load()
            except ProviderError as e:
                raise ProviderUnavailable(f"provider unreachable: {e}", known_down=True) from None
        if self._metadata is None:
            raise ProviderUnavailable("provider metadata not available", known_down=True)
        return self._metadata

    async def _refetch_once(self) -> bool:
        """Fetch the key set again for an unknown kid, at most once per key_refetch_interval."""
        if not self._refetch.busy:
            now = self._reactor.seconds()
            last = self._last_key_refetch
            if last is not None and now - last < self.settings.key_refetch_interval:
                return False
            self._last_key_refetch = now
        try:
            await self._refetch()
        except ProviderError as e:
            raise ProviderUnavailable(f"provider unreachable: {e}") from None
        return True

    async def _signed_claims(self, token: str, wrong_type: Callable[[str], bool], what: str) -> dict[str, Any]:
        """The claims of a JWS the provider signed (its keys fetched again once for an unknown
        key id); SiteRejection for a token of a *wrong_type* (its ``typ``, lower case, without
        ``application/``) or a bad one."""
        try:
            jws = jose.parse_compact(token, self.settings.max_token_bytes)
            typ = jws.header.get("typ")
            if isinstance(typ, str) and wrong_type(typ.lower().removeprefix("application/")):
                raise jose.JOSEError(jose.MALFORMED, f"not {what}")
            try:
                return jose.verify_jws(jws, await self._current_keys())
            except jose.JOSEError as e:
                if e.kind != jose.UNKNOWN_KEY or not await self._refetch_once():
                    raise
                return jose.verify_jws(jws, await self._current_keys())
        except jose.JOSEError as e:
            raise SiteRejection(_JOSE_KINDS[e.kind], e.reason) from None

    async def _verify_token(self, token: str, now: float,
                            own_login: bool = True) -> tuple[VerifiedAccount, dict[str, Any]]:
        """An ID token's account; *own_login*: it must come from a login this server started
        (its nonce ours), else any nonce or none (a token the client got itself)."""
        claims = await self._signed_claims(token, lambda typ: typ == "at+jwt", "an ID token")
        sub, exp = check_claims(claims, issuer=self.settings.issuer, client_id=self.settings.client_id, now=now,
                                leeway=self.settings.leeway, nonce_ok=self._nonces.check if own_login else None)
        account = VerifiedAccount(
            site=self.site_id, account=sub, expires=exp, token_digest=replay_key(claims),
            display_name=display_name(claims) or self._names.get(sub), issued_at=float(claims["iat"]),
        )
        return account, claims

    async def _verify_logged(self, token: str, now: float, identifier: str | None) -> VerifiedAccount:
        try:
            if identifier is not None:
                self.parse_identifier(identifier)
            account, _ = await self._verify_token(token, now)
            if identifier is not None and identifier.casefold() != account.account.casefold():
                raise SiteRejection(Rejection.MALFORMED, "the token is for another account")
        except SiteRejection as e:
            log.info("oidc.token_rejected site={site} kind={kind} reason={reason}",
                     site=self.site_id, kind=e.kind.value, reason=e.reason)
            raise
        return account

    def parse_identifier(self, identifier: str) -> str:
        problem = identifier_problem(identifier)
        if problem:
            raise SiteRejection(Rejection.MALFORMED, problem)
        return identifier

    def verify(self, identifier: str, token: str, now: float) -> Deferred[VerifiedAccount]:
        return Deferred.fromCoroutine(self._verify_logged(token, now, identifier))

    def verify_bearer(self, token: str, now: float) -> Deferred[VerifiedAccount]:
        return Deferred.fromCoroutine(self._verify_bearer(token, now))

    async def _verify_bearer(self, token: str, now: float) -> VerifiedAccount:
        """SASL OAUTHBEARER: an ID token for this client, from this server's login or one the client
        got from the provider itself (then usable once: its jti, or its claims, are remembered
        until it expires); or, where the site takes them, an access token the userinfo endpoint
        vouches for."""
        try:
            if token.count(".") != 2:
                return await self._verify_access_token(token, now)
            try:
                account, claims = await self._verify_token(token, now, own_login=False)
            except SiteRejection as e:
                if e.kind is not Rejection.MALFORMED or self.settings.access_tokens == "none":
                    raise
                return await self._verify_access_token(token, now)  # a JWT access token (RFC 9068)
            ours = "nonce" in claims and self._nonces.check(claims["nonce"])
            return dataclasses.replace(account, single_use=not ours)
        except SiteRejection as e:
            log.info("oidc.token_rejected site={site} kind={kind} reason={reason}",
                     site=self.site_id, kind=e.kind.value, reason=e.reason)
            raise

    async def _verify_access_token(self, token: str, now: float) -> VerifiedAccount:
        """An access token the provider's userinfo endpoint takes (OIDC Core 5.3): its ``sub``.
        Its issue time is unknown: taken as ``access_token_lifetime`` ago (the earliest it can
        have been), the safe side after a revocation."""
        if self.settings.access_tokens != "userinfo":
            raise SiteRejection(Rejection.MALFORMED, "not an ID token, and this site takes no access tokens")
        if len(token) > self.settings.max_token_bytes or not BEARER_TOKEN.fullmatch(token):
            raise SiteRejection(Rejection.MALFORMED, "not a bearer token (RFC 6750 b64token)")
        endpoint = (await self._current_metadata()).userinfo_endpoint
        if endpoint is None:
            raise SiteRejection(Rejection.MALFORMED, "the provider has no userinfo endpoint")
        try:
            code, body = await self._fetch("GET", endpoint, {"Accept": "application/json",
                                                             "Authorization": f"Bearer {token}"})
        except Exception:
            raise ProviderUnavailable(f"userinfo: {describe_failure(Failure())}") from None
        if code >= 500:
            raise ProviderUnavailable(f"userinfo: HTTP {code}")
        if code != 200:
            raise SiteRejection(Rejection.BAD_SIGNATURE, "the provider does not take this access token")
        try:
            claims = jose.parse_json_object(body, "userinfo")
        except jose.JOSEError as e:
            raise SiteRejection(Rejection.MALFORMED, e.reason) from None
        sub = claims.get("sub")
        problem = identifier_problem(sub)
        if problem or not isinstance(sub, str):
            raise SiteRejection(Rejection.MALFORMED, f"userinfo subject: {problem}")
        lifetime = self.settings.access_token_lifetime
        return VerifiedAccount(self.site_id, sub, now + lifetime, hashlib.sha256(b"access\0" + token.encode()).digest(),
                               display_name=display_name(claims), issued_at=now - lifetime)

    def verify_logout(self, token: str, now: float) -> Deferred[tuple[str, bytes]]:
        return Deferred.fromCoroutine(self._verify_logout(token, now))

    async def _verify_logout(self, token: str, now: float) -> tuple[str, bytes]:
        """Back-Channel Logout 1.0 section 2.6: the logout token is checked as an ID token is
        (signature against the provider's keys, issuer, audience, times), then as a logout token."""
        try:
            claims = await self._signed_claims(token, lambda typ: typ not in ("logout+jwt", "jwt"), "a logout token")
            sub = check_logout_claims(claims, issuer=self.settings.issuer, client_id=self.settings.client_id,
                                      now=now, leeway=self.settings.leeway)
        except SiteRejection as e:
            log.info("oidc.logout_rejected site={site} kind={kind}", site=self.site_id, kind=e.kind.value)
            raise
        return sub, hashlib.sha256(f"logout\0{claims['jti']}".encode()).digest()

    def scram_password(self, identifier: str, now: float) -> str | None:
        return None

    # browser login

    def start_login(self, callback_url: str, state: str) -> Deferred[LoginStart]:
        return Deferred.fromCoroutine(self._start_login(callback_url, state))

    async def _start_login(self, callback_url: str, state: str) -> LoginStart:
        metadata = await self._current_metadata()
        endpoint = metadata.authorization_endpoint
        if endpoint is None:
            raise ProviderUnavailable("provider has no authorization endpoint", known_down=True)
        verifier = secrets.token_urlsafe(48)
        nonce = self.issue_nonce()
        query = urlencode({
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": callback_url,
            "scope": " ".join(self.settings.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": jose.b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest()),
            "code_challenge_method": "S256",
        })
        separator = "&" if urlsplit(endpoint).query else ("" if endpoint.endswith("?") else "?")
        pending = {"state": state, "nonce": nonce, "code_verifier": verifier, "redirect_uri": callback_url}
        return LoginStart(url=endpoint + separator + query, pending=pending)

    def finish_login(self, params: Mapping[str, str], pending: Mapping[str, str], now: float,
                     ) -> Deferred[SocialCredentials]:
        return Deferred.fromCoroutine(self._finish_login(params, pending, now))

    async def _finish_login(self, params: Mapping[str, str], pending: Mapping[str, str], now: float,
                            ) -> SocialCredentials:
        refuse = Rejection.MALFORMED
        if "error" in params:
            raise SiteRejection(refuse, f"the provider refused the login: {_safe_code(params['error'])}")
        state, expected_state = params.get("state", ""), pending.get("state", "")
        if not expected_state or not hmac.compare_digest(state.encode("utf-8"), expected_state.encode("utf-8")):
            raise SiteRejection(refuse, "login state does not match")
        if "iss" in params and params["iss"] != self.settings.issuer:  # RFC 9207
            raise SiteRejection(refuse, "login answered by another issuer")
        code = params.get("code")
        nonce, verifier, redirect_uri = pending.get("nonce"), pending.get("code_verifier"), pending.get("redirect_uri")
        if not code:
            raise SiteRejection(refuse, "no authorization code")
        if not nonce or not verifier or not redirect_uri:
            raise SiteRejection(refuse, "login state incomplete")
        id_token, access_token, refresh_token = await self._redeem_code(code, verifier, redirect_uri)
        account, claims = await self._verify_token(id_token, now)
        if not hmac.compare_digest(str(claims["nonce"]).encode("utf-8"), nonce.encode("utf-8")):
            raise SiteRejection(refuse, "token nonce is not this login's")
        name = display_name(claims)
        if name is None and access_token is not None:
            name = await self._learn_name(account.account, access_token)
        log.info("oidc.login_finished site={site}", site=self.site_id)
        return SocialCredentials(username=f"{account.account}@{self.site_id}", password=id_token,
                                 expires=account.expires, display_name=name, account=account.account,
                                 refresh_token=refresh_token)

    def _token_auth_method(self, metadata: ProviderMetadata) -> str:
        """The configured method, or (``auto``) client_secret_basic, the default of OpenID Connect Discovery
        when the provider lists none, unless the provider lists client_secret_post and not basic."""
        chosen = self.settings.token_endpoint_auth_method
        if chosen != "auto":
            return chosen
        supported = metadata.token_auth_methods
        if supported is not None and "client_secret_basic" not in supported and "client_secret_post" in supported:
            return "client_secret_post"
        return "client_secret_basic"

    async def _redeem_code(self, code: str, verifier: str, redirect_uri: str) -> tuple[str, str | None, str | None]:
        """Exchange the code at the token endpoint: the ID token, and the access token and the
        refresh token (scope offline_access) if any."""
        document = await self._token_request({"grant_type": "authorization_code", "code": code,
                                              "redirect_uri": redirect_uri, "code_verifier": verifier}, "code")
        id_token, access_token = document.get("id_token"), document.get("access_token")
        if not isinstance(id_token, str):
            raise SiteRejection(Rejection.MALFORMED, "token response has no id_token")
        refresh_token = document.get("refresh_token")
        return (id_token, access_token if isinstance(access_token, str) and access_token else None,
                refresh_token if isinstance(refresh_token, str) and refresh_token else None)

    def refresh(self, account: str, refresh_token: str, now: float) -> Deferred[str]:
        return Deferred.fromCoroutine(self._refresh(account, refresh_token, now))

    async def _refresh(self, account: str, refresh_token: str, now: float) -> str:
        """RFC 6749 section 6: the provider confirms the account again (an ID token it returns
        must name the same subject) and may rotate the refresh token; invalid_grant means the
        person withdrew this server's access, or logged out: the account is no longer confirmed."""
        try:
            document = await self._token_request({"grant_type": "refresh_token", "refresh_token": refresh_token},
                                                 "refresh")
        except SiteRejection as rejection:
            raise SiteRejection(Rejection.REVOKED, f"the provider no longer confirms the account: {rejection.reason}"
                                ) from None
        id_token = document.get("id_token")
        if isinstance(id_token, str):
            confirmed, _ = await self._verify_token(id_token, now, own_login=False)
            if confirmed.account != account:
                raise SiteRejection(Rejection.REVOKED, "the provider confirmed another account")
        renewed = document.get("refresh_token")
        return renewed if isinstance(renewed, str) and renewed else refresh_token

    async def _token_request(self, form: dict[str, str], what: str) -> dict[str, Any]:
        """A token endpoint request with this client's authentication; the response document."""
        metadata = await self._current_metadata()
        if metadata.token_endpoint is None:
            raise ProviderUnavailable("provider has no token endpoint", known_down=True)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if self._token_auth_method(metadata) == "client_secret_post":
            form.update(client_id=self.settings.client_id, client_secret=self.settings.client_secret)
        else:
            # RFC 6749 §2.3.1: id and secret are form-urlencoded, then joined and base64-encoded.
            credentials = f"{quote_plus(self.settings.client_id)}:{quote_plus(self.settings.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
        body = urlencode(form).encode("ascii")
        try:
            status, content = await self._fetch("POST", metadata.token_endpoint, headers, body)
        except Exception:
            reason = describe_failure(Failure())
            log.warn("oidc.token_endpoint_failed site={site} reason={reason}", site=self.site_id, reason=reason)
            raise ProviderUnavailable(f"token endpoint: {reason}") from None
        try:
            document = jose.parse_json_object(content, "token response")
        except jose.JOSEError:
            document = {}
        if status >= 500:
            log.warn("oidc.token_endpoint_failed site={site} reason={reason}", site=self.site_id,
                     reason=f"HTTP {status}")
            raise ProviderUnavailable(f"token endpoint: HTTP {status}")
        if status != 200:
            error = _safe_code(document.get("error"))
            log.warn("oidc.token_request_refused site={site} grant={grant} status={status} error={error}",
                     site=self.site_id, grant=what, status=status, error=error)
            raise SiteRejection(Rejection.MALFORMED, f"the provider refused the {what}: {error}")
        return dict(document)

    async def _learn_name(self, sub: str, access_token: str) -> str | None:
        """Ask the userinfo endpoint for the display name the ID token lacks, remember it for *sub*
        and return it (None if there is none).

        A userinfo for another subject refuses the login (OIDC Core 5.3.2: its values must not be
        used, and a provider that mixes up people is not to be trusted with this one). Any other
        failure is logged and the login goes on without a name.
        """
        endpoint = self._metadata.userinfo_endpoint if self._metadata is not None else None
        if endpoint is None:
            return None
        try:
            claims = await self._get_json(endpoint, "userinfo", {"Authorization": f"Bearer {access_token}"})
        except Exception:
            reason = describe_failure(Failure())
            log.warn("oidc.userinfo_failed site={site} reason={reason}", site=self.site_id, reason=reason)
            return None
        if claims.get("sub") != sub:
            log.warn("oidc.userinfo_other_subject site={site}", site=self.site_id)
            raise SiteRejection(Rejection.MALFORMED, "the userinfo is for another account")
        name = display_name(claims)
        if name is not None:
            self._names[sub] = name
            self._names.move_to_end(sub)
            while len(self._names) > MAX_REMEMBERED_NAMES:
                self._names.popitem(last=False)
        return name


def _safe_code(value: object) -> str:
    """An OAuth error code as a client may see it: RFC 6749 allows only printable ASCII."""
    if isinstance(value, str) and 0 < len(value) <= 64 and all(c.isalnum() or c in "_-." for c in value):
        return value
    return "unspecified error"


def make_oidc_site(site_id: str, settings: Mapping[str, Any], context: SiteContext) -> OIDCSite:
    """The ``oidc`` entry point: check the settings and build the site (nothing is fetched yet)."""
    display_name = check.text(settings, "display_name", site_id)
    parsed = parse_settings({key: value for key, value in settings.items() if key != "display_name"})
    secret = load_or_create_secret(context.data_dir / f"oidc-{site_id}.secret")
    site = OIDCSite(site_id, parsed, context, NonceKey(secret, site_id))
    site.display_name = display_name
    return site
