"""The user archive's SQL (XEP-0313; the feature is sns_xmpp/xmpp/features/mam/): written in batches,
read a page at a time, swept by age. Tables: schema/007_mam.sql.

Each function takes a `Database` and runs on the store's worker (`IStore.run`, `run_read`); the
statements are spelt for both engines with ``?`` placeholders. Nothing here sees a stanza: a
message is the text the feature serialised.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sns_xmpp.store.common import Database

__all__ = [
    "ArchiveQuery",
    "Page",
    "Prefs",
    "UnknownArchiveId",
    "all_prefs",
    "delete_prefs",
    "expire",
    "metadata",
    "put_prefs",
    "query",
    "write_rows",
]

# The archive's columns, in a Row's order, with their PostgreSQL types (`Transaction.insert_rows`).
COLUMNS = (("seq", "BIGINT"), ("owner", "TEXT"), ("id", "TEXT"), ("with_bare", "TEXT"), ("with_resource", "TEXT"),
           ("stanza", "TEXT"))
# A seq taken already in the account's archive (two server processes in the same microsecond with
# the same low bits) loses that one row, not the batch.
ON_SEQ_TAKEN = "ON CONFLICT (owner, seq) DO NOTHING"
OWNER_IS_AN_ACCOUNT = (1, "accounts", "jid")  # a row's owner (index 1) and the table it must be in


class UnknownArchiveId(LookupError):
    """An archive UID the query named (RSM after/before, after-id, before-id, ids) is not in the
    account's archive (XEP-0313 section 4.1.3: item-not-found)."""


def _spelt(*fragments: str) -> str:
    """A statement put together from this module's own fixed fragments and ``?`` placeholders:
    every value a client gave travels as a parameter."""
    return "".join(fragments)


def _marks(count: int) -> str:
    return ", ".join("?" * count)


Row = tuple[int, str, str, str, str, str]  # seq, owner, id, with_bare, with_resource, stanza
_OWNER = itemgetter(1)  # a Row's owner (sorted() is stable: an account's rows keep their order)


def write_rows(db: Database, rows: Sequence[Row]) -> int:
    """Write *rows* in one transaction; how many were written. A row for an account that does
    not exist (a message to an unknown user is stamped before the offline store finds that out;
    an account deleted since) is left out, not an error that would lose the batch.

    The rows go in sorted by owner, each account's in the order given (seq's, as the archive
    makes them): the index (owner, seq) then takes each account's side by side rather than one
    account after another (schema/017_mam_batch_order.sql)."""
    with db.transaction() as tx:
        return tx.insert_rows("mam_messages", COLUMNS, sorted(rows, key=_OWNER), ON_SEQ_TAKEN,
                              parent=OWNER_IS_AN_ACCOUNT)


def seq_at(seconds: float) -> int:
    """The first seq of the microsecond *seconds* falls in (seq's layout: schema/007_mam.sql)."""
    return round(seconds * 1_000_000) << 10


def seconds_of(seq: int) -> float:
    return (seq >> 10) / 1_000_000


# -- queries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveQuery:
    """What a query asks of one account's archive (XEP-0313 section 4, XEP-0059)."""

    owner: str
    max: int  # the page size, already within the server's limit; 0 asks only for the count
    with_bare: str | None = None
    with_resource: str | None = None  # with a full JID: only messages to or from that resource
    start: float | None = None
    end: float | None = None
    after_id: str | None = None  # the form's after-id / before-id: bounds, not a paging direction
    before_id: str | None = None
    ids: tuple[str, ...] = ()
    after: str | None = None  # RSM <after/>: the page following that UID
    before: str | None = None  # RSM <before>UID</before>: the page preceding it
    last_page: bool = False  # RSM <before/> empty: the last page
    index: int | None = None  # RSM <index/>: the page starting at that position
    max_chars: int = 1_000_000  # a page stops early past this much stanza text (at least one row)


@dataclass(frozen=True)
class Page:
    rows: list[tuple[str, float, str]] = field(default_factory=list)  # (id, stamp, stanza), in order
    count: int = 0  # messages matching the query's filters, whatever the page
    first_index: int | None = None  # the position of the page's first row among them
    complete: bool = True  # nothing further in the direction of paging


def seq_of_uid(db: Database, table: str, key_column: str, key: str, uid: str) -> int:
    """The seq of the message *uid* (which begins with it, in hexadecimal) in *key*'s part of the
    archive *table* (``mam_messages`` by owner, ``muc_archive`` by room: the callers' own names)."""
    try:
        seq = int(uid.split("-", 1)[0], 16)
    except ValueError:
        raise UnknownArchiveId(uid) from None
    if not -(2**63) <= seq < 2**63 or not db.query(
            _spelt("SELECT 1 FROM ", table, " WHERE ", key_column, " = ? AND seq = ? AND id = ?"), (key, seq, uid)):
        raise UnknownArchiveId(uid)
    return seq


def query(db: Database, asked: ArchiveQuery) -> Page:
    """A page of *asked*'s matching messages, oldest first, and what RSM's <fin/> says of it."""
    where = ["owner = ?"]
    params: list[Any] = [asked.owner]
    if asked.with_bare is not None:
        where.append("with_bare = ?")
        params.append(asked.with_bare)
        if asked.with_resource is not None:
            where.append("with_resource = ?")
            params.append(asked.with_resource)
    return archive_page(db, "mam_messages", "owner", where, params, asked)


def archive_page(db: Database, table: str, key_column: str, where: list[str], params: list[Any],
                 asked: ArchiveQuery) -> Page:
    """The page of a query on an archive *table* (columns seq, id, stanza; ``<key_column> = ?``
    first in *where*, the caller's own filters after it): XEP-0313's time and id bounds, then
    RSM's paging (XEP-0059: after, before, the last page, an index), a page cut short past
    ``max_chars`` of stanza text, the count and the page's first index. The user archive and the
    rooms' archives page alike through this."""
    key = asked.owner

    def seq_of(uid: str) -> int:
        return seq_of_uid(db, table, key_column, key, uid)

    where, params = list(where), list(params)
    if asked.start is not None:
        where.append("seq >= ?")
        params.append(seq_at(asked.start))
    if asked.end is not None:
        where.append("seq < ?")
        params.append(seq_at(asked.end + 0.000_001))
    if asked.after_id is not None:
        where.append("seq > ?")
        params.append(seq_of(asked.after_id))
    if asked.before_id is not None:
        where.append("seq < ?")
        params.append(seq_of(asked.before_id))
    if asked.ids:
        wanted = sorted({seq_of(uid) for uid in asked.ids})
        where.append(_spelt("seq IN (", _marks(len(wanted)), ")"))
        params.extend(wanted)
    filters = " WHERE " + " AND ".join(where)
    count = int(db.query(_spelt("SELECT COUNT(*) FROM ", table, filters), params)[0][0])
    if asked.max == 0:
        return Page(count=count, complete=count == 0)

    cursor, cursor_params = "", []
    backwards = False
    if asked.after is not None:
        cursor, cursor_params = " AND seq > ?", [seq_of(asked.after)]
    elif asked.before is not None:
        cursor, cursor_params, backwards = " AND seq < ?", [seq_of(asked.before)], True
    elif asked.last_page:
        backwards = True
    order = " ORDER BY seq DESC" if backwards else " ORDER BY seq"
    offset = " OFFSET ?" if asked.index is not None and not backwards else ""
    limit_params: list[Any] = [asked.max + 1] + ([asked.index] if offset else [])
    found = db.query(_spelt("SELECT seq, id, stanza FROM ", table, filters, cursor, order, " LIMIT ?", offset),
                     params + cursor_params + limit_params)
    more = len(found) > asked.max
    rows = found[:asked.max]
    chars = 0
    for taken, row in enumerate(rows):
        chars += len(row[2])
        if chars > asked.max_chars and taken > 0:
            rows, more = rows[:taken], True
            break
    if backwards:
        rows.reverse()
    if not rows:
        return Page(count=count, complete=not more)
    first_index = int(db.query(_spelt("SELECT COUNT(*) FROM ", table, filters, " AND seq < ?"),
                               [*params, rows[0][0]])[0][0])
    return Page([(str(row[1]), seconds_of(int(row[0])), str(row[2])) for row in rows], count, first_index, not more)


def metadata(db: Database, owner: str) -> tuple[tuple[str, float], tuple[str, float]] | None:
    """The (id, stamp) of the oldest and the newest message of *owner*'s archive, or None when it
    is empty (XEP-0313 section 5, archive metadata)."""
    ends = []
    for order in ("", " DESC"):
        found = db.query(_spelt("SELECT id, seq FROM mam_messages WHERE owner = ? ORDER BY seq", order, " LIMIT 1"),
                         (owner,))
        if not found:
            return None
        ends.append((str(found[0][0]), seconds_of(int(found[0][1]))))
    return ends[0], ends[1]


def expire(db: Database, before: float, limit: int) -> int:
    """Delete up to *limit* of the oldest messages (in every archive) archived before *before*;
    how many went. Oldest first, so an archive never gets a hole (XEP-0313 section 3.2): the
    table's key n follows the batches as they were written, so the oldest rows are at its
    start. Only the first *limit* rows are looked at, those of them after *before* passed over
    (a batch that straddles it; another node's, a moment apart): with nothing to remove, a
    sweep reads *limit* rows, not the whole table."""
    with db.transaction() as tx:
        tx.execute("DELETE FROM mam_messages WHERE n IN (SELECT n FROM"
                   " (SELECT n, seq FROM mam_messages ORDER BY n LIMIT ?) AS oldest WHERE seq < ?)",
                   (limit, seq_at(before)))
        return tx.rowcount


# -- preferences (XEP-0441) -----------------------------------------------------------------


@dataclass(frozen=True)
class Prefs:
    default: str  # 'always', 'never' or 'roster'
    always: frozenset[str] = frozenset()
    never: frozenset[str] = frozenset()


def all_prefs(db: Database) -> dict[str, Prefs]:
    """Every account's stored preferences (only those differing from the default are stored)."""
    return {owner: _prefs(mode, always, never) for owner, mode, always, never in db.query(
        "SELECT owner, default_mode, always_json, never_json FROM mam_prefs")}


def prefs_of(db: Database, owner: str) -> Prefs | None:
    """The account's stored preferences, None for the default (read again when another node of a
    cluster changed them)."""
    for mode, always, never in db.query(
            "SELECT default_mode, always_json, never_json FROM mam_prefs WHERE owner = ?", (owner,)):
        return _prefs(mode, always, never)
    return None


def _prefs(mode: str, always_json: str, never_json: str) -> Prefs:
    """Preferences from their stored row (the JID lists as JSON arrays)."""
    return Prefs(mode, frozenset(json.loads(always_json)), frozenset(json.loads(never_json)))


def put_prefs(db: Database, owner: str, prefs: Prefs) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO mam_prefs (owner, default_mode, always_json, never_json) VALUES (?, ?, ?, ?)"
                   " ON CONFLICT (owner) DO UPDATE SET default_mode = excluded.default_mode,"
                   " always_json = excluded.always_json, never_json = excluded.never_json",
                   (owner, prefs.default, json.dumps(sorted(prefs.always)), json.dumps(sorted(prefs.never))))


def delete_prefs(db: Database, owner: str) -> None:
    with db.transaction() as tx:
        tx.execute("DELETE FROM mam_prefs WHERE owner = ?", (owner,))
