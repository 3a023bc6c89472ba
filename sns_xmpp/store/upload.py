"""HTTP File Upload's own SQL (XEP-0363, schema 014_upload.sql): functions of a `Database`, run by
the feature (`xmpp/features/http_upload.py`) through ``store.run`` and ``store.run_read``, and by
the operators' console (``uploads()``).

A row is a slot from the moment it is handed out ('open'), claimed by the first PUT ('writing',
so that a second PUT is a replay), and the file's once it is on disk ('stored'). The quota counts
stored files and slots still open: a client cannot hold a hundred open slots past its quota.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sns_xmpp.store.common import Database

OPEN, WRITING, STORED = "open", "writing", "stored"
# A PUT claims its slot, writes the file and records it within moments; a row left 'writing'
# this long after its slot closed belongs to a process that died mid-way, and is swept.
WRITING_GRACE_SECONDS = 3600.0

SQL_INSERT = (
    "INSERT INTO upload_files (slot, owner, filename, size, content_type, state, created_at, put_until,"
    " stored_at, expires_at) VALUES (?, ?, ?, ?, ?, 'open', ?, ?, NULL, NULL)"
)
SQL_ONE = (
    "SELECT slot, owner, filename, size, content_type, state, created_at, put_until, stored_at, expires_at"
    " FROM upload_files WHERE slot = ?"
)
# What an account holds against its quota: its files, and its slots not yet closed.
SQL_USAGE = (
    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM upload_files"
    " WHERE owner = ? AND (state <> 'open' OR put_until > ?)"
)
# When something of the account's frees room: the first open slot to close, or file to expire.
SQL_NEXT_FREED = (
    "SELECT MIN(CASE WHEN state = 'open' THEN put_until ELSE expires_at END) FROM upload_files"
    " WHERE owner = ? AND (state <> 'open' OR put_until > ?)"
)
SQL_CLAIM = "UPDATE upload_files SET state = 'writing' WHERE slot = ? AND state = 'open' AND put_until > ?"
SQL_STORED = (
    "UPDATE upload_files SET state = 'stored', stored_at = ?, expires_at = ? WHERE slot = ? AND state = 'writing'"
)
SQL_FORGET = "DELETE FROM upload_files WHERE slot = ?"
SQL_DUE = (
    "SELECT slot FROM upload_files"
    " WHERE (state = 'open' AND put_until <= ?) OR (state = 'writing' AND put_until <= ?)"
    " OR (state = 'stored' AND expires_at <= ?)"
    " ORDER BY slot LIMIT ?"
)
SQL_KNOWN = "SELECT slot FROM upload_files WHERE slot = ?"
SQL_PER_OWNER = (
    "SELECT owner, COUNT(*), COALESCE(SUM(size), 0) FROM upload_files WHERE state = 'stored'"
    " GROUP BY owner ORDER BY 3 DESC, owner LIMIT ?"
)
SQL_RECENT = (
    "SELECT slot, owner, filename, size, content_type, state, created_at, put_until, stored_at, expires_at"
    " FROM upload_files WHERE state = 'stored' ORDER BY stored_at DESC, slot LIMIT ?"
)
SQL_RECENT_OF = (
    "SELECT slot, owner, filename, size, content_type, state, created_at, put_until, stored_at, expires_at"
    " FROM upload_files WHERE state = 'stored' AND owner = ? ORDER BY stored_at DESC, slot LIMIT ?"
)
SQL_TOTALS = "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM upload_files WHERE state = 'stored'"


@dataclass(frozen=True)
class Quota:
    """What one account may hold: files (with open slots), and their bytes."""

    max_files: int
    max_bytes: int


@dataclass(frozen=True)
class Upload:
    """One row: a slot, or the file it became."""

    slot: str
    owner: str
    filename: str
    size: int
    content_type: str
    state: str
    created_at: float
    put_until: float
    stored_at: float | None
    expires_at: float | None


class OverQuota(Exception):
    """The slot would take the account over its quota; nothing was written. ``retry_at``: when the
    account's first open slot closes or first file expires (None: nothing of it ever will)."""

    def __init__(self, retry_at: float | None) -> None:
        super().__init__(retry_at)
        self.retry_at = retry_at


def _upload(row: Iterable[object]) -> Upload:
    slot, owner, filename, size, content_type, state, created, put_until, stored, expires = row
    return Upload(str(slot), str(owner), str(filename), int(size), str(content_type),  # type: ignore[call-overload]
                  str(state), float(created), float(put_until),  # type: ignore[arg-type]
                  None if stored is None else float(stored),  # type: ignore[arg-type]
                  None if expires is None else float(expires))  # type: ignore[arg-type]


def open_slot(db: Database, slot: Upload, quota: Quota, now: float) -> None:
    """Record *slot* (state 'open') for its owner, in one transaction; raise OverQuota, having
    written nothing, if the owner would then hold more than *quota*."""
    with db.transaction() as tx:
        tx.execute(SQL_INSERT, (slot.slot, slot.owner, slot.filename, slot.size, slot.content_type,
                                slot.created_at, slot.put_until))
        count, size = tx.execute(SQL_USAGE, (slot.owner, now))[0]
        if int(count) > quota.max_files or int(size) > quota.max_bytes:
            freed = tx.execute(SQL_NEXT_FREED, (slot.owner, now))[0][0]
            raise OverQuota(None if freed is None else float(freed))


def upload(db: Database, slot: str) -> Upload | None:
    rows = db.query(SQL_ONE, (slot,))
    return _upload(rows[0]) if rows else None


def claim(db: Database, slot: str, now: float) -> bool:
    """Take the open *slot* for the PUT now arriving; False if it is not open (used, replayed,
    closed, or gone), so that only one PUT ever writes a slot's file."""
    with db.transaction() as tx:
        tx.execute(SQL_CLAIM, (slot, now))
        return tx.rowcount == 1


def stored(db: Database, slot: str, now: float, expires_at: float | None) -> bool:
    """The claimed *slot*'s file is on disk; False if its row went meanwhile (the account was
    deleted, or the sweep took it), when the file must go too."""
    with db.transaction() as tx:
        tx.execute(SQL_STORED, (now, expires_at, slot))
        return tx.rowcount == 1


def forget(db: Database, slot: str) -> None:
    with db.transaction() as tx:
        tx.execute(SQL_FORGET, (slot,))


def sweep(db: Database, now: float, limit: int) -> list[str]:
    """Delete up to *limit* rows that are due (open slots closed, claims abandoned, files expired);
    the slots deleted, whose files the caller removes."""
    with db.transaction() as tx:
        due = [str(row[0]) for row in tx.execute(SQL_DUE, (now, now - WRITING_GRACE_SECONDS, now, limit))]
        for slot in due:
            tx.execute(SQL_FORGET, (slot,))
    return due


def known(db: Database, slots: list[str]) -> set[str]:
    """Which of *slots* still have a row (the clean-up removes files of the others)."""
    return {slot for slot in slots if db.query(SQL_KNOWN, (slot,))}  # by the key: one index probe each


def usage_by_owner(db: Database, limit: int = 50) -> list[tuple[str, int, int]]:
    """The accounts keeping most, as (owner, files, bytes), largest first."""
    return [(str(owner), int(files), int(size)) for owner, files, size in db.query(SQL_PER_OWNER, (limit,))]


def recent(db: Database, owner: str | None = None, limit: int = 20) -> list[Upload]:
    """The files stored last, of everyone or of *owner*."""
    rows = db.query(SQL_RECENT_OF, (owner, limit)) if owner else db.query(SQL_RECENT, (limit,))
    return [_upload(row) for row in rows]


def totals(db: Database) -> tuple[int, int]:
    """Files stored, and their bytes."""
    files, size = db.query(SQL_TOTALS)[0]
    return int(files), int(size)
