"""The fictional site's session cookie: what it looks like and how to check its signature.

Wire format::

    cookie    = b64url(payload) "." b64url(signature)
    payload   = JSON object {"uid": str, "sid": str, "iat": int, "exp": int}
    signature = RSASSA-PSS(SHA-256, MGF1-SHA-256, salt length 32) over the ASCII text b64url(payload)

``b64url`` is base64url without padding. Decoding is strict: a string that is
not the canonical spelling of its bytes is refused, so no two cookies carry one
signature (single-use records are keyed on a hash of the cookie text).

Pure functions, no I/O and no clock: ``now`` is passed in.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sns_xmpp.sites.interface import Rejection, SiteRejection

UID = re.compile(r"[a-z0-9_-]{1,64}")
SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
B64URL = re.compile(r"[A-Za-z0-9_-]*")
MAX_COOKIE_CHARS = 4096
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


@dataclass(frozen=True)
class Session:
    """What a cookie with a good signature says."""

    uid: str
    sid: str
    issued_at: int
    expires: int


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise SiteRejection(Rejection.MALFORMED, "the cookie is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SiteRejection(Rejection.MALFORMED, "the cookie is not base64url") from None
    if b64url_encode(data) != text:  # spare bits set: a second spelling of the same bytes
        raise SiteRejection(Rejection.MALFORMED, "the cookie is not canonical base64url")
    return data


def sign_cookie(private_key: rsa.RSAPrivateKey, uid: str, sid: str, issued_at: int, expires: int) -> str:
    """Make a cookie as the social site does (for tests and for the site's own code)."""
    payload = b64url_encode(json.dumps({"uid": uid, "sid": sid, "iat": issued_at, "exp": expires},
                                       separators=(",", ":")).encode())
    return f"{payload}.{b64url_encode(private_key.sign(payload.encode('ascii'), PSS, hashes.SHA256()))}"


def _whole_number(claims: dict[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SiteRejection(Rejection.MALFORMED, f"the cookie's {name} is not a whole number")
    return value


def read_cookie(public_key: rsa.RSAPublicKey, cookie: str) -> Session:
    """Check the signature and the shape; raise SiteRejection (MALFORMED or BAD_SIGNATURE) otherwise.

    Times are not checked here: see :func:`check_times`.
    """
    if len(cookie) > MAX_COOKIE_CHARS or cookie.count(".") != 1:
        raise SiteRejection(Rejection.MALFORMED, "the password is not a session cookie")
    payload, signature = cookie.split(".")
    signature_bytes = b64url_decode(signature)
    body = b64url_decode(payload)  # decoded before verifying only to refuse junk early; trusted only after
    try:
        public_key.verify(signature_bytes, payload.encode("ascii"), PSS, hashes.SHA256())
    except InvalidSignature:
        raise SiteRejection(Rejection.BAD_SIGNATURE, "the cookie's signature does not match") from None
    try:
        claims = json.loads(body)
    except ValueError:
        raise SiteRejection(Rejection.MALFORMED, "the cookie's payload is not JSON") from None
    if not isinstance(claims, dict):
        raise SiteRejection(Rejection.MALFORMED, "the cookie's payload is not a JSON object")
    uid, sid = claims.get("uid"), claims.get("sid")
    if not isinstance(uid, str) or not UID.fullmatch(uid):
        raise SiteRejection(Rejection.MALFORMED, "the cookie's uid is not a user id")
    if not isinstance(sid, str) or not SID.fullmatch(sid):
        raise SiteRejection(Rejection.MALFORMED, "the cookie's sid is not a session id")
    return Session(uid, sid, _whole_number(claims, "iat"), _whole_number(claims, "exp"))


def check_times(session: Session, now: float, leeway: float, max_lifetime: float) -> None:
    """Raise SiteRejection when the session is not valid at *now*."""
    if session.issued_at > now + leeway:
        raise SiteRejection(Rejection.MALFORMED, "the cookie was issued in the future")
    if now > session.expires + leeway:
        raise SiteRejection(Rejection.EXPIRED, "the session cookie has expired")
    if session.expires - session.issued_at > max_lifetime + leeway:
        raise SiteRejection(Rejection.LIFETIME_EXCEEDED, "the cookie lives longer than this server accepts")
