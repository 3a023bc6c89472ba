"""Personal eventing (XEP-0163) on publish-subscribe (XEP-0060): every account is a pubsub service
at its bare JID, for OMEMO's device lists and bundles (XEP-0384), avatars (XEP-0084), nicknames
(XEP-0172), bookmarks (XEP-0402) and private storage (XEP-0223).

This module is the protocol side: wokkel's `PubSubRequest.fromElement` parses each request, the
`PEPService` (xmpp/pubsub/service.py, the in-process API other features call; its doc lists the
calls) does it, and the answer is rendered here, as wokkel's `PubSubService` does for an
`IPubSubResource`. Notifications go to the resources whose entity capabilities (features/caps.py)
show ``<node>+notify`` and that the node's access model lets see it; the last published item of
each such node goes to a resource when its available presence arrives.

What is not offered here (section 4.6's unsupported feature): explicit subscriptions (PEP's
interest is implicit, from presence and capabilities), affiliation and subscription management,
collections.

Other features reach the service with `pep_service(registry)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.features.caps import entity_caps
from sns_xmpp.xmpp.pubsub.nodes import (
    NS_NODE_CONFIG,
    NS_PUBLISH_OPTIONS,
    NS_PUBSUB,
    NS_PUBSUB_OWNER,
    Limits,
    NodeConfig,
    config_form,
    find_form,
    pubsub_error,
    typed_form_types,
    unsupported,
)
from sns_xmpp.xmpp.pubsub.service import PEPItem, PEPService
from sns_xmpp.xmpp.stanzas import add_element, append_child

if TYPE_CHECKING:  # wokkel's pubsub imports only after the start-up call (sns_xmpp/compat.py)
    from wokkel.pubsub import PubSubRequest

NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
MAX_IDS = 100  # items asked by id in one request (section 6.5.8): a store query each
NS_PEP_DISCO = "http://jabber.org/protocol/pubsub#"
# XEP-0060 section 10's features this service has (XEP-0163 section 6 and the clients' checks:
# Conversations looks for publish-options, Dino and Gajim for access models and auto-create).
PUBSUB_FEATURES = ("access-presence", "access-open", "access-whitelist", "auto-create", "auto-subscribe",
                   "config-node", "create-and-configure", "create-nodes", "delete-items", "delete-nodes",
                   "filtered-notifications", "item-ids", "last-published", "multi-items", "persistent-items",
                   "presence-notifications", "publish", "publish-options", "purge-nodes", "retract-items",
                   "retrieve-items", "retrieve-default")


def _asker(iq: domish.Element, owner: str, session: ClientSession | None) -> str:
    if session is not None:
        return owner
    try:
        return parse_jid(iq.getAttribute("from", "")).userhost()
    except InvalidFormat:
        raise StanzaError("bad-request") from None


def _parsed(iq: domish.Element) -> PubSubRequest:
    from wokkel.pubsub import PubSubRequest  # noqa: PLC0415 - see the import above

    pubsub = next(iq.elements())  # dispatched for <pubsub/>
    for verb in pubsub.elements():
        verb.parent = pubsub  # wokkel reads a verb's siblings through it; this parser leaves it unset
    typed_form_types(pubsub)
    try:
        return PubSubRequest.fromElement(iq)
    except NotImplementedError:
        child = next((c for c in iq.elements()), None)
        verb = next((c.name for c in child.elements()), None) if child is not None else None
        if verb is None:
            raise StanzaError("bad-request", text="a <pubsub/> with nothing to do") from None
        raise unsupported(verb) from None


def _items_answer(node: str, items: list[PEPItem]) -> domish.Element:
    pubsub = domish.Element((NS_PUBSUB, "pubsub"))
    element = add_element(pubsub, "items")
    element["node"] = node
    for item in items:
        append_child(element, item.element(NS_PUBSUB))
    return pubsub


def _configure_answer(node: str, config: NodeConfig, service: PEPService) -> domish.Element:
    pubsub = domish.Element((NS_PUBSUB_OWNER, "pubsub"))
    configure = add_element(pubsub, "configure")
    if node:
        configure["node"] = node
    append_child(configure, config_form(config, service.limits).toElement())
    return pubsub


class PEPProtocol:
    """The account's IQs in the pubsub and pubsub#owner namespaces (XEP-0060 sections 6 to 8)."""

    def __init__(self, service: PEPService) -> None:
        self.service = service

    def answer(self, iq: domish.Element, owner: str, session: ClientSession | None) -> Any:
        asker = _asker(iq, owner, session)
        request = _parsed(iq)
        handler: Callable[[PubSubRequest, domish.Element, str, str], Any] | None = getattr(
            self, "_" + request.verb, None)
        if handler is None:
            raise unsupported(_FEATURE_OF.get(request.verb, request.verb))
        if request.verb not in ("items", "subscriptions", "affiliations") and asker != owner:
            raise StanzaError("forbidden")  # XEP-0163 section 4: only the owner publishes and configures
        return handler(request, iq, owner, asker)

    # -- section 7: publishers -----------------------------------------------

    def _publish(self, request: PubSubRequest, iq: domish.Element, owner: str, asker: str) -> Deferred:
        node = request.nodeIdentifier
        if len(request.items) > 1:
            raise pubsub_error("bad-request", "invalid-payload")
        item = request.items[0] if request.items else None
        if item is None:
            raise pubsub_error("bad-request", "item-required")  # section 7.1.3.6: PEP nodes persist items
        payloads = [child for child in item.elements()] if item is not None else []
        if len(payloads) > 1:
            raise pubsub_error("bad-request", "invalid-payload")
        pubsub = next(iq.elements(NS_PUBSUB, "pubsub"))
        options = find_form(next(pubsub.elements(NS_PUBSUB, "publish-options"), None), NS_PUBLISH_OPTIONS)
        item_id = item.getAttribute("id") if item is not None else None

        def published(new_id: str) -> domish.Element:
            answer = domish.Element((NS_PUBSUB, "pubsub"))
            publish = add_element(answer, "publish")
            publish["node"] = node
            add_element(publish, "item")["id"] = new_id
            return answer

        payload = payloads[0] if payloads else None
        return self.service.publish_item(owner, node, payload, item_id, options).addCallback(published)

    def _retract(self, request: PubSubRequest, iq: domish.Element, owner: str, asker: str) -> Deferred:
        if not request.itemIdentifiers:
            raise pubsub_error("bad-request", "item-required")
        retract = next(next(iq.elements(NS_PUBSUB, "pubsub")).elements(NS_PUBSUB, "retract"))
        notify = retract.getAttribute("notify")
        return self.service.config(owner, request.nodeIdentifier).addCallback(
            lambda config: self.service.retract(owner, request.nodeIdentifier, request.itemIdentifiers,
                                                notify=notify in ("1", "true") if notify else config.notify_retract))

    def _create(self, request: PubSubRequest, iq: domish.Element, owner: str, asker: str) -> Deferred:
        if not request.nodeIdentifier:
            raise unsupported("instant-nodes")
        form = request.options if request.options is not None and request.options.fields else None
        return self.service.create(owner, request.nodeIdentifier, form).addCallback(lambda _: None)

    # -- section 6: entities that read -----------------------------------------

    def _items(self, request: PubSubRequest, iq: domish.Element, owner: str, asker: str) -> Deferred:
        node = request.nodeIdentifier
        max_items = request.maxItems
        if max_items is not None and max_items < 1:
            raise StanzaError("bad-request")
        if len(request.itemIdentifiers or ()) > MAX_IDS:
            raise StanzaError("policy-violation", "modify", text=f"at most {MAX_IDS} items by id at once")
        return self.service.visible_items(asker, owner, node, max_items, request.itemIdentifiers or ()).addCallback(
            lambda items: _items_answer(node, items))

    def _subscriptions(self, request: PubSubRequest, iq: domish.Element, owner: str, asker: str) -> domish.Element:
        answer = domish.Element((NS_PUBSUB, "pubsub"))
        add_element(answer, "subscriptions")  # PEP's interest is implicit: no explicit subscriptions
        return answer

    def _affiliations(self, request: PubSubRequest, iq: domish.Element, owner: str, asker: str) -> Deferred:
        def listed(nodes: list[tuple[str, NodeConfig]]) -> domish.Element:
            answer = domish.Element((NS_PUBSUB, "pubsub"))
            affiliations = add_element(answer, "affiliations")
            for node, _config in nodes if asker == owner else []:
                affiliation = add_element(affiliations, "affiliation")
                affiliation["node"], affiliation["affiliation"] = node, "owner"
            return answer
        return self.service.visible_nodes(asker, owner).addCallback(listed)

    # -- section 8: the owner ----------------------------------------------------

    def _configureGet(self, request: PubSubRequest, iq: domish.Element, owner: str, asker: str) -> Deferred:
        node = request.nodeIdentifier
        if not node:
            raise pubsub_error("bad-request", "nodeid-required")
        return self.service.config(owner, node).addCallback(
            lambda config: _configure_answer(node, config, self.service))

    def _configureSet(self, request: PubSubRequest, iq: domish.Element, owner: str, asker: str) -> Deferred | None:
        node = request.nodeIdentifier
        if not node:
            raise pubsub_error("bad-request", "nodeid-required")
        if request.options.formType == "cancel":
            return self.service.config(owner, node).addCallback(lambda _: None)
        if request.options.formNamespace != NS_NODE_CONFIG:
            raise StanzaError("bad-request")
        return self.service.configure(owner, node, request.options).addCallback(lambda _: None)

    def _default(self, request: PubSubRequest, iq: domish.Element, owner: str, asker: str) -> domish.Element:
        answer = domish.Element((NS_PUBSUB_OWNER, "pubsub"))
        append_child(add_element(answer, "default"), config_form(NodeConfig(), self.service.limits).toElement())
        return answer

    def _purge(self, request: PubSubRequest, iq: domish.Element, owner: str, asker: str) -> Deferred:
        return self.service.purge(owner, request.nodeIdentifier)

    def _delete(self, request: PubSubRequest, iq: domish.Element, owner: str, asker: str) -> Deferred:
        return self.service.delete(owner, request.nodeIdentifier)


_FEATURE_OF = {"subscribe": "subscribe", "unsubscribe": "subscribe", "optionsGet": "subscription-options",
               "optionsSet": "subscription-options", "affiliationsGet": "modify-affiliations",
               "affiliationsSet": "modify-affiliations", "subscriptionsGet": "manage-subscriptions",
               "subscriptionsSet": "manage-subscriptions"}


def install(registry: FeatureRegistry) -> None:
    caps = entity_caps(registry)
    settings = registry.config.pep
    limits = Limits(settings.max_nodes, settings.max_items, settings.max_item_bytes)
    service = PEPService(registry.sessions, registry.clock, limits, interest=caps.seen if caps is not None else None)
    registry.services["pep"] = service
    protocol = PEPProtocol(service)
    registry.account_iq(NS_PUBSUB, "pubsub", protocol.answer)
    registry.account_iq(NS_PUBSUB_OWNER, "pubsub", protocol.answer)

    def disco_items(iq: domish.Element, owner: str, session: ClientSession | None) -> Deferred:
        """XEP-0030 on the account (XEP-0163 section 6): the nodes the asker may see."""
        asker = _asker(iq, owner, session)
        if next(iq.elements(NS_DISCO_ITEMS, "query")).getAttribute("node"):
            return defer.succeed(domish.Element((NS_DISCO_ITEMS, "query")))

        def listed(nodes: list[tuple[str, NodeConfig]]) -> domish.Element:
            query = domish.Element((NS_DISCO_ITEMS, "query"))
            for node, _config in nodes:
                item = add_element(query, "item")
                item["jid"], item["node"] = owner, node
            return query

        return service.visible_nodes(asker, owner).addCallback(listed)

    registry.account_iq(NS_DISCO_ITEMS, "query", disco_items)
    if caps is not None:
        caps.on_available(service.send_last_items)
    registry.account_disco_identity("pubsub", "pep")
    registry.account_disco_feature(NS_PUBSUB)
    registry.account_disco_feature(NS_DISCO_ITEMS)
    for feature in PUBSUB_FEATURES:
        registry.account_disco_feature(NS_PEP_DISCO + feature)
    # On the domain too, as ejabberd does: Profanity looks there (connection_supports) before it
    # publishes its OMEMO device list and bundles with access_model=open; without it they are
    # published with PEP's default (presence), and a stranger cannot start OMEMO.
    registry.disco_feature(NS_PEP_DISCO + "publish-options")
    registry.stores("pep_nodes", per_account=True, what="an account's PEP nodes and their configuration")
    registry.stores("pep_items", per_account=True, what="the items published to them")


def pep_service(registry: FeatureRegistry) -> PEPService | None:
    """The installed PEP service (the in-process API), or None when the feature is off."""
    found = registry.services.get("pep")
    return found if isinstance(found, PEPService) else None


FEATURE = Feature("pep", install)
