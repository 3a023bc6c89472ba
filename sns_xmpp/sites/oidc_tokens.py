"""What an OpenID Connect ID token must hold to log someone in (OIDC Core 3.1.3.7), and the
self-verifying nonces that tie a token to a login this server started."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from sns_xmpp.sites import jose
from sns_xmpp.sites.interface import Rejection, SiteRejection

MAX_IDENTIFIER_CHARS = 255
MAX_DISPLAY_NAME_CHARS = 256
_NONCE_CONTEXT = b"sns-xmpp oidc nonce\0"


class NonceKey:
    """Issues nonces that prove, by themselves, that this server issued them."""

    def __init__(self, secret: bytes, site_id: str) -> None:
        self._secret = secret
        self._context = _NONCE_CONTEXT + site_id.encode("utf-8") + b"\0"

    def _mac(self, random: bytes) -> bytes:
        return hmac.new(self._secret, self._context + random, hashlib.sha256).digest()

    def issue(self) -> str:
        random = secrets.token_bytes(16)
        return f"{jose.b64url_encode(random)}.{jose.b64url_encode(self._mac(random))}"

    def check(self, nonce: object) -> bool:
        if not isinstance(nonce, str) or len(nonce) > 100 or nonce.count(".") != 1:
            return False
        random_text, mac_text = nonce.split(".")
        try:
            random, mac = jose.b64url_decode(random_text), jose.b64url_decode(mac_text)
        except jose.JOSEError:
            return False
        return len(random) == 16 and hmac.compare_digest(mac, self._mac(random))


# Unicode's Cc (control) and Cs (surrogate) characters: one regular expression rather than a
# unicodedata lookup per character, which cost an OpenID login about 10 microseconds.
CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def identifier_problem(identifier: object) -> str | None:
    if not isinstance(identifier, str) or not identifier:
        return "empty account id"
    if len(identifier) > MAX_IDENTIFIER_CHARS:
        return "account id too long"
    if CONTROL_OR_SURROGATE.search(identifier):
        return "account id has control characters"
    return None


def display_name(claims: Mapping[str, Any]) -> str | None:
    for name in ("name", "preferred_username"):
        value = claims.get(name)
        if (isinstance(value, str) and value.strip() and len(value) <= MAX_DISPLAY_NAME_CHARS
                and not CONTROL_OR_SURROGATE.search(value)):
            return value.strip()
    return None


BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
MAX_LOGOUT_TOKEN_AGE = 300.0  # seconds: a logout token is sent when the logout happens


def check_logout_claims(claims: Mapping[str, Any], *, issuer: str, client_id: str, now: float,
                        leeway: float) -> str:
    """The ``sub`` of a valid logout token (OpenID Connect Back-Channel Logout 1.0, 2.4 and 2.6);
    raise SiteRejection otherwise. A token naming only a provider session (``sid``) is refused:
    this server keeps no provider sessions, only accounts."""

    def refuse(reason: str, kind: Rejection = Rejection.MALFORMED) -> SiteRejection:
        return SiteRejection(kind, reason)

    _audiences(claims, issuer, client_id, "logout token")
    iat, exp = _number(claims, "iat"), _number(claims, "exp")
    if iat is None or iat > now + leeway or iat < now - MAX_LOGOUT_TOKEN_AGE - leeway:
        raise refuse("logout token issued at no acceptable time", Rejection.EXPIRED)
    if "exp" in claims and (exp is None or exp <= now - leeway):
        raise refuse("logout token expired", Rejection.EXPIRED)
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise refuse("logout token has no jti")
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
        raise refuse("logout token has no back-channel logout event")
    if "nonce" in claims:  # 2.4: so that an ID token can never pass for a logout token
        raise refuse("logout token has a nonce")
    sub = claims.get("sub")
    if sub is None:
        raise refuse("logout token names no subject (a sid alone is not supported)")
    problem = identifier_problem(sub)
    if problem or not isinstance(sub, str):
        raise refuse(f"logout token subject: {problem}")
    return sub


def _audiences(claims: Mapping[str, Any], issuer: str, client_id: str, what: str) -> list[str]:
    """The token's audiences, once its issuer is *issuer* and this client is among them."""
    if claims.get("iss") != issuer:
        raise SiteRejection(Rejection.MALFORMED, f"{what} is from another issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) for a in audiences):
        raise SiteRejection(Rejection.MALFORMED, f"{what} has no audience")
    if client_id not in audiences:
        raise SiteRejection(Rejection.MALFORMED, f"{what} is for another client")
    return audiences


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def check_claims(
    claims: Mapping[str, Any], *, issuer: str, client_id: str, now: float, leeway: float,
    nonce_ok: Callable[[object], bool] | None,
) -> tuple[str, float]:
    """The ``(sub, exp)`` of valid ID token claims; raise SiteRejection otherwise (OIDC Core 3.1.3.7)."""

    def refuse(reason: str, kind: Rejection = Rejection.MALFORMED) -> SiteRejection:
        return SiteRejection(kind, reason)

    audiences = _audiences(claims, issuer, client_id, "token")
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise refuse("token is for another authorized party")
    exp, iat, nbf = _number(claims, "exp"), _number(claims, "iat"), _number(claims, "nbf")
    if exp is None or iat is None:
        raise refuse("token lacks exp or iat")
    if exp <= now - leeway:
        raise refuse("token expired", Rejection.EXPIRED)
    if iat > now + leeway:
        raise refuse("token issued in the future")
    if "nbf" in claims and (nbf is None or nbf > now + leeway):
        raise refuse("token not valid yet")
    if nonce_ok is not None:  # None: a token the client got itself, its nonce (if any) not ours
        if "nonce" not in claims:
            raise refuse("token has no nonce")
        if not nonce_ok(claims["nonce"]):
            raise refuse("token nonce was not issued here")
    sub = claims.get("sub")
    problem = identifier_problem(sub)
    if problem or not isinstance(sub, str):
        raise refuse(f"token subject: {problem}")
    return sub, exp


def replay_key(claims: Mapping[str, Any]) -> bytes:
    """What a single-use record of a verified ID token is keyed on: its claims, never its bytes.

    A signature is not unique (an ECDSA ``(r, s)`` has the twin ``(r, n - s)``; PSS and ECDSA signers
    may sign the same claims twice), so a hash of the token would let one token be used again under
    another spelling. ``jti`` names a token when the provider sets one; otherwise the issuer, subject,
    issue time and this server's per-login nonce do.
    """
    jti = claims.get("jti")
    if isinstance(jti, str) and jti:
        fields: tuple[Any, ...] = ("jti", claims.get("iss"), jti)
    else:
        fields = ("claims", claims.get("iss"), claims.get("sub"), claims.get("iat"), claims.get("nonce"))
    # repr of a tuple of parsed JSON values is one unambiguous text per value (a third of json.dumps's cost)
    return hashlib.sha256(repr(fields).encode("utf-8", "backslashreplace")).digest()
