"""The log gate drops events below the configured level before any observer sees them."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.logger import Logger, LogLevel, globalLogPublisher

from sns_xmpp.observe import log_gate
from sns_xmpp.observe.log_gate import GatedLogger


@pytest.fixture
def events() -> Iterator[list[dict]]:
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(seen.append)
        log_gate.set_minimum(LogLevel.debug)


def test_levels_below_the_minimum_never_reach_an_observer(events: list[dict]) -> None:
    log = log_gate.GatedLogger(namespace="sns_xmpp.test")
    log_gate.set_minimum(LogLevel.warn)
    log.info("gate.dropped")
    log.warn("gate.kept")
    log.error("gate.kept_too")
    log_gate.set_minimum(LogLevel.info)
    log.info("gate.open_again")
    log.debug("gate.dropped_again")
    mine = [e["log_format"] for e in events if e.get("log_namespace") == "sns_xmpp.test"]
    assert mine == ["gate.kept", "gate.kept_too", "gate.open_again"]


@pytest.mark.parametrize("json_format", [False, True], ids=["twistd-text", "configured-json"])
def test_a_user_name_cannot_forge_a_log_line(events: list[dict], json_format: bool) -> None:
    """A SASL user name naming the "site" ``\\r\\nfake line`` reaches the log in the refusal's
    reason; in twistd's text format (the default) and in our configured observers its CR, LF and
    other control characters are escaped: the event is one line, and nothing can start a new one
    or rewrite the line on a terminal."""
    from twisted.logger import formatEventAsClassicLogText

    from sns_xmpp.config import LogConfig
    from sns_xmpp.ops.logs import wanted_observer
    from tests.unit.test_auth_throttle import Server

    log_gate.set_minimum(LogLevel.info)
    server = Server(Path("/nonexistent"))
    answer = server.login("x@\r\nfake line 2026-01-01T00:00:00 [-] c2s.authenticated jid=admin\x1b[2K", "p")
    assert "<not-authorized/>" in answer
    assert "\x1b" not in answer and "\r" not in answer, "the refusal's text is well-formed XML too"
    refused = [e for e in events if e.get("log_format", "").startswith("c2s.auth_failed")]
    assert len(refused) == 1
    text = formatEventAsClassicLogText(refused[0])
    assert text is not None and text.count("\n") == 1 and text.endswith("\n") and "\r" not in text
    assert "\\r\\nfake line" in text and "\x1b" not in text and "\\x1b[2K" in text

    out = io.StringIO()
    observer = wanted_observer(LogConfig(format="json" if json_format else "text", level="debug"), out)
    assert observer is not None
    observer({**refused[0], "reason": "raw\r\nforged\x1b"})  # an event from a logger without the gate
    written = out.getvalue()
    assert written.count("\n") == 1 and "\r" not in written and "\x1b" not in written


def test_every_module_logs_through_the_gated_logger() -> None:
    """twistd's own text observer writes fields as they are, so a module with a plain Logger would let
    a client's carriage return forge a log line; every logger the package makes escapes its fields."""
    import importlib
    import pkgutil

    import sns_xmpp

    plain = []
    for module_info in pkgutil.walk_packages(sns_xmpp.__path__, "sns_xmpp."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        loggers = [value for value in vars(module).values() if isinstance(value, Logger)]
        classes = [cls for cls in vars(module).values() if isinstance(cls, type) and cls.__module__ == module.__name__]
        loggers += [value for cls in classes for value in vars(cls).values() if isinstance(value, Logger)]
        plain += [module_info.name for logger in loggers if not isinstance(logger, GatedLogger)]
    assert plain == []
