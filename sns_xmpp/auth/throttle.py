"""Authentication-failure throttling that does not punish normal life.

Blocking is per (client address, account) pair: after a few free failures each
further failure of the pair is answered more slowly (doubling, up to a cap);
past ``block_after`` the pair is blocked for a while, and every attempt on it
gets <temporary-auth-failure/>, right or wrong. Nobody else is refused because
of it: carrier-grade NAT puts thousands of people behind one address, and a
third party can name any account.

Two wider records keep guessing spread over many pairs in check without
refusing a right password on a pair that has not failed:

- an address past ``address_block_after`` failures (a password spray over many
  accounts), or an account past ``account_block_after`` failures from all
  addresses (a botnet guessing one password), is *strained* for
  ``block_seconds``: its failures are answered after ``max_delay``, and a pair
  under it is blocked after ``free_failures`` failures instead of ``block_after``;
- a pair with no failures is never refused, strained or not.

Which refusals count at all is the checker's call
(``AuthenticationFailed.counts_toward_blocking``): expired or replayed social
credentials do not. Failures are forgotten after a quiet ``window``. State is
in memory, bounded by pruning.

In a cluster the records are shared (``ISharedThrottleRecords``, which the
cluster layer provides on Redis and sets as ``AuthThrottle.shared``): its answers
are the ones given, and this node's own records, counted as well, are the answer
when the shared ones cannot be read (docs/scaling.md).

An account's key is the checker's ``throttle_key``: the prepared bare JID of a
local name, (site, account id) of a social one, so that failures under every
spelling of one account (case, full-width forms, soft hyphens, the bare-JID
form, another session's identifier) count against one record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.tally import Tally

log = GatedLogger()


@dataclass
class _Record:
    failures: int
    last: float
    blocked_until: float = 0.0  # for an address or account: strained until then


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int = 3  # failures of a pair answered at once
    max_delay: float = 8.0  # the longest a failure's answer is held back (s)
    block_after: int = 20  # failures of one (address, account) pair before it is blocked
    block_seconds: float = 900.0  # how long a block (or a strain) lasts
    window: float = 900.0  # quiet seconds after which a record is forgotten
    address_block_after: int = 500  # failures from one address, all accounts, before it is strained
    account_block_after: int = 100  # failures of one account, all addresses, before it is strained
    max_records: int = 100_000


_Key = tuple[str, ...]


class Verdict(NamedTuple):
    """The throttle's answer to a failed login."""

    blocked: bool  # the pair was blocked already: answered as a blocked pair, right or wrong
    delay: float  # seconds to wait before answering


class ISharedThrottleRecords(Interface):
    """The throttle's records where every node of a cluster counts them (cluster/throttle.py):
    the same policy over the same records, so a pair's failures on one node count on all."""

    def has_pairs(address: str) -> bool:  # noqa: N805 - zope's interface methods have no self
        """Whether a pair of *address* may have a record anywhere, known without a round trip:
        False must mean that none has."""

    def admit(address: str, account: str) -> Deferred[bool]:  # noqa: N805
        """A right login of the pair: False if the pair is blocked; otherwise True, its failures cleared."""

    def failed(address: str, account: str | None) -> Deferred[Verdict]:  # noqa: N805
        """Count a failure (as `AuthThrottle.failed`), and say whether the pair was blocked already."""


class AuthThrottle:
    def __init__(self, clock: IReactorTime, policy: ThrottlePolicy = ThrottlePolicy()) -> None:
        self.clock = clock
        self.policy = policy
        self._records: dict[_Key, _Record] = {}
        # Pair records per address: a right login from an address with none has nothing to clear
        # or to be blocked by, and the caller need not work out its account's key (`has_pairs`).
        self._pairs = Tally()
        # A cluster's shared records (None: one node, and nothing else is asked).
        self.shared: ISharedThrottleRecords | None = None

    def _record(self, key: _Key) -> _Record | None:
        record = self._records.get(key)
        if record is not None and self.clock.seconds() - record.last > self.policy.window \
                and record.blocked_until <= self.clock.seconds():
            self._drop(key)
            return None
        return record

    def _drop(self, key: _Key) -> None:
        del self._records[key]
        if key[0] == "pair":
            self._pairs.remove(key[1])

    def has_pairs(self, address: str) -> bool:
        """Whether any (address, account) pair of *address* has a record: if not, no account is
        blocked from it, and `succeeded` has nothing to clear. (In a cluster, here or on any node,
        as far as this node has heard: no round trip on a right login from a clean address.)"""
        return self._pairs[address] > 0 or (self.shared is not None and self.shared.has_pairs(address))

    def admit(self, address: str, account: str) -> bool | Deferred[bool]:
        """A right login of the pair (from an address that `has_pairs`): False if the pair is
        blocked, to be refused as a wrong one would be; otherwise True, and the pair's failures
        are cleared. A Deferred only in a cluster (the shared records are read)."""
        shared = self.shared
        if shared is None:
            return self._admit(address, account)

        def answered(admitted: bool) -> bool:
            if admitted:
                self.succeeded(address, account)  # this node's records follow the shared ones
            return admitted

        def unreachable(reason: Failure) -> bool:
            log.warn("throttle.shared_unavailable step={step} error={error}", step="admit", error=str(reason.value))
            return self._admit(address, account)

        return shared.admit(address, account).addCallbacks(answered, unreachable)

    def _admit(self, address: str, account: str) -> bool:
        if self.blocked(address, account):
            return False
        self.succeeded(address, account)
        return True

    def refused(self, address: str, account: str | None) -> Verdict | Deferred[Verdict]:
        """A failed login that counts (see the module's text): whether its pair was blocked
        already, and how long to wait before answering. A Deferred only in a cluster."""
        here = Verdict(self.blocked(address, account), self.failed(address, account))
        shared = self.shared
        if shared is None:
            return here

        # Counted here as well (above): if the shared records cannot be reached, this node's own
        # still slow and block what it saw, as one node would.
        def unreachable(reason: Failure) -> Verdict:
            log.warn("throttle.shared_unavailable step={step} error={error}", step="failed", error=str(reason.value))
            return here

        return shared.failed(address, account).addErrback(unreachable)

    def _active(self, key: _Key) -> bool:
        record = self._record(key)
        return record is not None and record.blocked_until > self.clock.seconds()

    def blocked(self, address: str, account: str | None) -> bool:
        """Whether the pair (address, account) is blocked; never an address or account alone."""
        return account is not None and self._active(("pair", address, account))

    def strained(self, address: str, account: str | None = None) -> bool:
        """Whether the address, or the account, is past its wide cap (see the module's text)."""
        return self._active(("address", address)) or (account is not None and self._active(("account", account)))

    def failed(self, address: str, account: str | None) -> float:
        """Count a failure of *account* (None: no account was named) from *address*; return how long
        to wait before answering it."""
        policy, now = self.policy, self.clock.seconds()
        if len(self._records) >= policy.max_records:
            self._prune(now)
        if self.blocked(address, account):
            # Already refused whatever the password: not a guess that the wide records need to see.
            return policy.max_delay
        self._count(("address", address), policy.address_block_after, now)
        if account is None:
            return policy.max_delay if self.strained(address) else 0.0
        self._count(("account", account), policy.account_block_after, now)
        strained = self.strained(address, account)
        limit = max(1, policy.free_failures) if strained else policy.block_after
        failures = self._count(("pair", address, account), limit, now)
        if strained:
            return policy.max_delay
        extra = failures - policy.free_failures
        return 0.0 if extra <= 0 else min(policy.max_delay, 0.25 * 2 ** (extra - 1))

    def _count(self, key: _Key, limit: int, now: float) -> int:
        record = self._record(key)
        if record is None:
            record = self._records[key] = _Record(0, now)
            if key[0] == "pair":
                self._pairs.add(key[1])
        record.failures += 1
        record.last = now
        if record.failures >= limit:
            record.blocked_until = now + self.policy.block_seconds
        return record.failures

    def succeeded(self, address: str, account: str) -> None:
        """A good login clears its pair's failures. The address's and the account's records stay:
        the owner logging in must not hand a botnet a fresh allowance."""
        key = ("pair", address, account)
        record = self._records.get(key)
        if record is not None and record.blocked_until <= self.clock.seconds():
            self._drop(key)

    def _prune(self, now: float) -> None:
        for key in [k for k, r in self._records.items()
                    if now - r.last > self.policy.window and r.blocked_until <= now]:
            self._drop(key)
        while len(self._records) >= self.policy.max_records:
            self._drop(next(iter(self._records)))
