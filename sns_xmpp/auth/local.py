"""Local accounts: ``node@domain`` with a password held as salted SCRAM keys."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from sns_xmpp.auth.checker import AuthenticationFailed, ILoginChecker, LoginResult, ScramLookup
from sns_xmpp.auth.saslprep import SASLprepError
from sns_xmpp.auth.scram import MECHANISMS, derive_credential
from sns_xmpp.store.interface import IStore
from sns_xmpp.store.records import Account
from sns_xmpp.xmpp.addressing import InvalidFormat, parse_jid

Hashing = Callable[..., Deferred]


def local_jid(authcid: str, domain: str) -> str:
    """The bare JID a local SASL user name stands for.

    Clients send either the localpart (RFC 6120) or the whole bare JID of the
    stream's domain; any other shape is not a local account name.
    """
    node = authcid
    before, at, host = authcid.rpartition("@")
    if at and host.lower() == domain:  # a domainpart is case-insensitive (RFC 7622 3.2)
        node = before
    if not node or "@" in node or "/" in node:
        raise AuthenticationFailed("not-authorized", "no such account or wrong password")
    try:
        return parse_jid(f"{node}@{domain}").userhost()
    except InvalidFormat:
        raise AuthenticationFailed("not-authorized", "no such account or wrong password") from None


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

    def __init__(self, store: IStore, hashing: Hashing = defer.maybeDeferred) -> None:
        self.store = store
        # Where key derivation runs: the daemon passes a thread pool; inline by default.
        self.hashing = hashing

    def mechanisms_for(self, claimed_jid: str | None, domain: str) -> tuple[str, ...]:
        return self.mechanisms

    @defer.inlineCallbacks
    def check_plain(
        self, authcid: str, password: str, authzid: str | None, domain: str
    ) -> Generator[Deferred[Any], Any, LoginResult]:
        jid = local_jid(authcid, domain)
        account = yield self.store.get_account(jid)
        stored = None
        if account is not None:
            stored = next((c for c in account.credentials if c.mechanism == "SCRAM-SHA-256"), None)
        if stored is None:
            raise AuthenticationFailed("not-authorized", "no such account or wrong password")
        try:
            # PBKDF2 would stall every stream for a millisecond or more; hashlib
            # releases the GIL, so a thread runs it beside the reactor.
            offered = yield self.hashing(derive_credential, stored.mechanism, password,
                                         salt=stored.salt, iterations=stored.iterations)
        except SASLprepError:
            raise AuthenticationFailed("not-authorized", "no such account or wrong password") from None
        if not hmac.compare_digest(offered.stored_key, stored.stored_key):
            raise AuthenticationFailed("not-authorized", "no such account or wrong password")
        check_authzid(authzid, jid)
        return LoginResult(jid=jid, method="PLAIN")

    def throttle_key(self, authcid: str, domain: str) -> str:
        try:
            return "account:" + local_jid(authcid, domain)
        except AuthenticationFailed:
            return "account:" + authcid.lower()  # no account has this name; counted all the same

    def scram_lookup(self, authcid: str, mechanism: str, domain: str) -> Deferred:
        try:
            jid = local_jid(authcid, domain)
        except AuthenticationFailed:
            return defer.succeed(ScramLookup(None, _refuse))

        def found(account: Account | None) -> ScramLookup:
            credential = None
            if account is not None:
                credential = next((c for c in account.credentials if c.mechanism == mechanism), None)

            def complete(authzid: str | None) -> Deferred:
                check_authzid(authzid, jid)
                return defer.succeed(LoginResult(jid=jid, method=mechanism))

            return ScramLookup(credential, complete if credential else _refuse)

        return self.store.get_account(jid).addCallback(found)


def _refuse(authzid: str | None) -> Deferred:
    return defer.fail(AuthenticationFailed("not-authorized", "no such account or wrong password"))
