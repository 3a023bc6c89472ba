"""The vCard feature's SQL (xmpp/features/vcard.py, schema 009_vcard.sql): functions of a
`Database`, run through `IStore.run` / `IStore.run_read`. The store never sees a stanza: a vCard
comes and goes as the XML text the feature serialised, with its photo's hash beside it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sns_xmpp.store.common import Database

SQL_GET = "SELECT vcard, photo_hash FROM vcards WHERE jid = ?"
SQL_PHOTO_HASH = "SELECT photo_hash FROM vcards WHERE jid = ?"
SQL_PUT = (
    "INSERT INTO vcards (jid, vcard, photo_hash, updated_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (jid) DO UPDATE SET vcard = excluded.vcard, photo_hash = excluded.photo_hash,"
    " updated_at = excluded.updated_at"
)
# Only where the account exists (a vCard for a JID without an account would break the foreign
# key) and has no vCard yet: the owner's own vCard is never replaced by this one.
SQL_PUT_FIRST = (
    "INSERT INTO vcards (jid, vcard, photo_hash, updated_at)"
    " SELECT jid, ?, ?, ? FROM accounts WHERE jid = ?"
    " ON CONFLICT (jid) DO NOTHING"
)


@dataclass(frozen=True)
class StoredVCard:
    xml: str  # the <vCard xmlns='vcard-temp'/> element as its owner set it
    photo_hash: str  # hex SHA-1 of the PHOTO's image; '' for none


def get_vcard(db: Database, jid: str) -> StoredVCard | None:
    """The account's vCard; None if it never set one (or there is no such account)."""
    rows = db.query(SQL_GET, (jid,))
    return StoredVCard(rows[0][0], rows[0][1]) if rows else None


def photo_hash(db: Database, jid: str) -> str | None:
    """The hash of the account's vCard photo ('' for none); None if it has no vCard."""
    rows = db.query(SQL_PHOTO_HASH, (jid,))
    return str(rows[0][0]) if rows else None


def put_vcard(db: Database, jid: str, xml: str, photo_hash: str, now: float) -> None:
    """Set the account's vCard, replacing any it had."""
    with db.transaction() as tx:
        tx.execute(SQL_PUT, (jid, xml, photo_hash, now))


def put_first_vcard(db: Database, jid: str, xml: str, photo_hash: str, now: float) -> bool:
    """Set the account's vCard only if it has none: True if this one was stored."""
    with db.transaction() as tx:
        tx.execute(SQL_PUT_FIRST, (xml, photo_hash, now, jid))
        return tx.rowcount == 1


def change_vcard(db: Database, jid: str, change: Callable[[StoredVCard | None], StoredVCard | None],
                 now: float) -> StoredVCard | None:
    """Read the account's vCard and store what *change* makes of it (None: leave it as it is),
    in one transaction, so that no set of the owner's falls between the two: what was stored."""
    with db.transaction() as tx:
        rows = tx.execute(SQL_GET, (jid,))
        changed = change(StoredVCard(rows[0][0], rows[0][1]) if rows else None)
        if changed is not None:
            tx.execute(SQL_PUT, (jid, changed.xml, changed.photo_hash, now))
        return changed
