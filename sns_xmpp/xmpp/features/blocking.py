"""Blocking Command (XEP-0191, urn:xmpp:blocking): an account's list of JIDs it wants nothing from
and sends nothing to, kept by the server so that every client of the account obeys it.

The IQs (no 'to', or the account's own bare JID; section 3): ``<blocklist/>`` (get) returns the
list; ``<block/>`` (set, at least one item) and ``<unblock/>`` (set; empty unblocks all) change it,
and each change is pushed as an IQ set of the same element to every bound resource of the account.
The XEP pushes only to resources that asked for the list; the issue asks for every resource, and a
client that never asked loses nothing by learning of a change (one that does not know the namespace
answers the push with an error, which the server drops), while one that fetched the list at login
and later misses a push would show a stale list.

A blocked JID matches by section 6: a full JID, a bare JID (any resource), a domain with a
resource, a domain (the domain, any address at it and any subdomain). Between the account and a
matching entity, nothing passes, in either direction (section 3.3):
- inbound: presence (notifications, subscriptions, probes) is dropped without an answer; a chat or
  normal message and an IQ get or set are answered with service-unavailable, as if the account did
  not exist; anything else is dropped. Nothing is delivered or kept offline.
- outbound: what a client of the account sends to the entity is not routed; the client hears
  not-acceptable with ``<blocked xmlns='urn:xmpp:blocking:errors'/>``. What the server sends on
  the account's behalf (its presence broadcast, a probe's answer) is dropped on the way.
- on block, the account's unavailable presence goes to the entity if it had the account's
  presence; on unblock, its current presence goes there, and the account probes the entity's.

The first list read also reads which accounts block anything (one query), kept up to date by the
IQs. While no account does, the filters are out of the stanza events' chains: a stanza costs
nothing here. Otherwise a stanza between two accounts that block nothing passes on two set
lookups. An account that does block has its list read once as its first resource binds and kept
in memory, so that the stanza path never waits on the store; a stanza for such an account with no
bound resource that would be kept or answered (a message for offline storage, a subscription, an
IQ) waits for one read of its list, which then stays in a bounded cache while no resource is
bound. An account known to block nothing is never read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection
from functools import partial

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.jid import JID, InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store import blocking as blocking_store
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import ChangedMeanwhile, Feature, FeatureRegistry
from sns_xmpp.xmpp.hooks import (
    IQ_FROM_CLIENT,
    IQ_TO_LOCAL,
    MESSAGE_FROM_CLIENT,
    MESSAGE_TO_LOCAL,
    PRESENCE_FROM_CLIENT,
    PRESENCE_TO_LOCAL,
    SESSION_BOUND,
    SESSION_UNBOUND,
    run,
)
from sns_xmpp.xmpp.roster import HAS_FROM, HAS_TO
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import NS_CLIENT, add_element, error_reply, may_bounce, presence_stanza

log = GatedLogger()

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
# JIDs one account may block. People block spammers and the odd ex-friend: a few dozen is a long
# list. The limit bounds the memory of a bound account and the answer to <blocklist/>.
MAX_ITEMS = 1000
# Lists of accounts with no bound resource kept after a stanza needed them (or their last
# resource left), oldest dropped first: a repeat message to an offline user reads nothing.
MAX_RESTING = 4096
# Presence that needs the recipient's list even when no resource is bound: it changes the roster
# or is answered (RFC 6121 3 and 4.3). Other presence for such an account goes nowhere anyway.
PRESENCE_NEEDING_LIST: frozenset[str | None] = frozenset(
    ("subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe"))
# Messages kept offline, and IQs answered, for an account with no bound resource: they need its list.
KEPT_MESSAGES: frozenset[str | None] = frozenset((None, "normal", "chat"))
IQ_REQUESTS: frozenset[str | None] = frozenset(("get", "set"))
EMPTY: frozenset[str] = frozenset()


def prepared(text: str) -> str:
    """A blocklist item's JID as the server compares it (RFC 7622 preparation); InvalidFormat
    for one that is not a JID."""
    return parse_jid(text).full()


def matches(blocked: Collection[str], other: JID) -> bool:
    """Whether *other* is blocked by a list of prepared JIDs (section 6, in its order): its full
    JID, its bare JID, its domain with its resource, its domain or a parent domain of it."""
    host = other.host
    if other.user is not None:
        bare = f"{other.user}@{host}"
        if bare in blocked or (other.resource is not None and f"{bare}/{other.resource}" in blocked):
            return True
    elif other.resource is not None and f"{host}/{other.resource}" in blocked:
        return True
    while True:
        if host in blocked:
            return True
        dot = host.find(".")
        if dot < 0:
            return False
        host = host[dot + 1:]


def blocked_error(stanza: domish.Element) -> domish.Element:
    """Section 3.3: the answer to a stanza the account sent to an entity it blocks."""
    condition = domish.Element((NS_BLOCKING_ERRORS, "blocked"))
    return StanzaError("not-acceptable", "cancel", appCondition=condition).toResponse(stanza)


def _later(outcome: object) -> Deferred[None] | None:
    return outcome if isinstance(outcome, Deferred) else None


def _then(first: Deferred[None], step: Callable[[], object], failed: Callable[[Failure], None]) -> Deferred[None]:
    """One Deferred for *step*'s handling after *first*, firing only when that handling is over.
    (A Deferred that waits on another it returned has fired in Twisted's sense, and XEP-0198
    would count the stanza handled before its offline write is on disk.)"""
    done: Deferred[None] = Deferred()

    def go(_: object) -> None:
        try:
            outcome = _later(step())
        except Exception:
            done.errback(Failure())
            return
        if outcome is None:
            done.callback(None)
        else:
            outcome.chainDeferred(done)

    def fail(reason: Failure) -> None:
        failed(reason)
        done.callback(None)

    first.addCallbacks(go, fail)
    return done


class Blocking:
    """The blocklists in memory, the IQs that change them, and the filter on the stanza path."""

    def __init__(self, sessions: SessionManager, limit: int = MAX_ITEMS) -> None:
        self.sessions = sessions
        self.limit = limit
        # The accounts that block anything, read with the first list (one query) and kept up to
        # date by the IQs: an account not among them has an empty list, read from nowhere.
        self.owners: set[str] = set()
        self.owners_known = False
        # The lists of accounts with a bound resource, by bare JID (empty ones too).
        self.lists: dict[str, set[str]] = {}
        self.resting: OrderedDict[str, frozenset[str]] = OrderedDict()
        self.loading: dict[str, list[Deferred[None]]] = {}
        # True while nobody blocks anything and no list is being read: then the filters are out
        # of the stanza events' chains, and a stanza costs nothing here (`_apply`).
        self.idle = False
        self.filters: list[tuple[str, Callable[..., object], int]] = []
        self._hooked = False
        self._pushes = 0
        self.changed: Callable[[str], Deferred[None] | None] = lambda owner: None  # tells the other nodes
        self.meanwhile = ChangedMeanwhile()  # what a resync (a cluster's) must leave as it is

    # -- the lists in memory ---------------------------------------------------------------

    def _settle(self) -> None:
        self.idle = self.owners_known and not self.owners and not self.loading

    def _apply(self, *, under_a_filter: bool = False) -> None:
        """Hook the filters while anything may be blocked, unhook them while nothing is. Called
        where no chain of theirs runs (a bind, an IQ), or *under_a_filter* (a read's answer may
        come inside a filter, whose chain is being iterated): then unhooking waits for the
        clock's next turn. (Hooking there is a no-op: a filter that runs is hooked.)"""
        if self.idle != self._hooked:
            return
        if self._hooked and under_a_filter:
            self.sessions.clock.callLater(0, self._apply)
            return
        for event, handler, priority in self.filters:
            if self._hooked:
                self.sessions.hooks.unhook(event, handler)
            else:
                self.sessions.hooks.hook(event, handler, priority)
        self._hooked = not self._hooked

    def _put(self, owner: str, jids: set[str]) -> None:
        """Make *jids* the list of *owner*, an account with a bound resource."""
        self.lists[owner] = jids
        if jids:
            self.owners.add(owner)
        else:
            self.owners.discard(owner)
        self._settle()

    def _rest(self, owner: str, jids: frozenset[str]) -> None:
        self.resting[owner] = jids
        self.resting.move_to_end(owner)
        while len(self.resting) > MAX_RESTING:
            self.resting.popitem(last=False)

    def _known(self, owner: str) -> Collection[str] | None:
        """*owner*'s list if it is in memory (or known empty), else None."""
        if self.owners_known and owner not in self.owners:
            return EMPTY
        blocked = self.lists.get(owner)
        return self.resting.get(owner) if blocked is None else blocked

    def _load(self, owner: str) -> Deferred[None]:
        """Read *owner*'s list into memory (and, the first time, which accounts block anything);
        concurrent callers share the one read."""
        waiter: Deferred[None] = Deferred()
        waiters = self.loading.get(owner)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        waiters = self.loading[owner] = [waiter]
        self._settle()
        self._apply()

        def loaded(read: tuple[list[str] | None, list[str]]) -> None:
            owners, jids = read
            del self.loading[owner]
            if owners is not None:
                self.owners.update(owners)  # and those that blocked since the read was asked for
                self.owners_known = True
            if owner in self.sessions.users:
                if owner not in self.lists:  # else it was changed meanwhile, and is newer
                    self.resting.pop(owner, None)
                    self._put(owner, set(jids))
            elif jids:
                self._rest(owner, frozenset(jids))
            self._settle()
            for each in waiters:
                each.callback(None)
            self._apply(under_a_filter=True)

        def failed(reason: Failure) -> None:
            del self.loading[owner]
            self._settle()
            log.failure("blocking.load_failed owner={owner}", reason, owner=owner)
            for each in waiters:
                each.errback(reason)
            self._apply(under_a_filter=True)

        work = partial(blocking_store.blocklist_and_owners, owner=owner, with_owners=not self.owners_known)
        self.sessions.store.run_read(work).addCallbacks(loaded, failed)
        return waiter

    def bound(self, session: ClientSession) -> None:
        owner = session.bare
        if owner in self.lists or owner in self.loading:
            return None
        known = self._known(owner)
        if known is not None:
            self._put(owner, set(known))
            self.resting.pop(owner, None)
        else:
            self._load(owner).addErrback(lambda reason: None)  # logged; a stanza that needs it reads again
        self._apply()
        return None

    def unbound(self, session: ClientSession, replaced: bool) -> None:
        owner = session.bare
        if replaced or owner in self.sessions.users:
            return None
        jids = self.lists.pop(owner, None)
        if jids:
            self._rest(owner, frozenset(jids))  # the account still blocks them (self.owners)
        self._apply()  # one waiting for a safe point
        return None

    # -- the filter, inbound (section 3.3: what the account receives) ---------------------------

    def inbound(self, stanza: domish.Element, to: JID, needing: Collection[str | None]) -> object:
        """None to let *stanza* through to *to*; True when it was dropped or refused; a Deferred
        when it waits for a list and is delivered again after. *needing*: the stanza types for
        which an account with no bound resource needs its list read (they are kept or answered)."""
        owner = to.userhost()
        sender_text = stanza.attributes.get("from")
        # A local sender's address is the server's own stamp, prepared: no parsing needed.
        sender_bare = sender_text.split("/", 1)[0] if sender_text else ""
        owners = self.owners
        if owner not in owners and sender_bare not in owners and self.owners_known:
            return None  # neither end blocks anything (nor has its list read: it would be an owner)
        blocked = self._known(owner)
        if blocked is None:
            if stanza.attributes.get("type") in needing or owner in self.sessions.users:
                return self._wait(owner, stanza, lambda: self.sessions.deliver(stanza))
            blocked = EMPTY  # it goes nowhere anyway
        if not sender_text:
            return None
        if blocked:
            try:
                sender = parse_jid(sender_text)
            except InvalidFormat:
                return None
            # One's own resources and the account itself are never blocked.
            if sender.userhost() != owner and matches(blocked, sender):
                return self._refuse_inbound(stanza, "service-unavailable")
        # What a local account that blocks the recipient sends, or the server on its behalf (its
        # presence broadcast, a probe's answer): its clients were refused already. Errors pass:
        # they are the server's refusals of what the recipient sent (a client's were refused).
        if sender_bare == owner or stanza.attributes.get("type") == "error":
            return None
        if sender_bare in self.loading:
            return self._wait(sender_bare, stanza, lambda: self.sessions.deliver(stanza))
        theirs = self._known(sender_bare)
        if theirs and matches(theirs, to):
            return True
        return None

    def _refuse_inbound(self, stanza: domish.Element, condition: str) -> bool:
        """Section 3.3: presence dropped unanswered; a chat or normal message and an IQ get or set
        answered with *condition*; anything else dropped."""
        kind = stanza.getAttribute("type")
        answered = (stanza.name == "message" and kind in (None, "normal", "chat")) or (
            stanza.name == "iq" and kind in ("get", "set"))
        if answered and stanza.getAttribute("from"):
            self.sessions.route(error_reply(stanza, condition))
        return True

    def _wait(self, owner: str, stanza: domish.Element, again: Callable[[], object]) -> Deferred[None]:
        """Handle *stanza* again once *owner*'s list is in memory; if it cannot be read, refuse
        the stanza rather than let it past a list nobody could check."""
        def failed(reason: Failure) -> None:
            self._refuse_inbound(stanza, "internal-server-error")

        return _then(self._load(owner), again, failed)

    def message_to_local(self, message: domish.Element, to: JID) -> object:
        if self.idle:
            return None  # unhooked at the clock's next turn
        # `inbound`'s first test, inline on the message path: neither end blocks anything.
        owners = self.owners
        sender = message.attributes.get("from")
        if self.owners_known and to.userhost() not in owners and (not sender or sender.split("/", 1)[0] not in owners):
            return None
        return self.inbound(message, to, KEPT_MESSAGES)

    def presence_to_local(self, presence: domish.Element, to: JID) -> object:
        if self.idle:
            return None
        return self.inbound(presence, to, PRESENCE_NEEDING_LIST)

    def iq_to_local(self, iq: domish.Element, to: JID) -> object:
        if self.idle:
            return None
        return self.inbound(iq, to, IQ_REQUESTS)

    # -- the filter, outbound (section 3.3: what the account's clients send) --------------------

    def outbound(self, session: ClientSession, stanza: domish.Element, blocked: Collection[str]) -> object:
        """None to let a client's *stanza* go past the account's *blocked*; True when it was
        refused (not-acceptable, with <blocked/>)."""
        to = stanza.getAttribute("to")
        if to is None:
            return None
        try:
            target = parse_jid(to)
        except InvalidFormat:
            return None
        if target.userhost() == session.bare or not matches(blocked, target):
            return None
        if may_bounce(stanza):
            session.send(blocked_error(stanza))
        return True

    def _outbound_hook(self, event: str, finish: Callable[[domish.Element], object]
                       ) -> Callable[[ClientSession, domish.Element], object]:
        """The handler of *event*: `outbound`, and while the session's list is still being read
        (just after bind), the same once it is, then the rest of the event's chain and *finish*
        (what the core does when no handler takes the stanza)."""
        def handler(session: ClientSession, stanza: domish.Element) -> object:
            if self.idle:
                return None  # unhooked at the clock's next turn
            blocked = self.lists.get(session.bare)
            if blocked:
                return self.outbound(session, stanza, blocked)
            if blocked is None and session.bare in self.loading:
                return _then(self._load(session.bare), lambda: resume(session, stanza),
                             lambda reason: refuse(session, stanza))
            return None

        def resume(session: ClientSession, stanza: domish.Element) -> Deferred[None] | None:
            blocked = self.lists.get(session.bare)
            if blocked and self.outbound(session, stanza, blocked) is not None:
                return None
            chain = self.sessions.hooks.chain(event)
            # The handlers after this one; all of them if the filters were unhooked meanwhile.
            rest = chain[chain.index(handler) + 1:] if handler in chain else list(chain)
            outcome = run(rest, session, stanza)
            return _later(finish(stanza) if outcome is None else outcome)

        def refuse(session: ClientSession, stanza: domish.Element) -> None:
            if may_bounce(stanza):
                session.send(error_reply(stanza, "internal-server-error"))

        return handler

    # -- the IQs (sections 3.2 to 3.5) ----------------------------------------------------------

    def answer(self, iq: domish.Element, owner: str, session: ClientSession | None) -> object:
        if session is None:
            raise StanzaError("service-unavailable")  # another account's list is nobody's business
        blocked = self.lists.get(owner)
        if blocked is None:
            return self._load(owner).addCallback(lambda _: self._answer_loaded(iq, owner, session))
        return self._answer(iq, owner, session, blocked)

    def _answer_loaded(self, iq: domish.Element, owner: str, session: ClientSession) -> object:
        blocked = self.lists.get(owner)
        if blocked is None:
            raise StanzaError("internal-server-error")  # the session ended meanwhile
        return self._answer(iq, owner, session, blocked)

    def _answer(self, iq: domish.Element, owner: str, session: ClientSession, blocked: set[str]) -> object:
        request = iq.firstChildElement()
        kind = iq.getAttribute("type")
        if request.name == "blocklist" and kind == "get":
            answer = domish.Element((NS_BLOCKING, "blocklist"))
            for jid in sorted(blocked):
                add_element(answer, "item")["jid"] = jid
            return answer
        if request.name == "block" and kind == "set":
            return self._block(owner, blocked, self._items(request))
        if request.name == "unblock" and kind == "set":
            return self._unblock(owner, blocked, self._items(request))
        raise StanzaError("bad-request")

    @staticmethod
    def _items(request: domish.Element) -> list[str]:
        """The request's items, prepared, each once, in their order."""
        jids: dict[str, None] = {}
        for item in request.elements(NS_BLOCKING, "item"):
            text = item.getAttribute("jid")
            if text is None:
                raise StanzaError("bad-request", text="an item without a jid")
            try:
                jids[prepared(text)] = None
            except InvalidFormat:
                raise StanzaError("jid-malformed") from None
        return list(jids)

    def _block(self, owner: str, blocked: set[str], jids: list[str]) -> Deferred[None] | None:
        if not jids:
            raise StanzaError("bad-request", text="nothing to block")  # section 3.3
        new = [jid for jid in jids if jid not in blocked]
        if not new:
            return None
        if len(blocked) + len(new) > self.limit:
            self.sessions.metrics.limit("blocklist-items")
            raise StanzaError("policy-violation", "modify", text=f"a blocklist holds at most {self.limit} JIDs")
        self._presence_on_block(owner, new)  # before the block: it would drop the presence
        self.meanwhile.note(owner)
        self._put(owner, blocked | set(new))
        self._apply()
        written = self.sessions.store.run(partial(blocking_store.block, owner=owner, jids=new, limit=self.limit))
        return written.addCallbacks(lambda _: self._written(owner, "block", new),
                                    lambda reason: self._undo(owner, reason, added=new))

    def _unblock(self, owner: str, blocked: set[str], jids: list[str]) -> Deferred[None] | None:
        if jids:
            gone = [jid for jid in jids if jid in blocked]
            work = partial(blocking_store.unblock, owner=owner, jids=gone)
        else:
            gone = sorted(blocked)  # section 3.5: all of them
            work = partial(blocking_store.unblock_all, owner=owner)
        if not gone:
            return None
        self.meanwhile.note(owner)
        self._put(owner, blocked - set(gone))
        self._apply()
        self._presence_on_unblock(owner, gone)  # after the unblock, which would drop it
        written = self.sessions.store.run(work)
        return written.addCallbacks(lambda _: self._written(owner, "unblock", gone if jids else []),
                                    lambda reason: self._undo(owner, reason, removed=gone))

    def _written(self, owner: str, name: str, jids: list[str]) -> Deferred[None] | None:
        """The change is in the store: tell the cluster's other nodes and push it to the
        account's resources; the answer to the client waits until the nodes were told (in a
        cluster), so that a contact's next stanza through another node finds it applied."""
        told = self.changed(owner)
        self._push(owner, name, jids)
        return told

    def changed_elsewhere(self, owner: str) -> None:
        """Another node of the cluster changed *owner*'s list: what is held here is stale. The
        account counts as blocking something until its list is read again (at once if a resource
        of it is bound here; else by the first stanza that needs it)."""
        self.meanwhile.note(owner)  # its own read, asked for now, is newer than a resync's
        self.resting.pop(owner, None)
        self.owners.add(owner)
        if self.lists.pop(owner, None) is not None and owner not in self.loading:
            self._load(owner).addErrback(lambda reason: None)  # logged; a stanza that needs it reads again
        self._settle()
        self._apply()

    def resync(self) -> Deferred[None]:
        """A cluster's node may have missed announcements of changes (its subscriber was away):
        read again which accounts block anything and the lists of the accounts bound here, and
        replace what is held, so that what was unblocked elsewhere goes too. The lists kept for
        accounts with no resource here are dropped (a stanza that needs one reads it). An account
        whose list changed meanwhile, here or announced, stays as memory has it: the read's
        answer may be older. Until the answer, stanzas pass the lists as they were."""
        held = set(self.lists) | set(self.loading)  # (a read under way may have begun before the change)

        def read(answer: tuple[list[str], dict[str, list[str]]], meanwhile: set[str]) -> None:
            owners, lists = answer
            self.owners = (set(owners) - meanwhile) | (self.owners & meanwhile)
            self.owners_known = True
            for owner in held - meanwhile:
                if owner in self.lists:  # (else its last resource left meanwhile)
                    self.lists[owner] = set(lists.get(owner, ()))
            for owner in [owner for owner in self.resting if owner not in meanwhile]:
                del self.resting[owner]
            log.info("blocking.resynced lists={lists} owners={owners}", lists=len(held), owners=len(owners))
            self._settle()
            self._apply(under_a_filter=True)

        work = partial(blocking_store.owners_and_lists, held=held)
        return self.meanwhile.resync(partial(self.sessions.store.run_read, work), read)

    def _undo(self, owner: str, reason: Failure, added: Collection[str] = (), removed: Collection[str] = ()) -> None:
        """The change could not be written: memory goes back to what the store holds."""
        log.failure("blocking.write_failed owner={owner}", reason, owner=owner)
        blocked = self.lists.get(owner)
        if blocked is not None:
            self._put(owner, (blocked - set(added)) | set(removed))
            self._apply()
        raise StanzaError("internal-server-error")

    def _push(self, owner: str, name: str, jids: list[str]) -> None:
        """Sections 3.3 to 3.5: the change, as an IQ set, to every bound resource (see above)."""
        for session in self.sessions.resources(owner):
            self._pushes += 1
            push = domish.Element((NS_CLIENT, "iq"))
            push["type"], push["id"], push["to"] = "set", f"blocking-push-{self._pushes}", session.full
            change = add_element(push, (NS_BLOCKING, name))
            for jid in jids:
                add_element(change, "item")["jid"] = jid
            session.send(push)

    # -- presence on block and unblock (sections 3.3 and 3.4) -----------------------------------

    def _contacts(self, owner: str, jids: Collection[str], subscriptions: tuple[str, ...]) -> list[str]:
        """The owner's roster contacts with one of *subscriptions* that *jids* match."""
        roster = self.sessions.rosters.cached(owner)
        if roster is None:
            return []
        found = []
        for item in roster.items.values():
            if item.subscription in subscriptions:
                try:
                    contact = parse_jid(item.contact)
                except InvalidFormat:
                    continue
                if matches(jids, contact):
                    found.append(item.contact)
        return found

    def _presence_on_block(self, owner: str, jids: Collection[str]) -> None:
        """Unavailable presence from each available resource to what it was shown to: contacts
        with a subscription to the owner, and its directed presence."""
        contacts = self._contacts(owner, jids, HAS_FROM)
        for session in self.sessions.available(owner):
            targets = list(contacts)
            for target in session.directed:
                try:
                    if matches(jids, parse_jid(target)) and target not in targets:
                        targets.append(target)
                except InvalidFormat:
                    continue
            for target in targets:
                self.sessions.route(presence_stanza("unavailable", session.full, target))

    def _presence_on_unblock(self, owner: str, jids: Collection[str]) -> None:
        """The current presence of each available resource to contacts with a subscription to the
        owner, and a probe of those the owner has a subscription to, whose presence was dropped."""
        available = self.sessions.available(owner)
        for contact in self._contacts(owner, jids, HAS_FROM):
            for session in available:
                if session.presence is not None:
                    current = domish.Element((session.presence.uri, "presence"), session.presence.defaultUri,
                                             dict(session.presence.attributes))
                    current.children = session.presence.children
                    current["from"], current["to"] = session.full, contact
                    self.sessions.route(current)
        if available:
            for contact in self._contacts(owner, jids, HAS_TO):
                self.sessions.route(presence_stanza("probe", owner, contact))


def install(registry: FeatureRegistry) -> None:
    blocking = Blocking(registry.sessions, MAX_ITEMS)
    blocking.changed = registry.shared_account_state("blocking", blocking.changed_elsewhere, resync=blocking.resync)
    for name in ("blocklist", "block", "unblock"):
        registry.account_iq(NS_BLOCKING, name, blocking.answer)
    # Before every other handler (priority 100): nothing else sees what is blocked (carbons,
    # archives...). Hooked now, as nothing is known yet, and unhooked while nobody blocks anything.
    route = registry.sessions.route
    blocking.filters = [
        (MESSAGE_FROM_CLIENT, blocking._outbound_hook(MESSAGE_FROM_CLIENT, route), 100),
        (IQ_FROM_CLIENT, blocking._outbound_hook(IQ_FROM_CLIENT, route), 100),
        (PRESENCE_FROM_CLIENT, blocking._outbound_hook(PRESENCE_FROM_CLIENT, lambda stanza: None), 100),
        (MESSAGE_TO_LOCAL, blocking.message_to_local, 100),
        (PRESENCE_TO_LOCAL, blocking.presence_to_local, 100),
        (IQ_TO_LOCAL, blocking.iq_to_local, 100),
    ]
    blocking._apply()
    registry.hook(SESSION_BOUND, blocking.bound)
    # After presence's unavailable broadcast (priority 10), which the list still filters.
    registry.hook(SESSION_UNBOUND, blocking.unbound, priority=-10)
    registry.stores("blocked_jids", per_account=True, what="the JIDs each account blocks (XEP-0191)")
    registry.disco_feature(NS_BLOCKING)  # section 3.1, as Prosody also announces it on the server
    registry.account_disco_feature(NS_BLOCKING)


FEATURE = Feature("blocking", install)
