"""The feature modules: each provides IFeature, two cannot answer the same IQ, and XEP-0202
(the worked example) answers as the XEP's example does and is announced in disco#info."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.words.xish import domish
from wokkel.generic import parseXml
from zope.interface.verify import verifyObject

from sns_xmpp.xmpp.features import Feature, FeatureRegistry, IFeature
from sns_xmpp.xmpp.features.built_in import BUILT_IN, install_features
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.test_iq_answers import Session


class Router:
    routes: dict[str | None, object] = {}


def served(clock: MemoryReactorClock) -> SessionManager:
    sessions = SessionManager(["localhost"], store=None, clock=clock, route=lambda e: None)  # type: ignore[arg-type]
    install_features(sessions, Router(), clock)
    return sessions


def ask(sessions: SessionManager, xml: str) -> domish.Element:
    session = Session()
    sessions.answer_iq(parseXml(xml), session)  # type: ignore[arg-type]
    [reply] = session.sent
    return reply


def test_every_built_in_feature_provides_the_interface() -> None:
    names = [feature.name for feature in BUILT_IN]
    assert len(names) == len(set(names))
    for feature in BUILT_IN:
        assert verifyObject(IFeature, feature)


def test_two_features_cannot_answer_the_same_iq() -> None:
    """A second module claiming an IQ is a start-up error, not a silent replacement."""
    clock = MemoryReactorClock()
    sessions = served(clock)
    again = Feature("again", lambda registry: registry.iq("urn:xmpp:time", "time", lambda iq: None))
    with pytest.raises(ValueError, match="urn:xmpp:time"):
        again.install(FeatureRegistry(sessions, Router(), clock))


def test_entity_time_answers_as_the_xeps_example() -> None:
    """XEP-0202 example 2 asks <time xmlns='urn:xmpp:time'/>; the answer carries tzo and utc (UTC,
    from the injected clock), and a set is a bad-request."""
    clock = MemoryReactorClock()
    clock.advance(1166551115)  # 2006-12-19T17:58:35Z, the XEP's example time
    sessions = served(clock)
    reply = ask(sessions, "<iq type='get' from='alice@localhost/home' to='localhost' id='time_1' "
                          "xmlns='jabber:client'><time xmlns='urn:xmpp:time'/></iq>")
    assert reply.getAttribute("type") == "result" and reply.getAttribute("id") == "time_1"
    [time] = list(reply.elements("urn:xmpp:time", "time"))
    assert str(next(time.elements("urn:xmpp:time", "tzo"))) == "+00:00"
    assert str(next(time.elements("urn:xmpp:time", "utc"))) == "2006-12-19T17:58:35Z"
    refused = ask(sessions, "<iq type='set' to='localhost' id='t2' xmlns='jabber:client'>"
                            "<time xmlns='urn:xmpp:time'/></iq>")
    assert refused.getAttribute("type") == "error"
    assert next(refused.elements(None, "error")).firstChildElement().name == "bad-request"


def test_disco_info_announces_what_the_installed_features_registered() -> None:
    sessions = served(MemoryReactorClock())
    reply = ask(sessions, "<iq type='get' to='localhost' id='d1' xmlns='jabber:client'>"
                          "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    [query] = list(reply.elements("http://jabber.org/protocol/disco#info", "query"))
    announced = {feature["var"] for feature in query.elements("http://jabber.org/protocol/disco#info", "feature")}
    assert {"urn:xmpp:time", "urn:xmpp:ping", "jabber:iq:version", "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items", "jabber:iq:roster", "msgoffline"} <= announced
