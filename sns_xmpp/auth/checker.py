"""What the XMPP side asks when a client authenticates, independent of SASL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from sns_xmpp.auth.scram import ScramCredential
from sns_xmpp.sites.interface import Rejection

# Refusals that are no guess, so they neither slow nor block (auth/throttle.py): the client shows it
# had real credentials, or the fault is not the client's. A phone retrying in the background with
# them must not lock its owner out. Every other refusal (wrong password or signature, malformed,
# unknown site, another account's credentials) counts.
NOT_A_GUESS = frozenset({
    Rejection.EXPIRED.value,  # every site checks the signature before the expiry: once valid
    Rejection.LIFETIME_EXCEEDED.value,  # likewise signed by the site, only for too long
    Rejection.REPLAYED.value,  # checked after the signature: a genuine token used twice
    # Signed with a key this server no longer (or never) accepts: no guess can ever pass, so there is
    # nothing to slow, and after a key rotation every phone would otherwise count against its owner.
    Rejection.UNKNOWN_KEY.value,
    Rejection.PROVIDER_UNAVAILABLE.value,  # the provider is down: nobody's fault on this side
    "revoked",  # a device credential that was genuine until revoked (give it only once proved genuine)
})


@dataclass(frozen=True)
class LoginResult:
    """Who a successful authentication opens the session as, and how."""

    jid: str  # bare JID of the XMPP user
    method: str  # SASL mechanism
    site: str | None = None  # social site id, None for a local account
    # When the session must end: the site's credentials' expiry, for a site whose session_policy
    # is "token"; None otherwise.
    expires: float | None = None
    # Until when a device this login sets up (a FAST token, a device password) may last: the
    # site's device_lifetime from now, or its credentials' expiry; None: no bound (local accounts).
    confirmed_until: float | None = None
    # The person's name at the social site, as it vouched for it with this login (OpenID's
    # `name`, an hmac site's account name); None for local accounts and device logins. Features
    # read it at bind: the vCard feature makes it the FN of an account that has no vCard yet.
    display_name: str | None = None


class AuthenticationFailed(Exception):
    """A login attempt is refused with an RFC 6120 section 6.5 SASL condition."""

    def __init__(self, condition: str = "not-authorized", text: str | None = None, *, site: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(condition, text)
        self.condition = condition
        self.text = text
        self.site = site  # the social site refusing, for metrics; None for local accounts
        self.reason = reason or condition  # a short, stable label: the rejection kind or the condition

    def __str__(self) -> str:
        return self.text or self.condition

    @property
    def counts_toward_blocking(self) -> bool:
        """Whether the login throttle counts this refusal as a failed guess (see NOT_A_GUESS)."""
        return self.reason not in NOT_A_GUESS


@dataclass(frozen=True)
class ScramLookup:
    """The credential SCRAM checks the proof against, and what to do once it holds.

    For an unknown user ``credential`` is a stand-in (the checker's salt and
    iteration count, keys no password matches) and ``complete`` refuses, so that
    the exchange does not reveal whether the user exists. None also works: the
    exchange then makes up a salt itself, with the default count.
    """

    credential: ScramCredential | None
    complete: Callable[[str | None], Deferred[LoginResult]]
    # More credentials under the same salt and count, any of which may match the proof (the
    # account's other device passwords).
    alternatives: tuple[ScramCredential, ...] = ()


class ILoginChecker(Interface):
    """Checks SASL credentials for one server; errbacks with AuthenticationFailed."""

    mechanisms = Attribute("Names of the SASL mechanisms this checker supports, best first")

    def mechanisms_for(claimed_jid: str | None, domain: str) -> Sequence[str]:
        """The mechanisms to offer a client that says (in its stream header) it is *claimed_jid*."""

    def check_plain(authcid: str, password: str, authzid: str | None, domain: str) -> Deferred:
        """Fire with a LoginResult for valid PLAIN credentials."""

    def scram_lookup(authcid: str, mechanism: str, domain: str) -> Deferred:
        """Fire with a ScramLookup for the user named by *authcid*."""

    def throttle_key(authcid: str, domain: str) -> str:
        """The key failed logins under *authcid* count against: one per account, however the
        client spells its name (case, width, ignorable characters, the bare-JID form)."""


class IBearerChecker(ILoginChecker):
    """A checker that also takes OAUTHBEARER (RFC 7628) tokens of OpenID Connect sites."""

    def check_bearer(token: str, authzid: str | None, domain: str) -> Deferred:
        """Fire with a LoginResult for a valid token; errback with BearerFailed (its error
        document is the RFC 7628 challenge) or AuthenticationFailed."""
