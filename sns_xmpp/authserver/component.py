"""The sites and their login entries for an existing server's clients: a XEP-0114 component.

On sns-xmpp's own streams the sites travel in the stream features before authentication (the
patent's "notify the client over the XML stream", `xmpp.features.social_sites`). An existing
ejabberd or Prosody cannot put them there, so the HTTP side connects to it as a component
(``[sites_component]``; docs/operations.md) and answers, at its JID (``sites.example.org``):

- disco#info: the identity ``auth/generic`` and the features, among them ``urn:x-sns-xmpp:sites:0``;
- disco#items: one item per site, ``<item jid='<component>' node='<site id>' name='<name>'/>``;
- disco#info on a site's node: its identity, and a XEP-0128 form (``FORM_TYPE``
  ``urn:x-sns-xmpp:sites:0``) with ``id``, ``name`` and ``login``, the URL a client opens;
- ``<iq type='get'><sites xmlns='urn:x-sns-xmpp:sites:0'/></iq>``: the element of the stream
  feature itself, every site with its login entry in one answer.

This is an extension of this project (docs/protocol.md, "The sites for an existing server"). Any
other IQ get or set is ``service-unavailable``; messages and presences are not answered.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IConnector, IReactorTCP
from twisted.words.protocols.jabber.xmlstream import XMPPHandler
from twisted.words.xish import domish
from wokkel.component import Component

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.features import SiteListing
from sns_xmpp.xmpp.features.social_sites import NS_SITES, sites_feature
from sns_xmpp.xmpp.stanzas import add_element, append_child, error_reply, iq_result

log = GatedLogger()

NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DATA = "jabber:x:data"
NAME = "Social login"


class SitesDisco(XMPPHandler):
    """Answers the component's IQs from the HTTP side's site list."""

    def __init__(self, web: SiteListing) -> None:
        super().__init__()
        self.web = web
        self._feature = sites_feature(web)

    @property
    def _stream(self) -> Any:
        assert self.xmlstream is not None  # only called while connected
        return self.xmlstream

    @property
    def own_jid(self) -> str:
        return str(self._stream.thisEntity.full())

    def connectionInitialized(self) -> None:
        log.info("sites_component.connected jid={jid}", jid=self.own_jid)
        self._stream.addObserver("/iq", self.on_iq)

    def on_iq(self, iq: domish.Element) -> None:
        if iq.getAttribute("type") not in ("get", "set"):
            return
        query = next((child for child in iq.elements()), None)
        answer = None
        if iq["type"] == "get" and query is not None:
            if (query.uri, query.name) == (NS_DISCO_INFO, "query"):
                answer = self.info(iq, query.getAttribute("node"))
            elif (query.uri, query.name) == (NS_DISCO_ITEMS, "query"):
                answer = self.items(iq, query.getAttribute("node"))
            elif (query.uri, query.name) == (NS_SITES, "sites"):
                answer = self.sites(iq)
        self.send(answer if answer is not None else error_reply(iq, "service-unavailable"))

    def _sites(self) -> list[dict[str, Any]]:
        listing: list[dict[str, Any]] = self.web.site_list()["sites"]
        return listing

    def info(self, iq: domish.Element, node: str | None) -> domish.Element | None:
        result = iq_result(iq)
        query = add_element(result, (NS_DISCO_INFO, "query"))
        if node is None:
            _identity(query, NAME)
            for feature in (NS_DISCO_INFO, NS_DISCO_ITEMS, NS_SITES):
                add_element(query, "feature")["var"] = feature
            return result
        site = next((site for site in self._sites() if site["id"] == node), None)
        if site is None:
            return error_reply(iq, "item-not-found")
        query["node"] = node
        _identity(query, site["name"])
        for feature in (NS_DISCO_INFO, NS_SITES):
            add_element(query, "feature")["var"] = feature
        form = add_element(query, (NS_DATA, "x"))
        form["type"] = "result"
        for var, value, kind in (("FORM_TYPE", NS_SITES, "hidden"), ("id", site["id"], None),
                                 ("name", site["name"], None), ("login", site["login"], "text-single")):
            field = add_element(form, "field")
            field["var"] = var
            if kind:
                field["type"] = kind
            add_element(field, "value", content=value)
        return result

    def items(self, iq: domish.Element, node: str | None) -> domish.Element | None:
        if node is not None:
            return error_reply(iq, "item-not-found")
        result = iq_result(iq)
        query = add_element(result, (NS_DISCO_ITEMS, "query"))
        own = iq.getAttribute("to") or self.own_jid
        for site in self._sites():
            item = add_element(query, "item")
            item["jid"] = own
            item["node"] = site["id"]
            item["name"] = site["name"]
        return result

    def sites(self, iq: domish.Element) -> domish.Element:
        result = iq_result(iq)
        element = self._feature(self._stream.thisEntity.host)
        if element is None:  # no site: an empty list
            element = domish.Element((NS_SITES, "sites"))
        append_child(result, element)
        return result


def _identity(query: domish.Element, name: str) -> None:
    identity = add_element(query, "identity")
    identity["category"] = "auth"
    identity["type"] = "generic"
    identity["name"] = name


class SitesComponent(Component):
    """wokkel's component service (it reconnects when the server goes away), on *reactor*."""

    def __init__(self, reactor: IReactorTCP, host: str, port: int, jid: str, secret: str, web: SiteListing) -> None:
        super().__init__(host, port, jid, secret)
        self.reactor = reactor
        self.setName("sites-component")
        SitesDisco(web).setHandlerParent(self)

    def _getConnection(self) -> IConnector:
        return self.reactor.connectTCP(self.host, self.port, self.factory)
