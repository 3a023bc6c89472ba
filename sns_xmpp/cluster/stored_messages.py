"""Messages stored offline on one node while the account's new resource was binding on another.

A node decides that a message goes to offline storage from its replica of the directory. A
resource that has just become available on another node is not in that replica until its
announcement arrives (milliseconds), and the other node may have read the account's stored
messages (SESSION_AVAILABLE) before this node's write was in the store: the message would wait
for the next login. So a node that stores a message offline remembers the account for a few
seconds, and nudges the node of an available resource of it (through that node's inbox) to
deliver the account's stored messages again (STORED_MESSAGES_WAITING; the offline feature sends
none twice):

- once its write is done, if its replica shows such a resource by then (the announcement came
  while the write was on its way);
- when the announcement of such a resource comes later, while the account is remembered.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.words.xish import domish

from sns_xmpp.cluster.inbox import Inbox
from sns_xmpp.cluster.remote_session import RemoteSession
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.client_session import ClientSession, stored_messages_target
from sns_xmpp.xmpp.hooks import MESSAGE_OFFLINE, STORED_MESSAGES_WAITING, run
from sns_xmpp.xmpp.sessions import SessionManager

log = GatedLogger()

REMEMBER_SECONDS = 5.0  # far longer than an announcement takes to reach the other nodes
MAX_REMEMBERED = 10_000  # accounts; the oldest are forgotten first
PRIORITY = 100  # before every other handler of MESSAGE_OFFLINE, whose outcome it waits for


class StoredWhileBinding:
    def __init__(self, sessions: SessionManager, inbox: Inbox, clock: IReactorTime) -> None:
        self.sessions = sessions
        self.inbox = inbox
        self.clock = clock
        self.recent: OrderedDict[str, float] = OrderedDict()  # account -> when a message was stored for it
        self.chain = sessions.hooks.chain(MESSAGE_OFFLINE)

    def install(self) -> None:
        """Watch offline storage, if a feature keeps messages and delivers them again on request."""
        if self.sessions.hooks.chain(STORED_MESSAGES_WAITING):
            self.sessions.hooks.hook(MESSAGE_OFFLINE, self.storing, priority=PRIORITY)

    # -- this node stores ------------------------------------------------------------------------

    def storing(self, owner: str, message: domish.Element) -> Any:
        """MESSAGE_OFFLINE, first: the handlers after this one store the message; once they have,
        the account's stored messages go to a resource that became available meanwhile."""
        chain = self.chain
        outcome = run(chain[chain.index(self.storing) + 1:], owner, message)
        if not isinstance(outcome, Deferred):
            return outcome  # refused at once (or not stored at all): nothing waits in the store
        self._remember(owner)
        return outcome.addCallback(self._stored, owner)

    def _remember(self, owner: str) -> None:
        now = self.clock.seconds()
        recent = self.recent
        recent.pop(owner, None)
        recent[owner] = now
        while recent and (len(recent) > MAX_REMEMBERED or next(iter(recent.values())) < now - REMEMBER_SECONDS):
            recent.popitem(last=False)

    def _stored(self, result: object, owner: str) -> object:
        best = stored_messages_target(self.sessions.message_targets(owner))
        if best is not None:
            # Available since this node chose offline storage: it may have read the stored
            # messages before this one was there. (A resource of this node's is the offline
            # feature's own to serve once the write is done: offline.store_for_later.)
            self.recent.pop(owner, None)
            if best.remote:
                self._nudge(best)
        return result

    # -- another node's resource -----------------------------------------------------------------

    def available(self, node: str, owner: str) -> None:
        """The directory's word: a resource of *owner* on *node* became available (priority >= 0)."""
        when = self.recent.pop(owner, None) if self.recent else None
        if when is None or when < self.clock.seconds() - REMEMBER_SECONDS:
            return
        best = stored_messages_target(s for s in self.sessions.message_targets(owner)
                                      if isinstance(s, RemoteSession) and s.node == node)
        if best is not None:
            self._nudge(best)

    def _nudge(self, session: ClientSession) -> None:
        """Ask *session*'s node (another one: it is a RemoteSession) to deliver the stored messages."""
        assert isinstance(session, RemoteSession)
        log.info("cluster.stored_nudged jid={jid} node={node}", jid=session.bare, node=session.node)
        self.inbox.nudge(session.node, session.bare).addErrback(
            lambda reason: log.warn("cluster.nudge_failed node={node} error={error}", node=session.node,
                                    error=str(reason.value)))

    # -- a nudge from another node -----------------------------------------------------------------

    def deliver_here(self, owner: str) -> None:
        """Another node stored messages for *owner* after this node delivered the stored ones:
        to one of its available resources here (RFC 6121 8.5.2.1.1: priority >= 0), again."""
        best = stored_messages_target(s for s in self.sessions.message_targets(owner) if not s.remote)
        if best is not None:
            self.sessions.hooks.fire(STORED_MESSAGES_WAITING, best)
