"""Minimal, strict JWS (RFC 7515) and JWT (RFC 7519) verification on ``cryptography``.

Only what an OpenID Connect relying party needs: the compact serialization,
public JWKs (RSA, EC P-256, Ed25519) and the algorithms RS256, PS256, PS384, PS512,
ES256 and EdDSA.
Everything else is refused: ``none``, every HMAC algorithm (an HMAC "keyed" with
a provider's public key is the classic forgery), and any algorithm a key's type
or ``alg`` member does not allow. Header members that say where to find a key
(``jku``, ``x5u``, ``jwk``) are never followed: keys come only from the caller.

Every failure is a :class:`JOSEError` whose ``reason`` is safe to show a client, and whose
``kind`` says what failed: an algorithm off the allowlist is ``unsupported-algorithm``, and
``bad-signature`` means only that a signature did not verify.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

MALFORMED = "malformed"
BAD_SIGNATURE = "bad-signature"
UNSUPPORTED_ALGORITHM = "unsupported-algorithm"
UNKNOWN_KEY = "unknown-key"

DEFAULT_MAX_TOKEN_BYTES = 8192
MIN_RSA_BITS = 2048

# The allowlist: algorithm -> the only key type that may verify it.
ALGORITHMS: Mapping[str, str] = {
    "RS256": "RSA", "PS256": "RSA", "PS384": "RSA", "PS512": "RSA", "ES256": "EC", "EdDSA": "OKP",
}
_PSS_HASHES: Mapping[str, type[hashes.HashAlgorithm]] = {
    "PS256": hashes.SHA256, "PS384": hashes.SHA384, "PS512": hashes.SHA512,
}
# What a refusal may repeat of a token's alg: a plausible algorithm name, nothing else.
_ALG_NAME = re.compile(r"[A-Za-z0-9+_-]{1,16}")

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | Ed25519PublicKey


class JOSEError(Exception):
    """A token or key that will not be used; ``kind`` is one of the module's kind constants."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(kind, reason)
        self.kind = kind
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason}"


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# The characters that may end an unpadded base64url text of length 2 or 3 (mod 4): those whose
# bits beyond the data are zero. Any other last character is a second spelling of some value.
_CANONICAL_LAST = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url, refusing padding, other alphabets and non-canonical forms."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise JOSEError(MALFORMED, "bad base64url")
    tail = len(text) % 4
    if tail == 1 or (tail and text[-1] not in _CANONICAL_LAST[tail]):
        raise JOSEError(MALFORMED, "bad base64url")
    return base64.urlsafe_b64decode(text + "=" * (-tail % 4))


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError("not JSON")


# One decoder for every call: json.loads with options builds a decoder and its scanner each time.
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse UTF-8 JSON that must be one object without duplicate members, NaN or Infinity."""
    try:
        value = _STRICT_JSON.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise JOSEError(MALFORMED, f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise JOSEError(MALFORMED, f"{what} is not a JSON object")
    return value


@dataclass(frozen=True)
class CompactJWS:
    """A parsed, not yet verified, compact JWS."""

    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def parse_compact(token: str, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> CompactJWS:
    """Split and decode a compact JWS; refuse oversized tokens and algorithms off the allowlist."""
    if not isinstance(token, str):
        raise JOSEError(MALFORMED, "token is not text")
    if len(token) > max_bytes:
        raise JOSEError(MALFORMED, "token too large")
    if not token.isascii():
        raise JOSEError(MALFORMED, "token is not a compact JWS")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise JOSEError(MALFORMED, "token is not a compact JWS")
    encoded_header, encoded_payload, encoded_signature = parts
    header = _accepted_headers.get(encoded_header)
    if header is None:
        header = _accept_header(encoded_header)
    payload = b64url_decode(encoded_payload)
    signature = b64url_decode(encoded_signature)
    return CompactJWS(dict(header), payload, f"{encoded_header}.{encoded_payload}".encode("ascii"), signature)


# A provider signs every token with one of a few headers ({"alg", "kid", "typ"}): each is checked
# once and then found here. Only accepted headers are kept, at most _MAX_ACCEPTED_HEADERS.
_MAX_ACCEPTED_HEADERS = 64
_accepted_headers: dict[str, dict[str, Any]] = {}


def _accept_header(encoded_header: str) -> dict[str, Any]:
    header = parse_json_object(b64url_decode(encoded_header), "header")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JOSEError(MALFORMED, "header has no alg")
    if alg not in ALGORITHMS:
        named = alg if _ALG_NAME.fullmatch(alg) else "the token's algorithm"
        raise JOSEError(UNSUPPORTED_ALGORITHM, f"{named} is not accepted")
    if "crit" in header:
        raise JOSEError(MALFORMED, "critical header extensions are not supported")
    if "kid" in header and not isinstance(header["kid"], str):
        raise JOSEError(MALFORMED, "kid is not a string")
    if len(_accepted_headers) >= _MAX_ACCEPTED_HEADERS:
        _accepted_headers.clear()
    _accepted_headers[encoded_header] = header
    return header


@dataclass(frozen=True)
class PublicJWK:
    """A public signing key from a JWK set."""

    kty: str
    key: PublicKey
    kid: str | None = None
    alg: str | None = None

    def allows(self, alg: str) -> bool:
        return ALGORITHMS.get(alg) == self.kty and (self.alg is None or self.alg == alg)


def _member_bytes(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JOSEError(MALFORMED, f"key has no {name}")
    return b64url_decode(value)


def load_jwk(jwk: Mapping[str, Any]) -> PublicJWK:
    """Turn one JWK into a public key; raise JOSEError for any key that must not verify signatures."""
    if not isinstance(jwk, Mapping):
        raise JOSEError(MALFORMED, "key is not an object")
    kty, kid, alg, use = jwk.get("kty"), jwk.get("kid"), jwk.get("alg"), jwk.get("use")
    if kid is not None and not isinstance(kid, str):
        raise JOSEError(MALFORMED, "kid is not a string")
    if use is not None and use != "sig":
        raise JOSEError(MALFORMED, "key is not for signatures")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise JOSEError(MALFORMED, "key is not for verifying")
    if alg is not None and (not isinstance(alg, str) or ALGORITHMS.get(alg) != kty):
        raise JOSEError(MALFORMED, "key algorithm not supported")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise JOSEError(MALFORMED, "key set holds private or symmetric key material")
    key: PublicKey
    try:
        if kty == "RSA":
            n = int.from_bytes(_member_bytes(jwk, "n"), "big")
            e = int.from_bytes(_member_bytes(jwk, "e"), "big")
            if n.bit_length() < MIN_RSA_BITS:
                raise JOSEError(MALFORMED, "RSA key too small")
            if e < 3 or e % 2 == 0:
                raise JOSEError(MALFORMED, "bad RSA exponent")
            key = rsa.RSAPublicNumbers(e, n).public_key()
        elif kty == "EC":
            if jwk.get("crv") != "P-256":
                raise JOSEError(MALFORMED, "curve not supported")
            x, y = _member_bytes(jwk, "x"), _member_bytes(jwk, "y")
            if len(x) != 32 or len(y) != 32:
                raise JOSEError(MALFORMED, "bad P-256 coordinates")
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
            )
            key = numbers.public_key()  # refuses points off the curve
        elif kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                raise JOSEError(MALFORMED, "curve not supported")
            x = _member_bytes(jwk, "x")
            if len(x) != 32:
                raise JOSEError(MALFORMED, "bad Ed25519 key")
            key = Ed25519PublicKey.from_public_bytes(x)
        else:
            raise JOSEError(MALFORMED, "key type not supported")
    except (ValueError, UnsupportedAlgorithm):
        raise JOSEError(MALFORMED, "bad key") from None
    return PublicJWK(kty=str(kty), key=key, kid=kid, alg=alg)


def load_jwks(document: Mapping[str, Any]) -> tuple[list[PublicJWK], list[str]]:
    """The usable keys of a JWK set, and one reason per key left out."""
    keys = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(keys, list):
        raise JOSEError(MALFORMED, "key set has no keys list")
    usable: list[PublicJWK] = []
    skipped: list[str] = []
    for entry in keys:
        try:
            usable.append(load_jwk(entry))
        except JOSEError as e:
            skipped.append(e.reason)
    return usable, skipped


def select_keys(jws: CompactJWS, keys: Sequence[PublicJWK]) -> list[PublicJWK]:
    """The keys that may verify *jws*: those with its ``kid``, or the only one for its algorithm."""
    kid = jws.kid
    if kid is None:
        usable = [key for key in keys if key.allows(jws.alg)]
        if len(usable) != 1:
            raise JOSEError(UNKNOWN_KEY, "token names no key and the key set has no single key for it")
        return usable
    named = [key for key in keys if key.kid == kid]
    if not named:
        raise JOSEError(UNKNOWN_KEY, "no key with the token's kid")
    usable = [key for key in named if key.allows(jws.alg)]
    if not usable:
        raise JOSEError(UNSUPPORTED_ALGORITHM, f"the token's key is not for {jws.alg}")
    return usable


def verify_signature(jws: CompactJWS, jwk: PublicJWK) -> None:
    """Check *jws*'s signature with *jwk*, or raise JOSEError(BAD_SIGNATURE)."""
    alg, key, signature = jws.alg, jwk.key, jws.signature
    if not jwk.allows(alg):
        raise JOSEError(UNSUPPORTED_ALGORITHM, f"the token's key is not for {alg}")
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            if len(signature) != (key.key_size + 7) // 8:
                raise InvalidSignature
            key.verify(signature, jws.signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg in _PSS_HASHES and isinstance(key, rsa.RSAPublicKey):
            if len(signature) != (key.key_size + 7) // 8:
                raise InvalidSignature
            # RFC 7518 §3.5: MGF1 with the same hash, and a salt as long as the hash's output.
            digest = _PSS_HASHES[alg]()
            pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.DIGEST_LENGTH)
            key.verify(signature, jws.signing_input, pss, digest)
        elif alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != 64:
                raise InvalidSignature
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(hashes.SHA256()))
        elif alg == "EdDSA" and isinstance(key, Ed25519PublicKey):
            if len(signature) != 64:
                raise InvalidSignature
            key.verify(signature, jws.signing_input)
        else:
            raise InvalidSignature
    except InvalidSignature:
        raise JOSEError(BAD_SIGNATURE, "signature does not verify") from None


def verify_jws(jws: CompactJWS, keys: Sequence[PublicJWK]) -> dict[str, Any]:
    """Verify *jws* with a key from *keys* and return its JSON claims."""
    failure: JOSEError | None = None
    for jwk in select_keys(jws, keys):
        try:
            verify_signature(jws, jwk)
        except JOSEError as e:
            failure = e
            continue
        return parse_json_object(jws.payload, "payload")
    raise failure or JOSEError(BAD_SIGNATURE, "signature does not verify")


def verify_compact(token: str, keys: Sequence[PublicJWK], max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> dict[str, Any]:
    """Parse and verify a compact JWS/JWT; return its claims."""
    return verify_jws(parse_compact(token, max_bytes), keys)
