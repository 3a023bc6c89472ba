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

from sns_xmpp.store.common import (
    SQL_ACCOUNT_EXISTS,
    SQL_ACCOUNT_SOCIAL,
    SQL_ADD_REQUEST,
    SQL_CLAIM_DIGEST,
    SQL_COUNT_OFFLINE,
    SQL_DELETE_ACCOUNT,
    SQL_DELETE_ACCOUNT_DATA,
    SQL_DELETE_CREDENTIALS,
    SQL_DELETE_OFFLINE,
    SQL_GET_ACCOUNT,
    SQL_GET_LINK,
    SQL_GET_ROSTER,
    SQL_INSERT_ACCOUNT,
    SQL_INSERT_CREDENTIAL,
    SQL_INSERT_LINK,
    SQL_LIST_ACCOUNTS,
    SQL_LIST_ACCOUNTS_AT,
    SQL_LIST_REQUESTS,
    SQL_OFFLINE_MESSAGES,
    SQL_PUT_ROSTER_ITEM,
    SQL_RECORD_VERSION,
    SQL_REMOVE_LINK,
    SQL_REMOVE_REQUEST,
    SQL_REMOVE_ROSTER_ITEM,
    SQL_SCHEMA_VERSION,
    SQL_STORE_OFFLINE,
    SQL_SWEEP_DIGESTS,
    SQL_TOUCH_LINK,
    TOKEN_SWEEP_LIMIT,
    AbandonTransaction,
    SchemaScript,
    account_from_rows,
    credential_rows,
    link_from_row,
    list_links_sql,
    load_schema_scripts,
    offline_from_row,
    roster_item_from_row,
    roster_item_params,
    schema_too_new,
    split_statements,
)
from sns_xmpp.store.interface import JidTakenError, NoSuchAccountError
from sns_xmpp.store.records import (
    Account,
    OfflineMessage,
    RosterItem,
    ScramCredential,
    SocialLink,
)
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
            self._wal(busy_timeout)
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

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

    # -- accounts ---------------------------------------------------------

    def get_account(self, jid: str) -> Account | None:
        return account_from_rows(jid, self._conn.execute(SQL_GET_ACCOUNT, (jid,)).fetchall())

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
        rows = credential_rows(jid, credentials)
        with self._write() as cursor:
            if cursor.execute(SQL_INSERT_ACCOUNT, (jid, now, int(social))).rowcount != 1:
                return False
            cursor.executemany(SQL_INSERT_CREDENTIAL, rows)
        return True

    def set_credentials(self, jid: str, credentials: Sequence[ScramCredential]) -> bool:
        rows = credential_rows(jid, credentials)
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
        return [roster_item_from_row(row) for row in self._conn.execute(SQL_GET_ROSTER, (owner,))]

    def put_roster_item(self, owner: str, item: RosterItem) -> None:
        with self._write() as cursor:
            cursor.execute(SQL_PUT_ROSTER_ITEM, roster_item_params(owner, item))

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
        return [offline_from_row(row) for row in self._conn.execute(SQL_OFFLINE_MESSAGES, (owner,))]

    def delete_offline(self, owner: str, ids: Sequence[int]) -> None:
        with self._write() as cursor:
            cursor.executemany(SQL_DELETE_OFFLINE, [(owner, id_) for id_ in ids])

    def count_offline(self, owner: str) -> int:
        return int(self._conn.execute(SQL_COUNT_OFFLINE, (owner,)).fetchone()[0])

    # -- social links -----------------------------------------------------

    def get_link(self, site: str, account: str) -> SocialLink | None:
        row = self._conn.execute(SQL_GET_LINK, (site, account)).fetchone()
        return None if row is None else link_from_row(row)

    def link_account(self, site: str, account: str, jid: str, now: float) -> SocialLink:
        try:
            with self._write() as cursor:
                row = cursor.execute(SQL_GET_LINK, (site, account)).fetchone()
                if row is not None:
                    return link_from_row(row)
                # DO NOTHING rather than failing: under PostgreSQL a racing
                # first login may insert between our SELECT and INSERT, and
                # then the SELECT below must find its link.
                if cursor.execute(SQL_INSERT_ACCOUNT, (jid, now, 1)).rowcount != 1:
                    raise AbandonTransaction
                if cursor.execute(SQL_INSERT_LINK, (site, account, jid, now)).rowcount != 1:
                    raise AbandonTransaction  # also drops the account row made above
                return SocialLink(site, account, jid, now, None)
        except AbandonTransaction:
            pass
        link = self.get_link(site, account)
        if link is None:
            raise JidTakenError(f"an account named {jid} already exists")
        return link

    def touch_link(self, site: str, account: str, now: float) -> None:
        with self._write() as cursor:
            cursor.execute(SQL_TOUCH_LINK, (now, site, account))

    def list_links(self, site: str | None = None, jid: str | None = None) -> list[SocialLink]:
        sql, params = list_links_sql(site, jid)
        return [link_from_row(row) for row in self._conn.execute(sql, params)]

    def remove_link(self, site: str, account: str) -> bool:
        with self._write() as cursor:
            return cursor.execute(SQL_REMOVE_LINK, (site, account)).rowcount == 1

    # -- replay protection ------------------------------------------------

    def remember_token(self, site: str, token_digest: bytes, expires_at: float, now: float) -> bool:
        with self._write() as cursor:
            cursor.execute(SQL_SWEEP_DIGESTS, (now, TOKEN_SWEEP_LIMIT))
            params = (site, token_digest.hex(), expires_at, now)
            return cursor.execute(SQL_CLAIM_DIGEST, params).rowcount == 1
