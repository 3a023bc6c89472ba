"""One node per entity of a stateful service (a MUC room), by a Redis lease.

A room's occupants, history and roles live in the memory of one node, as on a single server. The
node that first gets a stanza for a room with no holder takes the lease (SET NX with a time to
live, renewed at each heartbeat) and serves the room; the other nodes send the room's stanzas to
it through its inbox. When the holder dies its leases expire after node_timeout, and the next
stanza for the room makes another node take it (a persistent room is read from the store).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.words.xish import domish

from sns_xmpp.cluster.inbox import Inbox
from sns_xmpp.cluster.keys import Keys
from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger

log = GatedLogger()

# Extends a lease only while it is still this node's.
RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


class LeasedRoute:
    """The router's route for a service domain whose entities are leased (wraps the local one)."""

    def __init__(self, leases: EntityLeases, local: Any) -> None:
        self.leases = leases
        self.local = local

    def send(self, stanza: domish.Element) -> Deferred[None] | None:
        return self.leases.deliver(self.local, stanza)


class EntityLeases:
    def __init__(self, node: str, keys: Keys, commands: Any, inbox: Inbox, ttl_seconds: int) -> None:
        self.node = node
        self.keys = keys
        self.commands = commands
        self.inbox = inbox
        self.ttl_ms = ttl_seconds * 1000
        self.held: set[str] = set()  # entities this node serves
        self.owners: dict[str, str] = {}  # entities another node serves, as last learnt
        self.waiting: dict[str, list[tuple[Any, domish.Element]]] = {}  # stanzas while the lease is asked

    def wrap(self, router: Any, domains: list[str]) -> None:
        for domain in domains:
            router.routes[domain] = LeasedRoute(self, router.routes[domain])

    def deliver(self, local: Any, stanza: domish.Element) -> Deferred[None] | None:
        try:
            to = parse_jid(stanza.getAttribute("to", ""))
        except InvalidFormat:
            return local.send(stanza)
        if to.user is None:
            return local.send(stanza)  # the service itself (disco of the rooms): any node answers
        entity = to.userhost()
        if entity in self.held:
            return local.send(stanza)
        owner = self.owners.get(entity)
        if owner is not None:
            return self.inbox.hand_over_route(owner, stanza)
        queue = self.waiting.get(entity)
        if queue is not None:
            queue.append((local, stanza))
            return None
        self.waiting[entity] = [(local, stanza)]
        asked: Deferred[Any] = self.commands.execute_command(
            "SET", self.keys.lease(entity), self.node, "NX", "PX", self.ttl_ms, "GET")
        asked.addCallbacks(self._answered, self._failed, callbackArgs=(entity,), errbackArgs=(entity,))
        return None

    def _answered(self, previous: Any, entity: str) -> None:
        previous = previous.decode() if isinstance(previous, bytes) else previous
        if previous is None or previous == self.node:
            self.held.add(entity)
            self.owners.pop(entity, None)
        else:
            self.owners[entity] = previous
        for local, stanza in self.waiting.pop(entity, []):
            self.deliver(local, stanza)

    def _failed(self, reason: Any, entity: str) -> None:
        log.warn("cluster.lease_failed entity={entity} error={error}", entity=entity, error=str(reason.value))
        for local, stanza in self.waiting.pop(entity, []):
            local.send(stanza)  # without Redis, serve it here rather than drop it

    def renew(self) -> None:
        """At each heartbeat: keep this node's leases; drop the ones it lost."""
        for entity in list(self.held):
            renewed: Deferred[Any] = self.commands.execute_command(
                "EVAL", RENEW, 1, self.keys.lease(entity), self.node, self.ttl_ms)
            renewed.addCallback(self._renewed, entity)

    def _renewed(self, result: Any, entity: str) -> None:
        if not int(result or 0):
            self.held.discard(entity)

    def forget_node(self, node: str) -> None:
        """A dead node's entities: ask for their leases again at their next stanza."""
        for entity in [e for e, owner in self.owners.items() if owner == node]:
            del self.owners[entity]

