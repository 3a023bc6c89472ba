"""Revocations end live sessions: unlinking, logging out everywhere, an operator's revoke.

A revocation is recorded in the store (`IStore.revoke`) by whoever makes it: the admin command in
its own process, the console, the HTTP side. Every running server reads the revocations recorded
after the last one it saw, every `interval` seconds, and ends the named account's sessions: a
connected one with the stream error `not-authorized` and the reason in its text (as Prosody ends
the sessions of a deleted account), a detached one (XEP-0198, waiting to be resumed) at once. So a
revocation reaches every node that shares the database within seconds, whichever made it.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StreamError

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store.interface import IStore
from sns_xmpp.store.records import Revocation
from sns_xmpp.xmpp.sessions import SessionManager

log = GatedLogger()

POLL_SECONDS = 2.0


class RevocationWatcher(service.Service):
    def __init__(self, store: IStore, sessions: SessionManager, clock: IReactorTime,
                 interval: float = POLL_SECONDS) -> None:
        self.store = store
        self.sessions = sessions
        self.clock = clock
        self.interval = interval
        self.last_seen: int | None = None  # the newest revocation read; None until started
        self._loop: LoopingCall | None = None
        self._reading = False

    def startService(self) -> None:
        super().startService()
        # Only revocations recorded from now on: older ones ended the sessions of their day.
        d = self.store.last_revocation_id()
        d.addCallback(self._start_from)
        d.addErrback(self._failed)

    def _start_from(self, last_id: int) -> None:
        self.last_seen = last_id
        loop = self._loop = LoopingCall(self.read)
        loop.clock = self.clock
        loop.start(self.interval, now=False).addErrback(self._failed)

    def stopService(self) -> Deferred[None] | None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()

    def read(self) -> Deferred[Any] | None:
        """Read the revocations recorded since the last one seen, and end their sessions."""
        if self._reading or self.last_seen is None:
            return None  # one read at a time: a slow store is not asked twice
        self._reading = True
        d = self.store.revocations_after(self.last_seen)
        d.addCallback(self._apply)
        d.addErrback(self._failed)
        d.addBoth(self._done)
        return d

    def _apply(self, revocations: list[Revocation]) -> None:
        for revocation in revocations:
            self.last_seen = revocation.id
            end_sessions(self.sessions, revocation.jid, revocation.reason)

    def _done(self, result: object) -> None:
        self._reading = False

    def _failed(self, reason: Failure) -> None:
        log.failure("revocation.read_failed", reason)


def end_sessions(sessions: SessionManager, jid: str, reason: str) -> int:
    """End every session of *jid* (revoked for *reason*); how many there were."""
    ended = sessions.local_resources(jid)
    for session in ended:
        if session.detached:
            sessions.unbind(session)
        else:
            session.stream.fail(StreamError("not-authorized", text=f"logged out: {reason}"))
    if ended:
        log.info("c2s.revoked jid={jid} sessions={count} reason={reason}", jid=jid, count=len(ended), reason=reason)
    return len(ended)
