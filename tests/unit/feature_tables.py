"""The feature modules' own SQL for the unit tests' store doubles."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from sns_xmpp.store.common import Database
from sns_xmpp.store.sqlite import SQLiteDatabase


class FeatureTables:
    """`IStore.run` and `run_read` for a store double: a feature's own SQL runs at once on a real
    SQLite database in memory, whose tables start empty (no account blocks anyone, keeps
    anything...). A test whose feature writes per-account rows creates the accounts there
    (``store.database.create_account``)."""

    def run(self, work: Callable[[Database], Any]) -> defer.Deferred:
        return defer.execute(work, self.database)

    def run_read(self, work: Callable[[Database], Any]) -> defer.Deferred:
        return defer.execute(work, self.database)

    run_aside = run

    @functools.cached_property
    def database(self) -> SQLiteDatabase:
        return SQLiteDatabase(":memory:")
