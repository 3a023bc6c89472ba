"""One bound resource (RFC 6120 section 7), and the one path every stanza to its client takes.

A feature that writes a stanza to a client calls `ClientSession.send`, never the stream's own
`send`: when the session has a ledger (XEP-0198 stream management, once the client enables it),
the ledger counts the stanza and keeps it until the client acknowledges it. A stanza written past
the ledger would make the client's honest acknowledgement look too high. Stream-level elements
that are not stanzas (the ledger's own <a/>, <enabled/>) are written to the stream directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from twisted.internet.defer import Deferred
from twisted.words.xish import domish

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.jid import JID
from sns_xmpp.xmpp.c2s import ClientStream


class Holder(Protocol):
    """What may hold a session's outbound stanzas back for a while (XEP-0352 CSI provides it)."""

    def hold(self, session: ClientSession, element: domish.Element | str) -> bool:
        """Keep *element* to send later (True), or let it go now (False, after sending whatever
        it must precede)."""


class Ledger(Protocol):
    """What counts a session's stanzas both ways (stream management provides it)."""

    # The id a client resumes the session with (XEP-0198), None if it may not; a cluster's
    # directory publishes a digest of it, so that another node finds where the session is.
    resume_id: str | None

    def process(self, handle: Callable[[], Deferred[None] | None]) -> None:
        """Count one inbound stanza and call *handle*; the stanza counts as handled when the
        Deferred *handle* returns fires (at once, for None)."""

    def send(self, session: ClientSession, element: domish.Element | str) -> None:
        """Write *element* to the session's client, counted and kept until acknowledged."""

    def room(self) -> int:
        """How many more stanzas a bulk sender (offline delivery) may send now."""

    def when_room(self, resume: Callable[[], None]) -> None:
        """Call *resume* once there is `room` again (never, if the session ends)."""


@dataclass(eq=False)
class ClientSession:
    """One bound resource: its address, its stream, and the state delivery reads."""

    # A resource bound on another node of a cluster (cluster/remote_session.py) says True.
    remote: ClassVar[bool] = False
    jid: JID
    stream: ClientStream
    login: LoginResult
    connected_at: float
    # RFC 6121 delivery reads these; the presence feature keeps them.
    available: bool = False
    priority: int = 0
    presence: domish.Element | None = None
    roster_requested: bool = False  # RFC 6121 2.1.6: roster pushes go only to those who asked
    directed: set[str] = field(default_factory=set)  # the presence feature's (presence.MAX_DIRECTED)
    directed_chars: int = 0  # the total length of the addresses in directed
    ledger: Ledger | None = None  # XEP-0198, once the client enables it
    holder: Holder | None = None  # XEP-0352, while the client says it is inactive
    carbons: bool = False  # XEP-0280 enabled (the carbons feature's, read by the cluster's directory too)
    detached: bool = False  # the connection dropped; the ledger keeps the session for a resumption
    # Handed to another node of a cluster, which resumes it (XEP-0198): unbound here, not ended.
    moved: bool = False
    # The JID's forms, made once: every stanza the session sends or receives uses them.
    bare: str = field(init=False)
    resource: str = field(init=False)
    full: str = field(init=False)

    def __post_init__(self) -> None:
        self.bare = self.jid.userhost()
        self.resource = self.jid.resource or ""
        self.full = self.jid.full()

    def send(self, element: domish.Element | str) -> Deferred[None] | None:
        """The one way a stanza reaches this session's client (text: a stored offline message,
        written as stored). None: written (or held) here; a resource on another node answers
        with a Deferred that fires once the stanza is queued for it (cluster/inbox.py)."""
        holder = self.holder
        if holder is not None and holder.hold(self, element):
            return None
        self.send_now(element)
        return None

    def send_now(self, element: domish.Element | str) -> None:
        """Write *element* now, past any holder (which uses this to let what it held go)."""
        ledger = self.ledger
        if ledger is None:
            self.stream.send(element)
        else:
            ledger.send(self, element)


def stored_messages_target(targets: Iterable[ClientSession]) -> ClientSession | None:
    """Which of an account's available resources (*targets*) its stored messages go to when they
    are asked for again (STORED_MESSAGES_WAITING): the highest priority, then the latest to
    connect; None if there is none."""
    return max(targets, key=lambda session: (session.priority, session.connected_at), default=None)
