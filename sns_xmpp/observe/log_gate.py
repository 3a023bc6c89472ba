"""Log events below the configured level are dropped where they are made; text fields are made safe.

Twisted's Logger builds every event and hands it to the observers, which then filter it: a
few microseconds per event even when the level is off, and a login makes several info events.
`GatedLogger` returns at once for a level below `minimum`, which `build_server` sets from
``[log] level`` (one server per process). Observers still filter as before.

Fields often hold what a client sent (a SASL user name inside a refusal's reason, a resource).
A carriage return, line feed or terminal escape in one would forge a log line in twistd's text
log, so `GatedLogger` escapes every control or otherwise invisible character of a text field
(``\\r``, ``\\n``, ``\\x1b``, ``\\u2028``) before any observer sees the event; text that is
printable already, nearly all of it, is passed on as it is.
"""

from __future__ import annotations

from twisted.logger import Logger, LogLevel

_PRIORITY = {level: rank for rank, level in enumerate(LogLevel.iterconstants())}
_minimum = [0]  # the priority of the lowest level kept; everything by default


def set_minimum(level: LogLevel) -> None:
    _minimum[0] = _PRIORITY[level]


_INFO = _PRIORITY[LogLevel.info]
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escape_character(character: str) -> str:
    if character.isprintable():
        return character
    if character in _NAMED:
        return _NAMED[character]
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_controls(text: str) -> str:
    """*text* with control and other non-printable characters written as Python-style escapes."""
    if text.isprintable():
        return text
    return "".join(_escape_character(character) for character in text)


def escape_fields(fields: dict[str, object]) -> None:
    """Escape, in place, every text field that holds a non-printable character."""
    for key, value in fields.items():
        if isinstance(value, str) and not value.isprintable():
            fields[key] = escape_controls(value)


class GatedLogger(Logger):
    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if _PRIORITY.get(level, len(_PRIORITY)) < _minimum[0]:
            return
        escape_fields(kwargs)
        super().emit(level, format, **kwargs)

    # The levels a login logs at, checked before the keyword arguments are packed again.

    def info(self, format: str | None = None, **kwargs: object) -> None:
        if _INFO >= _minimum[0]:
            escape_fields(kwargs)
            super().emit(LogLevel.info, format, **kwargs)
