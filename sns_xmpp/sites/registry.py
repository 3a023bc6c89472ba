"""Loading the social sites named in the configuration from their entry points.

Every problem stops start-up with one line: a plugin that is missing, fails to
load or does not provide ISite names ``sns_xmpp.sites:<name>``; a bad setting
names ``sites.<id>.<key>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from sns_xmpp.config import ConfigError
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.sites.interface import IBearerSite, ISite, SiteConfigError, SiteContext

log = GatedLogger()

GROUP = "sns_xmpp.sites"
SITE_ID = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
REGISTRY_KEYS = ("plugin", "enabled", "session_policy", "device_lifetime")
# How long a device (a FAST token, a device password) of a social account lasts without the site
# confirming the account again: a login with the site's credentials starts it anew.
DEFAULT_DEVICE_LIFETIME = 30 * 86400.0
# What bounds a social session: "device" (the default), how long a device stays valid; "token",
# the site's credentials themselves, so that the session ends when they expire (the site stays
# in charge).
SESSION_POLICIES = ("device", "token")


class SitePluginError(ConfigError):
    """A site plugin cannot be used; printed like a config error, naming the entry point."""

    def __str__(self) -> str:
        return f"sns-xmpp: site plugin error at '{self.key}': {self.problem}"


def _entry_point(name: str, available: Mapping[str, EntryPoint]) -> Callable[..., Any]:
    where = f"{GROUP}:{name}"
    found = available.get(name)
    if found is None:
        known = ", ".join(sorted(available)) or "none"
        raise SitePluginError(where, f"no such plugin is installed (installed: {known})")
    try:
        factory = found.load()
    except Exception as error:  # any import-time failure of third-party code
        raise SitePluginError(where, f"failed to load: {type(error).__name__}: {error}") from None
    if not callable(factory):
        raise SitePluginError(where, "does not name a callable site factory")
    return factory


class SiteRegistry(service.Service):
    """The enabled sites by id; starts and stops their background work."""

    def __init__(self, sites: Mapping[str, ISite], policies: Mapping[str, str] | None = None,
                 lifetimes: Mapping[str, float] | None = None) -> None:
        self.sites = dict(sites)
        self.policies = dict(policies or {})  # session_policy by site id, when not "device"
        self.lifetimes = dict(lifetimes or {})  # device_lifetime by site id, when not the default
        self.generation = 0  # counts reloads, so that what is derived from the sites can be cached
        self.setName("sites")

    def get(self, site_id: str) -> ISite | None:
        return self.sites.get(site_id)

    def session_policy(self, site_id: str) -> str:
        """The site's ``session_policy``: "device" or "token" (see SESSION_POLICIES)."""
        return self.policies.get(site_id, "device")

    def device_lifetime(self, site_id: str) -> float:
        """The site's ``device_lifetime`` in seconds (see DEFAULT_DEVICE_LIFETIME)."""
        return self.lifetimes.get(site_id, DEFAULT_DEVICE_LIFETIME)

    def __iter__(self) -> Iterator[ISite]:
        return iter(self.sites.values())

    def __len__(self) -> int:
        return len(self.sites)

    def replace(self, sites: Mapping[str, ISite], policies: Mapping[str, str] | None = None,
                lifetimes: Mapping[str, float] | None = None) -> None:
        """Swap in a new set of sites (a reload): the new ones start, the old ones stop.

        Sessions already open are not touched: they were authenticated once and
        stay; only new logins see the new keys and sites.
        """
        old, self.sites = self.sites, dict(sites)
        self.policies = dict(policies or {})
        self.lifetimes = dict(lifetimes or {})
        self.generation += 1
        if self.running:
            for site in self.sites.values():
                self._start(site)
            for site in old.values():
                self._stop(site)
        log.info("sites.reloaded sites={sites}", sites=",".join(sorted(self.sites)))

    def _stop(self, site: ISite) -> None:
        def failed(reason: Failure) -> None:
            log.failure("sites.stop_failed site={site}", reason, site=site.site_id)

        defer.maybeDeferred(site.stop).addErrback(failed)

    def _start(self, site: ISite) -> None:
        try:
            site.start()
        except Exception:
            # A site's trouble (a provider that is down) never stops the server.
            log.failure("sites.start_failed site={site}", site=site.site_id)

    def bearer_sites(self) -> list[IBearerSite]:
        return [site for site in self.sites.values() if IBearerSite.providedBy(site)]

    def startService(self) -> None:
        super().startService()
        for site in self.sites.values():
            self._start(site)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        stops = [defer.maybeDeferred(site.stop) for site in self.sites.values()]
        return defer.DeferredList(stops, consumeErrors=True)


def load_sites(tables: Mapping[str, Mapping[str, Any]], context: SiteContext,
               available: Mapping[str, EntryPoint] | None = None) -> SiteRegistry:
    if available is None:
        available = {ep.name: ep for ep in entry_points(group=GROUP)}
    sites: dict[str, ISite] = {}
    policies: dict[str, str] = {}
    lifetimes: dict[str, float] = {}
    for site_id, table in tables.items():
        prefix = f"sites.{site_id}"
        if not SITE_ID.fullmatch(site_id):
            raise ConfigError(prefix, "a site id is 1-63 of a-z 0-9 . - (it is the text after '@')")
        if site_id in context.domains:
            raise ConfigError(prefix, "a site id cannot be a hosted domain")
        enabled = table.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{prefix}.enabled", "must be true or false")
        plugin = table.get("plugin", site_id)
        if not isinstance(plugin, str):
            raise ConfigError(f"{prefix}.plugin", "must be the name of an entry point in sns_xmpp.sites")
        policy = table.get("session_policy", "device")
        if policy not in SESSION_POLICIES:
            raise ConfigError(f"{prefix}.session_policy", f"must be one of {', '.join(SESSION_POLICIES)}")
        lifetime = table.get("device_lifetime", DEFAULT_DEVICE_LIFETIME)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or not 60 <= lifetime <= 366 * 86400:
            raise ConfigError(f"{prefix}.device_lifetime", "must be a number of seconds 60-31622400")
        if not enabled:
            continue
        if policy != "device":
            policies[site_id] = policy
        if lifetime != DEFAULT_DEVICE_LIFETIME:
            lifetimes[site_id] = float(lifetime)
        factory = _entry_point(plugin, available)
        settings = {key: value for key, value in table.items() if key not in REGISTRY_KEYS}
        try:
            site = factory(site_id, settings, context)
        except SiteConfigError as error:
            raise error.within(prefix) from None
        except Exception as error:
            raise SitePluginError(f"{GROUP}:{plugin}", f"failed for [{prefix}]: {type(error).__name__}: {error}"
                                  ) from None
        try:
            verifyObject(ISite, site)
        except Invalid as error:
            raise SitePluginError(f"{GROUP}:{plugin}", f"does not provide ISite: {error}") from None
        if site.site_id != site_id:
            raise SitePluginError(f"{GROUP}:{plugin}", f"made a site with id {site.site_id!r} for [{prefix}]")
        if site_id in sites:
            raise ConfigError(prefix, "duplicate site id")
        sites[site_id] = site
    return SiteRegistry(sites, policies, lifetimes)
