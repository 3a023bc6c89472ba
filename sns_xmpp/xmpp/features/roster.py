"""Roster management (RFC 6121 section 2): roster get, set and remove, and roster pushes.

The rosters themselves are the core's (`xmpp/roster.RosterBook`, loaded at bind); this module
answers the account's roster IQs, and `store_and_push` is how every feature that changes an item
(presence subscriptions too) writes it and tells the owner's interested resources.
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


def store_and_push(sessions: SessionManager, roster: Roster, item: RosterItem) -> None:
    """Write *item* and push it to the owner's resources that asked for the roster."""
    sessions.rosters.put(roster, item)
    push(sessions, roster.owner, item, removed=False)


def push(sessions: SessionManager, owner: str, item: RosterItem, removed: bool) -> None:
    targets = [r.send for r in sessions.resources(owner) if r.roster_requested]
    if targets:
        push_to(targets, owner, item, removed, sessions.rosters.next_push_id())


def answer_with(sessions: SessionManager) -> AccountIQHandler:
    def answer(iq: domish.Element, owner: str, session: ClientSession | None) -> Deferred | domish.Element | None:
        if session is None:
            raise StanzaError("service-unavailable")  # nobody else reads or writes a roster
        roster = sessions.rosters.cached(owner)
        assert roster is not None, "a bound user's roster is always loaded"
        if iq["type"] == "get":
            session.roster_requested = True
            return roster_result(roster)
        contact, element = parse_item_set(next(iq.elements(NS_ROSTER, "query")))
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
    push(sessions, roster.owner, item, removed=True)
    return None


def install(registry: FeatureRegistry) -> None:
    registry.account_iq(NS_ROSTER, "query", answer_with(registry.sessions))
    registry.disco_feature(NS_ROSTER)
    registry.stores("roster_items", per_account=True, what="the contacts and their subscriptions")
    registry.stores("subscription_requests", per_account=True, what="subscription requests not yet answered")


FEATURE = Feature("roster", install)
