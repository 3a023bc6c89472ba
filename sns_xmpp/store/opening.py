"""Opening the configured database: SQLite by default, PostgreSQL for deployments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sns_xmpp.config import Config


def database_opener(config: Config) -> Callable[[], Any]:
    """A function that opens (and migrates) the configured database, synchronously."""
    if config.store.backend == "postgresql":
        from sns_xmpp.store.postgres import PostgresDatabase

        dsn = config.store.dsn
        return lambda: PostgresDatabase(dsn)
    from sns_xmpp.store.sqlite import SQLiteDatabase

    path = config.store_path
    return lambda: SQLiteDatabase(path)
