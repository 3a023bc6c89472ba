"""The tables the session core reads and the feature modules fill (Prosody's hooks and events).

`SessionManager` owns one `Hooks`; features fill it through `features.FeatureRegistry` at start-up,
and the core reads it for every stanza. What a feature can register:

- IQs the server answers for a domain (`server_iqs`) and for an account's bare JID, on the account's
  behalf (`account_iqs`: roster, later vCard and PEP);
- stream-level elements of a bound stream (`nonzas`, by namespace: XEP-0198's <r/> and <a/>) and
  of an authenticated stream before binding (`before_bind`: XEP-0198's <resume/>);
- children of a SASL2 <authenticate/> (`sasl2_inline`, XEP-0388's inline features: XEP-0198's
  <resume/>), each answered inside <success/>;
- stream features before and after authentication, and disco#info features of the server and of
  an account's bare JID;
- event hooks (below): inbound and outbound messages, presence and IQs, and a session's life;
- what it stores (`Storage`), and what it can do inline at bind (`InlineAction`, XEP-0386).

Event hooks form a chain per event, highest priority first. A handler returns None to let the next
one run, anything else to stop the chain; `fire` returns that value. On the stanza path the value
may be a Deferred: the stanza's handling finishes when it fires, and XEP-0198 waits for it before
counting the stanza handled (docs/architecture.md, "the XEP-0198 promise").
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.words.xish import domish

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.client_session import ClientSession

# -- events, and what their handlers receive ---------------------------------------------------

MESSAGE_FROM_CLIENT = "message/from-client"
"""(session, message): a bound client's message, stamped with its sender, before it is routed.
A handler that returns a value has handled it (blocking, a carbon copy that also routes...)."""
MESSAGE_TO_LOCAL = "message/to-local"
"""(message, to: JID): a message for a local user, before it reaches their sessions."""
MESSAGE_OFFLINE = "message/offline"
"""(owner, message): a message no resource of the owner takes (RFC 6121 8.5.2.2). Unhandled, a
normal or chat message bounces with service-unavailable."""
STORED_MESSAGE_UNACKNOWLEDGED = "message/stored-unacknowledged"
"""(owner, text): a stored message, delivered to a session that ended before acknowledging it
(XEP-0198); it is kept again."""
STORED_MESSAGES_WAITING = "message/stored-waiting"
"""(session): messages may have been stored for the available session's account after its
SESSION_AVAILABLE delivered the stored ones (a cluster's node stored them before it heard of the
session): deliver them, none twice."""
PRESENCE_FROM_CLIENT = "presence/from-client"
"""(session, presence): a bound client's presence (RFC 6121 sections 3 and 4, outbound)."""
PRESENCE_TO_LOCAL = "presence/to-local"
"""(presence, to: JID): presence for a local user (RFC 6121 sections 3 and 4, inbound)."""
PRESENCE_FROM_NODE = "presence/from-node"
"""(session, presence): a presence another node of a cluster delivered to this node's *session*
through its inbox (PRESENCE_TO_LOCAL ran on that node, for the account's bare or full JID);
handlers only look, and return None. Only a cluster fires it."""
IQ_FROM_CLIENT = "iq/from-client"
"""(session, iq): a bound client's IQ, stamped, before it is routed to another entity (not one the
server answers: the domain's, the account's own). A handler that returns a value has handled it
(blocking refuses it)."""
IQ_TO_LOCAL = "iq/to-local"
"""(iq, to: JID): an IQ for a local user's bare or full JID, before the server answers it on the
account's behalf or delivers it to the resource. A handler that returns a value has handled it."""
SESSION_AVAILABLE = "session/available"
"""(session): the session sent its initial presence, with a non-negative priority (RFC 6121
8.5.2.1.1: the messages kept for the account are for such a session)."""
SESSION_BOUND = "session/bound"
"""(session): a resource was bound (the session is in the registry)."""
SESSION_CONNECTION_LOST = "session/connection-lost"
"""(session, stream): the session's connection dropped without a closing stream end; a handler
that returns a value keeps the session (XEP-0198 resumption), else it is unbound."""
SESSION_UNBOUND = "session/unbound"
"""(session, replaced: bool): the session is no longer bound (replaced: a new session of the same
resource takes its place at once)."""
SESSION_LEAVING = "session/leaving"
"""(session, state: dict): the session moves to another node of a cluster, which resumes it
(XEP-0198); a handler puts into *state*, under its feature's name, what the session must keep
there (JSON values and stanzas). SESSION_UNBOUND follows with the session's `moved` set: it did
not end. Only a cluster fires it."""
SESSION_ARRIVED = "session/arrived"
"""(session, state: dict): a session another node handed over is bound here, before SESSION_BOUND
fires for it; a handler takes back what it put into *state* on SESSION_LEAVING."""

EVENTS = (MESSAGE_FROM_CLIENT, MESSAGE_TO_LOCAL, MESSAGE_OFFLINE, STORED_MESSAGE_UNACKNOWLEDGED,
          STORED_MESSAGES_WAITING, PRESENCE_FROM_CLIENT, PRESENCE_TO_LOCAL, PRESENCE_FROM_NODE, IQ_FROM_CLIENT,
          IQ_TO_LOCAL, SESSION_AVAILABLE, SESSION_BOUND, SESSION_CONNECTION_LOST, SESSION_UNBOUND,
          SESSION_LEAVING, SESSION_ARRIVED)

IQHandler = Callable[[domish.Element], Any]
"""(iq) -> the result's child, None for an empty result, a Deferred of either; or raises StanzaError."""
AccountIQHandler = Callable[[domish.Element, str, "ClientSession | None"], Any]
"""(iq, owner's bare JID, the owner's asking session or None for anyone else) -> as IQHandler."""
NonzaHandler = Callable[[ClientSession, domish.Element], None]
BeforeBindHandler = Callable[[ClientStream, LoginResult, domish.Element], None]
SASL2InlineHandler = Callable[[ClientStream, LoginResult, domish.Element], "SASL2Answer | Deferred[SASL2Answer]"]
"""(stream, login, the <authenticate/>'s child) once the login succeeded, before <success/> is
written: what goes into it."""
StreamFeature = Callable[[str], "domish.Element | None"]
"""(domain) -> a child of <stream:features/>, or None; the same element while it does not change,
so that the serialised features can be cached."""


@dataclass(frozen=True)
class Storage:
    """Something a feature keeps in the store: a table of the schema, and whether it holds an
    account's data (which must go with the account: tests/unit/test_features.py checks the
    schema's cascade)."""

    feature: str
    table: str
    per_account: bool
    what: str


@dataclass(frozen=True)
class InlineAction:
    """What a feature does inside a Bind2 request (XEP-0386): *element* is the request's child in
    the feature's namespace; the answer goes into <bound/>, or None."""

    feature: str
    var: str  # the namespace announced in <inline><feature var=.../></inline>
    act: Callable[[ClientSession, domish.Element], domish.Element | None]


@dataclass(frozen=True)
class SASL2Answer:
    """A SASL2 inline feature's answer (XEP-0388 2.6.1): *element* goes into <success/>. With
    *resumed* (a full JID) the stream carries that existing session now: nothing is bound (Bind2's
    request is ignored, as XEP-0198 asks) and it is the authorization identifier; *then* runs once
    <success/> is written (XEP-0198: the unacknowledged stanzas again, after the answer)."""

    element: domish.Element
    resumed: str | None = None
    then: Callable[[], None] | None = None


@dataclass(frozen=True)
class SASL2Inline:
    """A feature's child of SASL2's <authenticate/>: *offer* is listed in <authentication><inline/>,
    and each child named (offer's namespace, *name*) goes to *handle*."""

    feature: str
    offer: domish.Element
    name: str
    handle: SASL2InlineHandler


class Hooks:
    def __init__(self) -> None:
        self.server_iqs: dict[tuple[str, str], IQHandler] = {}
        self.account_iqs: dict[tuple[str, str], AccountIQHandler] = {}
        self.nonzas: dict[str, NonzaHandler] = {}
        self.before_bind: dict[tuple[str, str], BeforeBindHandler] = {}
        self.features_before_auth: list[StreamFeature] = []
        self.features_after_auth: list[StreamFeature] = []
        self.disco_features: list[str] = []
        self.account_disco_features: list[str] = []
        self.account_disco_identities: list[tuple[str, str]] = [("account", "registered")]
        # Answers awaited to IQs a feature sent (XEP-0115's disco#info queries), by the answer's
        # (from, id): the core hands a result or error that matches to the callable, once.
        self.responses: dict[tuple[str, str], Callable[[domish.Element], None]] = {}
        self.storage: list[Storage] = []
        # Per-account state a feature keeps in memory and other nodes of a cluster may change:
        # its name -> what to call with the account when another node changed it; and who is
        # told (name, account) when this node changes it (the cluster's directory).
        self.shared_state: dict[str, Callable[[str], None]] = {}
        self.state_changed: list[Callable[[str, str], Deferred[None] | None]] = []
        # And, by the same name, what reads all of that state again (after announcements may
        # have been missed: the cluster's subscriber reconnected), a Deferred or None.
        self.resyncs: dict[str, Callable[[], Any]] = {}
        self.inline: dict[str, InlineAction] = {}
        # SASL2's inline features (XEP-0388), by the (namespace, name) of their <authenticate/> child.
        self.sasl2_inline: dict[tuple[str, str], SASL2Inline] = {}
        # Each event's handlers, highest priority first, and the negated priorities alongside
        # (for bisect). The lists are never replaced: the core keeps references to them.
        self._chains: dict[str, list[Callable[..., Any]]] = {event: [] for event in EVENTS}
        self._orders: dict[str, list[int]] = {event: [] for event in EVENTS}

    def chain(self, event: str) -> list[Callable[..., Any]]:
        """The live list of *event*'s handlers, in the order they run."""
        return self._chains[event]

    def hook(self, event: str, handler: Callable[..., Any], priority: int = 0) -> None:
        """Run *handler* on *event*, before the handlers of lower priority and after those of the
        same priority registered before it."""
        if event not in self._chains:
            raise ValueError(f"no event {event!r}; the events are {', '.join(EVENTS)}")
        at = bisect.bisect_right(self._orders[event], -priority)
        self._orders[event].insert(at, -priority)
        self._chains[event].insert(at, handler)

    def unhook(self, event: str, handler: Callable[..., Any]) -> None:
        """Stop running *handler* on *event* (a feature with nothing to do takes itself out of a
        stanza's path, and hooks itself back when it has). Never from within a run of *event*'s
        chain: the run would skip the handler after it."""
        at = self._chains[event].index(handler)
        del self._chains[event][at]
        del self._orders[event][at]

    def fire(self, event: str, *args: Any) -> Any:
        return run(self._chains[event], *args)


def run(chain: list[Callable[..., Any]], *args: Any) -> Any:
    """Call the handlers of *chain* in order until one returns a value; return it (or None)."""
    for handler in chain:
        outcome = handler(*args)
        if outcome is not None:
            return outcome
    return None
