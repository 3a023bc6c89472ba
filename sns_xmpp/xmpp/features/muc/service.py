"""The conference service at conference.<domain> (XEP-0045): what reaches it, to which room.

The router hands `MUCService.deliver` every stanza addressed to a service domain. Presence to
room@service/nick enters, changes or leaves (sections 7.2, 7.3, 7.6, 7.14), creating the room on
a first entry (section 10.1); messages to the room go to its occupants (7.4) or are invitations,
declines and voice requests (7.8.2, 7.13, 8.6); messages to an occupant are private (7.5); IQs to
the room are disco (6.4), admin (8-10) and owner (10) requests; IQs to an occupant are forwarded,
and a ping to one's own occupant JID is answered here (XEP-0410 section 3.3).

Persistent rooms are written through the store (store/muc.py) and read once at start; stanzas
that arrive before that read wait for it, so that a join never creates a room that exists.

In a cluster each room lives on one node (cluster/leases.py), so the service's list of public
rooms (6.3) is put together by the node asked: the persistent ones from the store, the temporary
ones from this node's memory and from what the other nodes list (`FeatureRegistry.shared_listing`,
kept in Redis by cluster/listings.py).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from wokkel.generic import parseXml

from sns_xmpp.config import MUCConfig
from sns_xmpp.jid import JID, InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store import muc as muc_store
from sns_xmpp.store import vcard as vcard_store
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import FeatureRegistry
from sns_xmpp.xmpp.features.muc import admin
from sns_xmpp.xmpp.features.muc.archive import NS_MAM, NS_SID, RoomArchive
from sns_xmpp.xmpp.features.muc.delivery import Outbox, readdressed
from sns_xmpp.xmpp.features.muc.forms import RoomConfig, room_features, room_info_form
from sns_xmpp.xmpp.features.muc.protocol import (
    GONE,
    NS_ADMIN,
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_MUC,
    NS_OCCUPANT_ID,
    NS_OWNER,
    NS_PING,
    NS_SELF_PING,
    refusal,
)
from sns_xmpp.xmpp.features.muc.room import Room
from sns_xmpp.xmpp.stanzas import add_element, append_child, error_reply, first_child, iq_result, may_bounce

log = GatedLogger()

WAITING_BEFORE_LOAD = 10_000  # stanzas kept while the persistent rooms are read at start
LOAD_RETRY_SECONDS = 10.0
MAX_FORWARDED_IQS = 10_000  # IQs between occupants awaiting their answer; the oldest are forgotten
MAX_LISTED_ROOMS = 1000  # rooms in the service's disco#items
RESERVED_NICK_NODE = "x-roomuser-item"  # section 7.12


class MUCService:
    def __init__(self, registry: FeatureRegistry, config: MUCConfig) -> None:
        self.sessions = registry.sessions
        self.clock = registry.clock
        self.config = config
        self.max_occupants = config.max_occupants
        self.outbox = Outbox(registry.sessions, registry.router)
        self.domains = frozenset(registry.service_domains("conference", self.deliver, one_node_per_entity=True,
                                                          take_over=self.take_over))
        self.rooms: dict[str, Room] = {}
        self.created: dict[str, int] = {}  # bare JID -> rooms it created that exist
        self.forwarded: OrderedDict[str, tuple[str, str, str, str]] = OrderedDict()
        # ^ our id of a forwarded IQ -> (asker, its id, the answerer's real JID, its occupant JID)
        self.store = registry.sessions.store if registry.router is not None else None
        self.loaded = self.store is None
        mam = registry.config.mam
        self.archive = RoomArchive(self, config.max_archived_messages, mam.default_page_size, mam.max_page_size)
        self.waiting: list[domish.Element] = []
        # The rooms each real full JID is in: a session that ends leaves them even when it never
        # sent the presence whose end tells the rooms (RFC 6121 4.6 covers available sessions only).
        self.occupancies: dict[str, set[str]] = {}
        self.stopped = False
        # This node's temporary public rooms, which a cluster's other nodes list too (section 6.3).
        self.listing = registry.shared_listing("muc-rooms", self.listed_here)

    # -- start: the persistent rooms ----------------------------------------------------------------

    def load(self) -> None:
        if self.store is None:
            return
        self.store.run_read(muc_store.rooms).addCallbacks(self._loaded, self._load_failed)

    def _load_failed(self, reason: Failure) -> None:
        log.warn("muc.load_failed reason={reason} (tried again)", reason=reason.getErrorMessage())
        if not self.stopped:
            self.clock.callLater(LOAD_RETRY_SECONDS, self.load)

    def _loaded(self, stored: list[muc_store.StoredRoom]) -> None:
        for row in stored:
            self._put_stored(row)
        log.info("muc.loaded rooms={rooms}", rooms=len(stored))
        self.loaded = True
        waiting, self.waiting = self.waiting, []
        for stanza in waiting:
            self.deliver(stanza)

    def _put_stored(self, row: muc_store.StoredRoom) -> None:
        try:
            config = RoomConfig.from_json(row.config)
            # The limit may have been lowered since the owner chose a longer history.
            config = dataclasses.replace(config, history_length=min(config.history_length, self.config.max_history))
        except (ValueError, TypeError):
            log.warn("muc.room_unreadable room={room}", room=row.room)
            return
        self.rooms[row.room] = Room(self, row.room, config, creator=row.creator, secret=row.secret,
                                    created_at=row.created_at, affiliations=row.affiliations,
                                    subject=row.subject, subject_by=row.subject_by)
        self.created[row.creator] = self.created.get(row.creator, 0) + 1

    # -- a cluster's take-over ---------------------------------------------------------------------

    def take_over(self, room_jid: str) -> Deferred[None] | None:
        """In a cluster, this node has taken the room's lease (cluster/leases.py); the room's
        stanzas wait for this. The node that served it before may have created the room, or
        changed it, after this node read the rooms at start: what this node holds of an empty room
        is read again from the store (an occupied one is being served here already)."""
        room = self.rooms.get(room_jid)
        if self.store is None or (room is not None and room.occupants):
            return None
        return self.store.run_read(partial(muc_store.room, room=room_jid)).addCallback(self._taken_over, room_jid)

    def _taken_over(self, stored: muc_store.StoredRoom | None, room_jid: str) -> None:
        held = self.rooms.get(room_jid)
        if held is not None:
            if held.occupants:
                return
            self._forget(held)  # out of memory only: what the store holds (or no longer holds) is the room now
        if stored is not None:
            self._put_stored(stored)
        log.info("muc.room_taken_over room={room} stored={stored}", room=room_jid, stored=stored is not None)

    # -- persistence, as rooms ask ---------------------------------------------------------------

    def persistent_rooms(self) -> int:
        return sum(1 for room in self.rooms.values() if room.config.persistent)

    def keep(self, room: Room) -> None:
        if self.store is None or not room.config.persistent or self.rooms.get(room.jid) is not room:
            return
        stored = muc_store.StoredRoom(room.jid, room.config.to_json(), room.subject, room.subject_by, room.secret,
                                      room.creator, room.created_at, dict(room.affiliations))
        self._write(partial(muc_store.put_room, stored=stored), room.jid)

    def unkeep(self, room: Room) -> None:
        if self.store is not None:
            self._write(partial(muc_store.delete_room, room=room.jid), room.jid)

    def _write(self, work: Callable[[Any], None], room: str) -> None:
        assert self.store is not None
        self.store.run(work).addErrback(lambda reason: log.failure("muc.store_failed room={room}", reason, room=room))

    def relist(self, room: Room, was: str | None) -> None:
        """The room's configuration or lock changed; it was listed under *was* (None: not listed)
        among the temporary public rooms the other nodes of a cluster list."""
        now = room.listed_as if self.rooms.get(room.jid) is room else None
        if now != was:
            self.listing.changed(room.jid, now)

    def listed_here(self) -> dict[str, str]:
        """This node's temporary public rooms, by JID, with their configured names."""
        listed = {jid: room.listed_as for jid, room in self.rooms.items()}
        return {jid: name for jid, name in listed.items() if name is not None}

    def occupancy(self, room: Room, real: str, present: bool) -> None:
        if present:
            self.occupancies.setdefault(real, set()).add(room.jid)
            return
        rooms = self.occupancies.get(real)
        if rooms is not None:
            rooms.discard(room.jid)
            if not rooms:
                del self.occupancies[real]

    def limit_hit(self, name: str) -> None:
        self.sessions.metrics.limit(name)

    def unbound(self, session: ClientSession, replaced: bool) -> None:
        """A session that ended is out of its rooms (after the presence feature's unavailable
        presence, which usually has done it: section 7.14's leaving). One that moved to another
        node of a cluster stays in them: its stanzas follow it there."""
        if session.moved:
            return
        for room_jid in sorted(self.occupancies.get(session.full, ())):
            room = self.rooms.get(room_jid)
            occupant = room.by_real.get(session.full) if room is not None else None
            if room is not None and occupant is not None:
                room.leave(occupant, codes=(GONE,))

    def destroy(self, room: Room, reason: str, alternative: str | None = None) -> None:
        """Section 10.9: the occupants hear the room is gone, and it is, stored rows and all."""
        room.destroyed(reason, alternative)
        self.vanish(room)
        log.info("muc.room_destroyed room={room}", room=room.jid)

    def vanish(self, room: Room) -> None:
        if self.rooms.get(room.jid) is not room:
            return
        self._forget(room)
        if room.config.persistent:
            self.unkeep(room)
        log.info("muc.room_gone room={room}", room=room.jid)

    def _forget(self, room: Room) -> None:
        """The room leaves this node's memory: its place, its creator's count, the shared listing."""
        del self.rooms[room.jid]
        left = self.created.get(room.creator, 0) - 1
        if left > 0:
            self.created[room.creator] = left
        else:
            self.created.pop(room.creator, None)
        if room.listed_as is not None:
            self.listing.changed(room.jid, None)

    # -- what arrives ----------------------------------------------------------------------------

    def deliver(self, stanza: domish.Element) -> None:
        if not self.loaded:
            if len(self.waiting) < WAITING_BEFORE_LOAD:
                self.waiting.append(stanza)
            elif may_bounce(stanza):
                self.outbox.route(error_reply(stanza, "resource-constraint"))
            return
        try:
            to = parse_jid(stanza.getAttribute("to", ""))
            sender = parse_jid(stanza.getAttribute("from", ""))
        except InvalidFormat:
            return
        try:
            if to.user is None:
                self._to_service(stanza, to)
            elif stanza.name == "presence":
                self._presence(stanza, to, sender)
            elif stanza.name == "message":
                self._message(stanza, to, sender)
            elif stanza.name == "iq":
                self._iq(stanza, to, sender)
        except StanzaError as refused:
            if may_bounce(stanza):
                self.outbox.route(refused.toResponse(stanza))
        except Exception:
            # A bug here must not reach the sender's stream (the router called us on its path).
            log.failure("muc.stanza_failed kind={kind}", kind=stanza.name)
            if may_bounce(stanza):
                self.outbox.route(error_reply(stanza, "internal-server-error"))

    # -- presence --------------------------------------------------------------------------------

    def _presence(self, presence: domish.Element, to: JID, sender: JID) -> None:
        kind = presence.getAttribute("type")
        room = self.rooms.get(to.userhost())
        occupant = room.by_real.get(sender.full()) if room is not None else None
        if kind in ("unavailable", "error"):
            if room is not None and occupant is not None:
                room.leave(occupant, presence if kind == "unavailable" else None)
            return
        if kind is not None:
            return  # subscriptions and probes mean nothing to a room
        nick = to.resource
        if nick is None:
            raise refusal("jid-malformed", "a nickname is needed: room@service/nick")  # 7.2.2
        if room is not None and occupant is not None:
            if nick == occupant.nick:
                room.update(occupant, presence)
            else:
                room.change_nick(occupant, presence, nick)
            return
        created = room is None
        if room is None:
            room = self._create(to.userhost(), sender)
        try:
            room.enter(presence, sender, nick, created=created)
        finally:
            if created and not room.occupants:
                self.vanish(room)

    def _create(self, room_jid: str, sender: JID) -> Room:
        """Section 10.1.1: the first to enter creates the room, owns it, and it is locked until
        configured. A remote user, or one who made too many, may not (not-allowed)."""
        creator = sender.userhost()
        if sender.host not in self.sessions.domains:
            raise refusal("not-allowed", "rooms here are created by this server's users")
        if self.created.get(creator, 0) >= self.config.max_rooms_per_user:
            self.sessions.metrics.limit("muc-rooms-per-user")
            raise refusal("not-allowed", f"you may have at most {self.config.max_rooms_per_user} rooms")
        config = RoomConfig(history_length=min(self.config.default_history, self.config.max_history))
        room = Room(self, room_jid, config, creator=creator, secret=secrets.token_hex(16),
                    created_at=self.clock.seconds(), affiliations={creator: "owner"}, locked=True)
        self.rooms[room_jid] = room
        self.created[creator] = self.created.get(creator, 0) + 1
        log.info("muc.room_created room={room} by={creator}", room=room_jid, creator=creator)
        return room

    # -- messages --------------------------------------------------------------------------------

    def _message(self, message: domish.Element, to: JID, sender: JID) -> None:
        kind = message.getAttribute("type", "normal")
        if kind == "error":
            return
        room = self.rooms.get(to.userhost())
        if room is None or (room.locked and room.affiliation(sender.userhost()) != "owner"):
            raise refusal("item-not-found", "no such room")
        occupant = room.by_real.get(sender.full())
        if to.resource is not None:
            if occupant is None:
                raise refusal("not-acceptable", "only occupants may send private messages")  # 7.5
            room.private(message, occupant, to.resource)
        elif kind == "groupchat":
            if occupant is None:
                raise refusal("not-acceptable", "only occupants may speak in the room")  # 7.4
            room.groupchat(message, occupant)
        else:
            admin.room_message(self, room, message, sender, occupant)

    # -- IQs -------------------------------------------------------------------------------------

    def _iq(self, iq: domish.Element, to: JID, sender: JID) -> None:
        room = self.rooms.get(to.userhost())
        kind = iq.getAttribute("type")
        if to.resource is not None:
            self._occupant_iq(iq, room, to.resource, sender, kind)
            return
        if kind not in ("get", "set"):
            return
        child = first_child(iq)
        if child is None:
            raise refusal("bad-request")
        key = (child.uri, child.name)
        if key == (NS_DISCO_INFO, "query") and child.getAttribute("node") == RESERVED_NICK_NODE and kind == "get":
            # 7.12 asks about the user, not the room: answered for a room yet to be made too, so
            # that the nick a client proposes for a new room is the user's display name.
            self._answer(iq, self.reserved_nick(sender).addCallback(partial(_nick_info, RESERVED_NICK_NODE)))
            return
        if room is None or (room.locked and room.affiliation(sender.userhost()) != "owner"):
            raise refusal("item-not-found", "no such room")
        if key == (NS_DISCO_INFO, "query") and kind == "get":
            self._answer(iq, self._room_info(room, child, sender))
        elif key == (NS_DISCO_ITEMS, "query") and kind == "get":
            self._answer(iq, domish.Element((NS_DISCO_ITEMS, "query")))  # 6.5: occupants are not listed
        elif key == (NS_ADMIN, "query"):
            self._answer(iq, admin.admin_query(self, room, iq, child, sender))
        elif key == (NS_OWNER, "query"):
            self._answer(iq, admin.owner_query(self, room, iq, child, sender))
        elif key == (NS_MAM, "query"):
            self._answer(iq, self.archive.query(room, iq, child, sender))
        elif key == (NS_PING, "ping") and kind == "get":
            self._answer(iq, None)
        else:
            raise refusal("feature-not-implemented" if kind == "get" else "service-unavailable")

    def _occupant_iq(self, iq: domish.Element, room: Room | None, nick: str, sender: JID, kind: str | None) -> None:
        """An IQ to an occupant JID: XEP-0410's self-ping answered here, others forwarded to the
        occupant's client with an id of ours, and its answer forwarded back."""
        if kind in ("result", "error"):
            origin = self.forwarded.get(iq.getAttribute("id", ""))
            if origin is not None and origin[2] == sender.full():
                del self.forwarded[iq["id"]]
                asked_by, asked_id, _answerer, answerer_occupant = origin
                answer = readdressed(iq, asked_by)
                answer["id"], answer["from"] = asked_id, answerer_occupant
                self.outbox.route(answer)
            return
        if room is None:
            raise refusal("item-not-found", "no such room")
        asker = room.by_real.get(sender.full())
        if asker is None:
            raise StanzaError("not-acceptable", "cancel", "you are not in this room")  # XEP-0410 section 3.2
        target = room.occupants.get(nick)
        if target is None:
            raise refusal("item-not-found", "no occupant has that nickname")
        child = first_child(iq)
        if target is asker and child is not None and (child.uri, child.name) == (NS_PING, "ping"):
            self._answer(iq, None)  # XEP-0410 section 3.3
            return
        ours = secrets.token_hex(8)
        self.forwarded[ours] = (sender.full(), iq.getAttribute("id", ""), target.real.full, room.occupant_jid(target))
        if len(self.forwarded) > MAX_FORWARDED_IQS:
            self.forwarded.popitem(last=False)
        out = readdressed(iq, target.real.full)
        out["from"], out["id"] = room.occupant_jid(asker), ours
        self.outbox.route(out)

    def _answer(self, iq: domish.Element, payload: domish.Element | Deferred | None) -> None:
        if isinstance(payload, Deferred):
            payload.addCallbacks(lambda answer: self._answer(iq, answer),
                                 lambda reason: self._refused(iq, reason))
            return
        result = iq_result(iq)
        if payload is not None:
            append_child(result, payload)
        self.outbox.route(result)

    def _refused(self, iq: domish.Element, reason: Failure) -> None:
        if isinstance(reason.value, StanzaError):
            self.outbox.route(reason.value.toResponse(iq))
        else:
            log.failure("muc.iq_failed", reason)
            self.outbox.route(error_reply(iq, "internal-server-error"))

    # -- disco -----------------------------------------------------------------------------------

    def _to_service(self, stanza: domish.Element, to: JID) -> None:
        """Section 6.1-6.3: the service's identity and features, and its public rooms."""
        if stanza.name != "iq":
            if stanza.name == "message" and may_bounce(stanza):
                raise refusal("service-unavailable")
            return
        if stanza.getAttribute("type") not in ("get", "set") or to.resource is not None:
            return
        child = first_child(stanza)
        key = (child.uri, child.name) if child is not None else None
        if key == (NS_DISCO_INFO, "query") and stanza["type"] == "get":
            query = domish.Element((NS_DISCO_INFO, "query"))
            identity = add_element(query, "identity")
            identity["category"], identity["type"], identity["name"] = "conference", "text", "Chat rooms"
            for var in (NS_DISCO_INFO, NS_DISCO_ITEMS, NS_MUC, NS_PING):
                add_element(query, "feature")["var"] = var
            self._answer(stanza, query)
        elif key == (NS_DISCO_ITEMS, "query") and stanza["type"] == "get":
            elsewhere = self.listing.elsewhere()
            if elsewhere is None:  # a server alone: its memory holds every room
                self._answer(stanza, _room_items(to.host, {room.jid: room.config.name for room in self.rooms.values()
                                                           if room.config.public and not room.locked}))
            else:
                self._answer(stanza, self._rooms_of_the_cluster(to.host, elsewhere))
        elif key == (NS_PING, "ping") and stanza["type"] == "get":
            self._answer(stanza, None)
        else:
            raise refusal("service-unavailable")

    def _rooms_of_the_cluster(self, host: str, elsewhere: Deferred[dict[str, str]]) -> Deferred[domish.Element]:
        """Section 6.3 in a cluster: the public persistent rooms as the store has them (another
        node may have made, renamed or destroyed one since this node read them; this node's own
        changes are written before this read, in the store's order), and the temporary ones of
        every node, this one's from memory."""
        stored: Deferred[list[tuple[str, str]]] = (
            self.store.run_read(muc_store.configs) if self.store is not None else succeed([]))

        def merged(found: list[Any]) -> domish.Element:
            configs, others = found
            listed: dict[str, str] = {}
            for jid, text in configs:
                try:
                    config = RoomConfig.from_json(text)
                except (ValueError, TypeError):
                    continue  # logged as unreadable when the room is loaded
                if config.public:
                    listed[jid] = config.name
            listed.update(others)
            listed.update(self.listed_here())
            return _room_items(host, listed)

        both: Deferred[list[Any]] = gatherResults([stored, elsewhere], consumeErrors=True)
        return both.addCallback(merged)

    def _room_info(self, room: Room, query: domish.Element, sender: JID) -> domish.Element | Deferred:
        """Section 6.4 (features and the muc#roominfo form), or section 7.12 for the node
        x-roomuser-item: the nick the user would take, their display name."""
        if query.getAttribute("node"):
            raise refusal("item-not-found")
        answer = domish.Element((NS_DISCO_INFO, "query"))
        identity = add_element(answer, "identity")
        identity["category"], identity["type"] = "conference", "text"
        identity["name"] = room.config.name or room.jid.split("@", 1)[0]
        archive = (NS_MAM, NS_SID) if self.archive.archived(room) else ()
        for var in (NS_MUC, NS_DISCO_INFO, NS_OCCUPANT_ID, NS_SELF_PING, *archive, *room_features(room.config)):
            add_element(answer, "feature")["var"] = var
        append_child(answer, room_info_form(room.config, len(room.occupants), room.subject))
        return answer

    def reserved_nick(self, user: JID) -> Deferred[str | None]:
        """Section 7.12, answered with the user's display name: the social site's name from the
        login when it gave one, else the vCard's FN (XEP-0054), else nothing."""
        session = self.sessions.session(user) if user.host in self.sessions.domains else None
        if session is not None and session.login.display_name:
            return succeed(session.login.display_name)
        return self._vcard_name(user.userhost())

    def _vcard_name(self, bare: str) -> Deferred[str | None]:
        if self.store is None:
            return succeed(None)
        return self.store.run_read(partial(vcard_store.get_vcard, jid=bare)).addCallback(_full_name)

    # -- for operators ---------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """The rooms, for the console's rooms()."""
        return [{"room": room.jid, "occupants": len(room.occupants), "persistent": room.config.persistent,
                 "public": room.config.public, "members_only": room.config.members_only, "locked": room.locked,
                 "creator": room.creator, "history": len(room.history)}
                for room in sorted(self.rooms.values(), key=lambda room: room.jid)]

    def describe_room(self, room: Room) -> dict[str, Any]:
        return {"room": room.jid, "config": room.config, "locked": room.locked, "subject": room.subject,
                "occupants": [{"nick": o.nick, "jid": o.real.full, "role": o.role, "affiliation": o.affiliation}
                              for o in sorted(room.occupants.values(), key=lambda o: o.nick)],
                "affiliations": dict(sorted(room.affiliations.items())), "history": len(room.history)}

    def occupants(self) -> int:
        return sum(len(room.occupants) for room in list(self.rooms.values()))  # a scrape's thread too


def _room_items(host: str, rooms: dict[str, str]) -> domish.Element:
    """Section 6.3's answer: the public rooms of the service *host* (JID -> configured name), in
    the order of their JIDs, at most MAX_LISTED_ROOMS, each named (the room's node if unnamed)."""
    query = domish.Element((NS_DISCO_ITEMS, "query"))
    suffix = "@" + host
    for jid in sorted(jid for jid in rooms if jid.endswith(suffix))[:MAX_LISTED_ROOMS]:
        element = add_element(query, "item")
        element["jid"] = jid
        element["name"] = rooms[jid] or jid.split("@", 1)[0]
    return query


def _full_name(stored: vcard_store.StoredVCard | None) -> str | None:
    if stored is None:
        return None
    try:
        vcard = parseXml(stored.xml)
    except Exception:
        return None
    for child in vcard.elements("vcard-temp", "FN"):
        name = str(child).strip()
        return name or None
    return None


def _nick_info(node: str, nick: str | None) -> domish.Element:
    answer = domish.Element((NS_DISCO_INFO, "query"))
    answer["node"] = node
    if nick:
        identity = add_element(answer, "identity")
        identity["category"], identity["type"], identity["name"] = "conference", "text", nick
    return answer


