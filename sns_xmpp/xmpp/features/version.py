"""XEP-0092 software version of the server."""

from __future__ import annotations

import platform

from twisted.words.xish import domish

import sns_xmpp
from sns_xmpp.xmpp.features import Feature, FeatureRegistry

NS_VERSION = "jabber:iq:version"


def answer(iq: domish.Element) -> domish.Element:
    query = domish.Element((NS_VERSION, "query"))
    query.addElement("name", content="sns-xmpp")
    query.addElement("version", content=sns_xmpp.__version__)
    query.addElement("os", content=platform.system())
    return query


def install(registry: FeatureRegistry) -> None:
    registry.iq(NS_VERSION, "query", answer)
    registry.disco_feature(NS_VERSION)


FEATURE = Feature("version", install)
