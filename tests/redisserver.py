"""A throwaway Redis for tests: Debian's redis-server on a free loopback port, no persistence,
started once per session; each test's cluster takes a key prefix of its own."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[str]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_redis(folder: str, port: int | None = None, *extra: str) -> RedisServer:
    """Start redis-server and return once it says it accepts connections."""
    port = port or _free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder,
         "--protected-mode", "no", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:  # redis-server logs to stdout: read until it is ready
        if "Ready to accept connections" in line:
            break
    else:
        raise RuntimeError(f"redis-server on port {port} did not start")
    # It goes on logging to the pipe: drain it, or a full pipe would stop Redis.
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # type: ignore[union-attr]
    return RedisServer(port, process)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if os.environ.get("SNS_XMPP_REQUIRE_CLIENTS"):  # .ci/run installs it
            pytest.fail("redis-server is required (Debian's redis-server package)")
        pytest.skip("these tests need redis-server (Debian's redis-server package)")
    with tempfile.TemporaryDirectory() as folder:
        server = start_redis(folder)
        try:
            yield server
        finally:
            server.process.kill()
            server.process.wait()


_prefixes = itertools.count()


@pytest.fixture
def cluster_keys(redis_server: RedisServer) -> str:
    """A [cluster] table for one test's nodes: the session's Redis, a key prefix of its own."""
    return f'\n[cluster]\nredis_url = "{redis_server.url}"\nkey_prefix = "t{next(_prefixes)}:"\n'
