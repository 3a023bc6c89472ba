"""SASL mechanisms on the server side (RFC 6120 section 6), free of stream I/O.

Each attempt is one object: ``start`` with the optional initial response,
then ``respond`` for each client response. Both fire with a `Challenge` to
send, or a `Success`, or fail with `AuthenticationFailed`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from sns_xmpp.auth.checker import AuthenticationFailed, IBearerChecker, ILoginChecker, LoginResult, ScramLookup
from sns_xmpp.auth.fast import FastLogin, FastTokens, IssuedToken
from sns_xmpp.auth.saslprep import SASLprepError, saslprep
from sns_xmpp.auth.scram import ScramError, ScramServerExchange
from sns_xmpp.auth.social import BearerFailed
from sns_xmpp.jid import before_domain

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
MAX_SASL_BYTES = 16384


@dataclass(frozen=True)
class Challenge:
    data: bytes


@dataclass(frozen=True)
class Success:
    result: LoginResult
    additional_data: bytes | None = None
    token: IssuedToken | None = None  # a FAST login's new token (XEP-0484 rotation)


def decode_payload(text: str | None) -> bytes | None:
    """RFC 6120 6.4.2: no text means no initial response, '=' means an empty one."""
    if text is None or text == "":
        return None
    if text == "=":
        return b""
    if len(text) > MAX_SASL_BYTES * 4 // 3 + 4:
        raise AuthenticationFailed("malformed-request", "SASL payload too large")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AuthenticationFailed("incorrect-encoding", "payload is not base64") from None


def encode_payload(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii") if data else "="


def effective_authzid(authzid: str | None, authcid: str, domain: str) -> str | None:
    """The authzid to check, None when it names no identity beyond the user name itself.

    Net::XMPP (sendxmpp) always sends ``<user name>@<domain>``, whatever the user name
    holds; for a social name (``<identifier>@<site>``) that is no JID, yet it asks for nothing
    more than the user name does. Anything else goes to the checker as it was sent.
    """
    if not authzid:
        return None
    name = before_domain(authzid, domain)
    if name is not None:
        if name == authcid:
            return None
        try:
            if saslprep(name, allow_unassigned=True) == authcid:
                return None
        except SASLprepError:
            pass
    return authzid


class _OneMessage:
    """A mechanism whose one client message names the account (PLAIN, FAST's HT-*)."""

    checker: ILoginChecker
    domain: str
    authcid: str | None
    _account_key: str | None

    @property
    def account_key(self) -> str | None:
        """What a failure counts against in the per-account throttle (the account, not the spelling)."""
        if self._account_key is None and self.authcid:
            self._account_key = self.checker.throttle_key(self.authcid, self.domain)
        return self._account_key

    def start(self, initial: bytes | None) -> Deferred:
        if initial is None:
            return defer.succeed(Challenge(b""))
        return self.respond(initial)

    def respond(self, data: bytes) -> Deferred:
        raise NotImplementedError


class PlainAttempt(_OneMessage):
    """RFC 4616: ``authzid NUL authcid NUL password`` in one message."""

    def __init__(self, checker: ILoginChecker, domain: str) -> None:
        self.checker = checker
        self.domain = domain
        self.authcid: str | None = None
        self._account_key: str | None = None

    def respond(self, data: bytes) -> Deferred:
        parts = data.split(b"\x00")
        if len(parts) != 3 or not parts[1]:
            return defer.fail(AuthenticationFailed("malformed-request", "PLAIN needs authzid, authcid and password"))
        try:
            authzid, authcid, password = (part.decode("utf-8") for part in parts)
            self.authcid = authcid
        except UnicodeDecodeError:
            return defer.fail(AuthenticationFailed("malformed-request", "PLAIN payload is not UTF-8"))
        try:
            d = self.checker.check_plain(authcid, password, effective_authzid(authzid, authcid, self.domain),
                                         self.domain)
        except Exception:
            return defer.fail()
        return d.addCallback(Success)


class ScramAttempt:
    """RFC 5802 / 7677 over the sans-IO exchange in `sns_xmpp.auth.scram`."""

    def __init__(self, mechanism: str, checker: ILoginChecker, domain: str,
                 channel_binding: Callable[[str], bytes | None] | None = None, plus_offered: bool = False) -> None:
        self.checker = checker
        self.domain = domain
        self.exchange = ScramServerExchange(mechanism, channel_binding=channel_binding, plus_offered=plus_offered)
        self.mechanism = mechanism
        self.lookup: ScramLookup | None = None
        self._account_key: str | None = None

    @property
    def authcid(self) -> str | None:
        return self.exchange.username or None

    @property
    def account_key(self) -> str | None:
        """What a failure counts against in the per-account throttle (the account, not the spelling)."""
        if self._account_key is None and self.exchange.username:
            self._account_key = self.checker.throttle_key(self.exchange.username, self.domain)
        return self._account_key

    def start(self, initial: bytes | None) -> Deferred:
        if initial is None:
            return defer.succeed(Challenge(b""))
        return self.respond(initial)

    def respond(self, data: bytes) -> Deferred:
        if self.lookup is None:
            return self._client_first(data)
        return self._client_final(data)

    def _client_first(self, data: bytes) -> Deferred:
        try:
            self.exchange.client_first(data)
        except ScramError as error:
            return defer.fail(AuthenticationFailed(error.sasl_condition, str(error)))

        def looked_up(lookup: ScramLookup) -> Challenge:
            self.lookup = lookup
            return Challenge(self.exchange.server_first(lookup.credential, lookup.alternatives))

        # A -PLUS mechanism checks the same credential as its plain form.
        d = defer.maybeDeferred(self.checker.scram_lookup, self.exchange.username, self.exchange.mechanism,
                                self.domain)
        return d.addCallback(looked_up)

    def _client_final(self, data: bytes) -> Deferred:
        assert self.lookup is not None
        try:
            verifier = self.exchange.client_final(data)
        except ScramError as error:
            return defer.fail(AuthenticationFailed(error.sasl_condition, "wrong credentials"
                                                   if error.sasl_condition == "not-authorized" else str(error)))
        authzid = effective_authzid(self.exchange.authzid, self.exchange.username, self.domain)
        d = defer.maybeDeferred(self.lookup.complete, authzid)
        return d.addCallback(lambda result: Success(result, verifier))


class OAuthBearerAttempt:
    """RFC 7628: ``gs2-header ^A auth=Bearer <token> ^A ^A``; a refusal first sends the error document."""

    def __init__(self, checker: ILoginChecker, domain: str) -> None:
        self.checker = checker
        self.domain = domain
        self.refusal: AuthenticationFailed | None = None

    account_key = None  # a bearer token names no account before it is verified

    def start(self, initial: bytes | None) -> Deferred:
        if initial is None:
            return defer.succeed(Challenge(b""))
        return self.respond(initial)

    def respond(self, data: bytes) -> Deferred:
        if self.refusal is not None:
            # The client has read the error document (it answers with ^A); now the failure.
            return defer.fail(self.refusal)
        try:
            token, authzid = _parse_oauthbearer(data)
        except ValueError as problem:
            return defer.fail(AuthenticationFailed("malformed-request", str(problem)))

        def refused(reason: Failure) -> Challenge:
            error = reason.value
            if isinstance(error, BearerFailed):
                self.refusal = error
                return Challenge(error.error_document)
            return reason  # type: ignore[return-value]

        if not IBearerChecker.providedBy(self.checker):  # offered only where the checker takes tokens
            return defer.fail(AuthenticationFailed("invalid-mechanism", "no site takes bearer tokens"))
        checker = cast(IBearerChecker, self.checker)
        d = defer.maybeDeferred(checker.check_bearer, token, authzid, self.domain)
        return d.addCallbacks(Success, refused)


def _parse_oauthbearer(data: bytes) -> tuple[str, str | None]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("OAUTHBEARER payload is not UTF-8") from None
    header, separator, rest = text.partition("\x01")
    if not separator or not rest.endswith("\x01\x01"):
        raise ValueError("OAUTHBEARER payload is not gs2-header ^A key=value ^A ^A")
    flags = header.split(",")
    if len(flags) != 3 or flags[0] not in ("n", "y") or flags[2] != "":
        raise ValueError("bad gs2 header")
    authzid = flags[1][2:] if flags[1].startswith("a=") else None
    if flags[1] and authzid is None:
        raise ValueError("bad gs2 header")
    pairs = dict(pair.partition("=")[::2] for pair in rest[:-2].split("\x01") if pair)
    scheme, _, token = pairs.get("auth", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ValueError("no bearer token")
    return token.strip(), authzid or None


class HTAttempt(_OneMessage):
    """draft-schmaus-kitten-sasl-ht with a FAST token (XEP-0484): ``authcid NUL initiator-hashed-token``
    in one message; the server's HMAC comes back as additional data. What SASL2 said around it (the
    client's <user-agent id>, <fast count=... invalidate=...>) is given here."""

    def __init__(self, mechanism: str, fast: FastTokens, checker: ILoginChecker, domain: str, agent: str | None,
                 count: int | None, invalidate: bool, cb_data: bytes = b"") -> None:
        self.mechanism = mechanism
        self.fast = fast
        self.checker = checker
        self.domain = domain
        self.agent = agent
        self.count = count
        self.invalidate = invalidate
        self.cb_data = cb_data
        self.authcid: str | None = None  # failures count against the account the token names
        self._account_key: str | None = None

    def respond(self, data: bytes) -> Deferred:
        name, separator, proof = data.partition(b"\x00")
        if not separator or not name or len(proof) != 32:
            return defer.fail(AuthenticationFailed("malformed-request", "HT needs authcid NUL HMAC-SHA-256"))
        try:
            self.authcid = name.decode("utf-8")
        except UnicodeDecodeError:
            return defer.fail(AuthenticationFailed("malformed-request", "HT authcid is not UTF-8"))
        try:
            d = self.fast.log_in(self.mechanism, self.authcid, proof, self.domain, self.agent, self.count,
                                 self.invalidate, self.cb_data)
        except Exception:
            return defer.fail()

        def succeeded(login: FastLogin) -> Success:
            return Success(login.result, login.responder, login.token)

        return d.addCallback(succeeded)


Attempt = PlainAttempt | ScramAttempt | OAuthBearerAttempt | HTAttempt


def start_attempt(mechanism: str, checker: ILoginChecker, domain: str,
                  channel_binding: Callable[[str], bytes | None] | None = None, plus_offered: bool = False) -> Attempt:
    """*channel_binding* and *plus_offered*: for SCRAM's -PLUS mechanisms (ScramServerExchange)."""
    if mechanism == "PLAIN":
        return PlainAttempt(checker, domain)
    if mechanism == "OAUTHBEARER":
        return OAuthBearerAttempt(checker, domain)
    return ScramAttempt(mechanism, checker, domain, channel_binding, plus_offered)
