"""SQLite storage: the synchronous database the server and the admin tool use by default.

:class:`SQLiteDatabase` is plain blocking code for the admin tool and for
the one worker thread of :class:`ThreadedStore` (re-exported here), which
is what the server uses.  The SQL is shared with PostgreSQL
(:mod:`sns_xmpp.store.common`); only the pragmas, ``BEGIN IMMEDIATE`` and
the schema_version probe are SQLite's.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sns_xmpp.keyfiles import create_private, warn_if_open
from sns_xmpp.store.common import (
    SQL_ACCOUNT_SOCIAL,
    SQL_CLAIM_DIGEST,
    SQL_RECORD_VERSION,
    SQL_SCHEMA_VERSION,
    SQL_STORE_OFFLINE,
    SQL_SWEEP_DIGESTS,
    TOKEN_SWEEP_LIMIT,
    SchemaScript,
    load_schema_scripts,
    schema_too_new,
    split_statements,
)
from sns_xmpp.store.interface import NoSuchAccountError
from sns_xmpp.store.sql import SQLDatabase
from sns_xmpp.store.threaded import ThreadedStore

__all__ = [
    "SQLiteDatabase",
    "SchemaScript",
    "ThreadedStore",
    "load_schema_scripts",
    "split_statements",
]

SQL_HAS_VERSION_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"


# -- the synchronous database ---------------------------------------------


class SQLiteDatabase(SQLDatabase):
    """Blocking SQLite storage with the same methods as :class:`IStore` (most of them in
    :class:`~sns_xmpp.store.sql.SQLDatabase`, shared with PostgreSQL).

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
    # BEGIN IMMEDIATE already holds the database's one write lock.
    _SQL_ACCOUNT_SOCIAL_LOCKED = SQL_ACCOUNT_SOCIAL

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        on_disk = not (self.path == ":memory:" or self.path.startswith("file:"))
        if on_disk:
            # SQLite makes a new file 0644; it holds SCRAM keys and messages. It makes the
            # -wal and -shm files with the database file's mode, so they follow.
            create_private(self.path)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._wal(busy_timeout)
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            # A statement that may fail half-way (a foreign key, as every per-account table has)
            # keeps the pages it changes in a statement journal, a temporary file by default:
            # MAM's batched inserts wrote each index page there again per statement, through the
            # kernel (5.7 -> 1.3 us of system CPU per archived row, measured). In memory instead.
            self._conn.execute("PRAGMA temp_store = MEMORY")
            # The page cache of this, the writing connection: 16 MiB rather than SQLite's 2 MB. A
            # batch of archived messages touches the (owner, seq) index's page of every account
            # in it; with 1,000 accounts or more per batch those pages outgrew 2 MB and were read
            # back from the WAL for every batch (benchmarks/archive_writes.py: 10.9-11.2 -> 7.9-8.2
            # us per row with 1,000 accounts, 13.8-14.9 -> 12.0-12.2 with 10,000; little change
            # with 100). The cache only fills as pages are used (the idle phase's memory per
            # connection stays 8.6 KiB); reads have their own connection (open_reader).
            self._conn.execute("PRAGMA cache_size = -16384")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise
        if on_disk:
            for suffix in ("", "-wal", "-shm"):
                warn_if_open(self.path + suffix)

    def _wal(self, busy_timeout: float) -> None:
        # Switching a new file to WAL does not honour busy_timeout: while another
        # connection is creating the schema it fails at once with "database is
        # locked", so it is retried here, within the same bound.
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def close(self) -> None:
        self._conn.close()

    def open_reader(self) -> SQLiteDatabase | None:
        """A read-only connection to the same file for the calling thread (None for an in-memory
        database, which a second connection would not see). It never waits for a lock: a busy
        read fails at once, and the caller asks the writing connection instead."""
        if self.path == ":memory:" or self.path.startswith("file::memory:") or "mode=memory" in self.path:
            return None
        reader = SQLiteDatabase.__new__(SQLiteDatabase)
        reader.path = self.path
        reader._conn = sqlite3.connect(self.path, isolation_level=None)
        reader._conn.execute("PRAGMA query_only = ON")
        reader._conn.execute("PRAGMA busy_timeout = 0")
        return reader

    def begin_reads(self) -> None:
        """One read transaction for the reads until `end_reads`: in WAL mode each statement on its
        own takes and drops a read lock on the -shm file (two fcntl calls), over half of a
        primary-key lookup's cost (docs/performance.md). Only for the reader, which never writes:
        writers go on meanwhile, and an automatic checkpoint copies back what it can and leaves
        the rest to the next one (WAL readers do not block writers)."""
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN")

    def end_reads(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()

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
                raise schema_too_new(self.path, current, known)
            for script in scripts[current:]:
                for statement in split_statements(script.sql):
                    cursor.execute(statement)
                cursor.execute(SQL_RECORD_VERSION, (script.version, script.name))

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

    # -- replay protection ------------------------------------------------

    def remember_token(self, site: str, token_digest: bytes, expires_at: float, now: float) -> bool:
        with self._write() as cursor:
            cursor.execute(SQL_SWEEP_DIGESTS, (now, TOKEN_SWEEP_LIMIT))
            params = (site, token_digest.hex(), expires_at, now)
            return cursor.execute(SQL_CLAIM_DIGEST, params).rowcount == 1
