"""The settings of an OpenID Connect site (``[sites.<id>]`` with ``plugin = "oidc"``), checked as
the configuration is loaded, and the per-install nonce secret kept in the data folder."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sns_xmpp.sites import jose
from sns_xmpp.sites import settings as check
from sns_xmpp.sites.interface import SiteConfigError


@dataclass(frozen=True)
class OIDCSettings:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...] = ("openid",)
    leeway: float = 60
    max_token_bytes: int = jose.DEFAULT_MAX_TOKEN_BYTES
    single_use: bool = False
    refresh_interval: float = 3600
    request_timeout: float = 10
    retry_initial: float = 1
    retry_max: float = 60
    key_refetch_interval: float = 30
    # "auto": client_secret_basic unless discovery lists only client_secret_post (OIDC Discovery 3)
    token_endpoint_auth_method: str = "auto"  # noqa: S105 (a method name, not a secret)
    # origins ("https://host[:port]") besides the issuer's where the provider's endpoints may live
    endpoint_origins: tuple[str, ...] = ()


# key -> (minimum, maximum) for the numeric settings
_NUMBERS: Mapping[str, tuple[float, float]] = {
    "leeway": (0, 3600),
    "refresh_interval": (1, 7 * 86400),
    "request_timeout": (0.01, 300),
    "retry_initial": (0.01, 3600),
    "retry_max": (0.01, 86400),
    "key_refetch_interval": (0, 86400),
}
_KNOWN_KEYS = frozenset(_NUMBERS) | {
    "issuer", "client_id", "client_secret", "client_secret_file", "scopes", "max_token_bytes", "single_use",
    "token_endpoint_auth_method", "endpoint_origins",
}
TOKEN_ENDPOINT_AUTH_METHODS = ("auto", "client_secret_basic", "client_secret_post")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: object) -> str | None:
    """Why *url* is no place to talk to a provider: https, or http on a loopback host only."""
    if not isinstance(url, str) or not url:
        return "must be a URL"
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError:
        return "is not a valid URL"
    if not host or parts.scheme not in ("https", "http"):
        return "must be an https URL"
    if parts.scheme == "http" and not _is_loopback(host):
        return "must be an https URL (http only for a loopback host)"
    if parts.username is not None or parts.password is not None or parts.fragment:
        return "must not hold credentials or a fragment"
    return None


def origin(url: str) -> str:
    """The origin (RFC 6454) of a URL *url_problem* accepts: ``scheme://host[:port]``, default port left out."""
    parts = urlsplit(url)
    scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == {"https": 443, "http": 80}.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _endpoint_origins(settings: Mapping[str, Any]) -> tuple[str, ...]:
    value = settings.get("endpoint_origins", [])
    if not isinstance(value, list | tuple):
        raise SiteConfigError("endpoint_origins", "must be a list of origins such as \"https://www.googleapis.com\"")
    origins = []
    for entry in value:
        problem = url_problem(entry)
        if problem:
            raise SiteConfigError("endpoint_origins", f"{entry!r} {problem}")
        if urlsplit(entry).path not in ("", "/") or urlsplit(entry).query:
            raise SiteConfigError("endpoint_origins", f"{entry!r} must be an origin, with no path")
        origins.append(origin(entry))
    return tuple(origins)


def parse_settings(settings: Mapping[str, Any]) -> OIDCSettings:
    """Check a site's settings table; raise SiteConfigError naming the first bad key."""
    for key in sorted(settings):
        if key not in _KNOWN_KEYS:
            raise SiteConfigError(key, "unknown setting")
    issuer = settings.get("issuer")
    if issuer is None:
        raise SiteConfigError("issuer", "required")
    problem = url_problem(issuer) or ("must not have a query" if urlsplit(str(issuer)).query else None)
    if problem:
        raise SiteConfigError("issuer", problem)
    client_id = settings.get("client_id")
    if client_id is None:
        raise SiteConfigError("client_id", "required")
    if not isinstance(client_id, str) or not client_id.strip():
        raise SiteConfigError("client_id", "must be a non-empty string")
    numbers: dict[str, float] = {}
    for key, (low, high) in _NUMBERS.items():
        value = settings.get(key, getattr(OIDCSettings, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise SiteConfigError(key, f"must be a number from {low} to {high}")
        numbers[key] = float(value)
    max_token_bytes = settings.get("max_token_bytes", jose.DEFAULT_MAX_TOKEN_BYTES)
    if isinstance(max_token_bytes, bool) or not isinstance(max_token_bytes, int) or not (
        1024 <= max_token_bytes <= 65536
    ):
        raise SiteConfigError("max_token_bytes", "must be a whole number from 1024 to 65536")
    single_use = settings.get("single_use", False)
    if not isinstance(single_use, bool):
        raise SiteConfigError("single_use", "must be true or false")
    scopes = settings.get("scopes", ["openid"])
    if not isinstance(scopes, list | tuple) or not all(
        isinstance(s, str) and s and s.isascii() and s.isprintable() and " " not in s and '"' not in s
        and "\\" not in s for s in scopes
    ):
        raise SiteConfigError("scopes", "must be a list of scope names")
    if "openid" not in scopes:
        raise SiteConfigError("scopes", "must include 'openid'")
    auth_method = settings.get("token_endpoint_auth_method", "auto")
    if auth_method not in TOKEN_ENDPOINT_AUTH_METHODS:
        raise SiteConfigError("token_endpoint_auth_method", "must be one of " + ", ".join(TOKEN_ENDPOINT_AUTH_METHODS))
    return OIDCSettings(
        issuer=str(issuer), client_id=client_id, client_secret=_client_secret(settings),
        token_endpoint_auth_method=auth_method, endpoint_origins=_endpoint_origins(settings),
        scopes=tuple(scopes), max_token_bytes=max_token_bytes, single_use=single_use,
        leeway=numbers["leeway"], refresh_interval=numbers["refresh_interval"],
        request_timeout=numbers["request_timeout"], retry_initial=numbers["retry_initial"],
        retry_max=max(numbers["retry_max"], numbers["retry_initial"]),
        key_refetch_interval=numbers["key_refetch_interval"],
    )


def _client_secret(settings: Mapping[str, Any]) -> str:
    return check.secret(settings, "client_secret", minimum=1)


def load_or_create_secret(path: Path) -> bytes:
    """The install's 32-byte nonce secret, made (mode 0600) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        try:
            secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
        except (ValueError, UnicodeDecodeError):
            secret = b""
        if len(secret) != 32:
            raise ValueError(f"{path} does not hold a nonce secret; remove it to make a new one") from None
        return secret
    secret = secrets.token_bytes(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret.hex() + "\n")
    return secret
