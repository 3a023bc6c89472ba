"""The session directory: this node's resources, published; the other nodes', replicated.

Each node writes the state of its bound resources to a hash of its own in Redis and announces
each change on one channel. Every node keeps the other nodes' resources as `RemoteSession`s in its
`SessionManager`, from a snapshot read at start (and again after any reconnection, when messages
may have been missed) and from the announcements. So RFC 6121's delivery, presence broadcast,
roster pushes and carbons work across nodes with no Redis round trip on the stanza path.

Rosters are cached on each node that has a resource of their account; a node that writes a roster
change announces it, and the others read that roster again (xmpp/roster.py `reload`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from sns_xmpp.cluster.inbox import Inbox
from sns_xmpp.cluster.keys import Keys
from sns_xmpp.cluster.remote_session import RemoteSession, dumps, resume_digest
from sns_xmpp.jid import JID, InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.hooks import PRESENCE_FROM_CLIENT, PRESENCE_TO_LOCAL, run
from sns_xmpp.xmpp.serialization import standalone_client_xml
from sns_xmpp.xmpp.sessions import SessionManager

log = GatedLogger()

# Compares and deletes in one step: a node clears the owner key of a full JID only while it still
# names this node (another node may have bound the resource since).
ROSTER_PRESENCE = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe"})
CLEAR_OWNER = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# A resource's entry written (or, with no entry, removed) and announced in one command: every
# login writes an entry at bind, at its initial presence and at its end, and txredisapi's work per
# command is most of what the directory costs a node per login.
WRITE_AND_ANNOUNCE = ("if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) "
                      "else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end "
                      "if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[3]) end return 1")


def entry_of(session: ClientSession) -> dict[str, Any]:
    """What the other nodes need of a local resource to deliver to it as RFC 6121 says."""
    entry: dict[str, Any] = {"a": int(session.available), "p": session.priority,
                             "r": int(session.roster_requested), "c": int(session.carbons),
                             "t": session.connected_at}
    if session.presence is not None:
        entry["x"] = standalone_client_xml(session.presence)
    ledger = session.ledger
    if ledger is not None and ledger.resume_id is not None:
        entry["m"] = resume_digest(ledger.resume_id)
    return entry


# How long a feature's answer waits for Redis to take the announcement of its change
# (state_changed): while Redis is unreachable, txredisapi holds commands until it is back, and a
# client's block must not wait that long for its answer.
ANNOUNCE_WAIT_SECONDS = 2.0


class Directory:
    def __init__(self, node: str, keys: Keys, commands: Any, sessions: SessionManager, inbox: Inbox,
                 clock: IReactorTime | None = None) -> None:
        self.node = node
        self.clock = clock  # bounds the wait for an announcement (None: unbounded, for tests)
        self.keys = keys
        self.commands = commands
        self.sessions = sessions
        self.inbox = inbox
        self.published: dict[str, str] = {}  # full JID -> the entry last published, as text
        self.published_keys: dict[str, tuple[object, ...]] = {}  # full JID -> what that entry was made of
        self.remote_nodes: dict[str, set[str]] = {}  # node -> the full JIDs replicated from it
        # Told of a node that said it leaves (the leases it held are free).
        self.on_node_gone: Callable[[str], None] = lambda node: None
        # Told (node, account) of a resource there that became available with priority >= 0.
        self.on_available: Callable[[str, str], None] = lambda node, owner: None
        # Told (address, seconds) of an address that may have login throttle records that long.
        self.on_throttled: Callable[[str, float], None] = lambda address, seconds: None

    # -- this node's resources --------------------------------------------------

    def publish(self, session: ClientSession) -> None:
        """Publish the session's state if it changed (after each stanza from its client)."""
        if session.remote:
            return
        # What the entry is made of, compared before anything is serialised: a chat message
        # changes none of it, and this runs after every stanza from a client.
        # (The presence itself, held and compared by identity: a new presence is a new element;
        # and so is the ledger, which XEP-0198's <enable/> makes: its resumption id is published.)
        key = (session.available, session.priority, session.roster_requested, session.carbons, session.presence,
               session.ledger)
        last = self.published_keys.get(session.full)
        if last is not None and last[:4] == key[:4] and last[4] is key[4] and last[5] is key[5]:
            return
        if self.sessions.session(session.jid) is not session:
            return
        self.published_keys[session.full] = key
        text = dumps(entry_of(session))
        if self.published.get(session.full) == text:
            return
        first = session.full not in self.published
        self.published[session.full] = text
        self._write(session.full, text, {"n": self.node, "f": session.full, "e": text})
        if first:
            self._claim(session.full)

    def _claim(self, full: str) -> None:
        """Take the full JID's owner key; a node that held it has its session replaced (a bind of
        the same resource on two nodes at once: the last one wins, as on one node)."""
        claimed: Deferred[Any] = self.commands.execute_command("SET", self.keys.owner(full), self.node, "GET")

        def previous(owner: Any) -> None:
            owner = owner.decode() if isinstance(owner, bytes) else owner
            if owner and owner != self.node and owner in self.remote_nodes:  # a live node, not a dead one's key
                self.inbox.replace(owner, full)

        claimed.addCallbacks(previous, lambda reason: log.warn("cluster.claim_failed error={error}",
                                                               error=str(reason.value)))

    def withdraw(self, session: ClientSession) -> None:
        self.published_keys.pop(session.full, None)
        if session.remote or self.published.pop(session.full, None) is None:
            return
        # (One that moved is announced where it went: moved_to.)
        self._write(session.full, "", None if session.moved else {"n": self.node, "f": session.full, "e": None})
        self.commands.execute_command("EVAL", CLEAR_OWNER, 1, self.keys.owner(session.full), self.node)

    def moved_to(self, node: str, full: str, entry: dict[str, Any]) -> None:
        """A session of this node moved to *node* (a XEP-0198 resumption there): every node, this
        one too, sends the resource's stanzas there from now on, without waiting for that node
        to publish it (which it does once it has bound it)."""
        self._announce({"n": node, "f": full, "e": dumps(entry)})
        self.apply(node, full, entry)

    def republish(self) -> None:
        """Write every local resource again (Redis lost them: a restart without its data)."""
        self.published.clear()
        self.published_keys.clear()
        for session in self.sessions.all_sessions():
            self.publish(session)

    def state_changed(self, name: str, owner: str) -> Deferred[None] | None:
        """A feature's per-account state changed here (hooks.state_changed): the others forget it.
        Fires once Redis has taken the announcement, which it has then written to every other
        node's subscriber: an answer the feature holds back until then (a block's) reaches its
        client after the other nodes were told, so a stanza the client's contacts send through
        them next finds the change (Linux's epoll reports sockets in the order they became
        ready). A Redis that fails to take it is logged, not the feature's failure: the change
        is in the store, and the nodes read it again when their subscriber comes back. One that
        says nothing for ANNOUNCE_WAIT_SECONDS (unreachable) is logged too, and the Deferred fires
        then all the same."""
        published = self._announce({"n": self.node, "state": name, "owner": owner})
        if not isinstance(published, Deferred):
            return None
        told: Deferred[None] = Deferred()
        timer = None if self.clock is None else self.clock.callLater(ANNOUNCE_WAIT_SECONDS, self._not_taken,
                                                                      told, name, owner)

        def taken(result: object) -> None:
            if isinstance(result, Failure):
                log.failure("cluster.announce_failed state={state} owner={owner}", result, state=name, owner=owner)
            if timer is not None and timer.active():
                timer.cancel()
            if not told.called:
                told.callback(None)

        published.addBoth(taken)
        return told

    @staticmethod
    def _not_taken(told: Deferred[None], name: str, owner: str) -> None:
        log.warn("cluster.announce_slow state={state} owner={owner} seconds={seconds} (answered meanwhile)",
                 state=name, owner=owner, seconds=ANNOUNCE_WAIT_SECONDS)
        told.callback(None)

    def leaving(self) -> None:
        """This node stops: the others forget its resources now, not after node_timeout."""
        self._announce({"n": self.node, "gone": self.node})

    def throttled(self, address: str, seconds: float) -> None:
        """The login throttle has records of *address* for *seconds* (cluster/throttle.py): the
        others read Redis for a right login from it until then. (A duration, not a time: the
        nodes' clocks need not agree.)"""
        self._announce({"n": self.node, "throttle": address, "ttl": seconds})

    def roster_written(self, owner: str) -> None:
        self._announce({"n": self.node, "roster": owner})

    def _write(self, full: str, text: str, message: dict[str, Any] | None) -> None:
        """Set this node's entry of *full* to *text* ('': remove it) and announce *message*."""
        self.commands.execute_command(
            "EVAL", WRITE_AND_ANNOUNCE, 1, self.keys.sessions(self.node), full, text,
            "" if message is None else json.dumps(message, separators=(",", ":")), self.keys.channel)

    def _announce(self, message: dict[str, Any]) -> Any:
        """PUBLISH *message* on the cluster's channel; Redis's answer (a Deferred, from txredisapi)."""
        return self.commands.execute_command("PUBLISH", self.keys.channel, json.dumps(message, separators=(",", ":")))

    def to_home(self, presence: domish.Element, to: JID) -> Deferred[None] | None:
        """A subscription request or answer, or a probe, for an account with resources on other
        nodes only goes to one of those nodes, which holds the account's roster in memory, as
        one server would (two nodes writing one roster from two copies would lose changes)."""
        if presence.getAttribute("type") not in ROSTER_PRESENCE:
            return None
        resources = self.sessions.users.get(to.userhost())
        if not resources:
            return None
        homes = sorted({s.node for s in resources.values() if isinstance(s, RemoteSession)})
        if not homes:
            return None
        if any(not s.remote for s in resources.values()):
            # This node holds the roster too, and another node may just have changed it: read it
            # again, then go on with the handlers after this one.
            return self._fresh_roster_then(PRESENCE_TO_LOCAL, self.to_home, to.userhost(), presence, to)
        return self.inbox.hand_over(homes[0], presence)

    def from_client(self, session: ClientSession, presence: domish.Element) -> Deferred[None] | None:
        """A subscription request or answer from a resource whose account has resources on other
        nodes too: its roster is read again first (another node may just have changed it)."""
        if presence.getAttribute("type") not in ROSTER_PRESENCE or not any(
                s.remote for s in self.sessions.users.get(session.bare, {}).values()):
            return None
        return self._fresh_roster_then(PRESENCE_FROM_CLIENT, self.from_client, session.bare, session, presence)

    def _fresh_roster_then(self, event: str, me: Callable[..., Any], owner: str, *args: Any) -> Deferred[None]:
        chain = self.sessions.hooks.chain(event)
        rest = chain[chain.index(me) + 1:]
        reloaded = self.sessions.rosters.reload(owner)
        reloaded.addErrback(lambda reason: log.failure("cluster.roster_reload_failed", reason))
        return reloaded.addCallback(lambda _: run(rest, *args)).addCallback(lambda _: None)

    # -- the other nodes' resources ---------------------------------------------

    def on_message(self, channel: str, text: str) -> None:
        message = json.loads(text)
        node = message.get("n")
        if node == self.node:
            return
        if "roster" in message:
            owner = message["roster"]
            if self.sessions.rosters.cached(owner) is not None:
                self.sessions.rosters.reload(owner).addErrback(
                    lambda reason: log.failure("cluster.roster_reload_failed", reason))
            return
        if "throttle" in message:
            self.on_throttled(message["throttle"], float(message["ttl"]))
            return
        if "state" in message:
            changed_elsewhere = self.sessions.hooks.shared_state.get(message["state"])
            if changed_elsewhere is not None:
                changed_elsewhere(message["owner"])
            return
        if "gone" in message:
            self.forget_node(message["gone"])
            self.on_node_gone(message["gone"])
            return
        entry = message.get("e")
        self.apply(node, message["f"], json.loads(entry) if entry else None)

    def apply(self, node: str, full: str, entry: dict[str, Any] | None) -> None:
        try:
            jid = parse_jid(full)
        except InvalidFormat:
            return
        bare, resource = jid.userhost(), jid.resource or ""
        resources = self.sessions.users.get(bare)
        existing = resources.get(resource) if resources is not None else None
        if entry is None:
            if resources is not None and isinstance(existing, RemoteSession) and existing.node == node:
                del resources[resource]
                if not resources:
                    del self.sessions.users[bare]
            self.remote_nodes.get(node, set()).discard(full)
            return
        if existing is not None and not existing.remote:
            # Bound here too: the owner key decides which one stays (see _claim).
            return
        if isinstance(existing, RemoteSession) and existing.node == node:
            was_target = existing.available and existing.priority >= 0
            existing.update(entry)
            if not was_target and existing.available and existing.priority >= 0:
                self.on_available(node, bare)
            return
        remote = RemoteSession(jid, node, self.inbox.forward, self.inbox.replace)
        remote.update(entry)
        self.sessions.users.setdefault(bare, {})[resource] = remote
        self.remote_nodes.setdefault(node, set()).add(full)
        if remote.available and remote.priority >= 0:
            self.on_available(node, bare)

    def _apply_text(self, text: Any, node: str, full: str) -> None:
        if text:
            self.apply(node, full, json.loads(text))

    def load(self, node: str, entries: dict[str, str], whole: bool = True) -> None:
        """A node's hash (the snapshot): take it, and (when it is *whole*) drop what it no longer has."""
        for full in (self.remote_nodes.get(node, set()) - set(entries)) if whole else ():
            self.apply(node, full, None)
        for full, text in entries.items():
            self.apply(node, full, json.loads(text))

    def forget_node(self, node: str) -> None:
        """The node is gone: its resources are no longer anyone's."""
        for full in list(self.remote_nodes.pop(node, set())):
            self.apply(node, full, None)
        self.remote_nodes.pop(node, None)

    def end_replaced(self, full: str, by: str) -> None:
        """Another node bound this resource after us: ours ends with a conflict (RFC 6120 7.7.2.2)."""
        try:
            session = self.sessions.session(parse_jid(full))
        except InvalidFormat:
            return
        if session is None or session.remote:
            return
        self.published.pop(full, None)  # the other node owns the entries now
        self.published_keys.pop(full, None)
        self.commands.execute_command("HDEL", self.keys.sessions(self.node), full)
        self.sessions.unbind(session, replaced=True)
        session.stream.fail(StreamError("conflict", text="replaced by a new session"))
        if by:  # its announcement came while ours was still here, and was set aside: read it now
            entry: Deferred[Any] = self.commands.execute_command("HGET", self.keys.sessions(by), full)
            entry.addCallback(self._apply_text, by, full)
