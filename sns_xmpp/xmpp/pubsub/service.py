"""The PEP service (XEP-0163 on XEP-0060): an account's nodes and items, who may see them, and
the notifications. The protocol side (`features/pep.py`) turns IQs into calls of this object and
its answers into XML, as wokkel's `PubSubService` hands requests to an `IPubSubResource`; the rows
live in `store/pep.py`.

The in-process API, for other features (the vCard feature's XEP-0398 avatar conversion and its
XEP-0172 nickname): every call acts as the account itself and returns a Deferred; a refusal is a
`StanzaError` in the errback (item-not-found for a node that is not there, conflict with
precondition-not-met for publish-options a node does not meet, not-acceptable for a payload too
big...).

- ``publish(owner, node, payload, item_id=None, options=None) -> Deferred[str]``: publish one
  item (the payload element, e.g. ``<nick xmlns='http://jabber.org/protocol/nick'>``), creating
  the node on first publish; *options* are publish-options (``{"pubsub#access_model": "open"}``).
  Fires with the item's id (generated when None); the contacts with +notify are notified.
- ``items(owner, node, max_items=None, ids=()) -> Deferred[list[PEPItem]]``: oldest first.
- ``retract(owner, node, ids, notify=True)``, ``purge(owner, node)``, ``delete(owner, node)``.
- ``on_publish(listener)``: ``listener(owner, node, item)`` after every publish (by a client or
  through this API), e.g. to keep a vCard's photo in step with the XEP-0084 avatar.

`features.pep.pep_service(registry)` returns the installed service, or None when the feature is
turned off.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from wokkel.generic import parseXml
from zope.interface import Interface, implementer

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store import pep as store
from sns_xmpp.store.common import Database
from sns_xmpp.xmpp.pubsub import transactions
from sns_xmpp.xmpp.pubsub.nodes import (
    NS_PUBSUB_EVENT,
    Limits,
    NodeConfig,
    options_form,
    pubsub_error,
)
from sns_xmpp.xmpp.roster import HAS_FROM, Roster
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import NS_CLIENT, add_element, append_child

if TYPE_CHECKING:  # wokkel's data_form imports only after the start-up call (sns_xmpp/compat.py)
    from wokkel import data_form

log = GatedLogger()

Interest = Callable[[str], Mapping[str, frozenset[str]]]
"""(owner) -> the full JIDs whose available presence the owner's account has (its contacts' and
its own resources'), each with its entity capabilities' features (features/caps.py)."""
PublishListener = Callable[[str, str, "PEPItem"], None]


@dataclass(frozen=True)
class PEPItem:
    item_id: str
    payload: domish.Element | None
    publisher: str
    published_at: float

    def element(self, uri: str, with_payload: bool = True) -> domish.Element:
        """The <item id=...> of *uri* (pubsub or pubsub#event) holding the payload."""
        item = domish.Element((uri, "item"))
        item["id"] = self.item_id
        if with_payload and self.payload is not None:
            append_child(item, self.payload)
        return item


def _loaded(stored: store.StoredItem) -> PEPItem:
    return PEPItem(stored.item_id, _payload(stored.payload), stored.publisher, stored.published_at)


def _payload(text: str) -> domish.Element | None:
    """A stored payload as an element. Inside a wrapper: the parser keeps no text of its root."""
    return parseXml(f"<payload>{text}</payload>").firstChildElement() if text else None


# -- the service -----------------------------------------------------------------------------------


class IPEPService(Interface):
    """The in-process API (the module's doc): what other features call, as the account."""

    def publish(owner: str, node: str, payload: domish.Element | None, item_id: str | None = None,
                options: Mapping[str, str] | None = None) -> Deferred[str]:
        """Publish one item, creating the node with *options* (publish-options) if it is not there."""

    def items(owner: str, node: str, max_items: int | None = None, ids: Sequence[str] = ()) -> Deferred[list[PEPItem]]:
        """The node's items, oldest first; item-not-found for no node."""

    def retract(owner: str, node: str, ids: Sequence[str], notify: bool = True) -> Deferred[None]:
        """Delete the items named; item-not-found if none was there."""

    def purge(owner: str, node: str) -> Deferred[None]:
        """Delete every item of the node."""

    def delete(owner: str, node: str) -> Deferred[None]:
        """Delete the node, telling the contacts (<delete/>)."""

    def on_publish(listener: PublishListener) -> None:
        """Call ``listener(owner, node, item)`` after every publish."""


@implementer(IPEPService)
class PEPService:
    def __init__(self, sessions: SessionManager, clock: IReactorTime, limits: Limits | None = None,
                 interest: Interest | None = None) -> None:
        self.sessions = sessions
        self.clock = clock
        self.limits = limits or Limits()
        self.interest: Interest = interest or (lambda owner: {})
        self.listeners: list[PublishListener] = []

    # -- the in-process API (see the module's doc) --

    def publish(self, owner: str, node: str, payload: domish.Element | None, item_id: str | None = None,
                options: Mapping[str, str] | None = None) -> Deferred[str]:
        form = options_form(dict(options)) if options else None
        return self.publish_item(owner, node, payload, item_id, form)

    def items(self, owner: str, node: str, max_items: int | None = None,
              ids: Sequence[str] = ()) -> Deferred[list[PEPItem]]:
        work = partial(transactions.node_and_items, owner=owner, node=node, newest=max_items, ids=tuple(ids))
        return self.sessions.store.run_read(work).addCallback(lambda found: [_loaded(i) for i in found[1]])

    def retract(self, owner: str, node: str, ids: Sequence[str], notify: bool = True) -> Deferred[None]:
        def retracted(outcome: tuple[NodeConfig, list[str]]) -> None:
            config, gone = outcome
            if notify:
                self._notify_retracted(owner, node, config, gone)
        work = partial(transactions.retract, owner=owner, node=node, ids=tuple(ids))
        return self.sessions.store.run(work).addCallback(retracted)

    def purge(self, owner: str, node: str) -> Deferred[None]:
        def purged(config: NodeConfig) -> None:
            self._notify(owner, node, config, lambda: _event_child("purge", node))
        return self.sessions.store.run(partial(transactions.purge, owner=owner, node=node)).addCallback(purged)

    def delete(self, owner: str, node: str) -> Deferred[None]:
        def deleted(config: NodeConfig) -> None:
            if config.notify_delete:
                self._notify(owner, node, config, lambda: _event_child("delete", node))
        return self.sessions.store.run(partial(transactions.delete, owner=owner, node=node)).addCallback(deleted)

    def on_publish(self, listener: PublishListener) -> None:
        self.listeners.append(listener)

    # -- what the protocol side also uses --

    def publish_item(self, owner: str, node: str, payload: domish.Element | None, item_id: str | None,
                     options: data_form.Form | None) -> Deferred[str]:
        """Section 7.1: publish one item as the owner; fires with its id."""
        if _too_long(node) or item_id is not None and _too_long(item_id):
            return defer.fail(StanzaError("policy-violation", "modify", text=f"names: {MAX_NAME} bytes"))
        if payload is None:
            return defer.fail(pubsub_error("bad-request", "payload-required"))
        text = payload.toXml()
        if len(text.encode()) > self.limits.item_bytes:
            return defer.fail(pubsub_error("not-acceptable", "payload-too-big"))
        item = store.StoredItem(item_id or secrets.token_hex(8), text, owner, self.clock.seconds())

        def published(outcome: tuple[NodeConfig, list[str]]) -> str:
            config, evicted = outcome
            shown = PEPItem(item.item_id, payload, owner, item.published_at)
            self._notify(owner, node, config, lambda: _event_items(node, [shown], config.deliver_payloads))
            for listener in self.listeners:
                try:
                    listener(owner, node, shown)
                except Exception:
                    log.failure("pep.listener_failed")
            return item.item_id

        work = partial(transactions.publish, owner=owner, node=node, item=item, options=options, limits=self.limits)
        return self.sessions.store.run(work).addCallback(published)

    def create(self, owner: str, node: str, form: data_form.Form | None) -> Deferred[NodeConfig]:
        if _too_long(node):
            return defer.fail(StanzaError("policy-violation", "modify", text=f"node names: {MAX_NAME} bytes"))
        work = partial(transactions.create, owner=owner, node=node, form=form, limits=self.limits)
        return self.sessions.store.run(work)

    def config(self, owner: str, node: str) -> Deferred[NodeConfig]:
        return self.sessions.store.run_read(partial(transactions.read_config, owner=owner, node=node))

    def configure(self, owner: str, node: str, form: data_form.Form) -> Deferred[NodeConfig]:
        work = partial(transactions.configure, owner=owner, node=node, form=form, limits=self.limits)
        return self.sessions.store.run(work)

    def visible_items(self, asker: str, owner: str, node: str, max_items: int | None,
                      ids: Sequence[str]) -> Deferred[list[PEPItem]]:
        """Section 6.5: the items *asker* (a bare JID) may retrieve, or the access model's error."""
        work = partial(transactions.node_and_items, owner=owner, node=node, newest=max_items, ids=tuple(ids))

        def checked(found: tuple[NodeConfig, list[store.StoredItem]]) -> Deferred[list[PEPItem]]:
            config, stored = found
            return self.check_access(asker, owner, config).addCallback(lambda _: [_loaded(i) for i in stored])

        return self.sessions.store.run_read(work).addCallback(checked)

    def visible_nodes(self, asker: str, owner: str) -> Deferred[list[tuple[str, NodeConfig]]]:
        """The owner's nodes *asker* may see (disco#items on the account, XEP-0030 and 0163)."""
        def nodes(db: Database) -> dict[str, NodeConfig]:
            return {node: NodeConfig.from_json(text) for node, text in store.nodes(db, owner).items()}

        def filtered(configs: dict[str, NodeConfig]) -> Deferred[list[tuple[str, NodeConfig]]]:
            return self._roster(owner).addCallback(lambda roster: [
                (node, config) for node, config in configs.items() if may_see(asker, owner, config, roster)])

        return self.sessions.store.run_read(nodes).addCallback(filtered)

    def check_access(self, asker: str, owner: str, config: NodeConfig) -> Deferred[None]:
        """Section 6.5.9's refusals: presence-subscription-required, closed-node."""
        if asker == owner or config.access_model == "open":
            return defer.succeed(None)
        if config.access_model == "whitelist":
            return defer.fail(pubsub_error("not-allowed", "closed-node"))

        def decided(roster: Roster | None) -> None:
            if not may_see(asker, owner, config, roster):
                raise pubsub_error("not-authorized", "presence-subscription-required")

        return self._roster(owner).addCallback(decided)

    def _roster(self, owner: str) -> Deferred[Roster | None]:
        return self.sessions.roster_of_account(owner)

    # -- notifications (XEP-0163 section 4: to the +notify resources that may see the node) --

    def _notify(self, owner: str, node: str, config: NodeConfig, event: Callable[[], domish.Element]) -> None:
        wanted = [full for full, features in self.interest(owner).items() if node + "+notify" in features]
        if not wanted:
            return

        def send(roster: Roster | None) -> None:
            child = event()
            for full in wanted:
                if may_see(full.split("/", 1)[0], owner, config, roster):
                    self.sessions.route(notification(owner, full, child))

        self._roster(owner).addCallback(send).addErrback(lambda reason: log.failure("pep.notify_failed", reason))

    def _notify_retracted(self, owner: str, node: str, config: NodeConfig, gone: list[str]) -> None:
        def event() -> domish.Element:
            items = _event_child("items", node)
            for item_id in gone:
                add_element(items, "retract")["id"] = item_id
            return items
        self._notify(owner, node, config, event)

    def send_last_items(self, owner: str, full: str, features: frozenset[str]) -> None:
        """Section 4.3.2 (XEP-0060 6.1.7): the newest item of each node *full* shows +notify
        interest in and may see, now that its available presence has come (or it asked)."""
        nodes = {feature[:-len("+notify")] for feature in features if feature.endswith("+notify")}
        if not nodes:
            return

        def send(found: tuple[dict[str, NodeConfig], dict[str, store.StoredItem]]) -> Deferred[None] | None:
            configs, last = found
            due = [node for node in sorted(nodes & last.keys())
                   if configs[node].send_last_published_item == "on_sub_and_presence"]
            if not due:
                return None

            def deliver(roster: Roster | None) -> None:
                for node in due:
                    config = configs[node]
                    if may_see(full.split("/", 1)[0], owner, config, roster):
                        event = _event_items(node, [_loaded(last[node])], config.deliver_payloads)
                        self.sessions.route(notification(owner, full, event))

            return self._roster(owner).addCallback(deliver)

        d = self.sessions.store.run_read(partial(transactions.everything, owner=owner)).addCallback(send)
        d.addErrback(lambda reason: log.failure("pep.last_items_failed", reason))


MAX_NAME = 1024  # bytes of a node name or an item id: both go in an index (PostgreSQL's holds ~2.7 KB a row)


def _too_long(name: str) -> bool:
    return len(name) > MAX_NAME // 4 and len(name.encode()) > MAX_NAME


def may_see(asker: str, owner: str, config: NodeConfig, roster: Roster | None) -> bool:
    """XEP-0060 section 4.5's access models as PEP has them (XEP-0163 section 4): the owner sees
    everything; presence: contacts the owner shares presence with; open: anyone; whitelist: the
    owner alone (XEP-0223's private storage)."""
    if asker == owner or config.access_model == "open":
        return True
    if config.access_model == "presence":
        return roster is not None and roster.item(asker).subscription in HAS_FROM
    return False


def _event_child(name: str, node: str) -> domish.Element:
    child = domish.Element((NS_PUBSUB_EVENT, name))
    child["node"] = node
    return child


def _event_items(node: str, items: list[PEPItem], with_payload: bool) -> domish.Element:
    event_items = _event_child("items", node)
    for item in items:
        append_child(event_items, item.element(NS_PUBSUB_EVENT, with_payload))
    return event_items


def notification(owner: str, to: str, child: domish.Element) -> domish.Element:
    """Section 4.3.2: a headline message from the account's bare JID with the <event/>."""
    message = domish.Element((NS_CLIENT, "message"))
    message["from"], message["to"], message["type"] = owner, to, "headline"
    message["id"] = secrets.token_hex(6)
    append_child(add_element(message, (NS_PUBSUB_EVENT, "event")), child)
    return message
