"""The archives of persistent rooms: XEP-0313 on the room's JID, XEP-0359 stanza-ids by the room.

A groupchat message with a body in a persistent room gets a stanza-id (by the room's JID) before
it is written once for its occupants (`delivery.py`); the same text, its namespace put in, is the
archived row. Rows wait in memory and go to the store in one transaction every
FLUSH_SECONDS or FLUSH_ROWS rows (as the user archive's writer does: no store call per message);
a query, and the server's stop, write what waits first. The query protocol (the form, RSM, the
results and <fin/>) is the user archive's own (`features/mam/query.py`); the rows are
`store/muc.py`'s. In a members-only room only members (and admins, owners) may read the
archive; an outcast never (XEP-0313 section 4.1.1: the room decides who may query).
"""

from __future__ import annotations

import secrets
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.jid import JID
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store import muc as muc_store
from sns_xmpp.store.mam import Page, UnknownArchiveId
from sns_xmpp.xmpp.features.mam.query import fin as fin_element
from sns_xmpp.xmpp.features.mam.query import form, parse_query, result_message

if TYPE_CHECKING:
    from sns_xmpp.xmpp.features.muc.room import Room
    from sns_xmpp.xmpp.features.muc.service import MUCService

log = GatedLogger()

NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"
FLUSH_SECONDS = 0.2
FLUSH_ROWS = 1000


class RoomArchive:
    def __init__(self, service: MUCService, keep: int, default_page: int, max_page: int) -> None:
        self.service = service
        self.keep = keep  # messages one room's archive holds
        self.default_page = min(default_page, max_page)
        self.max_page = max_page
        self.low_bits = secrets.randbelow(1024)
        self.last_seq = 0
        self.tag = "-" + secrets.token_hex(4)
        self.rows: list[tuple[str, int, str, str, str]] = []
        self.timer: IDelayedCall | None = None
        self.writing: Deferred[None] | None = None

    def archived(self, room: Room) -> bool:
        return room.config.persistent and self.keep > 0

    # -- on the message's path ---------------------------------------------------------------------

    def stamp(self, room: Room) -> tuple[int, str, domish.SerializedXML]:
        """The message's place in the room's archive and its stanza-id, as the text it is written as."""
        seq = (int(self.service.clock.seconds() * 1_000_000) << 10) | self.low_bits
        if seq <= self.last_seq:
            seq = self.last_seq + 1024  # the same microsecond, or the clock went back
        self.last_seq = seq
        uid = format(seq, "x") + self.tag
        return seq, uid, domish.SerializedXML(f"<stanza-id xmlns='{NS_SID}' by='{room.quoted_jid}' id='{uid}'/>")

    def add(self, room: Room, seq: int, uid: str, nick: str, stanza: str) -> None:
        self.rows.append((room.jid, seq, uid, nick, stanza))
        if len(self.rows) >= FLUSH_ROWS:
            self.flush()
        elif self.timer is None:
            self.timer = self.service.clock.callLater(FLUSH_SECONDS, self.flush)

    def flush(self) -> Deferred[None]:
        """Write what waits; fires when it (and any write before it) is written."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        store = self.service.store
        if not self.rows or store is None:
            return self.writing if self.writing is not None else succeed(None)
        rows, self.rows = self.rows, []
        written: Deferred[None] = store.run(partial(muc_store.archive, rows=rows, keep=self.keep))
        written.addErrback(self._failed, len(rows))
        self.writing = written
        return written

    def _failed(self, reason: Failure, rows: int) -> None:
        log.failure("muc.archive_write_failed rows={rows}", reason, rows=rows)

    # -- queries -------------------------------------------------------------------------------

    def query(self, room: Room, iq: domish.Element, query: domish.Element, sender: JID) -> Any:
        """XEP-0313 section 4 on the room: a get is the form's fields, a set a query whose results
        go to the asker, then the IQ result with <fin/>."""
        affiliation = room.affiliation(sender.userhost())
        if affiliation == "outcast" or (room.config.members_only and affiliation == "none"):
            raise StanzaError("forbidden", "auth", "only members read this room's archive")
        if iq.getAttribute("type") == "get":
            return form()
        if not self.archived(room):
            raise StanzaError("item-not-found", text="this room keeps no archive")
        asked = parse_query(query, room.jid, self.default_page, self.max_page)
        store = self.service.store
        assert store is not None
        asker = sender.full()
        d: Deferred[Any] = self.flush()
        d.addCallback(lambda _: store.run(partial(muc_store.query_archive, asked=asked.query)))

        def send(page: Page) -> domish.Element:
            rows = reversed(page.rows) if asked.flip else page.rows
            for uid, stamp, stanza in rows:
                self.service.outbox.route(result_message(room.jid, asker, asked.queryid, uid, stamp, stanza))
            return fin_element(page)

        d.addCallback(send)
        d.addErrback(_unknown_id)
        return d


def _unknown_id(reason: Failure) -> None:
    reason.trap(UnknownArchiveId)
    raise StanzaError("item-not-found", text="no such message in this archive")


def archived_text(tail: str | None, message: domish.Element) -> str:
    """The message as the archive keeps it: standalone, its namespace declared."""
    if tail is not None:
        return f"<{message.name} xmlns='jabber:client'" + tail[1:]
    return message.toXml()

