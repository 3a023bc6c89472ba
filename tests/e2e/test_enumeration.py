"""SCRAM's first answer for an unknown user, from the daemon, before and after a restart."""

from __future__ import annotations

import base64
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest_twisted

from sns_xmpp.auth.scram import derive_all
from sns_xmpp.config import parse_config
from tests.conftest import BASE_CONFIG, DEMO_SITE, free_port
from tests.rawxmpp import RawStream
from tests.xmppclient import wait


async def server_first(port: int, username: str) -> dict[str, str]:
    """SCRAM-SHA-256 client-first for *username* over STARTTLS; the server-first attributes."""
    stream = await RawStream.open_tls(port)
    try:
        answer = await stream.auth("SCRAM-SHA-256", f"n,,n={username},r=clientnonce".encode())
    finally:
        stream.close()
    assert answer.startswith("<challenge"), answer
    message = base64.b64decode(answer.split(">", 1)[1].split("<", 1)[0]).decode()
    return dict(field.split("=", 1) for field in message.split(","))


@pytest_twisted.ensureDeferred
async def test_unknown_users_get_the_configured_count_and_a_salt_that_survives_a_restart(
        start_server: Callable, tmp_path: Path) -> None:
    """With scram_iterations = 10000, a real user and an unknown one both get i=10000 (the
    unknown one got 4096); the unknown user's salt is the same after a restart on the same data
    folder (it changed at every start), and differs between unknown names."""
    text = textwrap.dedent(BASE_CONFIG).format(data=tmp_path / "data", http_port=free_port())
    config = parse_config(text.replace("[xmpp.c2s]\n", "[xmpp.c2s]\nscram_iterations = 10000\n")
                          + textwrap.dedent(DEMO_SITE))
    from twisted.internet import reactor

    first = await start_server(config)
    await first.store.create_account("alice@localhost", derive_all("secret", iterations=10_000),
                                     reactor.seconds())
    real = await wait(server_first(first.c2s_port, "alice"))
    unknown = await wait(server_first(first.c2s_port, "mallory"))
    other = await wait(server_first(first.c2s_port, "trent"))
    assert real["i"] == unknown["i"] == "10000"
    assert other["s"] != unknown["s"]
    await start_server.stop(first)  # type: ignore[attr-defined]

    second = await start_server(config)
    again = await wait(server_first(second.c2s_port, "mallory"))
    assert (again["i"], again["s"]) == ("10000", unknown["s"])

