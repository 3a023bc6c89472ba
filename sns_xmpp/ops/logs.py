"""Where log events go under twistd: its own observer, or one chosen by the [log] section.

twistd picks the log observer after the plugin has built its service; it uses an
ILogObserver component of the application when there is one, so the top service
sets that component when the configuration asks for JSON or another level.

The text observer made here escapes control characters in every text field (as
`log_gate.GatedLogger` does for the server's own events), so that an event from
any logger is one line; JSON escapes them by its nature.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEventAsClassicLogText,
    jsonFileLogObserver,
)

from sns_xmpp.config import LogConfig
from sns_xmpp.observe.log_gate import escape_fields


def one_line_text(event: dict[str, Any]) -> str | None:
    """twistd's classic text line for *event*, its text fields' control characters escaped."""
    fields = {key: value for key, value in event.items() if not key.startswith("log_")}
    escape_fields(fields)
    return formatEventAsClassicLogText({**event, **fields})


def wanted_observer(config: LogConfig, out: TextIO = sys.stdout) -> ILogObserver | None:
    """None when twistd's own observer (text, info and up) is what the configuration asks for."""
    if config.format == "text" and config.level == "info":
        return None
    inner = jsonFileLogObserver(out) if config.format == "json" else FileLogObserver(out, one_line_text)
    level = LogLevel.levelWithName(config.level)
    return FilteringLogObserver(inner, [LogLevelFilterPredicate(defaultLogLevel=level)])
