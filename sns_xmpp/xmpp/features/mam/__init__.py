"""Message Archive Management (XEP-0313, urn:xmpp:mam:2 and its #extended features) for the user
archive, with XEP-0359 stanza-ids and XEP-0441 preferences: what an account sends and receives is
kept, so that a new client, or one that was away, can page through the history.

What is archived (XEP-0313 section 5.1.1): chat and normal messages with a body (or the XEP-0334
<store/> hint) that an account's clients send (MESSAGE_FROM_CLIENT) and that it receives
(MESSAGE_TO_LOCAL; MESSAGE_OFFLINE for an account with no session, so a message kept offline is
archived too); never errors, headlines, groupchat (the MUC's own archive), nor a message with the
<no-store/> or <no-permanent-store/> hint. A message to oneself is archived once.

Each archived message is stamped at once with <stanza-id by='<account>' id='<UID>'/> (section 3.5),
before it reaches the account's clients, its carbon copies (this feature's hooks run before
carbons' and offline's, priority 10) and offline storage. A message the account sends keeps its
stanza-id only in its carbon copies: it is taken off again before the message leaves (section 3.5,
"MUST NOT include the stanza-id in messages addressed to JIDs that do not have permissions to
access the archive"). A stanza-id claiming to be the account's that arrives from outside is
removed (XEP-0359 section 5), whether or not the message is archived.

The rows are written in batches off the message's path (`writer.ArchiveWriter`); a query flushes
first, so it sees every message archived before it. UIDs are made in process from the arrival time
(schema/007_mam.sql), with a random tag per process; they are the archive's order too.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.config import MAMConfig
from sns_xmpp.jid import JID, InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store import mam as archive_sql
from sns_xmpp.store.mam import Page, Prefs, UnknownArchiveId
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import ChangedMeanwhile, Feature, FeatureRegistry
from sns_xmpp.xmpp.features.mam.query import (
    NS_MAM,
    NS_MAM_EXTENDED,
    fin,
    form,
    parse_prefs,
    parse_query,
    prefs_element,
    result_message,
    stamp_text,
)
from sns_xmpp.xmpp.features.mam.writer import ArchiveWriter
from sns_xmpp.xmpp.hooks import MESSAGE_FROM_CLIENT, MESSAGE_OFFLINE, MESSAGE_TO_LOCAL
from sns_xmpp.xmpp.serialization import CLIENT_STREAM_PREFIXES, escape_attribute, plain_xml
from sns_xmpp.xmpp.stanzas import NS_CLIENT, add_element

log = GatedLogger()

NS_SID = "urn:xmpp:sid:0"
NS_HINTS = "urn:xmpp:hints"
ARCHIVED_TYPES = frozenset(("chat", "normal"))
NO_STORE = frozenset(("no-store", "no-permanent-store"))
ALWAYS = Prefs("always")
SWEEP_SECONDS = 3600.0  # between retention sweeps
SWEEP_AGAIN_SECONDS = 1.0  # after a full batch: more are due
SWEEP_BATCH = 1000  # rows one sweep transaction deletes at most
PREFS_RETRY_SECONDS = 10.0


class StanzaId(domish.SerializedXML):
    """The stanza-id this server put on a message, as the XML text it is written as: the stream
    writes it as it is (building and serialising an element for it cost a fifth of routing the
    message), and other features' look at a message's elements passes it by. Told apart by type
    from one that came from outside, so that a message delivered again (XEP-0198's
    unacknowledged stanzas) is neither archived twice nor stripped of its own stamp; whose it is,
    by its text (`stamp_prefix`): a str with an attribute of its own costs a dictionary per
    message."""

    __slots__ = ()


STAMP_PREFIXES_KEPT = 10_000  # owners whose stanza-id's start is kept made (then the lot is dropped)
ADDRESSES_KEPT = 10_000  # addresses whose bare JID and resource are kept (then the lot is dropped)
CLIENT_MESSAGE = f"<message xmlns='{NS_CLIENT}'"




def stanza_text(message: domish.Element) -> str:
    """The message as stored: standalone XML, its namespace declared. A client's message is
    written as its stream would write it, the namespace then put in by hand: escaping the
    namespace URI is a quarter of what `plain_xml` costs for a small message. The stream that
    delivers the message a moment later, stanza-id added, reuses the text (`plain_xml`'s
    *remember*): one serialisation per message instead of two. (`serialization.standalone_client_xml`
    does the same for any stanza; this one, on every archived message's path, is kept to messages:
    made general it cost 1,250 instructions more per routed message.)"""
    if message.uri == NS_CLIENT and message.defaultUri == NS_CLIENT and not message.localPrefixes:
        text = plain_xml(message, NS_CLIENT, CLIENT_STREAM_PREFIXES, remember=True)
        if text is not None and text.startswith("<message"):
            return CLIENT_MESSAGE + text[8:]
    return plain_xml(message, "", ()) or message.toXml()


def _claims(element: domish.Element, owner: str) -> bool:
    """Whether a stanza-id's 'by' names *owner* (as written, or once normalised)."""
    by = element.attributes.get("by")
    if by == owner:
        return True
    try:
        return by is not None and parse_jid(by).full() == owner
    except InvalidFormat:
        return False


class Archive:
    def __init__(self, registry: FeatureRegistry, config: MAMConfig) -> None:
        self.sessions = registry.sessions
        self.clock = registry.clock
        self.seconds = registry.clock.seconds
        self.config = config
        self.writer = ArchiveWriter(registry.sessions.store, registry.clock, config.flush_interval_ms / 1000,
                                    config.flush_rows, config.max_buffered_rows)
        self.prefs: dict[str, Prefs] = {}  # the accounts whose preferences are not the default
        # In a cluster, a change is announced once it is in the store (shared_account_state), and
        # the other nodes read that account's preferences again. The sets made here, counted: a
        # read that a set here overtook is not applied (the set is newer), it is made again.
        self.changed: Callable[[str], Deferred[None] | None] = lambda owner: None
        self.prefs_sets = 0
        self.meanwhile = ChangedMeanwhile()  # the same, for a read of them all (resync_prefs)
        # seq (the archive's order, and the UID's start): schema/007_mam.sql.
        self.low_bits = secrets.randbelow(1024)
        self.last_seq = 0
        self.tag = "-" + secrets.token_hex(4)  # the UID's unpredictable part (XEP-0313 section 3)
        self.leaving: StanzaId | None = None  # the stanza-id to take off a sent message after carbons
        # The last message archived as sent: (message, its stored text, the sender's bare JID and
        # resource), for the recipient's archive when the recipient is local.
        self.last: tuple[domish.Element, str, str, str | None] | None = None
        # The last message _archivable judged, when the judgement did not depend on the account
        # (no stanza-id, no query result in it): a local message is judged for its sender and
        # again, the same way, for its recipient. (message, its children, how many, verdict)
        self.judged: tuple[domish.Element, list[Any], int, bool] | None = None
        self.stamp_prefixes: dict[str, str] = {}
        self.addresses: dict[str, tuple[str, str | None]] = {}  # address text: (bare JID, resource)
        self.sweeper: IDelayedCall | None = None
        self.stopped = False

    # -- archiving, on the message path ---------------------------------------------------------

    def sent(self, session: ClientSession, message: domish.Element) -> None:
        owner = session.bare
        if not self._archivable(message, owner):
            return None
        try:
            peer_bare, peer_resource = self.address(message.attributes["to"])  # the core set it
        except (InvalidFormat, KeyError):
            return None
        text = stanza_text(message)
        # The recipient's archive, if it is a local account's, takes the same text, and the
        # sender as the other party, without parsing the 'from' again (_incoming).
        self.last = (message, text, owner, session.jid.resource)
        uid = self._archive(owner, peer_bare, peer_resource, text)
        writer = self.writer
        if writer.backlog() >= writer.pause_at:  # the store is behind: flow control
            writer.hold(session.stream.reader())
        if uid is None:
            return None
        to_self = peer_bare == owner
        if to_self or len(self.sessions.users.get(owner, ())) > 1:  # someone with access will see it
            stamp = self.stamp(owner, uid)
            message.children.append(stamp)
            if not to_self:
                self.leaving = stamp
        return None

    def leave(self, session: ClientSession, message: domish.Element) -> None:
        """After carbons copied a sent message (with its stanza-id), the message itself goes
        without it: a new list, since the copies share the old one."""
        stamp, self.leaving = self.leaving, None
        children = message.children
        if stamp is not None and children and children[-1] is stamp:
            message.children = children[:-1]
        return None

    def received(self, message: domish.Element, to: JID) -> bool | None:
        owner = to.userhost()
        archivable = self._archivable(message, owner)
        if archivable:
            # An account with no session is archived by `offline`, if the message is kept for it:
            # for one that does not exist it never is, and the store would not take the row.
            if owner in self.sessions.users:
                self._incoming(owner, message)
            return None
        return True if archivable is None else None  # True: a stale query result, dropped

    def offline(self, owner: str, message: domish.Element) -> bool | None:
        archivable = self._archivable(message, owner)
        if archivable:
            self._incoming(owner, message)
        return True if archivable is None else None

    def _incoming(self, owner: str, message: domish.Element) -> None:
        last = self.last
        if last is not None and last[0] is message:
            _, text, peer_bare, resource = last  # sent by a local account, archived as sent just now
            self.last = None
        else:
            try:
                peer_bare, resource = self.address(message.attributes["from"])
            except (InvalidFormat, KeyError):
                return
            text = None
        if peer_bare == owner:
            return  # sent by the account itself: archived as sent
        uid = self._archive(owner, peer_bare, resource, text if text is not None else stanza_text(message))
        if uid is not None:
            prefix = self.stamp_prefixes.get(owner) or self.stamp_prefix(owner)
            # A new list: the old one may be a copy's.
            message.children = [*message.children, StanzaId(prefix + uid + "'/>")]

    def address(self, text: str) -> tuple[str, str | None]:
        """The bare JID and the resource of the address *text*; raises InvalidFormat. Remembered:
        Twisted's JID makes its bare JID anew at each userhost()."""
        known = self.addresses.get(text)
        if known is None:
            jid = parse_jid(text)
            if len(self.addresses) >= ADDRESSES_KEPT:
                self.addresses.clear()
            known = self.addresses[text] = (jid.userhost(), jid.resource)
        return known

    def stamp_prefix(self, owner: str) -> str:
        """The text of *owner*'s stanza-ids up to the id's value."""
        prefix = self.stamp_prefixes.get(owner)
        if prefix is None:
            if len(self.stamp_prefixes) >= STAMP_PREFIXES_KEPT:
                self.stamp_prefixes.clear()
            prefix = self.stamp_prefixes[owner] = f"<stanza-id xmlns='{NS_SID}' by='{escape_attribute(owner)}' id='"
        return prefix

    def stamp(self, owner: str, uid: str) -> StanzaId:
        """The XEP-0359 stanza-id of *owner*'s archive for the message archived as *uid*."""
        return StanzaId(self.stamp_prefix(owner) + uid + "'/>")

    def _archivable(self, message: domish.Element, owner: str) -> bool | None:
        """Section 5.1.1's rules, in one pass over the children; a stanza-id claiming to be
        *owner*'s and not made here is removed on the way (XEP-0359 section 5). False too for a
        message already archived for *owner* (it carries this server's stanza-id). None for one of
        *owner*'s own query results on its way again (below)."""
        children = message.children
        judged = self.judged
        if judged is not None and judged[0] is message and judged[1] is children and judged[2] == len(children):
            return judged[3]
        wanted = message.attributes.get("type", "normal") in ARCHIVED_TYPES
        body = False
        forged = None
        whose = False  # whether the verdict depends on the account (a stanza-id, a query result)
        for child in children:
            if isinstance(child, str):
                if type(child) is StanzaId:
                    if child.startswith(self.stamp_prefix(owner)):
                        return False
                    whose = True
                continue
            uri = child.uri
            if uri == NS_CLIENT:
                if child.name == "body":
                    body = True
            elif uri == NS_SID:
                whose = True
                if child.name == "stanza-id" and _claims(child, owner):
                    forged = [*(forged or ()), child]
            elif uri == NS_HINTS:
                if child.name in NO_STORE:
                    wanted = False
                elif child.name == "store":
                    body = True
            elif uri == NS_MAM and child.name == "result":
                whose = True
                if message.attributes.get("from") == owner:
                    # A result sent to one of the account's sessions, which ended before
                    # acknowledging it: XEP-0198 delivers unacknowledged messages again, and this
                    # one is the answer to a query nobody is waiting for any more (it would
                    # otherwise be kept offline).
                    return None
        if forged:
            message.children = [child for child in message.children if not any(child is f for f in forged)]
            self.last = None
        verdict = wanted and body
        self.judged = None if whose else (message, children, len(children), verdict)
        return verdict

    def _archive(self, owner: str, peer_bare: str, resource: str | None, text: str) -> str | None:
        """Queue the message's row in *owner*'s archive and return its UID; None when the
        account's preferences leave it out or the writer is full."""
        prefs = self.prefs.get(owner)
        if prefs is not None and not self._wanted(owner, prefs, peer_bare, resource):
            return None
        writer = self.writer
        if writer.backlog() >= writer.max_buffered or self.stopped:
            self.sessions.metrics.limit("mam-backlog")
            return None
        seq = (int(self.seconds() * 1_000_000) << 10) | self.low_bits
        if seq <= self.last_seq:
            seq = self.last_seq + 1024  # the same microsecond, or the clock went back
        self.last_seq = seq
        uid = format(seq, "x") + self.tag
        rows = writer.rows
        rows.append((seq, owner, uid, peer_bare, resource or "", text))
        if writer.timer is None or len(rows) >= writer.flush_rows:
            writer.added()
        return uid

    def _wanted(self, owner: str, prefs: Prefs, peer_bare: str, resource: str | None) -> bool:
        """XEP-0441 section 3: the lists first (a bare JID in a list stands for all its
        resources; never wins over always), then the default."""
        full = peer_bare if resource is None else f"{peer_bare}/{resource}"
        if peer_bare in prefs.never or full in prefs.never:
            return False
        if peer_bare in prefs.always or full in prefs.always:
            return True
        if prefs.default != "roster":
            return prefs.default == "always"
        roster = self.sessions.rosters.cached(owner)
        # An account with no session has no roster in memory: its message is kept rather than
        # lost (it is one kept for the account offline anyway).
        return roster is None or peer_bare in roster.items

    # -- queries ---------------------------------------------------------------------------------

    def query(self, iq: domish.Element, owner: str, session: ClientSession | None) -> Any:
        """Section 4: a set queries, a get asks for the form's fields; only the account's own
        clients may (section 7.1: forbidden for anyone else)."""
        if session is None:
            raise StanzaError("forbidden")
        if iq.getAttribute("type") == "get":
            return form()
        config = self.config
        asked = parse_query(iq.firstChildElement(), owner, min(config.default_page_size, config.max_page_size),
                            config.max_page_size)
        d: Deferred[Any] = self.writer.flush()
        d.addCallback(lambda _: self.sessions.store.run_read(partial(archive_sql.query, asked=asked.query)))
        d.addCallback(lambda page: self._send_page(page, session, owner, asked.queryid, asked.flip))
        d.addErrback(_unknown_id)
        return d

    def _send_page(self, page: Page, session: ClientSession, owner: str, queryid: str | None,
                   flip: bool) -> domish.Element:
        rows = reversed(page.rows) if flip else page.rows
        for uid, stamp, stanza in rows:
            session.send(result_message(owner, session.full, queryid, uid, stamp, stanza))
        return fin(page)

    def metadata(self, iq: domish.Element, owner: str, session: ClientSession | None) -> Any:
        """Section 5 (#extended): the first and last message of the archive."""
        if session is None or iq.getAttribute("type") != "get":
            raise StanzaError("forbidden" if session is None else "bad-request")
        d: Deferred[Any] = self.writer.flush()
        d.addCallback(lambda _: self.sessions.store.run_read(partial(archive_sql.metadata, owner=owner)))
        return d.addCallback(_metadata_element)

    def preferences(self, iq: domish.Element, owner: str, session: ClientSession | None) -> Any:
        """XEP-0441 section 4: get the preferences, or set them (the answer holds them as set)."""
        if session is None:
            raise StanzaError("forbidden")
        if iq.getAttribute("type") == "get":
            return prefs_element(self.prefs.get(owner, ALWAYS))
        prefs = parse_prefs(iq.firstChildElement())
        self.prefs_sets += 1
        self.meanwhile.note(owner)
        if prefs == ALWAYS:
            self.prefs.pop(owner, None)
            work = partial(archive_sql.delete_prefs, owner=owner)
        else:
            self.prefs[owner] = prefs
            work = partial(archive_sql.put_prefs, owner=owner, prefs=prefs)
        return self.sessions.store.run(work).addCallback(self._prefs_written, owner, prefs)

    def _prefs_written(self, _: object, owner: str, prefs: Prefs) -> domish.Element | Deferred[domish.Element]:
        """Answered once a cluster's other nodes were told (as blocking's): a message routed by
        another node right after the answer is archived as the new preferences say."""
        told = self.changed(owner)
        answer = prefs_element(prefs)
        return answer if told is None else told.addCallback(lambda _: answer)

    def prefs_changed_elsewhere(self, owner: str) -> None:
        """Another node of the cluster changed the account's preferences: read them again (every
        node holds every account's, as each archives the messages its users send to the account)."""
        self.meanwhile.note(owner)  # this read is newer than a resync's under way
        sets = self.prefs_sets
        read = self.sessions.store.run_read(partial(archive_sql.prefs_of, owner=owner))
        read.addCallbacks(lambda found: self._prefs_read(owner, found, sets),
                          lambda reason: log.failure("mam.prefs_read_failed owner={owner}", reason, owner=owner))

    def resync_prefs(self) -> Deferred[None]:
        """A cluster's node may have missed announcements of changes (its subscriber was away):
        read every account's preferences again and replace those held (one set back to the
        default elsewhere goes too), but for the accounts whose preferences were set here, or
        read again, meanwhile (newer than this read's answer)."""
        def read(stored: dict[str, Prefs], meanwhile: set[str]) -> None:
            for owner in meanwhile:
                if owner in self.prefs:
                    stored[owner] = self.prefs[owner]
                else:
                    stored.pop(owner, None)
            self.prefs = stored
            log.info("mam.prefs_resynced accounts={count}", count=len(stored))

        return self.meanwhile.resync(partial(self.sessions.store.run_read, archive_sql.all_prefs), read)

    def _prefs_read(self, owner: str, found: Prefs | None, sets: int) -> None:
        if sets != self.prefs_sets:  # a set here since the read began may be newer: read again
            self.prefs_changed_elsewhere(owner)
        elif found is None:
            self.prefs.pop(owner, None)
        else:
            self.prefs[owner] = found

    # -- keeping ---------------------------------------------------------------------------------

    def load_prefs(self) -> None:
        """Read every stored preference, once at start; tried again while the store fails (until
        then, the default applies: everything is archived)."""
        d = self.sessions.store.run_read(archive_sql.all_prefs)
        d.addCallbacks(self._loaded, self._load_failed)

    def _load_failed(self, reason: Failure) -> None:
        log.warn("mam.prefs_load_failed reason={reason} (tried again)", reason=reason.getErrorMessage())
        if not self.stopped:
            self.clock.callLater(PREFS_RETRY_SECONDS, self.load_prefs)

    def _loaded(self, stored: dict[str, Prefs]) -> None:
        stored.update(self.prefs)  # what was set while they loaded is newer
        self.prefs = stored

    def sweep(self) -> None:
        """Remove messages older than retention_days, a bounded batch at a time, oldest first."""
        self.sweeper = None
        if self.stopped:
            return
        before = self.clock.seconds() - self.config.retention_days * 86400
        d = self.sessions.store.run(partial(archive_sql.expire, before=before, limit=SWEEP_BATCH))
        d.addCallback(self._swept)
        d.addErrback(self._sweep_failed)

    def _swept(self, removed: int) -> None:
        if removed:
            log.info("mam.expired count={count}", count=removed)
        if not self.stopped:
            self.sweeper = self.clock.callLater(SWEEP_AGAIN_SECONDS if removed >= SWEEP_BATCH else SWEEP_SECONDS,
                                                self.sweep)

    def _sweep_failed(self, reason: Failure) -> None:
        log.failure("mam.sweep_failed", reason)
        self._swept(0)

    def stop(self) -> Deferred[None]:
        """At shutdown: no more timers; what waits is written (the store closes after this)."""
        self.stopped = True
        if self.sweeper is not None and self.sweeper.active():
            self.sweeper.cancel()
        self.sweeper = None
        return self.writer.flush()


def _unknown_id(reason: Failure) -> None:
    reason.trap(UnknownArchiveId)
    raise StanzaError("item-not-found", text="no such message in the archive")


def _metadata_element(ends: tuple[tuple[str, float], tuple[str, float]] | None) -> domish.Element:
    element = domish.Element((NS_MAM, "metadata"))
    if ends is not None:
        for name, (uid, stamp) in zip(("start", "end"), ends, strict=True):
            end = add_element(element, name)
            end["id"], end["timestamp"] = uid, stamp_text(stamp)
    return element


def install(registry: FeatureRegistry) -> None:
    archive = Archive(registry, registry.config.mam)
    registry.hook(MESSAGE_FROM_CLIENT, archive.sent, priority=10)  # before carbons copy it
    registry.hook(MESSAGE_FROM_CLIENT, archive.leave, priority=-10)  # after carbons copied it
    registry.hook(MESSAGE_TO_LOCAL, archive.received, priority=10)  # after blocking, before carbons
    registry.hook(MESSAGE_OFFLINE, archive.offline, priority=10)  # before offline stores it
    registry.account_iq(NS_MAM, "query", archive.query)
    registry.account_iq(NS_MAM, "prefs", archive.preferences)
    archive.changed = registry.shared_account_state("mam-prefs", archive.prefs_changed_elsewhere,
                                                    resync=archive.resync_prefs)
    registry.account_iq(NS_MAM, "metadata", archive.metadata)
    registry.account_disco_feature(NS_MAM)
    registry.account_disco_feature(NS_MAM_EXTENDED)
    # The archives are the accounts', but Profanity (and older clients) look for the feature on the
    # domain's disco#info, as Prosody and ejabberd announce it there too.
    registry.disco_feature(NS_MAM)
    registry.stores("mam_messages", per_account=True, what="the messages an account sent and received (XEP-0313)")
    registry.stores("mam_prefs", per_account=True, what="an account's archiving preferences (XEP-0441)")
    registry.on_stop(archive.stop)
    registry.clock.callLater(0, archive.load_prefs)
    if registry.config.mam.retention_days:
        archive.sweeper = registry.clock.callLater(60, archive.sweep)


FEATURE = Feature("mam", install)
