"""The SQL of the Multi-User Chat service (XEP-0045): its persistent rooms (schema 013).

Functions of a `Database`, run by the MUC feature through `IStore.run` (writes, in order with
every other call) and `IStore.run_read` (every room, read once at start; in a cluster, one room
taken over, and the rooms' configurations for the list of public rooms). The feature hands over
a room as a `StoredRoom`; the store never sees a stanza.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sns_xmpp.store.common import Database
from sns_xmpp.store.mam import ArchiveQuery, Page, archive_page

SQL_ROOMS = "SELECT room, config, subject, subject_by, secret, creator, created_at FROM muc_rooms ORDER BY room"
SQL_CONFIGS = "SELECT room, config FROM muc_rooms ORDER BY room"
SQL_AFFILIATIONS = "SELECT room, jid, affiliation FROM muc_affiliations ORDER BY room, jid"
SQL_ROOM = "SELECT room, config, subject, subject_by, secret, creator, created_at FROM muc_rooms WHERE room = ?"
SQL_ROOM_AFFILIATIONS = "SELECT jid, affiliation FROM muc_affiliations WHERE room = ? ORDER BY jid"
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
    return [_stored_room(row, affiliations.get(row[0], {})) for row in db.query(SQL_ROOMS)]


def configs(db: Database) -> list[tuple[str, str]]:
    """Every persistent room's (JID, configuration as JSON): what a cluster's node reads to list
    the public ones, which another node may have made or changed since this one started."""
    return [(room, config) for room, config in db.query(SQL_CONFIGS)]


def room(db: Database, room: str) -> StoredRoom | None:
    """One persistent room with its affiliations, or None (a cluster's node taking a room over)."""
    rows = db.query(SQL_ROOM, (room,))
    if not rows:
        return None
    return _stored_room(rows[0], dict(db.query(SQL_ROOM_AFFILIATIONS, (room,))))


def _stored_room(row: Sequence[Any], affiliations: dict[str, str]) -> StoredRoom:
    """A room from its row of muc_rooms (SQL_ROOMS' and SQL_ROOM's columns) and its affiliations."""
    room, config, subject, subject_by, secret, creator, created_at = row
    return StoredRoom(room, config, subject, subject_by, secret, creator, float(created_at), affiliations)


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


def query_archive(db: Database, asked: ArchiveQuery) -> Page:
    """A page of the room *asked.owner*'s messages, oldest first, paged as the user archive is
    (store.mam.archive_page); 'with' is an occupant JID, its resource the nick."""
    room = asked.owner
    where = ["room = ?"]
    params: list[Any] = [room]
    if asked.with_bare is not None:
        if asked.with_bare != room:
            return Page()
        if asked.with_resource is not None:
            where.append("nick = ?")
            params.append(asked.with_resource)
    return archive_page(db, "muc_archive", "room", where, params, asked)
