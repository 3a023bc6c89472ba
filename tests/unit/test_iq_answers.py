"""How SessionManager.answer_iq turns a handler's outcome into the one reply an IQ gets
(RFC 6120 8.2.3): at once or later, a result, the handler's stanza error, or
internal-server-error for a handler that failed, which is logged."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.words.xish import domish
from wokkel.generic import parseXml

from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import StanzaError

NS = "urn:x-test:answers"


class Session:
    bare = "alice@localhost"

    def __init__(self) -> None:
        self.sent: list[domish.Element] = []

    def send(self, element: domish.Element) -> None:
        self.sent.append(element)


def ask(sessions: SessionManager, name: str) -> Session:
    session = Session()
    iq = parseXml(f"<iq type='get' id='q-{name}' xmlns='jabber:client'><{name} xmlns='{NS}'/></iq>")
    sessions.answer_iq(iq, session)  # type: ignore[arg-type]
    return session


@pytest.fixture
def sessions() -> SessionManager:
    return SessionManager(["localhost"], store=None, clock=MemoryReactorClock(), route=lambda e: None)  # type: ignore[arg-type]


def test_each_outcome_gets_its_one_reply(sessions: SessionManager) -> None:
    later: defer.Deferred[Any] = defer.Deferred()

    def broken(iq: domish.Element) -> None:
        raise KeyError("a bug")

    def refuses(iq: domish.Element) -> None:
        raise StanzaError("item-not-found")

    payload = domish.Element((NS, "payload"))
    sessions.iq_handlers.update({
        (NS, "now"): lambda iq: payload,
        (NS, "empty"): lambda iq: None,
        (NS, "refuses"): refuses,
        (NS, "broken"): broken,
        (NS, "later"): lambda iq: later,
    })
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        answers = {name: ask(sessions, name) for name in ("now", "empty", "refuses", "broken", "later")}
    finally:
        globalLogPublisher.removeObserver(logged.append)

    def reply(name: str) -> tuple[str | None, str | None, list[str]]:
        (element,) = answers[name].sent
        return (element.getAttribute("type"), element.getAttribute("id"),
                [child.name for child in element.elements()] + [child.name for error in element.elements(None, "error")
                                                                 for child in error.elements()])

    assert reply("now") == ("result", "q-now", ["payload"])
    assert reply("empty") == ("result", "q-empty", [])
    assert reply("refuses")[:2] == ("error", "q-refuses") and "item-not-found" in reply("refuses")[2]
    assert reply("broken")[:2] == ("error", "q-broken") and "internal-server-error" in reply("broken")[2]
    assert [event["log_format"] for event in logged if event.get("log_failure")] == ["iq.handler_failed"]
    assert answers["later"].sent == []
    later.errback(StanzaError("forbidden"))
    assert reply("later")[:2] == ("error", "q-later") and "forbidden" in reply("later")[2]
