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
period, over a connection that TLS did not protect. ``invalidate='true'`` ends the token after the
login. A token asked for with
a channel-bound mechanism is never taken without channel binding (no downgrade). A revocation deletes
the account's tokens (`IStore.revoke`).
"""

from __future__ import annotations

import base64
import dataclasses
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


MAX_KNOWN = 100_000  # rows remembered per node: some 300 bytes each


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
        # The rows this node's FAST logins last left, by (jid, agent): hints, see log_in; their
        # last_count also holds counts of logins that wrote nothing (see the module's doc).
        self._known: dict[tuple[str, str], FastToken] = {}

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
        if count is None or not 0 < count < MAX_COUNT:
            return defer.fail(AuthenticationFailed("malformed-request", "FAST needs <fast count=...> above 0"))
        if jid is None:
            return defer.fail(AuthenticationFailed("not-authorized", "wrong or expired token"))
        now = self.clock.seconds()
        key = (jid, agent)

        def fresh_read() -> Deferred[FastLogin]:
            seen = self._known.pop(key, None)
            return self.store.fast_token(jid, agent).addCallback(found, False, seen)

        def found(stored: FastToken | None, from_memory: bool,
                  seen: FastToken | None = None) -> Deferred[FastLogin]:
            # What this node last knew of the row is only a hint: any refusal is decided on the
            # row itself (another node may have rotated, taken a count, or revoked since).
            used = _matching(stored, proof, cb_data, now)
            if stored is None or used is None:
                if from_memory:
                    return fresh_read()
                return defer.fail(AuthenticationFailed("not-authorized", "wrong or expired token", reason=used_reason(
                    stored, proof, cb_data)))
            if stored.mechanism != HT_SHA_256_NONE and mechanism == HT_SHA_256_NONE:
                # No downgrade: a token asked for with channel binding is only taken with it.
                return defer.fail(AuthenticationFailed("not-authorized", f"this token needs {stored.mechanism}"))
            if count <= _count_floor(stored, used, seen):
                if from_memory:
                    return fresh_read()
                return defer.fail(AuthenticationFailed("not-authorized", "FAST count replayed", reason="replayed"))
            result = LoginResult(jid, mechanism, confirmed_until=stored.confirmed_until)
            if not invalidate and used == stored.token_hash and now - stored.issued_at < self.rotation:
                # Not due: nothing to write, so the row itself must say yes (a revocation or
                # another node may have ended the token since); the count is this node's to keep.
                if from_memory:
                    return fresh_read()
                self._remember_count(stored, count)
                log.info("fast.login jid={jid} rotated={rotated}", jid=jid, rotated=False)
                return defer.succeed(FastLogin(result, responder(used, cb_data), None))
            replacement: FastTokenIssue | None = None
            fresh: IssuedToken | None = None
            if not invalidate:
                token = new_token()
                fresh = IssuedToken(token, mechanism, _capped(now + self.lifetime, stored.confirmed_until))
                replacement = FastTokenIssue(mechanism, token_hash(token), now, fresh.expires_at, now + self.grace)
            answer = FastLogin(result, responder(used, cb_data), fresh)

            def taken(ok: bool) -> FastLogin | Deferred[FastLogin]:
                if not ok:  # another login with this count (or a revocation) came first
                    if from_memory:
                        return fresh_read()
                    raise AuthenticationFailed("not-authorized", "FAST count replayed", reason="replayed")
                self._remember(stored, used, count, replacement)
                log.info("fast.login jid={jid} rotated={rotated}", jid=jid, rotated=fresh is not None)
                return answer

            return self.store.use_fast_token(jid, agent, used, count, now, replacement).addCallback(taken)

        known = self._known.get(key)
        if known is not None:
            return found(known, True)
        return self.store.fast_token(jid, agent).addCallback(found, False)

    def _remember_count(self, stored: FastToken, count: int) -> None:
        """A login with the current token that rotated nothing: its count, in memory only."""
        key = (stored.jid, stored.agent)
        if key not in self._known and len(self._known) >= MAX_KNOWN:
            self._known.pop(next(iter(self._known)))
        self._known[key] = dataclasses.replace(stored, last_count=count)

    def _remember(self, stored: FastToken, used: bytes, count: int, replacement: FastTokenIssue | None) -> None:
        """The row as the login's statement left it (store/common.py's rotation statements), so
        that the device's next login need not read it: one store read less per FAST login."""
        key = (stored.jid, stored.agent)
        if replacement is None:  # invalidated: the row is gone
            self._known.pop(key, None)
            return
        row = dataclasses.replace(stored, mechanism=replacement.mechanism, token_hash=replacement.token_hash,
                                  issued_at=replacement.issued_at, expires_at=replacement.expires_at, last_count=0,
                                  previous_count=count)
        if used == stored.token_hash:  # the current token was used: it becomes the previous one
            row = dataclasses.replace(row, previous_hash=stored.token_hash, previous_until=replacement.grace_until)
        if key not in self._known and len(self._known) >= MAX_KNOWN:
            self._known.pop(next(iter(self._known)))
        self._known[key] = row


def _count_floor(stored: FastToken, used: bytes, seen: FastToken | None) -> int:
    """The count a login with the token *used* must pass: the row's, or what this node saw of the
    same token since (logins that wrote nothing), whichever is higher."""
    if used == stored.token_hash:
        floor = stored.last_count
        if seen is not None and seen.token_hash == used:
            floor = max(floor, seen.last_count)
        return floor
    floor = stored.previous_count
    if seen is not None and seen.previous_hash == used:
        floor = max(floor, seen.previous_count)
    return floor


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
