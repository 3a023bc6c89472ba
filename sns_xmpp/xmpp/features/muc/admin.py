"""What moderators, admins and owners ask of a room (XEP-0045 sections 8-10), and the room's
messages that are not chat: invitations and declines (7.8.2), voice requests and their approval
(7.13, 8.6).

A request is checked whole before anything changes: a list of items with one bad item changes
nothing (section 9.5, "the service MUST NOT change any of the items").
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.jid import JID, InvalidFormat, parse_jid
from sns_xmpp.xmpp.features.muc.forms import apply_form, config_form, submitted_values
from sns_xmpp.xmpp.features.muc.protocol import (
    AFFILIATIONS,
    CONFIG_CHANGED,
    MEMBERS_ONLY_NOW,
    NOW_NON_ANONYMOUS,
    NOW_SEMI_ANONYMOUS,
    NS_ADMIN,
    NS_DATA,
    NS_OWNER,
    NS_REQUEST,
    NS_USER,
    ROLES,
    first,
    refusal,
    stanza,
    text_of,
)
from sns_xmpp.xmpp.features.muc.room import Occupant, Room
from sns_xmpp.xmpp.stanzas import add_element, append_child

if TYPE_CHECKING:
    from sns_xmpp.xmpp.features.muc.service import MUCService

MAX_ITEMS_PER_REQUEST = 100
MAX_INVITES_PER_MESSAGE = 20
MAX_REASON_CHARS = 1000


def _forbidden(text: str) -> StanzaError:
    return StanzaError("forbidden", "auth", text)


def _not_allowed(text: str) -> StanzaError:
    return StanzaError("not-allowed", "cancel", text)


def _reason(item: domish.Element) -> str:
    return text_of(first(item, NS_ADMIN, "reason"))[:MAX_REASON_CHARS]


# -- muc#admin -------------------------------------------------------------------------------------


def admin_query(service: MUCService, room: Room, iq: domish.Element, query: domish.Element,
                sender: JID) -> domish.Element | None:
    items = list(query.elements(NS_ADMIN, "item"))
    if not items or len(items) > MAX_ITEMS_PER_REQUEST:
        raise refusal("bad-request", f"one to {MAX_ITEMS_PER_REQUEST} items")
    actor_affiliation = room.affiliation(sender.userhost())
    actor = room.by_real.get(sender.full())
    if iq.getAttribute("type") == "get":
        return _list(room, items[0], actor_affiliation, actor)
    changes = [_change(service, room, item, actor_affiliation, actor) for item in items]
    affiliations = dict(room.affiliations)
    for kind, target, value, _reason_text in changes:
        if kind == "affiliation":
            if value == "none":
                affiliations.pop(str(target), None)
            else:
                affiliations[str(target)] = value
    if len(affiliations) > service.config.max_affiliations:
        service.sessions.metrics.limit("muc-affiliations")
        raise StanzaError("resource-constraint", "wait", f"a room lists at most {service.config.max_affiliations}")
    if room.affiliations and "owner" not in affiliations.values():
        raise StanzaError("conflict", "cancel", "a room keeps at least one owner")  # 10.5
    for kind, target, value, reason in changes:
        if kind == "role":
            assert isinstance(target, Occupant)
            if target.nick in room.occupants:
                room.set_role(target, value, actor, reason)
        else:
            room.set_affiliation(str(target), value, actor, reason)
    if any(kind == "affiliation" for kind, *_ in changes):
        service.keep(room)  # roles last one visit: nothing of them is stored
    return None


def _list(room: Room, item: domish.Element, actor_affiliation: str, actor: Occupant | None) -> domish.Element:
    """Sections 8.5, 9.2, 9.5, 9.8, 10.5, 10.8: the occupants with a role, or the JIDs with an
    affiliation."""
    affiliation = item.getAttribute("affiliation")
    role = item.getAttribute("role")
    answer = domish.Element((NS_ADMIN, "query"))
    if affiliation is not None:
        if affiliation not in AFFILIATIONS or affiliation == "none":
            raise refusal("bad-request", "no such affiliation list")
        needed = "owner" if affiliation in ("owner", "admin") else "admin"
        # 7.11: in a members-only room, members see who the members (and admins, owners) are.
        member_sees = room.config.members_only and affiliation != "outcast" and actor_affiliation == "member"
        if not (actor_affiliation == "owner" or actor_affiliation == needed or member_sees):
            raise _forbidden(f"only {needed}s may see that list")
        for bare in sorted(j for j, a in room.affiliations.items() if a == affiliation):
            element = add_element(answer, "item")
            element["affiliation"], element["jid"] = affiliation, bare
        return answer
    if role not in ("moderator", "participant"):
        raise refusal("bad-request", "no such role list")
    if role == "moderator" and actor_affiliation not in ("owner", "admin"):
        raise _forbidden("only admins may see the moderators")
    if role == "participant" and (actor is None or actor.role != "moderator"):
        raise _forbidden("only moderators may see the voice list")
    for occupant in sorted(room.occupants.values(), key=lambda o: o.nick):
        if occupant.role == role:
            element = add_element(answer, "item")
            element["nick"], element["role"] = occupant.nick, role
            element["affiliation"], element["jid"] = occupant.affiliation, occupant.real.full
    return answer


def _change(service: MUCService, room: Room, item: domish.Element, actor_affiliation: str,
            actor: Occupant | None) -> tuple[str, Occupant | str, str, str]:
    """One item of a set, checked: ("role", occupant, role, reason) or ("affiliation", bare JID,
    affiliation, reason)."""
    role = item.getAttribute("role")
    affiliation = item.getAttribute("affiliation")
    nick = item.getAttribute("nick")
    reason = _reason(item)
    if (role is None) == (affiliation is None):
        raise refusal("bad-request", "an item changes a role or an affiliation")
    if role is not None:
        if role not in ROLES:
            raise refusal("bad-request", "no such role")
        target = room.occupants.get(nick or "")
        if target is None:
            raise refusal("item-not-found", "no occupant has that nickname")
        if role == "moderator" or target.role == "moderator":
            if actor_affiliation not in ("owner", "admin"):  # 9.6, 9.7
                raise _forbidden("only admins grant or revoke moderation")
        elif actor is None or actor.role != "moderator":  # 8.2-8.4
            raise _forbidden("only moderators may do that")
        if target.affiliation in ("owner", "admin") and role != "moderator":
            raise _not_allowed("an admin or owner keeps their role")  # 8.2, 8.4, 9.7
        return ("role", target, role, reason)
    if affiliation not in AFFILIATIONS:
        raise refusal("bad-request", "no such affiliation")
    jid = item.getAttribute("jid")
    if jid is not None:
        try:
            bare = parse_jid(jid).userhost()
        except InvalidFormat:
            raise refusal("jid-malformed") from None
    else:
        occupant = room.occupants.get(nick or "")
        if occupant is None:
            raise refusal("item-not-found", "no occupant has that nickname")
        bare = occupant.bare
    current = room.affiliation(bare)
    if actor_affiliation not in ("owner", "admin"):
        raise _forbidden("only admins and owners change affiliations")  # 9.1, 9.3
    if actor_affiliation != "owner" and (affiliation in ("owner", "admin") or current in ("owner", "admin")):
        raise _not_allowed("only owners change owners and admins")  # 9.1, 10.3-10.7
    return ("affiliation", bare, affiliation, reason)


# -- muc#owner -------------------------------------------------------------------------------------


def owner_query(service: MUCService, room: Room, iq: domish.Element, query: domish.Element,
                sender: JID) -> domish.Element | None:
    if room.affiliation(sender.userhost()) != "owner":
        raise _forbidden("only owners configure a room")  # 10.2
    limits = service.config
    if iq.getAttribute("type") == "get":
        answer = domish.Element((NS_OWNER, "query"))
        append_child(answer, config_form(room.config, limits.max_occupants, limits.max_history))
        return answer
    destroy = first(query, NS_OWNER, "destroy")
    if destroy is not None:  # 10.9
        service.destroy(room, text_of(first(destroy, NS_OWNER, "reason")), destroy.getAttribute("jid"))
        return None
    form = first(query, NS_DATA, "x")
    if form is None:
        raise refusal("bad-request", "a form or <destroy/>")
    if form.getAttribute("type") == "cancel":
        if room.locked:  # 10.1.3: the owner gave up on a new room
            service.destroy(room, "")
        return None
    if form.getAttribute("type") != "submit":
        raise refusal("bad-request", "a submitted form")
    before = room.config
    after = apply_form(before, form, limits.max_occupants, limits.max_history)
    if after.persistent and not before.persistent and service.persistent_rooms() >= limits.max_persistent_rooms:
        service.sessions.metrics.limit("muc-persistent-rooms")
        raise refusal("not-acceptable", f"the service keeps at most {limits.max_persistent_rooms} persistent rooms")
    was_locked, was_listed = room.locked, room.listed_as
    room.config, room.locked = after, False
    service.relist(room, was_listed)
    if after.history_length != before.history_length:
        room.history = deque(room.history, maxlen=after.history_length)
    if after.persistent:
        service.keep(room)
    elif before.persistent:
        service.unkeep(room)
    if after.members_only and not before.members_only:
        for occupant in [o for o in room.occupants.values() if o.affiliation == "none"]:
            room.leave(occupant, codes=(MEMBERS_ONLY_NOW,))  # 9.4's 322
    if not was_locked and before != after:
        codes = [CONFIG_CHANGED]
        if after.whois != before.whois:
            codes.append(NOW_NON_ANONYMOUS if after.whois == "anyone" else NOW_SEMI_ANONYMOUS)
        notice = stanza("message", room.jid, kind="groupchat")
        x = add_element(notice, (NS_USER, "x"))
        for code in codes:
            add_element(x, "status")["code"] = code
        room.send_to_all(notice)  # 10.2.1
    return None


# -- messages to the room that are not chat ----------------------------------------------------------


def room_message(service: MUCService, room: Room, message: domish.Element, sender: JID,
                 occupant: Occupant | None) -> None:
    user = first(message, NS_USER, "x")
    if user is not None:
        invites = list(user.elements(NS_USER, "invite"))
        if invites:
            _invite(service, room, invites, sender, occupant)
            return
        decline = first(user, NS_USER, "decline")
        if decline is not None:
            _decline(service, room, decline, sender)
            return
    form = first(message, NS_DATA, "x")
    if form is not None and submitted_values(form).get("FORM_TYPE") == [NS_REQUEST]:
        if occupant is None:
            raise refusal("not-acceptable", "you are not in this room")
        _voice(service, room, form, occupant)
        return
    raise refusal("bad-request", "a room takes groupchat messages, invitations and voice requests")


def _invite(service: MUCService, room: Room, invites: list[domish.Element], sender: JID,
            occupant: Occupant | None) -> None:
    """Section 7.8.2: the room passes the invitation on, from itself, naming the inviter; in a
    members-only room only those who may invite may, and the invitee becomes a member."""
    if occupant is None:
        raise refusal("not-acceptable", "only occupants may invite")
    if len(invites) > MAX_INVITES_PER_MESSAGE:
        raise refusal("bad-request", f"at most {MAX_INVITES_PER_MESSAGE} invitations at once")
    may_add = occupant.affiliation in ("owner", "admin") or room.config.allow_invites
    if room.config.members_only and not may_add:
        raise _forbidden("only admins may invite to this room")
    invitees = []
    for invite in invites:
        try:
            invitees.append((parse_jid(invite.getAttribute("to", "")), text_of(first(invite, NS_USER, "reason"))))
        except InvalidFormat:
            raise refusal("jid-malformed", "an invitation names whom it invites") from None
    changed = False
    for invitee, reason in invitees:
        bare = invitee.userhost()
        if room.config.members_only and room.affiliation(bare) == "none":
            if len(room.affiliations) >= service.config.max_affiliations:
                raise StanzaError("resource-constraint", "wait", "the member list is full")
            room.affiliations[bare] = "member"
            changed = True
        out = stanza("message", room.jid, to=invitee.full())
        x = add_element(out, (NS_USER, "x"))
        element = add_element(x, "invite")
        element["from"] = sender.full()
        if reason:
            add_element(element, "reason", content=reason[:MAX_REASON_CHARS])
        if room.config.locked_by_password:
            add_element(x, "password", content=room.config.password)
        add_element(out, "body", content=f"{sender.userhost()} invites you to the room {room.jid}")
        service.outbox.route(out)
    if changed:
        service.keep(room)


def _decline(service: MUCService, room: Room, decline: domish.Element, sender: JID) -> None:
    try:
        inviter = parse_jid(decline.getAttribute("to", ""))
    except InvalidFormat:
        raise refusal("jid-malformed", "a decline names the inviter") from None
    out = stanza("message", room.jid, to=inviter.full())
    x = add_element(out, (NS_USER, "x"))
    element = add_element(x, "decline")
    element["from"] = sender.userhost()
    reason = text_of(first(decline, NS_USER, "reason"))
    if reason:
        add_element(element, "reason", content=reason[:MAX_REASON_CHARS])
    service.outbox.route(out)


def _voice(service: MUCService, room: Room, form: domish.Element, occupant: Occupant) -> None:
    """A visitor asks for voice (7.13): each moderator gets the approval form. A moderator
    submits it back with muc#request_allow true (8.6): the visitor becomes a participant."""
    values = submitted_values(form)
    if form.getAttribute("type") == "submit" and "muc#request_allow" in values:
        if occupant.role != "moderator":
            raise _forbidden("only moderators approve voice requests")
        if values["muc#request_allow"][:1] in (["1"], ["true"]):
            nick = (values.get("muc#roomnick") or [""])[0]
            target = room.occupants.get(nick)
            if target is not None and target.role == "visitor":
                room.set_role(target, "participant", occupant, "")
        return
    if occupant.role != "visitor":
        return  # nothing to ask for
    for moderator in [o for o in room.occupants.values() if o.role == "moderator"]:
        out = stanza("message", room.jid, to=moderator.real.full)
        request = add_element(out, (NS_DATA, "x"))
        request["type"] = "form"
        add_element(request, "title", content="Voice request")
        add_element(request, "instructions", content=f"Allow {occupant.nick} to speak?")
        for var, kind, value in (("FORM_TYPE", "hidden", NS_REQUEST), ("muc#role", "list-single", "participant"),
                                 ("muc#jid", "jid-single", occupant.real.full),
                                 ("muc#roomnick", "text-single", occupant.nick),
                                 ("muc#request_allow", "boolean", "false")):
            field = add_element(request, "field")
            field["var"], field["type"] = var, kind
            add_element(field, "value", content=value)
        service.outbox.route(out)
