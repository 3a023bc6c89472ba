"""Private XML storage's own SQL (XEP-0049, schema 011_private_storage.sql): functions of a
`Database`, run by the feature (`xmpp/features/private_storage.py`) through ``store.run`` and
``store.run_read``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sns_xmpp.store.common import Database

SQL_FRAGMENT = "SELECT xml FROM private_storage WHERE owner = ? AND namespace = ?"
SQL_PUT_FRAGMENT = (
    "INSERT INTO private_storage (owner, namespace, xml, size) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (owner, namespace) DO UPDATE SET xml = excluded.xml, size = excluded.size"
)
SQL_DELETE_FRAGMENT = "DELETE FROM private_storage WHERE owner = ? AND namespace = ?"
SQL_USAGE = "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM private_storage WHERE owner = ?"


@dataclass(frozen=True)
class Quota:
    """What one account may keep: namespaces, and bytes over all of them."""

    max_namespaces: int
    max_bytes: int


class OverQuota(Exception):
    """The write would take the account over its quota; nothing was written."""


def fragment(db: Database, owner: str, namespace: str) -> str | None:
    """The XML the owner keeps in *namespace*, or None."""
    rows = db.query(SQL_FRAGMENT, (owner, namespace))
    return str(rows[0][0]) if rows else None


def put_fragments(db: Database, owner: str, fragments: Mapping[str, str | None], quota: Quota) -> None:
    """Replace the owner's XML of each namespace of *fragments* (None: forget it), in one
    transaction; raise OverQuota, having written nothing, if the account would then be over
    *quota*."""
    with db.transaction() as tx:
        for namespace, xml in fragments.items():
            if xml is None:
                tx.execute(SQL_DELETE_FRAGMENT, (owner, namespace))
            else:
                tx.execute(SQL_PUT_FRAGMENT, (owner, namespace, xml, len(xml.encode())))
        count, size = tx.execute(SQL_USAGE, (owner,))[0]
        if int(count) > quota.max_namespaces or int(size) > quota.max_bytes:
            raise OverQuota(f"{count} namespaces, {size} bytes")
