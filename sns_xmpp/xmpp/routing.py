"""Routing between the local domains, external components and remote servers, on wokkel's Router.

A domain with a route of its own (hosted, a service of one, a connected component) is looked up
first, as before; only a stanza for none of them goes on to `remote`, the server-to-server
links (s2s/federation.py), when they are on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.words.xish import domish, utility
from wokkel.component import Router

from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.observe.metrics import Metrics
from sns_xmpp.xmpp.stanzas import error_reply, may_bounce

log = GatedLogger()


class RemoteRoute(Protocol):
    def send(self, stanza: domish.Element) -> None: ...


class StanzaRouter(Router):
    """wokkel's Router without its per-stanza debug log of the whole stanza.

    That log line serialises every routed stanza (a cost on the hottest path)
    and writes message bodies to the log, which this project never does.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        super().__init__()
        self.metrics = metrics or Metrics()
        # Configured component domains: while one is not connected, its
        # stanzas bounce with service-unavailable, not remote-server-not-found.
        self.component_domains: set[str] = set()
        # The route for every other domain: the server-to-server links, when they are on.
        self.remote: RemoteRoute | None = None
        # In a cluster: where a configured component not connected here may be connected (another
        # node, cluster/components.py); it answers False when no node has it.
        self.component_elsewhere: Callable[[domish.Element, str], bool] | None = None
        # Told (domain, connected) as a component connects and goes (the cluster says so to the others).
        self.component_watchers: list[Callable[[str, bool], None]] = []

    def route(self, stanza: domish.Element) -> Deferred[None] | None:
        """Send *stanza* towards its domain; a Deferred when a local delivery finishes later."""
        self.metrics.stanza(stanza.name)
        try:
            host = parse_jid(stanza.getAttribute("to", "")).host
        except InvalidFormat:
            host = None
        destination = self.routes.get(host) if host else None
        if destination is None:
            destination = self.routes.get(None)
            if destination is None:
                if host is not None and host in self.component_domains and self.component_elsewhere is not None:
                    if self.component_elsewhere(stanza, host):
                        return None
                if self.remote is None or host is None or host in self.component_domains:
                    self._unroutable(stanza, host)
                    return None
                destination = self.remote
        sent: Deferred[None] | None = destination.send(stanza)  # a component's route: None
        return sent

    def _unroutable(self, stanza: domish.Element, host: str | None) -> None:
        # No server-to-server links (or no domain, or an absent component): unreachable.
        log.debug("route.unroutable to={to}", to=stanza.getAttribute("to"))
        if may_bounce(stanza) and stanza.getAttribute("from"):
            absent_component = host in self.component_domains
            reply = error_reply(stanza, "service-unavailable" if absent_component else "remote-server-not-found")
            if self.routes.get(parse_jid(reply["to"]).host) is not None:
                self.route(reply)


class LocalRoute(utility.EventDispatcher):
    """The Router's view of a hosted domain: stanzas for it go to ``deliver``."""

    def __init__(self, deliver: Callable[[domish.Element], Deferred[None] | None]) -> None:
        super().__init__()
        self.deliver = deliver

    def send(self, stanza: domish.Element) -> Deferred[None] | None:
        """Deliver; a Deferred when the delivery finishes later (see stream_management)."""
        return self.deliver(stanza)
