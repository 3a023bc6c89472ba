"""The store methods both engines run alike: the same SQL (:mod:`sns_xmpp.store.common`), the
same transactions, the same answers.

:class:`SQLDatabase` holds them once. An engine supplies how a statement is spelt for it
(`_sql`: PostgreSQL swaps the placeholders), how it reads (`_read`: the rows of one statement,
with its own rules for a lost connection), how it writes (`_write`: a cursor in one write
transaction) and how it reads an account's kind before replacing its credentials (with a row
lock where the engine has no database-wide write lock). What really differs (opening, the schema,
storing an offline message durably, claiming a token) stays in the engine's module.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from itertools import chain
from typing import Any

from sns_xmpp.store.common import (
    SQL_ACCOUNT_EXISTS,
    SQL_ADD_DEVICE,
    SQL_ADD_REQUEST,
    SQL_BUMP_ROSTER_VERSION,
    SQL_COUNT_OFFLINE,
    SQL_DELETE_ACCOUNT,
    SQL_DELETE_ACCOUNT_DATA,
    SQL_DELETE_CREDENTIALS,
    SQL_DELETE_DEVICES,
    SQL_DELETE_FAST,
    SQL_DELETE_OFFLINE,
    SQL_DELETE_REFRESH,
    SQL_DELETE_REFRESH_OF,
    SQL_DEVICE_JIDS,
    SQL_DEVICES,
    SQL_EXTEND_DEVICES,
    SQL_EXTEND_FAST,
    SQL_GET_ACCOUNT,
    SQL_GET_FAST,
    SQL_GET_LINK,
    SQL_GET_ROSTER,
    SQL_INSERT_ACCOUNT,
    SQL_INSERT_CREDENTIAL,
    SQL_INSERT_LINK,
    SQL_INVALIDATE_FAST,
    SQL_LAST_REVOCATION,
    SQL_LIST_ACCOUNTS,
    SQL_LIST_ACCOUNTS_AT,
    SQL_LIST_REQUESTS,
    SQL_LOAD_ROSTER,
    SQL_OFFLINE_MESSAGES,
    SQL_OFFLINE_USAGE,
    SQL_PUT_FAST,
    SQL_PUT_REFRESH,
    SQL_PUT_ROSTER_ITEM,
    SQL_RECORD_REVOCATION,
    SQL_REFRESH_DUE,
    SQL_REMOVE_DEVICE,
    SQL_REMOVE_LINK,
    SQL_REMOVE_REQUEST,
    SQL_REMOVE_ROSTER_ITEM,
    SQL_REVOCATIONS_AFTER,
    SQL_REVOKE_LINK,
    SQL_REVOKE_LINKS,
    SQL_ROTATE_CURRENT_FAST,
    SQL_ROTATE_PREVIOUS_FAST,
    SQL_TOUCH_LINK,
    AbandonTransaction,
    Transaction,
    account_from_rows,
    credential_rows,
    device_from_row,
    device_params,
    fast_token_from_row,
    link_from_row,
    list_links_sql,
    offline_from_row,
    revocation_from_row,
    roster_item_from_row,
    roster_item_params,
)
from sns_xmpp.store.interface import JidTakenError
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

VALUES_ROWS_PER_STATEMENT = 500  # rows per multi-row INSERT ... VALUES: fewer trips through the
# engine, and SQLite journals the pages a statement changes once (the user archive's rows: 50 rows,
# 23,200 instructions per row; 500, 19,500; measured)


@functools.cache
def _parents_sql(table: str, key: str, count: int) -> str:
    return "".join(("SELECT ", key, " FROM ", table, " WHERE ", key, " IN (", ", ".join("?" * count), ")"))


@functools.cache
def _values_insert(table: str, names: str, marks: str, rows: int, conflict: str) -> str:
    return "".join(("INSERT INTO ", table, " (", names, ") VALUES ", ", ".join([marks] * rows), conflict))


def insert_by_values(cursor: Any, table: str, columns: Sequence[tuple[str, str]],
                     rows: Sequence[Sequence[Any]], conflict: str, parent: tuple[int, str, str] | None) -> int:
    """`Transaction.insert_rows` as multi-row ``INSERT ... VALUES`` statements on the engine's
    own *cursor* (SQLite), the parents looked up first (one statement per 500 distinct values)."""
    if parent is not None:
        index, parent_table, key = parent
        wanted = sorted({row[index] for row in rows})
        known: set[Any] = set()
        for start in range(0, len(wanted), VALUES_ROWS_PER_STATEMENT):
            some = wanted[start:start + VALUES_ROWS_PER_STATEMENT]
            known.update(found[0] for found in cursor.execute(_parents_sql(parent_table, key, len(some)), some))
        if len(known) < len(wanted):
            rows = [row for row in rows if row[index] in known]
    names = ", ".join(name for name, _ in columns)
    marks = "(" + ", ".join("?" * len(columns)) + ")"
    tail = " " + conflict if conflict else ""
    inserted = 0
    for start in range(0, len(rows), VALUES_ROWS_PER_STATEMENT):
        chunk = rows[start:start + VALUES_ROWS_PER_STATEMENT]
        cursor.execute(_values_insert(table, names, marks, len(chunk), tail), list(chain.from_iterable(chunk)))
        inserted += cursor.rowcount
    return inserted


class _SpeltCursor:
    """A write cursor that spells each statement for its engine (the `Transaction` protocol)."""

    def __init__(self, cursor: Any, spell: Callable[[str], str],
                 insert: Callable[[Any, str, Sequence[tuple[str, str]], Sequence[Sequence[Any]], str,
                                   tuple[int, str, str] | None], int]) -> None:
        self._cursor = cursor
        self._spell = spell
        self._insert = insert

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self._cursor.execute(self._spell(sql), params)
        return self._cursor.fetchall() if self._cursor.description is not None else []

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def insert_rows(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]],
                    conflict: str = "", parent: tuple[int, str, str] | None = None) -> int:
        return self._insert(self._cursor, table, columns, rows, conflict, parent) if rows else 0


class SQLDatabase(ABC):
    """The shared half of :class:`SQLiteDatabase` and :class:`PostgresDatabase` (see the module)."""

    # Reads (social) of the account row inside the write that replaces its credentials.
    _SQL_ACCOUNT_SOCIAL_LOCKED: str

    def _sql(self, statement: str) -> str:
        """*statement* (``?`` placeholders) as this engine runs it."""
        return statement

    # How this engine takes many rows at once (`Transaction.insert_rows`).
    _insert_rows = staticmethod(insert_by_values)

    @abstractmethod
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """All rows of one read statement, already spelt for this engine."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """A cursor in one write transaction: committed on leaving, rolled back on an exception."""

    # -- a feature's own tables ---------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._read(self._sql(sql), params)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._write() as cursor:
            yield _SpeltCursor(cursor, self._sql, self._insert_rows)

    # -- accounts ---------------------------------------------------------

    def get_account(self, jid: str) -> Account | None:
        return account_from_rows(jid, self._read(self._sql(SQL_GET_ACCOUNT), (jid,)))

    def account_exists(self, jid: str) -> bool:
        return bool(self._read(self._sql(SQL_ACCOUNT_EXISTS), (jid,)))

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
            if cursor.execute(self._sql(SQL_INSERT_ACCOUNT), (jid, now, int(social))).rowcount != 1:
                return False
            cursor.executemany(self._sql(SQL_INSERT_CREDENTIAL), rows)
        return True

    def set_credentials(self, jid: str, credentials: Sequence[ScramCredential]) -> bool:
        rows = credential_rows(jid, credentials)
        with self._write() as cursor:
            row = cursor.execute(self._SQL_ACCOUNT_SOCIAL_LOCKED, (jid,)).fetchone()
            if row is None or row[0]:
                return False
            cursor.execute(self._sql(SQL_DELETE_CREDENTIALS), (jid,))
            cursor.executemany(self._sql(SQL_INSERT_CREDENTIAL), rows)
        return True

    def delete_account(self, jid: str) -> bool:
        with self._write() as cursor:
            for statement in SQL_DELETE_ACCOUNT_DATA:
                cursor.execute(self._sql(statement), (jid,))
            return bool(cursor.execute(self._sql(SQL_DELETE_ACCOUNT), (jid,)).rowcount == 1)

    def list_accounts(self, domain: str | None = None) -> list[str]:
        if domain is None:
            rows = self._read(self._sql(SQL_LIST_ACCOUNTS))
        else:
            suffix = "@" + domain
            rows = self._read(self._sql(SQL_LIST_ACCOUNTS_AT), (len(suffix) - 1, suffix))
        return [row[0] for row in rows]

    # -- roster -----------------------------------------------------------

    def get_roster(self, owner: str) -> list[RosterItem]:
        return [roster_item_from_row(row) for row in self._read(self._sql(SQL_GET_ROSTER), (owner,))]

    def put_roster_item(self, owner: str, item: RosterItem) -> None:
        with self._write() as cursor:
            cursor.execute(self._sql(SQL_PUT_ROSTER_ITEM), roster_item_params(owner, item))
            cursor.execute(self._sql(SQL_BUMP_ROSTER_VERSION), (owner,))

    def remove_roster_item(self, owner: str, contact: str) -> None:
        with self._write() as cursor:
            cursor.execute(self._sql(SQL_REMOVE_ROSTER_ITEM), (owner, contact))
            cursor.execute(self._sql(SQL_BUMP_ROSTER_VERSION), (owner,))

    # -- subscription requests --------------------------------------------

    def add_subscription_request(self, owner: str, contact: str) -> None:
        with self._write() as cursor:
            cursor.execute(self._sql(SQL_ADD_REQUEST), (owner, contact))

    def remove_subscription_request(self, owner: str, contact: str) -> None:
        with self._write() as cursor:
            cursor.execute(self._sql(SQL_REMOVE_REQUEST), (owner, contact))

    def subscription_requests(self, owner: str) -> list[str]:
        return [row[0] for row in self._read(self._sql(SQL_LIST_REQUESTS), (owner,))]

    def load_roster(self, owner: str) -> tuple[list[RosterItem], list[str], int]:
        """``(get_roster(owner), subscription_requests(owner), the roster's version)``, read in one
        statement."""
        items: list[RosterItem] = []
        requests: list[str] = []
        version = 0
        for row in self._read(self._sql(SQL_LOAD_ROSTER), (owner, owner, owner)):
            if row[0] == 0:
                items.append(roster_item_from_row(row[1:]))
            elif row[0] == 1:
                requests.append(row[1])
            else:
                version = int(row[1])
        return items, requests, version

    # -- offline messages -------------------------------------------------

    def offline_messages(self, owner: str) -> list[OfflineMessage]:
        return [offline_from_row(row) for row in self._read(self._sql(SQL_OFFLINE_MESSAGES), (owner,))]

    def delete_offline(self, owner: str, ids: Sequence[int]) -> None:
        with self._write() as cursor:
            cursor.executemany(self._sql(SQL_DELETE_OFFLINE), [(owner, id_) for id_ in ids])

    def count_offline(self, owner: str) -> int:
        return int(self._read(self._sql(SQL_COUNT_OFFLINE), (owner,))[0][0])

    def offline_usage(self, owner: str) -> tuple[int, int]:
        count, size = self._read(self._sql(SQL_OFFLINE_USAGE), (owner,))[0]
        return int(count), int(size)

    # -- social links -----------------------------------------------------

    def get_link(self, site: str, account: str) -> SocialLink | None:
        rows = self._read(self._sql(SQL_GET_LINK), (site, account))
        return link_from_row(rows[0]) if rows else None

    def link_account(self, site: str, account: str, jid: str, now: float) -> SocialLink:
        # A racing first login (another thread or process) may insert between our SELECT and
        # INSERTs. The INSERTs then do nothing (ON CONFLICT DO NOTHING; under PostgreSQL after
        # waiting for the winner's commit), rolling back drops the account row made here, and the
        # read after the transaction (a fresh snapshot) finds the winner's link.
        try:
            with self._write() as cursor:
                row = cursor.execute(self._sql(SQL_GET_LINK), (site, account)).fetchone()
                if row is not None:
                    return link_from_row(row)
                if cursor.execute(self._sql(SQL_INSERT_ACCOUNT), (jid, now, 1)).rowcount != 1:
                    raise AbandonTransaction
                if cursor.execute(self._sql(SQL_INSERT_LINK), (site, account, jid, now)).rowcount != 1:
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
            cursor.execute(self._sql(SQL_TOUCH_LINK), (now, site, account))

    def list_links(self, site: str | None = None, jid: str | None = None) -> list[SocialLink]:
        sql, params = list_links_sql(site, jid)
        return [link_from_row(row) for row in self._read(self._sql(sql), params)]

    def remove_link(self, site: str, account: str) -> bool:
        with self._write() as cursor:
            return bool(cursor.execute(self._sql(SQL_REMOVE_LINK), (site, account)).rowcount == 1)

    # -- revocation -------------------------------------------------------

    def revoke(self, jid: str, reason: str, now: float, site: str | None = None,
               account: str | None = None) -> int | None:
        """Revoke *jid*'s links (with *site* and *account*: that one link, whoever it names) and
        record the revocation, in one transaction; its id, or None if there was nothing to revoke
        (no such link; with no link at all, an account is still revoked: its sessions end)."""
        with self._write() as cursor:
            if site is not None and account is not None:
                row = cursor.execute(self._sql(SQL_REVOKE_LINK), (now, site, account)).fetchone()
                if row is None:
                    return None
                jid = row[0]
            else:
                cursor.execute(self._sql(SQL_REVOKE_LINKS), (now, jid))
            found = cursor.execute(self._sql(SQL_ACCOUNT_EXISTS), (jid,)).fetchone()
            if found is None:
                return None
            cursor.execute(self._sql(SQL_DELETE_FAST), (jid,))  # a revoked device logs in no more
            cursor.execute(self._sql(SQL_DELETE_DEVICES), (jid,))  # nor with its device password
            cursor.execute(self._sql(SQL_DELETE_REFRESH_OF), (jid,))  # nor is it re-confirmed
            recorded = cursor.execute(self._sql(SQL_RECORD_REVOCATION), (jid, reason, now)).fetchone()
            return int(recorded[0])

    def revocations_after(self, last_id: int, limit: int = 1000) -> list[Revocation]:
        return [revocation_from_row(row) for row in self._read(self._sql(SQL_REVOCATIONS_AFTER), (last_id, limit))]

    def last_revocation_id(self) -> int:
        return int(self._read(self._sql(SQL_LAST_REVOCATION), ())[0][0])

    # -- device passwords ---------------------------------------------------

    def add_device_password(self, jid: str, label: str, credentials: Sequence[ScramCredential], now: float,
                            expires_at: float | None = None) -> int:
        params = device_params(jid, label, credentials, now, expires_at)
        with self._write() as cursor:
            return int(cursor.execute(self._sql(SQL_ADD_DEVICE), params).fetchone()[0])

    def device_passwords(self, jid: str) -> list[DevicePassword]:
        return [device_from_row(row) for row in self._read(self._sql(SQL_DEVICES), (jid,))]

    def remove_device_password(self, jid: str, device_id: int) -> bool:
        with self._write() as cursor:
            return bool(cursor.execute(self._sql(SQL_REMOVE_DEVICE), (jid, device_id)).rowcount == 1)

    def device_password_jids(self) -> list[str]:
        return [row[0] for row in self._read(self._sql(SQL_DEVICE_JIDS), ())]

    # -- re-confirmation -------------------------------------------------------

    def extend_devices(self, jid: str, until: float, fast_lifetime: float) -> None:
        with self._write() as cursor:
            cursor.execute(self._sql(SQL_EXTEND_DEVICES), (until, jid))
            cursor.execute(self._sql(SQL_EXTEND_FAST), (until, fast_lifetime, until, fast_lifetime, until, jid))

    def put_refresh_token(self, site: str, account: str, jid: str, sealed: str, now: float) -> None:
        with self._write() as cursor:
            cursor.execute(self._sql(SQL_PUT_REFRESH), (site, account, jid, sealed, now))

    def refresh_tokens_due(self, before: float, limit: int = 100) -> list[RefreshToken]:
        return [RefreshToken(*row) for row in self._read(self._sql(SQL_REFRESH_DUE), (before, limit))]

    def delete_refresh_token(self, site: str, account: str) -> None:
        with self._write() as cursor:
            cursor.execute(self._sql(SQL_DELETE_REFRESH), (site, account))

    # -- FAST tokens (XEP-0484) -------------------------------------------

    def fast_token(self, jid: str, agent: str) -> FastToken | None:
        rows = self._read(self._sql(SQL_GET_FAST), (jid, agent))
        return fast_token_from_row(rows[0]) if rows else None

    def put_fast_token(self, jid: str, agent: str, mechanism: str, token_hash: bytes, issued_at: float,
                       expires_at: float, confirmed_until: float | None = None) -> bool:
        with self._write() as cursor:
            if cursor.execute(self._sql(SQL_ACCOUNT_EXISTS), (jid,)).fetchone() is None:
                return False
            cursor.execute(self._sql(SQL_PUT_FAST),
                           (jid, agent, mechanism, token_hash.hex(), issued_at, expires_at, confirmed_until))
        return True

    def use_fast_token(self, jid: str, agent: str, used_hash: bytes, count: int, now: float,
                       replacement: FastTokenIssue | None) -> bool:
        used = used_hash.hex()
        with self._write() as cursor:
            if replacement is None:
                return bool(cursor.execute(self._sql(SQL_INVALIDATE_FAST),
                                           (jid, agent, used, count, now, used, count, now)).rowcount == 1)
            new = replacement.token_hash.hex()
            if cursor.execute(self._sql(SQL_ROTATE_CURRENT_FAST), (
                    replacement.grace_until, count, replacement.mechanism, new, replacement.issued_at,
                    replacement.expires_at, jid, agent, used, count, now)).rowcount == 1:
                return True
            return bool(cursor.execute(self._sql(SQL_ROTATE_PREVIOUS_FAST), (
                count, replacement.mechanism, new, replacement.issued_at, replacement.expires_at,
                jid, agent, used, count, now)).rowcount == 1)
