"""Where log events go under twistd: its own observer, or one chosen by the [log] section.

twistd picks the log observer after the plugin has built its service; it uses an
ILogObserver component of the application when there is one, so the top service
sets that component when the configuration asks for JSON or another level.
"""

from __future__ import annotations

import sys
from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

from sns_xmpp.config import LogConfig


def wanted_observer(config: LogConfig, out: TextIO = sys.stdout) -> ILogObserver | None:
    """None when twistd's own observer (text, info and up) is what the configuration asks for."""
    if config.format == "text" and config.level == "info":
        return None
    inner = jsonFileLogObserver(out) if config.format == "json" else textFileLogObserver(out)
    level = LogLevel.levelWithName(config.level)
    return FilteringLogObserver(inner, [LogLevelFilterPredicate(defaultLogLevel=level)])
