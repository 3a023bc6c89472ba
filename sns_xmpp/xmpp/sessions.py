"""Bound client sessions of the hosted domains, and delivery to them (RFC 6121 section 8).

`SessionManager` is the Router's route for every hosted domain: stanzas for a
local user arrive at `deliver`, stanzas from a client at `from_client`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError, StreamError
from twisted.words.xish import domish

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.jid import JID, InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.observe.metrics import Metrics
from sns_xmpp.store.interface import IStore
from sns_xmpp.tally import Tally
from sns_xmpp.xmpp import offline
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.presence import PresenceHandler
from sns_xmpp.xmpp.roster import NS_ROSTER, RosterBook
from sns_xmpp.xmpp.stanzas import (
    NS_CLIENT,
    NS_STANZAS,
    append_child,
    empty_result_text,
    error_reply,
    first_child,
    iq_result,
    may_bounce,
)
from sns_xmpp.xmpp.stream_management import NS_SM, StreamManagement

log = GatedLogger()

IQHandler = Callable[[domish.Element], "domish.Element | Deferred | None"]


class BindRefused(Exception):
    def __init__(self, condition: str) -> None:
        super().__init__(condition)
        self.condition = condition


@dataclass(eq=False)
class ClientSession:
    """One bound resource."""

    jid: JID
    stream: ClientStream
    login: LoginResult
    connected_at: float
    available: bool = False
    priority: int = 0
    presence: domish.Element | None = None
    roster_requested: bool = False
    directed: set[str] = field(default_factory=set)  # bounded: presence.MAX_DIRECTED
    directed_chars: int = 0  # the total length of the addresses in directed
    sm: StreamManagement | None = None  # XEP-0198, once the client enables it
    detached: bool = False  # the connection dropped; waiting for a <resume/>
    # The JID's forms, made once: every stanza the session sends or receives uses them.
    bare: str = field(init=False)
    resource: str = field(init=False)
    full: str = field(init=False)

    def __post_init__(self) -> None:
        self.bare = self.jid.userhost()
        self.resource = self.jid.resource or ""
        self.full = self.jid.full()

    def send(self, element: domish.Element | str) -> None:
        """The one way a stanza reaches this session's client: with stream management on, it is
        counted and kept until acknowledged (text: a stored offline message, written as stored)."""
        sm = self.sm
        if sm is None:
            self.stream.send(element)
            return
        if self.detached:  # kept in sm.unacked for the resumption, its size counted all the same
            size = len(element) if isinstance(element, str) else len(self.stream.serialize(element))
        else:
            size = self.stream.send(element)
        if not sm.sending(element, size):
            self.stream.fail(StreamError("policy-violation", text="too many unacknowledged stanzas"))
            return
        if not self.detached and sm.wants_request():
            self.stream.send(domish.Element((NS_SM, "r")))


def _sm_failed(condition: str) -> domish.Element:
    failed = domish.Element((NS_SM, "failed"))
    failed.addElement((NS_STANZAS, condition))
    return failed


class SessionManager:
    def __init__(self, domains: Sequence[str], store: IStore, clock: IReactorTime,
                 route: Callable[[domish.Element], Deferred[None] | None], metrics: Metrics | None = None,
                 max_resources: int = 10, resume_timeout: int = 300, max_offline: int = 1000,
                 max_offline_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_offline = max_offline
        # Offline storage is also bounded in size: delivered at once at login, it must fit well
        # within the outbound bound of the stream it goes to (c2s max_outbound_bytes).
        self.max_offline_bytes = max_offline_bytes
        self.offline_writes = Tally()  # offline writes in flight, by sender (see offline)
        self.resume_timeout = resume_timeout
        self.resumable: dict[str, ClientSession] = {}
        self.max_resources = max_resources
        self.metrics = metrics or Metrics()
        self.domains = frozenset(domains)
        self.store = store
        self.clock = clock
        self.route = route
        self.rosters = RosterBook(store)
        self.presence = PresenceHandler(self)
        self.users: dict[str, dict[str, ClientSession]] = {}
        # Server IQ handlers by the namespace of the IQ's child, filled by the feature modules
        # (xmpp/features).
        # By (namespace, element name) of the IQ's payload: a known namespace on another element
        # is no request this server understands.
        self.iq_handlers: dict[tuple[str, str], IQHandler] = {}
        self._push_counter = 0

    # -- the registry ------------------------------------------------------

    def resources(self, bare: str) -> list[ClientSession]:
        return list(self.users.get(bare, {}).values())

    def available(self, bare: str) -> list[ClientSession]:
        return [s for s in self.users.get(bare, {}).values() if s.available]

    def message_targets(self, bare: str) -> list[ClientSession]:
        """The resources a message to the bare JID goes to (RFC 6121 8.5.2.1.1: non-negative priority)."""
        return [s for s in self.users.get(bare, {}).values() if s.available and s.priority >= 0]

    def session(self, full: JID) -> ClientSession | None:
        return self.users.get(full.userhost(), {}).get(full.resource or "")

    def all_sessions(self) -> list[ClientSession]:
        return [s for resources in self.users.values() for s in resources.values()]

    def bind(self, stream: ClientStream, login: LoginResult, requested: str) -> Deferred:
        resource = requested or secrets.token_hex(6)
        try:
            full = parse_jid(f"{login.jid}/{resource}")
        except InvalidFormat:
            return defer.fail(BindRefused("bad-request"))
        resource = full.resource or ""

        def loaded(roster: object) -> str:
            if stream.closed:
                raise BindRefused("not-allowed")
            replaced = self.users.get(login.jid, {}).get(resource)
            if replaced is None and len(self.users.get(login.jid, {})) >= self.max_resources:
                self.metrics.limit("resources-per-account")
                raise BindRefused("resource-constraint")
            if replaced is not None:
                self._unbind(replaced, keep_roster=True)
                replaced.stream.fail(StreamError("conflict", text="replaced by a new session"))
            resources = self.users.setdefault(login.jid, {})
            session = ClientSession(full, stream, login, self.clock.seconds())
            stream.bound = True
            resources[resource] = session
            self._attach(session, stream)
            log.info("c2s.bound jid={jid} peer={peer}", jid=full.full(), peer=stream.peer)
            return full.full()

        return self.rosters.get(login.jid).addCallback(loaded)

    def _attach(self, session: ClientSession, stream: ClientStream) -> None:
        session.stream = stream
        stream.bound = True
        stream.element_handler = lambda element: self.from_client(session, element)
        stream.send_stanza = session.send  # the stream's own stanzas (idle ping, error answers) count too
        stream.on_close.append(lambda: self._connection_lost(session, stream))

    def _connection_lost(self, session: ClientSession, stream: ClientStream) -> None:
        if session.stream is not stream:
            return  # an old connection of a resumed session
        sm = session.sm
        if sm is not None and sm.resume_id is not None and stream.ended_by is None:
            # Dropped, not closed: keep the session for a <resume/> (XEP-0198).
            session.detached = True
            sm.detached_timer = self.clock.callLater(sm.max_seconds, self._unbind, session)
            log.info("c2s.detached jid={jid}", jid=session.full)
            return
        self._unbind(session)

    def resume(self, stream: ClientStream, login: LoginResult, previd: str, h: int) -> None:
        """Answer a <resume/> on *stream*: <resumed/> with the session back on it, or <failed/>
        (after which the client may bind a new session)."""
        session = self.resumable.get(previd)
        if session is None or session.login.jid != login.jid or session.sm is None:
            stream.send(_sm_failed("item-not-found"))
            return
        sm = session.sm
        if not sm.acknowledged(h):
            stream.send(_sm_failed("undefined-condition"))
            return
        if sm.detached_timer is not None and sm.detached_timer.active():
            sm.detached_timer.cancel()
        old = session.stream
        session.detached = False
        sm.stream = stream
        self._attach(session, stream)
        if not old.closed:
            old.fail(StreamError("conflict", text="the session was resumed elsewhere"))
        resumed = domish.Element((NS_SM, "resumed"))
        resumed["previd"] = previd
        resumed["h"] = str(sm.handled % 2**32)
        stream.send(resumed)
        for stanza in list(sm.unacked):
            stream.send(stanza)
        log.info("c2s.resumed jid={jid}", jid=session.full)

    def _unbind(self, session: ClientSession, keep_roster: bool = False) -> None:
        resources = self.users.get(session.bare)
        if resources is None or resources.get(session.resource) is not session:
            return
        sm, session.sm = session.sm, None
        if sm is not None:
            if sm.detached_timer is not None and sm.detached_timer.active():
                sm.detached_timer.cancel()
            if sm.resume_id is not None:
                self.resumable.pop(sm.resume_id, None)
        if session.available:
            unavailable = domish.Element((None, "presence"))
            unavailable["type"] = "unavailable"
            unavailable["from"] = session.full
            self.presence.broadcast(session, unavailable)
        del resources[session.resource]
        if not resources:
            del self.users[session.bare]
            if not keep_roster:
                self.rosters.forget(session.bare)
        if sm is not None:
            # Never acknowledged, so maybe never seen: deliver again (other resources or offline).
            for stanza in sm.unacked:
                if isinstance(stanza, str):
                    offline.put_back(self, session.bare, stanza)  # an offline message, stored again
                elif stanza.name == "message" and stanza.getAttribute("type", "normal") in ("normal", "chat"):
                    self.deliver(stanza)

    # -- stanzas from a bound client ---------------------------------------

    def from_client(self, session: ClientSession, stanza: domish.Element) -> None:
        if stanza.uri == NS_SM:
            self._stream_management(session, stanza)
            return
        if stanza.uri != NS_CLIENT or stanza.name not in ("message", "presence", "iq"):
            session.stream.fail(StreamError("unsupported-stanza-type"))
            return
        if session.sm is not None:
            session.sm.process(lambda: self._from_client(session, stanza))
        else:
            self._from_client(session, stanza)

    def _stream_management(self, session: ClientSession, element: domish.Element) -> None:
        sm = session.sm
        if element.name == "enable" and sm is None:
            resumable = element.getAttribute("resume") in ("true", "1")
            sm = session.sm = StreamManagement(session.stream, resumable, self.resume_timeout)
            if sm.resume_id is not None:
                self.resumable[sm.resume_id] = session
            session.stream.send(sm.enabled_element())
        elif element.name == "r" and sm is not None:
            sm.request()
        elif element.name == "a" and sm is not None:
            try:
                fine = sm.acknowledged(int(element.getAttribute("h", "")))
            except ValueError:
                fine = False
            if not fine:
                session.stream.fail(StreamError("undefined-condition", text="handled count too high"))
        else:
            session.stream.send(_sm_failed("unexpected-request"))

    def _from_client(self, session: ClientSession, stanza: domish.Element) -> Deferred[None] | None:
        """Handle a client's stanza; a Deferred when its handling finishes later (an offline
        message's write), which stream management waits for before counting it handled."""
        stanza["from"] = session.full  # RFC 6120 8.1.2.1: the server stamps the sender
        to = stanza.getAttribute("to")
        if to is not None:
            try:
                target = parse_jid(to)
            except InvalidFormat:
                if may_bounce(stanza):
                    reply = error_reply(stanza, "jid-malformed")
                    reply.attributes.pop("from", None)
                    session.send(reply)
                return None
        if stanza.name == "presence":
            self.presence.outbound(session, stanza)
            return None
        if stanza.name == "iq":
            if to is None or target.full() in (session.bare, session.jid.host):
                self.answer_iq(stanza, session)
                return None
            return self.route(stanza)
        if to is None:
            stanza["to"] = session.bare
        return self.route(stanza)

    # -- stanzas for local addresses (the Router's route) -------------------

    def deliver(self, stanza: domish.Element) -> Deferred[None] | None:
        """Deliver to a local address; a Deferred when that finishes later (see _from_client)."""
        try:
            to = parse_jid(stanza.getAttribute("to", ""))
        except InvalidFormat:
            return None
        if to.host not in self.domains:
            return None
        if to.user is None:
            if stanza.name == "iq" and to.resource is None:
                self.answer_iq(stanza, None)
            elif stanza.name != "presence" and may_bounce(stanza):
                self.route(error_reply(stanza, "service-unavailable"))
            return None
        if stanza.name == "message":
            return self._deliver_message(stanza, to)
        if stanza.name == "presence":
            self.presence.inbound(stanza, to)
        elif stanza.name == "iq":
            self._deliver_iq(stanza, to)
        return None

    def _deliver_message(self, stanza: domish.Element, to: JID) -> Deferred[None] | None:
        kind = stanza.getAttribute("type", "normal")
        bare = to.userhost()
        if to.resource is not None:
            session = self.session(to)
            if session is not None:
                session.send(stanza)
                return None
            if kind == "groupchat":
                self._bounce(stanza, "service-unavailable")
            if kind in ("groupchat", "error"):
                return None
        if kind == "error":
            return None
        targets = self.message_targets(bare)
        if targets and kind != "groupchat":
            for session in targets:
                session.send(stanza)
            return None
        if kind == "headline":
            return None
        if kind == "groupchat":
            self._bounce(stanza, "service-unavailable")
            return None
        return offline.store_for_later(self, bare, stanza)

    def _deliver_iq(self, stanza: domish.Element, to: JID) -> None:
        if to.resource is not None:
            session = self.session(to)
            if session is not None:
                session.send(stanza)
            else:
                self._bounce(stanza, "service-unavailable")
            return
        self._bounce(stanza, "service-unavailable")

    def _bounce(self, stanza: domish.Element, condition: str) -> None:
        if may_bounce(stanza) and stanza.getAttribute("from"):
            self.route(error_reply(stanza, condition))

    # -- IQs the server answers ---------------------------------------------

    def answer_iq(self, iq: domish.Element, session: ClientSession | None) -> None:
        kind = iq.getAttribute("type")
        if kind in ("result", "error"):
            return
        child = first_child(iq)
        if kind not in ("get", "set") or child is None or iq.getAttribute("id") is None:
            self._reply(iq, session, StanzaError("bad-request").toResponse(iq))
            return
        if child.uri == NS_ROSTER:
            if session is None:
                self._reply(iq, session, StanzaError("service-unavailable").toResponse(iq))
                return
            self._reply_later(iq, session, self.presence.roster_iq(session, iq, child))
            return
        handler = self.iq_handlers.get((child.uri or "", child.name))
        if handler is None or (session is not None and iq.getAttribute("to") == session.bare
                               and child.uri != NS_SESSION_LEGACY):
            self._reply(iq, session, StanzaError("service-unavailable").toResponse(iq))
            return
        # Most handlers answer at once (the legacy session of every login among them): no Deferred then.
        try:
            outcome = handler(iq)
        except Exception:
            self._refused(iq, session, Failure())
            return
        if isinstance(outcome, Deferred):
            self._reply_later(iq, session, outcome)
        else:
            self._answered(iq, session, outcome)

    def _reply_later(self, iq: domish.Element, session: ClientSession | None, d: Deferred) -> None:
        d.addCallbacks(lambda payload: self._answered(iq, session, payload),
                       lambda reason: self._refused(iq, session, reason))

    def _answered(self, iq: domish.Element, session: ClientSession | None, payload: domish.Element | None) -> None:
        if payload is None and session is not None and session.sm is None:
            # The usual empty result (the legacy session of every login, pings) as text: what
            # building iq_result and serialising it would write, without either.
            session.stream.send(empty_result_text(iq))
            return
        result = iq_result(iq)
        if payload is not None:
            append_child(result, payload)
        self._reply(iq, session, result)

    def _refused(self, iq: domish.Element, session: ClientSession | None, reason: Failure) -> None:
        if isinstance(reason.value, StanzaError):
            self._reply(iq, session, reason.value.toResponse(iq))
        else:
            log.failure("iq.handler_failed", reason)
            self._reply(iq, session, StanzaError("internal-server-error").toResponse(iq))

    def _reply(self, iq: domish.Element, session: ClientSession | None, reply: domish.Element) -> None:
        if session is not None:
            if iq.getAttribute("to") is None:
                reply.attributes.pop("from", None)
            session.send(reply)
        elif reply.getAttribute("to"):
            self.route(reply)

    def next_push_id(self) -> str:
        self._push_counter += 1
        return f"push{self._push_counter}"


NS_SESSION_LEGACY = "urn:ietf:params:xml:ns:xmpp-session"
