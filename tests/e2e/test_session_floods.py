"""One user's oversized work must not stall the others: an honest client's ping round trip is
measured while another session sends the largest roster set or presence fan-out the limits allow,
and while a session that never reads is flooded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest
import pytest_twisted
from twisted.internet import defer

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


async def non_reading_stream(port: int, direct_tls: bool) -> RawStream:
    """A raw client whose socket takes little and whose reader stops reading once logged in."""
    import socket
    import ssl

    from tests.rawxmpp import HEADER

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    if direct_tls:
        reader, writer = await asyncio.open_connection(sock=sock, limit=8192, ssl=context,
                                                       server_hostname="localhost")
        stream = RawStream(reader, writer, "localhost")
    else:
        reader, writer = await asyncio.open_connection(sock=sock, limit=8192)
        stream = RawStream(reader, writer, "localhost")
        await stream.restart()
        await stream.send_and_read("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", b"/>")
        await writer.start_tls(context, server_hostname="localhost")
    writer.write(HEADER.format(domain="localhost").encode())
    await reader.readuntil(b"</stream:features>")
    return stream


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])
@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_is_cut_off_and_its_messages_kept(server, direct_tls: bool) -> None:
    """Bob enables stream management and then never reads; Alice sends him 3 MiB. What the server
    holds for Bob's stream stays near the bound, his stream ends with policy-violation, every
    message (none was acknowledged) is in offline storage afterwards, and Alice's session carries on."""
    from sns_xmpp.xmpp.c2s import buffered_bytes

    bound = 1024 * 1024
    alice = await honest_client(server)
    await server.add_user("bob@localhost", "secret")
    bob = await wait(non_reading_stream(server.direct_tls_port if direct_tls else server.c2s_port, direct_tls))
    await wait(bob.log_in_plain("bob", "secret"))
    await wait(bob.send_and_read("<enable xmlns='urn:xmpp:sm:3'/>", b"/>"))
    [session] = server.sessions.resources("bob@localhost")
    stream = session.stream
    stream.max_outbound_bytes = bound  # as [xmpp.c2s] max_outbound_bytes would set it
    # Loopback lets the kernel buffer megabytes; a small send buffer makes the flood pile up in
    # the server's own memory at once, as it would behind a slow or stalled network.
    import socket

    from twisted.protocols.tls import TLSMemoryBIOProtocol

    connection = stream.transport
    while isinstance(connection, TLSMemoryBIOProtocol):  # direct TLS: the TCP connection under it
        connection = connection.transport
    connection.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    backlog: list[int] = []
    send = stream.send

    def measured_send(obj):  # type: ignore[no-untyped-def]
        written = send(obj)
        backlog.append(buffered_bytes(stream.transport))
        return written

    stream.send = measured_send  # type: ignore[method-assign]
    ended: defer.Deferred[None] = defer.Deferred()
    stream.on_close.append(lambda: ended.callback(None))
    await wait(bob.send_and_read("<presence/>", b"<presence"))  # available: the flood goes to this stream

    count, body = 48, "x" * 65536
    for n in range(count):
        alice.send_message(mto="bob@localhost", mbody=f"{n} {body}", mtype="chat")
    await wait(alice.plugin["xep_0199"].ping(jid="localhost"))  # all of them routed by now
    assert max(backlog) < bound + 2 * 65536 + 300_000, f"held {max(backlog)} bytes for a client that does not read"
    from twisted.internet import reactor

    await ended.addTimeout(30, reactor)
    assert stream.closed
    assert server.sessions.resources("bob@localhost") == []
    await server.store.delete_offline("nobody@localhost", [])  # after the writer thread's earlier writes
    assert await server.store.count_offline("bob@localhost") == count
    await wait(alice.plugin["xep_0199"].ping(jid="localhost"))
    assert alice.stream_errors.empty()
    bob.close()
    await wait(alice.log_out())


@pytest_twisted.ensureDeferred
async def test_going_unavailable_after_many_directed_presences_stalls_nobody(server) -> None:
    """Mallory sends directed presence to 40,000 remote addresses, then goes unavailable, which the
    server announces to every one of them (RFC 6121 4.6.3; here each comes back as an error, there
    being no server-to-server links). Directed presences per session are capped,
    so that fan-out stays small and an honest client's ping round trip meanwhile stays short (an
    unbounded set made one unavailable presence 20,000 stanzas and a 0.6 s stall)."""
    alice = await honest_client(server)
    await server.add_user("mallory@localhost", "secret")
    mallory = await wait(RawStream.open_tls(server.c2s_port))
    await wait(mallory.log_in_plain("mallory", "secret"))
    for start in range(0, 40_000, 2_000):
        batch = "".join(f"<presence to='u{n}@example.net'/>" for n in range(start, start + 2_000))
        await wait(answer_to(mallory, batch + f"<iq type='get' id='b{start}'><ping xmlns='urn:xmpp:ping'/></iq>",
                             f"b{start}"), timeout=60)
    [session] = server.sessions.resources("mallory@localhost")
    tracked = len(session.directed)

    unavailable = "<presence type='unavailable'/><iq type='get' id='after'><ping xmlns='urn:xmpp:ping'/></iq>"
    worst, _ = await wait(worst_round_trip(alice, answer_to(mallory, unavailable, "after")), timeout=60)
    assert worst < ROUND_TRIP_BOUND, f"an honest ping took {worst:.3f} s ({tracked} directed presences)"
    assert tracked <= 1000
    mallory.close()
    await wait(alice.log_out())
