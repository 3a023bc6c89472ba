"""FAST tokens (XEP-0484) and the HT-* mechanisms that log in with them (draft-schmaus-kitten-sasl-ht).

After a login over SASL2 a client may ask for a token; it then logs in with the token alone,
one round trip, for the token's lifetime (``[xmpp.c2s] fast_token_lifetime``): the browser is not
needed again until then. A token is kept per (account, ``<user-agent id>``).

HT-SHA-256-*: the client's initial response is ``authcid NUL HMAC-SHA-256(token, "Initiator"
|| cb-data)``, the server's additional data ``HMAC-SHA-256(token, "Responder" || cb-data)``;
cb-data is empty for -NONE, the TLS connection's tls-exporter value for -EXPR (RFC 9266, TLS 1.3
only) and its tls-server-end-point value for -ENDP (RFC 5929), so that a token replayed on
another TLS connection (a man in the middle) fails.

**Stored hashed.** A token is 64 random bytes (86 characters of base64url), longer than SHA-256's
64-byte block, so HMAC replaces it by SHA-256(token) as its key (RFC 2104 section 3). The server
keeps only that digest and computes the same HMACs with it; a copy of the database logs no one in.

**Rotation when due** (XEP-0484 section 3.4): a FAST login whose token has served
``[xmpp.c2s] fast_token_rotation`` seconds (a day by default; at most half the lifetime) rotates it:
the success carries a new token with a whole lifetime, and the used one stays good for a grace
period (a client that misses the answer keeps its old token), after which it fails; a login with
that previous token rotates again. A login with a token not yet due writes nothing: that is what
keeps a FAST login below the cost of a social one (one store write per login was a sixth of it).

**The count.** The client's ``count`` must grow from login to login with one token. The XEP asks
for it against replays of TLS 0-RTT data, which this server never accepts; it is still checked, as
defence in depth: against the row (taken in the rotation's statement, where there is one) and
against the highest count this node has seen for the token since, kept in memory. A replay would
need a verbatim copy of a login sent on another node, or before a restart, within one rotation
period, over a connection that TLS did not protect. A client may leave the count out (the XEP
requires it only with 0-RTT; xmpp.js does): its login counts as one above the last, so the row's
count still only grows. ``invalidate='true'`` ends the token after the
login. A token asked for with
a channel-bound mechanism is never taken without channel binding (no downgrade). A revocation deletes
the account's tokens (`IStore.revoke`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from sns_xmpp.auth.checker import AuthenticationFailed, LoginResult
from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store.interface import IStore
from sns_xmpp.store.records import FastToken, FastTokenIssue

log = GatedLogger()

NS_FAST = "urn:xmpp:fast:0"
HT_SHA_256_NONE = "HT-SHA-256-NONE"
HT_SHA_256_EXPR = "HT-SHA-256-EXPR"  # channel binding tls-exporter (RFC 9266): TLS 1.3
HT_SHA_256_ENDP = "HT-SHA-256-ENDP"  # channel binding tls-server-end-point (RFC 5929)
MECHANISMS = (HT_SHA_256_EXPR, HT_SHA_256_ENDP, HT_SHA_256_NONE)  # best first
TOKEN_BYTES = 64  # > SHA-256's block: HMAC keys with SHA-256(token) (RFC 2104 3)
MAX_GRACE = 60.0  # seconds a rotated-out token is still taken, at most
MAX_COUNT = 2**62  # fits BIGINT in both engines
MAX_AGENT_CHARS = 256


@dataclass(frozen=True)
class IssuedToken:
    """A token handed to the client in <success/>: the only time it exists outside the client."""

    token: str
    mechanism: str
    expires_at: float


@dataclass(frozen=True)
class FastLogin:
    """A FAST login that held: who, the responder's message, and the token that replaces the used
    one (None after invalidate)."""

    result: LoginResult
    responder: bytes
    token: IssuedToken | None


def token_hash(token: str) -> bytes:
    """What the store keeps of a token: SHA-256 of its text (the HMAC key RFC 2104 uses for it)."""
    return hashlib.sha256(token.encode("ascii")).digest()


def ht_message(key: bytes, role: bytes, cb_data: bytes = b"") -> bytes:
    """HMAC-SHA-256(key, role || cb-data); *key* the token or its SHA-256 digest alike."""
    return hmac.new(key, role + cb_data, hashlib.sha256).digest()


def initiator(key: bytes, cb_data: bytes = b"") -> bytes:
    return ht_message(key, b"Initiator", cb_data)


def responder(key: bytes, cb_data: bytes = b"") -> bytes:
    return ht_message(key, b"Responder", cb_data)


def new_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).decode("ascii").rstrip("=")


def fast_jid(authcid: str, domain: str) -> str | None:
    """The bare JID a FAST login names: its authcid is the JID's localpart (or the bare JID)."""
    try:
        jid = parse_jid(authcid if "@" in authcid else f"{authcid}@{domain}")
    except InvalidFormat:
        return None
    if jid.user is None or jid.resource is not None or jid.host != domain:
        return None
    return jid.userhost()


MAX_SEEN = 100_000  # counts remembered per node: some 250 bytes each


class FastTokens:
    """Issues tokens and checks logins with them, over the store."""

    def __init__(self, store: IStore, clock: IReactorTime, lifetime: float, rotation: float = 0.0) -> None:
        self.store = store
        self.clock = clock
        self.lifetime = lifetime
        self.grace = min(MAX_GRACE, lifetime / 10)
        # A token serves this long before a login rotates it (0: every login rotates). Never more
        # than half its lifetime, so that a device in regular use always holds a token with most
        # of its lifetime ahead.
        self.rotation = min(rotation, lifetime / 2)
        # The highest count this node has seen per (jid, agent) with the token whose digest is
        # kept alongside, from logins that wrote nothing (see the module's doc); bounded.
        self._seen: dict[tuple[str, str], tuple[bytes, int]] = {}

    def issue(self, jid: str, agent: str, mechanism: str = HT_SHA_256_NONE,
              confirmed_until: float | None = None) -> Deferred[IssuedToken | None]:
        """A new token for (jid, agent), replacing the one there; None if the account is gone.
        *confirmed_until*: the device's lifetime (the login's), which no rotation passes."""
        token, now = new_token(), self.clock.seconds()
        expires = _capped(now + self.lifetime, confirmed_until)
        if expires <= now:
            return defer.succeed(None)  # the credentials it would outlive end now
        d = self.store.put_fast_token(jid, agent, mechanism, token_hash(token), now, expires, confirmed_until)
        return d.addCallback(lambda stored: IssuedToken(token, mechanism, expires) if stored else None)

    def log_in(self, mechanism: str, authcid: str, proof: bytes, domain: str, agent: str | None, count: int | None,
               invalidate: bool, cb_data: bytes = b"") -> Deferred[FastLogin]:
        """Check a FAST login; fire with a `FastLogin` or fail with AuthenticationFailed."""
        jid = fast_jid(authcid, domain)
        if agent is None or not agent or len(agent) > MAX_AGENT_CHARS:
            return defer.fail(AuthenticationFailed("not-authorized", "FAST needs the client's <user-agent id>"))
        # XEP-0484 asks for the count only with TLS 0-RTT, which this server does not take: a
        # client may leave it out (xmpp.js does), and the login then counts as one above the last.
        if count is not None and not 0 < count < MAX_COUNT:
            return defer.fail(AuthenticationFailed("malformed-request", "the FAST count must be above 0"))
        if jid is None:
            return defer.fail(AuthenticationFailed("not-authorized", "wrong or expired token"))
        now = self.clock.seconds()

        def found(stored: FastToken | None) -> Deferred[FastLogin] | FastLogin:
            # Raised and returned rather than wrapped in Deferreds: the read came back at once.
            used = _matching(stored, proof, cb_data, now)
            if stored is None or used is None:
                raise AuthenticationFailed("not-authorized", "wrong or expired token", reason=used_reason(
                    stored, proof, cb_data))
            if stored.mechanism != HT_SHA_256_NONE and mechanism == HT_SHA_256_NONE:
                # No downgrade: a token asked for with channel binding is only taken with it.
                raise AuthenticationFailed("not-authorized", f"this token needs {stored.mechanism}")
            key = (jid, agent)
            floor = self._count_floor(key, stored, used)
            counted = floor + 1 if count is None else count
            if counted <= floor:
                raise AuthenticationFailed("not-authorized", "FAST count replayed", reason="replayed")
            result = LoginResult(jid, mechanism, confirmed_until=stored.confirmed_until)
            if not invalidate and used == stored.token_hash and now - stored.issued_at < self.rotation:
                # Not due: nothing to write; the count is this node's to keep.
                self._see(key, used, counted)
                log.info("fast.login jid={jid} rotated={rotated}", jid=jid, rotated=False)
                return FastLogin(result, responder(used, cb_data), None)
            replacement: FastTokenIssue | None = None
            fresh: IssuedToken | None = None
            if not invalidate:
                token = new_token()
                fresh = IssuedToken(token, mechanism, _capped(now + self.lifetime, stored.confirmed_until))
                replacement = FastTokenIssue(mechanism, token_hash(token), now, fresh.expires_at, now + self.grace)
            answer = FastLogin(result, responder(used, cb_data), fresh)

            def taken(ok: bool) -> FastLogin:
                if not ok:  # another login with this count (or a revocation) came first
                    raise AuthenticationFailed("not-authorized", "FAST count replayed", reason="replayed")
                self._seen.pop(key, None)  # the row holds the count now
                log.info("fast.login jid={jid} rotated={rotated}", jid=jid, rotated=fresh is not None)
                return answer

            return self.store.use_fast_token(jid, agent, used, counted, now, replacement).addCallback(taken)

        # The row decides every login (another node may have rotated it, taken a count, or a
        # revocation deleted it); the read is a primary-key lookup, inline on the read connection.
        return self.store.fast_token(jid, agent).addCallback(found)

    def _count_floor(self, key: tuple[str, str], stored: FastToken, used: bytes) -> int:
        """The count a login with the token *used* must pass: the row's, or the highest this node
        has seen with that token since, whichever is higher."""
        floor = stored.last_count if used == stored.token_hash else stored.previous_count
        seen = self._seen.get(key)
        if seen is not None and seen[0] == used:
            floor = max(floor, seen[1])
        return floor

    def _see(self, key: tuple[str, str], used: bytes, count: int) -> None:
        if key not in self._seen and len(self._seen) >= MAX_SEEN:
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = (used, count)


def _capped(expires: float, confirmed_until: float | None) -> float:
    return expires if confirmed_until is None else min(expires, confirmed_until)


def _matching(stored: FastToken | None, proof: bytes, cb_data: bytes, now: float) -> bytes | None:
    """The digest of the token the proof was made with, if it is still good."""
    if stored is None:
        return None
    if stored.expires_at > now and hmac.compare_digest(initiator(stored.token_hash, cb_data), proof):
        return stored.token_hash
    if stored.previous_hash is not None and (stored.previous_until or 0) > now and hmac.compare_digest(
            initiator(stored.previous_hash, cb_data), proof):
        return stored.previous_hash
    return None


def used_reason(stored: FastToken | None, proof: bytes, cb_data: bytes) -> str | None:
    """'expired' for a genuine token past its time (no guess: it does not count toward blocking),
    else None (a wrong token counts)."""
    if stored is None:
        return None
    for digest in (stored.token_hash, stored.previous_hash):
        if digest is not None and hmac.compare_digest(initiator(digest, cb_data), proof):
            return "expired"
    return None
