"""Message Carbons (XEP-0280, urn:xmpp:carbons:2): what one resource sends and receives, the
account's other resources that asked see too, so a message sent from the phone appears on the
desktop.

A resource enables carbons with an IQ (section 4) or inside its Bind2 request (XEP-0386). Then:
- a message it sends that is eligible (section 6) is copied, wrapped in ``<sent/>``, to the
  account's other enabled resources (section 7.2);
- an eligible message addressed to one of the account's full JIDs is copied, wrapped in
  ``<received/>``, to the other enabled resources (section 7.1). A message to the bare JID already
  reaches every resource that takes messages (RFC 6121), so it is not copied again.
Each copy is a new message from the account's bare JID holding the original in a XEP-0297
``<forwarded/>``; a message with ``<private/>`` (or the XEP-0334 ``<no-copy/>`` hint) is not copied.
"""

from __future__ import annotations

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.jid import JID
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.hooks import MESSAGE_FROM_CLIENT, MESSAGE_TO_LOCAL, SESSION_ARRIVED, SESSION_UNBOUND
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import NS_CLIENT, append_child

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_HINTS = "urn:xmpp:hints"
# Payloads that make a normal message without a body an IM one (section 6): chat states,
# chat markers, receipts.
IM_PAYLOADS = ("http://jabber.org/protocol/chatstates", "urn:xmpp:chat-markers:0", "urn:xmpp:receipts")


def eligible(message: domish.Element) -> bool:
    """Section 6: chat messages, and normal ones with a body or an IM payload; never one that is
    private, asks not to be copied, or is a groupchat, headline or error message."""
    kind = message.getAttribute("type", "normal")
    if kind not in ("chat", "normal"):
        return False
    im_payload = False
    for child in message.elements():
        if (child.uri, child.name) in ((NS_CARBONS, "private"), (NS_HINTS, "no-copy")):
            return False
        if child.uri in IM_PAYLOADS or (child.name == "body" and child.uri == NS_CLIENT):
            im_payload = True
    return kind == "chat" or im_payload


def wrapped(message: domish.Element, direction: str, owner: str, to: str) -> domish.Element:
    """The copy: <message from=owner to=resource><sent|received><forwarded>original</...></...>."""
    copy = domish.Element((NS_CLIENT, "message"))
    copy["from"], copy["to"] = owner, to
    copy["type"] = message.getAttribute("type", "normal")
    carbon = append_child(copy, domish.Element((NS_CARBONS, direction)))
    forwarded = append_child(carbon, domish.Element((NS_FORWARD, "forwarded")))
    original = domish.Element((NS_CLIENT, "message"), NS_CLIENT, dict(message.attributes))
    original.children = message.children
    append_child(forwarded, original)
    return copy


class Carbons:
    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions
        self.enabled: set[ClientSession] = set()

    def answer(self, iq: domish.Element, owner: str, session: ClientSession | None) -> None:
        """Section 4: <enable/> or <disable/> in a set, for the asking resource itself."""
        child = iq.firstChildElement()
        if session is None or iq.getAttribute("type") != "set":
            raise StanzaError("bad-request" if session is not None else "service-unavailable")
        if child.name == "enable":
            self.enabled.add(session)
            session.carbons = True
        else:
            self.enabled.discard(session)
            session.carbons = False

    def enable_inline(self, session: ClientSession, element: domish.Element) -> None:
        """XEP-0386: <enable xmlns='urn:xmpp:carbons:2'/> in the Bind2 request; no answer element."""
        if element.name == "enable":
            self.enabled.add(session)
            session.carbons = True

    def sent(self, session: ClientSession, message: domish.Element) -> None:
        # The enabled set answers "nobody" at once on one node; in a cluster a resource on another
        # node may have enabled carbons (RemoteSession.carbons, from the directory).
        if not (self.enabled or self.sessions.clustered) or not eligible(message):
            return None
        for other in self.sessions.resources(session.bare):
            if other is not session and other.carbons:
                other.send(wrapped(message, "sent", session.bare, other.full))
        return None

    def received(self, message: domish.Element, to: JID) -> None:
        if not (self.enabled or self.sessions.clustered) or to.resource is None or not eligible(message):
            return None
        if self.sessions.session(to) is None:
            return None  # no such resource: the message goes to the bare JID's resources instead
        owner = to.userhost()
        for other in self.sessions.resources(owner):
            if other.resource != to.resource and other.carbons:
                other.send(wrapped(message, "received", owner, other.full))
        return None

    def unbound(self, session: ClientSession, replaced: bool) -> None:
        self.enabled.discard(session)

    def arrived(self, session: ClientSession, state: object) -> None:
        """A session resumed from another node of a cluster keeps carbons on (session.carbons
        came with it)."""
        if session.carbons:
            self.enabled.add(session)


def install(registry: FeatureRegistry) -> None:
    carbons = Carbons(registry.sessions)
    registry.account_iq(NS_CARBONS, "enable", carbons.answer)
    registry.account_iq(NS_CARBONS, "disable", carbons.answer)
    registry.hook(MESSAGE_FROM_CLIENT, carbons.sent)
    registry.hook(MESSAGE_TO_LOCAL, carbons.received)
    registry.hook(SESSION_UNBOUND, carbons.unbound)
    registry.hook(SESSION_ARRIVED, carbons.arrived)
    registry.inline(NS_CARBONS, carbons.enable_inline)
    registry.disco_feature(NS_CARBONS)
    registry.account_disco_feature(NS_CARBONS)


FEATURE = Feature("carbons", install)
