"""External components (XEP-0114) in a cluster: a component connects to one node; the others send
its stanzas there. Each node says which configured components are connected to it (a key per
component with a time to live, renewed at each heartbeat); a node where a component is not
connected looks the key up and hands the stanza to that node's router through its inbox."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.words.xish import domish

from sns_xmpp.cluster.inbox import Inbox
from sns_xmpp.cluster.keys import Keys
from sns_xmpp.observe.log_gate import GatedLogger

log = GatedLogger()

CACHE_SECONDS = 2.0  # how long a looked-up holder is taken as known (an absent one is asked each time)
FORGET = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class ComponentsAcrossNodes:
    def __init__(self, node: str, keys: Keys, commands: Any, inbox: Inbox, router: Any, clock: IReactorTime,
                 ttl_seconds: int) -> None:
        self.node = node
        self.keys = keys
        self.commands = commands
        self.inbox = inbox
        self.router = router
        self.clock = clock
        self.ttl_ms = ttl_seconds * 1000
        self.known: dict[str, tuple[str | None, float]] = {}  # domain -> (its node or None, until)
        self.waiting: dict[str, list[domish.Element]] = {}
        router.component_elsewhere = self.elsewhere
        router.component_watchers.append(self.watch)

    def watch(self, domain: str, connected: bool) -> None:
        """Said at once when a component connects here or goes (and again at each heartbeat)."""
        if connected:
            self._say(domain)
        else:
            self.commands.execute_command("EVAL", FORGET, 1, self.keys.component(domain), self.node)

    def announce(self) -> None:
        """At each heartbeat: the configured components connected here."""
        for domain in self.router.component_domains:
            if self.router.routes.get(domain) is not None:
                self._say(domain)

    def _say(self, domain: str) -> None:
        self.commands.execute_command("SET", self.keys.component(domain), self.node, "PX", self.ttl_ms)

    def elsewhere(self, stanza: domish.Element, domain: str) -> bool:
        """Send *stanza* to the node *domain*'s component is connected to; False: none is known."""
        if vars(stanza).get("cluster_hops", 0):
            return False  # sent here for it, and it is gone from here too: bounce
        holder, until = self.known.get(domain, (None, 0.0))
        if holder is not None and self.clock.seconds() < until:
            self.inbox.hand_over_route(holder, stanza)
            return True
        if vars(stanza).get("cluster_looked_up"):
            return False  # asked just now: no node has it
        stanza.cluster_looked_up = True  # type: ignore[attr-defined]
        waiting = self.waiting.get(domain)
        if waiting is not None:
            waiting.append(stanza)
            return True
        self.waiting[domain] = [stanza]
        looked_up = self.commands.execute_command("GET", self.keys.component(domain))

        def found(value: Any) -> None:
            node = value.decode() if isinstance(value, bytes) else value
            if node is not None and node != self.node:
                self.known[domain] = (node, self.clock.seconds() + CACHE_SECONDS)
            else:
                self.known.pop(domain, None)
            for each in self.waiting.pop(domain, []):
                self.router.route(each)  # now known: on to it, or bounced

        def failed(reason: Any) -> None:
            log.warn("cluster.component_lookup_failed domain={domain} error={error}", domain=domain,
                     error=str(reason.value))
            found(None)

        looked_up.addCallbacks(found, failed)
        return True
