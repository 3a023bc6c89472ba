"""A resource bound on another node, as this node's `SessionManager` holds it.

It is a `ClientSession` in everything delivery reads (address, availability, priority, last
presence, whether it asked for the roster, carbons), kept up to date from the directory; sending
to it adds the stanza to its node's inbox. The features that walk an account's resources reach it
as they reach a local one. It has no stream of its own: `RemoteStream` stands in for the few
things a feature may ask of another resource's stream.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, ClassVar, cast

from twisted.internet.defer import Deferred
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.jid import JID
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.stanzas import parse_stanza

# Forward a stanza to a resource on a node: (node, full JID, stanza) -> fired once Redis has it.
Forward = Callable[[str, str, "domish.Element | str"], Deferred[None]]


class RemoteStream:
    """What a feature may touch of another node's resource's stream."""

    closed = False
    bound = True

    def __init__(self, node: str, full: str, replace: Callable[[str, str], None]) -> None:
        self.peer = f"node:{node}"
        self._node, self._full, self._replace = node, full, replace

    def fail(self, error: StreamError) -> None:
        self._replace(self._node, self._full)  # its own node ends it

    def release_parser_after_read(self) -> None:
        pass


class RemoteSession(ClientSession):
    remote: ClassVar[bool] = True

    def __init__(self, jid: JID, node: str, forward: Forward, replace: Callable[[str, str], None]) -> None:
        full = jid.full()
        super().__init__(jid, cast(ClientStream, RemoteStream(node, full, replace)),
                         LoginResult(jid.userhost(), "cluster"), 0.0)
        self.node = node
        self.carbons = False
        self._forward = forward
        self._presence_text: str | None = None
        # The digest of its XEP-0198 resumption id (resume_digest), if it may be resumed: how a
        # node that gets the <resume/> finds the node holding the session (cluster/resumption.py).
        self.resume_digest: str | None = None

    def update(self, entry: dict[str, Any]) -> None:
        """Take the state its node published (see `directory.entry_of`)."""
        self.available = bool(entry.get("a"))
        self.priority = int(entry.get("p", 0))
        self.roster_requested = bool(entry.get("r"))
        self.carbons = bool(entry.get("c"))
        self.connected_at = float(entry.get("t", 0.0))
        self.resume_digest = entry.get("m")
        text = entry.get("x")
        if text != self._presence_text:
            self._presence_text = text
            self.presence = parse_stanza(text) if text else None

    def send(self, element: domish.Element | str) -> Deferred[None]:
        return self._forward(self.node, self.full, element)

    def send_now(self, element: domish.Element | str) -> None:
        self._forward(self.node, self.full, element)


def resume_digest(resume_id: str) -> str:
    """What the directory publishes of a session's resumption id: enough to find the session's
    node by the id a client presents, nothing to resume it with (the id stays a secret)."""
    return hashlib.sha256(resume_id.encode()).hexdigest()[:32]


def dumps(entry: dict[str, Any]) -> str:
    return json.dumps(entry, separators=(",", ":"))
