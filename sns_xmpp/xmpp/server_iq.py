"""IQs the server answers for its own domain: XEP-0030 disco, XEP-0199 ping, XEP-0092 version,
and the legacy RFC 3921 session establishment that old clients still send."""

from __future__ import annotations

import platform
from collections.abc import Callable

from twisted.words.xish import domish
from wokkel.component import Router

import sns_xmpp
from sns_xmpp.xmpp.sessions import NS_SESSION_LEGACY, SessionManager

NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PING = "urn:xmpp:ping"
NS_VERSION = "jabber:iq:version"
NS_ROSTER = "jabber:iq:roster"

FEATURES = (NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING, NS_VERSION, NS_ROSTER, "msgoffline",
            "urn:xmpp:features:pre-approval")


def disco_info(iq: domish.Element) -> domish.Element:
    query = domish.Element((NS_DISCO_INFO, "query"))
    node = next(iq.elements(NS_DISCO_INFO, "query")).getAttribute("node")  # dispatched here for <query/> only
    if node:
        query["node"] = node
    identity = query.addElement("identity")
    identity["category"] = "server"
    identity["type"] = "im"
    identity["name"] = "sns-xmpp"
    for feature in FEATURES:
        query.addElement("feature")["var"] = feature
    return query


def disco_items_of(router: Router, hosted: frozenset[str]) -> Callable[[domish.Element], domish.Element]:
    """disco#items of the server: the connected components."""

    def disco_items(iq: domish.Element) -> domish.Element:
        query = domish.Element((NS_DISCO_ITEMS, "query"))
        for domain in sorted(d for d in router.routes if d is not None and d not in hosted):
            query.addElement("item")["jid"] = domain
        return query

    return disco_items


def ping(iq: domish.Element) -> None:
    return None


def version(iq: domish.Element) -> domish.Element:
    query = domish.Element((NS_VERSION, "query"))
    query.addElement("name", content="sns-xmpp")
    query.addElement("version", content=sns_xmpp.__version__)
    query.addElement("os", content=platform.system())
    return query


def session(iq: domish.Element) -> None:
    return None


def install(sessions: SessionManager, router: Router) -> None:
    sessions.iq_handlers.update({
        (NS_DISCO_INFO, "query"): disco_info,
        (NS_DISCO_ITEMS, "query"): disco_items_of(router, sessions.domains),
        (NS_PING, "ping"): ping,
        (NS_VERSION, "query"): version,
        (NS_SESSION_LEGACY, "session"): session,
    })
