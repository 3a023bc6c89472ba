"""XEP-0199 ping: the server answers a ping to itself with an empty result."""

from __future__ import annotations

from twisted.words.xish import domish

from sns_xmpp.xmpp.features import Feature, FeatureRegistry

NS_PING = "urn:xmpp:ping"


def answer(iq: domish.Element) -> None:
    return None


def install(registry: FeatureRegistry) -> None:
    registry.iq(NS_PING, "ping", answer)
    registry.disco_feature(NS_PING)


FEATURE = Feature("ping", install)
