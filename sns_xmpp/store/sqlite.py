"""SQLite storage: a synchronous database and the threaded IStore around it.

:class:`SQLiteDatabase` is plain blocking code for the admin tool and for
the one worker thread of :class:`ThreadedStore`, which is what the server
uses.  The SQL lives in module constants with ``?`` placeholders and sticks
to syntax PostgreSQL also accepts (upserts, RETURNING, row values), so a
PostgreSQL class can reuse it after swapping the placeholder style; only
the pragmas, ``BEGIN IMMEDIATE`` and the schema_version probe are SQLite's.
"""

from __future__ import annotations

import base64
import importlib.resources
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from sns_xmpp.store.interface import (
    IStore,
    JidTakenError,
    NoSuchAccountError,
    SchemaTooNewError,
    StoreClosedError,
)
from sns_xmpp.store.records import (
    Account,
    OfflineMessage,
    RosterItem,
    ScramCredential,
    SocialLink,
)

__all__ = [
    "SQLiteDatabase",
    "SchemaScript",
    "ThreadedStore",
    "load_schema_scripts",
    "split_statements",
]

_R = TypeVar("_R")

# How many expired replay tokens one remember_token call may delete: bounded
# so no single login pays for a large backlog, yet well above one insert per
# call so the table cannot grow without limit.
TOKEN_SWEEP_LIMIT = 100

# -- schema ---------------------------------------------------------------

SQL_HAS_VERSION_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
SQL_SCHEMA_VERSION = "SELECT MAX(version) FROM schema_version"
SQL_RECORD_VERSION = "INSERT INTO schema_version (version, name) VALUES (?, ?)"

# -- accounts -------------------------------------------------------------

SQL_GET_ACCOUNT = (
    "SELECT a.created_at, a.social, c.mechanism, c.salt, c.iterations,"
    " c.stored_key, c.server_key"
    " FROM accounts a LEFT JOIN scram_credentials c ON c.jid = a.jid"
    " WHERE a.jid = ? ORDER BY c.mechanism"
)
SQL_ACCOUNT_EXISTS = "SELECT 1 FROM accounts WHERE jid = ?"
SQL_ACCOUNT_SOCIAL = "SELECT social FROM accounts WHERE jid = ?"
SQL_INSERT_ACCOUNT = "INSERT INTO accounts (jid, created_at, social) VALUES (?, ?, ?) ON CONFLICT (jid) DO NOTHING"
SQL_INSERT_CREDENTIAL = (
    "INSERT INTO scram_credentials (jid, mechanism, salt, iterations, stored_key, server_key) VALUES (?, ?, ?, ?, ?, ?)"
)
SQL_DELETE_CREDENTIALS = "DELETE FROM scram_credentials WHERE jid = ?"
# Children first, so the foreign keys never see an orphan mid-transaction.
SQL_DELETE_ACCOUNT_DATA = (
    SQL_DELETE_CREDENTIALS,
    "DELETE FROM roster_items WHERE owner = ?",
    "DELETE FROM subscription_requests WHERE owner = ?",
    "DELETE FROM offline_messages WHERE owner = ?",
    "DELETE FROM social_links WHERE jid = ?",
)
SQL_DELETE_ACCOUNT = "DELETE FROM accounts WHERE jid = ?"
SQL_LIST_ACCOUNTS = "SELECT jid FROM accounts ORDER BY jid"
# Suffix match done with substr rather than LIKE: LIKE would treat '_' in a
# domain as a wildcard and is case-insensitive in SQLite only.  Parameters:
# len("@" + domain) - 1, "@" + domain.
SQL_LIST_ACCOUNTS_AT = "SELECT jid FROM accounts WHERE substr(jid, length(jid) - ?) = ? ORDER BY jid"

# -- roster and subscription requests -------------------------------------

SQL_GET_ROSTER = (
    "SELECT contact, name, groups_json, subscription, ask, approved FROM roster_items WHERE owner = ? ORDER BY contact"
)
SQL_PUT_ROSTER_ITEM = (
    "INSERT INTO roster_items"
    " (owner, contact, name, groups_json, subscription, ask, approved)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (owner, contact) DO UPDATE SET"
    " name = excluded.name, groups_json = excluded.groups_json,"
    " subscription = excluded.subscription, ask = excluded.ask,"
    " approved = excluded.approved"
)
SQL_REMOVE_ROSTER_ITEM = "DELETE FROM roster_items WHERE owner = ? AND contact = ?"
SQL_ADD_REQUEST = (
    "INSERT INTO subscription_requests (owner, contact) VALUES (?, ?) ON CONFLICT (owner, contact) DO NOTHING"
)
SQL_REMOVE_REQUEST = "DELETE FROM subscription_requests WHERE owner = ? AND contact = ?"
SQL_LIST_REQUESTS = "SELECT contact FROM subscription_requests WHERE owner = ? ORDER BY contact"

# -- offline messages -----------------------------------------------------

SQL_STORE_OFFLINE = "INSERT INTO offline_messages (owner, stanza, stored_at) VALUES (?, ?, ?) RETURNING id"
SQL_OFFLINE_MESSAGES = "SELECT id, stanza, stored_at FROM offline_messages WHERE owner = ? ORDER BY id"
SQL_DELETE_OFFLINE = "DELETE FROM offline_messages WHERE owner = ? AND id = ?"
SQL_COUNT_OFFLINE = "SELECT COUNT(*) FROM offline_messages WHERE owner = ?"

# -- social links ---------------------------------------------------------

SQL_GET_LINK = "SELECT site, account, jid, created_at, last_login FROM social_links WHERE site = ? AND account = ?"
SQL_INSERT_LINK = (
    "INSERT INTO social_links (site, account, jid, created_at, last_login)"
    " VALUES (?, ?, ?, ?, NULL) ON CONFLICT (site, account) DO NOTHING"
)
SQL_TOUCH_LINK = "UPDATE social_links SET last_login = ? WHERE site = ? AND account = ?"
SQL_REMOVE_LINK = "DELETE FROM social_links WHERE site = ? AND account = ?"
SQL_LIST_LINKS = "SELECT site, account, jid, created_at, last_login FROM social_links"
SQL_LIST_LINKS_ORDER = " ORDER BY site, account"

# -- replay protection ----------------------------------------------------

# One statement decides "first use" atomically in both engines: a new row is
# inserted, an expired one is taken over, a live one is left alone (rowcount 0).
SQL_CLAIM_DIGEST = (
    "INSERT INTO used_tokens (site, digest, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (site, digest) DO UPDATE SET expires_at = excluded.expires_at"
    " WHERE used_tokens.expires_at <= ?"
)
# DELETE ... LIMIT needs a compile-time option in SQLite and does not exist in
# PostgreSQL; a keyed subquery is portable and uses the expires_at index.
SQL_SWEEP_DIGESTS = (
    "DELETE FROM used_tokens WHERE (site, digest) IN"
    " (SELECT site, digest FROM used_tokens WHERE expires_at <= ? LIMIT ?)"
)


# -- schema files ---------------------------------------------------------

_SCHEMA_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class SchemaScript:
    version: int
    name: str
    sql: str


def load_schema_scripts() -> list[SchemaScript]:
    """The packaged ``schema/NNN_*.sql`` files, in version order.

    Versions must run 1, 2, 3... without gaps or duplicates: a packaging
    mistake should stop the server, not leave a database half-migrated.
    """
    folder = importlib.resources.files("sns_xmpp.store").joinpath("schema")
    scripts = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _SCHEMA_FILE.match(entry.name)
        if match is None:
            raise RuntimeError(f"schema file {entry.name!r} is not named NNN_name.sql")
        scripts.append(SchemaScript(int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    scripts.sort(key=lambda script: script.version)
    versions = [script.version for script in scripts]
    if versions != list(range(1, len(scripts) + 1)):
        raise RuntimeError(f"schema versions must be 1..n without gaps, got {versions}")
    return scripts


def split_statements(script: str) -> list[str]:
    """Split a script into statements, one per ``execute``.

    ``executescript`` would commit the migration transaction before running,
    so each statement is executed on its own; ``complete_statement`` keeps
    semicolons inside strings and comments from splitting a statement.
    """
    statements = []
    start = 0
    for end in (m.end() for m in re.finditer(";", script)):
        candidate = script[start:end]
        if sqlite3.complete_statement(candidate):
            statements.append(candidate.strip())
            start = end
    rest = "\n".join(line for line in script[start:].splitlines() if not line.strip().startswith("--"))
    if rest.strip():
        raise ValueError(f"schema script ends without ';': {rest.strip()[:60]!r}")
    return statements


# -- encoding -------------------------------------------------------------


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _unb64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _credential_rows(jid: str, credentials: Sequence[ScramCredential]) -> list[tuple[Any, ...]]:
    mechanisms = [c.mechanism for c in credentials]
    if len(set(mechanisms)) != len(mechanisms):
        raise ValueError(f"more than one credential per mechanism: {sorted(mechanisms)}")
    return [(jid, c.mechanism, _b64(c.salt), c.iterations, _b64(c.stored_key), _b64(c.server_key)) for c in credentials]


def _link(row: Sequence[Any]) -> SocialLink:
    return SocialLink(site=row[0], account=row[1], jid=row[2], created_at=row[3], last_login=row[4])


class _Abandon(Exception):
    """Roll the current transaction back without it being an error."""


# -- the synchronous database ---------------------------------------------


class SQLiteDatabase:
    """Blocking SQLite storage with the same methods as :class:`IStore`.

    Not thread-safe: use one instance from one thread at a time (the
    connection is opened with ``check_same_thread=False`` only so that it
    may be created and closed from different threads than it runs in).
    Other processes and connections may use the same file concurrently:
    every write transaction starts with ``BEGIN IMMEDIATE`` and waits up to
    ``busy_timeout`` seconds for the write lock.
    """

    # Taking the write lock up front means a transaction never has to upgrade
    # a read snapshot, which in WAL mode fails at once instead of waiting.
    _BEGIN_WRITE = "BEGIN IMMEDIATE"

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        cursor = self._conn.cursor()
        cursor.execute(self._BEGIN_WRITE)
        try:
            yield cursor
            cursor.execute("COMMIT")
        except BaseException:
            # Some errors (disk full, I/O) already rolled back; a second
            # ROLLBACK would raise and hide the real error.
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    # -- schema -----------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self._current_version(self._conn.cursor())

    def _current_version(self, cursor: sqlite3.Cursor) -> int:
        if cursor.execute(SQL_HAS_VERSION_TABLE).fetchone() is None:
            return 0
        version = cursor.execute(SQL_SCHEMA_VERSION).fetchone()[0]
        return int(version or 0)

    def _migrate(self) -> None:
        scripts = load_schema_scripts()
        known = scripts[-1].version if scripts else 0
        # One write transaction: a second process opening the same file at the
        # same time waits, then finds the schema already current.
        with self._write() as cursor:
            current = self._current_version(cursor)
            if current > known:
                raise SchemaTooNewError(
                    f"{self.path}: database schema version {current} is newer than"
                    f" this sns-xmpp supports (version {known}); run the release"
                    " that wrote it or restore a backup"
                )
            for script in scripts[current:]:
                for statement in split_statements(script.sql):
                    cursor.execute(statement)
                cursor.execute(SQL_RECORD_VERSION, (script.version, script.name))

    # -- accounts ---------------------------------------------------------

    def get_account(self, jid: str) -> Account | None:
        rows = self._conn.execute(SQL_GET_ACCOUNT, (jid,)).fetchall()
        if not rows:
            return None
        credentials = tuple(
            ScramCredential(
                mechanism=row[2],
                salt=_unb64(row[3]),
                iterations=row[4],
                stored_key=_unb64(row[5]),
                server_key=_unb64(row[6]),
            )
            for row in rows
            if row[2] is not None  # the LEFT JOIN row of an account without any
        )
        return Account(jid=jid, created_at=rows[0][0], credentials=credentials, social=bool(rows[0][1]))

    def account_exists(self, jid: str) -> bool:
        return self._conn.execute(SQL_ACCOUNT_EXISTS, (jid,)).fetchone() is not None

    def create_account(
        self,
        jid: str,
        credentials: Sequence[ScramCredential],
        now: float,
        social: bool = False,
    ) -> bool:
        if social and credentials:
            raise ValueError("a social account cannot have credentials")
        rows = _credential_rows(jid, credentials)
        with self._write() as cursor:
            if cursor.execute(SQL_INSERT_ACCOUNT, (jid, now, int(social))).rowcount != 1:
                return False
            cursor.executemany(SQL_INSERT_CREDENTIAL, rows)
        return True

    def set_credentials(self, jid: str, credentials: Sequence[ScramCredential]) -> bool:
        rows = _credential_rows(jid, credentials)
        with self._write() as cursor:
            row = cursor.execute(SQL_ACCOUNT_SOCIAL, (jid,)).fetchone()
            if row is None or row[0]:
                return False
            cursor.execute(SQL_DELETE_CREDENTIALS, (jid,))
            cursor.executemany(SQL_INSERT_CREDENTIAL, rows)
        return True

    def delete_account(self, jid: str) -> bool:
        with self._write() as cursor:
            for statement in SQL_DELETE_ACCOUNT_DATA:
                cursor.execute(statement, (jid,))
            return cursor.execute(SQL_DELETE_ACCOUNT, (jid,)).rowcount == 1

    def list_accounts(self, domain: str | None = None) -> list[str]:
        if domain is None:
            rows = self._conn.execute(SQL_LIST_ACCOUNTS).fetchall()
        else:
            suffix = "@" + domain
            rows = self._conn.execute(SQL_LIST_ACCOUNTS_AT, (len(suffix) - 1, suffix)).fetchall()
        return [row[0] for row in rows]

    # -- roster -----------------------------------------------------------

    def get_roster(self, owner: str) -> list[RosterItem]:
        return [
            RosterItem(
                contact=row[0],
                name=row[1],
                groups=tuple(json.loads(row[2])),
                subscription=row[3],
                ask=bool(row[4]),
                approved=bool(row[5]),
            )
            for row in self._conn.execute(SQL_GET_ROSTER, (owner,))
        ]

    def put_roster_item(self, owner: str, item: RosterItem) -> None:
        groups = json.dumps(list(item.groups), ensure_ascii=False)
        params = (
            owner,
            item.contact,
            item.name,
            groups,
            item.subscription,
            int(item.ask),
            int(item.approved),
        )
        with self._write() as cursor:
            cursor.execute(SQL_PUT_ROSTER_ITEM, params)

    def remove_roster_item(self, owner: str, contact: str) -> None:
        with self._write() as cursor:
            cursor.execute(SQL_REMOVE_ROSTER_ITEM, (owner, contact))

    # -- subscription requests --------------------------------------------

    def add_subscription_request(self, owner: str, contact: str) -> None:
        with self._write() as cursor:
            cursor.execute(SQL_ADD_REQUEST, (owner, contact))

    def remove_subscription_request(self, owner: str, contact: str) -> None:
        with self._write() as cursor:
            cursor.execute(SQL_REMOVE_REQUEST, (owner, contact))

    def subscription_requests(self, owner: str) -> list[str]:
        return [row[0] for row in self._conn.execute(SQL_LIST_REQUESTS, (owner,))]

    # -- offline messages -------------------------------------------------

    def store_offline(self, owner: str, stanza: str, now: float) -> int:
        # synchronous=NORMAL lets a WAL commit be lost in a power cut; the
        # sender was told the message is stored, so sync this one commit.
        self._conn.execute("PRAGMA synchronous = FULL")
        try:
            with self._write() as cursor:
                (row,) = cursor.execute(SQL_STORE_OFFLINE, (owner, stanza, now)).fetchall()
        except sqlite3.IntegrityError:
            # The owner foreign key: one round trip both checks the user and stores.
            raise NoSuchAccountError(owner) from None
        finally:
            self._conn.execute("PRAGMA synchronous = NORMAL")
        return int(row[0])

    def offline_messages(self, owner: str) -> list[OfflineMessage]:
        return [
            OfflineMessage(id=row[0], stanza=row[1], stored_at=row[2])
            for row in self._conn.execute(SQL_OFFLINE_MESSAGES, (owner,))
        ]

    def delete_offline(self, owner: str, ids: Sequence[int]) -> None:
        with self._write() as cursor:
            cursor.executemany(SQL_DELETE_OFFLINE, [(owner, id_) for id_ in ids])

    def count_offline(self, owner: str) -> int:
        return int(self._conn.execute(SQL_COUNT_OFFLINE, (owner,)).fetchone()[0])

    # -- social links -----------------------------------------------------

    def get_link(self, site: str, account: str) -> SocialLink | None:
        row = self._conn.execute(SQL_GET_LINK, (site, account)).fetchone()
        return None if row is None else _link(row)

    def link_account(self, site: str, account: str, jid: str, now: float) -> SocialLink:
        try:
            with self._write() as cursor:
                row = cursor.execute(SQL_GET_LINK, (site, account)).fetchone()
                if row is not None:
                    return _link(row)
                # DO NOTHING rather than failing: under PostgreSQL a racing
                # first login may insert between our SELECT and INSERT, and
                # then the SELECT below must find its link.
                if cursor.execute(SQL_INSERT_ACCOUNT, (jid, now, 1)).rowcount != 1:
                    raise _Abandon
                if cursor.execute(SQL_INSERT_LINK, (site, account, jid, now)).rowcount != 1:
                    raise _Abandon  # also drops the account row made above
                return SocialLink(site, account, jid, now, None)
        except _Abandon:
            pass
        link = self.get_link(site, account)
        if link is None:
            raise JidTakenError(f"an account named {jid} already exists")
        return link

    def touch_link(self, site: str, account: str, now: float) -> None:
        with self._write() as cursor:
            cursor.execute(SQL_TOUCH_LINK, (now, site, account))

    def list_links(self, site: str | None = None, jid: str | None = None) -> list[SocialLink]:
        clauses: list[str] = []
        params: list[str] = []
        if site is not None:
            clauses.append("site = ?")
            params.append(site)
        if jid is not None:
            clauses.append("jid = ?")
            params.append(jid)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        sql = SQL_LIST_LINKS + where + SQL_LIST_LINKS_ORDER
        return [_link(row) for row in self._conn.execute(sql, params)]

    def remove_link(self, site: str, account: str) -> bool:
        with self._write() as cursor:
            return cursor.execute(SQL_REMOVE_LINK, (site, account)).rowcount == 1

    # -- replay protection ------------------------------------------------

    def remember_token(self, site: str, token_digest: bytes, expires_at: float, now: float) -> bool:
        with self._write() as cursor:
            cursor.execute(SQL_SWEEP_DIGESTS, (now, TOKEN_SWEEP_LIMIT))
            params = (site, token_digest.hex(), expires_at, now)
            return cursor.execute(SQL_CLAIM_DIGEST, params).rowcount == 1


# -- the threaded IStore --------------------------------------------------


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


@implementer(IStore)
class ThreadedStore(Service):
    """:class:`IStore` running a :class:`SQLiteDatabase` in one worker thread.

    The database is opened in the worker when the service starts; calls
    made before that queue up and run after it.  Calls run one at a time
    in order.  Once ``stopService`` or ``close`` is called new calls fail
    with :class:`StoreClosedError`, and the returned Deferred fires after
    the calls already queued have finished and the database is closed.  A
    stopped store cannot be started again.
    """

    _log = Logger()

    def __init__(
        self,
        open_database: Callable[[], SQLiteDatabase],
        reactor: IReactorFromThreads,
    ) -> None:
        self._open_database = open_database
        self._reactor = reactor
        self._pool = ThreadPool(1, 1, name="sns-xmpp-store")
        # Read and written only in the worker thread.
        self._db: SQLiteDatabase | None = None
        self._open_error: Exception | None = None
        self._shut = False
        # Read and written only in the reactor thread.
        self._closing = False
        self._closed = _Once()

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
        opening = deferToThreadPool(self._reactor, self._pool, self._database)
        opening.addErrback(lambda failure: self._log.failure("Could not open the store database", failure))

    def _stop_abandoned_pool(self) -> None:
        if self._pool.started and not self._closing:
            self._pool.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.close()

    def when_open(self) -> Deferred[None]:
        """Fires once the database is open; fails if opening it failed."""
        return self._call(lambda db: None)

    def _database(self) -> SQLiteDatabase:
        # Opened by whichever job runs first, so that calls queued before
        # startService (they run once the pool starts) find it open too.
        if self._db is not None:
            return self._db
        if self._shut:
            raise StoreClosedError("the store is closed")
        if self._open_error is None:
            try:
                self._db = self._open_database()
                return self._db
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

    def _call(self, work: Callable[[SQLiteDatabase], _R]) -> Deferred[_R]:
        if self._closing:
            return fail(StoreClosedError("the store is closed"))
        return deferToThreadPool(self._reactor, self._pool, self._in_worker, work)

    def _in_worker(self, work: Callable[[SQLiteDatabase], _R]) -> _R:
        return work(self._database())

    # -- IStore -----------------------------------------------------------
    # Sequences are copied before they cross to the worker thread, so a
    # caller reusing its list cannot change what the call does.

    def close(self) -> Deferred[None]:
        if not self._closing:
            self._closing = True
            if not self._pool.started:
                # Calls queued before a start that never came would otherwise
                # wait forever; run them, then the close.
                self._pool.start()
            closing = deferToThreadPool(self._reactor, self._pool, self._close_in_worker)
            closing.addBoth(self._stop_pool)
            closing.addBoth(self._closed.fire)
        return self._closed.wait()

    def get_account(self, jid: str) -> Deferred[Account | None]:
        return self._call(lambda db: db.get_account(jid))

    def account_exists(self, jid: str) -> Deferred[bool]:
        return self._call(lambda db: db.account_exists(jid))

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
        return self._call(lambda db: db.list_accounts(domain))

    def get_roster(self, owner: str) -> Deferred[list[RosterItem]]:
        return self._call(lambda db: db.get_roster(owner))

    def put_roster_item(self, owner: str, item: RosterItem) -> Deferred[None]:
        return self._call(lambda db: db.put_roster_item(owner, item))

    def remove_roster_item(self, owner: str, contact: str) -> Deferred[None]:
        return self._call(lambda db: db.remove_roster_item(owner, contact))

    def add_subscription_request(self, owner: str, contact: str) -> Deferred[None]:
        return self._call(lambda db: db.add_subscription_request(owner, contact))

    def remove_subscription_request(self, owner: str, contact: str) -> Deferred[None]:
        return self._call(lambda db: db.remove_subscription_request(owner, contact))

    def subscription_requests(self, owner: str) -> Deferred[list[str]]:
        return self._call(lambda db: db.subscription_requests(owner))

    def store_offline(self, owner: str, stanza: str, now: float) -> Deferred[int]:
        return self._call(lambda db: db.store_offline(owner, stanza, now))

    def offline_messages(self, owner: str) -> Deferred[list[OfflineMessage]]:
        return self._call(lambda db: db.offline_messages(owner))

    def delete_offline(self, owner: str, ids: Sequence[int]) -> Deferred[None]:
        frozen = tuple(ids)
        return self._call(lambda db: db.delete_offline(owner, frozen))

    def count_offline(self, owner: str) -> Deferred[int]:
        return self._call(lambda db: db.count_offline(owner))

    def get_link(self, site: str, account: str) -> Deferred[SocialLink | None]:
        return self._call(lambda db: db.get_link(site, account))

    def link_account(self, site: str, account: str, jid: str, now: float) -> Deferred[SocialLink]:
        return self._call(lambda db: db.link_account(site, account, jid, now))

    def touch_link(self, site: str, account: str, now: float) -> Deferred[None]:
        return self._call(lambda db: db.touch_link(site, account, now))

    def list_links(self, site: str | None = None, jid: str | None = None) -> Deferred[list[SocialLink]]:
        return self._call(lambda db: db.list_links(site, jid))

    def remove_link(self, site: str, account: str) -> Deferred[bool]:
        return self._call(lambda db: db.remove_link(site, account))

    def remember_token(self, site: str, token_digest: bytes, expires_at: float, now: float) -> Deferred[bool]:
        return self._call(lambda db: db.remember_token(site, token_digest, expires_at, now))
