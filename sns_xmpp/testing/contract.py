"""How a plugin author describes a site plugin to the contract suite.

Subclass :class:`SiteContract`, name the plugin and fill in the hooks; the
suite (``sns_xmpp.testing.check_site_contract`` or the pytest mixin
``SiteContractTests``) builds the site the way the server does and checks the
properties every site must have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from zope.interface.interface import InterfaceClass

from sns_xmpp.sites.interface import ISite, ISiteReactor, SiteContext

SiteFactory = Callable[[str, Mapping[str, Any], SiteContext], ISite]
GROUP = "sns_xmpp.sites"


class ContractError(Exception):
    """The contract *description* is wrong or incomplete (not the plugin): fix the SiteContract subclass."""


class ContractViolation(AssertionError):
    """The plugin broke the contract; ``messages`` says which properties, one line each."""

    def __init__(self, messages: Iterable[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


@dataclass(frozen=True)
class Credentials:
    """A login as a client would send it: ``<identifier>@<site_id>`` and the token as the password.

    ``account`` is the account id the site must vouch for (``VerifiedAccount.account``).
    """

    identifier: str
    token: str
    account: str


@dataclass(frozen=True)
class BadSettings:
    """Settings the factory must refuse with ``SiteConfigError(key, ...)``.

    ``label`` names the case in failure messages; settings themselves are never
    printed, because they may hold secrets.
    """

    settings: Mapping[str, Any]
    key: str
    label: str = ""

    @classmethod
    def without(cls, settings: Mapping[str, Any], key: str) -> BadSettings:
        """*settings* with *key* left out: the factory must say it is required."""
        return cls({k: v for k, v in settings.items() if k != key}, key, f"without {key!r}")

    @classmethod
    def changed(cls, settings: Mapping[str, Any], key: str, value: Any, *, names: str | None = None,
                label: str | None = None) -> BadSettings:
        """*settings* with *key* set to *value*; the error must name *names* (default: *key*)."""
        return cls({**settings, key: value}, names or key, label or f"{key!r} set to a bad value")


@dataclass(frozen=True)
class UnreachableProvider:
    """Settings that point the plugin at a provider that accepts connections and never answers.

    ``timeout`` is how long the plugin itself waits under these settings; the
    suite allows a margin on top, then calls the verification hung.
    """

    settings: Mapping[str, Any]
    timeout: float


class SiteContract:
    """A site plugin, described for the contract suite. Subclass and fill in.

    Required: ``plugin`` (or override :meth:`load_factory`), :meth:`settings`,
    :meth:`credentials`, :meth:`expired_credentials`. Optional:
    :meth:`bad_settings`, :meth:`secrets`, :meth:`unreachable_provider`,
    :meth:`set_up`/:meth:`tear_down`, :meth:`wait_until_ready`.

    Before calling any hook the suite sets ``self.reactor`` (the running
    reactor) and ``self.workdir`` (a fresh temporary folder, removed
    afterwards); the site's ``data_dir`` is ``self.workdir / "data"``.
    """

    #: The entry point in group ``sns_xmpp.sites``; the suite loads the factory
    #: through it, which also checks the packaging. Or override load_factory().
    plugin: str | None = None
    #: The site id the suite configures (the ``[sites.<id>]`` table name).
    site_id: str = "contract"
    #: Interfaces beyond ISite that the site must provide (IBearerSite, ISiteWithPages).
    interfaces: tuple[InterfaceClass, ...] = ()
    #: Whether the factory refuses a setting it does not know, naming it (it should).
    refuses_unknown_keys: bool = True
    #: Longest a call into the site may hold the reactor, in seconds.
    block_limit: float = 0.05
    #: Longest one verification may take before the suite calls it hung (providers that answer).
    verify_timeout: float = 5.0
    #: At most this many character positions of a token (and of an identifier) are tampered with.
    tamper_positions: int = 64
    #: The HTTP side's base URL and the hosted domains, as the SiteContext gives them.
    public_url: str = "http://127.0.0.1:5280"
    domains: tuple[str, ...] = ("localhost",)

    reactor: ISiteReactor
    workdir: Path

    # -- the test environment -----------------------------------------------------------------

    async def set_up(self) -> None:
        """Start what the site needs (a test provider, key files in ``self.workdir``)."""

    async def tear_down(self) -> None:
        """Stop what set_up started."""

    def load_factory(self) -> SiteFactory:
        """The site factory; by default the entry point ``plugin`` in group ``sns_xmpp.sites``."""
        if not self.plugin:
            raise ContractError(f"{type(self).__name__} names no plugin: set 'plugin' or override load_factory()")
        found = [ep for ep in entry_points(group=GROUP) if ep.name == self.plugin]
        if not found:
            raise LookupError(f"entry point {GROUP}:{self.plugin} is not installed")
        factory: SiteFactory = found[0].load()
        return factory

    def context(self) -> SiteContext:
        """The SiteContext the factory gets (override to pass an ``http_client``)."""
        return SiteContext(reactor=self.reactor, public_url=self.public_url, data_dir=self.workdir / "data",
                           domains=self.domains)

    async def wait_until_ready(self, site: ISite) -> None:
        """Wait until a started site can verify tokens; by default its ``when_ready()``, if it has one."""
        ready: Callable[[], Awaitable[Any]] | None = getattr(site, "when_ready", None)
        if ready is not None:
            await ready()

    # -- what the plugin is given ---------------------------------------------------------------

    def settings(self) -> Mapping[str, Any]:
        """Valid settings: the ``[sites.<id>]`` table without ``plugin`` and ``enabled``."""
        raise ContractError(f"{type(self).__name__} must override settings()")

    def bad_settings(self) -> Iterable[BadSettings]:
        """Settings the factory must refuse, each with the key the SiteConfigError must name."""
        return ()

    def secrets(self) -> Iterable[str]:
        """Secret strings that must never be logged (from the settings, key files, data_dir).

        Called after the site has been built, so secrets the site makes in its
        data_dir on first start can be read here.
        """
        return ()

    # -- tokens -----------------------------------------------------------------------------------

    def credentials(self, site: ISite, now: float) -> Credentials | Awaitable[Credentials]:
        """A login that is valid at *now* (the social site's side: sign, mint, ask the test provider)."""
        raise ContractError(f"{type(self).__name__} must override credentials()")

    def expired_credentials(self, site: ISite, now: float) -> Credentials | Awaitable[Credentials]:
        """A login that was valid once and has expired by *now* (leeway included)."""
        raise ContractError(f"{type(self).__name__} must override expired_credentials()")

    def unreachable_provider(self, url: str) -> UnreachableProvider | None:
        """Settings that send the plugin's provider calls to *url*, a server that never answers.

        Plugins that call a provider while verifying return them (with a short
        timeout); plugins that verify offline leave this returning None.
        """
        return None
