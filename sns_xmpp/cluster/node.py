"""This node's place in the cluster: registration, heartbeats, and what happens when a node
(or Redis) goes away. The coordination is Redis keys with a time to live, nothing more."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime

from sns_xmpp.auth.throttle import AuthThrottle
from sns_xmpp.cluster import redis_link
from sns_xmpp.cluster.components import ComponentsAcrossNodes
from sns_xmpp.cluster.directory import Directory
from sns_xmpp.cluster.inbox import Inbox
from sns_xmpp.cluster.keys import Keys
from sns_xmpp.cluster.leases import EntityLeases
from sns_xmpp.cluster.listings import ListingsAcrossNodes
from sns_xmpp.cluster.redis_link import reply_pairs, reply_text
from sns_xmpp.cluster.resumption import CrossNodeResumption
from sns_xmpp.cluster.stored_messages import StoredWhileBinding
from sns_xmpp.cluster.throttle import SharedThrottleRecords
from sns_xmpp.config import ClusterConfig
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.features import SharedListing, TakeOver
from sns_xmpp.xmpp.features.stream_management import Resumption
from sns_xmpp.xmpp.hooks import PRESENCE_FROM_CLIENT, PRESENCE_TO_LOCAL, SESSION_BOUND, SESSION_UNBOUND
from sns_xmpp.xmpp.sessions import SessionManager

log = GatedLogger()

STOP_TIMEOUT = 5  # seconds the leaving steps may take
RECLAIM_LEASE = 60  # seconds one node holds the right to clean up after a dead one


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ClusterNode(service.Service):
    def __init__(self, config: ClusterConfig, sessions: SessionManager, clock: IReactorTime) -> None:
        self.config = config
        self.node = config.node_id or default_node_id()
        self.keys = Keys(config.key_prefix)
        self.sessions = sessions
        self.clock = clock
        self.commands: Any = None
        self.reader: Any = None
        self.subscriber: Any = None
        self.inbox: Inbox | None = None
        self.directory: Directory | None = None
        self.heartbeats: task.LoopingCall | None = None
        self.leases: EntityLeases | None = None
        self.leased: tuple[Any, dict[str, TakeOver]] | None = None
        self.components: ComponentsAcrossNodes | None = None  # the router and the domains to lease entities of
        self.listed: dict[str, SharedListing] = {}  # the features' lists every node answers whole
        self.listings: ListingsAcrossNodes | None = None
        self.resumption: Resumption | None = None  # stream management's, when it is on
        self.resumptions: CrossNodeResumption | None = None
        self.throttle: AuthThrottle | None = None  # the login throttle whose records the nodes share
        self.throttle_records: SharedThrottleRecords | None = None
        self.registered = False
        # After Redis lost its state every heartbeat key is gone at once, live nodes' too: none is
        # taken for dead until they have all had node_timeout to beat again.
        self.no_burials_until = 0.0
        self.subscribed_before = False
        self.resynced = 0  # the re-reads of shared state after the subscriber came back, done

    # -- start and stop ------------------------------------------------------

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        url = self.config.redis_url
        self.commands = redis_link.connect(url)
        self.reader = redis_link.connect(url)
        self.inbox = inbox = Inbox(self.node, self.keys, self.commands, self.reader, self.sessions, self.clock)
        self.directory = directory = Directory(self.node, self.keys, self.commands, self.sessions, inbox,
                                               self.clock)
        inbox.on_replace = directory.end_replaced
        stored = StoredWhileBinding(self.sessions, inbox, self.clock)
        stored.install()
        inbox.on_stored = stored.deliver_here
        directory.on_available = stored.available
        self.leases = EntityLeases(self.node, self.keys, self.commands, inbox, self.config.node_timeout)
        if self.leased is not None:
            router, services = self.leased
            inbox.route = router.route
            self.leases.wrap(router, services)
            self.components = ComponentsAcrossNodes(self.node, self.keys, self.commands, inbox, router, self.clock,
                                                    self.config.node_timeout)
        self.listings = ListingsAcrossNodes(self.node, self.keys, self.commands, self.clock,
                                            self.config.node_timeout, self.listed)
        self.listings.attach()
        if self.resumption is not None:
            self.resumptions = CrossNodeResumption(self.node, inbox, directory, self.sessions, self.resumption,
                                                   self.clock)
        if self.throttle is not None:
            self.throttle_records = SharedThrottleRecords(self.keys, self.commands, self.clock, self.throttle.policy,
                                                          directory.throttled)
            directory.on_throttled = self.throttle_records.heard
            self.throttle.shared = self.throttle_records
        directory.on_node_gone = self.node_left
        self.sessions.clustered = True
        self.sessions.after_client_stanza.append(directory.publish)
        self.sessions.hooks.hook(SESSION_BOUND, directory.publish)
        self.sessions.hooks.hook(SESSION_UNBOUND, lambda session, replaced: directory.withdraw(session))
        # After the caps feature's look (20), before presence's own handling (0).
        self.sessions.hooks.hook(PRESENCE_TO_LOCAL, directory.to_home, priority=10)
        self.sessions.hooks.hook(PRESENCE_FROM_CLIENT, directory.from_client, priority=10)
        self.sessions.rosters.on_written = directory.roster_written
        self.sessions.hooks.state_changed.append(directory.state_changed)
        self.heartbeats = task.LoopingCall(self.heartbeat)
        self.heartbeats.clock = self.clock
        self.heartbeats.start(self.config.heartbeat_interval, now=True).addErrback(
            lambda reason: log.failure("cluster.heartbeat_stopped", reason))
        inbox.start().addErrback(lambda reason: log.failure("cluster.inbox_failed", reason))
        self.subscriber = redis_link.subscribe(url, [self.keys.channel], directory.on_message, self.snapshot)
        log.info("cluster.joined node={node}", node=self.node)

    def stopService(self) -> Deferred[Any]:  # noqa: N802
        super().stopService()
        if self.throttle is not None:
            self.throttle.shared = None  # Redis's connections close: logins still under way ask this node
        if self.heartbeats is not None and self.heartbeats.running:
            self.heartbeats.stop()
        assert self.inbox is not None and self.directory is not None and self.listings is not None
        self.listings.detach()
        self.inbox.stop()
        # Leave: what our stream still holds goes to the accounts' other resources, or offline.
        # (Each step is a command on one connection, run in this order: the leases are given back
        # before the others hear that this node is gone.)
        steps = [self.inbox.reclaim(self.node),
                 self.leases.release() if self.leases is not None else succeed(None),
                 self.commands.execute_command("DEL", self.keys.node(self.node), self.keys.sessions(self.node),
                                               *self.listings.keys_of(self.node)),
                 self.commands.execute_command("SREM", self.keys.nodes, self.node)]
        self.directory.leaving()
        done = DeferredList(steps, consumeErrors=True)
        # Without Redis the commands would wait for it for ever: a node must stop all the same.
        done.addTimeout(STOP_TIMEOUT, self.clock)

        def disconnect(_: object) -> None:
            for connection in (self.commands, self.reader):
                connection.disconnect()
            self.subscriber.stopTrying()
            self.subscriber.disconnect()

        return done.addBoth(disconnect)

    def node_left(self, node: str) -> None:
        """*node* said it leaves (it stops): the leases it held are free, and what was asked of it
        (a session to resume) will not be answered."""
        if self.leased is not None and self.leases is not None:
            self.leases.forget_node(node)
        if self.resumptions is not None:
            self.resumptions.forget_node(node)

    def resume_across_nodes(self, resumption: Resumption | None) -> None:
        """Let a XEP-0198 <resume/> here take a session another node holds (cluster/resumption.py);
        called once the features are installed (None: stream management is off)."""
        self.resumption = resumption

    def share_throttle(self, throttle: AuthThrottle) -> None:
        """Count the login throttle's failures in Redis, where every node sees them
        (cluster/throttle.py); called before the service starts."""
        self.throttle = throttle

    def list_entities(self, listings: dict[str, SharedListing]) -> None:
        """Have every node answer these lists whole (MUC's public rooms): each node's part in
        Redis (cluster/listings.py); called once the features are installed."""
        self.listed = dict(listings)

    def lease_entities(self, router: Any, services: dict[str, TakeOver]) -> None:
        """Send each entity of these service domains (MUC rooms) to the one node holding its
        lease (cluster/leases.py), which calls the domain's take-over first; called once the
        features have made their routes."""
        self.leased = (router, dict(services))

    # -- heartbeats ------------------------------------------------------------

    def heartbeat(self) -> Deferred[None]:
        """Say this node lives; find Redis's lost state, and the nodes that died."""
        timeout_ms = self.config.node_timeout * 1000
        beat: Deferred[Any] = self.commands.execute_command(
            "SET", self.keys.node(self.node), json.dumps({"pid": os.getpid()}), "PX", timeout_ms, "GET")

        def beaten(previous: Any) -> Deferred[None] | None:
            if previous is None:
                self._register()
            if self.leases is not None:
                self.leases.renew()
            if self.listings is not None:
                self.listings.renew()
            if self.components is not None:
                self.components.announce()
            return self._check_nodes()

        def failed(reason: Any) -> None:
            log.warn("cluster.heartbeat_failed error={error}", error=str(reason.value))

        return beat.addCallbacks(beaten, failed)

    def _register(self) -> None:
        """First beat, or Redis lost what we had written (restarted without its data): write it all."""
        assert self.directory is not None
        if self.registered:
            log.warn("cluster.redis_state_lost node={node}", node=self.node)
            self.no_burials_until = self.clock.seconds() + self.config.node_timeout
            self.directory.republish()
        if self.listings is not None:
            self.listings.republish()  # at the first beat too: what a previous run of this id left goes
        self.registered = True
        self.commands.execute_command("SADD", self.keys.nodes, self.node)

    def _check_nodes(self) -> Deferred[None] | None:
        assert self.directory is not None
        known = sorted(self.directory.remote_nodes)
        if not known or self.clock.seconds() < self.no_burials_until:
            return None
        alive: Deferred[Any] = self.commands.execute_command("MGET", *[self.keys.node(n) for n in known])

        def check(values: Any) -> None:
            for node, value in zip(known, values or [], strict=False):
                if value is None:
                    self.bury(node)

        return alive.addCallback(check)

    # -- the others ----------------------------------------------------------------

    def snapshot(self) -> Deferred[None]:
        """Read every live node's resources (at start and after the subscriber reconnects, when
        announcements may have been missed); clean up after the dead ones."""
        assert self.directory is not None
        directory = self.directory
        resynced: Deferred[None] = succeed(None)
        if self.subscribed_before:  # a reconnection: Redis may have restarted, and lost the keys
            self.no_burials_until = self.clock.seconds() + self.config.node_timeout
            resynced = self.resync()
        self.subscribed_before = True
        if self.throttle_records is not None:  # the throttle's announcements may have been missed too
            self.throttle_records.load()
        members: Deferred[Any] = self.commands.execute_command("SMEMBERS", self.keys.nodes)

        def each(nodes: Any) -> Deferred[Any]:
            names = {reply_text(n) for n in nodes or []} | set(directory.remote_nodes)
            names.discard(self.node)
            return DeferredList([self._read_node(name) for name in sorted(names)], consumeErrors=True)

        read = members.addCallback(each)
        return DeferredList([read, resynced], consumeErrors=True).addCallback(lambda _: None)

    def resync(self) -> Deferred[None]:
        """The subscriber came back: announcements of changes to the features' shared account
        state (blocklists...) and to rosters may have been missed while it was away, and nothing
        sends them again. Each feature reads again what it holds (`shared_account_state`'s
        resync), and every cached roster is read again. Not at the first subscription: the node
        has just read what it holds then. (A change made elsewhere between a feature's read at
        start and that subscription is missed still: a window of the start's few milliseconds.)"""
        hooks = self.sessions.hooks
        names = sorted(hooks.resyncs)
        steps = [maybeDeferred(hooks.resyncs[name]) for name in names] + [self.sessions.rosters.reload_all()]
        log.info("cluster.resyncing node={node} states={states}", node=self.node, states=",".join(names))

        def done(results: list[tuple[bool, Any]]) -> None:
            for name, (ok, reason) in zip([*names, "rosters"], results, strict=True):
                if not ok:
                    log.failure("cluster.resync_failed state={state}", reason, state=name)
            self.resynced += 1
            log.info("cluster.resynced node={node} count={count}", node=self.node, count=self.resynced)

        return DeferredList(steps, consumeErrors=True).addCallback(done)

    def _read_node(self, node: str) -> Deferred[None]:
        assert self.directory is not None
        directory = self.directory
        alive: Deferred[Any] = self.commands.execute_command("EXISTS", self.keys.node(node))

        def read(exists: Any) -> Deferred[None] | None:
            if not int(exists):
                if self.clock.seconds() >= self.no_burials_until:
                    self.bury(node)
                return None
            entries: Deferred[Any] = self.commands.execute_command("HGETALL", self.keys.sessions(node))
            # Within the grace a node may not have written its resources again yet: add, drop nothing.
            whole = self.clock.seconds() >= self.no_burials_until
            return entries.addCallback(lambda flat: directory.load(node, reply_pairs(flat), whole))

        return alive.addCallback(read)

    def bury(self, node: str) -> None:
        """A node's heartbeat expired: its resources are gone; one live node delivers what its
        inbox still holds and removes its keys."""
        assert self.directory is not None and self.inbox is not None
        inbox = self.inbox
        self.directory.forget_node(node)
        if self.leases is not None:
            self.leases.forget_node(node)
        if self.resumptions is not None:
            self.resumptions.forget_node(node)
        log.warn("cluster.node_gone node={node}", node=node)
        lease: Deferred[Any] = self.commands.execute_command(
            "SET", self.keys.reclaim(node), self.node, "NX", "EX", RECLAIM_LEASE)

        def reclaim(won: Any) -> Deferred[Any] | None:
            if won is None:
                return None  # another node does it
            delivered = inbox.reclaim(node)
            delivered.addCallback(lambda count: log.info("cluster.reclaimed node={node} stanzas={count}",
                                                         node=node, count=count))
            return DeferredList([delivered,
                                 self.commands.execute_command("DEL", self.keys.sessions(node)),
                                 self.listings.forget(node) if self.listings is not None else succeed(None),
                                 self.commands.execute_command("SREM", self.keys.nodes, node)], consumeErrors=True)

        lease.addCallback(reclaim).addErrback(lambda reason: log.failure("cluster.bury_failed", reason))


