"""XEP-0198 stream management: acknowledgements and resumption.

Inbound, a stanza counts as handled only when the server is done with it; a
message for an offline user is done when its offline copy is on disk, so an
<a h/> never acknowledges a message a crash could lose. The promise travels
with the stanza's handling, not through a global: a handler that finishes
later returns a Deferred up the path the stanza took (`SessionManager._from_client`
→ `route` → `LocalRoute.send` → `deliver` → `offline.store_for_later`), and
`process` counts the stanza as handled when it fires. A step added anywhere on
that path that waits for something returns its Deferred too, and the ack waits
with it (`tests/unit/test_stream_management.py`).

Outbound, every stanza the server writes after <enabled/> (whichever feature
writes it: routing, presence, roster pushes, offline delivery, IQ answers, the
idle ping) goes through `ClientSession.send` and is counted and kept here until
the client acknowledges it; a stanza written past this count would make the
client's honest <a h/> look too high. If the connection drops, the session
waits (detached) for a <resume/>, and when that does not come, the
unacknowledged messages go to offline storage. Offline messages are kept as
the text they were stored as.
"""

from __future__ import annotations

import heapq
import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.words.xish import domish

if TYPE_CHECKING:
    from sns_xmpp.xmpp.c2s import ClientStream

NS_SM = "urn:xmpp:sm:3"
REQUEST_EVERY = 5  # outbound stanzas between our <r/> requests
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

    def room(self) -> int:
        """How many more stanzas a bulk sender (offline delivery) may send now: half the cap, less
        what waits for acknowledgement, so live traffic keeps the other half."""
        return MAX_UNACKED // 2 - len(self.unacked)

    def when_room(self, resume: Callable[[], None]) -> None:
        """Call *resume* once an acknowledgement leaves `room` for more (never, if the session ends)."""
        self._room_waiters.append(resume)
