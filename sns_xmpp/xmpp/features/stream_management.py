"""XEP-0198 stream management: acknowledgements and resumption.

Inbound, a stanza counts as handled only when the server is done with it; a
message for an offline user is done when its offline copy is on disk, so an
<a h/> never acknowledges a message a crash could lose. The promise travels
with the stanza's handling, not through a global: a handler that finishes
later returns a Deferred up the path the stanza took (`SessionManager._from_client`
→ `route` → `LocalRoute.send` → `deliver` → the MESSAGE_OFFLINE hook →
`features/offline.store_for_later`), and
`process` counts the stanza as handled when it fires. A step added anywhere on
that path that waits for something returns its Deferred too, and the ack waits
with it (`tests/unit/test_stream_management.py`).

Outbound, every stanza the server writes after <enabled/> (whichever feature
writes it: routing, presence, roster pushes, offline delivery, IQ answers, the
idle ping) goes through `ClientSession.send`, whose ledger this is once the
client enables stream management, and is counted and kept here until
the client acknowledges it; a stanza written past this count would make the
client's honest <a h/> look too high. If the connection drops, the session
waits (detached) for a <resume/>, and when that does not come, the
unacknowledged messages go to offline storage. Offline messages are kept as
the text they were stored as.

In a cluster, a <resume/> may reach another node than the one holding the
session: `Resumption.elsewhere` (cluster/resumption.py) asks that node, whose
`take_out` hands the session over (SESSION_LEAVING: the counters and the
unacknowledged stanzas go with it), and `arrive` binds it here, after which
the resumption goes on as on one node.
"""

from __future__ import annotations

import heapq
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.hooks import (
    SESSION_ARRIVED,
    SESSION_CONNECTION_LOST,
    SESSION_LEAVING,
    SESSION_UNBOUND,
    STORED_MESSAGE_UNACKNOWLEDGED,
    SASL2Answer,
)
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import NS_STANZAS, StoredText, add_element, parse_stanza

log = GatedLogger()

NS_SM = "urn:xmpp:sm:3"
REQUEST_EVERY = 5  # outbound stanzas between our <r/> requests
STOP_WAIT = 5  # seconds a stopping server waits for the redeliveries of its sessions' messages
MAX_UNACKED = 1000  # a client that never acknowledges is cut off rather than grow memory
# ... and so is one whose unacknowledged stanzas come to more bytes than its stream may hold
# unread (ClientStream.max_outbound_bytes): it may read them and still never acknowledge.

def _u32(value: int) -> int:
    return value % 2**32


class StreamManagement:
    def __init__(self, stream: ClientStream, resumable: bool, max_seconds: int) -> None:
        self.stream = stream
        self.resume_id = secrets.token_urlsafe(18) if resumable else None
        self.max_seconds = max_seconds
        self.received = 0  # inbound stanzas counted so far
        self.pending: set[int] = set()  # inbound stanza numbers not yet done
        # The same numbers as a heap (completed ones dropped lazily): the oldest pending one is
        # found in logarithmic time, where min(pending) cost one scan per completed write.
        self._pending_order: list[int] = []
        self.answer_at: int | None = None  # an <r/> waits until everything up to here is done
        self.sent = 0
        self.acked = 0
        self.unacked: deque[domish.Element | str] = deque()
        self._sizes: deque[int] = deque()  # the serialised size of each, as written
        self.unacked_bytes = 0
        self.detached_timer: IDelayedCall | None = None
        self._room_waiters: list[Callable[[], None]] = []

    @property
    def handled(self) -> int:
        order, pending = self._pending_order, self.pending
        while order and order[0] not in pending:
            heapq.heappop(order)
        return order[0] - 1 if order else self.received

    def hold(self, seq: int) -> None:
        """Inbound stanza *seq* is not done until `completed(seq)`."""
        self.pending.add(seq)
        heapq.heappush(self._pending_order, seq)

    def enabled_element(self) -> domish.Element:
        enabled = domish.Element((NS_SM, "enabled"))
        if self.resume_id is not None:
            enabled["id"] = self.resume_id
            enabled["resume"] = "true"
            enabled["max"] = str(self.max_seconds)
        return enabled

    # -- inbound --------------------------------------------------------------

    def process(self, handle: Callable[[], Deferred[None] | None]) -> None:
        """Count one inbound stanza and handle it. When the handling returns a Deferred (a
        durable write, or any step that waits), the stanza is handled only once that fires,
        whether it succeeds or fails."""
        self.received += 1
        seq = self.received
        done = handle()
        if done is not None and not done.called:
            self.hold(seq)
            done.addBoth(self._completed_by, seq)

    def _completed_by(self, result: object, seq: int) -> None:
        self.completed(seq)
        return None  # a failure was the handler's to report; the count only needs the end

    def completed(self, seq: int) -> None:
        self.pending.discard(seq)
        if self.answer_at is not None and self.handled >= self.answer_at:
            self.answer_at = None
            self._answer()

    def request(self) -> None:
        """The client's <r/>: answered when every stanza it had sent is done."""
        if self.handled >= self.received:
            self._answer()
        else:
            self.answer_at = self.received

    def _answer(self) -> None:
        answer = domish.Element((NS_SM, "a"))
        answer["h"] = str(_u32(self.handled))
        self.stream.send(answer)

    # -- outbound -------------------------------------------------------------

    def send(self, session: ClientSession, element: domish.Element | str) -> None:
        """The session's counted path (client_session.Ledger): write, count and keep."""
        stream = session.stream
        if session.detached:  # kept for the resumption, its size counted all the same
            size = len(element) if isinstance(element, str) else len(stream.serialize(element))
        else:
            size = stream.send(element)
        if not self.sending(element, size):
            stream.fail(StreamError("policy-violation", text="too many unacknowledged stanzas"))
            return
        if not session.detached and self.wants_request():
            stream.send(domish.Element((NS_SM, "r")))

    def sending(self, stanza: domish.Element | str, size: int) -> bool:
        """Keep *stanza* (*size* bytes written) until acknowledged; False if the client has let
        too many, or too many bytes, pile up."""
        self.sent += 1
        self.unacked.append(stanza)
        self._sizes.append(size)
        self.unacked_bytes += size
        return len(self.unacked) <= MAX_UNACKED and self.unacked_bytes <= self.stream.max_outbound_bytes

    def wants_request(self) -> bool:
        return self.sent % REQUEST_EVERY == 0

    def acknowledged(self, h: int) -> bool:
        """The client's <a h/> (or the h of a <resume/>); False if it acknowledges what was never sent."""
        newly = _u32(h - self.acked)
        if newly > len(self.unacked):
            return False
        for _ in range(newly):
            self.unacked.popleft()
            self.unacked_bytes -= self._sizes.popleft()
        self.acked = _u32(h)
        if newly and self._room_waiters and self.room() > 0:
            waiters, self._room_waiters = self._room_waiters, []
            for waiter in waiters:
                waiter()
        return True

    def state(self) -> dict[str, Any]:
        """What a resumption on another node needs (see `restore`): the counters, and the
        unacknowledged stanzas in order (a stored offline message as its text)."""
        unacked = list(self.unacked)
        return {"id": self.resume_id, "handled": self.handled, "sent": self.sent, "acked": self.acked,
                "unacked": unacked, "stored": [i for i, stanza in enumerate(unacked) if type(stanza) is StoredText]}

    def restore(self, state: dict[str, Any]) -> None:
        """Take over the ledger of a session another node handed over (`state`). What that node
        had not finished handling counts as handled: the client resends what lies past it."""
        self.resume_id = state["id"]
        self.received = state["handled"]
        self.sent, self.acked = state["sent"], state["acked"]
        stored = set(state.get("stored", ()))  # which texts are stored offline messages
        for index, stanza in enumerate(state["unacked"]):
            if index in stored:
                stanza = StoredText(stanza)
            size = len(stanza) if isinstance(stanza, str) else len(self.stream.serialize(stanza))
            self.unacked.append(stanza)
            self._sizes.append(size)
            self.unacked_bytes += size

    def room(self) -> int:
        """How many more stanzas a bulk sender (offline delivery) may send now: half the cap, less
        what waits for acknowledgement, so live traffic keeps the other half."""
        return MAX_UNACKED // 2 - len(self.unacked)

    def when_room(self, resume: Callable[[], None]) -> None:
        """Call *resume* once an acknowledgement leaves `room` for more (never, if the session ends)."""
        self._room_waiters.append(resume)


def failed(condition: str) -> domish.Element:
    element = domish.Element((NS_SM, "failed"))
    add_element(element, (NS_STANZAS, condition))
    return element


@dataclass(frozen=True)
class Resumed:
    """A session resumed on a new stream, its client not told yet: *element* (<resumed/>) first,
    then `replay`."""

    session: ClientSession
    ledger: StreamManagement
    element: domish.Element

    def replay(self) -> None:
        """The stanzas the client never acknowledged, again, in order (XEP-0198 5)."""
        stream = self.session.stream
        for stanza in list(self.ledger.unacked):
            stream.send(stanza)


def _superseded(old: ClientStream) -> None:
    """End the stream a resumed session had, if it is still open: the session goes on elsewhere."""
    if not old.closed:
        old.fail(StreamError("conflict", text="the session was resumed elsewhere"))


def _sasl2_answer(outcome: Resumed | domish.Element) -> SASL2Answer:
    if isinstance(outcome, Resumed):
        return SASL2Answer(outcome.element, resumed=outcome.session.full, then=outcome.replay)
    return SASL2Answer(outcome)


class Resumption:
    """The feature's state: sessions waiting to be resumed, by resumption id."""

    def __init__(self, sessions: SessionManager, max_seconds: int) -> None:
        self.sessions = sessions
        self.max_seconds = max_seconds
        self.resumable: dict[str, ClientSession] = {}
        # A cluster's (cluster/resumption.py): asked with a <resume/> whose session is not here;
        # when another node holds it and was asked, the outcome of `attempt` once it answered.
        self.elsewhere: Callable[[ClientStream, LoginResult, domish.Element],
                                 Deferred[Resumed | domish.Element] | None] | None = None
        # Deliveries again of ended sessions' messages not finished yet (a write to offline
        # storage, a cluster's XADD): the server's stop waits for them before the store closes.
        self.redelivering: set[Deferred[None]] = set()

    def enable(self, session: ClientSession, element: domish.Element) -> domish.Element:
        """The answer to an <enable/> (on the stream, or inline in a Bind2 request)."""
        if session.ledger is not None:
            return failed("unexpected-request")
        resumable = element.getAttribute("resume") in ("true", "1")
        sm = StreamManagement(session.stream, resumable, self.max_seconds)
        session.ledger = sm
        if sm.resume_id is not None:
            self.resumable[sm.resume_id] = session
        return sm.enabled_element()

    def element(self, session: ClientSession, element: domish.Element) -> None:
        """A XEP-0198 element on a bound stream."""
        sm = session.ledger
        if element.name == "enable" and sm is None:
            session.stream.send(self.enable(session, element))
        elif element.name == "r" and isinstance(sm, StreamManagement):
            sm.request()
        elif element.name == "a" and isinstance(sm, StreamManagement):
            try:
                fine = sm.acknowledged(int(element.getAttribute("h", "")))
            except ValueError:
                fine = False
            if not fine:
                session.stream.fail(StreamError("undefined-condition", text="handled count too high"))
        else:
            session.stream.send(failed("unexpected-request"))

    def resume(self, stream: ClientStream, login: LoginResult, element: domish.Element) -> None:
        """Answer a <resume/> on *stream*: <resumed/> with the session back on it, or <failed/>
        (after which the client may bind a new session)."""
        outcome = self.attempt(stream, login, element)
        if isinstance(outcome, Deferred):
            outcome.addCallback(self._answer, stream)
        else:
            self._answer(outcome, stream)

    def _answer(self, outcome: Resumed | domish.Element, stream: ClientStream) -> None:
        if stream.closed:
            return
        if isinstance(outcome, Resumed):
            stream.send(outcome.element)
            outcome.replay()
        else:
            stream.send(outcome)

    def resume_in_sasl2(self, stream: ClientStream, login: LoginResult,
                        element: domish.Element) -> SASL2Answer | Deferred[SASL2Answer]:
        """XEP-0198's <resume/> inside SASL2's <authenticate/> (XEP-0388's inline features): the
        same resumption as before binding, answered inside <success/>; the unacknowledged
        stanzas follow it."""
        outcome = self.attempt(stream, login, element)
        if isinstance(outcome, Deferred):
            return outcome.addCallback(_sasl2_answer)
        return _sasl2_answer(outcome)

    def attempt(self, stream: ClientStream, login: LoginResult, element: domish.Element,
                here: bool = False) -> Resumed | domish.Element | Deferred[Resumed | domish.Element]:
        """Resume the session *element* names on *stream*, for *login*'s account: `Resumed`, the
        session attached to the stream, whose client is yet to be told; or <failed/>. A session
        another node of a cluster holds comes later (a Deferred), unless *here* (it came)."""
        try:
            h = int(element.getAttribute("h", ""))
        except ValueError:
            h = -1
        previd = element.getAttribute("previd", "")
        session = self.resumable.get(previd)
        if session is None and self.elsewhere is not None and not here:
            asked = self.elsewhere(stream, login, element)
            if asked is not None:
                return asked
        sm = session.ledger if session is not None else None
        if session is None or session.login.jid != login.jid or not isinstance(sm, StreamManagement):
            return failed("item-not-found")
        if not sm.acknowledged(h):
            return failed("undefined-condition")
        if sm.detached_timer is not None and sm.detached_timer.active():
            sm.detached_timer.cancel()
        old = session.stream
        session.detached = False
        sm.stream = stream
        self.sessions.attach(session, stream)
        if old is not stream:  # (a session from another node came with this stream)
            _superseded(old)
        resumed = domish.Element((NS_SM, "resumed"))
        resumed["previd"] = previd
        resumed["h"] = str(sm.handled % 2**32)
        log.info("c2s.resumed jid={jid}", jid=session.full)
        return Resumed(session, sm, resumed)

    # -- another node of a cluster resumes the session -----------------------

    def take_out(self, previd: str, owner: str) -> dict[str, Any] | None:
        """Another node got a <resume/> for *previd* from *owner*: unbind the session here and
        return what that node binds it with (`arrive`); None if there is no such session. A
        session whose old stream is still attached loses it (conflict), as on one node."""
        session = self.resumable.get(previd)
        if session is None or session.login.jid != owner:
            return None
        old = session.stream
        state = self.sessions.move_out(session)
        _superseded(old)
        log.info("c2s.handed_over jid={jid}", jid=session.full)
        return state

    def leaving(self, session: ClientSession, state: dict[str, Any]) -> None:
        sm = session.ledger
        if isinstance(sm, StreamManagement) and sm.resume_id is not None:
            state["stream-management"] = sm.state()

    def arrive(self, state: dict[str, Any], stream: ClientStream) -> Deferred[ClientSession | None]:
        """Bind a session another node took out (`take_out`), detached, waiting for its
        resumption on *stream* (or for its time to run out, as a dropped one here)."""
        return self.sessions.move_in(state, stream)

    def arrived(self, session: ClientSession, state: dict[str, Any]) -> None:
        kept = state.get("stream-management")
        if kept is None:
            return
        sm = StreamManagement(session.stream, True, self.max_seconds)
        sm.restore(kept)
        session.ledger = sm
        assert sm.resume_id is not None
        self.resumable[sm.resume_id] = session
        sm.detached_timer = self.sessions.clock.callLater(sm.max_seconds, self.sessions.unbind, session)

    def connection_lost(self, session: ClientSession, stream: ClientStream) -> bool | None:
        """Dropped, not closed: keep a resumable session for a <resume/>."""
        sm = session.ledger
        if not isinstance(sm, StreamManagement) or sm.resume_id is None:
            return None
        session.detached = True
        sm.detached_timer = self.sessions.clock.callLater(sm.max_seconds, self.sessions.unbind, session)
        log.info("c2s.detached jid={jid}", jid=session.full)
        return True

    def unbound(self, session: ClientSession, replaced: bool) -> None:
        sm, session.ledger = session.ledger, None
        if not isinstance(sm, StreamManagement):
            return
        if sm.detached_timer is not None and sm.detached_timer.active():
            sm.detached_timer.cancel()
        if sm.resume_id is not None:
            self.resumable.pop(sm.resume_id, None)
        if session.moved:
            return  # its stanzas went with it to the node that resumes it
        self._redeliver(session.bare, sm.unacked)

    def abandon(self, state: dict[str, Any]) -> None:
        """A session another node handed over that cannot be bound here (a newer session holds
        its resource): it ends, and what it had not had acknowledged is delivered again."""
        kept = state.get("stream-management")
        if kept is not None:
            self._redeliver(state["jid"].split("/", 1)[0], kept["unacked"])

    def _redeliver(self, owner: str, unacked: Iterable[domish.Element | str]) -> None:
        # Never acknowledged, so maybe never seen: deliver again (other resources or offline).
        for stanza in unacked:
            if type(stanza) is StoredText:  # a stored offline message, kept again as it is
                self.sessions.hooks.fire(STORED_MESSAGE_UNACKNOWLEDGED, owner, stanza)
                continue
            if isinstance(stanza, str):  # text another node of a cluster forwarded: a stanza
                parsed = parse_stanza(stanza)
                if parsed is None:
                    continue
                stanza = parsed
            if stanza.name == "message" and stanza.getAttribute("type", "normal") in ("normal", "chat"):
                delivered = self.sessions.deliver(stanza)
                if delivered is not None and not delivered.called:
                    self.redelivering.add(delivered)
                    delivered.addBoth(self._redelivered, delivered)

    def _redelivered(self, result: object, delivered: Deferred[None]) -> None:
        self.redelivering.discard(delivered)
        return None  # a failure was the delivery's to report (offline storage logs its own)

    def stop(self) -> Deferred[None]:
        """The server stops (a stop action, run once `SessionManager.end_all` has ended every
        session): wait for the deliveries again of their unacknowledged messages, so that they
        are in offline storage, or queued for another node, before the store closes. Bounded: a
        cluster whose Redis is gone would hold the stop for ever."""
        waiting = list(self.redelivering)
        if not waiting:
            return succeed(None)
        log.info("c2s.redeliveries_waited count={count}", count=len(waiting))
        finished: Deferred[None] = Deferred()

        def all_done(_: object) -> None:
            if not finished.called:
                timer.cancel()
                finished.callback(None)

        def given_up() -> None:
            # (Not addTimeout: its cancelling would reach the deliveries themselves.)
            log.warn("c2s.redeliveries_unfinished count={count}", count=len(self.redelivering))
            finished.callback(None)

        timer = self.sessions.clock.callLater(STOP_WAIT, given_up)
        DeferredList(waiting, consumeErrors=True).addCallback(all_done)
        return finished


SM_FEATURE = domish.Element((NS_SM, "sm"))


def install(registry: FeatureRegistry) -> None:
    resumption = Resumption(registry.sessions, registry.config.c2s.resume_timeout)
    registry.nonza(NS_SM, resumption.element)
    registry.before_bind(NS_SM, "resume", resumption.resume)
    registry.hook(SESSION_CONNECTION_LOST, resumption.connection_lost)
    registry.hook(SESSION_UNBOUND, resumption.unbound)
    registry.hook(SESSION_LEAVING, resumption.leaving)
    registry.hook(SESSION_ARRIVED, resumption.arrived)
    registry.services["stream-management"] = resumption  # for a cluster (cluster/resumption.py)
    registry.on_stop(resumption.stop)
    registry.stream_feature(lambda domain: SM_FEATURE, after_auth=True)
    registry.inline(NS_SM, resumption.enable)  # XEP-0386: <enable/> inside <bind/>
    # XEP-0388 with XEP-0198: <resume/> inside <authenticate/>, offered as <sm/> in its <inline/>
    registry.sasl2_inline(SM_FEATURE, "resume", resumption.resume_in_sasl2)


FEATURE = Feature("stream-management", install)
