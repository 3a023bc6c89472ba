"""XEP-0030 service discovery: the server's identity and features, the connected components as
its items, and each account's identity and features on its bare JID (section 3.1)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.hooks import AccountIQHandler
from sns_xmpp.xmpp.roster import HAS_FROM, Roster
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import add_element

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
        identity = add_element(query, "identity")
        identity["category"] = "server"
        identity["type"] = "im"
        identity["name"] = "sns-xmpp"
        for var in announced:
            add_element(query, "feature")["var"] = var
        return query

    def items(iq: domish.Element) -> domish.Element:
        """The services of the domain asked: its own (conference.<domain>, upload.<domain>) and
        the components, but not another hosted domain's services, which a client of this one
        would otherwise pick (the first upload service it finds)."""
        query = domish.Element((NS_DISCO_ITEMS, "query"))
        routes = router.routes if router is not None else {}
        asked = iq.getAttribute("to") or ""
        for domain in sorted(d for d in routes if d is not None and d not in hosted and _listed(d, asked, hosted)):
            add_element(query, "item")["jid"] = domain
        return query

    registry.iq(NS_DISCO_INFO, "query", info)
    account_features = registry.hooks.account_disco_features  # read at each query, as above
    registry.account_iq(NS_DISCO_INFO, "query", account_info_with(registry.sessions, account_features,
                                                                   registry.hooks.account_disco_identities))
    registry.iq(NS_DISCO_ITEMS, "query", items)
    registry.disco_feature(NS_DISCO_INFO)
    registry.disco_feature(NS_DISCO_ITEMS)
    registry.account_disco_feature(NS_DISCO_INFO)


def account_info_with(sessions: SessionManager, announced: list[str],
                      identities: list[tuple[str, str]] | None = None) -> AccountIQHandler:
    """disco#info on an account's bare JID: the account's identity and the features registered
    for accounts, for the account itself and for contacts its presence is shared with (as
    Prosody's mod_disco); anyone else hears service-unavailable, as of an absent account."""

    def answer(query: domish.Element) -> domish.Element:
        result = domish.Element((NS_DISCO_INFO, "query"))
        node = query.getAttribute("node")
        if node:
            result["node"] = node
        for category, kind in identities if identities is not None else [("account", "registered")]:
            identity = add_element(result, "identity")
            identity["category"], identity["type"] = category, kind
        for var in announced:
            add_element(result, "feature")["var"] = var
        return result

    def account_info(iq: domish.Element, owner: str, session: ClientSession | None) -> domish.Element | Deferred:
        query = next(iq.elements(NS_DISCO_INFO, "query"))
        if session is not None:
            return answer(query)
        try:
            asker = parse_jid(iq.getAttribute("from", "")).userhost()
        except InvalidFormat:
            raise StanzaError("service-unavailable") from None

        def shared(roster: Roster | None) -> domish.Element:
            if roster is None or roster.item(asker).subscription not in HAS_FROM:
                raise StanzaError("service-unavailable")
            return answer(query)

        return sessions.roster_of_account(owner).addCallback(shared)

    return account_info


FEATURE = Feature("disco", install)


def _listed(service: str, asked: str, hosted: frozenset[str] | set[str]) -> bool:
    """Whether *service* belongs in the disco#items of the hosted domain *asked*: one of its own
    subdomains, or a domain under none of the hosted domains (a component named as it likes)."""
    if service.endswith("." + asked):
        return True
    return not any(service.endswith("." + domain) for domain in hosted)
