"""Push registrations' own SQL (XEP-0357, schema 015_push.sql): functions of a `Database`, run by
the feature (`xmpp/features/push.py`) through ``store.run`` and ``store.run_read``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sns_xmpp.store.common import Database

SQL_ALL = "SELECT owner, service, node, resource, options FROM push_registrations ORDER BY owner, enabled_at"
SQL_OWNERS = ("SELECT owner, service, node, resource, options FROM push_registrations WHERE owner = ?"
              " ORDER BY enabled_at")
SQL_PUT = (
    "INSERT INTO push_registrations (owner, service, node, resource, options, enabled_at) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (owner, service, node) DO UPDATE SET resource = excluded.resource, options = excluded.options,"
    " enabled_at = excluded.enabled_at"
)
SQL_COUNT_OTHERS = "SELECT COUNT(*) FROM push_registrations WHERE owner = ? AND NOT (service = ? AND node = ?)"
SQL_DELETE_NODE = "DELETE FROM push_registrations WHERE owner = ? AND service = ? AND node = ?"
SQL_DELETE_SERVICE = "DELETE FROM push_registrations WHERE owner = ? AND service = ?"


@dataclass(frozen=True)
class StoredRegistration:
    owner: str
    service: str
    node: str  # "" when the client named none
    resource: str
    options: str | None  # the publish-options form's XML, as the client sent it


class TooManyRegistrations(Exception):
    """The account has its most registrations already; nothing was written."""


def all_registrations(db: Database) -> list[StoredRegistration]:
    """Every account's registrations (read once, at start)."""
    return [_registration(row) for row in db.query(SQL_ALL, ())]


def registrations_of(db: Database, owner: str) -> list[StoredRegistration]:
    """One account's registrations (read again when another node of a cluster changed them)."""
    return [_registration(row) for row in db.query(SQL_OWNERS, (owner,))]


def _registration(row: Sequence[Any]) -> StoredRegistration:
    """A registration from its row (owner, service, node, resource, options)."""
    owner, service, node, resource, options = row
    return StoredRegistration(str(owner), str(service), str(node), str(resource),
                              None if options is None else str(options))


def put_registration(db: Database, registration: StoredRegistration, now: float, most: int) -> None:
    """Keep *registration*, replacing the account's one of the same service and node; raise
    TooManyRegistrations, having written nothing, if the account already has *most* others."""
    r = registration
    with db.transaction() as tx:
        [(others,)] = tx.execute(SQL_COUNT_OTHERS, (r.owner, r.service, r.node))
        if int(others) >= most:
            raise TooManyRegistrations(f"{others} registrations")
        tx.execute(SQL_PUT, (r.owner, r.service, r.node, r.resource, r.options, now))


def delete_registrations(db: Database, owner: str, service: str, node: str | None) -> None:
    """Forget the owner's registration of *service* and *node*, or all of *service*'s (None)."""
    with db.transaction() as tx:
        if node is None:
            tx.execute(SQL_DELETE_SERVICE, (owner, service))
        else:
            tx.execute(SQL_DELETE_NODE, (owner, service, node))
