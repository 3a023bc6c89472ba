"""The :class:`IStore` the server uses: a synchronous database run in a worker thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from queue import SimpleQueue
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.python.failure import Failure
from zope.interface import implementer

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store import composite
from sns_xmpp.store.common import Database
from sns_xmpp.store.interface import IStore, StoreClosedError, StoreUnavailableError
from sns_xmpp.store.records import (
    Account,
    DevicePassword,
    FastToken,
    FastTokenIssue,
    OfflineMessage,
    RefreshToken,
    Revocation,
    RosterItem,
    ScramCredential,
    SocialLink,
)

__all__ = ["ThreadedStore"]

OPEN_RETRY_SECONDS = 1.0

_R = TypeVar("_R")


class _Once:
    """The outcome of a one-time event that any number of callers await.

    A Deferred has a single callback chain, so it cannot be handed to
    several callers; each waiter gets its own.
    """

    def __init__(self) -> None:
        self._waiters: list[Deferred[None]] | None = []
        self._failure: Failure | None = None

    def wait(self) -> Deferred[None]:
        if self._waiters is None:
            return succeed(None) if self._failure is None else fail(self._failure)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def fire(self, result: object) -> None:
        waiters, self._waiters = self._waiters or [], None
        if isinstance(result, Failure):
            self._failure = result
        for waiter in waiters:
            if self._failure is None:
                waiter.callback(None)
            else:
                waiter.errback(self._failure)


class StoreWorker:
    """One thread running jobs in the order given; results return to the reactor in batches.

    Twisted's ThreadPool costs a login about a quarter of the reactor thread's time for five
    store calls (its Team coordination, the context copy per call, and one reactor wake-up per
    result). Here a job is a put on a SimpleQueue, and results that finish while the reactor
    has not yet collected earlier ones share that earlier wake-up.
    """

    def __init__(self, reactor: IReactorFromThreads, name: str) -> None:
        self._reactor = reactor
        self._name = name
        self._jobs: SimpleQueue[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]] | None] = SimpleQueue()
        self._done: deque[tuple[Deferred[Any], Any]] = deque()
        self._done_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name)
        self._thread.start()

    def stop(self) -> None:
        """End the thread once the jobs queued so far have run, and wait for it."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, work: Callable[..., _R], *args: Any) -> Deferred[_R]:
        done: Deferred[_R] = Deferred()
        self._jobs.put((done, work, args))
        return done

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            done, work, args = job
            try:
                result = work(*args)
            except Exception:
                result = Failure()
            with self._done_lock:
                wake = not self._done
                self._done.append((done, result))
            if wake:
                self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        with self._done_lock:
            finished, self._done = self._done, deque()
        for done, result in finished:
            if isinstance(result, Failure):
                done.errback(result)
            else:
                done.callback(result)


@implementer(IStore)
class ThreadedStore(Service):
    """:class:`IStore` running a synchronous :class:`Database` in one worker thread.

    ``open_database`` opens (and migrates) either engine's database, e.g.
    ``lambda: SQLiteDatabase(path)`` or ``lambda: PostgresDatabase(dsn)``.
    The database is opened in the worker when the service starts; calls
    made before that queue up and run after it.  Calls run one at a time
    in order.  Once ``stopService`` or ``close`` is called new calls fail
    with :class:`StoreClosedError`, and the returned Deferred fires after
    the calls already queued have finished and the database is closed.  A
    stopped store cannot be started again.

    Reads run at once on the reactor thread, on a second, read-only connection, when the
    engine offers one (SQLite: `SQLiteDatabase.open_reader`; a read there takes microseconds
    and never waits for a writer in WAL mode) and no call is queued in the worker, so that a
    read always sees every write made before it. Otherwise, and whenever an inline read fails
    (the database is busy, say), it goes to the worker like any call. The inline reads of one
    round of the reactor's events share one read transaction (`Database.begin_reads`), where the
    reactor says when the round's events are over (``after_events``).

    One thread with one connection serialises every call, which suits
    SQLite (one writer at a time anyway) and a small PostgreSQL
    deployment.  Scaling out on PostgreSQL means a pool of connections,
    one per worker thread, each call taking a free one: the databases'
    methods are already safe to run side by side on separate connections,
    but calls would no longer run in the order they were made.
    """

    _log = GatedLogger()

    def __init__(
        self,
        open_database: Callable[[], Database],
        reactor: IReactorFromThreads,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open_database = open_database
        self._monotonic = monotonic
        self._reactor = reactor
        self._pool = StoreWorker(reactor, "sns-xmpp-store")
        # Read and written only in the worker thread.
        self._db: Database | None = None
        self._open_error: Exception | None = None
        self._retry_open_at = 0.0  # monotonic time before which an unreachable database is not asked again
        self._shut = False
        # Read and written only in the reactor thread.
        self._closing = False
        self._closed = _Once()
        self._reader: Database | None = None
        self._queued = 0  # calls given to the worker whose results have not come back
        self._aside = 0  # ... of them, those reads may overtake (run_aside)
        # The reads of one reactor round share a read transaction on the reader, ended once the
        # round's events are dispatched (`LeanEPollReactor.after_events`; see _read_inline).
        self._after_events: Callable[[Callable[[], None]], bool] | None = getattr(reactor, "after_events", None)
        self._reads_begun = False

    # -- service ----------------------------------------------------------

    def startService(self) -> None:
        if self._closing:
            raise RuntimeError("a stopped ThreadedStore cannot be started again")
        super().startService()
        self._pool.start()
        # The worker is not a daemon thread: if the service is never stopped (a
        # crash between start and stop), the reactor's shutdown must end it, or
        # the interpreter waits for it forever.
        IReactorCore(self._reactor).addSystemEventTrigger("during", "shutdown", self._stop_abandoned_pool)
        opening = self._pool.submit(self._database)
        opening.addCallbacks(self._open_reader, self._open_failed)

    def _open_failed(self, failure: Failure) -> None:
        if failure.check(StoreUnavailableError):
            self._log.warn("store.unavailable reason={reason} (tried again on the next call)",
                           reason=str(failure.value))
        else:
            self._log.failure("Could not open the store database", failure)

    def _open_reader(self, db: Database) -> None:
        if self._closing:
            return
        try:
            self._reader = db.open_reader()
        except Exception:
            self._log.failure("store.reader_unavailable")  # every read then goes to the worker

    def _stop_abandoned_pool(self) -> None:
        if self._pool.started and not self._closing:
            self._pool.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.close()

    def when_open(self) -> Deferred[None]:
        """Fires once the database is open; fails if opening it failed."""
        return self._call(lambda db: None)

    def _database(self) -> Database:
        # Opened by whichever job runs first, so that calls queued before
        # startService (they run once the pool starts) find it open too.
        if self._db is not None:
            return self._db
        if self._shut:
            raise StoreClosedError("the store is closed")
        if self._open_error is None:
            if self._monotonic() < self._retry_open_at:
                raise StoreUnavailableError("the store database could not be reached a moment ago")
            try:
                self._db = self._open_database()
                return self._db
            except StoreUnavailableError:
                # A database server that is down or still starting: a later call tries again,
                # at most once a second, so that a queue of calls does not hammer it.
                self._retry_open_at = self._monotonic() + OPEN_RETRY_SECONDS
                raise
            except Exception as error:
                self._open_error = error
        # Every call fails the same way, naming the cause, rather than each
        # one retrying an open that cannot work (e.g. a schema too new).
        raise StoreClosedError(f"could not open the store database: {self._open_error}") from self._open_error

    def _close_in_worker(self) -> None:
        self._shut = True
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _stop_pool(self, result: object) -> object:
        self._pool.stop()  # joins a worker that has just gone idle
        return result

    def _call(self, work: Callable[[Database], _R], aside: bool = False) -> Deferred[_R]:
        if self._closing:
            return fail(StoreClosedError("the store is closed"))
        self._queued += 1
        self._aside += aside
        done = self._pool.submit(self._in_worker, work)
        done.addBoth(self._came_back, aside)  # before the caller's callbacks, which may read again
        return done

    def _came_back(self, result: _R, aside: bool) -> _R:
        self._queued -= 1
        self._aside -= aside
        return result

    def _read(self, work: Callable[[Database], _R]) -> Deferred[_R]:
        inline = self._read_inline(work)
        return succeed(inline[0]) if inline else self._call(work)

    def _read_inline(self, work: Callable[[Database], _R]) -> tuple[_R] | tuple[()]:
        """``(result,)`` of *work* on the reader, or ``()`` when it must go to the worker: no
        reader, a call still queued (the read could overtake its write) other than a `run_aside`
        one, or the read failed (the worker's connection then gives the answer, or the error
        worth reporting)."""
        reader = self._reader
        if reader is not None and self._queued == self._aside and not self._closing:
            if not self._reads_begun and self._after_events is not None and self._after_events(self._end_reads):
                # Inside a round's events: this read and the round's later ones share one read
                # transaction, ended when the events are all dispatched. Nothing written by this
                # process can land meanwhile unseen: a write makes later reads go to the worker
                # (_queued), and its result comes back in a later round, outside the events. (A
                # run_aside write can land unseen: nothing reads what it writes without waiting
                # for its result first.)
                self._reads_begun = True
                with suppress(Exception):
                    reader.begin_reads()
            with suppress(Exception):
                return (work(reader),)
        return ()

    def _end_reads(self) -> None:
        self._reads_begun = False
        reader = self._reader
        if reader is not None:
            try:
                reader.end_reads()
            except Exception:
                self._log.failure("store.end_reads_failed")

    def _in_worker(self, work: Callable[[Database], _R]) -> _R:
        return work(self._database())

    # -- IStore -----------------------------------------------------------
    # Sequences are copied before they cross to the worker thread, so a
    # caller reusing its list cannot change what the call does.

    def close(self) -> Deferred[None]:
        if not self._closing:
            self._closing = True
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()
            if not self._pool.started:
                # Calls queued before a start that never came would otherwise
                # wait forever; run them, then the close.
                self._pool.start()
            closing = self._pool.submit(self._close_in_worker)
            closing.addBoth(self._stop_pool)
            closing.addBoth(self._closed.fire)
        return self._closed.wait()

    def get_account(self, jid: str) -> Deferred[Account | None]:
        return self._read(lambda db: db.get_account(jid))

    def account_exists(self, jid: str) -> Deferred[bool]:
        return self._read(lambda db: db.account_exists(jid))

    def create_account(
        self,
        jid: str,
        credentials: Sequence[ScramCredential],
        now: float,
        social: bool = False,
    ) -> Deferred[bool]:
        frozen = tuple(credentials)
        return self._call(lambda db: db.create_account(jid, frozen, now, social))

    def set_credentials(self, jid: str, credentials: Sequence[ScramCredential]) -> Deferred[bool]:
        frozen = tuple(credentials)
        return self._call(lambda db: db.set_credentials(jid, frozen))

    def delete_account(self, jid: str) -> Deferred[bool]:
        return self._call(lambda db: db.delete_account(jid))

    def list_accounts(self, domain: str | None = None) -> Deferred[list[str]]:
        return self._read(lambda db: db.list_accounts(domain))

    def get_roster(self, owner: str) -> Deferred[list[RosterItem]]:
        return self._read(lambda db: db.get_roster(owner))

    def load_roster(self, owner: str) -> Deferred[tuple[list[RosterItem], list[str], int]]:
        return self._read(lambda db: db.load_roster(owner))

    def put_roster_item(self, owner: str, item: RosterItem) -> Deferred[None]:
        return self._call(lambda db: db.put_roster_item(owner, item))

    def remove_roster_item(self, owner: str, contact: str) -> Deferred[None]:
        return self._call(lambda db: db.remove_roster_item(owner, contact))

    def add_subscription_request(self, owner: str, contact: str) -> Deferred[None]:
        return self._call(lambda db: db.add_subscription_request(owner, contact))

    def remove_subscription_request(self, owner: str, contact: str) -> Deferred[None]:
        return self._call(lambda db: db.remove_subscription_request(owner, contact))

    def subscription_requests(self, owner: str) -> Deferred[list[str]]:
        return self._read(lambda db: db.subscription_requests(owner))

    def store_offline(self, owner: str, stanza: str, now: float) -> Deferred[int]:
        return self._call(lambda db: db.store_offline(owner, stanza, now))

    def offline_messages(self, owner: str) -> Deferred[list[OfflineMessage]]:
        return self._read(lambda db: db.offline_messages(owner))

    def delete_offline(self, owner: str, ids: Sequence[int]) -> Deferred[None]:
        frozen = tuple(ids)
        return self._call(lambda db: db.delete_offline(owner, frozen))

    def count_offline(self, owner: str) -> Deferred[int]:
        return self._read(lambda db: db.count_offline(owner))

    def store_offline_capped(self, owner: str, stanza: str, now: float, cap: int,
                             max_size: int | None = None) -> Deferred[int | None]:
        return self._call(lambda db: composite.store_offline_capped(db, owner, stanza, now, cap, max_size))

    def get_link(self, site: str, account: str) -> Deferred[SocialLink | None]:
        return self._read(lambda db: db.get_link(site, account))

    def link_account(self, site: str, account: str, jid: str, now: float) -> Deferred[SocialLink]:
        return self._call(lambda db: db.link_account(site, account, jid, now))

    def touch_link(self, site: str, account: str, now: float) -> Deferred[None]:
        return self._call(lambda db: db.touch_link(site, account, now))

    def social_login(self, site: str, account: str, candidates: Iterable[str],
                     now: float) -> Deferred[SocialLink | None]:
        # The usual repeat login: a fresh link, read inline, nothing to write.
        inline = self._read_inline(lambda db: db.get_link(site, account))
        if inline and inline[0] is not None and composite.link_is_fresh(inline[0], now):
            return succeed(inline[0])
        frozen = tuple(candidates)
        return self._call(lambda db: composite.social_login(db, site, account, frozen, now))

    def list_links(self, site: str | None = None, jid: str | None = None) -> Deferred[list[SocialLink]]:
        return self._read(lambda db: db.list_links(site, jid))

    def remove_link(self, site: str, account: str) -> Deferred[bool]:
        return self._call(lambda db: db.remove_link(site, account))

    def revoke(self, jid: str, reason: str, now: float, site: str | None = None,
               account: str | None = None) -> Deferred[int | None]:
        return self._call(lambda db: db.revoke(jid, reason, now, site, account))

    def revocations_after(self, last_id: int, limit: int = 1000) -> Deferred[list[Revocation]]:
        return self._read(lambda db: db.revocations_after(last_id, limit))

    def last_revocation_id(self) -> Deferred[int]:
        return self._read(lambda db: db.last_revocation_id())

    def add_device_password(self, jid: str, label: str, credentials: Sequence[ScramCredential],
                            now: float, expires_at: float | None = None) -> Deferred[int]:
        frozen = tuple(credentials)
        return self._call(lambda db: db.add_device_password(jid, label, frozen, now, expires_at))

    def device_passwords(self, jid: str) -> Deferred[list[DevicePassword]]:
        return self._read(lambda db: db.device_passwords(jid))

    def remove_device_password(self, jid: str, device_id: int) -> Deferred[bool]:
        return self._call(lambda db: db.remove_device_password(jid, device_id))

    def device_password_jids(self) -> Deferred[list[str]]:
        return self._read(lambda db: db.device_password_jids())

    def extend_devices(self, jid: str, until: float, fast_lifetime: float) -> Deferred[None]:
        return self._call(lambda db: db.extend_devices(jid, until, fast_lifetime))

    def put_refresh_token(self, site: str, account: str, jid: str, sealed: str, now: float) -> Deferred[None]:
        return self._call(lambda db: db.put_refresh_token(site, account, jid, sealed, now))

    def refresh_tokens_due(self, before: float, limit: int = 100) -> Deferred[list[RefreshToken]]:
        return self._read(lambda db: db.refresh_tokens_due(before, limit))

    def delete_refresh_token(self, site: str, account: str) -> Deferred[None]:
        return self._call(lambda db: db.delete_refresh_token(site, account))

    def remember_token(self, site: str, token_digest: bytes, expires_at: float, now: float) -> Deferred[bool]:
        return self._call(lambda db: db.remember_token(site, token_digest, expires_at, now))

    def fast_token(self, jid: str, agent: str) -> Deferred[FastToken | None]:
        return self._read(lambda db: db.fast_token(jid, agent))

    def put_fast_token(self, jid: str, agent: str, mechanism: str, token_hash: bytes, issued_at: float,
                       expires_at: float, confirmed_until: float | None = None) -> Deferred[bool]:
        return self._call(lambda db: db.put_fast_token(jid, agent, mechanism, token_hash, issued_at, expires_at,
                                                       confirmed_until))

    def run(self, work: Callable[[Database], _R]) -> Deferred[_R]:
        return self._call(work)

    def run_read(self, work: Callable[[Database], _R]) -> Deferred[_R]:
        return self._read(work)

    def run_aside(self, work: Callable[[Database], _R]) -> Deferred[_R]:
        return self._call(work, aside=True)

    def use_fast_token(self, jid: str, agent: str, used_hash: bytes, count: int, now: float,
                       replacement: FastTokenIssue | None) -> Deferred[bool]:
        return self._call(lambda db: db.use_fast_token(jid, agent, used_hash, count, now, replacement))
