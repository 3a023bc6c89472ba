"""Presence and the subscription state machine (RFC 6121 sections 3 and 4).

Both ends of a subscription are handled here: ``outbound`` for what a local
user sends (sections 3.x.2), ``inbound`` for what a local user receives
(sections 3.x.3). Between two local users a stanza passes through both.
The roster IQs are the roster feature's (features/roster.py).
"""

from __future__ import annotations

import dataclasses

from twisted.words.xish import domish

from sns_xmpp.jid import JID, InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store.records import RosterItem
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.features.roster import store_and_push
from sns_xmpp.xmpp.hooks import PRESENCE_FROM_CLIENT, PRESENCE_TO_LOCAL, SESSION_AVAILABLE, SESSION_UNBOUND
from sns_xmpp.xmpp.roster import HAS_FROM, HAS_TO, Roster
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import error_reply, presence_stanza

log = GatedLogger()

SUBSCRIPTION_TYPES = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")
# Directed presences one session may have outstanding (RFC 6121 4.6: each gets an unavailable
# when the session goes offline, all in one go). A person's chat rooms and the like are well
# under this; 20,000 of them made one unavailable presence stall the server for 0.6 s.
MAX_DIRECTED = 300
MAX_DIRECTED_CHARS = 65536  # and their addresses' total length (a JID may be 3071 bytes)
NS_PREAPPROVAL = "urn:xmpp:features:pre-approval"


def _with(subscription: str, *, to: bool | None = None, from_: bool | None = None) -> str:
    has_to = subscription in HAS_TO if to is None else to
    has_from = subscription in HAS_FROM if from_ is None else from_
    return {(False, False): "none", (True, False): "to", (False, True): "from", (True, True): "both"}[
        (has_to, has_from)]


def readdressed(stanza: domish.Element, to: str, sender: str | None = None) -> domish.Element:
    """A copy for another recipient; children are shared, they are not changed after sending."""
    copy = domish.Element((stanza.uri, stanza.name), stanza.defaultUri, dict(stanza.attributes))
    copy.children = stanza.children
    copy["to"] = to
    if sender is not None:
        copy["from"] = sender
    return copy


def _priority(presence: domish.Element) -> int:
    for child in presence.elements(None, "priority"):
        try:
            return max(-128, min(127, int(str(child))))
        except ValueError:
            return 0
    return 0


class PresenceHandler:
    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions
        self.rosters = sessions.rosters

    # -- what a local user's session sends ----------------------------------

    def outbound(self, session: ClientSession, presence: domish.Element) -> None:
        kind = presence.getAttribute("type")
        to = presence.getAttribute("to")
        if kind in SUBSCRIPTION_TYPES:
            if to is None:
                return
            contact = parse_jid(to).userhost()
            roster = self.rosters.cached(session.bare)
            assert roster is not None, "a bound user's roster is always loaded"
            presence["from"] = session.bare
            presence["to"] = contact
            if getattr(self, "_out_" + kind)(session, roster, contact, presence):
                self.sessions.route(presence)
        elif kind == "probe":
            return
        elif to is not None:
            self._directed(session, presence, kind, to)
        elif kind in (None, "unavailable"):
            self.broadcast(session, presence)

    def _directed(self, session: ClientSession, presence: domish.Element, kind: str | None, to: str) -> None:
        directed = session.directed
        if kind is None and to not in directed:
            if len(directed) >= MAX_DIRECTED or session.directed_chars + len(to) > MAX_DIRECTED_CHARS:
                self.sessions.metrics.limit("directed-presences")
                session.send(error_reply(presence, "resource-constraint", "too many directed presences"))
                return
            directed.add(to)
            session.directed_chars += len(to)
        elif kind == "unavailable" and to in directed:
            directed.discard(to)
            session.directed_chars -= len(to)
        self.sessions.route(presence)

    def _out_subscribe(self, session: ClientSession, roster: Roster, contact: str, p: domish.Element) -> bool:
        item = roster.item(contact)
        if item.subscription not in HAS_TO and not item.ask:
            asked = dataclasses.replace(item, ask=True)
            if not self._fits(session, roster, asked, p):
                return False
            self._store(roster, asked)
        return True

    def _out_subscribed(self, session: ClientSession, roster: Roster, contact: str, p: domish.Element) -> bool:
        item = roster.item(contact)
        if contact in roster.requests:
            approved = dataclasses.replace(item, subscription=_with(item.subscription, from_=True), approved=False)
            if not self._fits(session, roster, approved, p):
                return False
            self.rosters.drop_request(roster, contact)
            self._store(roster, approved)
            for resource in self.sessions.available(session.bare):
                assert resource.presence is not None
                self.sessions.route(readdressed(resource.presence, contact, resource.full))
            return True
        if item.subscription in HAS_FROM or item.approved:
            return False
        # RFC 6121 3.4: approving before being asked is a pre-approval, kept, not sent.
        pre_approved = dataclasses.replace(item, approved=True)
        if self._fits(session, roster, pre_approved, p):
            self._store(roster, pre_approved)
        return False

    def _fits(self, session: ClientSession, roster: Roster, item: RosterItem, presence: domish.Element) -> bool:
        """Whether *item* fits in the roster; if not, the session hears so (resource-constraint)."""
        if self.rosters.fits(roster, item):
            return True
        self.sessions.metrics.limit("roster-size")
        session.send(error_reply(presence, "resource-constraint", "your roster is full"))
        return False

    def _out_unsubscribe(self, session: ClientSession, roster: Roster, contact: str, p: domish.Element) -> bool:
        item = roster.items.get(contact)
        if item is not None and (item.subscription in HAS_TO or item.ask):
            self._store(roster, dataclasses.replace(item, subscription=_with(item.subscription, to=False),
                                                    ask=False))
        return True

    def _out_unsubscribed(self, session: ClientSession, roster: Roster, contact: str, p: domish.Element) -> bool:
        if self.rosters.drop_request(roster, contact):
            return True
        item = roster.items.get(contact)
        if item is None or not (item.subscription in HAS_FROM or item.approved):
            return False
        self._store(roster, dataclasses.replace(item, subscription=_with(item.subscription, from_=False),
                                                approved=False))
        for resource in self.sessions.available(session.bare):
            self.sessions.route(presence_stanza("unavailable", resource.full, contact))
        return True

    # -- broadcast of the user's own presence (RFC 6121 4.2, 4.4, 4.5) ------

    def broadcast(self, session: ClientSession, presence: domish.Element) -> None:
        unavailable = presence.getAttribute("type") == "unavailable"
        initial = not unavailable and not session.available
        if initial:
            session.stream.release_parser_after_read()  # the login's traffic is over
        session.available = not unavailable
        session.presence = None if unavailable else presence
        session.priority = _priority(presence)
        presence["from"] = session.full
        roster = self.rosters.cached(session.bare)
        if roster is not None:
            for item in roster.items.values():
                if item.subscription in HAS_FROM:
                    self.sessions.route(readdressed(presence, item.contact))
        for resource in self.sessions.available(session.bare) + ([session] if unavailable else []):
            if resource is not session or not unavailable:
                resource.send(readdressed(presence, resource.full))
        if unavailable:
            for target in session.directed:
                self.sessions.route(presence_stanza("unavailable", session.full, target))
            session.directed.clear()
            session.directed_chars = 0
        if initial and roster is not None:
            self._initial(session, roster)

    def _initial(self, session: ClientSession, roster: Roster) -> None:
        for item in roster.items.values():
            if item.subscription in HAS_TO:
                self.sessions.route(presence_stanza("probe", session.bare, item.contact))
        for contact in sorted(roster.requests):
            session.send(presence_stanza("subscribe", contact, session.bare))
        if session.priority >= 0:
            self.sessions.hooks.fire(SESSION_AVAILABLE, session)

    # -- what arrives for a local user ---------------------------------------

    def inbound(self, presence: domish.Element, to: JID) -> None:
        kind = presence.getAttribute("type")
        owner = to.userhost()
        try:
            sender = parse_jid(presence.getAttribute("from", ""))
        except InvalidFormat:
            return
        if kind in SUBSCRIPTION_TYPES or kind == "probe":
            d = self.sessions.roster_of_account(owner)
            d.addCallback(lambda roster: roster and getattr(self, "_in_" + kind)(roster, sender, presence))
            d.addErrback(lambda reason: log.failure("presence.inbound_failed", reason))
            return
        if to.resource is not None:
            target = self.sessions.session(to)
            if target is not None:
                target.send(presence)
            return
        for resource in self.sessions.available(owner):
            resource.send(presence)

    def _deliver(self, owner: str, presence: domish.Element) -> None:
        for resource in self.sessions.available(owner):
            if resource.priority >= 0:
                resource.send(presence)

    def _in_subscribe(self, roster: Roster, sender: JID, presence: domish.Element) -> None:
        contact = sender.userhost()
        item = roster.item(contact)
        if item.subscription in HAS_FROM:
            self.sessions.route(presence_stanza("subscribed", roster.owner, contact))
            return
        if item.approved:
            self._store(roster, dataclasses.replace(item, subscription=_with(item.subscription, from_=True),
                                                    approved=False))
            self.sessions.route(presence_stanza("subscribed", roster.owner, contact))
            for resource in self.sessions.available(roster.owner):
                assert resource.presence is not None
                self.sessions.route(readdressed(resource.presence, contact, resource.full))
            return
        self.rosters.add_request(roster, contact)
        presence["from"] = contact
        self._deliver(roster.owner, presence)

    def _in_subscribed(self, roster: Roster, sender: JID, presence: domish.Element) -> None:
        item = roster.items.get(sender.userhost())
        if item is None or not item.ask:
            return
        self._store(roster, dataclasses.replace(item, subscription=_with(item.subscription, to=True), ask=False))
        self._deliver(roster.owner, presence)

    def _in_unsubscribe(self, roster: Roster, sender: JID, presence: domish.Element) -> None:
        contact = sender.userhost()
        dropped = self.rosters.drop_request(roster, contact)
        item = roster.items.get(contact)
        if item is not None and item.subscription in HAS_FROM:
            self._store(roster, dataclasses.replace(item, subscription=_with(item.subscription, from_=False)))
        elif not dropped:
            return
        self._deliver(roster.owner, presence)

    def _in_unsubscribed(self, roster: Roster, sender: JID, presence: domish.Element) -> None:
        item = roster.items.get(sender.userhost())
        if item is None or not (item.subscription in HAS_TO or item.ask):
            return
        self._store(roster, dataclasses.replace(item, subscription=_with(item.subscription, to=False), ask=False))
        self._deliver(roster.owner, presence)

    def _in_probe(self, roster: Roster, sender: JID, presence: domish.Element) -> None:
        item = roster.items.get(sender.userhost())
        if item is None or item.subscription not in HAS_FROM:
            return
        reply_to = presence["from"]
        available = self.sessions.available(roster.owner)
        for resource in available:
            assert resource.presence is not None
            self.sessions.route(readdressed(resource.presence, reply_to, resource.full))
        if not available:
            self.sessions.route(presence_stanza("unavailable", roster.owner, reply_to))

    def _store(self, roster: Roster, item: RosterItem) -> None:
        store_and_push(self.sessions, roster, item)

    # -- the session's end ---------------------------------------------------

    def unbound(self, session: ClientSession, replaced: bool) -> None:
        """RFC 6121 4.5.2: an available session that ends goes unavailable for everyone who saw it
        (not one that moved to another node of a cluster: it goes on there)."""
        if session.available and not session.moved:
            unavailable = domish.Element((None, "presence"))
            unavailable["type"] = "unavailable"
            unavailable["from"] = session.full
            self.broadcast(session, unavailable)


def install(registry: FeatureRegistry) -> None:
    handler = PresenceHandler(registry.sessions)

    def from_client(session: ClientSession, presence: domish.Element) -> bool:
        handler.outbound(session, presence)
        return True

    def to_local(presence: domish.Element, to: JID) -> bool:
        handler.inbound(presence, to)
        return True

    registry.hook(PRESENCE_FROM_CLIENT, from_client)
    registry.hook(PRESENCE_TO_LOCAL, to_local)
    registry.hook(SESSION_UNBOUND, handler.unbound, priority=10)  # before the redelivery of unacknowledged stanzas
    registry.stream_feature(lambda domain: PRE_APPROVAL, after_auth=True)  # RFC 6121 3.4
    registry.disco_feature(NS_PREAPPROVAL)


PRE_APPROVAL = domish.Element((NS_PREAPPROVAL, "sub"))
FEATURE = Feature("presence", install)
