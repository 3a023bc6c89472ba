"""One node per entity of a stateful service (a MUC room), by a Redis lease.

A room's occupants, history and roles live in the memory of one node, as on a single server. The
node that first gets a stanza for a room with no holder takes the lease (SET NX with a time to
live, renewed at each heartbeat) and serves the room; the other nodes send the room's stanzas to
it through its inbox. When the holder dies its leases expire after node_timeout, and the next
stanza for the room makes another node take it; a node that stops gives its leases back at once.
The node that takes an entity calls the service's take-over first (a persistent room is read
from the store: it may have been created, or changed, after this node read the rooms at start),
and the entity's stanzas wait for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.words.xish import domish

from sns_xmpp.cluster.inbox import Inbox
from sns_xmpp.cluster.keys import Keys
from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.features import TakeOver

log = GatedLogger()

# Extends a lease only while it is still this node's.
RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
# Gives a lease back only while it is still this node's.
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class LeasedRoute:
    """The router's route for a service domain whose entities are leased (wraps the local one)."""

    def __init__(self, leases: EntityLeases, local: Any, take_over: TakeOver) -> None:
        self.leases = leases
        self.local = local
        self.take_over = take_over

    def send(self, stanza: domish.Element) -> Deferred[None] | None:
        return self.leases.deliver(self, stanza)


class EntityLeases:
    def __init__(self, node: str, keys: Keys, commands: Any, inbox: Inbox, ttl_seconds: int) -> None:
        self.node = node
        self.keys = keys
        self.commands = commands
        self.inbox = inbox
        self.ttl_ms = ttl_seconds * 1000
        self.held: set[str] = set()  # entities this node serves
        self.owners: dict[str, str] = {}  # entities another node serves, as last learnt
        # Stanzas while the lease is asked, or while the service takes the entity over.
        self.waiting: dict[str, list[tuple[LeasedRoute, domish.Element]]] = {}
        self.stopping = False

    def wrap(self, router: Any, services: Mapping[str, TakeOver]) -> None:
        for domain, take_over in services.items():
            router.routes[domain] = LeasedRoute(self, router.routes[domain], take_over)

    def deliver(self, route: LeasedRoute, stanza: domish.Element) -> Deferred[None] | None:
        try:
            to = parse_jid(stanza.getAttribute("to", ""))
        except InvalidFormat:
            return route.local.send(stanza)
        if to.user is None:
            return route.local.send(stanza)  # the service itself (disco of the rooms): any node answers
        entity = to.userhost()
        if entity in self.held or self.stopping:
            # (A stopping node has given its leases back; what its sessions' ends still send to
            # its rooms, their leaving presence, is served from its memory, not by a new lease.)
            return route.local.send(stanza)
        owner = self.owners.get(entity)
        if owner is not None:
            return self.inbox.hand_over_route(owner, stanza)
        queue = self.waiting.get(entity)
        if queue is not None:
            queue.append((route, stanza))
            return None
        self.waiting[entity] = [(route, stanza)]
        asked: Deferred[Any] = self.commands.execute_command(
            "SET", self.keys.lease(entity), self.node, "NX", "PX", self.ttl_ms, "GET")
        asked.addCallbacks(self._answered, self._failed, callbackArgs=(route, entity), errbackArgs=(entity,))
        return None

    def _answered(self, previous: Any, route: LeasedRoute, entity: str) -> None:
        previous = previous.decode() if isinstance(previous, bytes) else previous
        if previous is not None and previous != self.node:
            self.owners[entity] = previous
            self._go_on(entity)
            return
        # Ours: the service takes the entity over before it serves its first stanza here (still
        # waiting, with any that arrive meanwhile).
        try:
            taking = route.take_over(entity)
        except Exception:
            log.failure("cluster.take_over_failed entity={entity}", entity=entity)
            taking = None
        if taking is None:
            self._taken(None, entity)
            return
        taking.addErrback(lambda reason: log.failure("cluster.take_over_failed entity={entity}", reason,
                                                     entity=entity))
        taking.addCallback(self._taken, entity)

    def _taken(self, _: object, entity: str) -> None:
        self.held.add(entity)
        self.owners.pop(entity, None)
        self._go_on(entity)

    def _go_on(self, entity: str) -> None:
        for route, stanza in self.waiting.pop(entity, []):
            self.deliver(route, stanza)

    def _failed(self, reason: Any, entity: str) -> None:
        log.warn("cluster.lease_failed entity={entity} error={error}", entity=entity, error=str(reason.value))
        for route, stanza in self.waiting.pop(entity, []):
            route.local.send(stanza)  # without Redis, serve it here rather than drop it

    def renew(self) -> None:
        """At each heartbeat: keep this node's leases; drop the ones it lost."""
        for entity in list(self.held):
            renewed: Deferred[Any] = self.commands.execute_command(
                "EVAL", RENEW, 1, self.keys.lease(entity), self.node, self.ttl_ms)
            renewed.addCallback(self._renewed, entity)

    def _renewed(self, result: Any, entity: str) -> None:
        if not int(result or 0):
            self.held.discard(entity)

    def release(self) -> Deferred[Any]:
        """This node stops: its leases go back now, so the next stanza for each of its entities
        makes another node take it at once rather than after node_timeout."""
        self.stopping = True
        held, self.held = sorted(self.held), set()
        return DeferredList([self.commands.execute_command("EVAL", RELEASE, 1, self.keys.lease(entity), self.node)
                             for entity in held], consumeErrors=True)

    def forget_node(self, node: str) -> None:
        """A dead node's entities: ask for their leases again at their next stanza."""
        for entity in [e for e, owner in self.owners.items() if owner == node]:
            del self.owners[entity]

