"""The one settings framework, for the server's configuration and the site plugins' tables alike.

It owns what both need: the value checks, the refusal of unknown keys, the one reader of secret
files (``<key>_file``) and the one error type, `ConfigError`, which names the dotted key and prints
as one line. `sns_xmpp.config` declares the server's keys with it (a check per dataclass field);
`sns_xmpp.sites.settings` is the same functions as the site plugins call them, keyed relative to
the site's ``[sites.<id>]`` table (``SiteConfigError`` is this `ConfigError`), and the registry adds
the ``sites.<id>.`` prefix with `ConfigError.within`.

A check is a callable that takes the raw TOML value and returns the value as kept, or raises
``ValueError(problem)``; `value` turns that into a `ConfigError` naming the key. Problems never
repeat a secret: a check of a secret says what is wrong with it, never what it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

__all__ = [
    "REQUIRED", "Check", "ConfigError", "boolean", "checked", "choice", "dotted", "integer", "names", "non_empty_text",
    "number", "read_secret_file", "refuse_unknown", "secret", "text", "value",
]


class ConfigError(Exception):
    """A setting is missing, unknown or invalid: ``key`` is its dotted name, ``problem`` one line."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        return f"sns-xmpp: config error at '{self.key}': {self.problem}"

    def within(self, table: str) -> ConfigError:
        """The same problem, its key taken as relative to the table *table* (``sites.demo``)."""
        return type(self)(dotted(table, self.key), self.problem)


Check = Callable[[Any], Any]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of a key that must be given: `value` answers "required" without it.
REQUIRED: Final[Any] = _Required()


def dotted(table: str, key: str) -> str:
    """*key* of the table *table*: ``dotted("xmpp.c2s", "port")`` is ``xmpp.c2s.port``; ``""`` is the top."""
    return f"{table}.{key}" if table else key


# -- value checks ---------------------------------------------------------------------------------


def integer(low: int, high: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer {low}-{high}")
        return value

    return check


def number(low: float, high: float) -> Check:
    """An integer or a float from *low* to *high*, kept as a float."""

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise ValueError(f"must be a number {low:g}-{high:g}")
        return float(value)

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def non_empty_text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError("must be one of " + ", ".join(repr(o) for o in options))
        return str(value)

    return check


def names(what: str) -> Check:
    """A list of non-empty strings, kept as a tuple; *what* names them in the problem ("feature names")."""

    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise ValueError(f"must be a list of {what} (non-empty strings)")
        return tuple(value)

    return check


# -- tables ---------------------------------------------------------------------------------------


def value(table: Mapping[str, Any], key: str, check: Check, default: Any = REQUIRED, *, where: str = "") -> Any:
    """``table[key]`` (or *default*) through *check*; a `ConfigError` naming the key if it is missing or bad.

    *where* is the table's own dotted name, for the error (``""`` when the caller adds it later).
    """
    raw = table.get(key, default)
    if raw is REQUIRED:
        raise ConfigError(dotted(where, key), "required")
    return checked(dotted(where, key), raw, check)


def checked(key: str, raw: Any, check: Check) -> Any:
    """*raw* through *check*; its ``ValueError`` becomes a `ConfigError` naming the dotted *key*."""
    try:
        return check(raw)
    except ValueError as problem:
        raise ConfigError(key, str(problem)) from None


def refuse_unknown(table: Mapping[str, Any], known: Iterable[str], *, where: str = "") -> None:
    """Refuse the first key of *table* not in *known*, so that a typo never silently becomes a default."""
    allowed = set(known)
    for key in table:
        if key not in allowed:
            raise ConfigError(dotted(where, key), "unknown key")


def read_secret_file(key: str, path: Any, base_dir: Path = Path(".")) -> str:
    """The one reader of secret files: the text of *path* (taken from *base_dir*), stripped.

    *key* is the dotted ``<name>_file`` key that named the file. The error says why the file
    cannot be read, never what it holds.
    """
    name = checked(key, path, non_empty_text)
    target = base_dir / name
    try:
        return target.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(key, f"cannot read {target}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"cannot read {target}: not UTF-8 text") from None


def secret(table: Mapping[str, Any], key: str, *, where: str = "",
           base_dir: Path = Path(".")) -> tuple[str, Any] | None:
    """A secret given inline as *key* or as ``<key>_file``, never both: (the dotted key that gave it, its value).

    The file is read with `read_secret_file`; an inline value is returned as given, for the
    caller's check. None when neither key is there.
    """
    file_key = f"{key}_file"
    if key in table and file_key in table:
        raise ConfigError(dotted(where, file_key), f"give either '{key}' or '{file_key}', not both")
    if file_key in table:
        source = dotted(where, file_key)
        return source, read_secret_file(source, table[file_key], base_dir)
    if key in table:
        return dotted(where, key), table[key]
    return None
