"""Login attempts between the redirect to a site and the browser's return: state, bounded, expiring."""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime


@dataclass(frozen=True)
class PendingLogin:
    site_id: str
    data: Mapping[str, str]
    created: float


class PendingLogins:
    """One entry per started login, taken at most once, forgotten after ``ttl`` seconds.

    The cap keeps a flood of /login-using requests from growing memory: the
    oldest attempts are dropped first.
    """

    def __init__(self, clock: IReactorTime, ttl: float = 600, limit: int = 10000) -> None:
        self.clock = clock
        self.ttl = ttl
        self.limit = limit
        self._entries: OrderedDict[str, PendingLogin] = OrderedDict()

    def new_state(self) -> str:
        return secrets.token_urlsafe(24)

    def remember(self, state: str, site_id: str, data: Mapping[str, str]) -> None:
        self._expire()
        while len(self._entries) >= self.limit:
            self._entries.popitem(last=False)
        self._entries[state] = PendingLogin(site_id, dict(data), self.clock.seconds())

    def take(self, state: str, site_id: str) -> PendingLogin | None:
        self._expire()
        entry = self._entries.get(state)
        if entry is None or entry.site_id != site_id:
            return None
        del self._entries[state]
        return entry

    def _expire(self) -> None:
        cutoff = self.clock.seconds() - self.ttl
        while self._entries:
            state, entry = next(iter(self._entries.items()))
            if entry.created > cutoff:
                return
            del self._entries[state]
