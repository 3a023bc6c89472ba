"""The Redis keys and channel of one cluster (all under `[cluster] key_prefix`)."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def nodes(self) -> str:
        """A set: every node that has registered and not been cleaned up after."""
        return f"{self.prefix}nodes"

    def node(self, node: str) -> str:
        """A node's heartbeat: present while the node lives (it expires after node_timeout)."""
        return f"{self.prefix}node:{node}"

    def sessions(self, node: str) -> str:
        """A hash: full JID -> the state of a resource bound to the node (directory.entry_of)."""
        return f"{self.prefix}sessions:{node}"

    def owner(self, full: str) -> str:
        """Which node a full JID is bound to: the tie-break for the same resource on two nodes."""
        return f"{self.prefix}owner:{full}"

    def inbox(self, node: str) -> str:
        """A stream: stanzas for the node's resources, from the other nodes."""
        return f"{self.prefix}inbox:{node}"

    def reclaim(self, node: str) -> str:
        """Held by the one node that cleans up after a node that died."""
        return f"{self.prefix}reclaim:{node}"

    def component(self, domain: str) -> str:
        """The node an external component (XEP-0114) is connected to, while it is."""
        return f"{self.prefix}component:{domain}"

    def lease(self, entity: str) -> str:
        """The node serving a stateful service's entity (a MUC room), while it lives."""
        return f"{self.prefix}lease:{entity}"

    def listed(self, listing: str, node: str) -> str:
        """A hash: entity -> name, the entries a node lists in a shared listing (MUC's temporary
        public rooms, cluster/listings.py), expiring with the node's heartbeat."""
        return f"{self.prefix}listed:{listing}:{node}"

    def throttle(self, record: tuple[str, ...]) -> str:
        """A record of the login throttle (auth/throttle.py's key: ("pair", address, account),
        ("address", address) or ("account", account)): a hash of its failures (f) and the end of
        its block (b, Redis's clock in ms), expiring when the throttle would forget it."""
        return f"{self.prefix}throttle:{json.dumps(list(record), ensure_ascii=False, separators=(',', ':'))}"

    @property
    def throttled_addresses(self) -> str:
        """A sorted set: the addresses with a pair record of the throttle, each scored with the
        time (Redis's, ms) until which it may have one; what a node reads when it (re)subscribes."""
        return f"{self.prefix}throttled-addresses"

    @property
    def channel(self) -> str:
        """Where nodes announce directory and roster changes."""
        return f"{self.prefix}directory"


INBOX_GROUP = "nodes"
