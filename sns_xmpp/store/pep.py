"""The SQL of personal eventing (XEP-0163): an account's PEP nodes and their items (schema 008).

Functions of a `Database` (reads) or of a `Transaction` (a write's reads and writes, so that one
publish checks, writes and trims as a whole), run by the PEP service through `IStore.run` and
`IStore.run_read`. A node's configuration is opaque text here (the service's JSON) and an item's
payload is serialised XML: the store never sees a stanza.
"""

from __future__ import annotations

from dataclasses import dataclass

from sns_xmpp.store.common import Database, Transaction


@dataclass(frozen=True)
class StoredItem:
    item_id: str
    payload: str  # the item's children, serialised
    publisher: str
    published_at: float


SQL_ITEMS = "SELECT item_id, payload, publisher, published_at FROM pep_items WHERE owner = ? AND node = ?"
SQL_ITEM = SQL_ITEMS + " AND item_id = ?"


def _item(row: tuple[str, str, str, float]) -> StoredItem:
    return StoredItem(row[0], row[1], row[2], float(row[3]))


# -- reads ---------------------------------------------------------------------------------------


SQL_NODES = "SELECT node, config FROM pep_nodes WHERE owner = ? ORDER BY node"


def nodes(db: Database, owner: str) -> dict[str, str]:
    """The owner's nodes: name -> configuration."""
    return {row[0]: row[1] for row in db.query(SQL_NODES, (owner,))}


def node_config(tx: Transaction, owner: str, node: str) -> str | None:
    rows = tx.execute("SELECT config FROM pep_nodes WHERE owner = ? AND node = ?", (owner, node))
    return rows[0][0] if rows else None


def items(db: Database, owner: str, node: str, newest: int | None = None,
          ids: tuple[str, ...] = ()) -> list[StoredItem]:
    """The node's items: those named *ids* (in the order asked), else the *newest* (all when
    None), oldest first."""
    if ids:
        found = {}
        for item_id in dict.fromkeys(ids):
            for row in db.query(SQL_ITEM + " ORDER BY serial", (owner, node, item_id)):
                found[row[0]] = _item(row)
        return [found[item_id] for item_id in dict.fromkeys(ids) if item_id in found]
    if newest is None:
        return [_item(row) for row in db.query(SQL_ITEMS + " ORDER BY serial", (owner, node))]
    rows = db.query(SQL_ITEMS + " ORDER BY serial DESC LIMIT ?", (owner, node, newest))
    return [_item(row) for row in reversed(rows)]


def last_items(db: Database, owner: str) -> dict[str, StoredItem]:
    """Each node's newest item (for last-published-item delivery), by node."""
    rows = db.query("SELECT node, item_id, payload, publisher, published_at FROM pep_items AS i WHERE owner = ?"
                    " AND serial = (SELECT MAX(serial) FROM pep_items WHERE owner = i.owner AND node = i.node)",
                    (owner,))
    return {row[0]: _item(row[1:]) for row in rows}


# -- writes (inside a transaction) ----------------------------------------------------------------


def create_node(tx: Transaction, owner: str, node: str, config: str) -> None:
    tx.execute("INSERT INTO pep_nodes (owner, node, config) VALUES (?, ?, ?)", (owner, node, config))


def count_nodes(tx: Transaction, owner: str) -> int:
    return int(tx.execute("SELECT COUNT(*) FROM pep_nodes WHERE owner = ?", (owner,))[0][0])


def set_config(tx: Transaction, owner: str, node: str, config: str) -> None:
    tx.execute("UPDATE pep_nodes SET config = ? WHERE owner = ? AND node = ?", (config, owner, node))


def put_item(tx: Transaction, owner: str, node: str, item: StoredItem) -> None:
    """Store *item* as the node's newest, replacing an item of the same id."""
    top = tx.execute("SELECT MAX(serial) FROM pep_items WHERE owner = ? AND node = ?", (owner, node))[0][0]
    tx.execute("DELETE FROM pep_items WHERE owner = ? AND node = ? AND item_id = ?", (owner, node, item.item_id))
    tx.execute("INSERT INTO pep_items (owner, node, item_id, payload, publisher, published_at, serial)"
               " VALUES (?, ?, ?, ?, ?, ?, ?)",
               (owner, node, item.item_id, item.payload, item.publisher, item.published_at, int(top or 0) + 1))


def trim(tx: Transaction, owner: str, node: str, keep: int) -> list[str]:
    """Delete all but the *keep* newest items; the ids deleted."""
    gone = [row[0] for row in tx.execute(
        "SELECT item_id FROM pep_items WHERE owner = ? AND node = ? ORDER BY serial DESC", (owner, node))[keep:]]
    for item_id in gone:
        tx.execute("DELETE FROM pep_items WHERE owner = ? AND node = ? AND item_id = ?", (owner, node, item_id))
    return gone


def retract(tx: Transaction, owner: str, node: str, item_ids: tuple[str, ...]) -> list[str]:
    """Delete the named items; the ids that were there."""
    gone = []
    for item_id in item_ids:
        tx.execute("DELETE FROM pep_items WHERE owner = ? AND node = ? AND item_id = ?", (owner, node, item_id))
        if tx.rowcount:
            gone.append(item_id)
    return gone


def purge(tx: Transaction, owner: str, node: str) -> None:
    tx.execute("DELETE FROM pep_items WHERE owner = ? AND node = ?", (owner, node))


def delete_node(tx: Transaction, owner: str, node: str) -> bool:
    tx.execute("DELETE FROM pep_items WHERE owner = ? AND node = ?", (owner, node))
    tx.execute("DELETE FROM pep_nodes WHERE owner = ? AND node = ?", (owner, node))
    return tx.rowcount > 0
