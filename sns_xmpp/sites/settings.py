"""Checks shared by the built-in sites for their ``[sites.<id>]`` tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sns_xmpp.sites.interface import SiteConfigError


def refuse_unknown(settings: Mapping[str, Any], known: Iterable[str]) -> None:
    allowed = set(known)
    for key in settings:
        if key not in allowed:
            raise SiteConfigError(key, "unknown key")


def number(settings: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise SiteConfigError(key, f"must be a number {low:g}-{high:g}")
    return float(value)


def flag(settings: Mapping[str, Any], key: str, default: bool) -> bool:
    value = settings.get(key, default)
    if not isinstance(value, bool):
        raise SiteConfigError(key, "must be true or false")
    return value


def text(settings: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = settings.get(key, default)
    if value is None:
        raise SiteConfigError(key, "required")
    if not isinstance(value, str) or not value:
        raise SiteConfigError(key, "must be a non-empty string")
    return value


def secret(settings: Mapping[str, Any], key: str, minimum: int = 16) -> str:
    """A secret given inline or as ``<key>_file``; never echoed in the error."""
    file_key = f"{key}_file"
    if key in settings and file_key in settings:
        raise SiteConfigError(file_key, f"give either '{key}' or '{file_key}', not both")
    if file_key in settings:
        path = Path(text(settings, file_key))
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise SiteConfigError(file_key, f"cannot read {path}: {error.strerror}") from None
        key_named = file_key
    else:
        value = text(settings, key)
        key_named = key
    if len(value) < minimum:
        raise SiteConfigError(key_named, f"must be at least {minimum} characters")
    return value
