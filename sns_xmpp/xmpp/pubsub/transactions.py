"""What each PEP request does on the store's worker thread, each in one transaction: read the
node's configuration, check it, write, trim (`store/pep.py` holds the SQL). Refusals are
StanzaErrors raised here, which the Deferred of `IStore.run` carries back to the reactor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.words.protocols.jabber.error import StanzaError

from sns_xmpp.store import pep as store
from sns_xmpp.store.common import Database
from sns_xmpp.xmpp.pubsub.nodes import Limits, NodeConfig, configured, created_with, meets, pubsub_error

if TYPE_CHECKING:  # wokkel's data_form imports only after the start-up call (sns_xmpp/compat.py)
    from wokkel import data_form



def publish(db: Database, owner: str, node: str, item: store.StoredItem, options: data_form.Form | None,
             limits: Limits) -> tuple[NodeConfig, list[str]]:
    with db.transaction() as tx:
        text = store.node_config(tx, owner, node)
        if text is None:
            if store.count_nodes(tx, owner) >= limits.nodes_per_account:
                raise pubsub_error("not-allowed", "max-nodes-exceeded")
            config = created_with(options, limits)
            store.create_node(tx, owner, node, config.to_json())
        else:
            config = NodeConfig.from_json(text)
            if options is not None and not meets(config, options, limits):
                raise pubsub_error("conflict", "precondition-not-met")
        if not config.persist_items:  # the notification carries it; nothing is kept
            store.purge(tx, owner, node)
            return config, []
        store.put_item(tx, owner, node, item)
        return config, store.trim(tx, owner, node, config.max_items)


def read_config(db: Database, owner: str, node: str) -> NodeConfig:
    with db.transaction() as tx:
        text = store.node_config(tx, owner, node)
    if text is None:
        raise StanzaError("item-not-found")
    return NodeConfig.from_json(text)


def node_and_items(db: Database, owner: str, node: str, newest: int | None,
                    ids: tuple[str, ...]) -> tuple[NodeConfig, list[store.StoredItem]]:
    config = read_config(db, owner, node)
    return config, store.items(db, owner, node, newest, ids)


def create(db: Database, owner: str, node: str, form: data_form.Form | None, limits: Limits) -> NodeConfig:
    with db.transaction() as tx:
        if store.node_config(tx, owner, node) is not None:
            raise StanzaError("conflict")
        if store.count_nodes(tx, owner) >= limits.nodes_per_account:
            raise pubsub_error("not-allowed", "max-nodes-exceeded")
        config = configured(NodeConfig(), form, limits) if form is not None else NodeConfig()
        store.create_node(tx, owner, node, config.to_json())
    return config


def configure(db: Database, owner: str, node: str, form: data_form.Form, limits: Limits) -> NodeConfig:
    with db.transaction() as tx:
        text = store.node_config(tx, owner, node)
        if text is None:
            raise StanzaError("item-not-found")
        config = configured(NodeConfig.from_json(text), form, limits)
        store.set_config(tx, owner, node, config.to_json())
        store.trim(tx, owner, node, config.max_items if config.persist_items else 0)
    return config


def retract(db: Database, owner: str, node: str, ids: tuple[str, ...]) -> tuple[NodeConfig, list[str]]:
    with db.transaction() as tx:
        text = store.node_config(tx, owner, node)
        if text is None:
            raise StanzaError("item-not-found")
        gone = store.retract(tx, owner, node, ids)
    if not gone:
        raise StanzaError("item-not-found")
    return NodeConfig.from_json(text), gone


def purge(db: Database, owner: str, node: str) -> NodeConfig:
    with db.transaction() as tx:
        text = store.node_config(tx, owner, node)
        if text is None:
            raise StanzaError("item-not-found")
        store.purge(tx, owner, node)
    return NodeConfig.from_json(text)


def delete(db: Database, owner: str, node: str) -> NodeConfig:
    with db.transaction() as tx:
        text = store.node_config(tx, owner, node)
        if text is None:
            raise StanzaError("item-not-found")
        store.delete_node(tx, owner, node)
    return NodeConfig.from_json(text)


def everything(db: Database, owner: str) -> tuple[dict[str, NodeConfig], dict[str, store.StoredItem]]:
    configs = {node: NodeConfig.from_json(text) for node, text in store.nodes(db, owner).items()}
    return configs, store.last_items(db, owner) if configs else {}
