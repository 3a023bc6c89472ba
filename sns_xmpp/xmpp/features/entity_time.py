"""XEP-0202 entity time: the server's time, which clients ask for to correct their clocks.

The worked example of a feature module (docs/architecture.md): one IQ and one disco feature,
answered from the injected clock. The server keeps UTC, so the offset is always +00:00
(XEP-0202 section 3: ``tzo`` is the offset from UTC, ``utc`` the time in UTC).
"""

from __future__ import annotations

import datetime

from twisted.internet.interfaces import IReactorTime
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.hooks import IQHandler
from sns_xmpp.xmpp.stanzas import add_element

NS_TIME = "urn:xmpp:time"


def answer_with(clock: IReactorTime) -> IQHandler:
    def answer(iq: domish.Element) -> domish.Element:
        if iq.getAttribute("type") != "get":
            raise StanzaError("bad-request")  # XEP-0202 defines the get only
        now = datetime.datetime.fromtimestamp(clock.seconds(), datetime.UTC)
        time = domish.Element((NS_TIME, "time"))
        add_element(time, "tzo", content="+00:00")
        add_element(time, "utc", content=now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        return time

    return answer


def install(registry: FeatureRegistry) -> None:
    registry.iq(NS_TIME, "time", answer_with(registry.clock))
    registry.disco_feature(NS_TIME)


FEATURE = Feature("entity-time", install)
