"""XEP-0030 service discovery of the server: its identity and features, and the connected
components as its items."""

from __future__ import annotations

from twisted.words.xish import domish

from sns_xmpp.xmpp.features import Feature, FeatureRegistry

NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"


def install(registry: FeatureRegistry) -> None:
    announced = registry.disco_features  # read at each query: features installed later count too
    hosted = registry.sessions.domains
    router = registry.router

    def info(iq: domish.Element) -> domish.Element:
        query = domish.Element((NS_DISCO_INFO, "query"))
        node = next(iq.elements(NS_DISCO_INFO, "query")).getAttribute("node")  # dispatched for <query/> only
        if node:
            query["node"] = node
        identity = query.addElement("identity")
        identity["category"] = "server"
        identity["type"] = "im"
        identity["name"] = "sns-xmpp"
        for var in announced:
            query.addElement("feature")["var"] = var
        return query

    def items(iq: domish.Element) -> domish.Element:
        query = domish.Element((NS_DISCO_ITEMS, "query"))
        for domain in sorted(d for d in router.routes if d is not None and d not in hosted):
            query.addElement("item")["jid"] = domain
        return query

    registry.iq(NS_DISCO_INFO, "query", info)
    registry.iq(NS_DISCO_ITEMS, "query", items)
    registry.disco_feature(NS_DISCO_INFO)
    registry.disco_feature(NS_DISCO_ITEMS)


FEATURE = Feature("disco", install)
