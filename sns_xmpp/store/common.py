"""What the SQLite and PostgreSQL databases share: SQL, schema files, row conversion.

The SQL lives in module constants with ``?`` placeholders and sticks to
syntax both engines accept (upserts, RETURNING, row values); the PostgreSQL
database swaps the placeholder style with :func:`postgres_placeholders`.
Only the connection set-up, the transaction statements, the schema_version
probe and a few PostgreSQL-only locking phrases live in the backends.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import json
import re
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from sns_xmpp.store.interface import SchemaTooNewError
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

__all__ = [
    "AbandonTransaction",
    "Database",
    "SchemaScript",
    "Transaction",
    "account_from_rows",
    "credential_rows",
    "device_from_row",
    "device_params",
    "link_from_row",
    "list_links_sql",
    "load_schema_scripts",
    "migrate",
    "offline_from_row",
    "postgres_placeholders",
    "revocation_from_row",
    "roster_item_from_row",
    "roster_item_params",
    "schema_too_new",
    "split_statements",
]

# How many expired replay tokens one remember_token call may delete: bounded
# so no single login pays for a large backlog, yet well above one insert per
# call so the table cannot grow without limit.
TOKEN_SWEEP_LIMIT = 100

# -- schema ---------------------------------------------------------------

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
    "DELETE FROM roster_versions WHERE owner = ?",
    "DELETE FROM subscription_requests WHERE owner = ?",
    "DELETE FROM offline_messages WHERE owner = ?",
    "DELETE FROM social_links WHERE jid = ?",
    "DELETE FROM revocations WHERE jid = ?",
    "DELETE FROM fast_tokens WHERE jid = ?",
    "DELETE FROM device_passwords WHERE jid = ?",
    "DELETE FROM refresh_tokens WHERE jid = ?",
)
SQL_DELETE_ACCOUNT = "DELETE FROM accounts WHERE jid = ?"
SQL_LIST_ACCOUNTS = "SELECT jid FROM accounts ORDER BY jid"
# Suffix match done with substr rather than LIKE: LIKE would treat '_' in a
# domain as a wildcard and is case-insensitive in SQLite only.  Parameters:
# len("@" + domain) - 1, "@" + domain.  The CAST keeps PostgreSQL's
# substr(text, integer) even if the driver sends the number as a bigint.
SQL_LIST_ACCOUNTS_AT = "SELECT jid FROM accounts WHERE substr(jid, length(jid) - CAST(? AS INTEGER)) = ? ORDER BY jid"

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
# Every change to an owner's items bumps the owner's roster version in the same transaction
# (RFC 6121 2.6): whichever feature changed the roster, a client's cached version is then stale.
SQL_BUMP_ROSTER_VERSION = (
    "INSERT INTO roster_versions (owner, version) VALUES (?, 1)"
    " ON CONFLICT (owner) DO UPDATE SET version = roster_versions.version + 1"
)
SQL_ADD_REQUEST = (
    "INSERT INTO subscription_requests (owner, contact) VALUES (?, ?) ON CONFLICT (owner, contact) DO NOTHING"
)
SQL_REMOVE_REQUEST = "DELETE FROM subscription_requests WHERE owner = ? AND contact = ?"
SQL_LIST_REQUESTS = "SELECT contact FROM subscription_requests WHERE owner = ? ORDER BY contact"
# All three (items, requests, version), as a session starts: one statement, so one snapshot and
# one trip (SQLite takes and drops a lock with two system calls for each statement).
SQL_LOAD_ROSTER = (
    "SELECT 0, contact, name, groups_json, subscription, ask, approved FROM roster_items WHERE owner = ?"
    " UNION ALL SELECT 1, contact, NULL, NULL, NULL, NULL, NULL FROM subscription_requests WHERE owner = ?"
    " UNION ALL SELECT 2, CAST(version AS TEXT), NULL, NULL, NULL, NULL, NULL FROM roster_versions WHERE owner = ?"
    " ORDER BY 1, 2"
)

# -- offline messages -----------------------------------------------------

SQL_STORE_OFFLINE = "INSERT INTO offline_messages (owner, stanza, stored_at) VALUES (?, ?, ?) RETURNING id"
SQL_OFFLINE_MESSAGES = "SELECT id, stanza, stored_at FROM offline_messages WHERE owner = ? ORDER BY id"
SQL_DELETE_OFFLINE = "DELETE FROM offline_messages WHERE owner = ? AND id = ?"
SQL_COUNT_OFFLINE = "SELECT COUNT(*) FROM offline_messages WHERE owner = ?"
SQL_OFFLINE_USAGE = "SELECT COUNT(*), COALESCE(SUM(LENGTH(stanza)), 0) FROM offline_messages WHERE owner = ?"

# -- social links ---------------------------------------------------------

SQL_GET_LINK = (
    "SELECT site, account, jid, created_at, last_login, revoked_at FROM social_links WHERE site = ? AND account = ?"
)
SQL_INSERT_LINK = (
    "INSERT INTO social_links (site, account, jid, created_at, last_login)"
    " VALUES (?, ?, ?, ?, NULL) ON CONFLICT (site, account) DO NOTHING"
)
SQL_TOUCH_LINK = "UPDATE social_links SET last_login = ? WHERE site = ? AND account = ?"
SQL_REMOVE_LINK = "DELETE FROM social_links WHERE site = ? AND account = ?"
SQL_LIST_LINKS = "SELECT site, account, jid, created_at, last_login, revoked_at FROM social_links"
SQL_REVOKE_LINKS = "UPDATE social_links SET revoked_at = ? WHERE jid = ?"
SQL_REVOKE_LINK = "UPDATE social_links SET revoked_at = ? WHERE site = ? AND account = ? RETURNING jid"
SQL_RECORD_REVOCATION = "INSERT INTO revocations (jid, reason, at) VALUES (?, ?, ?) RETURNING id"
SQL_REVOCATIONS_AFTER = "SELECT id, jid, reason, at FROM revocations WHERE id > ? ORDER BY id LIMIT ?"
SQL_LAST_REVOCATION = "SELECT COALESCE(MAX(id), 0) FROM revocations"
SQL_LIST_LINKS_ORDER = " ORDER BY site, account"

# -- FAST tokens (XEP-0484) ------------------------------------------------

SQL_GET_FAST = (
    "SELECT jid, agent, mechanism, token_hash, issued_at, expires_at, last_count, previous_hash,"
    " previous_until, previous_count, confirmed_until FROM fast_tokens WHERE jid = ? AND agent = ?"
)
# A new token for (jid, agent) replaces whatever was there, previous one included.
SQL_PUT_FAST = (
    "INSERT INTO fast_tokens (jid, agent, mechanism, token_hash, issued_at, expires_at, confirmed_until)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (jid, agent) DO UPDATE SET mechanism = excluded.mechanism,"
    " token_hash = excluded.token_hash, issued_at = excluded.issued_at, expires_at = excluded.expires_at,"
    " last_count = 0, previous_hash = NULL, previous_until = NULL, previous_count = 0,"
    " confirmed_until = excluded.confirmed_until"
)
# A login with the current token (its count above the last, the token unexpired) rotates it in one
# statement: the used one becomes the previous, taken until the grace period ends. SET reads the
# row as it was, in both engines.
SQL_ROTATE_CURRENT_FAST = (
    "UPDATE fast_tokens SET previous_hash = token_hash, previous_until = ?, previous_count = ?,"
    " mechanism = ?, token_hash = ?, issued_at = ?, expires_at = ?, last_count = 0"
    " WHERE jid = ? AND agent = ? AND token_hash = ? AND last_count < ? AND expires_at > ?"
)
# A login with the previous token during its grace period (the client missed the new one): a new
# current one; the previous stays as it was, with the count taken.
SQL_ROTATE_PREVIOUS_FAST = (
    "UPDATE fast_tokens SET previous_count = ?, mechanism = ?, token_hash = ?, issued_at = ?,"
    " expires_at = ?, last_count = 0"
    " WHERE jid = ? AND agent = ? AND previous_hash = ? AND previous_count < ? AND previous_until > ?"
)
# invalidate='true': the login's token (current or previous) is used once more, then gone.
SQL_INVALIDATE_FAST = (
    "DELETE FROM fast_tokens WHERE jid = ? AND agent = ? AND ((token_hash = ? AND last_count < ? AND expires_at > ?)"
    " OR (previous_hash = ? AND previous_count < ? AND previous_until > ?))"
)
SQL_DELETE_FAST = "DELETE FROM fast_tokens WHERE jid = ?"

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


@functools.cache  # a fixed set of statements, each translated once
def postgres_placeholders(sql: str) -> str:
    """``sql`` with psycopg's ``%s`` placeholders instead of ``?``.

    The shared statements contain neither ``%`` nor a ``?`` that is not a
    placeholder; refusing such text keeps a future statement from being
    mistranslated silently.
    """
    if "%" in sql:
        raise ValueError(f"statement contains '%', which psycopg would read as a placeholder: {sql!r}")
    return sql.replace("?", "%s")


def list_links_sql(site: str | None, jid: str | None) -> tuple[str, list[str]]:
    """The list_links statement (``?`` placeholders) and its parameters."""
    clauses: list[str] = []
    params: list[str] = []
    if site is not None:
        clauses.append("site = ?")
        params.append(site)
    if jid is not None:
        clauses.append("jid = ?")
        params.append(jid)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    return SQL_LIST_LINKS + where + SQL_LIST_LINKS_ORDER, params


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
    so each statement is executed on its own; ``complete_statement`` (SQLite's
    tokenizer, which knows the quoting and comment syntax both engines share)
    keeps semicolons inside strings and comments from splitting a statement.
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


def schema_too_new(where: str, current: int, known: int) -> SchemaTooNewError:
    return SchemaTooNewError(
        f"{where}: database schema version {current} is newer than"
        f" this sns-xmpp supports (version {known}); run the release"
        " that wrote it or restore a backup"
    )


# -- rows and records -----------------------------------------------------


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _unb64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def credential_rows(jid: str, credentials: Sequence[ScramCredential]) -> list[tuple[Any, ...]]:
    """Parameters for SQL_INSERT_CREDENTIAL; ValueError on a repeated mechanism."""
    mechanisms = [c.mechanism for c in credentials]
    if len(set(mechanisms)) != len(mechanisms):
        raise ValueError(f"more than one credential per mechanism: {sorted(mechanisms)}")
    return [(jid, c.mechanism, _b64(c.salt), c.iterations, _b64(c.stored_key), _b64(c.server_key)) for c in credentials]


def account_from_rows(jid: str, rows: Sequence[Sequence[Any]]) -> Account | None:
    """The account from SQL_GET_ACCOUNT's rows (None when there are none)."""
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


def roster_item_from_row(row: Sequence[Any]) -> RosterItem:
    return RosterItem(
        contact=row[0],
        name=row[1],
        groups=tuple(json.loads(row[2])),
        subscription=row[3],
        ask=bool(row[4]),
        approved=bool(row[5]),
    )


def roster_item_params(owner: str, item: RosterItem) -> tuple[Any, ...]:
    """Parameters for SQL_PUT_ROSTER_ITEM."""
    groups = json.dumps(list(item.groups), ensure_ascii=False)
    return (owner, item.contact, item.name, groups, item.subscription, int(item.ask), int(item.approved))


def offline_from_row(row: Sequence[Any]) -> OfflineMessage:
    return OfflineMessage(id=row[0], stanza=row[1], stored_at=row[2])


SQL_ADD_DEVICE = (
    "INSERT INTO device_passwords (jid, label, salt, iterations, sha1_stored_key, sha1_server_key,"
    " sha256_stored_key, sha256_server_key, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " RETURNING id"
)
SQL_DEVICES = (
    "SELECT id, jid, label, salt, iterations, sha1_stored_key, sha1_server_key, sha256_stored_key,"
    " sha256_server_key, created_at, expires_at FROM device_passwords WHERE jid = ? ORDER BY id"
)
SQL_REMOVE_DEVICE = "DELETE FROM device_passwords WHERE jid = ? AND id = ?"
SQL_DELETE_DEVICES = "DELETE FROM device_passwords WHERE jid = ?"
SQL_DEVICE_JIDS = "SELECT DISTINCT jid FROM device_passwords ORDER BY jid"
SQL_EXTEND_DEVICES = "UPDATE device_passwords SET expires_at = ? WHERE jid = ? AND expires_at IS NOT NULL"
# A token's own lifetime (from its issue) still bounds it; the device's is what moves on.
SQL_EXTEND_FAST = (
    "UPDATE fast_tokens SET confirmed_until = ?, expires_at = CASE WHEN issued_at + ? < ? THEN issued_at + ?"
    " ELSE ? END WHERE jid = ? AND confirmed_until IS NOT NULL"
)
SQL_PUT_REFRESH = (
    "INSERT INTO refresh_tokens (site, account, jid, sealed, confirmed_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (site, account) DO UPDATE SET jid = excluded.jid, sealed = excluded.sealed,"
    " confirmed_at = excluded.confirmed_at"
)
SQL_REFRESH_DUE = (
    "SELECT site, account, jid, sealed, confirmed_at FROM refresh_tokens WHERE confirmed_at <= ?"
    " ORDER BY confirmed_at LIMIT ?"
)
SQL_DELETE_REFRESH = "DELETE FROM refresh_tokens WHERE site = ? AND account = ?"
SQL_DELETE_REFRESH_OF = "DELETE FROM refresh_tokens WHERE jid = ?"


def device_params(jid: str, label: str, credentials: Sequence[ScramCredential], now: float,
                  expires_at: float | None = None) -> tuple[Any, ...]:
    """Parameters for SQL_ADD_DEVICE: a SCRAM-SHA-1 and a SCRAM-SHA-256 credential, one salt."""
    by_mechanism = {c.mechanism: c for c in credentials}
    sha1, sha256 = by_mechanism["SCRAM-SHA-1"], by_mechanism["SCRAM-SHA-256"]
    if (sha1.salt, sha1.iterations) != (sha256.salt, sha256.iterations) or len(credentials) != 2:
        raise ValueError("a device password is one SCRAM-SHA-1 and one SCRAM-SHA-256 credential with one salt")
    return (jid, label, _b64(sha1.salt), sha1.iterations, _b64(sha1.stored_key), _b64(sha1.server_key),
            _b64(sha256.stored_key), _b64(sha256.server_key), now, expires_at)


def device_from_row(row: Sequence[Any]) -> DevicePassword:
    salt, iterations = _unb64(row[3]), int(row[4])
    credentials = (
        ScramCredential("SCRAM-SHA-1", salt, iterations, _unb64(row[5]), _unb64(row[6])),
        ScramCredential("SCRAM-SHA-256", salt, iterations, _unb64(row[7]), _unb64(row[8])),
    )
    return DevicePassword(id=int(row[0]), jid=row[1], label=row[2], credentials=credentials, created_at=row[9],
                          expires_at=row[10])


def link_from_row(row: Sequence[Any]) -> SocialLink:
    return SocialLink(site=row[0], account=row[1], jid=row[2], created_at=row[3], last_login=row[4],
                      revoked_at=row[5])


def revocation_from_row(row: Sequence[Any]) -> Revocation:
    return Revocation(id=int(row[0]), jid=row[1], reason=row[2], at=row[3])


def fast_token_from_row(row: Sequence[Any]) -> FastToken:
    return FastToken(row[0], row[1], row[2], bytes.fromhex(row[3]), row[4], row[5], int(row[6]),
                     bytes.fromhex(row[7]) if row[7] is not None else None, row[8], int(row[9]), row[10])


class AbandonTransaction(Exception):
    """Roll the current transaction back without it being an error."""


# -- the synchronous database, whichever engine ---------------------------


class Transaction(Protocol):
    """One write transaction of a feature's own SQL (`Database.transaction`)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run *sql* (``?`` placeholders, spelt for the engine here): its rows, or [] when it
        returns none."""

    @property
    def rowcount(self) -> int:
        """The rows the last statement changed."""

    def insert_rows(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]],
                    conflict: str = "", parent: tuple[int, str, str] | None = None) -> int:
        """Insert *rows* into *table* in as few statements as the engine takes them best; how
        many rows were inserted. *columns* are (name, PostgreSQL type) pairs in the rows' order;
        *conflict* is an ``ON CONFLICT ...`` clause or ''; with *parent* (a column's index, a table,
        its key column), a row whose value there names no row of that table is left out rather
        than failing the statement (a foreign key to an account deleted since). The names are the
        caller's own fixed text: every value travels as a parameter."""


class Database(Protocol):
    """What :class:`SQLiteDatabase` and :class:`PostgresDatabase` both offer.

    The blocking twin of :class:`IStore` (same methods, plain return values),
    plus the schema version and ``close``.  One instance is used from one
    thread at a time.
    """

    @property
    def schema_version(self) -> int: ...

    def close(self) -> None: ...

    def open_reader(self) -> Database | None:
        """Another connection, read-only, cheap enough to read on the reactor thread; or None."""

    def begin_reads(self) -> None:
        """On a reader: let the reads until `end_reads` share one read transaction (one snapshot,
        one lock and unlock) instead of one each; a no-op where that gains nothing."""

    def end_reads(self) -> None:
        """End what `begin_reads` began, if anything."""

    # A feature module's own tables (its schema file, its SQL in its own store module) are read
    # and written through these two, so that a feature adds no method to every layer of the store.
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read statement (``?`` placeholders)."""

    def transaction(self) -> AbstractContextManager[Transaction]:
        """One write transaction: committed on leaving, rolled back on an exception."""

    def get_account(self, jid: str) -> Account | None: ...

    def account_exists(self, jid: str) -> bool: ...

    def create_account(
        self, jid: str, credentials: Sequence[ScramCredential], now: float, social: bool = False
    ) -> bool: ...

    def set_credentials(self, jid: str, credentials: Sequence[ScramCredential]) -> bool: ...

    def delete_account(self, jid: str) -> bool: ...

    def list_accounts(self, domain: str | None = None) -> list[str]: ...

    def get_roster(self, owner: str) -> list[RosterItem]: ...

    def put_roster_item(self, owner: str, item: RosterItem) -> None: ...

    def remove_roster_item(self, owner: str, contact: str) -> None: ...

    def add_subscription_request(self, owner: str, contact: str) -> None: ...

    def remove_subscription_request(self, owner: str, contact: str) -> None: ...

    def subscription_requests(self, owner: str) -> list[str]: ...

    def load_roster(self, owner: str) -> tuple[list[RosterItem], list[str], int]: ...

    def store_offline(self, owner: str, stanza: str, now: float) -> int: ...

    def offline_messages(self, owner: str) -> list[OfflineMessage]: ...

    def delete_offline(self, owner: str, ids: Sequence[int]) -> None: ...

    def count_offline(self, owner: str) -> int: ...

    def offline_usage(self, owner: str) -> tuple[int, int]: ...

    def get_link(self, site: str, account: str) -> SocialLink | None: ...

    def link_account(self, site: str, account: str, jid: str, now: float) -> SocialLink: ...

    def touch_link(self, site: str, account: str, now: float) -> None: ...

    def list_links(self, site: str | None = None, jid: str | None = None) -> list[SocialLink]: ...

    def remove_link(self, site: str, account: str) -> bool: ...

    def revoke(self, jid: str, reason: str, now: float, site: str | None = None,
               account: str | None = None) -> int | None: ...

    def revocations_after(self, last_id: int, limit: int = 1000) -> list[Revocation]: ...

    def last_revocation_id(self) -> int: ...

    def add_device_password(self, jid: str, label: str, credentials: Sequence[ScramCredential],
                            now: float, expires_at: float | None = None) -> int: ...

    def device_passwords(self, jid: str) -> list[DevicePassword]: ...

    def remove_device_password(self, jid: str, device_id: int) -> bool: ...

    def device_password_jids(self) -> list[str]: ...

    def extend_devices(self, jid: str, until: float, fast_lifetime: float) -> None: ...

    def put_refresh_token(self, site: str, account: str, jid: str, sealed: str, now: float) -> None: ...

    def refresh_tokens_due(self, before: float, limit: int = 100) -> list[RefreshToken]: ...

    def delete_refresh_token(self, site: str, account: str) -> None: ...

    def remember_token(self, site: str, token_digest: bytes, expires_at: float, now: float) -> bool: ...

    def fast_token(self, jid: str, agent: str) -> FastToken | None: ...

    def put_fast_token(self, jid: str, agent: str, mechanism: str, token_hash: bytes, issued_at: float,
                       expires_at: float, confirmed_until: float | None = None) -> bool: ...

    def use_fast_token(self, jid: str, agent: str, used_hash: bytes, count: int, now: float,
                       replacement: FastTokenIssue | None) -> bool: ...


def migrate(database_factory: Callable[[], Database]) -> int:
    """Bring the database's schema up to date; the schema version it now has.

    Opening a database applies the pending schema files (in one transaction,
    serialised against other processes doing the same), so this opens and
    closes it.  Raises :class:`SchemaTooNewError` for a database written by a
    newer release.
    """
    database = database_factory()
    try:
        return database.schema_version
    finally:
        database.close()
