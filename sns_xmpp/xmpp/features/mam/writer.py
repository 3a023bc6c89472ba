"""The archive's writes, batched off the message's path.

A message is archived with one append to a list; the list goes to the store in one transaction
when it is `flush_rows` long or `flush_interval` old, whichever comes first. Rows keep their order
(the store's one worker runs batches in the order given), which is the archive's order.

A store that cannot keep up slows the senders down rather than losing their history: past half
of `max_buffered` rows waiting or being written, each client whose message adds one stops being
read (`hold`) until the store is back under a quarter of it. The messages a client already sent
are still delivered and archived; the next ones wait in its socket, and TCP tells it to wait. The
bound itself stays for what no client's socket can hold back (messages from other servers, from
other nodes): past it, the message goes unarchived (and unstamped) and the limit is counted.
Before that flow control, a reactor thread that outran the store's thread (the benchmark's
closed loop, on a fast machine) had most of its messages go unarchived.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store import mam as archive_sql
from sns_xmpp.store.interface import IStore
from sns_xmpp.store.mam import Row

log = GatedLogger()

WRITE_ATTEMPTS = 3  # transactions in a row that may fail before a batch's rows are given up



class ArchiveWriter:
    def __init__(self, store: IStore, clock: IReactorTime, flush_interval: float, flush_rows: int,
                 max_buffered: int) -> None:
        self.store = store
        self.clock = clock
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self.max_buffered = max_buffered
        self.pause_at = max(1, max_buffered // 2)  # rows waiting or being written: senders held from here
        self.resume_at = max_buffered // 4  # ... until the store is back down to this
        self.held: dict[int, IPushProducer] = {}  # the clients' connections not read meanwhile, by id
        self.rows: list[Row] = []
        self.in_flight = 0  # rows handed to the store, not yet committed
        self.writes: set[Deferred[Any]] = set()  # the batches being written
        self.timer: IDelayedCall | None = None
        self.batches = 0  # transactions written (for tests and the operator's curiosity)
        self.failures = 0  # failed transactions in a row
        self.lost = 0  # rows given up on

    def backlog(self) -> int:
        """Rows waiting or being written: what `max_buffered`, `pause_at` and `resume_at` bound."""
        return len(self.rows) + self.in_flight

    def hold(self, reader: IPushProducer | None) -> None:
        """Stop reading from *reader* (a client's connection, `ClientStream.reader`) until the
        store has caught up: called once the rows waiting or being written reach `pause_at`."""
        if reader is not None and id(reader) not in self.held:
            self.held[id(reader)] = reader
            reader.pauseProducing()
            self._release()

    def _release(self) -> None:
        """Read the held clients again once the store is back down to `resume_at` (a connection
        lost meanwhile ignores it: Twisted's resumeProducing only reads a connected one). While
        they wait, rows that wait for their batch to fill or to age go now: with no batch being
        written, nothing else would bring the backlog down (`flush_rows` above `pause_at`). Not
        rows a failed write put back: their timer paces the next try (`_written`)."""
        if not self.held:
            return
        if self.backlog() <= self.resume_at:
            held, self.held = self.held, {}
            for reader in held.values():
                reader.resumeProducing()
        elif self.rows and not self.writes and not self.failures:
            self.flush()  # its batch, once written, calls this again

    def added(self) -> None:
        """Rows were appended to `rows` (the archive does so itself, on the message's path, and
        calls this only when there is no timer yet or the batch is full)."""
        if len(self.rows) >= self.flush_rows:
            self.flush()
        elif self.timer is None:
            self.timer = self.clock.callLater(self.flush_interval, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        self.flush()

    def flush(self) -> Deferred[None]:
        """Hand the waiting rows to the store as one transaction; fires once every batch handed
        over so far (this one included) is written, so a read made then sees them."""
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None
        rows, self.rows = self.rows, []
        if rows:
            self.in_flight += len(rows)
            self.batches += 1
            # Aside: a login's or a roster's read need not wait for it (the archive's own reads
            # wait for the batches themselves, through this method).
            d: Deferred[Any] = self.store.run_aside(partial(archive_sql.write_rows, rows=rows))
            self.writes.add(d)
            d.addBoth(self._written, d, rows)
        if not self.writes:
            return succeed(None)
        return DeferredList(list(self.writes), consumeErrors=True).addCallback(lambda _: None)

    def _written(self, result: object, d: Deferred[Any], rows: list[Row]) -> None:
        """A batch is written, or failed: then its rows go back in front of the waiting ones for
        the next batch (a database that was down a moment), up to WRITE_ATTEMPTS times in a row;
        their seq keeps them in their place in the archive whenever they are written."""
        self.writes.discard(d)
        self.in_flight -= len(rows)
        if not isinstance(result, Failure):
            self.failures = 0
            self._release()
            return
        self.failures += 1
        if self.failures >= WRITE_ATTEMPTS:
            self.failures = 0
            self.lost += len(rows)
            log.failure("mam.write_failed rows={rows} (given up)", result, rows=len(rows))
            self._release()
            return
        log.warn("mam.write_failed rows={rows} reason={reason} (tried again)", rows=len(rows),
                 reason=result.getErrorMessage())
        self.rows[:0] = rows
        if self.timer is None:
            self.timer = self.clock.callLater(self.flush_interval, self._timed_out)
