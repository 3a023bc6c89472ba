"""Lists that every node answers whole, of entities that live in one node's memory each (MUC's
temporary public rooms, `FeatureRegistry.shared_listing`).

Each node keeps its own entries in a Redis hash per list, `listed:<list>:<node>` (entity ->
name), written as they change; the node asked for a list reads the hashes of the registered
nodes and adds its own from memory. A hash expires with its node: its time to live is the
heartbeat's (`node_timeout`), renewed at each heartbeat, so a node that dies leaves its entries
for at most that long, even if no node buries it (a node with no sessions is nobody's
replica); the node that buries it, or that stops, deletes it at once. The entries are written
whole again at the first heartbeat (a restarted node of the same id finds its old ones gone) and
after Redis lost its state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from sns_xmpp.cluster.keys import Keys
from sns_xmpp.cluster.redis_link import reply_pairs, reply_text
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.features import SharedListing

log = GatedLogger()

REDIS_WAIT = 1.0  # seconds a list waits for the other nodes' entries before it is answered without


class ListingsAcrossNodes:
    """The cluster's side of the feature registry's shared listings (`ListingAcrossNodes`)."""

    def __init__(self, node: str, keys: Keys, commands: Any, clock: IReactorTime, ttl_seconds: int,
                 listings: Mapping[str, SharedListing]) -> None:
        self.node = node
        self.keys = keys
        self.commands = commands
        self.clock = clock
        self.ttl_ms = ttl_seconds * 1000
        self.listings = dict(listings)

    def attach(self) -> None:
        for listing in self.listings.values():
            listing.across = self

    def detach(self) -> None:
        """The node stops: the features answer from memory again, and write nothing to Redis."""
        for listing in self.listings.values():
            listing.across = None

    # -- this node's entries ---------------------------------------------------------------------

    def put(self, listing: str, entity: str, name: str | None) -> None:
        key = self.keys.listed(listing, self.node)
        if name is None:
            self._command("HDEL", key, entity)
            return
        self._command("HSET", key, entity, name)
        self._command("PEXPIRE", key, self.ttl_ms)  # after the HSET, on the same connection: in order

    def renew(self) -> None:
        """At each heartbeat: the entries live as long as the node's heartbeat key."""
        for listing in self.listings:
            self._command("PEXPIRE", self.keys.listed(listing, self.node), self.ttl_ms)

    def republish(self) -> None:
        """Write this node's entries whole, in place of what Redis holds under its name (nothing,
        after Redis lost its state; a previous run's, for a node restarted with the same id)."""
        for name, listing in self.listings.items():
            key = self.keys.listed(name, self.node)
            self._command("DEL", key)
            here = listing.listed_here()
            if here:
                self._command("HSET", key, *[part for pair in sorted(here.items()) for part in pair])
                self._command("PEXPIRE", key, self.ttl_ms)

    def keys_of(self, node: str) -> list[str]:
        """A node's hashes, which go when it stops or is buried."""
        return [self.keys.listed(listing, node) for listing in self.listings]

    def _command(self, *args: Any) -> None:
        done: Deferred[Any] = self.commands.execute_command(*args)
        done.addErrback(lambda reason: log.warn("cluster.listing_write_failed command={command} error={error}",
                                                command=args[0], error=str(reason.value)))

    # -- the others' -------------------------------------------------------------------------------

    def others(self, listing: str) -> Deferred[dict[str, str]]:
        """The entries of every other registered node. Without Redis within REDIS_WAIT the list
        is answered without them (logged): a user gets this node's part, not an error."""
        members: Deferred[Any] = self.commands.execute_command("SMEMBERS", self.keys.nodes)

        def each(nodes: Any) -> Deferred[list[Any]]:
            names = sorted({reply_text(node) for node in nodes or []} - {self.node})
            return gatherResults([self.commands.execute_command("HGETALL", self.keys.listed(listing, name))
                                  for name in names], consumeErrors=True)

        def merged(hashes: list[Any]) -> dict[str, str]:
            entries: dict[str, str] = {}
            for flat in hashes:
                entries.update(reply_pairs(flat))
            return entries

        def without(reason: Failure) -> dict[str, str]:
            log.warn("cluster.listing_unread listing={listing} error={error}", listing=listing,
                     error=str(reason.value))
            return {}

        read = members.addCallback(each).addCallback(merged)
        return read.addTimeout(REDIS_WAIT, self.clock).addErrback(without)

    def forget(self, node: str) -> Deferred[Any]:
        """A dead node's entries go with it (its rooms were in its memory only)."""
        keys = self.keys_of(node)
        if not keys:
            return succeed(None)
        return DeferredList([self.commands.execute_command("DEL", *keys)], consumeErrors=True)


