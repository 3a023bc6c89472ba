"""Authentication-failure throttling, per client address and per account.

After a few free failures each further failure is answered more slowly
(doubling, up to a cap); past a limit, the address or the account is blocked
for a while and every attempt gets <temporary-auth-failure/>, right or wrong,
without saying whether the address or the account is blocked. Failures are
forgotten after a quiet window. State is in memory, bounded by pruning.

An account's key is the checker's ``throttle_key``: the prepared bare JID of a
local name, (site, account id) of a social one, so that failures under every
spelling of one account (case, full-width forms, soft hyphens, the bare-JID
form, another session's identifier) count against one record.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime


@dataclass
class _Record:
    failures: int
    last: float
    blocked_until: float = 0.0


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int = 3
    max_delay: float = 8.0
    block_after: int = 10
    block_seconds: float = 900.0
    window: float = 900.0
    max_records: int = 100_000


class AuthThrottle:
    def __init__(self, clock: IReactorTime, policy: ThrottlePolicy = ThrottlePolicy()) -> None:
        self.clock = clock
        self.policy = policy
        self._records: dict[str, _Record] = {}

    def _record(self, key: str) -> _Record | None:
        record = self._records.get(key)
        if record is not None and self.clock.seconds() - record.last > self.policy.window \
                and record.blocked_until <= self.clock.seconds():
            del self._records[key]
            return None
        return record

    def blocked(self, *keys: str | None) -> bool:
        now = self.clock.seconds()
        for key in keys:
            record = self._record(key) if key else None
            if record is not None and record.blocked_until > now:
                return True
        return False

    def failed(self, *keys: str | None) -> float:
        """Count a failure for every key; return how long to wait before answering it."""
        now = self.clock.seconds()
        if len(self._records) >= self.policy.max_records:
            self._prune(now)
        worst = 0
        for key in keys:
            if not key:
                continue
            record = self._record(key) or self._records.setdefault(key, _Record(0, now))
            record.failures += 1
            record.last = now
            if record.failures >= self.policy.block_after:
                record.blocked_until = now + self.policy.block_seconds
            worst = max(worst, record.failures)
        extra = worst - self.policy.free_failures
        return 0.0 if extra <= 0 else min(self.policy.max_delay, 0.25 * 2 ** (extra - 1))

    def succeeded(self, account: str) -> None:
        """A good login clears its account's failures (its address keeps its record)."""
        record = self._records.get(account)
        if record is not None and record.blocked_until <= self.clock.seconds():
            del self._records[account]

    def _prune(self, now: float) -> None:
        for key in [k for k, r in self._records.items()
                    if now - r.last > self.policy.window and r.blocked_until <= now]:
            del self._records[key]
        while len(self._records) >= self.policy.max_records:
            self._records.pop(next(iter(self._records)))
