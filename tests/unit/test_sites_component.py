"""The sites component for an existing server (sns_xmpp/authserver/component.py): its disco answers
and the sites element, from the HTTP side's site list, on raw XML; and the service connects where
it is told, on the reactor it is given."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactor
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from sns_xmpp import startup
from sns_xmpp.authserver.component import NS_SITES, SitesComponent, SitesDisco

COMPONENT = "sites.ejabberd.example"


class Sites:
    generation = 1

    def __iter__(self) -> Any:
        return iter(())


class Listing:
    """What SitesDisco reads of http.login.SocialWeb."""

    public_url = "https://login.example.org"
    sites = Sites()

    def site_list(self) -> dict[str, Any]:
        return {"xmpp_domain": "ejabberd.example", "sites": [
            {"id": "demo", "name": "Demo site", "login": f"{self.public_url}/login-using-demo", "oauthbearer": False},
            {"id": "corp", "name": "Corp & Co", "login": f"{self.public_url}/login-using-corp", "oauthbearer": True}]}


class Sent:
    def __init__(self) -> None:
        self.stanzas: list[domish.Element] = []
        self.thisEntity = JID(COMPONENT)

    def send(self, element: domish.Element) -> None:
        self.stanzas.append(element)

    def addObserver(self, *args: Any) -> None:  # noqa: N802 - xmlstream's name
        pass


def children(element: domish.Element, name: str) -> list[domish.Element]:
    return [child for child in element.elements() if child.name == name]


def parse(text: str) -> domish.Element:
    elements: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = elements.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(f"<s xmlns='jabber:component:accept'>{text}</s>".encode())
    return elements[0]


def ask(text: str) -> domish.Element:
    startup.install()
    handler = SitesDisco(Listing())
    sent = Sent()
    handler.parent = sent  # type: ignore[assignment]
    handler.xmlstream = sent
    handler.on_iq(parse(text))
    assert len(sent.stanzas) == 1
    return sent.stanzas[0]


def test_disco_info_names_the_service_and_its_features() -> None:
    answer = ask(f"<iq type='get' id='1' from='bob@ejabberd.example/r' to='{COMPONENT}'>"
                 "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert (answer["type"], answer["id"], answer["to"], answer["from"]) == (
        "result", "1", "bob@ejabberd.example/r", COMPONENT)
    query = next(answer.elements())
    identity = children(query, "identity")[0]
    assert (identity["category"], identity["type"]) == ("auth", "generic")
    assert {f["var"] for f in children(query, "feature")} == {
        "http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items", NS_SITES}


def test_disco_items_list_the_sites_as_nodes_and_each_node_has_its_login_url() -> None:
    answer = ask(f"<iq type='get' id='2' from='bob@ejabberd.example/r' to='{COMPONENT}'>"
                 "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    items = [(i["jid"], i["node"], i["name"]) for i in children(next(answer.elements()), "item")]
    assert items == [(COMPONENT, "demo", "Demo site"), (COMPONENT, "corp", "Corp & Co")]
    answer = ask(f"<iq type='get' id='3' from='bob@ejabberd.example/r' to='{COMPONENT}'>"
                 "<query xmlns='http://jabber.org/protocol/disco#info' node='corp'/></iq>")
    query = next(answer.elements())
    assert query["node"] == "corp"
    form = children(query, "x")[0]
    fields = {f["var"]: str(children(f, "value")[0]) for f in children(form, "field")}
    assert fields == {"FORM_TYPE": NS_SITES, "id": "corp", "name": "Corp & Co",
                      "login": "https://login.example.org/login-using-corp"}
    assert "Corp &amp; Co" in answer.toXml()


def test_the_sites_element_is_the_stream_features_one() -> None:
    answer = ask(f"<iq type='get' id='4' from='bob@ejabberd.example/r' to='{COMPONENT}'>"
                 f"<sites xmlns='{NS_SITES}'/></iq>")
    sites = next(answer.elements())
    assert (sites.uri, sites.name, sites["list"]) == (NS_SITES, "sites", "https://login.example.org/sites")
    assert [(s["id"], s["login"]) for s in children(sites, "site")] == [
        ("demo", "https://login.example.org/login-using-demo"), ("corp", "https://login.example.org/login-using-corp")]


def test_anything_else_is_refused_and_results_are_not_answered() -> None:
    for text, condition in (
            ("<iq type='get' id='5'><query xmlns='http://jabber.org/protocol/disco#info' node='nope'/></iq>",
             "item-not-found"),
            ("<iq type='get' id='6'><query xmlns='http://jabber.org/protocol/disco#items' node='demo'/></iq>",
             "item-not-found"),
            ("<iq type='set' id='7'><query xmlns='jabber:iq:register'/></iq>", "service-unavailable"),
            ("<iq type='get' id='8'/>", "service-unavailable")):
        answer = ask(text.replace("<iq ", f"<iq from='bob@ejabberd.example/r' to='{COMPONENT}' "))
        assert answer["type"] == "error"
        assert next(children(answer, "error")[0].elements()).name == condition
    handler, sent = SitesDisco(Listing()), Sent()
    handler.parent, handler.xmlstream = sent, sent  # type: ignore[assignment]
    handler.on_iq(parse("<iq type='result' id='9'/>"))
    assert sent.stanzas == []


def test_the_service_connects_to_the_configured_listener_on_its_reactor() -> None:
    startup.install()
    reactor = MemoryReactor()
    service = SitesComponent(reactor, "127.0.0.3", 5347, COMPONENT, "a-secret-of-16-chars", Listing())
    service.startService()
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.3", 5347)]
    service.stopService()
