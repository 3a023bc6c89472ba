"""The contract between sns-xmpp and a social-site plugin.

A plugin is an entry point in the group ``sns_xmpp.sites`` naming a factory:

    factory(site_id: str, settings: Mapping[str, Any], context: SiteContext) -> ISite

``settings`` is the site's ``[sites.<site_id>]`` table without the keys the
registry itself reads (``plugin``, ``enabled``). A factory
refuses bad settings by raising ``SiteConfigError(key, problem)`` with the key
inside the table; the registry reports it as ``sites.<site_id>.<key>``.

A social login's SASL user name is ``<identifier>@<site_id>`` and its
password is the site's token. The site parses the identifier and verifies the
token; the XMPP side does the rest (replay records, linking, the session).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from sns_xmpp.reactors import ISiteReactor
from sns_xmpp.settings import ConfigError

__all__ = [
    "IBearerSite", "ILogoutSite", "IRefreshingSite", "ISite", "ISiteReactor", "ISiteWithPages", "LoginStart",
    "ProviderUnavailable",
    "Rejection", "SiteConfigError", "SiteContext", "SiteRejection", "SocialCredentials", "VerifiedAccount",
]


class Rejection(enum.Enum):
    """Why a site refused a token; the value is what clients see in the SASL <text/>."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad-signature"
    UNSUPPORTED_ALGORITHM = "unsupported-algorithm"
    EXPIRED = "expired"
    LIFETIME_EXCEEDED = "lifetime-exceeded"
    REPLAYED = "replayed"
    REVOKED = "revoked"  # issued before the account's link was revoked (unlinked, logged out)
    UNKNOWN_KEY = "unknown-key"
    UNKNOWN_SITE = "unknown-site"
    PROVIDER_UNAVAILABLE = "provider-unavailable"


class SiteRejection(Exception):
    """A token or login callback the site will not accept.

    ``reason`` goes to the client: it names the problem, never a secret.
    """

    def __init__(self, kind: Rejection, reason: str) -> None:
        super().__init__(kind, reason)
        self.kind = kind
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.reason}"


class ProviderUnavailable(SiteRejection):
    """The site's provider could not be used (unreachable, timed out, answered 5xx).

    Not the person's fault: the HTTP side answers it with 502 (503 when ``known_down``, the
    site already knew before this request that its provider is down), never with 400.
    """

    def __init__(self, reason: str, known_down: bool = False) -> None:
        super().__init__(Rejection.PROVIDER_UNAVAILABLE, reason)
        self.known_down = known_down


#: A site's settings are wrong: ``SiteConfigError(key, problem)``, ``key`` relative to its
#: ``[sites.<id>]`` table. It is the settings framework's one error type (`sns_xmpp.settings`);
#: the registry reports it with the table's name in front (`ConfigError.within`).
SiteConfigError = ConfigError


@dataclass(frozen=True)
class VerifiedAccount:
    """The social account a valid token proves, as the site vouches for it."""

    site: str
    account: str  # the site's stable account id: the link table's key
    expires: float  # when the token stops being valid (seconds since the epoch)
    token_digest: bytes  # a hash of the token, for single-use records; never the token
    display_name: str | None = None
    # When the site issued the token, or the earliest it can have (a lower bound): after a
    # revocation, only tokens issued later log in again. None: unknown, treated as before.
    issued_at: float | None = None
    # This token opens one session only (until it expires), whatever the site's single_use: an
    # ID token the client got from the provider itself, not through this server's login.
    single_use: bool = False


@dataclass(frozen=True)
class LoginStart:
    """Where the HTTP side sends the browser, and what it keeps until the callback."""

    url: str
    pending: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SocialCredentials:
    """What the callback hands to the person or client: the XMPP user name and password."""

    username: str  # "<identifier>@<site_id>"
    password: str  # the site's token for that identifier
    expires: float
    display_name: str | None = None  # the person's name at the site, when it told us one
    # The site's stable account id (VerifiedAccount.account), which the server links to the XMPP
    # user it hands over; None: the server verifies the credentials again to learn it.
    account: str | None = None
    # A refresh token the provider gave (OpenID scope offline_access), with which the server
    # re-confirms the account later (IRefreshingSite); never shown to the person.
    refresh_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SiteContext:
    """What a site may use; nothing else of the server."""

    reactor: ISiteReactor  # timeouts and timers, and the connections of an HTTP client (treq)
    public_url: str  # the HTTP side's base URL, no trailing slash
    data_dir: Path  # for keys the site makes on first start
    domains: tuple[str, ...]  # hosted XMPP domains
    http_client: Any = None  # a treq.client.HTTPClient, or None for one built on reactor


class ISite(Interface):
    site_id = Attribute("Stable id: the text after '@' in a social user name")
    display_name = Attribute("Name shown on 'log in with ...' buttons")
    single_use = Attribute("True when each token may open one session only")

    def parse_identifier(identifier: str) -> str:
        """Return the account id *identifier* names; raise SiteRejection(MALFORMED) if it names none.

        Called on user names a client sent, before any token is checked.
        """

    def verify(identifier: str, token: str, now: float) -> Deferred:
        """Fire with a VerifiedAccount, or fail with SiteRejection.

        The account must be the one *identifier* names. Signature compares are
        constant-time. Must not block the reactor.
        """

    def scram_password(identifier: str, now: float) -> str | None:
        """The password a valid token for *identifier* would be, or None.

        A site whose token can be recomputed from the identifier (a keyed
        signature of it) returns it, so that clients that only do SCRAM can log
        in; the server then derives SCRAM keys from it and calls ``verify`` with
        it after the proof holds. Sites that cannot return None.
        """

    def start_login(callback_url: str, state: str) -> Deferred:
        """Fire with a LoginStart: the site's login page for this attempt."""

    def finish_login(params: Mapping[str, str], pending: Mapping[str, str], now: float) -> Deferred:
        """Handle the browser's return to *callback_url*; fire with SocialCredentials or fail with SiteRejection."""

    def start() -> None:
        """Begin background work (fetching provider metadata); must not raise for an unreachable provider."""

    def stop() -> Deferred | None:
        """Stop background work."""

    def status() -> str:
        """A short, secret-free health line for operators (e.g. 'ok', 'provider unreachable: ...')."""


class IBearerSite(ISite):
    """A site whose tokens are also accepted through SASL OAUTHBEARER (RFC 7628)."""

    openid_configuration = Attribute("URL of the provider's discovery document, for the RFC 7628 error")
    issuer = Attribute("The provider's issuer identifier: a bearer token's `iss` picks its site by it")

    def verify_bearer(token: str, now: float) -> Deferred:
        """Fire with the VerifiedAccount a bearer token proves, or fail with SiteRejection."""


class ILogoutSite(ISite):
    """A site whose provider tells the server when a person logs out there (OpenID Connect
    Back-Channel Logout 1.0): the server then logs the linked account out everywhere."""

    def verify_logout(token: str, now: float) -> Deferred:
        """Fire with (the account id a logout token names, its digest for replay records), or
        fail with SiteRejection."""


class IRefreshingSite(ISite):
    """A site whose provider re-confirms an account without the browser (an OpenID refresh token)."""

    def refresh(account: str, refresh_token: str, now: float) -> Deferred:
        """Fire with the refresh token to keep from now on (the same, or a new one) once the
        provider confirms *account* again; fail with SiteRejection (REVOKED) when it no longer
        does, with ProviderUnavailable when it cannot be asked now."""


class ISiteWithPages(ISite):
    """A site that serves pages of its own on the HTTP side (the built-in demo site does)."""

    def pages() -> Mapping[bytes, Any]:
        """Top-level path segment -> twisted.web IResource, mounted at the HTTP root."""
