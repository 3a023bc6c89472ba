"""Revocations end live sessions: the watcher reads what the store recorded since its last look
and ends the named account's sessions, connected or waiting to be resumed, and no one else's."""

from __future__ import annotations

from twisted.internet import defer

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.store.records import Revocation
from sns_xmpp.xmpp.revocation import RevocationWatcher
from tests.unit.test_limits import connect
from tests.unit.test_negotiation import HEADER
from tests.unit.test_stream_management import log_in, output, world


class Revocations:
    """The store's revocations, as `revoke` records them."""

    def __init__(self, *jids: str) -> None:
        self.recorded = [Revocation(n + 1, jid, "old", 0.0) for n, jid in enumerate(jids)]
        self.reads = 0

    def revoke(self, jid: str, reason: str) -> None:
        self.recorded.append(Revocation(len(self.recorded) + 1, jid, reason, 0.0))

    def last_revocation_id(self) -> defer.Deferred[int]:
        return defer.succeed(len(self.recorded))

    def revocations_after(self, last_id: int, limit: int = 1000) -> defer.Deferred[list[Revocation]]:
        self.reads += 1
        return defer.succeed([r for r in self.recorded if r.id > last_id][:limit])


def test_a_revocation_ends_the_accounts_sessions_within_one_interval_and_no_one_elses() -> None:
    """bob has a connected session and a detached one (XEP-0198, waiting for a resumption); a
    revocation recorded after the watcher started ends both, the connected one with
    <not-authorized/> and the reason; alice, and revocations older than the start, change nothing."""
    sessions, factory, clock = world()
    store = Revocations("alice@localhost")  # recorded before the start: not applied again
    watcher = RevocationWatcher(store, sessions, clock, interval=2.0)  # type: ignore[arg-type]
    watcher.startService()
    alice, alice_out, _ = log_in(sessions, factory, "alice@localhost", "192.0.2.1")
    phone, _, phone_session = log_in(sessions, factory, "bob@localhost", "192.0.2.3")
    phone.connectionLost(None)  # type: ignore[arg-type]  # dropped, as a phone losing its network
    assert phone_session.detached
    bob, bob_out = connect(factory, "192.0.2.2")  # bob's other resource, connected
    bob.dataReceived(HEADER.format(to="localhost").encode())
    sessions.bind(bob, LoginResult("bob@localhost", "PLAIN"), "laptop")
    assert len(sessions.resources("bob@localhost")) == 2
    output(alice_out), output(bob_out)

    clock.advance(2.0)
    assert sessions.resources("alice@localhost") and len(sessions.resources("bob@localhost")) == 2
    store.revoke("bob@localhost", "unlinked")
    clock.advance(2.0)
    assert phone_session not in sessions.resources("bob@localhost")  # unbound at once
    ended = output(bob_out)
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in ended and "logged out: unlinked" in ended
    assert bob_out.disconnecting
    bob.connectionLost(None)  # type: ignore[arg-type]
    assert sessions.resources("bob@localhost") == []
    assert sessions.resources("alice@localhost") and "not-authorized" not in output(alice_out)
    reads = store.reads
    watcher.stopService()
    clock.advance(10.0)
    assert store.reads == reads
