"""The admin command's site tools: list and check sites, mint test credentials, rotate keys."""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from typing import Any, TextIO

from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from sns_xmpp.auth.social import candidate_jids, handover_password
from sns_xmpp.config import Config
from sns_xmpp.reactors import IServerReactor, ISiteReactor
from sns_xmpp.sites.hmac import HmacSite
from sns_xmpp.sites.interface import IBearerSite, SiteContext
from sns_xmpp.sites.registry import load_sites
from sns_xmpp.store.composite import social_login
from sns_xmpp.store.opening import database_opener


class ToolError(Exception):
    """A refusal the admin command prints as one line."""


@implementer(ISiteReactor)
class IdleReactor(MemoryReactorClock):
    """A reactor that never runs, for building sites the tool does not start (listing them, minting).

    A site's factory does no I/O; what it might schedule or connect here is recorded and never
    happens, and no socket is opened.
    """


def site_context(config: Config, reactor: ISiteReactor | None = None) -> SiteContext:
    """The sites' context for the admin tool: *reactor* where sites start, an `IdleReactor` where none does."""
    return SiteContext(IdleReactor() if reactor is None else reactor, config.http.public_url, config.data_dir,
                       config.server.domains)


def list_sites(config: Config, stdout: TextIO) -> None:
    enabled = load_sites(config.sites, site_context(config))
    for site_id, table in config.sites.items():
        site = enabled.get(site_id)
        state = "enabled" if site is not None else "disabled"
        name = site.display_name if site is not None else "-"
        print(f"{site_id}\t{table.get('plugin', site_id)}\t{state}\t{name}\t{config.http.public_url}"
              f"/login-using-{site_id}", file=stdout)


def check_sites(config: Config, stdout: TextIO, timeout: float = 15) -> bool:
    """Start every enabled site (providers are fetched) and print each one's status; True if all are ok."""
    results: list[bool] = []

    async def check(reactor: IServerReactor) -> None:
        registry = load_sites(config.sites, site_context(config, reactor))
        registry.startService()
        for site in registry:
            ready = getattr(site, "when_ready", None)
            if ready is not None:
                waiting = ready()
                waiting.addTimeout(timeout, reactor)
                try:
                    await waiting
                except defer.TimeoutError:
                    print(f"{site.site_id}\tno answer within {timeout:g} s", file=stdout)
            status = site.status()
            results.append(status.startswith("ok"))
            kind = "oauthbearer" if IBearerSite.providedBy(site) else "token"
            print(f"{site.site_id}\t{kind}\t{status}", file=stdout)
        await registry.stopService()

    task.react(lambda reactor: defer.ensureDeferred(check(reactor)), [])
    return all(results)


def _hmac_site(config: Config, site_id: str) -> HmacSite:
    table = config.sites.get(site_id)
    if table is None:
        raise ToolError(f"no site '{site_id}' in the configuration")
    site = load_sites({site_id: table}, site_context(config)).get(site_id)
    if not isinstance(site, HmacSite):
        raise ToolError(f"site '{site_id}' is not a demo or hmac site (or is disabled)")
    return site


def mint(config: Config, site_id: str, account: str, lifetime: int, as_json: bool, stdout: TextIO) -> None:
    """Sign credentials as the site would, and hand them over as the login callback does: the JID
    the account is linked to (linked now if new) and the password carrying the access info."""
    site = _hmac_site(config, site_id)
    now = time.time()
    try:
        identifier, token = site.mint(account, secrets.token_hex(8), int(now) + lifetime)
    except ValueError as error:
        raise ToolError(str(error)) from None
    domain = config.server.domains[0]
    database = database_opener(config)()
    try:
        link = social_login(database, site_id, account, candidate_jids(site_id, account, domain), now)
    finally:
        database.close()
    if link is None:
        raise ToolError(f"no free JID for {account} on {site_id}")
    username, password = f"{identifier}@{site_id}", handover_password(site_id, identifier, token)
    if as_json:
        print(json.dumps({"jid": link.jid, "password": password, "username": username, "token": token}),
              file=stdout)
    else:
        print(f"jid:      {link.jid}\npassword: {password}\n(or the older pair)\n"
              f"username: {username}\ntoken:    {token}", file=stdout)


def rotate_key(config: Config, site_id: str, stdout: TextIO, today: str) -> None:
    """Make a new key for an hmac site and say, step by step, how to roll it out."""
    site = _hmac_site(config, site_id)
    table = config.sites[site_id]
    if table.get("plugin", site_id) != "hmac":
        raise ToolError(f"site '{site_id}' keeps its own key (the demo site); nothing to rotate")
    kid = f"k{today}"
    suffix = 2
    while kid in site.policy.keys:
        kid, suffix = f"k{today}-{suffix}", suffix + 1
    secret = secrets.token_urlsafe(32)
    keys_file = table.get("keys_file")
    if keys_file:
        with open(keys_file, "a", encoding="utf-8") as handle:
            handle.write(f'{kid} = "{secret}"\n')
        added = f"1. added key '{kid}' to {keys_file} (the old keys stay)"
    else:
        added = (f"1. add the new key beside the old ones in [sites.{site_id}]:\n"
                 f'       keys = {{ {", ".join(f"{k} = ..." for k in site.policy.keys)}, {kid} = "{secret}" }}')
    steps = [
        added,
        f'2. set signing_key = "{kid}" in [sites.{site_id}] and send the daemon SIGHUP',
        f"3. give the site the new key '{kid}' (sent securely), and have it sign with it",
        f"4. after {int(site.policy.max_lifetime)} s (the longest a token lives), remove the old keys and SIGHUP",
    ]
    print("\n".join(steps), file=stdout)


SECRET_WORDS = ("secret", "password", "dsn")


def masked(value: Any, key: str = "", inside_keys: bool = False) -> Any:
    """A copy of a config value with the secrets replaced by '***' (file names stay visible)."""
    if isinstance(value, dict):
        return {k: masked(v, k, inside_keys or k == "keys") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v, key, inside_keys) for v in value]
    secret = inside_keys or any(word in key.lower() for word in SECRET_WORDS)
    if secret and not key.endswith("_file") and value not in ("", None):
        return "***"
    return value


def effective_config(config: Config, stdout: TextIO) -> None:
    document = dataclasses.asdict(config)
    document.pop("base_dir", None)
    print(json.dumps(masked(document), indent=2, default=str), file=stdout)
