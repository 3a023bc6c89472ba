"""Rosters (RFC 6121 section 2): an in-memory copy per active user, written through.

The roster is loaded once, when a user binds a resource or when a stanza for an
offline user needs it, and then read from memory: no database round trip on
the presence path. Writes go to the store's single writer thread in order.

Each roster carries its version (RFC 6121 section 2.6): a counter that the store bumps in the
transaction of every change to an item, and that the copy here bumps alongside, so that the version
a push announces is the one the store holds once the push's write is done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store.interface import IStore
from sns_xmpp.store.records import RosterItem
from sns_xmpp.xmpp.stanzas import append_child

log = GatedLogger()

NS_ROSTER = "jabber:iq:roster"
HAS_TO = ("to", "both")  # subscriptions under which the owner receives the contact's presence
HAS_FROM = ("from", "both")  # ... and under which the contact receives the owner's
MAX_GROUP_BYTES = 1023
MAX_NAME_BYTES = 1023
# RFC 6121 leaves the number of groups of an item to the server; a person's contact in more
# than this many groups is no use case, and each one is kept, stored and pushed.
MAX_GROUPS_PER_ITEM = 100
# A roster is sent whole at every login (within the stream's outbound bound) and every presence
# change fans out over it, so it is bounded: in items (a social network's friend lists stop at
# about this many) and in the characters of its addresses, names and groups (a typical item has
# a few dozen; the bound only stops items made as large as the limits above allow).
MAX_ROSTER_ITEMS = 5000
MAX_ROSTER_CHARS = 2 * 1024 * 1024


def item_chars(item: RosterItem) -> int:
    return len(item.contact) + len(item.name or "") + sum(len(group) for group in item.groups)


@dataclass
class Roster:
    owner: str
    items: dict[str, RosterItem] = field(default_factory=dict)
    # Inbound subscription requests still waiting for the owner's answer.
    requests: set[str] = field(default_factory=set)
    chars: int = 0  # item_chars over the items, kept up to date by RosterBook
    version: int = 0  # the changes to the items so far, as the store counts them (section 2.6)

    def __post_init__(self) -> None:
        self.chars = sum(item_chars(item) for item in self.items.values())

    def item(self, contact: str) -> RosterItem:
        return self.items.get(contact) or RosterItem(contact, None, (), "none", False, False)


def _roster_from(owner: str, stored: tuple[list[RosterItem], list[str], int]) -> Roster:
    """A Roster from the store's `load_roster` answer (items, requests, version)."""
    items, requests, version = stored
    return Roster(owner, {item.contact: item for item in items}, set(requests), version=version)


class RosterBook:
    """The cache of loaded rosters, and the only writer of roster state."""

    def __init__(self, store: IStore) -> None:
        self.store = store
        self._rosters: dict[str, Roster] = {}
        self._loading: dict[str, list[Deferred]] = {}
        self._pushes = 0
        # Called with the owner once a change to a roster is on disk: the cluster tells the other
        # nodes, whose copies of that roster are then stale (cluster/directory.py).
        self.on_written: Callable[[str], None] | None = None
        self._unwritten: dict[str, list[Deferred]] = {}  # owner -> roster writes not yet on disk

    def next_push_id(self) -> str:
        """The id of the next roster push (RFC 6121 2.1.6), unique on this server."""
        self._pushes += 1
        return f"push{self._pushes}"

    def __len__(self) -> int:
        """Rosters held in memory."""
        return len(self._rosters)

    def cached(self, owner: str) -> Roster | None:
        return self._rosters.get(owner)

    def get(self, owner: str) -> Deferred:
        """Fire with the owner's Roster; concurrent callers share one load, in order."""
        roster = self._rosters.get(owner)
        if roster is not None:
            return defer.succeed(roster)
        waiter: Deferred = Deferred()
        if owner in self._loading:
            self._loading[owner].append(waiter)
            return waiter
        self._loading[owner] = [waiter]
        d = self.store.load_roster(owner)

        def loaded(results: tuple[list[RosterItem], list[str], int]) -> None:
            roster = _roster_from(owner, results)
            self._rosters[owner] = roster
            for waiting in self._loading.pop(owner):
                waiting.callback(roster)

        def failed(reason: Failure) -> None:
            for waiting in self._loading.pop(owner):
                waiting.errback(reason)

        d.addCallbacks(loaded, failed)
        return waiter

    def forget(self, owner: str) -> None:
        self._rosters.pop(owner, None)

    def reload(self, owner: str) -> Deferred[None]:
        """Read a cached roster again from the store (another node changed it), in place, so that
        whoever holds the Roster sees the change."""
        roster = self._rosters.get(owner)
        if roster is None:
            return defer.succeed(None)

        def loaded(results: tuple[list[RosterItem], list[str], int]) -> Deferred[None] | None:
            fresh = _roster_from(owner, results)
            if self._rosters.get(owner) is not roster or fresh.version < roster.version:
                return None  # forgotten meanwhile, or a newer change of this node's is not read back yet
            settled = self.settled(owner)
            if settled is not None:
                # A write of this node's asked for after this read (the store runs calls in order,
                # and hands their results back in order): its change is in memory, perhaps not in
                # the answer (a subscription request counts no version). Read again once it is on disk.
                return settled.addCallback(lambda _: self.reload(owner))
            roster.items, roster.requests, roster.chars, roster.version = (
                fresh.items, fresh.requests, fresh.chars, fresh.version)
            return None

        return self.store.load_roster(owner).addCallback(loaded)

    def reload_all(self) -> Deferred[None]:
        """Read every cached roster again, and every one being loaded once it is (a cluster's
        node may have missed announcements of changes while its subscriber was away; a load
        under way may have begun before such a change)."""
        reloads = [self.reload(owner) for owner in list(self._rosters)]
        for owner in list(self._loading):
            waiter: Deferred = Deferred()
            self._loading[owner].append(waiter)
            # (A load that fails caches nothing, so nothing is stale.)
            reloads.append(waiter.addCallbacks(lambda roster: self.reload(roster.owner), lambda reason: None))
        log.info("roster.reloading rosters={count}", count=len(reloads))
        for reload in reloads:
            reload.addErrback(lambda reason: log.failure("roster.reload_failed", reason))
        return DeferredList(reloads).addCallback(lambda _: None)

    def fits(self, roster: Roster, item: RosterItem) -> bool:
        """Whether *item* (new, or replacing the contact's) keeps the roster within its bounds."""
        old = roster.items.get(item.contact)
        if old is None and len(roster.items) >= MAX_ROSTER_ITEMS:
            return False
        return roster.chars - (item_chars(old) if old is not None else 0) + item_chars(item) <= MAX_ROSTER_CHARS

    def put(self, roster: Roster, item: RosterItem) -> None:
        old = roster.items.get(item.contact)
        roster.chars += item_chars(item) - (item_chars(old) if old is not None else 0)
        roster.items[item.contact] = item
        roster.version += 1  # as the store's write does
        self._written(roster.owner, self.store.put_roster_item(roster.owner, item))

    def remove(self, roster: Roster, contact: str) -> None:
        old = roster.items.pop(contact, None)
        if old is not None:
            roster.chars -= item_chars(old)
        roster.version += 1  # as the store's write does, item or not
        self._written(roster.owner, self.store.remove_roster_item(roster.owner, contact))

    def add_request(self, roster: Roster, contact: str) -> None:
        if contact not in roster.requests:
            roster.requests.add(contact)
            self._written(roster.owner, self.store.add_subscription_request(roster.owner, contact))

    def drop_request(self, roster: Roster, contact: str) -> bool:
        if contact not in roster.requests:
            return False
        roster.requests.discard(contact)
        self._written(roster.owner, self.store.remove_subscription_request(roster.owner, contact))
        return True

    def settled(self, owner: str) -> Deferred[None] | None:
        """None when the owner's roster has no write in flight; else a Deferred that fires once
        they are all on disk (another node reads the roster from there: cluster/)."""
        unwritten = self._unwritten.get(owner)
        if not unwritten:
            return None
        waiter: Deferred[None] = Deferred()

        def release(result: object) -> object:
            waiter.callback(None)
            return result

        unwritten[-1].addBoth(release)
        return waiter

    def _written(self, owner: str, d: Deferred) -> None:
        unwritten = self._unwritten.setdefault(owner, [])
        unwritten.append(d)

        def done(result: object) -> object:
            unwritten.remove(d)
            if not unwritten and self._unwritten.get(owner) is unwritten:
                del self._unwritten[owner]
            return result

        d.addBoth(done)
        if self.on_written is not None:
            on_written = self.on_written
            d.addCallback(lambda _: on_written(owner))
        d.addErrback(lambda reason: log.failure("roster.write_failed", reason))


def item_element(item: RosterItem, removed: bool = False) -> domish.Element:
    element = domish.Element((NS_ROSTER, "item"))
    element["jid"] = item.contact
    if removed:
        element["subscription"] = "remove"
        return element
    element["subscription"] = item.subscription
    if item.name:
        element["name"] = item.name
    if item.ask:
        element["ask"] = "subscribe"
    if item.approved:
        element["approved"] = "true"
    for group in item.groups:
        group_element = append_child(element, domish.Element((NS_ROSTER, "group")))
        if group:
            group_element.addContent(group)
    return element


def roster_result(roster: Roster, versioned: bool = False) -> domish.Element:
    """The whole roster; with *versioned* (the client asked with a 'ver'), its version too."""
    query = domish.Element((NS_ROSTER, "query"))
    if versioned:
        query["ver"] = str(roster.version)
    for item in roster.items.values():
        append_child(query, item_element(item))
    return query


def parse_item_set(query: domish.Element) -> tuple[str, domish.Element]:
    """The one <item/> of a roster set and its prepared bare JID (RFC 6121 2.3.3)."""
    items = list(query.elements(NS_ROSTER, "item"))
    if len(items) != 1:
        raise StanzaError("bad-request", text="a roster set carries exactly one item")
    element = items[0]
    try:
        contact = parse_jid(element.getAttribute("jid", ""))
    except InvalidFormat:
        raise StanzaError("bad-request", text="invalid JID") from None
    if contact.resource is not None:
        raise StanzaError("bad-request", text="roster items are bare JIDs")
    subscription = element.getAttribute("subscription")
    if subscription not in (None, "remove", "none", "to", "from", "both"):
        raise StanzaError("bad-request", text="unknown subscription value")
    return contact.userhost(), element


def updated_item(existing: RosterItem, element: domish.Element) -> RosterItem:
    """A client may change the name and the groups; the subscription is the server's."""
    name = element.getAttribute("name") or None
    if name is not None and len(name.encode()) > MAX_NAME_BYTES:
        raise StanzaError("not-acceptable", text="name too long")
    # Linear in the item's size: the groups are counted before any is read, and a set finds
    # duplicates (a list did, in time quadratic in a 256 KiB stanza's ten thousand groups).
    elements = list(element.elements(NS_ROSTER, "group"))
    if len(elements) > MAX_GROUPS_PER_ITEM:
        raise StanzaError("not-acceptable", text=f"at most {MAX_GROUPS_PER_ITEM} groups per item")
    groups: dict[str, None] = {}  # in the client's order
    for group in elements:
        text = str(group)
        if not text or len(text.encode()) > MAX_GROUP_BYTES:
            raise StanzaError("not-acceptable", text="empty or oversized group name")
        if text in groups:
            # RFC 6121 2.3.3: duplicate groups are a bad request.
            raise StanzaError("bad-request", text="duplicate group")
        groups[text] = None
    return dataclasses.replace(existing, name=name, groups=tuple(groups))


def push_to(targets: Iterable[Callable[[domish.Element], object]], owner: str, item: RosterItem,
            removed: bool, push_id: str, version: int) -> None:
    """A roster push (RFC 6121 2.1.6) to each of *targets*, with the roster's version after the
    change (2.6.3: every push carries it; a client that does not version ignores it)."""
    for send in targets:
        iq = domish.Element((None, "iq"))
        iq["type"] = "set"
        iq["id"] = push_id
        query = append_child(iq, domish.Element((NS_ROSTER, "query")))
        query["ver"] = str(version)
        append_child(query, item_element(item, removed))
        send(iq)
