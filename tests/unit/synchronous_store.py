"""A store for feature unit tests: the real SQL on a real SQLite database, answered at once.

Every `IStore` call (and `run`/`run_read`, a feature module's own SQL) runs on the calling thread
and returns a fired Deferred, so a test feeds raw XML to a stream and reads the answer with no
reactor and no waiting, while the writes, the schema and its cascades are the real ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer

from sns_xmpp.store import composite
from sns_xmpp.store.common import Database
from sns_xmpp.store.sqlite import SQLiteDatabase


class SynchronousStore:
    def __init__(self, path: Path | str = ":memory:") -> None:
        self.database: Database = SQLiteDatabase(path)

    def run(self, work: Callable[[Database], Any]) -> defer.Deferred:
        return defer.maybeDeferred(work, self.database)

    run_read = run_aside = run

    def store_offline_capped(self, owner: str, stanza: str, now: float, cap: int,
                             max_size: int | None = None) -> defer.Deferred:
        return self.run(lambda db: composite.store_offline_capped(db, owner, stanza, now, cap, max_size))

    def __getattr__(self, name: str) -> Callable[..., defer.Deferred]:
        method = getattr(self.database, name)
        return lambda *args, **kwargs: defer.maybeDeferred(method, *args, **kwargs)

    def close(self) -> None:
        self.database.close()
