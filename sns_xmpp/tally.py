"""Counts by key that forget a key at zero: connections per address, writes per sender.

Every per-key limit of the server (c2s and HTTP connections per address, component streams before
their handshake, offline writes in flight per sender) keeps such a count, raised when a thing
starts and lowered when it ends; a key whose count is back to zero is dropped, so the table holds
only the keys that have something live, whatever number of addresses came and went.
"""

from __future__ import annotations


class Tally:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __getitem__(self, key: str) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, key: str) -> int:
        """Count one more for *key*; the new count."""
        count = self._counts[key] = self._counts.get(key, 0) + 1
        return count

    def remove(self, key: str) -> int:
        """Count one less for *key* (forgotten at zero); the new count."""
        left = self._counts.get(key, 1) - 1
        if left > 0:
            self._counts[key] = left
        else:
            self._counts.pop(key, None)
        return max(left, 0)
