"""The SQL of the Multi-User Chat service (XEP-0045): its persistent rooms (schema 013).

Functions of a `Database`, run by the MUC feature through `IStore.run` (writes, in order with
every other call) and `IStore.run_read` (every room, read once at start). The feature hands over
a room as a `StoredRoom`; the store never sees a stanza.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sns_xmpp.store.common import Database
from sns_xmpp.store.mam import ArchiveQuery, Page, UnknownArchiveId, seconds_of, seq_at

SQL_ROOMS = "SELECT room, config, subject, subject_by, secret, creator, created_at FROM muc_rooms ORDER BY room"
SQL_AFFILIATIONS = "SELECT room, jid, affiliation FROM muc_affiliations ORDER BY room, jid"
SQL_PUT_ROOM = (
    "INSERT INTO muc_rooms (room, config, subject, subject_by, secret, creator, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (room) DO UPDATE SET config = excluded.config,"
    " subject = excluded.subject, subject_by = excluded.subject_by"
)
SQL_CLEAR_AFFILIATIONS = "DELETE FROM muc_affiliations WHERE room = ?"
SQL_PUT_AFFILIATION = "INSERT INTO muc_affiliations (room, jid, affiliation) VALUES (?, ?, ?)"
SQL_DELETE_ROOM = "DELETE FROM muc_rooms WHERE room = ?"
SQL_DELETE_ARCHIVE = "DELETE FROM muc_archive WHERE room = ?"
SQL_ARCHIVE = ("INSERT INTO muc_archive (room, seq, id, nick, stanza) SELECT ?, ?, ?, ?, ?"
               " WHERE EXISTS (SELECT 1 FROM muc_rooms WHERE room = ?) ON CONFLICT (room, seq) DO NOTHING")
SQL_TRIM = ("DELETE FROM muc_archive WHERE room = ? AND seq <= (SELECT seq FROM muc_archive WHERE room = ?"
            " ORDER BY seq DESC LIMIT 1 OFFSET ?)")
SQL_ID_AT = "SELECT 1 FROM muc_archive WHERE room = ? AND seq = ? AND id = ?"


@dataclass(frozen=True)
class StoredRoom:
    room: str  # the room's bare JID
    config: str  # JSON (features/muc/forms.py RoomConfig)
    subject: str
    subject_by: str
    secret: str
    creator: str
    created_at: float
    affiliations: dict[str, str] = field(default_factory=dict)  # bare JID -> owner/admin/member/outcast


def rooms(db: Database) -> list[StoredRoom]:
    """Every persistent room with its affiliations, in two queries."""
    affiliations: dict[str, dict[str, str]] = {}
    for room, jid, affiliation in db.query(SQL_AFFILIATIONS):
        affiliations.setdefault(room, {})[jid] = affiliation
    return [StoredRoom(room, config, subject, subject_by, secret, creator, float(created_at),
                       affiliations.get(room, {}))
            for room, config, subject, subject_by, secret, creator, created_at in db.query(SQL_ROOMS)]


def put_room(db: Database, stored: StoredRoom) -> None:
    """Write *stored* whole (created, or its configuration, subject or affiliations changed)."""
    with db.transaction() as tx:
        tx.execute(SQL_PUT_ROOM, (stored.room, stored.config, stored.subject, stored.subject_by, stored.secret,
                                  stored.creator, stored.created_at))
        tx.execute(SQL_CLEAR_AFFILIATIONS, (stored.room,))
        for jid, affiliation in sorted(stored.affiliations.items()):
            tx.execute(SQL_PUT_AFFILIATION, (stored.room, jid, affiliation))


def delete_room(db: Database, room: str) -> None:
    """Forget *room* and its affiliations (destroyed, or no longer persistent)."""
    with db.transaction() as tx:
        tx.execute(SQL_DELETE_ARCHIVE, (room,))
        tx.execute(SQL_DELETE_ROOM, (room,))


# -- the rooms' archives (XEP-0313) ------------------------------------------------------------


def archive(db: Database, rows: Sequence[tuple[str, int, str, str, str]], keep: int) -> None:
    """Write *rows* (room, seq, id, nick, stanza) in one transaction, then trim each room they
    touch to its newest *keep* messages. A row for a room no longer stored (destroyed, or made
    temporary, while the row waited) is left out."""
    with db.transaction() as tx:
        for room, seq, uid, nick, stanza in rows:
            tx.execute(SQL_ARCHIVE, (room, seq, uid, nick, stanza, room))
        for room in sorted({row[0] for row in rows}):
            tx.execute(SQL_TRIM, (room, room, keep))


def _spelt(*fragments: str) -> str:
    """A statement put together from this module's own fixed fragments and ``?`` placeholders:
    every value a client gave travels as a parameter."""
    return "".join(fragments)


def _seq_of(db: Database, room: str, uid: str) -> int:
    try:
        seq = int(uid.split("-", 1)[0], 16)
    except ValueError:
        raise UnknownArchiveId(uid) from None
    if not -(2**63) <= seq < 2**63 or not db.query(SQL_ID_AT, (room, seq, uid)):
        raise UnknownArchiveId(uid)
    return seq


def query_archive(db: Database, asked: ArchiveQuery) -> Page:
    """A page of the room *asked.owner*'s messages, oldest first, as store.mam.query pages a
    user's archive; 'with' is an occupant JID, its resource the nick."""
    room = asked.owner
    where = ["room = ?"]
    params: list[Any] = [room]
    if asked.with_bare is not None:
        if asked.with_bare != room:
            return Page()
        if asked.with_resource is not None:
            where.append("nick = ?")
            params.append(asked.with_resource)
    if asked.start is not None:
        where.append("seq >= ?")
        params.append(seq_at(asked.start))
    if asked.end is not None:
        where.append("seq < ?")
        params.append(seq_at(asked.end + 0.000_001))
    for uid, comparison in ((asked.after_id, "seq > ?"), (asked.before_id, "seq < ?")):
        if uid is not None:
            where.append(comparison)
            params.append(_seq_of(db, room, uid))
    if asked.ids:
        wanted = sorted({_seq_of(db, room, uid) for uid in asked.ids})
        where.append(_spelt("seq IN (", ", ".join("?" * len(wanted)), ")"))
        params.extend(wanted)
    filters = " WHERE " + " AND ".join(where)
    count = int(db.query(_spelt("SELECT COUNT(*) FROM muc_archive", filters), params)[0][0])
    if asked.max == 0:
        return Page(count=count, complete=count == 0)
    cursor, cursor_params, backwards = "", [], False
    if asked.after is not None:
        cursor, cursor_params = " AND seq > ?", [_seq_of(db, room, asked.after)]
    elif asked.before is not None:
        cursor, cursor_params, backwards = " AND seq < ?", [_seq_of(db, room, asked.before)], True
    elif asked.last_page:
        backwards = True
    order = " ORDER BY seq DESC" if backwards else " ORDER BY seq"
    offset = " OFFSET ?" if asked.index is not None and not backwards else ""
    limit_params: list[Any] = [asked.max + 1] + ([asked.index] if offset else [])
    found = db.query(_spelt("SELECT seq, id, stanza FROM muc_archive", filters, cursor, order, " LIMIT ?", offset),
                     params + cursor_params + limit_params)
    more = len(found) > asked.max
    rows = found[:asked.max]
    if backwards:
        rows.reverse()
    if not rows:
        return Page(count=count, complete=not more)
    first_index = int(db.query(_spelt("SELECT COUNT(*) FROM muc_archive", filters, " AND seq < ?"),
                               [*params, rows[0][0]])[0][0])
    return Page([(str(row[1]), seconds_of(int(row[0])), str(row[2])) for row in rows], count, first_index, not more)
