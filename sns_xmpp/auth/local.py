"""Local accounts: ``node@domain`` with a password held as salted SCRAM keys."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from sns_xmpp.auth.checker import AuthenticationFailed, ILoginChecker, LoginResult, ScramLookup
from sns_xmpp.auth.saslprep import SASLprepError
from sns_xmpp.auth.scram import (
    DEFAULT_ITERATIONS,
    MECHANISMS,
    SALT_BYTES,
    ScramCredential,
    derive_credential,
    stand_in_credential,
)
from sns_xmpp.jid import InvalidFormat, before_domain, parse_jid
from sns_xmpp.store.interface import IStore
from sns_xmpp.store.records import Account

Hashing = Callable[..., Deferred]


def local_jid(authcid: str, domain: str) -> str:
    """The bare JID a local SASL user name stands for.

    Clients send either the localpart (RFC 6120) or the whole bare JID of the
    stream's domain; any other shape is not a local account name.
    """
    node = before_domain(authcid, domain)
    if node is None:
        node = authcid
    if not node or "@" in node or "/" in node:
        raise AuthenticationFailed("not-authorized", "no such account or wrong password")
    try:
        return parse_jid(f"{node}@{domain}").userhost()
    except InvalidFormat:
        raise AuthenticationFailed("not-authorized", "no such account or wrong password") from None


def _local_jid_or_none(authcid: str, domain: str) -> str | None:
    try:
        return local_jid(authcid, domain)
    except AuthenticationFailed:
        return None


def check_authzid(authzid: str | None, jid: str) -> None:
    if authzid and authzid != jid:
        try:
            if parse_jid(authzid).userhost() == jid and "/" not in authzid:
                return
        except InvalidFormat:
            pass
        raise AuthenticationFailed("invalid-authzid", "you may only act as yourself")


@implementer(ILoginChecker)
class LocalAccountChecker:
    mechanisms = MECHANISMS + ("PLAIN",)

    def __init__(self, store: IStore, hashing: Hashing = defer.maybeDeferred, *,
                 iterations: int = DEFAULT_ITERATIONS, salt_key: bytes | None = None) -> None:
        self.store = store
        # Where key derivation runs: the daemon passes a thread pool; inline by default.
        self.hashing = hashing
        # An unknown user gets what a real one would: the configured count (what real users'
        # keys were made with), a salt keyed by the per-install secret (stable across restarts,
        # unguessable), and the same key derivation for PLAIN. Without a secret (tests), a
        # random one for this checker's lifetime.
        self.iterations = iterations
        self._salt_key = salt_key if salt_key is not None else secrets.token_bytes(32)

    def stand_in(self, mechanism: str, name: str) -> ScramCredential:
        """The credential an unknown user *name* (prepared, if it can be) seems to have."""
        salt = hmac.digest(self._salt_key, f"scram-salt{mechanism}\x00{name}".encode(), "sha256")[:SALT_BYTES]
        return stand_in_credential(mechanism, salt, self.iterations)

    def mechanisms_for(self, claimed_jid: str | None, domain: str) -> tuple[str, ...]:
        return self.mechanisms

    @defer.inlineCallbacks
    def check_plain(
        self, authcid: str, password: str, authzid: str | None, domain: str
    ) -> Generator[Deferred[Any], Any, LoginResult]:
        jid = _local_jid_or_none(authcid, domain)
        account = (yield self.store.get_account(jid)) if jid is not None else None
        stored = None
        if account is not None:
            stored = next((c for c in account.credentials if c.mechanism == "SCRAM-SHA-256"), None)
        known = stored is not None
        if stored is None:
            # The same derivation against keys no password matches, so that an unknown
            # user's refusal takes as long as a wrong password's.
            stored = self.stand_in("SCRAM-SHA-256", jid or authcid)
        try:
            # PBKDF2 would stall every stream for a millisecond or more; hashlib
            # releases the GIL, so a thread runs it beside the reactor.
            offered = yield self.hashing(derive_credential, stored.mechanism, password,
                                         salt=stored.salt, iterations=stored.iterations)
        except SASLprepError:
            raise AuthenticationFailed("not-authorized", "no such account or wrong password") from None
        if not (hmac.compare_digest(offered.stored_key, stored.stored_key) and known and jid is not None):
            raise AuthenticationFailed("not-authorized", "no such account or wrong password")
        check_authzid(authzid, jid)
        return LoginResult(jid=jid, method="PLAIN")

    def throttle_key(self, authcid: str, domain: str) -> str:
        try:
            return "account:" + local_jid(authcid, domain)
        except AuthenticationFailed:
            return "account:" + authcid.lower()  # no account has this name; counted all the same

    def scram_lookup(self, authcid: str, mechanism: str, domain: str) -> Deferred:
        jid = _local_jid_or_none(authcid, domain)
        if jid is None:
            return defer.succeed(ScramLookup(self.stand_in(mechanism, authcid), _refuse))

        def found(account: Account | None) -> ScramLookup:
            credential = None
            if account is not None:
                credential = next((c for c in account.credentials if c.mechanism == mechanism), None)
            if credential is None:
                return ScramLookup(self.stand_in(mechanism, jid), _refuse)

            def complete(authzid: str | None) -> Deferred:
                check_authzid(authzid, jid)
                return defer.succeed(LoginResult(jid=jid, method=mechanism))

            return ScramLookup(credential, complete)

        return self.store.get_account(jid).addCallback(found)


def _refuse(authzid: str | None) -> Deferred:
    return defer.fail(AuthenticationFailed("not-authorized", "no such account or wrong password"))
