"""The session core: bound client sessions of the hosted domains, and delivery to them.

`SessionManager` is the Router's route for every hosted domain: stanzas for a local address
arrive at `deliver`, stanzas from a bound client at `from_client`. It keeps the registry of
sessions, binds and unbinds them, applies RFC 6121 section 8's delivery rules and answers the
IQs the feature modules registered. Everything else (presence, offline storage, stream
management, roster IQs, disco...) is a feature module in `xmpp/features/`, which the core reaches
only through its `hooks` (xmpp/hooks.py); the core knows none of them by name.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Sequence
from typing import Any

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
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.hooks import (
    IQ_FROM_CLIENT,
    IQ_TO_LOCAL,
    MESSAGE_FROM_CLIENT,
    MESSAGE_OFFLINE,
    MESSAGE_TO_LOCAL,
    PRESENCE_FROM_CLIENT,
    PRESENCE_TO_LOCAL,
    SESSION_ARRIVED,
    SESSION_BOUND,
    SESSION_CONNECTION_LOST,
    SESSION_LEAVING,
    SESSION_UNBOUND,
    Hooks,
    run,
)
from sns_xmpp.xmpp.roster import RosterBook
from sns_xmpp.xmpp.stanzas import (
    NS_CLIENT,
    append_child,
    empty_result_text,
    error_reply,
    first_child,
    iq_result,
    may_bounce,
)

log = GatedLogger()


class BindRefused(Exception):
    def __init__(self, condition: str) -> None:
        super().__init__(condition)
        self.condition = condition


class SessionManager:
    def __init__(self, domains: Sequence[str], store: IStore, clock: IReactorTime,
                 route: Callable[[domish.Element], Deferred[None] | None], metrics: Metrics | None = None,
                 max_resources: int = 10) -> None:
        self.max_resources = max_resources
        self.metrics = metrics or Metrics()
        self.domains = frozenset(domains)
        self.store = store
        self.clock = clock
        self.route = route
        # The rosters are the core's, as in Prosody's rostermanager: loaded at bind, read by
        # presence, roster IQs and delivery alike.
        self.rosters = RosterBook(store)
        self.users: dict[str, dict[str, ClientSession]] = {}
        self.hooks = Hooks()
        # The chains read for every stanza, held directly: the lists are filled in place.
        self._message_from_client = self.hooks.chain(MESSAGE_FROM_CLIENT)
        self._message_to_local = self.hooks.chain(MESSAGE_TO_LOCAL)
        self._message_offline = self.hooks.chain(MESSAGE_OFFLINE)
        self._presence_from_client = self.hooks.chain(PRESENCE_FROM_CLIENT)
        self._presence_to_local = self.hooks.chain(PRESENCE_TO_LOCAL)
        self._iq_from_client = self.hooks.chain(IQ_FROM_CLIENT)
        self._iq_to_local = self.hooks.chain(IQ_TO_LOCAL)
        self._session_bound = self.hooks.chain(SESSION_BOUND)
        # Called after each stanza from a bound client has been handled (the cluster publishes
        # what the stanza changed of the session: presence, priority, roster request).
        self.after_client_stanza: list[Callable[[ClientSession], None]] = []
        # True once this node is one of a cluster: `users` then holds other nodes' resources too.
        self.clustered = False

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

    def local_resources(self, bare: str) -> list[ClientSession]:
        """The account's resources bound to this node (in a cluster, `resources` has the others' too)."""
        return [s for s in self.users.get(bare, {}).values() if not s.remote]

    def all_sessions(self) -> list[ClientSession]:
        """The sessions bound to this node."""
        return [s for resources in self.users.values() for s in resources.values() if not s.remote]

    def roster_of_account(self, owner: str) -> Deferred:
        """Fire with the roster of an existing account, or None for an unknown one."""
        if owner in self.users:  # bound, so it exists
            return self.rosters.get(owner)
        return self.store.account_exists(owner).addCallback(lambda found: self.rosters.get(owner) if found else None)

    # -- binding -----------------------------------------------------------

    def bind(self, stream: ClientStream, login: LoginResult, requested: str) -> Deferred:
        resource = requested or secrets.token_hex(6)
        try:
            full = parse_jid(f"{login.jid}/{resource}")
        except InvalidFormat:
            return defer.fail(BindRefused("bad-request"))
        resource = full.resource or ""
        if not resource:
            # Resourceprep mapped every character to nothing (U+200B, say): RFC 7622 allows no empty
            # resourcepart, and a session bound as the bare JID never got its answers (RFC 6120 7.7.2.1).
            return defer.fail(BindRefused("bad-request"))

        def loaded(roster: object) -> str:
            if stream.closed:
                raise BindRefused("not-allowed")
            replaced = self.users.get(login.jid, {}).get(resource)
            if replaced is None and len(self.users.get(login.jid, {})) >= self.max_resources:
                self.metrics.limit("resources-per-account")
                raise BindRefused("resource-constraint")
            if replaced is not None:
                if replaced.remote:
                    del self.users[login.jid][resource]  # its node ends it (RFC 6120 7.7.2.2)
                else:
                    self.unbind(replaced, replaced=True)
                replaced.stream.fail(StreamError("conflict", text="replaced by a new session"))
            resources = self.users.setdefault(login.jid, {})
            session = ClientSession(full, stream, login, self.clock.seconds())
            resources[resource] = session
            self.attach(session, stream)
            log.info("c2s.bound jid={jid} peer={peer}", jid=full.full(), peer=stream.peer)
            if self._session_bound:
                run(self._session_bound, session)
            return full.full()

        return self.rosters.get(login.jid).addCallback(loaded)

    def attach(self, session: ClientSession, stream: ClientStream) -> None:
        """Make *stream* the session's connection (at bind, and again at a XEP-0198 resumption)."""
        session.stream = stream
        stream.bound = True
        stream.element_handler = lambda element: self.from_client(session, element)
        stream.send_stanza = session.send  # the stream's own stanzas (idle ping, error answers) count too
        stream.on_close.append(lambda: self._connection_lost(session, stream))

    def _connection_lost(self, session: ClientSession, stream: ClientStream) -> None:
        if session.stream is not stream:
            return  # an old connection of a resumed session
        if stream.ended_by is None and self.hooks.fire(SESSION_CONNECTION_LOST, session, stream) is not None:
            return  # dropped, not closed, and kept for a resumption
        self.unbind(session)

    def unbind(self, session: ClientSession, replaced: bool = False) -> None:
        """End the session (*replaced*: a new session of the same resource takes its place)."""
        resources = self.users.get(session.bare)
        if resources is None or resources.get(session.resource) is not session or session.remote:
            return
        del resources[session.resource]
        if not resources:
            del self.users[session.bare]
        self.hooks.fire(SESSION_UNBOUND, session, replaced)
        if not replaced and not self.local_resources(session.bare):  # (other nodes' may remain)
            self.rosters.forget(session.bare)

    def end_all(self) -> int:
        """The server stops: end every session bound here, attached or detached, as a XEP-0198
        timeout ends one (SESSION_UNBOUND: unavailable presence, the unacknowledged messages
        delivered again). Returns how many ended.

        All leave the registry before any is unbound, so that what one delivers again goes to
        the account's resources on other nodes of a cluster or to offline storage, never to
        another session of this node whose stream is over already and which ends next."""
        ending = self.all_sessions()
        for session in ending:
            resources = self.users[session.bare]
            del resources[session.resource]
            if not resources:
                del self.users[session.bare]
        for session in ending:
            self.hooks.fire(SESSION_UNBOUND, session, False)
        for bare in {session.bare for session in ending}:
            if not self.local_resources(bare):
                self.rosters.forget(bare)
        if ending:
            log.info("c2s.sessions_ended count={count}", count=len(ending))
        return len(ending)

    # -- moving to another node (a cluster's XEP-0198 resumption there) -----

    def move_out(self, session: ClientSession) -> dict[str, Any]:
        """Unbind a local session for another node of the cluster to bind: what it must keep
        there, the core's fields and each feature's (SESSION_LEAVING). It does not end, so no
        feature acts as for an ended session (no unavailable presence, no redelivery)."""
        state: dict[str, Any] = {
            "jid": session.full, "login": dataclasses.asdict(session.login), "connected_at": session.connected_at,
            "available": session.available, "priority": session.priority, "presence": session.presence,
            "roster_requested": session.roster_requested, "carbons": session.carbons,
            "directed": sorted(session.directed), "directed_chars": session.directed_chars,
        }
        self.hooks.fire(SESSION_LEAVING, session, state)
        session.moved = True
        self.unbind(session)
        return state

    def move_in(self, state: dict[str, Any], stream: ClientStream) -> Deferred[ClientSession | None]:
        """Bind, detached, a session another node took out with `move_out` (*stream*: the one
        that asked to resume it, which the resumption then attaches). None if a session of this
        node holds the resource already (a newer one: the client gave up resuming)."""
        full = parse_jid(state["jid"])
        bare, resource = full.userhost(), full.resource or ""
        login = LoginResult(**state["login"])

        def loaded(roster: object) -> ClientSession | None:
            held = self.users.get(bare, {}).get(resource)
            if held is not None and not held.remote:
                return None
            # (A RemoteSession in its place is this node's replica of the session on its old node.)
            session = ClientSession(full, stream, login, state["connected_at"])
            session.available, session.priority = state["available"], state["priority"]
            session.presence, session.roster_requested = state["presence"], state["roster_requested"]
            session.carbons = state["carbons"]
            session.directed, session.directed_chars = set(state["directed"]), state["directed_chars"]
            session.detached = True
            self.users.setdefault(bare, {})[resource] = session
            log.info("c2s.moved_in jid={jid}", jid=session.full)
            self.hooks.fire(SESSION_ARRIVED, session, state)
            if self._session_bound:
                run(self._session_bound, session)
            return session

        return self.rosters.get(bare).addCallback(loaded)

    # -- stanzas from a bound client ---------------------------------------

    def from_client(self, session: ClientSession, stanza: domish.Element) -> None:
        if stanza.uri != NS_CLIENT:
            nonza = self.hooks.nonzas.get(stanza.uri or "")
            if nonza is not None:
                nonza(session, stanza)
                if self.after_client_stanza:  # (a cluster's: an <enable/> made the session resumable)
                    for observe in self.after_client_stanza:
                        observe(session)
            else:
                session.stream.fail(StreamError("unsupported-stanza-type"))
            return
        if stanza.name not in ("message", "presence", "iq"):
            session.stream.fail(StreamError("unsupported-stanza-type"))
            return
        handle = (lambda: self._from_client(session, stanza)) if not self.after_client_stanza else (
            lambda: self._observed(session, self._from_client(session, stanza)))
        ledger = session.ledger
        if ledger is not None:
            ledger.process(handle)
        else:
            handle()

    def _observed(self, session: ClientSession, outcome: Deferred[None] | None) -> Deferred[None] | None:
        """Call the after_client_stanza observers once the stanza's handling is over (a presence
        may wait for a store read before it changes the session)."""
        if outcome is None:
            for observe in self.after_client_stanza:
                observe(session)
            return None

        def observed(result: object) -> object:
            for observe in self.after_client_stanza:
                observe(session)
            return result

        return outcome.addBoth(observed)

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
            return _later(run(self._presence_from_client, session, stanza))
        if stanza.name == "iq":
            if to is None:
                self.answer_iq(stanza, session)
            elif target.full() == session.bare:
                self.answer_account_iq(stanza, session.bare, session)
            elif target.full() == session.jid.host:
                self.answer_iq(stanza, session)
            else:
                if self._iq_from_client:
                    outcome = run(self._iq_from_client, session, stanza)
                    if outcome is not None:
                        return _later(outcome)
                return self.route(stanza)
            return None
        if to is None:
            stanza["to"] = session.bare
        if self._message_from_client:
            outcome = run(self._message_from_client, session, stanza)
            if outcome is not None:
                return _later(outcome)
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
            return _later(run(self._presence_to_local, stanza, to))
        if stanza.name == "iq":
            return self._deliver_iq(stanza, to)
        return None

    def _deliver_message(self, stanza: domish.Element, to: JID) -> Deferred[None] | None:
        if self._message_to_local:
            outcome = run(self._message_to_local, stanza, to)
            if outcome is not None:
                return _later(outcome)
        kind = stanza.getAttribute("type", "normal")
        bare = to.userhost()
        if to.resource is not None:
            session = self.session(to)
            if session is not None:
                return session.send(stanza)  # a Deferred for a resource on another node
            if kind == "groupchat":
                self._bounce(stanza, "service-unavailable")
            # RFC 6121 8.5.3.2.1: no resource matches. A headline is for that resource alone (a
            # PEP notification to a session that ended): not given to its siblings but silently
            # ignored (the RFC allows an error instead; ejabberd ignores it too, as a presence leak).
            if kind in ("groupchat", "error", "headline"):
                return None
        if kind == "error":
            return None
        targets = self.message_targets(bare)
        if targets and kind != "groupchat":
            queued: list[Deferred[None]] | None = None  # for resources on other nodes (a cluster's)
            for session in targets:
                sent = session.send(stanza)
                if sent is not None:
                    queued = queued or []
                    queued.append(sent)
            if queued is not None:  # handled once queued for them all
                return defer.gatherResults(queued).addCallback(lambda _: None)
            return None
        if kind == "headline":
            return None
        if kind == "groupchat":
            self._bounce(stanza, "service-unavailable")
            return None
        outcome = run(self._message_offline, bare, stanza)
        if outcome is None:  # no offline storage: RFC 6121 8.5.2.2.1
            self._bounce(stanza, "service-unavailable")
        return _later(outcome)

    def _deliver_iq(self, stanza: domish.Element, to: JID) -> Deferred[None] | None:
        if self._iq_to_local:
            outcome = run(self._iq_to_local, stanza, to)
            if outcome is not None:
                return _later(outcome)
        if to.resource is None:
            self.answer_account_iq(stanza, to.userhost(), None)
            return None
        session = self.session(to)
        if session is not None:
            return session.send(stanza)
        self._bounce(stanza, "service-unavailable")
        return None

    def _bounce(self, stanza: domish.Element, condition: str) -> None:
        if may_bounce(stanza) and stanza.getAttribute("from"):
            self.route(error_reply(stanza, condition))

    # -- IQs the server answers ---------------------------------------------

    def answer_iq(self, iq: domish.Element, session: ClientSession | None) -> None:
        """Answer an IQ to a hosted domain, or one with no 'to' from a bound client (the account's
        own IQs first: RFC 6120 10.3.3, no 'to' is the account's bare JID)."""
        key = self._request_key(iq, session)
        if key is None:
            return
        if session is not None and iq.getAttribute("to") is None:
            on_behalf = self.hooks.account_iqs.get(key)
            if on_behalf is not None:
                self._call(iq, session, on_behalf, iq, session.bare, session)
                return
        handler = self.hooks.server_iqs.get(key)
        if handler is not None:
            self._call(iq, session, handler, iq)
        elif session is not None and key in self.hooks.account_iqs:
            # The account's own data (its roster...), asked of the domain (RFC 6121 2.1.3).
            self._reply(iq, session, StanzaError("forbidden").toResponse(iq))
        else:
            self._reply(iq, session, StanzaError("service-unavailable").toResponse(iq))

    def answer_account_iq(self, iq: domish.Element, owner: str, session: ClientSession | None) -> None:
        """Answer an IQ to the account *owner*'s bare JID, on its behalf; *session* is the
        owner's own asking session, None for anyone else."""
        key = self._request_key(iq, session)
        if key is None:
            return
        handler = self.hooks.account_iqs.get(key)
        if handler is None:
            self._reply(iq, session, StanzaError("service-unavailable").toResponse(iq))
        else:
            self._call(iq, session, handler, iq, owner, session)

    def _request_key(self, iq: domish.Element, session: ClientSession | None) -> tuple[str, str] | None:
        """The (namespace, name) a request is dispatched by; None (answered already) if it is
        no request (results and errors are dropped; a malformed one hears bad-request)."""
        kind = iq.getAttribute("type")
        if kind in ("result", "error"):
            if self.hooks.responses:
                awaited = self.hooks.responses.pop((iq.getAttribute("from", ""), iq.getAttribute("id", "")), None)
                if awaited is not None:
                    awaited(iq)
            return None
        child = first_child(iq)
        if kind not in ("get", "set") or child is None or iq.getAttribute("id") is None:
            self._reply(iq, session, StanzaError("bad-request").toResponse(iq))
            return None
        return (child.uri or "", child.name)

    def _call(self, iq: domish.Element, session: ClientSession | None, handler: Callable[..., object],
              *args: object) -> None:
        # Most handlers answer at once (the legacy session of every login among them): no Deferred then.
        try:
            outcome = handler(*args)
        except Exception:
            self._refused(iq, session, Failure())
            return
        if isinstance(outcome, Deferred):
            outcome.addCallbacks(lambda payload: self._answered(iq, session, payload),
                                 lambda reason: self._refused(iq, session, reason))
        else:
            self._answered(iq, session, outcome)  # type: ignore[arg-type]

    def _answered(self, iq: domish.Element, session: ClientSession | None, payload: domish.Element | None) -> None:
        if payload is None and session is not None and session.ledger is None:
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


def _later(outcome: object) -> Deferred[None] | None:
    """The Deferred a hook's outcome finishes with, if it is one (see xmpp/hooks.py)."""
    return outcome if isinstance(outcome, Deferred) else None
