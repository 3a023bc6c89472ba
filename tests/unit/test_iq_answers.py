"""How SessionManager.answer_iq turns a handler's outcome into the one reply an IQ gets
(RFC 6120 8.2.3): at once or later, a result, the handler's stanza error, or
internal-server-error for a handler that failed, which is logged."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.words.protocols.jabber.xmlstream import NS_STREAMS
from twisted.words.xish import domish
from wokkel.generic import parseXml

from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import NS_CLIENT, StanzaError, empty_result_text, iq_result
from tests.fuzz import strategies as fs
from tests.unit.featured import featured

NS = "urn:x-test:answers"


class Session:
    """A bound session's face to answer_iq, and its stream's (replies come as elements or text)."""

    bare = "alice@localhost"
    ledger = None

    def __init__(self) -> None:
        self.sent: list[domish.Element] = []
        self.stream = self

    def send(self, element: domish.Element | str) -> None:
        self.sent.append(parseXml(element) if isinstance(element, str) else element)


def ask(sessions: SessionManager, name: str) -> Session:
    session = Session()
    iq = parseXml(f"<iq type='get' id='q-{name}' xmlns='jabber:client'><{name} xmlns='{NS}'/></iq>")
    sessions.answer_iq(iq, session)  # type: ignore[arg-type]
    return session


@pytest.fixture
def sessions() -> SessionManager:
    return featured(SessionManager(["localhost"], store=None, clock=MemoryReactorClock(), route=lambda e: None))  # type: ignore[arg-type]


def test_each_outcome_gets_its_one_reply(sessions: SessionManager) -> None:
    later: defer.Deferred[Any] = defer.Deferred()

    def broken(iq: domish.Element) -> None:
        raise KeyError("a bug")

    def refuses(iq: domish.Element) -> None:
        raise StanzaError("item-not-found")

    payload = domish.Element((NS, "payload"))
    sessions.hooks.server_iqs.update({
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


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={name: fs.weird_value(huge=False) for name in ("id", "from", "to")}))
def test_the_empty_result_as_text_is_the_result_element_as_the_stream_writes_it(attributes: dict[str, str]) -> None:
    """empty_result_text writes what iq_result and _reply's rules would, serialised by a c2s stream."""
    iq = domish.Element((NS_CLIENT, "iq"))
    iq["type"] = "get"
    for name, value in attributes.items():
        iq[name] = value
    expected = iq_result(iq)
    if iq.getAttribute("to") is None:
        expected.attributes.pop("from", None)
    serialized = expected.toXml(prefixes={NS_STREAMS: "stream"}, defaultUri=NS_CLIENT, prefixesInScope=["stream"])
    assert empty_result_text(iq) == serialized
