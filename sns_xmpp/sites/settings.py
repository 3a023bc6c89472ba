"""Checks for a site's ``[sites.<id>]`` table, for the built-in sites and third-party plugins alike.

These are the server's own settings framework (`sns_xmpp.settings`) with the key taken relative to
the site's table: each raises ``SiteConfigError(key, problem)`` (the framework's one error type),
which the registry reports as ``sites.<id>.<key>``. A ``<key>_file`` secret is read by the same
reader as the server's own secrets, relative paths taken from the working directory as there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sns_xmpp import settings as framework
from sns_xmpp.sites.interface import SiteConfigError

__all__ = ["SiteConfigError", "flag", "number", "refuse_unknown", "secret", "text"]


def refuse_unknown(settings: Mapping[str, Any], known: Iterable[str]) -> None:
    """Refuse the first key not in *known* ("unknown key"), so that a typo never silently becomes a default."""
    framework.refuse_unknown(settings, known)


def number(settings: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    return float(framework.value(settings, key, framework.number(low, high), default))


def flag(settings: Mapping[str, Any], key: str, default: bool) -> bool:
    return bool(framework.value(settings, key, framework.boolean, default))


def text(settings: Mapping[str, Any], key: str, default: str | None = None) -> str:
    """A non-empty string; required when there is no *default*."""
    return str(framework.value(settings, key, framework.non_empty_text,
                               framework.REQUIRED if default is None else default))


def secret(settings: Mapping[str, Any], key: str, minimum: int = 16) -> str:
    """A secret given inline or as ``<key>_file``, at least *minimum* characters; never echoed in the error."""
    given = framework.secret(settings, key)
    if given is None:
        raise SiteConfigError(key, "required")
    source, value = given
    value = framework.checked(source, value, framework.non_empty_text)
    if len(value) < minimum:
        raise SiteConfigError(source, f"must be at least {minimum} characters")
    return str(value)
