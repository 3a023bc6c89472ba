"""Two sns-xmpp daemons federated on loopback (RFC 6120 s2s, XEP-0220 dialback over TLS), driven
by slixmpp clients: a.test on 127.0.0.1, b.test on 127.0.0.2, each told where the other is
through [xmpp.s2s.hosts] (no DNS)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, succeed

from sns_xmpp.config import parse_config
from sns_xmpp.xmpp.s2s.resolve import Target
from tests.conftest import DEMO_SITE, free_port
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

A_ADDRESS, B_ADDRESS = "127.0.0.1", "127.0.0.2"


def free_port_on(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def federated_config(tmp_path: Path, domain: str, address: str, port: int, hosts: dict[str, str],
                     extra: str = "") -> Any:
    http_port = free_port()
    hosts_table = "\n".join(f'"{name}" = "{target}"' for name, target in hosts.items())
    text = textwrap.dedent(f"""
        [server]
        domains = ["{domain}"]
        data_dir = "{tmp_path / domain}"

        [xmpp.c2s]
        port = 0
        direct_tls_port = -1

        [xmpp.s2s]
        interface = "{address}"
        port = {port}
        {extra}

        [xmpp.s2s.hosts]
        {hosts_table}

        [http]
        port = {http_port}
        public_url = "http://127.0.0.1:{http_port}"
        """)
    return parse_config(text + textwrap.dedent(DEMO_SITE))


async def two_servers(start_server: Any, tmp_path: Path, extra_a: str = "", more_hosts: dict[str, str] | None = None
                      ) -> tuple[Any, Any]:
    port_a, port_b = free_port_on(A_ADDRESS), free_port_on(B_ADDRESS)
    a = await start_server(federated_config(tmp_path, "a.test", A_ADDRESS, port_a,
                                            {"b.test": f"{B_ADDRESS}:{port_b}", **(more_hosts or {})}, extra_a))
    b = await start_server(federated_config(tmp_path, "b.test", B_ADDRESS, port_b,
                                            {"a.test": f"{A_ADDRESS}:{port_a}"}))
    return a, b


async def presence_from(client: Client, bare: str) -> None:
    while True:
        presence = await client.presences.get()
        if presence["from"].bare == bare and presence["type"] != "unavailable":
            return


@pytest_twisted.ensureDeferred
async def test_a_social_user_and_a_remote_user_subscribe_and_chat_across_two_servers(start_server, tmp_path) -> None:
    """A social user of a.test (the demo site) and a local user of b.test: mutual subscription,
    presence both ways, messages both ways with non-ASCII text, the probe at a new login, all over s2s; each direction
    authenticated with dialback over TLS (self-signed certificates), as the console shows."""
    a, b = await two_servers(start_server, tmp_path)
    credentials = await demo_credentials(a, "rosa")
    assert credentials["jid"].endswith("@a.test")
    await b.add_user("bob@b.test", "secret")
    rosa = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
    await wait(rosa.log_in(a.c2s_port))
    bob = Client("bob@b.test", "secret")
    await wait(bob.log_in(b.c2s_port))
    rosa_bare = rosa.boundjid.bare

    rosa.send_presence(pto="bob@b.test", ptype="subscribe")
    request = await wait(bob.subscription_requests.get())
    assert request["from"].bare == rosa_bare
    bob.send_presence(pto=rosa_bare, ptype="subscribed")
    bob.send_presence(pto=rosa_bare, ptype="subscribe")
    request = await wait(rosa.subscription_requests.get())
    assert request["from"].bare == "bob@b.test"
    rosa.send_presence(pto="bob@b.test", ptype="subscribed")
    await wait(presence_from(rosa, "bob@b.test"))
    await wait(presence_from(bob, rosa_bare))
    assert rosa.client_roster["bob@b.test"]["subscription"] == "both"

    rosa.send_message(mto="bob@b.test", mbody="Grüße aus a.test ✓", mtype="chat")
    received = await wait(bob.next_message())
    assert (received["body"], received["from"].full) == ("Grüße aus a.test ✓", rosa.boundjid.full)
    bob.send_message(mto=received["from"], mbody="こんにちは", mtype="chat")
    received = await wait(rosa.next_message())
    assert (received["body"], received["from"].bare) == ("こんにちは", "bob@b.test")

    # Logging in again, rosa's server probes b.test for bob's presence (RFC 6121 4.3), and b.test answers.
    await wait(rosa.log_out())
    rosa = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
    await wait(rosa.log_in(a.c2s_port))
    await wait(presence_from(rosa, "bob@b.test"))

    out_of_a = a.server.federation.domains()["b.test"]["out"]
    assert [(link["state"], link["method"]) for link in out_of_a] == [("authenticated", "tls+dialback")]
    into_a = a.server.federation.domains()["b.test"]["in"]
    assert [(stream["state"], stream["method"]) for stream in into_a] == [("authenticated", "tls+dialback")]
    for client in (rosa, bob):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_remote_offline_user_gets_the_message_at_login_and_a_nonexistent_one_bounces(
        start_server, tmp_path) -> None:
    """A message over s2s to b.test's user who is offline is kept there and delivered at login
    (with its delay stamp); one to an account b.test does not have comes back as an error from
    b.test to the sender on a.test (RFC 6121 8.5.1)."""
    a, b = await two_servers(start_server, tmp_path)
    await a.add_user("alice@a.test", "secret")
    await b.add_user("bob@b.test", "secret")
    alice = Client("alice@a.test", "secret")
    await wait(alice.log_in(a.c2s_port))
    alice.send_message(mto="bob@b.test", mbody="for later", mtype="chat")
    alice.send_message(mto="nobody@b.test", mbody="anyone?", mtype="chat")
    # The bounce follows the first message through both servers: b.test has taken it by now (and
    # the store reads no row before the writes queued ahead of it).
    bounce = await wait(alice.next_message())
    assert (bounce["type"], bounce["from"].bare) == ("error", "nobody@b.test")
    assert bounce["error"]["condition"] == "service-unavailable"
    assert ["for later" in kept.stanza for kept in await b.store.offline_messages("bob@b.test")] == [True]
    bob = Client("bob@b.test", "secret")
    await wait(bob.log_in(b.c2s_port))
    kept = await wait(bob.next_message())
    assert (kept["body"], kept["from"].bare) == ("for later", "alice@a.test")
    for client in (alice, bob):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_sasl_external_when_each_server_trusts_the_others_certificate(start_server, tmp_path) -> None:
    """With a.test's trust store holding b.test's self-signed certificate and b.test's holding
    a.test's (a private federation's ca_file), both directions use SASL EXTERNAL (XEP-0178)."""
    port_a, port_b = free_port_on(A_ADDRESS), free_port_on(B_ADDRESS)
    config_a = federated_config(tmp_path, "a.test", A_ADDRESS, port_a, {"b.test": f"{B_ADDRESS}:{port_b}"})
    config_b = federated_config(tmp_path, "b.test", B_ADDRESS, port_b, {"a.test": f"{A_ADDRESS}:{port_a}"})
    from twisted.internet import reactor

    from sns_xmpp.service import build_server
    build_server(config_a, reactor)  # makes a.test's certificate in its data folder
    build_server(config_b, reactor)
    cert_a, cert_b = tmp_path / "a.test" / "tls" / "self-signed.crt", tmp_path / "b.test" / "tls" / "self-signed.crt"
    a = await start_server(federated_config(tmp_path, "a.test", A_ADDRESS, port_a, {"b.test": f"{B_ADDRESS}:{port_b}"},
                                            f'ca_file = "{cert_b}"'))
    b = await start_server(federated_config(tmp_path, "b.test", B_ADDRESS, port_b, {"a.test": f"{A_ADDRESS}:{port_a}"},
                                            f'ca_file = "{cert_a}"'))
    await a.add_user("alice@a.test", "secret")
    await b.add_user("bob@b.test", "secret")
    alice, bob = Client("alice@a.test", "secret"), Client("bob@b.test", "secret")
    await wait(alice.log_in(a.c2s_port))
    await wait(bob.log_in(b.c2s_port))
    alice.send_message(mto="bob@b.test", mbody="over EXTERNAL", mtype="chat")
    assert (await wait(bob.next_message()))["body"] == "over EXTERNAL"
    bob.send_message(mto="alice@a.test", mbody="and back", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "and back"
    assert [link["method"] for link in a.server.federation.domains()["b.test"]["out"]] == ["tls+external"]
    assert [link["method"] for link in b.server.federation.domains()["a.test"]["out"]] == ["tls+external"]
    for client in (alice, bob):
        await wait(client.log_out())


class RoguePeer:
    """A raw TLS peer speaking s2s to a.test's listener as if it were b.test, with a key it made up."""

    HEADER = ("<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' "
              "xmlns:db='jabber:server:dialback' from='b.test' to='a.test' version='1.0'>")

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.received = ""

    async def read_until(self, marker: str) -> str:
        assert self.reader is not None
        while marker not in self.received:
            chunk = await self.reader.read(65536)
            if not chunk:
                break
            self.received += chunk.decode()
        return self.received

    def write(self, text: str) -> None:
        assert self.writer is not None
        self.writer.write(text.encode())

    async def secured(self) -> None:
        """Header, STARTTLS, header again: at the features after TLS."""
        self.reader, self.writer = await asyncio.open_connection(A_ADDRESS, self.port)
        self.write(self.HEADER)
        await self.read_until("</stream:features>")
        self.write("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.read_until("<proceed")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        await self.writer.start_tls(context, server_hostname="a.test")
        self.received = ""
        self.write(self.HEADER)
        await self.read_until("</stream:features>")


SPOOF = "<message from='mallory@b.test' to='alice@a.test' type='chat'><body>spoof</body></message>"


@pytest_twisted.ensureDeferred
async def test_a_rogue_peer_with_a_wrong_dialback_key_is_refused_and_none_of_its_stanzas_accepted(
        start_server, tmp_path) -> None:
    """Someone claims to be b.test towards a.test with a key b.test never issued: a.test asks
    b.test's real server (db:verify over a connection of its own), hears invalid, answers
    <db:result type='invalid'/> and ends the stream with not-authorized. A stanza sent with the
    key, before the verdict, ends the stream at once. Alice, online on a.test, gets neither."""
    a, b = await two_servers(start_server, tmp_path)
    await a.add_user("alice@a.test", "secret")
    alice = Client("alice@a.test", "secret")
    await wait(alice.log_in(a.c2s_port))
    port = a.server.listener("s2s").port_number

    hasty = RoguePeer(port)
    await wait(hasty.secured())
    hasty.write("<db:result from='b.test' to='a.test'>" + "0" * 64 + "</db:result>" + SPOOF)
    answer = await wait(hasty.read_until("</stream:stream>"))
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in answer
    assert "type='valid'" not in answer

    patient = RoguePeer(port)
    await wait(patient.secured())
    patient.write("<db:result from='b.test' to='a.test'>" + "0" * 64 + "</db:result>")
    answer = await wait(patient.read_until("</stream:stream>"))
    assert "<db:result from='a.test' to='b.test' type='invalid'/><stream:error><not-authorized " in answer
    patient.write(SPOOF)

    # Both rogue streams are over; whatever they could have delivered would be on alice's stream
    # before this message to herself.
    alice.send_message(mto=alice.boundjid.full, mbody="marker", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "marker"
    assert alice.messages.empty()
    assert "b.test" not in {remote for remote, entry in a.server.federation.domains().items()
                            if any(stream["state"] == "authenticated" for stream in entry["in"])}
    await wait(alice.log_out())


@pytest_twisted.ensureDeferred
async def test_unknown_and_silent_domains_bounce_within_30_seconds_while_the_reactor_keeps_serving(
        start_server, tmp_path) -> None:
    """A message to a domain that resolves nowhere (DNS asked for real, in resolve.py's bounded
    steps) bounces remote-server-not-found; one to a server that accepts the connection and never
    speaks bounces remote-server-timeout after connect_timeout (3 s here). Both within 30 s, and
    meanwhile local messages keep flowing, each in well under a second."""
    silent = await wait(asyncio.start_server(lambda reader, writer: None, A_ADDRESS, 0))
    silent_port = silent.sockets[0].getsockname()[1]
    try:
        a, b = await two_servers(start_server, tmp_path, "connect_timeout = 3",
                                 more_hosts={"silent.test": f"{A_ADDRESS}:{silent_port}"})
        await a.add_user("alice@a.test", "secret")
        await a.add_user("carol@a.test", "secret")
        alice, carol = Client("alice@a.test", "secret"), Client("carol@a.test", "secret")
        await wait(alice.log_in(a.c2s_port))
        await wait(carol.log_in(a.c2s_port))
        started = time.monotonic()
        alice.send_message(mto="someone@nowhere.invalid", mbody="hello?", mtype="chat")
        alice.send_message(mto="someone@silent.test", mbody="anyone?", mtype="chat")
        bounces = {}
        round_trips = []
        while len(bounces) < 2:
            sent = time.monotonic()
            alice.send_message(mto="carol@a.test", mbody="still here", mtype="chat")
            assert (await wait(carol.next_message()))["body"] == "still here"
            round_trips.append(time.monotonic() - sent)
            while not alice.messages.empty():
                bounce = alice.messages.get_nowait()
                assert bounce["type"] == "error", bounce
                bounces[bounce["from"].bare] = (bounce["error"]["condition"], time.monotonic() - started)
            assert time.monotonic() - started < 30
        assert bounces["someone@nowhere.invalid"][0] == "remote-server-not-found"
        condition, after = bounces["someone@silent.test"]
        assert condition == "remote-server-timeout" and 3 <= after < 10
        assert max(round_trips) < 1, round_trips
        for client in (alice, carol):
            await wait(client.log_out())
    finally:
        silent.close()


@pytest_twisted.ensureDeferred
async def test_go_sendxmpp_as_a_social_user_reaches_a_remote_user(start_server, tmp_path) -> None:
    """A client of another stack (go-sendxmpp, Go's crypto/tls) logs in to a.test as a social
    user (its JID and hand-over password), sends to bob@b.test and leaves at once; the message, queued while
    a.test's link to b.test comes up, reaches bob from the social user's JID."""
    from tests.e2e.test_go_clients import _need_go_sendxmpp, go_sendxmpp
    _need_go_sendxmpp()
    a, b = await two_servers(start_server, tmp_path)
    credentials = await demo_credentials(a, "gopher")
    await b.add_user("bob@b.test", "secret")
    bob = Client("bob@b.test", "secret")
    await wait(bob.log_in(b.c2s_port))
    message = tmp_path / "message.txt"
    message.write_text("hello bob, from Go across servers\n")
    status, output = await wait(go_sendxmpp(tmp_path, a.c2s_port, "--username", credentials["jid"],
                                            "--password", credentials["password"], "--message", str(message),
                                            "bob@b.test"), 30)
    assert status == 0, output
    received = await wait(bob.next_message())
    assert (received["body"].strip(), received["from"].bare) == ("hello bob, from Go across servers",
                                                                 credentials["jid"])
    await wait(bob.log_out())


class DirectTLSResolver:
    """A resolver answering as an _xmpps-server SRV record would (XEP-0368): TLS from the first byte."""

    def __init__(self, host: str, port: int) -> None:
        self.target = Target(host, port, True)

    def resolve(self, domain: str) -> Deferred[list[Target]]:
        return succeed([self.target])


@pytest_twisted.ensureDeferred
async def test_direct_tls_between_the_servers(start_server, tmp_path) -> None:
    """b.test listens for direct TLS too ([xmpp.s2s] direct_tls_port); a.test, told by its
    resolver that b.test is an _xmpps-server target, connects with TLS from the first byte (ALPN
    xmpp-server), authenticates with dialback without STARTTLS, and the message arrives."""
    port_a, port_b = free_port_on(A_ADDRESS), free_port_on(B_ADDRESS)
    a = await start_server(federated_config(tmp_path, "a.test", A_ADDRESS, port_a, {"b.test": f"{B_ADDRESS}:{port_b}"}))
    b = await start_server(federated_config(tmp_path, "b.test", B_ADDRESS, port_b, {"a.test": f"{A_ADDRESS}:{port_a}"},
                                            "direct_tls_port = 0"))
    a.server.federation.resolver = DirectTLSResolver(B_ADDRESS, b.server.listener("s2s-direct-tls").port_number)
    await a.add_user("alice@a.test", "secret")
    await b.add_user("bob@b.test", "secret")
    alice, bob = Client("alice@a.test", "secret"), Client("bob@b.test", "secret")
    await wait(alice.log_in(a.c2s_port))
    await wait(bob.log_in(b.c2s_port))
    alice.send_message(mto="bob@b.test", mbody="straight into TLS", mtype="chat")
    assert (await wait(bob.next_message()))["body"] == "straight into TLS"
    [link] = a.server.federation.domains()["b.test"]["out"]
    assert (link["state"], link["method"], link["peer"].split(":")[0]) == ("authenticated", "tls+dialback", B_ADDRESS)
    [incoming] = b.server.federation.domains()["a.test"]["in"]
    assert incoming["method"] == "tls+dialback"
    for client in (alice, bob):
        await wait(client.log_out())
