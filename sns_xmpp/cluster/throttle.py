"""The login throttle's records in Redis, so that failures counted on any node block on every node
(auth/throttle.py has the policy, docs/scaling.md the reasons).

Each record is a hash with a time to live: Redis forgets it when one node would have. A failure is
counted by one script, the same steps as `AuthThrottle.failed` in the same order, so concurrent
failures on several nodes are counted as one node counts them, one after the other; Redis's clock
is the one clock of every record.

A right login must not wait for Redis: each node knows, without asking, which addresses have pair
records. The node that records an address's first failure (and again when the address's last
word would not outlive its new record) announces the address on the directory's channel, with how
long it may have records; a node that (re)subscribes reads those from a sorted set. Only a right
login from such an address reads Redis. Announcing twice the record's life at most once per life
keeps the word ahead of every record while failures go on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from sns_xmpp.auth.throttle import ISharedThrottleRecords, ThrottlePolicy, Verdict
from sns_xmpp.cluster.keys import Keys
from sns_xmpp.cluster.redis_link import reply_pairs, reply_text
from sns_xmpp.observe.log_gate import GatedLogger

log = GatedLogger()

# How long a login waits for Redis before this node's own records answer: txredisapi queues a
# command while Redis is away, and a login must not wait for its return.
REDIS_WAIT = 1.0

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: the pair's, the address's and the account's records, the throttled addresses.
# ARGV: the address, "1" if an account was named, then the policy (times in ms).
# AuthThrottle.failed, step for step; a record's TTL is its window after its last failure, or the
# rest of its block if longer (when AuthThrottle._record forgets it).
FAILED = _NOW + """
local free, max_delay = tonumber(ARGV[3]), tonumber(ARGV[4])
local block_after, block_ms, window_ms = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local address_after, account_after = tonumber(ARGV[8]), tonumber(ARGV[9])
local function active(key)
  return tonumber(redis.call('HGET', key, 'b') or 0) > now
end
local function count(key, limit)
  local failures = redis.call('HINCRBY', key, 'f', 1)
  local b = tonumber(redis.call('HGET', key, 'b') or 0)
  if failures >= limit then
    b = now + block_ms
    redis.call('HSET', key, 'b', string.format('%.0f', b))
  end
  redis.call('PEXPIRE', key, string.format('%.0f', math.max(window_ms, b - now)))
  return failures
end
local named = ARGV[2] == '1'
if named and active(KEYS[1]) then
  return {1, tostring(max_delay), '0'}
end
count(KEYS[2], address_after)
if not named then
  if active(KEYS[2]) then return {0, tostring(max_delay), '0'} end
  return {0, '0', '0'}
end
count(KEYS[3], account_after)
local strained = active(KEYS[2]) or active(KEYS[3])
local limit = block_after
if strained then limit = math.max(1, free) end
local failures = count(KEYS[1], limit)
local life = math.max(window_ms, block_ms)
local announce = 0
if tonumber(redis.call('ZSCORE', KEYS[4], ARGV[1]) or 0) < now + life then
  announce = 2 * life
  redis.call('ZADD', KEYS[4], string.format('%.0f', now + announce), ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('%.0f', now))
  redis.call('PEXPIRE', KEYS[4], string.format('%.0f', announce))
end
local delay = 0
if strained then
  delay = max_delay
elseif failures > free then
  delay = math.min(max_delay, 0.25 * 2 ^ (failures - free - 1))
end
return {0, tostring(delay), string.format('%.0f', announce)}
"""

# KEYS: the pair's record. 1: blocked; 0: not, and its failures are gone (AuthThrottle._admit).
ADMIT = _NOW + """
if tonumber(redis.call('HGET', KEYS[1], 'b') or 0) > now then return 1 end
redis.call('DEL', KEYS[1])
return 0
"""

# KEYS: the throttled addresses. Each live one, and the ms it may still have records.
ADDRESSES = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local live = {}
for i = 1, #entries, 2 do
  live[#live + 1] = entries[i]
  live[#live + 1] = string.format('%.0f', tonumber(entries[i + 1]) - now)
end
return live
"""


def _ms(seconds: float) -> str:
    return str(round(seconds * 1000))


@implementer(ISharedThrottleRecords)
class SharedThrottleRecords:
    def __init__(self, keys: Keys, commands: Any, clock: IReactorTime, policy: ThrottlePolicy,
                 announce: Callable[[str, float], None]) -> None:
        self.keys = keys
        self.commands = commands
        self.clock = clock
        self.policy = policy
        self.announce = announce  # (address, seconds): tells the other nodes (Directory.throttled)
        # Address -> until when (this node's clock) it may have pair records on some node. As the
        # one node's records, bounded by the policy's max_records.
        self.addresses: dict[str, float] = {}
        self.life = max(policy.window, policy.block_seconds)  # the longest a pair record lives

    def has_pairs(self, address: str) -> bool:
        until = self.addresses.get(address)
        if until is None:
            return False
        if until > self.clock.seconds():
            return True
        del self.addresses[address]
        return False

    def heard(self, address: str, seconds: float) -> None:
        """*address* may have pair records for *seconds* from now (said by a node, or read)."""
        now = self.clock.seconds()
        until = now + seconds
        if until <= self.addresses.get(address, 0.0):
            return
        if address not in self.addresses and len(self.addresses) >= self.policy.max_records:
            for gone in [a for a, u in self.addresses.items() if u <= now]:
                del self.addresses[gone]
            while len(self.addresses) >= self.policy.max_records:  # as AuthThrottle._prune: oldest first
                del self.addresses[next(iter(self.addresses))]
        self.addresses[address] = until

    def admit(self, address: str, account: str) -> Deferred[bool]:
        answer = self._run(ADMIT, [self.keys.throttle(("pair", address, account))], [])
        return answer.addCallback(lambda blocked: not int(blocked))

    def failed(self, address: str, account: str | None) -> Deferred[Verdict]:
        policy, record = self.policy, self.keys.throttle
        keys = [record(("pair", address, account or "")), record(("address", address)),
                record(("account", account or "")), self.keys.throttled_addresses]
        args = [address, "1" if account is not None else "0", str(policy.free_failures), repr(policy.max_delay),
                str(policy.block_after), _ms(policy.block_seconds), _ms(policy.window),
                str(policy.address_block_after), str(policy.account_block_after)]

        def counted(reply: Any) -> Verdict:
            blocked, delay, announce = reply
            if account is not None:
                self.heard(address, self.life)  # this node knows, whatever the others heard
            seconds = int(reply_text(announce)) / 1000
            if seconds > 0:
                self.heard(address, seconds)
                self.announce(address, seconds)
            return Verdict(bool(int(blocked)), float(reply_text(delay)))

        return self._run(FAILED, keys, args).addCallback(counted)

    def load(self) -> Deferred[None]:
        """Read which addresses have pair records (at start, and after the subscriber reconnected:
        announcements may have been missed)."""
        def take(flat: Any) -> None:
            for address, ms in reply_pairs(flat).items():  # (a sorted set's members: each once)
                self.heard(address, int(ms) / 1000)

        def failed(reason: Any) -> None:
            log.warn("cluster.throttle_load_failed error={error}", error=str(reason.value))

        return self._run(ADDRESSES, [self.keys.throttled_addresses], []).addCallbacks(take, failed)

    def _run(self, script: str, keys: list[str], args: list[str]) -> Deferred[Any]:
        answer: Deferred[Any] = self.commands.execute_command("EVAL", script, len(keys), *keys, *args)
        return answer.addTimeout(REDIS_WAIT, self.clock)

