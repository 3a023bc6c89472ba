"""An epoll reactor without Twisted's per-event log context: ``twistd --reactor=sns-epoll``.

Twisted's epoll reactor calls every ready descriptor's doRead or doWrite through
``log.callWithLogger``, which asks the descriptor for its log prefix and runs the call in a
``{"system": prefix}`` context for legacy ``log.msg`` calls: five Python frames and about
2.5 microseconds per event on the benchmark machine, 10% of what a Twisted transport costs per
connection (docs/performance.md). This server logs through ``twisted.logger`` with its own
fields (peer, jid), so the context has nothing to add.

`LeanEPollReactor` dispatches each event straight to Twisted's ``_doReadOrWrite``, which
already catches what doRead and doWrite raise, logs it and drops that connection; an error
escaping that too is logged here, as ``callWithLogger`` would, and the loop goes on. It also runs
calls registered with `after_events` once a round's events are dispatched, which the c2s
transport uses to send what the round wrote (``sns_xmpp.xmpp.transport``) without a timer.
Everything else (timers, threads, signals, registration) is Twisted's ``EPollReactor``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.internet import epollreactor
from twisted.internet.main import installReactor
from twisted.python import log


class LeanEPollReactor(epollreactor.EPollReactor):
    def __init__(self) -> None:
        super().__init__()
        self._after_events: list[Callable[[], None]] | None = None  # a list while events are dispatched

    def after_events(self, call: Callable[[], None]) -> bool:
        """Run *call* once the events of this round have been dispatched: True if it will be,
        False when no events are being dispatched (the caller then uses ``callLater(0, ...)``,
        which runs before the reactor next waits)."""
        if self._after_events is None:
            return False
        self._after_events.append(call)
        return True

    def doPoll(self, timeout: float | None) -> None:  # noqa: N802 - Twisted's name
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as error:
            if error.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        after: list[Callable[[], None]] = []
        self._after_events = after
        try:
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                try:
                    handle(selectable, fd, event)
                except Exception:
                    log.err(None, "Unhandled error dispatching an event")
            # A call made here may ask for one more at the round's end (a TLS layer's flush
            # writes ciphertext, which the transport then sends): it runs in this pass too.
            done = 0
            while done < len(after):
                call = after[done]
                done += 1
                try:
                    call()
                except Exception:
                    log.err(None, "Unhandled error after dispatching events")
        finally:
            self._after_events = None

    doIteration = doPoll


def install() -> Any:
    """Install `LeanEPollReactor` as the global reactor (what ``--reactor=sns-epoll`` does)."""
    reactor = LeanEPollReactor()
    installReactor(reactor)
    return reactor
