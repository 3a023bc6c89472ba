"""One chat room (XEP-0045): its occupants, their presence, its messages, subject and history.

The service (`service.py`) hands a room what is addressed to it, with the sender's real JID
already parsed; the room answers through the service's `Outbox`. Affiliations (owner, admin,
member, outcast) are by bare JID and outlive visits; roles (moderator, participant, visitor) last
one visit (section 5). Occupants are known by nick and by real full JID: one nick is one
client's, as section 7.2.9 allows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.jid import JID
from sns_xmpp.xmpp.features.muc.archive import NS_SID, RoomArchive, archived_text
from sns_xmpp.xmpp.features.muc.delivery import Outbox, Prepared, Recipient, readdressed
from sns_xmpp.xmpp.features.muc.forms import RoomConfig
from sns_xmpp.xmpp.features.muc.protocol import (
    AFFILIATION_CHANGED,
    BANNED,
    CREATED,
    KICKED,
    LOGGED,
    NEW_NICK,
    NON_ANONYMOUS,
    NS_DELAY,
    NS_MUC,
    NS_OCCUPANT_ID,
    NS_USER,
    RANK,
    SELF,
    first,
    parse_stamp,
    refusal,
    stamp,
    stanza,
    text_of,
)
from sns_xmpp.xmpp.serialization import escape_attribute
from sns_xmpp.xmpp.stanzas import NS_CLIENT, add_element, append_child

# Children of a client's presence the room does not pass on: the join request, and what only the
# room may say (its own #user element, an occupant id: XEP-0421 section 4 says strip it).
_OWN_PRESENCE_PARTS = ((NS_MUC, "x"), (NS_USER, "x"), (NS_OCCUPANT_ID, "occupant-id"))
MAX_HISTORY_SECONDS = 10 * 365 * 86400


class Host(Protocol):
    """What a room uses of its service."""

    outbox: Outbox
    clock: IReactorTime
    max_occupants: int
    archive: RoomArchive

    def keep(self, room: Room) -> None:
        """Store the room, if it is persistent (its configuration, subject and affiliations)."""

    def vanish(self, room: Room) -> None:
        """The room is gone (destroyed, or temporary and empty)."""

    def occupancy(self, room: Room, real: str, present: bool) -> None:
        """*real* (a full JID) entered *room* (or left it)."""

    def limit_hit(self, name: str) -> None:
        """A limit of [xmpp.muc] refused something (counted in /metrics)."""


@dataclass(eq=False)
class Occupant:
    nick: str
    real: Recipient
    bare: str
    affiliation: str
    role: str
    occupant_id: domish.SerializedXML  # XEP-0421's element, written as it is
    payload: list[domish.Element | str] = field(default_factory=list)  # the client's presence children


@dataclass(frozen=True)
class HistoryEntry:
    at: float
    message: Prepared  # the groupchat message with its XEP-0203 delay, without 'to'
    chars: int


def own_children(presence: domish.Element) -> list[domish.Element | str]:
    return [child for child in presence.children
            if not (isinstance(child, domish.Element) and (child.uri, child.name) in _OWN_PRESENCE_PARTS)]


class Room:
    def __init__(self, host: Host, jid: str, config: RoomConfig, *, creator: str, secret: str,
                 created_at: float, affiliations: dict[str, str] | None = None, subject: str = "",
                 subject_by: str = "", locked: bool = False) -> None:
        self.host = host
        self.jid = jid
        self.config = config
        self.creator = creator
        self.secret = secret  # keys the occupant ids (XEP-0421), so they last across restarts
        self.created_at = created_at
        self.affiliations: dict[str, str] = dict(affiliations or {})  # bare JID -> not 'none'
        self.subject = subject
        self.subject_by = subject_by
        self.locked = locked  # section 10.1.1: until the owner configures it or accepts the defaults
        self.occupants: dict[str, Occupant] = {}  # by nick
        self.by_real: dict[str, Occupant] = {}  # by real full JID
        self.history: deque[HistoryEntry] = deque(maxlen=config.history_length)
        self.quoted_jid = escape_attribute(jid)

    @property
    def listed_as(self) -> str | None:
        """The configured name of a temporary public room open to be found (section 6.3), which
        lives in its node's memory only (a persistent one is the store's); None for any other."""
        config = self.config
        return config.name if config.public and not config.persistent and not self.locked else None

    # -- who is who ------------------------------------------------------------------------------

    def affiliation(self, bare: str) -> str:
        return self.affiliations.get(bare, "none")

    def default_role(self, affiliation: str) -> str:
        """Section 5.1: owners and admins moderate; in a moderated room, those with no
        affiliation are visitors."""
        if affiliation in ("owner", "admin"):
            return "moderator"
        if affiliation == "none" and self.config.moderated:
            return "visitor"
        return "participant"

    def occupant_id(self, bare: str) -> domish.SerializedXML:
        """XEP-0421: the same for one real bare JID in this room, telling nothing of it."""
        digest = hmac.new(self.secret.encode(), bare.encode(), hashlib.sha256).digest()
        ident = base64.urlsafe_b64encode(digest[:18]).decode()
        return domish.SerializedXML(f"<occupant-id xmlns='{NS_OCCUPANT_ID}' id='{ident}'/>")

    def sees_jids(self, viewer: Occupant) -> bool:
        """Section 7.2.4/7.2.5 (muc#roomconfig_whois)."""
        return self.config.whois == "anyone" or viewer.role == "moderator"

    def occupant_jid(self, occupant: Occupant) -> str:
        return f"{self.jid}/{occupant.nick}"

    # -- presence --------------------------------------------------------------------------------

    def presence_of(self, occupant: Occupant, kind: str | None, *, with_jid: bool, codes: Iterable[str] = (),
                    new_nick: str | None = None, reason: str = "", actor: str | None = None,
                    status: list[domish.Element | str] | None = None) -> domish.Element:
        presence = stanza("presence", self.occupant_jid(occupant), kind=kind)
        if kind is None:
            presence.children.extend(occupant.payload)
        elif status:
            presence.children.extend(status)
        x = add_element(presence, (NS_USER, "x"))
        affiliation, role = occupant.affiliation, occupant.role if kind is None else "none"
        element = add_element(x, "item")
        element["affiliation"], element["role"] = affiliation, role
        if with_jid:
            element["jid"] = occupant.real.full
        if new_nick is not None:
            element["nick"] = new_nick
        if actor is not None:
            add_element(element, "actor")["nick"] = actor
        if reason:
            add_element(element, "reason", content=reason)
        for code in codes:
            add_element(x, "status")["code"] = code
        presence.children.append(occupant.occupant_id)
        return presence

    def broadcast_presence(self, occupant: Occupant, kind: str | None = None, *, codes: tuple[str, ...] = (),
                           own_codes: tuple[str, ...] = (), new_nick: str | None = None, reason: str = "",
                           actor: str | None = None, status: list[domish.Element | str] | None = None) -> None:
        """*occupant*'s presence to every occupant, itself last (section 7.2.3: the new occupant
        gets the others' presence first, then its own, with status 110). Those who may see real
        JIDs (7.2.4, 7.2.5) share one copy, the others another: two serialisations at most."""
        anonymous: Prepared | None = None
        revealing: Prepared | None = None
        send = self.host.outbox.send

        def made(with_jid: bool, codes: tuple[str, ...]) -> Prepared:
            return Prepared(self.presence_of(occupant, kind, with_jid=with_jid, codes=codes, new_nick=new_nick,
                                             reason=reason, actor=actor, status=status))

        for other in self.occupants.values():
            if other is occupant:
                continue
            if self.sees_jids(other):
                revealing = revealing or made(True, codes)
                send(revealing, other.real)
            else:
                anonymous = anonymous or made(False, codes)
                send(anonymous, other.real)
        send(made(True, (*codes, SELF, *own_codes)), occupant.real)

    def enter(self, presence: domish.Element, sender: JID, nick: str, *, created: bool = False) -> None:
        """Section 7.2: the checks of 7.2.6-7.2.11, in the XEP's order of precedence, then the
        presence exchange, the history and the subject."""
        bare = sender.userhost()
        affiliation = self.affiliation(bare)
        if self.locked and affiliation != "owner":
            raise refusal("item-not-found", "the room is locked until its owner configures it")  # 7.2.11
        if affiliation == "outcast":
            raise StanzaError("forbidden", "auth", "you are banned from this room")  # 7.2.8
        if self.config.members_only and affiliation == "none":
            raise StanzaError("registration-required", "auth", "this room is for members only")  # 7.2.7
        if nick in self.occupants:
            raise StanzaError("conflict", "cancel", "that nickname is taken")  # 7.2.9
        join = first(presence, NS_MUC, "x")
        if self.config.locked_by_password and affiliation != "owner":
            given = text_of(first(join, NS_MUC, "password")) if join is not None else ""
            if not hmac.compare_digest(given.encode(), self.config.password.encode()):
                raise StanzaError("not-authorized", "auth", "a password is required")  # 7.2.6
        if len(self.occupants) >= self.host.max_occupants:
            self.host.limit_hit("muc-occupants")
            raise StanzaError("service-unavailable", "wait", "the room is full")  # 7.2.10
        if len(self.occupants) >= (self.config.max_users or self.host.max_occupants) and \
                affiliation not in ("owner", "admin"):
            raise StanzaError("service-unavailable", "wait", "the room is full")  # its owner's limit
        occupant = Occupant(nick, Recipient(sender), bare, affiliation, self.default_role(affiliation),
                            self.occupant_id(bare), own_children(presence))
        for other in self.occupants.values():  # 7.2.3: the others first
            self.host.outbox.send(Prepared(self.presence_of(other, None, with_jid=self.sees_jids(occupant))),
                                  occupant.real)
        self.occupants[nick] = occupant
        self.by_real[occupant.real.full] = occupant
        self.host.occupancy(self, occupant.real.full, True)
        own_codes = ((NON_ANONYMOUS,) if self.config.whois == "anyone" else ()) + \
            ((LOGGED,) if self.host.archive.archived(self) else ()) + ((CREATED,) if created else ())
        self.broadcast_presence(occupant, own_codes=own_codes)
        self._send_history(occupant, join)
        self._send_subject(occupant)

    def update(self, occupant: Occupant, presence: domish.Element) -> None:
        """Section 7.3: a new availability, to everyone."""
        occupant.payload = own_children(presence)
        self.broadcast_presence(occupant)

    def change_nick(self, occupant: Occupant, presence: domish.Element, nick: str) -> None:
        """Section 7.6: unavailable with 303 and the new nick, then available as the new nick."""
        if nick in self.occupants:
            raise StanzaError("conflict", "cancel", "that nickname is taken")
        self.broadcast_presence(occupant, "unavailable", codes=(NEW_NICK,), new_nick=nick)
        del self.occupants[occupant.nick]
        occupant.nick = nick
        occupant.payload = own_children(presence)
        self.occupants[nick] = occupant
        self.broadcast_presence(occupant)

    def leave(self, occupant: Occupant, presence: domish.Element | None = None, *, codes: tuple[str, ...] = (),
              reason: str = "", actor: str | None = None) -> None:
        """Section 7.14 (and a kick's or ban's end, sections 8.2 and 9.1): unavailable to all,
        the occupant itself included."""
        status = list(presence.elements(NS_CLIENT, "status")) if presence is not None else None
        self.broadcast_presence(occupant, "unavailable", codes=codes, reason=reason, actor=actor, status=status)
        self.occupants.pop(occupant.nick, None)
        if self.by_real.pop(occupant.real.full, None) is not None:
            self.host.occupancy(self, occupant.real.full, False)
        if not self.occupants and (not self.config.persistent or self.locked):
            self.host.vanish(self)

    # -- messages --------------------------------------------------------------------------------

    def groupchat(self, message: domish.Element, occupant: Occupant) -> None:
        """Section 7.4 (and 8.1: a subject with no body changes the subject)."""
        body = first(message, NS_CLIENT, "body")
        subject = first(message, NS_CLIENT, "subject")
        if occupant.role == "visitor":
            raise StanzaError("forbidden", "auth", "visitors need voice to speak")  # 7.4
        if subject is not None and body is None:
            if occupant.role != "moderator" and not self.config.change_subject:
                raise StanzaError("forbidden", "auth", "only moderators may change the subject")  # 8.1
            self.subject, self.subject_by = str(subject), occupant.nick
            self.host.keep(self)
        out = stanza("message", self.occupant_jid(occupant), kind="groupchat")
        if message.getAttribute("id") is not None:
            out["id"] = message["id"]
        # What only the room may say is the room's: a client's occupant id (XEP-0421 section 4)
        # or stanza-id (XEP-0359 section 3) goes.
        out.children = [child for child in message.children
                        if not (isinstance(child, domish.Element) and (
                            child.uri == NS_OCCUPANT_ID or (child.uri, child.name) == (NS_SID, "stanza-id")))]
        out.children.append(occupant.occupant_id)
        archive = self.host.archive
        logged = body is not None and archive.archived(self)
        if logged:
            seq, uid, stanza_id = archive.stamp(self)
            out.children.append(stanza_id)
        prepared = Prepared(out)
        send = self.host.outbox.send
        for other in self.occupants.values():
            send(prepared, other.real)
        if logged:
            archive.add(self, seq, uid, occupant.nick, archived_text(prepared.tail, out))
        if body is not None and self.history.maxlen:
            self._remember(prepared)

    def _remember(self, sent: Prepared) -> None:
        """Keep a copy with XEP-0203's delay for later joiners (section 7.2.15), made from the text
        already written: nothing is serialised again."""
        now = self.host.clock.seconds()
        delay = domish.SerializedXML(f"<delay xmlns='{NS_DELAY}' from='{self.quoted_jid}' stamp='{stamp(now)}'/>")
        element = sent.element
        delayed = domish.Element((element.uri, element.name), element.defaultUri, dict(element.attributes))
        delayed.children = [*element.children, delay]
        kept = Prepared.__new__(Prepared)
        kept.element, kept.head = delayed, sent.head
        kept.tail = sent.tail[:-len("</message>")] + delay + "</message>" if sent.tail is not None else None
        self.history.append(HistoryEntry(now, kept, len(kept.tail or "") + len(element.name) + 2))

    def _send_history(self, occupant: Occupant, join: domish.Element | None) -> None:
        """Section 7.2.15: the newest messages within every limit the client set
        (maxstanzas, maxchars, seconds, since); all that is kept when it set none."""
        asked = first(join, NS_MUC, "history") if join is not None else None
        most_stanzas = most_chars = None
        oldest = None
        if asked is not None:
            most_stanzas = _count(asked.getAttribute("maxstanzas"))
            most_chars = _count(asked.getAttribute("maxchars"))
            seconds = _count(asked.getAttribute("seconds"))
            if seconds is not None:
                oldest = self.host.clock.seconds() - min(seconds, MAX_HISTORY_SECONDS)
            since = asked.getAttribute("since")
            if since is not None:
                moment = parse_stamp(since)
                if moment is not None:
                    oldest = moment if oldest is None else max(oldest, moment)
        chosen: list[HistoryEntry] = []
        chars = 0
        for entry in reversed(self.history):
            if most_stanzas is not None and len(chosen) >= most_stanzas:
                break
            if oldest is not None and entry.at < oldest:
                break
            chars += entry.chars + len(occupant.real.quoted) + 6
            if most_chars is not None and chars > most_chars:
                break
            chosen.append(entry)
        for entry in reversed(chosen):
            self.host.outbox.send(entry.message, occupant.real)

    def _send_subject(self, occupant: Occupant) -> None:
        """Section 7.2.16: the subject, empty if there is none, after the history."""
        sender = f"{self.jid}/{self.subject_by}" if self.subject_by else self.jid
        message = stanza("message", sender, kind="groupchat")
        add_element(message, "subject", content=self.subject)
        self.host.outbox.send(Prepared(message), occupant.real)

    def private(self, message: domish.Element, occupant: Occupant, nick: str) -> None:
        """Section 7.5: to one occupant, from the sender's occupant JID, with an empty #user x."""
        kind = message.getAttribute("type", "normal")
        if kind == "groupchat":
            raise refusal("bad-request", "a private message cannot be of type groupchat")
        target = self.occupants.get(nick)
        if target is None:
            raise refusal("item-not-found", "no occupant has that nickname")
        out = readdressed(message, target.real.full)
        out["from"] = self.occupant_jid(occupant)
        out.children = [*message.children]
        add_element(out, (NS_USER, "x"))
        self.host.outbox.route(out)

    def send_to_all(self, element: domish.Element) -> None:
        """A room's own message (configuration changes, section 10.2.1) to every occupant."""
        prepared = Prepared(element)
        for other in self.occupants.values():
            self.host.outbox.send(prepared, other.real)

    # -- roles and affiliations (sections 8-10) ---------------------------------------------------

    def set_role(self, target: Occupant, role: str, actor: Occupant | None, reason: str) -> None:
        if role == "none":
            self.leave(target, codes=(KICKED,), reason=reason, actor=actor.nick if actor else None)
            return
        target.role = role
        self.broadcast_presence(target, reason=reason, actor=actor.nick if actor else None)

    def set_affiliation(self, bare: str, affiliation: str, actor: Occupant | None, reason: str) -> None:
        if affiliation == "none":
            self.affiliations.pop(bare, None)
        else:
            self.affiliations[bare] = affiliation
        actor_nick = actor.nick if actor else None
        for occupant in [o for o in self.occupants.values() if o.bare == bare]:
            occupant.affiliation = affiliation
            if affiliation == "outcast":
                self.leave(occupant, codes=(BANNED,), reason=reason, actor=actor_nick)  # 9.1
            elif affiliation == "none" and self.config.members_only:
                self.leave(occupant, codes=(AFFILIATION_CHANGED,), reason=reason, actor=actor_nick)  # 9.4
            else:
                occupant.role = self.default_role(affiliation)
                self.broadcast_presence(occupant, reason=reason, actor=actor_nick)

    def owners(self) -> list[str]:
        return sorted(bare for bare, affiliation in self.affiliations.items() if affiliation == "owner")

    def outranks(self, actor_affiliation: str, target_affiliation: str) -> bool:
        return RANK[actor_affiliation] > RANK[target_affiliation]

    def destroyed(self, reason: str, alternative: str | None) -> None:
        """Section 10.9: every occupant hears the room is gone, then it is."""
        for occupant in list(self.occupants.values()):
            presence = stanza("presence", self.occupant_jid(occupant), kind="unavailable")
            x = add_element(presence, (NS_USER, "x"))
            element = add_element(x, "item")
            element["affiliation"], element["role"] = "none", "none"
            destroy = add_element(x, "destroy")
            if alternative:
                destroy["jid"] = alternative
            if reason:
                add_element(destroy, "reason", content=reason)
            append_child(x, domish.Element((NS_USER, "status")))["code"] = SELF
            self.host.outbox.route(readdressed(presence, occupant.real.full))
        for real in list(self.by_real):
            self.host.occupancy(self, real, False)
        self.occupants.clear()
        self.by_real.clear()


def _count(text: str | None) -> int | None:
    """A history attribute as a non-negative count; None when absent or not a number."""
    if text is None:
        return None
    try:
        return max(0, int(text))
    except ValueError:
        return None

