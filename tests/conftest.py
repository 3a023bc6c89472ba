"""Shared fixtures: an in-process server on free loopback ports, with a real SQLite file."""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from sns_xmpp import startup
from sns_xmpp.auth.scram import derive_all
from sns_xmpp.config import Config, parse_config

# Nothing here may import a module that imports twisted.internet.reactor: this
# file loads before pytest-twisted installs the asyncio reactor.

# The test set-up's half of the start-up call (the service makes the other): the wokkel names and
# the escaping serialiser, which importing sns_xmpp no longer installs.
startup.install()

pytest_plugins = ["tests.pgfixtures", "tests.redisserver"]

BASE_CONFIG = """
[server]
domains = ["localhost", "example.org"]
data_dir = "{data}"

[xmpp.c2s]
port = 0
direct_tls_port = 0

[xmpp.s2s]
port = 0

[http]
port = {http_port}
public_url = "http://127.0.0.1:{http_port}"
"""

DEMO_SITE = """
[sites.demo]
plugin = "demo"
"""


def free_port() -> int:
    """A loopback port free now; for the HTTP side, whose public URL must be known before it listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_config(tmp_path: Path, extra: str = DEMO_SITE, http_port: int | None = None) -> Config:
    text = textwrap.dedent(BASE_CONFIG).format(data=tmp_path / "data", http_port=http_port or free_port())
    return parse_config(text + textwrap.dedent(extra))


class RunningServer:
    """A started server and the ways tests poke it."""

    def __init__(self, server) -> None:  # type: ignore[no-untyped-def]
        self.server = server
        self.store = server.store
        self.sessions = server.sessions

    @property
    def c2s_port(self) -> int:
        return self.server.listener("c2s").port_number

    @property
    def http_url(self) -> str:
        return self.server.config.http.public_url

    @property
    def direct_tls_port(self) -> int:
        return self.server.listener("c2s-direct-tls").port_number

    def add_user(self, jid: str, password: str) -> defer.Deferred:
        from twisted.internet import reactor

        return self.store.create_account(jid, derive_all(password), reactor.seconds())


@pytest_twisted.async_yield_fixture
async def start_server(tmp_path: Path):
    """A factory: start a server from a config (restartable on the same data folder)."""
    from twisted.internet import reactor

    from sns_xmpp.service import build_server

    running: list = []

    async def start(config: Config | None = None) -> RunningServer:
        server = build_server(config or make_config(tmp_path), reactor)
        server.top.startService()
        await server.store.when_open()
        for listener in server.top:
            if getattr(listener, "listening", None) is not None:
                await listener.listening
        running.append(server)
        return RunningServer(server)

    async def stop(server: RunningServer) -> None:
        running.remove(server.server)
        await defer.maybeDeferred(server.server.top.stopService)

    start.stop = stop  # type: ignore[attr-defined]
    yield start
    for server in running:
        await defer.maybeDeferred(server.top.stopService)


@pytest_twisted.async_yield_fixture
async def server(start_server: Callable) -> RunningServer:
    yield await start_server()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_config(request: pytest.FixtureRequest) -> str:
    """The [store] table for each backend; PostgreSQL gets a fresh database in the session's cluster."""
    if request.param == "sqlite":
        return ""
    dsn = request.getfixturevalue("new_postgres_database")()
    return f'\n[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n'


@pytest_twisted.async_yield_fixture
async def server_on_each_store(start_server: Callable, store_config: str, tmp_path: Path) -> RunningServer:
    """The server with the demo site, once on SQLite and once on PostgreSQL."""
    yield await start_server(make_config(tmp_path, DEMO_SITE + store_config))
