"""One stanza from a room to many occupants, serialised once.

A groupchat message goes to every occupant (XEP-0045 section 7.4): the copies differ only in
'to'. The stanza is written once as a client stream would write it (`plain_xml`), and each local
occupant's session gets that text with its own 'to' put in front, through `ClientSession.send`
(counted by stream management). What cannot be written so (a prefixed namespace), what goes to
another domain, and what a session holding stanzas back (XEP-0352) may fold, goes as an element
through the router, as any stanza does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.words.xish import domish

from sns_xmpp.jid import JID
from sns_xmpp.xmpp.routing import StanzaRouter
from sns_xmpp.xmpp.serialization import escape_attribute, plain_xml
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import NS_CLIENT


@dataclass(eq=False)
class Recipient:
    """A real JID a room sends to, in the forms delivery needs, made once."""

    jid: JID
    full: str = field(init=False)
    quoted: str = field(init=False)  # the full JID as an attribute value
    bare: str = field(init=False)
    resource: str = field(init=False)

    def __post_init__(self) -> None:
        self.full = self.jid.full()
        self.quoted = escape_attribute(self.full)
        self.bare = self.jid.userhost()
        self.resource = self.jid.resource or ""


class Prepared:
    """*element* (with no 'to') and its text after the element's name, or None."""

    __slots__ = ("element", "head", "tail")

    def __init__(self, element: domish.Element) -> None:
        self.element = element
        text = plain_xml(element, NS_CLIENT, ())
        self.head = f"<{element.name} to='"
        self.tail = "'" + text[len(element.name) + 1:] if text is not None else None

    def text_for(self, recipient: Recipient) -> str | None:
        return None if self.tail is None else self.head + recipient.quoted + self.tail


class Outbox:
    def __init__(self, sessions: SessionManager, router: StanzaRouter | None) -> None:
        self.sessions = sessions
        self.router = router
        self.users = sessions.users  # the registry of bound sessions (filled in place), read per recipient

    def route(self, element: domish.Element) -> None:
        if self.router is not None:
            self.router.route(element)

    def send(self, prepared: Prepared, recipient: Recipient) -> None:
        """*prepared* to *recipient*'s client."""
        tail = prepared.tail
        if tail is not None:
            resources = self.users.get(recipient.bare)  # SessionManager.session, its JID's forms made once
            session = resources.get(recipient.resource) if resources is not None else None
            if session is not None:
                if session.holder is None:
                    session.send(prepared.head + recipient.quoted + tail)
                else:
                    session.send(readdressed(prepared.element, recipient.full))
                return
        self.route(readdressed(prepared.element, recipient.full))


def readdressed(element: domish.Element, to: str) -> domish.Element:
    """A copy for *to*; the children are shared (they are not changed once sent)."""
    copy = domish.Element((element.uri, element.name), element.defaultUri, dict(element.attributes))
    copy.children = element.children
    copy["to"] = to
    return copy
