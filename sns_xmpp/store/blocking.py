"""The SQL of the Blocking Command (XEP-0191): the JIDs an account blocks (schema 010).

Functions of a `Database`, run by the blocking feature through `IStore.run` (writes, in order
with every other call) and `IStore.run_read` (the list, read as an account's first resource
binds). JIDs arrive prepared (the feature normalises them); the store compares them as text.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sns_xmpp.store.common import Database

SQL_BLOCKLIST = "SELECT jid FROM blocked_jids WHERE owner = ? ORDER BY jid"
SQL_OWNERS = "SELECT DISTINCT owner FROM blocked_jids"
SQL_COUNT = "SELECT COUNT(*) FROM blocked_jids WHERE owner = ?"
SQL_BLOCK = "INSERT INTO blocked_jids (owner, jid) VALUES (?, ?) ON CONFLICT (owner, jid) DO NOTHING"
SQL_UNBLOCK = "DELETE FROM blocked_jids WHERE owner = ? AND jid = ?"
SQL_UNBLOCK_ALL = "DELETE FROM blocked_jids WHERE owner = ?"


class BlocklistFull(Exception):
    """Blocking these JIDs would take the list past its limit; nothing was written."""


def blocklist(db: Database, owner: str) -> list[str]:
    """The JIDs *owner* blocks, in text order."""
    return [row[0] for row in db.query(SQL_BLOCKLIST, (owner,))]


def blocklist_and_owners(db: Database, owner: str, with_owners: bool) -> tuple[list[str] | None, list[str]]:
    """*owner*'s list and, *with_owners*, every account that blocks anything (else None): the
    feature reads the second once, with the first list it needs."""
    return ([row[0] for row in db.query(SQL_OWNERS)] if with_owners else None), blocklist(db, owner)


def owners_and_lists(db: Database, held: Collection[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Every account that blocks anything, and the lists of those of *held* that do (a cluster's
    node reads them again after it may have missed announcements of changes)."""
    owners = [row[0] for row in db.query(SQL_OWNERS)]
    # (One query per list, in this one call: the accounts held here that block anything are few.)
    lists = {owner: blocklist(db, owner) for owner in sorted(set(owners) & set(held))}
    return owners, lists


def block(db: Database, owner: str, jids: Sequence[str], limit: int) -> None:
    """Add *jids* to *owner*'s list (those already there stay as they are), in one transaction;
    raises BlocklistFull, writing nothing, if the list would then hold more than *limit* JIDs."""
    with db.transaction() as tx:
        for jid in jids:
            tx.execute(SQL_BLOCK, (owner, jid))
        if int(tx.execute(SQL_COUNT, (owner,))[0][0]) > limit:
            raise BlocklistFull(owner)


def unblock(db: Database, owner: str, jids: Sequence[str]) -> None:
    """Take *jids* off *owner*'s list (those not on it are no error)."""
    with db.transaction() as tx:
        for jid in jids:
            tx.execute(SQL_UNBLOCK, (owner, jid))


def unblock_all(db: Database, owner: str) -> None:
    """Empty *owner*'s list (XEP-0191 section 3.5)."""
    with db.transaction() as tx:
        tx.execute(SQL_UNBLOCK_ALL, (owner,))
