"""Server side of SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677), free of I/O.

Channel binding is not supported, so the -PLUS variants are never offered.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Sequence

from sns_xmpp.auth.saslprep import SASLprepError, saslprep
from sns_xmpp.store.records import ScramCredential  # what the store keeps; made here

__all__ = [
    "DEFAULT_ITERATIONS",
    "MECHANISMS",
    "ScramCredential",
    "ScramError",
    "ScramServerExchange",
    "derive_all",
    "derive_credential",
    "stand_in_credential",
]

MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1")
DEFAULT_ITERATIONS = 4096
MAX_MESSAGE_BYTES = 4096

_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}
_SALT_BYTES = 16
SALT_BYTES = _SALT_BYTES

# Keys the fake salts of unknown users. Random per process so that nobody can
# precompute them, yet stable for the process lifetime so that asking twice for
# the same unknown user gets the same answer, as it would for a real one.
_FAKE_SALT_KEY = secrets.token_bytes(32)

# RFC 5802 section 7: printable = %x21-2B / %x2D-7E (anything visible but ",").
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
# saslname = 1*(value-safe-char / "=2C" / "=3D"); "," and NUL are gone already.
_SASLNAME = re.compile(r"(?:[^=]|=2C|=3D)+", re.IGNORECASE)
_SASLNAME_ESCAPE = re.compile(r"=(2C|3D)", re.IGNORECASE)


def _hash_name(mechanism: str) -> str:
    try:
        return _HASHES[mechanism]
    except KeyError:
        raise ValueError(f"unsupported SCRAM mechanism {mechanism!r}") from None


def derive_credential(
    mechanism: str, password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> ScramCredential:
    """The stored credential for *password*; raises SASLprepError for a disallowed one."""
    name = _hash_name(mechanism)
    if salt is None:
        salt = secrets.token_bytes(_SALT_BYTES)
    salted = hashlib.pbkdf2_hmac(name, saslprep(password).encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", name)
    return ScramCredential(
        mechanism=mechanism,
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.new(name, client_key).digest(),
        server_key=hmac.digest(salted, b"Server Key", name),
    )


def stand_in_credential(mechanism: str, salt: bytes, iterations: int) -> ScramCredential:
    """A credential for a user that does not exist: the given salt and count, keys no password matches."""
    size = hashlib.new(_hash_name(mechanism)).digest_size
    return ScramCredential(mechanism=mechanism, salt=salt, iterations=iterations,
                           stored_key=secrets.token_bytes(size), server_key=secrets.token_bytes(size))


def derive_all(password: str, iterations: int = DEFAULT_ITERATIONS) -> tuple[ScramCredential, ...]:
    """One credential per supported mechanism, each with its own salt."""
    return tuple(derive_credential(mechanism, password, iterations=iterations) for mechanism in MECHANISMS)


# Errors that mean "wrong credentials" rather than "broken client".
_NOT_AUTHORIZED = frozenset({"invalid-proof", "unknown-user", "channel-bindings-dont-match"})


class ScramError(Exception):
    """A refused SCRAM message.

    ``server_error`` is the RFC 5802 server-error-value; ``sasl_condition`` is
    the RFC 6120 SASL failure condition to send on an XMPP stream.
    """

    def __init__(self, server_error: str, reason: str | None = None, *, sasl_condition: str | None = None) -> None:
        super().__init__(reason or server_error)
        self.server_error = server_error
        if sasl_condition is None:
            sasl_condition = "not-authorized" if server_error in _NOT_AUTHORIZED else "malformed-request"
        self.sasl_condition = sasl_condition


class _Lookup(enum.Enum):
    USE_LOOKUP = enum.auto()


def _default_nonce() -> str:
    return secrets.token_urlsafe(18)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _decode(message: bytes) -> str:
    if len(message) > MAX_MESSAGE_BYTES:
        raise ScramError("other-error", "message too long")
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError("invalid-encoding", "message is not UTF-8") from None
    if "\x00" in text:
        raise ScramError("invalid-encoding", "message contains NUL")
    return text


def _attributes(fields: list[str]) -> list[tuple[str, str]]:
    """Split ``a=value`` fields; every SCRAM attribute name is one ASCII letter."""
    pairs = []
    for field in fields:
        if len(field) < 2 or field[1] != "=" or not (field[0].isascii() and field[0].isalpha()):
            raise ScramError("invalid-encoding", "malformed attribute")
        pairs.append((field[0], field[2:]))
    return pairs


def _saslname(value: str, server_error: str) -> str:
    if not _SASLNAME.fullmatch(value):
        raise ScramError(server_error, "bad name encoding")
    return _SASLNAME_ESCAPE.sub(lambda m: "," if m[1].upper() == "2C" else "=", value)


class ScramServerExchange:
    """One SCRAM authentication attempt, as a state machine fed client messages.

    ``client_first`` parses the first message and returns the prepared user
    name; the caller looks up that user's credential (possibly asynchronously)
    and passes it to ``server_first``, or omits it to have ``lookup`` called.
    ``client_final`` then checks the proof and returns the server-final
    message. Any bad input raises ScramError, after which the attempt is over.
    """

    def __init__(
        self,
        mechanism: str,
        lookup: Callable[[str], ScramCredential | None] | None = None,
        nonce_factory: Callable[[], str] = _default_nonce,
        *,
        unknown_iterations: int = DEFAULT_ITERATIONS,
        channel_binding: Callable[[str], bytes | None] | None = None,
        plus_offered: bool = False,
    ) -> None:
        # A -PLUS mechanism (RFC 5802 section 6) binds to the TLS channel: *channel_binding* gives
        # a channel binding type's data on this connection, or None for a type it cannot give.
        # *plus_offered*: the server offered -PLUS, so a client saying "y" (it could bind but
        # believes the server cannot) is being downgraded.
        self.plus = mechanism.endswith("-PLUS")
        self.mechanism = mechanism.removesuffix("-PLUS")  # the credential's mechanism
        self._hash = _hash_name(self.mechanism)
        self._channel_binding = channel_binding
        self._plus_offered = plus_offered
        self._cb_data = b""
        self._lookup = lookup
        self._nonce_factory = nonce_factory
        # Must match what real users have, or the count gives the game away.
        self._unknown_iterations = unknown_iterations
        self._state = "client-first"
        self.username = ""
        self.authzid: str | None = None
        self.auth_message: str | None = None
        self._gs2_header = ""
        self._client_first_bare = ""
        self._client_nonce = ""
        self._server_first = ""
        self._nonce = ""
        self._credential: ScramCredential | None = None
        self._alternatives: tuple[ScramCredential, ...] = ()
        self._user_known = False

    def _advance(self, expected: str) -> None:
        # Leaves the exchange finished until the step succeeds, so that an error
        # ends the attempt instead of letting the client retry the same step.
        if self._state != expected:
            raise ScramError("other-error", "unexpected SCRAM message")
        self._state = "done"

    def client_first(self, message: bytes) -> str:
        """Parse client-first-message; return the SASLprep'd user name."""
        self._advance("client-first")
        parts = _decode(message).split(",")
        if len(parts) < 4:
            raise ScramError("invalid-encoding", "expected a GS2 header, a user name and a nonce")
        flag, authzid = parts[0], parts[1]
        if self.plus:
            if not flag.startswith("p="):
                raise ScramError("invalid-encoding", "a -PLUS mechanism binds to the channel: p=<type>")
            data = self._channel_binding(flag[2:]) if self._channel_binding is not None else None
            if data is None:
                raise ScramError("unsupported-channel-binding-type", f"cannot bind to {flag[2:]!r} here")
            self._cb_data = data
        elif flag.startswith("p="):
            raise ScramError("channel-binding-not-supported", "channel binding needs a -PLUS mechanism")
        elif flag == "y" and self._plus_offered:
            raise ScramError("server-does-support-channel-binding", "-PLUS was offered: a downgrade?",
                             sasl_condition="not-authorized")
        elif flag not in ("n", "y"):
            raise ScramError("invalid-encoding", "bad GS2 channel binding flag")
        if authzid:
            if not authzid.startswith("a="):
                raise ScramError("invalid-encoding", "bad GS2 authzid")
            self.authzid = _saslname(authzid[2:], "invalid-encoding")

        attributes = _attributes(parts[2:])
        if attributes[0][0] == "m":
            raise ScramError("extensions-not-supported", "mandatory extension not supported")
        (name_attr, name), (nonce_attr, nonce) = attributes[:2]
        if name_attr != "n" or nonce_attr != "r":
            raise ScramError("invalid-encoding", "expected n= and r=")
        try:
            username = saslprep(_saslname(name, "invalid-username-encoding"), allow_unassigned=True)
        except SASLprepError as error:
            raise ScramError("invalid-username-encoding", f"user name: {error}") from None
        if not username:
            raise ScramError("invalid-username-encoding", "empty user name")
        if not _NONCE.fullmatch(nonce):
            raise ScramError("invalid-encoding", "bad client nonce")

        self.username = username
        self._gs2_header = f"{flag},{authzid},"
        self._client_first_bare = ",".join(parts[2:])
        self._client_nonce = nonce
        self._state = "server-first"
        return username

    def server_first(self, credential: ScramCredential | None | _Lookup = _Lookup.USE_LOOKUP,
                     alternatives: Sequence[ScramCredential] = ()) -> bytes:
        """Build server-first-message for *credential*, None for an unknown user. *alternatives*:
        more credentials under the same salt and count (an account's device passwords), any of
        which the client's proof may match."""
        if self._state != "server-first":
            raise ScramError("other-error", "unexpected SCRAM step")
        if credential is _Lookup.USE_LOOKUP:
            if self._lookup is None:
                raise TypeError("server_first() needs a credential when the exchange has no lookup")
            credential = self._lookup(self.username)
        if credential is not None and credential.mechanism != self.mechanism:
            raise ValueError(f"{credential.mechanism} credential given to a {self.mechanism} exchange")
        server_nonce = self._nonce_factory()
        if not _NONCE.fullmatch(server_nonce):
            raise ValueError("nonce_factory must return printable ASCII without ','")

        self._user_known = credential is not None
        if any((other.mechanism, other.salt, other.iterations)
               != (credential.mechanism, credential.salt, credential.iterations) for other in alternatives
               if credential is not None):
            raise ValueError("alternative credentials must share the mechanism, the salt and the count")
        self._alternatives = tuple(alternatives) if credential is not None else ()
        if credential is None:
            # An unknown user gets a salt that looks and behaves like a real
            # one and keys that match no password, so the reply reveals nothing.
            fake = hmac.digest(_FAKE_SALT_KEY, f"{self.mechanism}\x00{self.username}".encode(), "sha256")
            size = hashlib.new(self._hash).digest_size
            credential = ScramCredential(
                mechanism=self.mechanism,
                salt=fake[:_SALT_BYTES],
                iterations=self._unknown_iterations,
                stored_key=secrets.token_bytes(size),
                server_key=secrets.token_bytes(size),
            )
        self._credential = credential
        self._nonce = self._client_nonce + server_nonce
        self._server_first = f"r={self._nonce},s={_b64(credential.salt)},i={credential.iterations}"
        self._state = "client-final"
        return self._server_first.encode("ascii")

    def client_final(self, message: bytes) -> bytes:
        """Check client-final-message; return server-final-message ``v=...``."""
        self._advance("client-final")
        assert self._credential is not None
        parts = _decode(message).split(",")
        attributes = _attributes(parts)
        if len(attributes) < 3 or [a for a, _ in attributes[:2]] != ["c", "r"] or attributes[-1][0] != "p":
            raise ScramError("invalid-encoding", "expected c=, r= and finally p=")
        if attributes[0][1] != _b64(self._gs2_header.encode("utf-8") + self._cb_data):
            raise ScramError("channel-bindings-dont-match", "channel binding data does not match the GS2 header")
        if attributes[1][1] != self._nonce:
            raise ScramError("other-error", "nonce mismatch", sasl_condition="not-authorized")
        try:
            proof = base64.b64decode(attributes[-1][1], validate=True)
        except (binascii.Error, ValueError):
            raise ScramError("invalid-encoding", "proof is not base64") from None

        without_proof = ",".join(parts[:-1])
        self.auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}"
        auth_message = self.auth_message.encode("utf-8")
        matched = None
        for candidate in (self._credential, *self._alternatives):  # every one, matched or not
            client_signature = hmac.digest(candidate.stored_key, auth_message, self._hash)
            if len(proof) != len(client_signature):
                raise ScramError("invalid-proof", "wrong credentials")
            client_key = bytes(p ^ s for p, s in zip(proof, client_signature, strict=True))
            if hmac.compare_digest(hashlib.new(self._hash, client_key).digest(), candidate.stored_key):
                matched = candidate
        # An unknown user fails exactly like a wrong password, not with
        # "unknown-user", so the error does not reveal who exists either.
        if matched is None or not self._user_known:
            raise ScramError("invalid-proof", "wrong credentials")
        server_signature = hmac.digest(matched.server_key, auth_message, self._hash)
        return b"v=" + _b64(server_signature).encode("ascii")
