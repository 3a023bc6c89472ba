"""One user's oversized work must not stall the others: an honest client's ping round trip is
measured while another session sends the largest roster set or presence fan-out the limits allow,
and while a session that never reads is flooded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest_twisted

from tests.rawxmpp import RawStream
from tests.xmppclient import Client, wait

ROUND_TRIP_BOUND = 0.5  # seconds; the stalls these tests guard against were 0.6 s to 1.4 s


async def worst_round_trip(client: Client, during: Awaitable[object]) -> tuple[float, object]:
    """Ping the server over and over while *during* runs; the slowest round trip and its result."""
    attack = asyncio.ensure_future(during)
    worst = 0.0
    while not attack.done():
        sent = time.monotonic()
        await client.plugin["xep_0199"].ping(jid="localhost", timeout=30)
        worst = max(worst, time.monotonic() - sent)
    return worst, attack.result()


async def answer_to(stream: RawStream, xml: str, identifier: str) -> str:
    """Send *xml* (an IQ) and read up to the end of the IQ that answers it (of any size)."""
    stream.writer.write(xml.encode())
    data = b""
    start = f"id='{identifier}'".encode()
    while True:
        data += await stream.reader.read(65536)
        at = data.find(start)
        if at < 0:
            continue
        opening = data.rfind(b"<iq", 0, at)
        tag_end = data.find(b">", at)
        if tag_end > 0 and data[tag_end - 1:tag_end] == b"/":
            return data[opening:tag_end + 1].decode()
        close = data.find(b"</iq>", at)
        if close > 0:
            return data[opening:close + 5].decode()


async def honest_client(server) -> Client:  # type: ignore[no-untyped-def]
    await server.add_user("alice@localhost", "secret")
    alice = Client("alice@localhost", "secret")
    await wait(alice.log_in(server.c2s_port))
    return alice


@pytest_twisted.ensureDeferred
async def test_a_roster_set_with_thousands_of_groups_stalls_nobody(server) -> None:
    """A 250 kB roster set of distinct groups (RFC 6121 leaves the count to the server) is refused
    at once; an honest client's ping round trip meanwhile stays short. It took 1.4 s when the
    groups were de-duplicated in a list."""
    alice = await honest_client(server)
    await server.add_user("mallory@localhost", "secret")
    mallory = await wait(RawStream.open_tls(server.c2s_port))
    await wait(mallory.log_in_plain("mallory", "secret"))
    groups = "".join(f"<group>g{n:07}</group>" for n in range(10_900))
    roster_set = (f"<iq type='set' id='big'><query xmlns='jabber:iq:roster'><item jid='x@localhost'>{groups}"
                  "</item></query></iq>")
    assert 240_000 < len(roster_set) < 262_144

    worst, answer = await wait(worst_round_trip(alice, answer_to(mallory, roster_set, "big")), timeout=60)
    assert worst < ROUND_TRIP_BOUND, f"an honest ping took {worst:.3f} s"
    assert "type='error'" in str(answer) and "<not-acceptable" in str(answer)
    mallory.close()
    await wait(alice.log_out())
