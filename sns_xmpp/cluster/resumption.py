"""XEP-0198 resumption on another node: a client whose connection half died reconnects through the
balancer, lands on another node, and resumes the session the first node still holds.

The directory publishes a digest of each resumable session's id (`remote_session.resume_digest`),
so the node that gets the <resume/> finds the holder in its own replica, with no round trip and
however often the session moved before; the id itself never leaves the nodes' memory but in the
request below. The two nodes talk through their inboxes (cluster/inbox.py):

1. the asking node adds KIND_RESUME (owner, previd, its name and a token) to the holder's inbox,
   and waits at most `HANDOVER_WAIT` seconds;
2. the holder takes the session out (stream management's `take_out`: its old stream, if still
   attached, ends with conflict; no unavailable presence, no redelivery), adds KIND_SESSION with
   the state to the asker's inbox, then tells every node that the resource is now the asker's
   (`Directory.moved_to`), so stanzas for it go there at once, after the state; what the
   holder's inbox still gets for it, it forwards there too (Inbox.take);
3. the asker binds the session (`SessionManager.move_in`) and resumes it as on one node:
   <resumed h/> (on its own before binding, or inside SASL2's <success/>: the outcome goes to
   whoever asked), the unacknowledged stanzas again; stanzas for the resource that arrived while
   it was being bound follow.

No answer in time (the holder died, or is stuck): <failed/> with item-not-found, and the client
binds a new session. A session that arrives after that is bound and ended at once, so its
unacknowledged messages go to the account's other resources or offline, as after a timeout;
so does one found in a dead node's inbox (Inbox.reclaim).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.cluster.directory import Directory, entry_of
from sns_xmpp.cluster.inbox import Inbox
from sns_xmpp.cluster.remote_session import RemoteSession, resume_digest
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features.stream_management import Resumed, Resumption, failed
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import parse_stanza

log = GatedLogger()

HANDOVER_WAIT = 5.0  # seconds the asking node waits for the holder's answer before <failed/>
XML = "$xml"  # a stanza in the state, as its text


@dataclass
class Asked:
    """A <resume/> waiting for the holder's answer."""

    stream: ClientStream
    login: LoginResult
    element: domish.Element
    node: str
    timer: IDelayedCall
    # Fired with the outcome (stream management's `attempt`): <resumed/> before bind, or inside
    # SASL2's <success/>, is written by whoever asked.
    outcome: Deferred[Resumed | domish.Element]


class NoStream:
    """The stream of a session bound here after its client stopped waiting for it: nothing is
    attached, and the session ends at once (what is written is only measured)."""

    closed = True
    bound = False
    peer = "none"
    max_outbound_bytes = 2**62  # its ledger holds what the other node held, whatever that came to

    def serialize(self, element: domish.Element) -> str:
        return str(element.toXml())

    def send(self, obj: object) -> int:
        return 0

    def fail(self, error: StreamError) -> None:
        pass


class CrossNodeResumption:
    def __init__(self, node: str, inbox: Inbox, directory: Directory, sessions: SessionManager,
                 resumption: Resumption, clock: IReactorTime, wait: float = HANDOVER_WAIT) -> None:
        self.node = node
        self.inbox = inbox
        self.directory = directory
        self.sessions = sessions
        self.resumption = resumption
        self.clock = clock
        self.wait = wait
        self.asked: dict[str, Asked] = {}  # by token
        resumption.elsewhere = self.ask
        inbox.on_resume = self.hand_over
        inbox.on_session = self.take

    # -- the node that got the <resume/> --------------------------------------------

    def ask(self, stream: ClientStream, login: LoginResult,
            element: domish.Element) -> Deferred[Resumed | domish.Element] | None:
        """Ask the node holding the session *element* resumes, if the directory names one: the
        outcome once it answered (or did not in time); None if no node holds it."""
        digest = resume_digest(element.getAttribute("previd", ""))
        holder = next((s.node for s in self.sessions.users.get(login.jid, {}).values()
                       if isinstance(s, RemoteSession) and s.resume_digest == digest), None)
        if holder is None:
            return None
        token = secrets.token_urlsafe(12)
        timer = self.clock.callLater(self.wait, self._unanswered, token)
        outcome: Deferred[Resumed | domish.Element] = Deferred()
        self.asked[token] = Asked(stream, login, element, holder, timer, outcome)
        log.info("cluster.resume_asked node={node} jid={jid}", node=holder, jid=login.jid)
        sent = self.inbox.ask_resume(holder, login.jid, element.getAttribute("previd", ""), f"{self.node} {token}")
        sent.addErrback(lambda reason: self._unanswered(token))
        return outcome

    def _unanswered(self, token: str) -> None:
        asked = self.asked.pop(token, None)
        if asked is None:
            return
        if asked.timer.active():
            asked.timer.cancel()
        log.warn("cluster.resume_unanswered node={node} jid={jid}", node=asked.node, jid=asked.login.jid)
        asked.outcome.callback(failed("item-not-found"))

    def forget_node(self, node: str) -> None:
        """*node* is gone: what was asked of it will not be answered."""
        for token in [token for token, asked in self.asked.items() if asked.node == node]:
            self._unanswered(token)

    def take(self, fields: dict[str, str]) -> None:
        """KIND_SESSION: the holder's answer (or a session found in a dead node's inbox)."""
        asked = self.asked.pop(fields.get("o", ""), None)
        if asked is not None and asked.timer.active():
            asked.timer.cancel()
        if not fields.get("x"):  # the holder has no such session (it ended, or went elsewhere)
            if asked is not None:
                asked.outcome.callback(failed("item-not-found"))
            return
        state = decode(fields["x"])
        full = state["jid"]
        self.inbox.arriving.setdefault(full, [])
        stream = asked.stream if asked is not None else cast(ClientStream, NoStream())
        arrived = self.resumption.arrive(state, stream)
        arrived.addCallback(self._arrived, state, asked)
        arrived.addErrback(lambda reason: log.failure("cluster.resume_bind_failed jid={jid}", reason, jid=full))
        arrived.addBoth(lambda _: self._release(full))

    def _arrived(self, session: ClientSession | None, state: dict[str, Any], asked: Asked | None) -> None:
        if session is None:  # a newer session of this node holds the resource: this one ended
            self.resumption.abandon(state)
            if asked is not None:
                asked.outcome.callback(failed("item-not-found"))
            return
        if asked is None:  # nobody waits for it any more: it ends, as after its timeout
            self.sessions.unbind(session)
        elif not asked.stream.closed:
            # Here now: resumed as on one node (`attempt` finds it among the resumable ones).
            outcome = self.resumption.attempt(asked.stream, asked.login, asked.element, here=True)
            assert not isinstance(outcome, Deferred)  # (here: no other node is asked)
            asked.outcome.callback(outcome)
        else:
            # A stream that closed while it waited leaves the session detached here, to be resumed.
            asked.outcome.callback(failed("item-not-found"))

    def _release(self, full: str) -> None:
        for fields in self.inbox.arriving.pop(full, []):
            self.inbox.take(fields)

    # -- the node holding the session -------------------------------------------------

    def hand_over(self, fields: dict[str, str]) -> None:
        """KIND_RESUME: give the session to the asking node, or tell it there is none."""
        owner, previd = fields.get("t", ""), fields.get("x", "")
        asker, _, token = fields.get("o", "").partition(" ")
        session = self.resumption.resumable.get(previd)
        entry = entry_of(session) if session is not None else None
        state = self.resumption.take_out(previd, owner)
        if session is None or entry is None or state is None:
            self.inbox.send_session(asker, "", "", token).addErrback(
                lambda reason: log.warn("cluster.resume_answer_failed node={node}", node=asker))
            return
        sent = self.inbox.send_session(asker, session.full, encode(state), token)
        sent.addErrback(lambda reason: log.failure("cluster.session_lost node={node} jid={jid}", reason,
                                                   node=asker, jid=session.full))
        # After the state (one connection: Redis runs the two in order), so that what the other
        # nodes send the asker on hearing this follows the state in its inbox.
        self.directory.moved_to(asker, session.full, entry)
        log.info("cluster.resume_handed_over node={node} jid={jid}", node=asker, jid=session.full)


def encode(state: dict[str, Any]) -> str:
    """A session's state as JSON, its stanzas (presence, unacknowledged ones) as their text."""
    return json.dumps(state, default=_stanza_text, separators=(",", ":"))


def decode(text: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(text, object_hook=_stanza))


def _stanza_text(value: object) -> dict[str, str]:
    if isinstance(value, domish.Element):
        return {XML: value.toXml()}
    raise TypeError(f"{type(value).__name__} in a session's state")


def _stanza(value: dict[str, Any]) -> object:
    if len(value) == 1 and XML in value:
        return parse_stanza(value[XML]) or value[XML]
    return value
