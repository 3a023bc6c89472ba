"""Small constructors for stanzas and their errors, shared by the handlers."""

from __future__ import annotations

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.xmpp.serialization import escape_attribute

NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DELAY = "urn:xmpp:delay"


class StoredText(str):
    """A stored offline message, as the text offline storage keeps and sends: one that a session
    never acknowledged is kept in storage again as it is (STORED_MESSAGE_UNACKNOWLEDGED). Told
    apart by type from other text a session is sent (a stanza another node of a cluster forwarded),
    which is delivered again as any stanza would be."""

    __slots__ = ()


def parse_stanza(text: str) -> domish.Element | None:
    """One stanza written as a jabber:client stream writes it (or declaring its namespace); None
    if the text is not one well-formed element."""
    found: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = found.append
    stream.DocumentEndEvent = lambda: None
    try:
        stream.parse(b"<s xmlns='jabber:client'>" + text.encode() + b"</s>")
    except Exception:
        return None
    return found[0] if found else None


def error_reply(stanza: domish.Element, condition: str, text: str | None = None) -> domish.Element:
    """The RFC 6120 section 8.3 error answer to *stanza*, addressed back to its sender."""
    return StanzaError(condition, text=text).toResponse(stanza)


def presence_stanza(kind: str | None, sender: str, to: str) -> domish.Element:
    """A presence of *kind* (None: available) from *sender* to *to*, with no children."""
    presence = domish.Element((None, "presence"))
    if kind:
        presence["type"] = kind
    presence["from"] = sender
    presence["to"] = to
    return presence


def append_child(parent: domish.Element, child: domish.Element) -> domish.Element:
    """Add *child* to *parent* as ``addChild`` does, without the link back (``child.parent``):
    the two would make a reference cycle, left for the cycle collector (see parsing.py). Nothing
    here reads ``parent``."""
    parent.children.append(child)
    return child


def add_element(parent: domish.Element, name: str | tuple[str | None, str],
                defaultUri: str | None = None, content: str | None = None) -> domish.Element:  # noqa: N803 - domish's name
    """``parent.addElement``, without the link back (see append_child): a bare *name* takes the
    parent's default namespace, a (uri, name) pair its own."""
    if isinstance(name, tuple):
        child = domish.Element(name, defaultUri if defaultUri is not None else name[0])
    else:
        uri = defaultUri if defaultUri is not None else parent.defaultUri
        child = domish.Element((uri, name), uri)
    parent.children.append(child)
    if content:
        child.addContent(content)
    return child


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


def iq_result_text(identifier: str | None, payload: str = "", to: str | None = None,
                   sender: str | None = None) -> str:
    """An IQ result as a client stream writes it, written directly (every login's session and
    bind results): iq_result's attributes in its order, *payload* already serialised."""
    text = "<iq type='result'"
    if identifier is not None:
        text += f" id='{escape_attribute(identifier)}'"
    if to:
        text += f" to='{escape_attribute(to)}'"
    if sender:
        text += f" from='{escape_attribute(sender)}'"
    return f"{text}>{payload}</iq>" if payload else text + "/>"


def empty_result_text(iq: domish.Element) -> str:
    """The empty result to *iq* as a client stream writes it, when it goes back to the sender's own
    session: iq_result's attributes, less 'from' when the request had no 'to'."""
    return iq_result_text(iq.getAttribute("id"), to=iq.getAttribute("from"), sender=iq.getAttribute("to"))


def may_bounce(stanza: domish.Element) -> bool:
    """Errors and results are never answered with errors (RFC 6120 8.3.1)."""
    kind = stanza.getAttribute("type")
    return kind != "error" and not (stanza.name == "iq" and kind == "result")


def first_child(element: domish.Element) -> domish.Element | None:
    for child in element.elements():
        return child
    return None
