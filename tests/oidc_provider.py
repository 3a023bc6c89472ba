"""A small but real OpenID provider for tests, served by twisted.web on 127.0.0.1.

It publishes a discovery document and a JWKS (an RSA and an EC P-256 key to
start with; keys can be added and removed to rotate them), and runs the
authorization-code flow: ``/authorize`` immediately redirects back with a code,
``/token`` checks client authentication (``client_secret_basic``, or what
``token_auth_methods`` advertises), the code, the redirect URI and the PKCE
verifier, and answers with an ID token and an access token that ``/userinfo``
takes. Tokens are signed here with ``cryptography`` directly, not with the code
under test. ``outage`` makes chosen paths answer an error status or never answer.

Nothing here imports the global reactor; ``listen`` takes one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any
from urllib.parse import unquote_plus, urlencode

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

ALG_FOR = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}
_KEY_CACHE: dict[str, PrivateKey] = {}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def new_private_key(kty: str) -> PrivateKey:
    if kty == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kty == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    if kty == "OKP":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kty)


def _cached_key(name: str, kty: str) -> PrivateKey:
    """The provider's first keys are shared by every test (RSA key generation is slow)."""
    if name not in _KEY_CACHE:
        _KEY_CACHE[name] = new_private_key(kty)
    return _KEY_CACHE[name]


def public_jwk(key: PrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    public = key.public_key()
    jwk: dict[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        jwk = {"kty": "RSA", "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
               "e": b64(numbers.e.to_bytes(3, "big"))}
    elif isinstance(public, ec.EllipticCurvePublicKey):
        point = public.public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": b64(point.x.to_bytes(32, "big")),
               "y": b64(point.y.to_bytes(32, "big"))}
    else:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
    jwk.update(kid=kid, use="sig", alg=ALG_FOR[jwk["kty"]])
    jwk.update(extra)
    return jwk


_RSA_HASHES: dict[str, hashes.HashAlgorithm] = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}


def sign(key: PrivateKey, signing_input: bytes, alg: str = "RS256") -> bytes:
    """Sign as JWS algorithm *alg* (RFC 7518 §3): RS*, PS* (PSS, salt as long as the hash), ES256, EdDSA."""
    if isinstance(key, rsa.RSAPrivateKey):
        hash_algorithm = _RSA_HASHES[alg[2:]]
        if alg.startswith("PS"):
            pss = padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.DIGEST_LENGTH)
            return key.sign(signing_input, pss, hash_algorithm)
        return key.sign(signing_input, padding.PKCS1v15(), hash_algorithm)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return key.sign(signing_input)


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def mirror_ecdsa_signature(token: str) -> str:
    """The other valid ES256 signature of the same token: (r, s) -> (r, n - s)."""
    header, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    s = int.from_bytes(raw[32:], "big")
    return f"{header}.{payload}.{b64(raw[:32] + (P256_ORDER - s).to_bytes(32, 'big'))}"


class OIDCProvider:
    """The provider's state and its token minting helpers."""

    def __init__(self, client_id: str = "sns-xmpp-test", sub: str = "User-42", name: str = "Test User") -> None:
        self.client_id = client_id
        self.client_secret = "cs-" + secrets.token_urlsafe(24)
        self.sub = sub
        self.name = name
        self.private_keys: dict[str, PrivateKey] = {}  # every key ever made, published or not
        self.published: dict[str, dict[str, Any]] = {}  # kid -> public JWK
        self.rsa_kid = self.add_key("RSA", key=_cached_key("rsa", "RSA"))
        self.ec_kid = self.add_key("EC", key=_cached_key("ec", "EC"))
        self.signing_kid = self.rsa_kid
        self.deny_next: str | None = None  # an error code /authorize answers with, once
        self.authorizations: list[dict[str, str]] = []  # what /authorize saw
        self.issued: list[dict[str, str]] = []  # what /token handed out (code, id_token, ...)
        self.hits: dict[str, int] = {}
        self.token_auth_methods: list[str] | None = None  # advertised; None: not advertised, basic only
        self.token_auth_seen: list[str] = []  # how each /token request authenticated
        self.userinfo: dict[str, Any] | None = None  # what /userinfo answers (sub added if absent); None: 404
        self.userinfo_seen: list[str | None] = []  # the Authorization header of each /userinfo request
        self.outage: dict[str, int | None] = {}  # path -> HTTP status to answer, or None: never answer
        self.discovery_overrides: dict[str, Any] = {}
        self.access_tokens: set[str] = set()
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> sub, while the grant stands
        self._stalled: list[Request] = []
        self._codes: dict[str, dict[str, str]] = {}
        self._port: Any = None
        self.port_number: int | None = None
        self.clock: Any = None
        self.id_token_overrides: dict[str, Any] = {}  # claims the flow's ID tokens get (None removes one)

    # serving

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port_number}"

    def listen(self, reactor: Any, port: int = 0) -> int:
        site = _QuietSite(_ProviderResource(self))
        self._port = reactor.listenTCP(port, site, interface="127.0.0.1")
        self.port_number = self._port.getHost().port
        self.clock = reactor
        return self.port_number

    def stop(self) -> Deferred:
        stalled, self._stalled = self._stalled, []
        for request in stalled:
            if request.channel is not None and request.channel.transport is not None:
                request.channel.transport.loseConnection()
        port, self._port = self._port, None
        return maybeDeferred(port.stopListening) if port is not None else maybeDeferred(lambda: None)

    def discovery(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
            "userinfo_endpoint": self.issuer + "/userinfo",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
            "code_challenge_methods_supported": ["S256"],
        }
        if self.token_auth_methods is not None:
            document["token_endpoint_auth_methods_supported"] = self.token_auth_methods
        document.update(self.discovery_overrides)
        return {k: v for k, v in document.items() if v is not None}

    def jwks(self) -> dict[str, Any]:
        return {"keys": list(self.published.values())}

    # keys

    def add_key(self, kty: str, kid: str | None = None, key: PrivateKey | None = None, **jwk_extra: Any) -> str:
        """Make (or take) a key and publish it; return its kid."""
        kid = kid or f"{kty.lower()}-{secrets.token_hex(4)}"
        self.private_keys[kid] = key or new_private_key(kty)
        self.published[kid] = public_jwk(self.private_keys[kid], kid, **jwk_extra)
        return kid

    def remove_key(self, kid: str) -> None:
        """Stop publishing *kid*; its private key stays here so tests can mint with it."""
        del self.published[kid]

    def public_pem(self, kid: str) -> bytes:
        return self.private_keys[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    # minting

    def claims(self, now: float, nonce: str | None, **overrides: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.client_id, "sub": self.sub, "iat": int(now), "exp": int(now) + 600,
            "name": self.name,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(self, claims: dict[str, Any], kid: str | None = None, header: dict[str, Any] | None = None) -> str:
        """A compact JWS of *claims* signed with key *kid* (the signing key by default)."""
        kid = kid or self.signing_kid
        key = self.private_keys[kid]
        kty = public_jwk(key, kid)["kty"]
        head = {"alg": ALG_FOR[kty], "typ": "JWT", "kid": kid}
        head.update(header or {})
        head = {k: v for k, v in head.items() if v is not None}
        signing_input = f"{b64json(head)}.{b64json(claims)}"
        alg = str(head.get("alg", ALG_FOR[kty]))
        signed_as = alg if kty == "RSA" and alg[:2] in ("RS", "PS") and alg[2:] in _RSA_HASHES else ALG_FOR[kty]
        return f"{signing_input}.{b64(sign(key, signing_input.encode('ascii'), signed_as))}"

    def id_token(self, now: float, nonce: str | None, kid: str | None = None, **overrides: Any) -> str:
        return self.mint(self.claims(now, nonce, **overrides), kid=kid)

    def logout_token(self, now: float, **overrides: Any) -> str:
        """A back-channel logout token (OpenID Connect Back-Channel Logout 1.0, section 2.4)."""
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.client_id, "sub": self.sub, "iat": int(now), "exp": int(now) + 120,
            "jti": secrets.token_urlsafe(12), "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }
        claims.update(overrides)
        return self.mint({k: v for k, v in claims.items() if v is not None}, header={"typ": "logout+jwt"})

    def forge_none(self, claims: dict[str, Any]) -> str:
        """An unsigned token (``alg: none``)."""
        return f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims)}."

    def forge_hs256_with_public_key(self, claims: dict[str, Any], kid: str | None = None) -> str:
        """The classic forgery: HS256, with the provider's RSA public key (PEM) as the HMAC key."""
        kid = kid or self.rsa_kid
        signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{b64json(claims)}"
        mac = hmac.new(self.public_pem(kid), signing_input.encode("ascii"), hashlib.sha256).digest()
        return f"{signing_input}.{b64(mac)}"

    # the endpoints

    def authorize(self, args: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        redirect_uri, state = args.get("redirect_uri", ""), args.get("state", "")
        if args.get("client_id") != self.client_id or not redirect_uri:
            return 400, {}, b"bad client or redirect_uri"
        self.authorizations.append(args)
        if self.deny_next:
            error, self.deny_next = self.deny_next, None
            return 302, {"Location": f"{redirect_uri}?{urlencode({'error': error, 'state': state})}"}, b""
        if args.get("response_type") != "code" or args.get("code_challenge_method") != "S256":
            return 400, {}, b"code flow with S256 only"
        code = secrets.token_urlsafe(16)
        self._codes[code] = args
        return 302, {"Location": f"{redirect_uri}?{urlencode({'code': code, 'state': state})}"}, b""

    def _client_authentication(self, authorization: str | None, form: dict[str, str]) -> str | None:
        """The method the client authenticated with (one this provider accepts), or None."""
        expected = f"{self.client_id}:{self.client_secret}"
        accepted = self.token_auth_methods or ["client_secret_basic"]
        if authorization is not None:
            try:
                scheme, _, encoded = authorization.partition(" ")
                user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
                given = f"{unquote_plus(user)}:{unquote_plus(password)}"
            except ValueError:
                return None
            ok = scheme.lower() == "basic" and hmac.compare_digest(given.encode(), expected.encode())
            return "client_secret_basic" if ok and "client_secret_basic" in accepted else None
        if "client_secret" in form:
            given = f"{form.get('client_id', '')}:{form['client_secret']}"
            ok = hmac.compare_digest(given.encode(), expected.encode())
            return "client_secret_post" if ok and "client_secret_post" in accepted else None
        return None

    def token(self, authorization: str | None, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        method = self._client_authentication(authorization, form)
        if method is None:
            return 401, {"error": "invalid_client"}
        self.token_auth_seen.append(method)
        if form.get("grant_type") == "refresh_token":
            sub = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if sub is None:
                return 400, {"error": "invalid_grant"}
            renewed = secrets.token_urlsafe(16)  # rotated, as providers may
            self.refresh_tokens[renewed] = sub
            return 200, {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 600,
                         "refresh_token": renewed, "id_token": self.id_token(self.clock.seconds(), None, sub=sub)}
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        request = self._codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        if (
            request is None
            or form.get("redirect_uri") != request["redirect_uri"]
            or b64(hashlib.sha256(verifier.encode("ascii")).digest()) != request.get("code_challenge")
        ):
            return 400, {"error": "invalid_grant"}
        id_token = self.id_token(self.clock.seconds(), request.get("nonce"), **self.id_token_overrides)
        access_token = secrets.token_urlsafe(16)
        self.access_tokens.add(access_token)
        self.issued.append({"code": form["code"], "id_token": id_token, "code_verifier": verifier,
                            "access_token": access_token})
        answer = {"access_token": access_token, "token_type": "Bearer", "expires_in": 600, "id_token": id_token}
        if "offline_access" in request.get("scope", "").split():
            refresh_token = secrets.token_urlsafe(16)
            self.refresh_tokens[refresh_token] = self.sub
            answer["refresh_token"] = refresh_token
        return 200, answer

    def withdraw_refresh_tokens(self) -> None:
        """The person withdraws this client's offline access (or logs out) at the provider."""
        self.refresh_tokens.clear()

    def userinfo_answer(self, authorization: str | None) -> tuple[int, dict[str, Any]]:
        self.userinfo_seen.append(authorization)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or token not in self.access_tokens:
            return 401, {"error": "invalid_token"}
        if self.userinfo is None:
            return 404, {"error": "not_found"}
        return 200, {"sub": self.sub, **self.userinfo}


class _QuietSite(Site):
    """No access log: request lines would carry test nonces and states into the log capture."""

    def log(self, request: http.Request) -> None:
        pass


class _ProviderResource(Resource):
    isLeaf = True

    def __init__(self, provider: OIDCProvider) -> None:
        super().__init__()
        self.provider = provider

    def render(self, request: Request) -> bytes:
        path = (request.path or b"").decode("ascii", "replace")
        method = (request.method or b"").decode("ascii", "replace")
        self.provider.hits[path] = self.provider.hits.get(path, 0) + 1
        if path in self.provider.outage:
            status = self.provider.outage[path]
            if status is None:
                self.provider._stalled.append(request)
                return NOT_DONE_YET  # type: ignore[return-value]
            request.setResponseCode(status)
            return b"<html>provider down</html>"
        args = {k.decode(): v[-1].decode() for k, v in (request.args or {}).items()}
        if method == "GET" and path == "/.well-known/openid-configuration":
            return self._json(request, 200, self.provider.discovery())
        if method == "GET" and path == "/jwks":
            return self._json(request, 200, self.provider.jwks())
        if method == "GET" and path == "/authorize":
            code, headers, body = self.provider.authorize(args)
            request.setResponseCode(code)
            for name, value in headers.items():
                request.setHeader(name, value)
            return body
        if method == "POST" and path == "/token":
            authorization = request.getHeader("authorization")
            return self._json(request, *self.provider.token(authorization, args))
        if method == "GET" and path == "/userinfo":
            return self._json(request, *self.provider.userinfo_answer(request.getHeader("authorization")))
        return self._json(request, 404, {"error": "not_found"})

    def _json(self, request: Request, code: int, value: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Cache-Control", "no-store")
        return json.dumps(value).encode("utf-8")
