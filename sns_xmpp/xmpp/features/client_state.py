"""Client State Indication (XEP-0352, urn:xmpp:csi:0): while a client says it is inactive (a phone
in a pocket), what it need not see at once is held back and folded, so the radio can sleep.

``<inactive/>`` (on the stream, or inside a Bind2 request) starts holding; ``<active/>`` sends
what was held and stops. While inactive:
- presence is held, the newest per sender (an older one from the same sender is dropped);
- a message with no body that only carries a chat state (XEP-0085) is held likewise, the newest
  per sender;
- anything else (a message with a body, an IQ, a stored offline message) goes at once, after what
  was held, so that the client sees things in order.
Held stanzas have not been sent, so stream management counts them only when they go.
"""

from __future__ import annotations

from twisted.words.xish import domish

from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.hooks import SESSION_LEAVING

NS_CSI = "urn:xmpp:csi:0"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
MAX_HELD = 1000  # held stanzas per session; past it, all go (a contact list's presence fits)


def _folding_key(element: domish.Element | str) -> tuple[str, str] | None:
    """What an element may be held under (the newest per key is kept), or None to send it now."""
    if isinstance(element, str):
        return None
    if element.name == "presence":
        return ("presence", element.getAttribute("from", ""))
    if element.name == "message" and element.getAttribute("type") != "error":
        children = list(element.elements())
        if children and all(child.uri == NS_CHATSTATES for child in children):
            return ("chatstate", element.getAttribute("from", ""))
    return None


class Held:
    """A session's held stanzas, by folding key, oldest first."""

    def __init__(self) -> None:
        self.stanzas: dict[tuple[str, str], domish.Element] = {}

    def hold(self, session: ClientSession, element: domish.Element | str) -> bool:
        key = _folding_key(element)
        if key is None or len(self.stanzas) >= MAX_HELD:
            self.release(session)
            return False
        self.stanzas.pop(key, None)  # the newer one takes its place, at the end
        assert not isinstance(element, str)
        self.stanzas[key] = element
        return True

    def release(self, session: ClientSession) -> None:
        stanzas, self.stanzas = self.stanzas, {}
        for stanza in stanzas.values():
            session.send_now(stanza)


def inactive(session: ClientSession) -> None:
    if session.holder is None:
        session.holder = Held()


def active(session: ClientSession) -> None:
    holder, session.holder = session.holder, None
    if isinstance(holder, Held):
        holder.release(session)


def leaving(session: ClientSession, state: object) -> None:
    """The session moves to another node of a cluster: what was held goes now, into the stream
    management ledger that moves with it (hooked before it), and the session arrives active."""
    active(session)


def element(session: ClientSession, nonza: domish.Element) -> None:
    """<inactive/> or <active/> on a bound stream (no answer: XEP-0352 section 5)."""
    if nonza.name == "inactive":
        inactive(session)
    elif nonza.name == "active":
        active(session)


def inline(session: ClientSession, nonza: domish.Element) -> None:
    """XEP-0386: <inactive/> (or <active/>) inside the Bind2 request; no answer element."""
    element(session, nonza)


CSI_FEATURE = domish.Element((NS_CSI, "csi"))


def install(registry: FeatureRegistry) -> None:
    registry.nonza(NS_CSI, element)
    registry.hook(SESSION_LEAVING, leaving, priority=10)  # before stream management takes its ledger
    registry.inline(NS_CSI, inline)
    registry.stream_feature(lambda domain: CSI_FEATURE, after_auth=True)
    registry.disco_feature(NS_CSI)


FEATURE = Feature("client-state", install)
