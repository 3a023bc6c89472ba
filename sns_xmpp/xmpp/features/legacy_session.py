"""RFC 3921's session establishment (``<session/>``), which old clients still send after binding:
an empty result (RFC 6121 dropped it; the stream features mark it optional)."""

from __future__ import annotations

from twisted.words.xish import domish

from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.sessions import NS_SESSION_LEGACY


def answer(iq: domish.Element) -> None:
    return None


def install(registry: FeatureRegistry) -> None:
    registry.iq(NS_SESSION_LEGACY, "session", answer)


FEATURE = Feature("legacy-session", install)
