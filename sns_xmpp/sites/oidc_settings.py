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

from sns_xmpp import settings as framework
from sns_xmpp.sites import jose
from sns_xmpp.sites import settings as check


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
    # OAUTHBEARER with an access token the client got itself: "none" (ID tokens only), or
    # "userinfo" (the provider's userinfo endpoint says whose it is, and that it is live)
    access_tokens: str = "none"
    access_token_lifetime: float = 3600  # the longest the provider's access tokens live


# key -> (minimum, maximum) for the numeric settings
_NUMBERS: Mapping[str, tuple[float, float]] = {
    "leeway": (0, 3600),
    "refresh_interval": (1, 7 * 86400),
    "request_timeout": (0.01, 300),
    "retry_initial": (0.01, 3600),
    "retry_max": (0.01, 86400),
    "key_refetch_interval": (0, 86400),
    "access_token_lifetime": (60, 30 * 86400),
}
_KNOWN_KEYS = frozenset(_NUMBERS) | {
    "issuer", "client_id", "client_secret", "client_secret_file", "scopes", "max_token_bytes", "single_use",
    "token_endpoint_auth_method", "endpoint_origins", "access_tokens",
}
ACCESS_TOKEN_VALIDATIONS = ("none", "userinfo")
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


def _issuer(value: Any) -> str:
    problem = url_problem(value) or ("must not have a query" if urlsplit(str(value)).query else None)
    if problem:
        raise ValueError(problem)
    return str(value)


def _client_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _scopes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(s, str) and s and s.isascii() and s.isprintable() and " " not in s and '"' not in s
        and "\\" not in s for s in value
    ):
        raise ValueError("must be a list of scope names")
    if "openid" not in value:
        raise ValueError("must include 'openid'")
    return tuple(value)


def _endpoint_origins(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError("must be a list of origins such as \"https://www.googleapis.com\"")
    origins = []
    for entry in value:
        problem = url_problem(entry)
        if problem:
            raise ValueError(f"{entry!r} {problem}")
        if urlsplit(entry).path not in ("", "/") or urlsplit(entry).query:
            raise ValueError(f"{entry!r} must be an origin, with no path")
        origins.append(origin(entry))
    return tuple(origins)


def parse_settings(settings: Mapping[str, Any]) -> OIDCSettings:
    """Check a site's settings table; raise SiteConfigError naming the first bad key."""
    check.refuse_unknown(dict(sorted(settings.items())), _KNOWN_KEYS)
    issuer = framework.value(settings, "issuer", _issuer)
    client_id = framework.value(settings, "client_id", _client_id)
    numbers = {key: check.number(settings, key, getattr(OIDCSettings, key), low, high)
               for key, (low, high) in _NUMBERS.items()}
    return OIDCSettings(
        issuer=issuer, client_id=client_id, client_secret=check.secret(settings, "client_secret", minimum=1),
        token_endpoint_auth_method=framework.value(settings, "token_endpoint_auth_method",
                                                   framework.choice(*TOKEN_ENDPOINT_AUTH_METHODS), "auto"),
        endpoint_origins=framework.value(settings, "endpoint_origins", _endpoint_origins, []),
        scopes=framework.value(settings, "scopes", _scopes, ["openid"]),
        max_token_bytes=framework.value(settings, "max_token_bytes", framework.integer(1024, 65536),
                                        jose.DEFAULT_MAX_TOKEN_BYTES),
        single_use=check.flag(settings, "single_use", False),
        access_tokens=framework.value(settings, "access_tokens", framework.choice(*ACCESS_TOKEN_VALIDATIONS), "none"),
        access_token_lifetime=numbers["access_token_lifetime"],
        leeway=numbers["leeway"], refresh_interval=numbers["refresh_interval"],
        request_timeout=numbers["request_timeout"], retry_initial=numbers["retry_initial"],
        retry_max=max(numbers["retry_max"], numbers["retry_initial"]),
        key_refetch_interval=numbers["key_refetch_interval"],
    )


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
