"""Stanzas between nodes: one Redis Stream per node, read by that node with acknowledgements.

A stanza for a resource on another node is added (XADD) to that node's stream; the Deferred the
sender's delivery returns fires once Redis has it, so XEP-0198 acknowledges the sender's message
only once it is queued for the recipient's node. The node reads its stream in a consumer group
(XREADGROUP) and acknowledges (XACK) each entry once it has handed the stanza to the session, or
delivered it as RFC 6121 says when the resource is gone. What a dead node left unread is taken by
one live node (node.py) and delivered the same way: to the account's other resources, or to
offline storage.

The stanzas a reactor round forwards to one node travel as one entry (KIND_BATCH),
added once the round's events are dispatched: one XADD, one reply and one entry to read and
acknowledge for the lot instead of one each. A stanza's sender is acknowledged when its entry's
XADD returns, as before. Any other entry for that node first sends the node's waiting batch, so
that the node takes them in the order they were made.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.words.xish import domish

from sns_xmpp.cluster.keys import INBOX_GROUP, Keys
from sns_xmpp.cluster.redis_link import reply_pairs, reply_text
from sns_xmpp.cluster.remote_session import RemoteSession
from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.reactors import at_round_end
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.hooks import PRESENCE_FROM_NODE
from sns_xmpp.xmpp.serialization import standalone_client_xml
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import parse_stanza

log = GatedLogger()

READ_BATCH = 256
BLOCK_MS = 1000
ADD_RETRIES = 2
MAX_INBOX_ENTRIES = 1_000_000  # approximate cap (XADD MAXLEN ~): a node gone for long cannot fill Redis
KIND_STANZA = "s"  # a stanza for one full JID
KIND_REPLACE = "r"  # the resource was bound again on another node: end this one (conflict)
KIND_DELIVER = "d"  # a stanza to deliver as if it had arrived here (RFC 6121 rules, hooks and all)
KIND_ROUTE = "e"  # a stanza for an entity this node holds the lease of (a MUC room): to the router
KIND_STORED = "m"  # another node stored messages for this account: deliver its stored ones again here
KIND_BATCH = "b"  # stanzas for full JIDs, KIND_STANZA each: full JID, NUL, stanza, NUL, full JID, ...
# NUL separates: no JID and no XML text can hold one (XML 1.0 forbids U+0000 even as a reference),
# and splitting on it is done in C without the escaping JSON needs.
SEPARATOR = "\x00"
KIND_RESUME = "q"  # a <resume/> for a session this node holds: hand it over (cluster/resumption.py)
KIND_SESSION = "h"  # a session handed over for a <resume/> this node got (or none: empty)
BATCH_STANZAS = 256  # a batch this long is added at once rather than at the end of the round
BATCH_CHARS = 256 * 1024  # nor is one holding this much stanza text
MAX_HOPS = 3  # a stanza for a leased entity passed on this often is dropped (leases in flux)


class _Batch:
    """The stanzas waiting for one node in this reactor round, and their senders' Deferreds."""

    __slots__ = ("items", "waiters", "chars")

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.waiters: list[Deferred[None]] = []
        self.chars = 0


class Inbox:
    def __init__(self, node: str, keys: Keys, commands: Any, reader: Any, sessions: SessionManager,
                 clock: IReactorTime) -> None:
        self.node = node
        self.keys = keys
        self.commands = commands
        self.reader = reader
        self.sessions = sessions
        self.clock = clock
        self.running = False
        self.on_replace: Callable[[str, str], None] = lambda full, by: None
        self.route: Callable[[domish.Element], object] | None = None  # the router's, for KIND_ROUTE
        self.on_stored: Callable[[str], None] = lambda owner: None  # KIND_STORED's account
        self.batches: dict[str, _Batch] = {}  # node -> the stanzas for it this round
        self._flush_scheduled = False
        # XEP-0198 resumption across nodes (cluster/resumption.py): the holder's side, the asker's side.
        self.on_resume: Callable[[dict[str, str]], None] = lambda fields: None
        self.on_session: Callable[[dict[str, str]], None] = lambda fields: None
        # Full JIDs of sessions being bound here after a hand-over: their stanzas wait till then.
        self.arriving: dict[str, list[dict[str, str]]] = {}
        self._presence_from_node = sessions.hooks.chain(PRESENCE_FROM_NODE)  # (filled in place)

    # -- sending -------------------------------------------------------------

    def forward(self, node: str, full: str, element: domish.Element | str) -> Deferred[None]:
        text = element if isinstance(element, str) else standalone_client_xml(element)
        # What this node just wrote to the account's roster is on disk before the other node
        # sees the stanza (a subscription request, a roster push): its answer reads it there.
        settled = self.sessions.rosters.settled(full.split("/", 1)[0])
        if settled is not None:
            return settled.addCallback(lambda _: self._forward_text(node, full, text))
        return self._forward_text(node, full, text)

    def _forward_text(self, node: str, full: str, text: str) -> Deferred[None]:
        batch = self.batches.get(node)
        if batch is None:
            batch = self.batches[node] = _Batch()
            if not self._flush_scheduled:
                self._flush_scheduled = True
                at_round_end(self.clock, self.flush_batches)
        batch.items.append((full, text))
        batch.chars += len(text)
        waiter: Deferred[None] = Deferred()
        batch.waiters.append(waiter)
        if len(batch.items) >= BATCH_STANZAS or batch.chars >= BATCH_CHARS:
            self._send_batch(node)
        return waiter

    def flush_batches(self) -> None:
        """Add every node's waiting batch (at the end of the reactor round)."""
        self._flush_scheduled = False
        for node in list(self.batches):
            self._send_batch(node)

    def _send_batch(self, node: str) -> None:
        batch = self.batches.pop(node, None)
        if batch is None:
            return
        if len(batch.items) == 1:
            full, text = batch.items[0]
            kind, args = KIND_STANZA, (full, text)
        else:
            kind, args = KIND_BATCH, ("", SEPARATOR.join(chain.from_iterable(batch.items)))
        added = self._add(node, kind, *args)
        # A command in flight when the connection to Redis drops fails; one made while it is down
        # waits for the reconnection. So try again, twice, before the stanzas are given up (and
        # counted as handled for XEP-0198: the sender's client has them to resend only till then).
        for _ in range(ADD_RETRIES):
            added.addErrback(lambda reason: self._add(node, kind, *args))
        added.addErrback(self._lost, node)
        added.addCallback(_fire, batch.waiters)

    def _lost(self, reason: Any, node: str) -> None:
        log.warn("cluster.stanza_lost node={node} error={error}", node=node, error=str(reason.value))

    def hand_over(self, node: str, element: domish.Element) -> Deferred[None]:
        """Have *node* deliver *element* (to one of its accounts, whose state it holds)."""
        return self._add(node, KIND_DELIVER, element.getAttribute("to", ""), element.toXml())

    def hand_over_route(self, node: str, element: domish.Element) -> Deferred[None]:
        """Have *node*, which holds the lease of *element*'s entity, route it there."""
        # (Not getattr: domish.Element answers any unknown attribute with a child's lookup.)
        hops = int(vars(element).get("cluster_hops", 0)) + 1
        return self._add(node, KIND_ROUTE, element.getAttribute("to", ""), element.toXml(), str(hops))

    def nudge(self, node: str, owner: str) -> Deferred[None]:
        """Have *node* deliver the stored messages of *owner* to its resource there."""
        return self._add(node, KIND_STORED, owner, "")

    def ask_resume(self, node: str, owner: str, previd: str, reply_to: str) -> Deferred[None]:
        """Ask *node* for the session *owner* resumes with *previd* (answered with KIND_SESSION)."""
        return self._add(node, KIND_RESUME, owner, previd, reply_to)

    def send_session(self, node: str, full: str, state: str, token: str) -> Deferred[None]:
        """The answer to *node*'s KIND_RESUME: the session's state, or "" when there is none.
        Stanzas for the resource forwarded after it follow it in the stream, so they find it."""
        return self._add(node, KIND_SESSION, full, state, token)

    def replace(self, node: str, full: str) -> None:
        self._add(node, KIND_REPLACE, full, "", self.node).addErrback(
            lambda reason: log.failure("cluster.replace_failed node={node}", reason, node=node))

    def _add(self, node: str, kind: str, full: str, text: str, by: str = "") -> Deferred[None]:
        if kind != KIND_STANZA and kind != KIND_BATCH and node in self.batches:
            self._send_batch(node)  # what was forwarded to the node before this goes first
        added: Deferred[Any] = self.commands.execute_command(
            "XADD", self.keys.inbox(node), "MAXLEN", "~", MAX_INBOX_ENTRIES, "*", "k", kind, "t", full, "x", text,
            "o", by)
        return added.addCallback(lambda _: None)

    # -- reading -------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Make the group (from the stream's first entry: the stream holds only what no node has
        handled, as handled entries are deleted; or where this node left it), then read: first
        what was read before and not acknowledged (a restart of this node), then new entries."""
        self.running = True
        made: Deferred[Any] = self.commands.execute_command(
            "XGROUP", "CREATE", self.keys.inbox(self.node), INBOX_GROUP, "0", "MKSTREAM")
        made.addErrback(lambda reason: None)  # BUSYGROUP: it exists
        return made.addCallback(lambda _: self._read("0"))

    def stop(self) -> None:
        self.running = False
        self.flush_batches()  # what this round forwarded goes before the connection does

    def _read(self, start: str) -> None:
        if not self.running:
            return
        read: Deferred[Any] = self.reader.execute_command(
            "XREADGROUP", "GROUP", INBOX_GROUP, self.node, "COUNT", READ_BATCH, "BLOCK", BLOCK_MS,
            "STREAMS", self.keys.inbox(self.node), start)

        def got(reply: Any) -> None:
            entries = _entries(reply)
            if entries:
                self._handle(entries)
            # Pending entries (start "0") are read until none is left; then new ones (">").
            self._read(start if start == "0" and entries else ">")

        def failed(reason: Any) -> None:
            if not self.running:
                return  # stopping: the read was cut short on purpose
            if "NOGROUP" in str(reason.value):  # Redis lost the stream (a restart without its data)
                self.start()
                return
            log.warn("cluster.inbox_read_failed error={error}", error=str(reason.value))
            self.clock.callLater(1.0, self._read, start)

        read.addCallbacks(got, failed)

    def _handle(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        done = []
        for entry_id, fields in entries:
            try:
                self.take(fields)
            except Exception:
                log.failure("cluster.inbox_entry_failed")
            done.append(entry_id)
        # Acknowledged, then deleted: the stream holds only what this node has not handled yet,
        # which is what another node delivers if this one dies (`reclaim`).
        key = self.keys.inbox(self.node)
        self.commands.execute_command("XACK", key, INBOX_GROUP, *done).addCallback(
            lambda _: self.commands.execute_command("XDEL", key, *done)).addErrback(
            lambda reason: log.warn("cluster.ack_failed error={error}", error=str(reason.value)))

    def take(self, fields: dict[str, str]) -> None:
        """Hand one entry to its session, or deliver it as RFC 6121 says when the resource is gone."""
        full, kind = fields.get("t", ""), fields.get("k")
        if kind == KIND_BATCH:
            parts = (fields.get("x") or "").split(SEPARATOR)
            for item_full, item_text in zip(parts[::2], parts[1::2], strict=False):
                try:
                    self._take_stanza(item_full, item_text)
                except Exception:
                    log.failure("cluster.inbox_entry_failed")
            return
        if kind == KIND_REPLACE:
            self.on_replace(full, fields.get("o", ""))
            return
        if kind == KIND_STORED:
            self.on_stored(full)
            return
        text = fields.get("x", "")
        if kind == KIND_ROUTE:
            stanza = parse_stanza(text)
            hops = int(fields.get("o") or 0)
            if stanza is None or self.route is None or hops > MAX_HOPS:
                log.warn("cluster.route_dropped to={to} hops={hops}", to=full, hops=hops)
                return
            stanza.cluster_hops = hops  # type: ignore[attr-defined]
            self.route(stanza)
            return
        if kind == KIND_RESUME:
            self.on_resume(fields)
            return
        if kind == KIND_SESSION:
            self.on_session(fields)
            return
        if kind == KIND_DELIVER:
            stanza = parse_stanza(text)
            if stanza is not None:
                self.sessions.deliver(stanza)
            return
        self._take_stanza(full, text, int(fields.get("o") or 0))

    def _take_stanza(self, full: str, text: str, hops: int = 0) -> None:
        held = self.arriving.get(full)
        if held is not None:
            held.append({"k": KIND_STANZA, "t": full, "x": text, "o": str(hops)})
            return
        try:
            session = self.sessions.session(parse_jid(full))
        except InvalidFormat:
            return
        if session is not None and not session.remote:
            if text.startswith("<presence") and self._presence_from_node:
                self._presence_seen(session, text)
            elif text.startswith("<iq") and self.sessions.hooks.responses and self._awaited(text):
                return
            session.send(text)
            return
        if isinstance(session, RemoteSession) and hops < MAX_HOPS:
            # The resource is on another node now (resumed there, or bound again): the stanza
            # follows it as it was, its delivery's hooks (archive, carbons) done where it was sent,
            # after what this round forwarded there already.
            if session.node in self.batches:
                self._send_batch(session.node)
            self._add(session.node, KIND_STANZA, full, text, str(hops + 1)).addErrback(self._lost, session.node)
            return
        stanza = parse_stanza(text)
        if stanza is None:
            return
        if stanza.getAttribute("to") == full and stanza.name == "message":
            self.sessions.deliver(stanza)  # the resource is gone: its account's others, or offline
        elif stanza.name == "message" and stanza.getAttribute("type") != "groupchat":
            stanza["to"] = full.split("/", 1)[0]  # sent to the bare JID: deliver to the bare JID again
            self.sessions.deliver(stanza)

    def _presence_seen(self, session: ClientSession, text: str) -> None:
        """PRESENCE_FROM_NODE: the features that learn from the presences an account receives
        (the caps feature: who sees what, for PEP) learn from those another node routed too."""
        presence = parse_stanza(text)
        if presence is None:
            return
        for handler in self._presence_from_node:
            try:
                handler(session, presence)
            except Exception:  # (the presence still reaches the client)
                log.failure("cluster.presence_handler_failed jid={jid}", jid=session.full)

    def _awaited(self, text: str) -> bool:
        """Whether *text* is the answer to an IQ this node sent from a local full JID (the caps
        feature's disco#info to another node's resource): handed to what awaits it, not to the
        client."""
        iq = parse_stanza(text)
        if iq is None or iq.getAttribute("type") not in ("result", "error"):
            return False
        awaited = self.sessions.hooks.responses.pop((iq.getAttribute("from", ""), iq.getAttribute("id", "")), None)
        if awaited is None:
            return False
        awaited(iq)
        return True

    def reclaim(self, dead: str) -> Deferred[int]:
        """Deliver what a dead node's stream still holds (read or not), then drop the stream."""
        key = self.keys.inbox(dead)
        read: Deferred[Any] = self.commands.execute_command("XRANGE", key, "-", "+")

        def deliver(reply: Any) -> Deferred[int]:
            entries = _entry_list(reply)
            for _, fields in entries:
                # (A session handed over to the dead node is bound here and ended: its unacknowledged
                # messages go to the account's other resources or offline, as after a timeout.)
                if fields.get("k") in (KIND_STANZA, KIND_BATCH, KIND_SESSION):
                    try:
                        self.take(fields)
                    except Exception:
                        log.failure("cluster.reclaim_entry_failed")
            dropped: Deferred[Any] = self.commands.execute_command("DEL", key)
            return dropped.addCallback(lambda _: len(entries))

        return read.addCallback(deliver)


def _fire(result: object, waiters: list[Deferred[None]]) -> None:
    for waiter in waiters:
        waiter.callback(None)


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """XREADGROUP's reply for one stream: [[stream, [[id, [f, v, ...]], ...]]], or None."""
    if not reply:
        return []
    return _entry_list(reply[0][1])


def _entry_list(raw: Any) -> list[tuple[str, dict[str, str]]]:
    # (An entry deleted while pending has no fields: None, read as {}.)
    return [(reply_text(entry_id), reply_pairs(flat)) for entry_id, flat in raw or []]


