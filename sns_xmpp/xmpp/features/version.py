"""XEP-0092 software version of the server."""

from __future__ import annotations

import platform

from twisted.words.xish import domish

import sns_xmpp
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.stanzas import add_element

NS_VERSION = "jabber:iq:version"


def answer(iq: domish.Element) -> domish.Element:
    query = domish.Element((NS_VERSION, "query"))
    add_element(query, "name", content="sns-xmpp")
    add_element(query, "version", content=sns_xmpp.__version__)
    add_element(query, "os", content=platform.system())
    return query


def install(registry: FeatureRegistry) -> None:
    registry.iq(NS_VERSION, "query", answer)
    registry.disco_feature(NS_VERSION)


FEATURE = Feature("version", install)
