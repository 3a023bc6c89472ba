"""PostgreSQL for the tests: one throwaway cluster per session, a fresh database per test.

Loaded from tests/conftest.py as a pytest plugin. Where no PostgreSQL binaries are
installed the tests that need it skip with the reason, unless SNS_XMPP_REQUIRE_POSTGRES
is set (.ci/run sets it after installing PostgreSQL), which makes that a failure.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from tests.pgcluster import Cluster, PostgresUnavailable, running_cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the whole session."""
    stack = ExitStack()
    try:
        cluster = stack.enter_context(running_cluster())
    except PostgresUnavailable as reason:
        if os.environ.get("SNS_XMPP_REQUIRE_POSTGRES"):  # set by .ci/run, which installs PostgreSQL
            pytest.fail(f"SNS_XMPP_REQUIRE_POSTGRES is set, but: {reason}")
        pytest.skip(f"PostgreSQL tests need a server: {reason}")
    with stack:
        yield cluster


_database_numbers = itertools.count()


@pytest.fixture
def new_postgres_database(postgres_cluster: Cluster) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty databases in the session's cluster; dropped after the test."""
    names: list[str] = []

    def create() -> str:
        names.append(f"test_{next(_database_numbers)}")
        return postgres_cluster.create_database(names[-1])

    yield create
    for name in names:
        postgres_cluster.drop_database(name)  # FORCE: also ends connections a failed test left open


@pytest.fixture
def postgres_dsn(new_postgres_database: Callable[[], str]) -> str:
    """A fresh, empty database for this test."""
    return new_postgres_database()
