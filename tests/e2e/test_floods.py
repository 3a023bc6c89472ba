"""Floods: thousands of connections that never authenticate and a burst of wrong passwords,
while two honest users keep chatting; the idle connections are reaped by the deadline."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest_twisted

from tests.e2e.test_daemon import ROOT, Daemon, admin, shipped_config_on_free_ports
from tests.rawxmpp import RawStream
from tests.xmppclient import Client, wait

FLOOD = 5000
PER_ADDRESS = 50  # never-authenticating streams per loopback address: the flood comes from 100 of them


async def wrong_password(port: int, n: int) -> str:
    """One wrong password; what the server answered (a failure, or a stream error that ended it)."""
    try:
        stream = await RawStream.open_tls(port)
    except asyncio.IncompleteReadError as ended:
        return ended.partial.decode()
    try:
        return await stream.auth("PLAIN", f"\0bob\0wrong-{n}".encode())
    except asyncio.IncompleteReadError as ended:
        return ended.partial.decode()
    finally:
        stream.close()


async def chat(alice: Client, bob: Client, rounds: int) -> list[float]:
    latencies = []
    for n in range(rounds):
        sent = time.monotonic()
        alice.send_message(mto="bob@localhost", mbody=f"r{n}", mtype="chat")
        while (await bob.next_message())["body"] != f"r{n}":
            pass
        latencies.append(time.monotonic() - sent)
    return latencies


@pytest_twisted.ensureDeferred
async def test_honest_users_keep_chatting_through_a_flood(tmp_path: Path) -> None:
    text, port, _ = shipped_config_on_free_ports()
    config = tmp_path / "sns-xmpp.toml"
    config.write_text(text.replace("auth_timeout = 30", "auth_timeout = 3"))
    for user in ("alice", "bob"):
        assert admin(config, tmp_path, "user", "add", f"{user}@localhost", password="pw-" + user).returncode == 0
    daemon = Daemon(config, tmp_path)
    try:
        await wait(daemon.start(), timeout=120)
        alice, bob = Client("alice@localhost", "pw-alice"), Client("bob@localhost", "pw-bob")
        await wait(alice.log_in(port))
        await wait(bob.log_in(port))

        # The flood comes from its own process, so the latencies measured here are the server's.
        flood = await wait(asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.e2e.flood_client", str(port), str(FLOOD), str(PER_ADDRESS),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE))
        assert flood.stdout is not None
        chatting = asyncio.ensure_future(chat(alice, bob, 300))
        wrong = asyncio.gather(*(wrong_password(port, n) for n in range(30)))
        assert (await wait(flood.stdout.readline(), timeout=120)) == f"opened {FLOOD}\n".encode()
        answers = await wait(wrong, timeout=120)
        latencies = sorted(await wait(chatting, timeout=120))

        # Refused, answered ever more slowly, or ended by the authentication deadline first.
        assert not [a for a in answers if "<success" in a]
        assert any("<stream:error>" in a for a in answers), "the throttle slowed the burst past the deadline"
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        assert p99 < 0.2, f"p99 round trip {p99 * 1000:.0f} ms during the flood"

        reaped = json.loads(await wait(flood.stdout.readline(), timeout=60))
        assert reaped == {"closed": FLOOD, "connection_timeout": FLOOD, "others": []}, reaped
        assert await wait(flood.wait()) == 0
        await wait(chat(alice, bob, 5))  # and still chatting after the reaping
        for client in (alice, bob):
            await wait(client.log_out())
        await wait(daemon.stop(), timeout=60)
    finally:
        daemon.kill()
