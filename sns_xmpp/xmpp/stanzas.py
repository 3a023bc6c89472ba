"""Small constructors for stanzas and their errors, shared by the handlers."""

from __future__ import annotations

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DELAY = "urn:xmpp:delay"


def error_reply(stanza: domish.Element, condition: str, text: str | None = None) -> domish.Element:
    """The RFC 6120 section 8.3 error answer to *stanza*, addressed back to its sender."""
    return StanzaError(condition, text=text).toResponse(stanza)


def iq_result(iq: domish.Element) -> domish.Element:
    result = domish.Element((None, "iq"))
    result["type"] = "result"
    if iq.getAttribute("id") is not None:
        result["id"] = iq["id"]
    if iq.getAttribute("from"):
        result["to"] = iq["from"]
    if iq.getAttribute("to"):
        result["from"] = iq["to"]
    return result


def may_bounce(stanza: domish.Element) -> bool:
    """Errors and results are never answered with errors (RFC 6120 8.3.1)."""
    kind = stanza.getAttribute("type")
    return kind != "error" and not (stanza.name == "iq" and kind == "result")


def first_child(element: domish.Element) -> domish.Element | None:
    for child in element.elements():
        return child
    return None
