"""Roster management (RFC 6121 section 2): roster get, set and remove, and roster pushes.

The rosters themselves are the core's (`xmpp/roster.RosterBook`, loaded at bind); this module
answers the account's roster IQs, and `store_and_push` is how every feature that changes an item
(presence subscriptions too) writes it and tells the owner's interested resources.

Roster versioning (RFC 6121 section 2.6, formerly XEP-0237) is part of it: the stream feature
<ver xmlns='urn:xmpp:features:rosterver'/> after authentication (2.6.1); a roster get that names the
version the client holds is answered with an empty result while the roster is at that version,
else with the whole roster and its current version (2.6.3: the whole roster is one of the two
answers allowed, and needs no history of changes); and every push carries the version after its
change. The version is the store's counter of changes to the account's items (store/sql.py bumps
it in the transaction of each write), so it moves whichever feature changed the roster.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.store.records import RosterItem
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.hooks import AccountIQHandler
from sns_xmpp.xmpp.roster import (
    HAS_FROM,
    HAS_TO,
    NS_ROSTER,
    Roster,
    parse_item_set,
    push_to,
    roster_result,
    updated_item,
)
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import presence_stanza

NS_ROSTER_VERSIONING = "urn:xmpp:features:rosterver"
ROSTER_VERSIONING = domish.Element((NS_ROSTER_VERSIONING, "ver"))


def store_and_push(sessions: SessionManager, roster: Roster, item: RosterItem) -> None:
    """Write *item* and push it to the owner's resources that asked for the roster."""
    sessions.rosters.put(roster, item)
    push(sessions, roster, item, removed=False)


def push(sessions: SessionManager, roster: Roster, item: RosterItem, removed: bool) -> None:
    targets = [r.send for r in sessions.resources(roster.owner) if r.roster_requested]
    if targets:
        push_to(targets, roster.owner, item, removed, sessions.rosters.next_push_id(), roster.version)


def answer_with(sessions: SessionManager) -> AccountIQHandler:
    def answer(iq: domish.Element, owner: str, session: ClientSession | None) -> Deferred | domish.Element | None:
        if session is None:
            raise StanzaError("service-unavailable")  # nobody else reads or writes a roster
        roster = sessions.rosters.cached(owner)
        assert roster is not None, "a bound user's roster is always loaded"
        query = next(iq.elements(NS_ROSTER, "query"))
        if iq["type"] == "get":
            session.roster_requested = True
            held = query.getAttribute("ver")  # "" asks for the roster and its version (2.6.2)
            if held is not None and held == str(roster.version):
                return None  # 2.6.3: unchanged since the version the client holds
            return roster_result(roster, versioned=held is not None)
        contact, element = parse_item_set(query)
        if contact == owner:
            raise StanzaError("not-allowed", text="you cannot be on your own roster")
        if element.getAttribute("subscription") == "remove":
            return _remove(sessions, roster, contact)
        item = updated_item(roster.item(contact), element)
        if not sessions.rosters.fits(roster, item):
            sessions.metrics.limit("roster-size")
            raise StanzaError("resource-constraint", text="your roster is full")
        store_and_push(sessions, roster, item)
        return None

    return answer


def _remove(sessions: SessionManager, roster: Roster, contact: str) -> Deferred | None:
    item = roster.items.get(contact)
    requested = sessions.rosters.drop_request(roster, contact)
    if item is None:
        if not requested:
            return defer.fail(StanzaError("item-not-found"))
        sessions.route(presence_stanza("unsubscribed", roster.owner, contact))
        return None
    if item.subscription in HAS_TO or item.ask:
        sessions.route(presence_stanza("unsubscribe", roster.owner, contact))
    if item.subscription in HAS_FROM or requested:
        sessions.route(presence_stanza("unsubscribed", roster.owner, contact))
    sessions.rosters.remove(roster, contact)
    push(sessions, roster, item, removed=True)
    return None


def install(registry: FeatureRegistry) -> None:
    registry.account_iq(NS_ROSTER, "query", answer_with(registry.sessions))
    registry.disco_feature(NS_ROSTER)
    registry.stream_feature(lambda domain: ROSTER_VERSIONING, after_auth=True)
    registry.stores("roster_items", per_account=True, what="the contacts and their subscriptions")
    registry.stores("subscription_requests", per_account=True, what="subscription requests not yet answered")
    registry.stores("roster_versions", per_account=True, what="the roster's version (RFC 6121 2.6)")


FEATURE = Feature("roster", install)
