"""Offline messages (XEP-0160), stamped with XEP-0203 delay on the way in."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.words.xish import domish

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store.interface import NoSuchAccountError
from sns_xmpp.store.records import OfflineMessage
from sns_xmpp.xmpp.stanzas import NS_DELAY, error_reply

if TYPE_CHECKING:
    from sns_xmpp.xmpp.sessions import ClientSession, SessionManager

log = GatedLogger()

# Offline messages one sender may have waiting for the store at once. Each is a synced write on
# the store's one writer thread, which every user shares: without this, a client sending them
# faster than the disk syncs would queue minutes of writes ahead of everyone else's.
MAX_WRITES_IN_FLIGHT = 100


def _stamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def store_for_later(sessions: SessionManager, owner: str, message: domish.Element) -> Deferred[None] | None:
    """Keep a message for a user with no available resource; bounce it if there is no such user.

    The Deferred fires once the message is on disk or bounced (never with a failure): the
    sender's stream management counts the message as handled then, not before."""
    sender = message.getAttribute("from") or owner
    sender = sender.split("/", 1)[0]
    in_flight = sessions.offline_writes
    if in_flight[sender] >= MAX_WRITES_IN_FLIGHT:
        sessions.metrics.limit("offline-writes")
        if message.getAttribute("from"):
            sessions.route(error_reply(message, "resource-constraint", "too many messages waiting to be stored"))
        return None
    in_flight.add(sender)
    now = sessions.clock.seconds()
    delay = message.addElement((NS_DELAY, "delay"))
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

    def no_such_user(reason: Failure) -> None:
        reason.trap(NoSuchAccountError)
        bounce("no such user")

    d = sessions.store.store_offline_capped(owner, stored, now, sessions.max_offline, sessions.max_offline_bytes)
    def failed(reason: Failure) -> None:
        # Not on disk, so not acknowledged as stored: the sender hears so, and the writes in
        # flight and the stream management hold are given back.
        log.failure("offline.store_failed owner={owner}", reason, owner=owner)
        bounce("the message could not be stored", "internal-server-error")

    d.addCallbacks(stored_durably, no_such_user)
    d.addErrback(failed)
    return finished


def deliver_stored(sessions: SessionManager, session: ClientSession) -> None:
    """Send the stored messages, oldest first, through the session (so that stream management
    counts and keeps them), then forget them. With stream management on, no more than its `room`
    at once: the rest follows as the client acknowledges."""
    d = sessions.store.offline_messages(session.bare)
    d.addCallback(lambda messages: _send_stored(sessions, session, messages))
    d.addErrback(_delivery_failed)


def _send_stored(sessions: SessionManager, session: ClientSession,
                 messages: list[OfflineMessage]) -> Deferred[None] | None:
    # A module function, not a closure that calls itself: that would be a reference cycle
    # holding the session until the cycle collector came (tests/unit/test_no_cycles.py).
    if not messages or session.stream.closed:
        return None
    sm = session.sm
    batch = messages
    if sm is not None and sm.room() < len(messages):
        room = max(0, sm.room())
        batch, rest = messages[:room], messages[room:]
        sm.when_room(lambda: _chained(_send_stored(sessions, session, rest)))
    if not batch:
        return None
    for message in batch:
        session.send(message.stanza)
    log.info("offline.delivered jid={jid} count={count}", jid=session.full, count=len(batch))
    sessions.metrics.offline_delivered.inc(len(batch))
    return sessions.store.delete_offline(session.bare, [m.id for m in batch])


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
        session.send(stanza)
    if targets:
        return
    d = sessions.store.store_offline(owner, stanza, sessions.clock.seconds())
    d.addErrback(lambda reason: log.failure("offline.store_failed owner={owner}", reason, owner=owner))
