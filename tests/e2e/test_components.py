"""XEP-0114 components: slixmpp's ComponentXMPP, a real third-party implementation, as echo.localhost."""

from __future__ import annotations

import asyncio
import hashlib

import pytest_twisted
import slixmpp

from tests.conftest import DEMO_SITE, make_config
from tests.xmppclient import Client, wait

COMPONENTS = """
[xmpp.components]
port = {port}

[components."echo.localhost"]
secret = "echo-secret-0123456789"
"""


async def raw_component(port: int, domain: str, secret: str) -> bytes:
    """What the server answers a component stream and its handshake (slixmpp drops the stream error)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'"
                 f" to='{domain}'>".encode())
    header = await reader.readuntil(b">")
    if b"id='" in header:
        stream_id = header.split(b"id='")[1].split(b"'")[0].decode()
        digest = hashlib.sha1((stream_id + secret).encode()).hexdigest()
        writer.write(f"<handshake>{digest}</handshake>".encode())
    answer = await reader.read()
    writer.close()
    return header + answer


class Echo(slixmpp.ComponentXMPP):
    def __init__(self, secret: str, port: int) -> None:
        super().__init__("echo.localhost", secret, "127.0.0.1", port)
        self.connected_event = asyncio.Event()
        self.add_event_handler("session_start", lambda _: self.connected_event.set())
        self.add_event_handler("message", self.echo)

    def echo(self, message: slixmpp.Message) -> None:
        if message["type"] in ("chat", "normal"):
            message.reply(f"echo: {message['body']}").send()


@pytest_twisted.ensureDeferred
async def test_echo_component_answers_a_local_user_and_a_wrong_secret_is_refused(start_server, tmp_path) -> None:
    from tests.conftest import free_port

    port = free_port()
    server = await start_server(make_config(tmp_path, DEMO_SITE + COMPONENTS.format(port=port)))
    await server.add_user("alice@localhost", "secret")
    echo = Echo("echo-secret-0123456789", port)
    echo.connect()
    await wait(echo.connected_event.wait())

    taken = await wait(raw_component(port, "echo.localhost", "echo-secret-0123456789"))
    assert b"<conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in taken  # echo.localhost is connected
    unknown = await wait(raw_component(port, "other.localhost", "echo-secret-0123456789"))
    assert b"<host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in unknown

    alice = Client("alice@localhost", "secret")
    await wait(alice.log_in(server.c2s_port))
    items = await wait(alice.plugin["xep_0030"].get_items(jid="localhost"))
    listed = [item[0] for item in items["disco_items"]["items"]]
    in_process = ("conference.", "upload.")  # the server's own services (MUC, HTTP upload), listed too
    assert [jid for jid in listed if not jid.startswith(in_process)] == ["echo.localhost"]
    alice.send_message(mto="echo.localhost", mbody="hello", mtype="chat")
    answer = await wait(alice.next_message())
    assert (answer["from"].bare, answer["body"]) == ("echo.localhost", "echo: hello")

    echo.disconnect()
    await wait(echo.wait_until("disconnected", 10))
    wrong = await wait(raw_component(port, "echo.localhost", "wrong-secret-0123456789"))
    assert b"<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in wrong
    alice.send_message(mto="echo.localhost", mbody="anyone?", mtype="chat")
    bounced = await wait(alice.next_message())
    assert (bounced["type"], bounced["error"]["condition"]) == ("error", "service-unavailable")

    echo = Echo("echo-secret-0123456789", port)
    echo.connect()
    await wait(echo.connected_event.wait())
    alice.send_message(mto="echo.localhost", mbody="back", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "echo: back"
    await wait(alice.log_out())
    echo.disconnect()


def billion_laughs() -> bytes:
    """520 bytes: a DTD whose entities expand to 4 MB of handshake text (minutes of CPU for
    Twisted's plain parser, which accumulates text one concatenation per entity)."""
    entities = ['<!ENTITY l0 "' + "x" * 40 + '">'] + [f'<!ENTITY l{n} "' + f"&l{n - 1};" * 10 + '">'
                                                      for n in range(1, 6)]
    return (f"<?xml version='1.0'?><!DOCTYPE stream:stream [{''.join(entities)}]>"
            "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'"
            " to='echo.localhost'><handshake>&l5;</handshake>").encode()


async def attack(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(billion_laughs())
    await writer.drain()
    return reader, writer  # the writer too: a collected writer closes its connection


POLLER = """
import sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
urllib.request.urlopen(url, timeout=30).read()
print("ready", flush=True)
until, waits = time.monotonic() + seconds, []
while time.monotonic() < until:
    sent = time.monotonic()
    try:
        urllib.request.urlopen(url, timeout=10).read()
    except OSError:
        pass
    waits.append(time.monotonic() - sent)
print(len(waits), max(waits), flush=True)
"""


@pytest_twisted.ensureDeferred
async def test_a_dtd_on_the_component_port_does_not_stall_the_server(start_server, tmp_path) -> None:
    """Eight billion-laughs headers on the component port while another process polls /health for
    three seconds: no poll waits a second, each attacker gets restricted-xml and is closed, and
    the real component then connects and echoes."""
    import sys

    from tests.conftest import free_port

    port = free_port()
    server = await start_server(make_config(tmp_path, DEMO_SITE + COMPONENTS.format(port=port)))
    await server.add_user("alice@localhost", "secret")
    alice = Client("alice@localhost", "secret")
    await wait(alice.log_in(server.c2s_port))

    poller = await wait(asyncio.create_subprocess_exec(
        sys.executable, "-c", POLLER, f"{server.http_url}/health", "3", stdout=asyncio.subprocess.PIPE))
    assert poller.stdout is not None
    assert await wait(poller.stdout.readline()) == b"ready\n"
    attackers = await wait(asyncio.gather(*(attack(port) for _ in range(8))))
    count, longest = (await wait(poller.stdout.readline(), timeout=60)).split()
    assert int(count) >= 10 and float(longest) < 1.0, f"/health waited up to {float(longest):.2f} s"
    answers = await wait(asyncio.gather(*(reader.read() for reader, _ in attackers)))  # to the end: closed
    for answer in answers:
        assert b"<restricted-xml xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in answer
    await wait(poller.wait())

    echo = Echo("echo-secret-0123456789", port)
    echo.connect()
    await wait(echo.connected_event.wait())
    alice.send_message(mto="echo.localhost", mbody="there?", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "echo: there?"
    echo.disconnect()
    await wait(alice.log_out())
