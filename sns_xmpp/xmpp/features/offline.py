"""Offline messages (XEP-0160), stamped with XEP-0203 delay on the way in.

A message no resource takes (the core's MESSAGE_OFFLINE event) is stored, and its handling ends
when it is on disk: the Deferred returned goes up the stanza's path to XEP-0198, which counts the
message handled only then. The stored messages go to the first session that becomes available
with a non-negative priority (SESSION_AVAILABLE), and again when a cluster's node stored some
for the account before it knew of that session (STORED_MESSAGES_WAITING). A stored message is
in hand from its read until its deletion, and no other delivery of the account's sends it then.
"""

from __future__ import annotations

import datetime

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.words.xish import domish

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store.interface import NoSuchAccountError
from sns_xmpp.store.records import OfflineMessage
from sns_xmpp.tally import Tally
from sns_xmpp.xmpp.client_session import ClientSession, stored_messages_target
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.hooks import (
    MESSAGE_OFFLINE,
    SESSION_AVAILABLE,
    SESSION_UNBOUND,
    STORED_MESSAGE_UNACKNOWLEDGED,
    STORED_MESSAGES_WAITING,
)
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import NS_DELAY, StoredText, add_element, error_reply

log = GatedLogger()

# Offline messages one sender may have waiting for the store at once. Each is a synced write on
# the store's one writer thread, which every user shares: without this, a client sending them
# faster than the disk syncs would queue minutes of writes ahead of everyone else's.
MAX_WRITES_IN_FLIGHT = 100


def _stamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class OfflineStorage:
    """The feature's state: its limits, and the writes in flight by sender."""

    def __init__(self, sessions: SessionManager, max_messages: int, max_bytes: int) -> None:
        self.sessions = sessions
        self.max_messages = max_messages
        # Offline storage is also bounded in size: delivered at once at login, it must fit well
        # within the outbound bound of the stream it goes to (c2s max_outbound_bytes).
        self.max_bytes = max_bytes
        self.writes = Tally()  # offline writes in flight, by sender
        # owner -> the ids of stored messages read for delivery and not yet deleted, each with the
        # session they are for: a second delivery meanwhile (another resource's, or a cluster's
        # STORED_MESSAGES_WAITING) leaves them out, so that none is sent twice.
        self.in_hand: dict[str, dict[int, ClientSession]] = {}

    def store_for_later(self, owner: str, message: domish.Element) -> Deferred[None] | bool:
        return store_for_later(self, owner, message)

    def deliver_stored(self, session: ClientSession) -> None:
        deliver_stored(self, session)

    def release(self, owner: str, messages: list[OfflineMessage]) -> None:
        self._let_go(owner, [message.id for message in messages])

    def unbound(self, session: ClientSession, replaced: bool) -> None:
        """What the session had in hand and never sent (it waited for XEP-0198 room) is free again."""
        held = self.in_hand.get(session.bare) if self.in_hand else None
        if held is not None:
            self._let_go(session.bare, [i for i, holder in held.items() if holder is session])

    def _let_go(self, owner: str, message_ids: list[int]) -> None:
        """No delivery has these of *owner*'s stored messages in hand any more."""
        held = self.in_hand.get(owner)
        if held is None:
            return
        for message_id in message_ids:
            held.pop(message_id, None)
        if not held:
            del self.in_hand[owner]

    def put_back(self, owner: str, stanza: str) -> None:
        put_back(self.sessions, owner, stanza)


def store_for_later(storage: OfflineStorage, owner: str, message: domish.Element) -> Deferred[None] | bool:
    """Keep a message for a user with no available resource; bounce it if there is no such user.

    The Deferred fires once the message is on disk or bounced (never with a failure): the
    sender's stream management counts the message as handled then, not before. True: handled
    at once (refused)."""
    sessions = storage.sessions
    sender = message.getAttribute("from") or owner
    sender = sender.split("/", 1)[0]
    in_flight = storage.writes
    if in_flight[sender] >= MAX_WRITES_IN_FLIGHT:
        sessions.metrics.limit("offline-writes")
        if message.getAttribute("from"):
            sessions.route(error_reply(message, "resource-constraint", "too many messages waiting to be stored"))
        return True
    in_flight.add(sender)
    now = sessions.clock.seconds()
    delay = add_element(message, (NS_DELAY, "delay"))
    delay["from"] = owner.split("@", 1)[1]
    delay["stamp"] = _stamp(now)
    stored = message.toXml()
    message.children.remove(delay)

    finished: Deferred[None] = Deferred()  # the sender's ack waits for it (stream_management)

    def done() -> None:
        in_flight.remove(sender)
        if not finished.called:
            finished.callback(None)

    def bounce(text: str, condition: str = "service-unavailable") -> None:
        done()
        if message.getAttribute("from"):
            sessions.route(error_reply(message, condition, text))

    def stored_durably(stored_id: int | None) -> None:
        if stored_id is None:
            # Full: the sender hears so; nothing is dropped silently.
            sessions.metrics.limit("offline-queue")
            bounce("the recipient's offline storage is full")
            return
        sessions.metrics.offline_stored.inc()
        done()
        # The account became available while the write was on its way: its SESSION_AVAILABLE
        # read of the stored messages may have come before the write, so this one goes to a
        # session now rather than at the next login (what a delivery has in hand is not sent twice).
        # A resource on another node of a cluster is that node's to serve (cluster/stored_messages.py).
        best = stored_messages_target(sessions.message_targets(owner))
        if best is not None and not best.remote:
            sessions.hooks.fire(STORED_MESSAGES_WAITING, best)

    def no_such_user(reason: Failure) -> None:
        reason.trap(NoSuchAccountError)
        bounce("no such user")

    d = sessions.store.store_offline_capped(owner, stored, now, storage.max_messages, storage.max_bytes)
    def failed(reason: Failure) -> None:
        # Not on disk, so not acknowledged as stored: the sender hears so, and the writes in
        # flight and the stream management hold are given back.
        log.failure("offline.store_failed owner={owner}", reason, owner=owner)
        bounce("the message could not be stored", "internal-server-error")

    d.addCallbacks(stored_durably, no_such_user)
    d.addErrback(failed)
    return finished


def deliver_stored(storage: OfflineStorage, session: ClientSession) -> None:
    """Send the stored messages, oldest first, through the session (so that stream management
    counts and keeps them), then forget them. With stream management on, no more than its `room`
    at once: the rest follows as the client acknowledges."""
    d = storage.sessions.store.offline_messages(session.bare)
    d.addCallback(_take_in_hand, storage, session)
    d.addErrback(_delivery_failed)


def _take_in_hand(messages: list[OfflineMessage], storage: OfflineStorage,
                  session: ClientSession) -> Deferred[None] | None:
    if not messages:
        return None
    held = storage.in_hand.setdefault(session.bare, {})
    free = [message for message in messages if message.id not in held]
    for message in free:
        held[message.id] = session
    if not held:
        del storage.in_hand[session.bare]
    return _send_stored(storage, session, free)


def _send_stored(storage: OfflineStorage, session: ClientSession,
                 messages: list[OfflineMessage]) -> Deferred[None] | None:
    # A module function, not a closure that calls itself: that would be a reference cycle
    # holding the session until the cycle collector came (tests/unit/test_no_cycles.py).
    if not messages:
        return None
    if session.stream.closed:
        storage.release(session.bare, messages)  # still stored: for the next delivery
        return None
    ledger = session.ledger
    batch = messages
    if ledger is not None and ledger.room() < len(messages):
        room = max(0, ledger.room())
        batch, rest = messages[:room], messages[room:]
        ledger.when_room(lambda: _chained(_send_stored(storage, session, rest)))
    if not batch:
        return None
    for message in batch:
        session.send(StoredText(message.stanza))  # (kept again as it is if never acknowledged)
    sessions = storage.sessions
    log.info("offline.delivered jid={jid} count={count}", jid=session.full, count=len(batch))
    sessions.metrics.offline_delivered.inc(len(batch))
    deleted = sessions.store.delete_offline(session.bare, [m.id for m in batch])
    return deleted.addBoth(_released, storage, session.bare, batch)


def _released(result: object, storage: OfflineStorage, owner: str, batch: list[OfflineMessage]) -> object:
    storage.release(owner, batch)
    return result


def _chained(d: Deferred[None] | None) -> None:
    if d is not None:
        d.addErrback(_delivery_failed)


def _delivery_failed(reason: Failure) -> None:
    log.failure("offline.delivery_failed", reason)


def put_back(sessions: SessionManager, owner: str, stanza: str) -> None:
    """An offline message delivered to a session that ended before acknowledging it: to the
    owner's other available resources, else into storage again (not counted against the cap: it
    was accepted once already)."""
    targets = sessions.message_targets(owner)
    for session in targets:
        session.send(StoredText(stanza))
    if targets:
        return
    d = sessions.store.store_offline(owner, stanza, sessions.clock.seconds())
    d.addErrback(lambda reason: log.failure("offline.store_failed owner={owner}", reason, owner=owner))


def install(registry: FeatureRegistry) -> None:
    c2s = registry.config.c2s
    storage = OfflineStorage(registry.sessions, c2s.max_offline_messages, c2s.max_offline_bytes)
    registry.hook(MESSAGE_OFFLINE, storage.store_for_later)
    registry.hook(SESSION_AVAILABLE, storage.deliver_stored)
    registry.hook(STORED_MESSAGES_WAITING, storage.deliver_stored)
    registry.hook(SESSION_UNBOUND, storage.unbound)
    registry.hook(STORED_MESSAGE_UNACKNOWLEDGED, storage.put_back)
    registry.disco_feature("msgoffline")  # XEP-0160
    registry.stores("offline_messages", per_account=True, what="messages kept for an account with no session")


FEATURE = Feature("offline", install)
