"""Protocol features as modules, registered in one place (issue 14; Prosody's mod_*).

A feature is a module with a `FEATURE` object providing `IFeature`: its ``install`` receives the
`FeatureRegistry` and registers what the feature handles (today: the IQs the server answers for
its own domain, and the disco#info features it announces). `built_in.BUILT_IN` is the one list
of them, and `built_in.install_features` installs it. Adding a XEP adds a module here and a line
to `BUILT_IN`; the session core knows none of them by name. `entity_time` (XEP-0202) is the worked example in
docs/architecture.md.

Presence, roster, offline storage and stream management are still wired into `SessionManager`
(their disco features are announced here in `CORE_DISCO_FEATURES` until they move).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, Interface, implementer

from sns_xmpp.xmpp.sessions import IQHandler, SessionManager

# Features of the session core that are not modules yet: RFC 6121 rosters, XEP-0160 offline
# messages, RFC 6121 pre-approved subscriptions.
CORE_DISCO_FEATURES = ("jabber:iq:roster", "msgoffline", "urn:xmpp:features:pre-approval")


@dataclass
class FeatureRegistry:
    """What the installed features handle; `SessionManager.answer_iq` reads the IQ table."""

    sessions: SessionManager
    router: Any  # the StanzaRouter (wokkel's Router): its routes name the connected components
    clock: IReactorTime
    disco_features: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)

    def iq(self, namespace: str, name: str, handler: IQHandler) -> None:
        """Answer IQs to the server whose child is ``{namespace}name`` with *handler*: it returns
        the result's child, None for an empty result, a Deferred of either, or raises StanzaError."""
        key = (namespace, name)
        if key in self.sessions.iq_handlers:
            raise ValueError(f"two features answer {{{namespace}}}{name}")
        self.sessions.iq_handlers[key] = handler

    def disco_feature(self, var: str) -> None:
        """Announce *var* in the server's disco#info (XEP-0030)."""
        if var not in self.disco_features:
            self.disco_features.append(var)


class IFeature(Interface):
    name = Attribute("A stable name, for logs and configuration (e.g. 'entity-time')")

    def install(registry: FeatureRegistry) -> None:
        """Register with *registry* what this feature handles."""


@implementer(IFeature)
@dataclass(frozen=True)
class Feature:
    """The usual provider of IFeature: a name and an install function."""

    name: str
    install: Callable[[FeatureRegistry], None]
