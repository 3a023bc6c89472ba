"""The log gate drops events below the configured level before any observer sees them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.logger import LogLevel, globalLogPublisher

from sns_xmpp.ops import log_gate


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
