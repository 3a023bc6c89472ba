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


def empty_result_text(iq: domish.Element) -> str:
    """The empty result to *iq* as a client stream writes it, when it goes back to the sender's own
    session: iq_result's attributes, less 'from' when the request had no 'to'."""
    text = "<iq type='result'"
    identifier = iq.getAttribute("id")
    if identifier is not None:
        text += f" id='{domish.escapeToXml(identifier, 1)}'"
    sender = iq.getAttribute("from")
    if sender:
        text += f" to='{domish.escapeToXml(sender, 1)}'"
    to = iq.getAttribute("to")
    if to:
        text += f" from='{domish.escapeToXml(to, 1)}'"
    return text + "/>"


def may_bounce(stanza: domish.Element) -> bool:
    """Errors and results are never answered with errors (RFC 6120 8.3.1)."""
    kind = stanza.getAttribute("type")
    return kind != "error" and not (stanza.name == "iq" and kind == "result")


def first_child(element: domish.Element) -> domish.Element | None:
    for child in element.elements():
        return child
    return None
