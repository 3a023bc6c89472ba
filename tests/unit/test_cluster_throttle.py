"""The login throttle's records shared through Redis (sns_xmpp/cluster/throttle.py), seen from the
login path of two nodes: Redis is a recording fake that answers what the test says (the scripts
themselves run in a real Redis in tests/e2e/test_cluster.py), the clocks are Twisted's."""

from __future__ import annotations

import json
from pathlib import Path

from zope.interface.verify import verifyObject

from sns_xmpp.auth.throttle import ISharedThrottleRecords, ThrottlePolicy
from sns_xmpp.cluster.directory import Directory
from sns_xmpp.cluster.keys import Keys
from sns_xmpp.cluster.throttle import ADMIT, FAILED, REDIS_WAIT, SharedThrottleRecords
from tests.unit.test_auth_throttle import NAT, FairServer
from tests.unit.test_cluster_inbox import Commands
from tests.unit.test_negotiation import output

KEYS = Keys("t:")
ADDRESS = f"address:{NAT}"
ALICE = "account:alice@localhost"  # her throttle key (the checker's)
# Blocks a pair after 4 failures, answering each at once (no delays to wait out).
POLICY = ThrottlePolicy(free_failures=100, block_after=4)


def decided(answer: str) -> bool:
    """Whether the client has been told how its login went."""
    return "<success" in answer or "<failure" in answer


class Node(FairServer):
    """One node's login path with its throttle's records shared through *commands*, announcing
    on the directory's channel as the node does."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        super().__init__(tmp_path / name, POLICY)
        self.commands = Commands()
        self.directory = Directory(name, KEYS, self.commands, None, None)  # type: ignore[arg-type]
        self.records = SharedThrottleRecords(KEYS, self.commands, self.clock, POLICY, self.directory.throttled)
        self.directory.on_throttled = self.records.heard
        self.throttle.shared = self.records

    def scripts(self) -> list[str]:
        return [call[1] for call in self.commands.calls if call[0] == "EVAL"]

    def announcements(self) -> list[str]:
        return [call[2] for call in self.commands.calls if call[0] == "PUBLISH"]

    def answer_redis(self, reply: object) -> str:
        """Redis answers the last command: what the client is then told."""
        self.commands.answers[-1].callback(reply)
        return output(self.transport)


def test_a_pairs_failures_on_one_node_block_it_on_another_and_a_clean_address_never_waits(tmp_path: Path) -> None:
    """A right login from an address with no failures makes no Redis call. A wrong password on
    node a is counted by Redis's script, which tells a to announce the address; node b, hearing
    it, reads Redis for a right login from that address: refused as a blocked pair when Redis
    says so (b's own records hold nothing), let in (and cleared) when not. Once the announced
    time has passed, b asks Redis nothing again."""
    a, b = Node(tmp_path, "a"), Node(tmp_path, "b")
    verifyObject(ISharedThrottleRecords, a.records)
    assert "<success" in b.answer("bob", "bobs")
    assert b.commands.calls == []

    assert not decided(a.answer("alice", "wrong"))  # held until Redis has counted it
    assert a.scripts() == [FAILED]
    eval_keys = a.commands.calls[0][3:7]
    assert eval_keys == (KEYS.throttle(("pair", ADDRESS, ALICE)), KEYS.throttle(("address", ADDRESS)),
                         KEYS.throttle(("account", ALICE)), KEYS.throttled_addresses)
    assert "<not-authorized/>" in a.answer_redis([0, "0", "1800000"])
    [announced] = a.announcements()
    b.directory.on_message(KEYS.channel, announced)  # the channel carries it to b
    assert json.loads(announced)["ttl"] == 1800.0

    assert not decided(b.answer("alice", "right"))  # b asks Redis first
    assert b.scripts() == [ADMIT]
    answer = b.answer_redis(1)
    assert "<temporary-auth-failure/>" in answer and "<success" not in answer
    assert not decided(b.answer("bob", "bobs"))
    assert "<success" in b.answer_redis(0)  # another account from the same address: in

    b.clock.advance(1800)
    calls = len(b.commands.calls)
    assert "<success" in b.answer("alice", "right")
    assert len(b.commands.calls) == calls


def test_without_redis_each_node_still_throttles_with_its_own_records(tmp_path: Path) -> None:
    """Redis does not answer (txredisapi queues the commands until it is back): each login waits
    REDIS_WAIT at most, then this node's own records answer. Four wrong passwords block alice from
    the address as on one node, bob from the same address still logs in, and a login from an
    address with no failures does not wait at all."""
    node = Node(tmp_path, "a")
    for _ in range(POLICY.block_after):
        assert not decided(node.answer("alice", "wrong"))
        node.clock.advance(REDIS_WAIT)
        assert "<not-authorized/>" in output(node.transport)
    assert not decided(node.answer("alice", "right"))
    node.clock.advance(REDIS_WAIT)
    answer = output(node.transport)
    assert "<temporary-auth-failure/>" in answer and "<success" not in answer
    assert not decided(node.answer("bob", "bobs"))
    node.clock.advance(REDIS_WAIT)
    assert "<success" in output(node.transport)
    calls = len(node.commands.calls)
    assert "<success" in node.answer("bob", "bobs", host="198.51.100.4")
    assert len(node.commands.calls) == calls
