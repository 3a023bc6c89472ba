"""Log events below the configured level are dropped where they are made.

Twisted's Logger builds every event and hands it to the observers, which then filter it: a
few microseconds per event even when the level is off, and a login makes several info events.
`GatedLogger` returns at once for a level below `minimum`, which `build_server` sets from
``[log] level`` (one server per process). Observers still filter as before.
"""

from __future__ import annotations

from twisted.logger import Logger, LogLevel

_PRIORITY = {level: rank for rank, level in enumerate(LogLevel.iterconstants())}
_minimum = [0]  # the priority of the lowest level kept; everything by default


def set_minimum(level: LogLevel) -> None:
    _minimum[0] = _PRIORITY[level]


_INFO = _PRIORITY[LogLevel.info]


class GatedLogger(Logger):
    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if _PRIORITY.get(level, len(_PRIORITY)) < _minimum[0]:
            return
        super().emit(level, format, **kwargs)

    # The levels a login logs at, checked before the keyword arguments are packed again.

    def info(self, format: str | None = None, **kwargs: object) -> None:
        if _INFO >= _minimum[0]:
            super().emit(LogLevel.info, format, **kwargs)
