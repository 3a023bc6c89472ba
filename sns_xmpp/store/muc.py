"""The SQL of the Multi-User Chat service (XEP-0045): its persistent rooms (schema 013).

Functions of a `Database`, run by the MUC feature through `IStore.run` (writes, in order with
every other call) and `IStore.run_read` (every room, read once at start). The feature hands over
a room as a `StoredRoom`; the store never sees a stanza.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sns_xmpp.store.common import Database

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
        tx.execute(SQL_DELETE_ROOM, (room,))
