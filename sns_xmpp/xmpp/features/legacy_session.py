"""RFC 3921's session establishment (``<session/>``), which old clients still send after binding:
an empty result (RFC 6121 dropped it; the stream feature marks it optional, RFC 6121 appendix E)."""

from __future__ import annotations

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.stanzas import add_element

NS_SESSION_LEGACY = "urn:ietf:params:xml:ns:xmpp-session"


def answer(iq: domish.Element) -> None:
    return None


def answer_for_account(iq: domish.Element, owner: str, session: ClientSession | None) -> None:
    """Some clients address it to their own bare JID; nobody else has a session to establish."""
    if session is None:
        raise StanzaError("service-unavailable")
    return None


def _optional_session() -> domish.Element:
    session = domish.Element((NS_SESSION_LEGACY, "session"))
    add_element(session, "optional")
    return session


OPTIONAL_SESSION = _optional_session()


def install(registry: FeatureRegistry) -> None:
    registry.iq(NS_SESSION_LEGACY, "session", answer)
    registry.account_iq(NS_SESSION_LEGACY, "session", answer_for_account)
    registry.stream_feature(lambda domain: OPTIONAL_SESSION, after_auth=True)


FEATURE = Feature("legacy-session", install)
