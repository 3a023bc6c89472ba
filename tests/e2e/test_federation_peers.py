"""Federation with real servers of other projects (tests/peers.py): Prosody 0.12 and ejabberd 23.01
from Debian, each on its own loopback address, found through the test's DNS server; sns-xmpp
serves sns.example on 127.0.0.1 (the peers find it through that DNS server, SRV with its port) and
reaches them through its [xmpp.s2s.hosts] overrides. The issue's "Must show" for real peers."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest_twisted

from sns_xmpp.config import parse_config
from sns_xmpp.xmpp.s2s.resolve import ServerResolver, Target
from tests.conftest import DEMO_SITE, RunningServer, free_port
from tests.e2e.test_social_login import demo_credentials
from tests.peers import (  # noqa: F401 - the fixtures
    Ejabberd,
    LoopbackDNS,
    PeerClient,
    Prosody,
    ejabberd_server,
    loopback_dns_server,
    prosody_server,
)
from tests.xmppclient import Client, wait

FEDERATION_TIMEOUT = 40  # a first s2s link: DNS, TCP, STARTTLS, dialback with its verification back


SNS_DOMAIN = "sns.example"


async def start_sns(start_server: Callable[..., Any], tmp_path: Path, loopback_dns: LoopbackDNS,
                    *peers: Prosody | Ejabberd) -> RunningServer:
    """sns-xmpp for sns.example with s2s on a free port of 127.0.0.1, named in the test DNS, and
    the peers in its [xmpp.s2s.hosts]; the demo social site on."""
    s2s_port, http_port = free_port(), free_port()
    hosts = "\n".join(f'"{peer.domain}" = "{peer.override}"' for peer in peers)
    config = parse_config(textwrap.dedent(f"""
        [server]
        domains = ["{SNS_DOMAIN}"]
        data_dir = "{tmp_path / 'data'}"

        [xmpp.c2s]
        port = 0
        direct_tls_port = -1

        [xmpp.s2s]
        interface = "127.0.0.1"
        port = {s2s_port}

        [xmpp.s2s.hosts]
        {hosts}

        [http]
        port = {http_port}
        public_url = "http://127.0.0.1:{http_port}"
        """) + textwrap.dedent(DEMO_SITE))
    server: RunningServer = await start_server(config)
    loopback_dns.add_server(SNS_DOMAIN, "127.0.0.1", s2s_port)
    return server


class BouncedClient(Client):
    """A client that also queues the message errors it gets: slixmpp raises its "message" event
    only for a message with a body, and a peer's error (Prosody's) need not carry the original."""

    def __init__(self, jid: str, password: str, **kwargs: Any) -> None:
        super().__init__(jid, password, **kwargs)
        self.bounces: asyncio.Queue[Any] = asyncio.Queue()
        self.add_event_handler("message_error", self.bounces.put_nowait)


async def local_user(server: RunningServer, user: str) -> BouncedClient:
    jid = f"{user}@{SNS_DOMAIN}"
    await server.add_user(jid, f"{user}-secret")
    client = BouncedClient(jid, f"{user}-secret")
    await wait(client.log_in(server.c2s_port))
    return client


async def peer_user(peer: Prosody | Ejabberd, user: str, *, presence: bool = True) -> PeerClient:
    peer.register(user, f"{user}-secret")
    client = peer.client(user, f"{user}-secret")
    await wait(client.log_in(peer.c2s_port, presence=presence))
    return client


def links(server: RunningServer, domain: str) -> list[tuple[str, str]]:
    """(state, method) of sns-xmpp's outgoing and incoming streams with *domain*, as the console shows."""
    streams = server.server.federation.domains()[domain]
    return [(stream["state"], stream["method"]) for stream in [*streams["out"], *streams["in"]]]


async def presence_from(client: Client, bare: str) -> None:
    while True:
        presence = await client.presences.get()
        if presence["from"].bare == bare and presence["type"] != "unavailable":
            return


async def subscribe_mutually(first: Client, second: Client) -> None:
    """RFC 6121 §3: each asks, the other approves; both then see the other's presence."""
    first.send_presence(pto=second.boundjid.bare, ptype="subscribe")
    request = await asyncio.wait_for(second.subscription_requests.get(), FEDERATION_TIMEOUT)
    assert request["from"].bare == first.boundjid.bare
    second.send_presence(pto=first.boundjid.bare, ptype="subscribed")
    second.send_presence(pto=first.boundjid.bare, ptype="subscribe")
    request = await asyncio.wait_for(first.subscription_requests.get(), FEDERATION_TIMEOUT)
    assert request["from"].bare == second.boundjid.bare
    first.send_presence(pto=second.boundjid.bare, ptype="subscribed")
    await asyncio.wait_for(presence_from(first, second.boundjid.bare), FEDERATION_TIMEOUT)
    await asyncio.wait_for(presence_from(second, first.boundjid.bare), FEDERATION_TIMEOUT)


@pytest_twisted.ensureDeferred
async def test_the_harness_a_prosody_user_and_an_ejabberd_user_subscribe_and_chat(
    prosody: Prosody, ejabberd: Ejabberd
) -> None:
    """The peers themselves federate (s2s over required STARTTLS, dialback with self-signed
    certificates, each finding the other through the test DNS), and slixmpp logs in to each: the
    harness the sns-xmpp tests below rely on works without sns-xmpp."""
    prosody.register("anna", "anna-secret")
    ejabberd.register("emil", "emil-secret")
    anna, emil = prosody.client("anna", "anna-secret"), ejabberd.client("emil", "emil-secret")
    await wait(anna.log_in(prosody.c2s_port))
    await wait(emil.log_in(ejabberd.c2s_port))
    assert (anna.boundjid.bare, emil.boundjid.bare) == ("anna@prosody.example", "emil@ejabberd.example")

    await wait(subscribe_mutually(anna, emil), FEDERATION_TIMEOUT * 2)
    anna.send_message(mto="emil@ejabberd.example", mbody="Grüße aus Prosody ✓", mtype="chat")
    received = await wait(emil.next_message(), FEDERATION_TIMEOUT)
    assert (received["body"], received["from"].bare) == ("Grüße aus Prosody ✓", "anna@prosody.example")
    emil.send_message(mto=received["from"], mbody="Привет из ejabberd", mtype="chat")
    received = await wait(anna.next_message(), FEDERATION_TIMEOUT)
    assert (received["body"], received["from"].bare) == ("Привет из ejabberd", "emil@ejabberd.example")
    await wait(anna.log_out())
    await wait(emil.log_out())


@pytest_twisted.ensureDeferred
async def test_a_local_user_subscribes_and_chats_with_a_prosody_user_and_an_ejabberd_user(
    start_server: Callable[..., Any], tmp_path: Path, loopback_dns: LoopbackDNS, prosody: Prosody, ejabberd: Ejabberd
) -> None:
    """sns.example's sam and a user of each peer: mutual subscription and presence across servers
    (RFC 6121 §3 over s2s, both directions of each link), then messages both ways with non-ASCII
    text; the links are authenticated both ways with dialback over TLS (the peers' certificates are
    self-signed), ejabberd's failed EXTERNAL offer notwithstanding."""
    server = await start_sns(start_server, tmp_path, loopback_dns, prosody, ejabberd)
    sam = await local_user(server, "sam")
    pia, eli = await peer_user(prosody, "pia"), await peer_user(ejabberd, "eli")

    for remote, text, answer in ((pia, "Grüße nach Prosody ✓", "Ответ из Prosody"),
                                 (eli, "¡Hola, ejabberd! 🎉", "ejabberd より")):
        await wait(subscribe_mutually(sam, remote), FEDERATION_TIMEOUT * 2)
        assert sam.client_roster[remote.boundjid.bare]["subscription"] == "both"
        sam.send_message(mto=remote.boundjid.bare, mbody=text, mtype="chat")
        received = await wait(remote.next_message(), FEDERATION_TIMEOUT)
        assert (received["body"], received["from"].full) == (text, sam.boundjid.full)
        remote.send_message(mto=received["from"], mbody=answer, mtype="chat")
        received = await wait(sam.next_message(), FEDERATION_TIMEOUT)
        assert (received["body"], received["from"].full) == (answer, remote.boundjid.full)
    for domain in (prosody.domain, ejabberd.domain):
        assert sorted(links(server, domain)) == [("authenticated", "tls+dialback")] * 2, domain
    for client in (sam, pia, eli):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_presence_probes_cross_both_ways_when_either_side_logs_in_again(
    start_server: Callable[..., Any], tmp_path: Path, loopback_dns: LoopbackDNS, prosody: Prosody, ejabberd: Ejabberd
) -> None:
    """RFC 6121 §4.3: after mutual subscription, a contact who logs in again learns the other's
    presence from the probe its server sends over s2s - sns-xmpp probing Prosody and ejabberd for
    tom, and each peer probing sns-xmpp for its own user; a logout reaches the contact as
    unavailable over s2s."""
    server = await start_sns(start_server, tmp_path, loopback_dns, prosody, ejabberd)
    tom = await local_user(server, "tom")
    for peer in (prosody, ejabberd):
        remote = await peer_user(peer, "una")
        await wait(subscribe_mutually(tom, remote), FEDERATION_TIMEOUT * 2)

        await wait(tom.log_out())  # tom's server probes the peer when he is back
        tom = BouncedClient(f"tom@{SNS_DOMAIN}", "tom-secret")
        await wait(tom.log_in(server.c2s_port))
        await wait(presence_from(tom, remote.boundjid.bare), FEDERATION_TIMEOUT)

        await wait(remote.log_out())  # and the peer probes sns-xmpp when una is back
        assert await wait(unavailable_from(tom, peer.jid("una")), FEDERATION_TIMEOUT)
        remote = peer.client("una", "una-secret")
        await wait(remote.log_in(peer.c2s_port))
        await wait(presence_from(remote, tom.boundjid.bare), FEDERATION_TIMEOUT)
        await wait(remote.log_out())
    await wait(tom.log_out())


async def unavailable_from(client: Client, bare: str) -> bool:
    while True:
        presence = await client.presences.get()
        if presence["from"].bare == bare and presence["type"] == "unavailable":
            return True


@pytest_twisted.ensureDeferred
async def test_offline_remote_users_get_the_message_at_login_and_a_nonexistent_one_bounces(
    start_server: Callable[..., Any], tmp_path: Path, loopback_dns: LoopbackDNS, prosody: Prosody, ejabberd: Ejabberd
) -> None:
    """A message from sns.example to a Prosody user and to an ejabberd user who are offline is kept
    by their server and delivered when they log in; one to an account a peer does not have comes
    back from that peer as an error to the sender (RFC 6121 §8.5.2)."""
    server = await start_sns(start_server, tmp_path, loopback_dns, prosody, ejabberd)
    sam = await local_user(server, "sol")
    for peer in (prosody, ejabberd):
        peer.register("later", "later-secret")
        sam.send_message(mto=peer.jid("later"), mbody=f"für später, {peer.kind} ✉", mtype="chat")
        sam.send_message(mto=peer.jid("nobody"), mbody="anyone?", mtype="chat")
        bounce = await wait(sam.bounces.get(), FEDERATION_TIMEOUT)
        assert (bounce["type"], bounce["from"].bare) == ("error", peer.jid("nobody"))
        assert bounce["error"]["condition"] == "service-unavailable"
    for peer in (prosody, ejabberd):
        later = peer.client("later", "later-secret")
        await wait(later.log_in(peer.c2s_port))
        kept = await wait(later.next_message(), FEDERATION_TIMEOUT)
        assert (kept["body"], kept["from"].bare) == (f"für später, {peer.kind} ✉", "sol@sns.example")
        await wait(later.log_out())
    await wait(sam.log_out())


@pytest_twisted.ensureDeferred
async def test_a_peer_users_message_waits_for_an_offline_local_user_and_one_to_nobody_bounces_to_the_peer(
    start_server: Callable[..., Any], tmp_path: Path, loopback_dns: LoopbackDNS, prosody: Prosody, ejabberd: Ejabberd
) -> None:
    """The other way: messages from a Prosody user and an ejabberd user to sns.example's ola, who
    is offline, are kept and delivered at her login (remote stanzas reach offline storage as local
    ones do); one to an account sns.example does not have comes back to the peer's user as
    service-unavailable from sns-xmpp, over s2s (RFC 6121 §8.5.2)."""
    server = await start_sns(start_server, tmp_path, loopback_dns, prosody, ejabberd)
    await server.add_user(f"ola@{SNS_DOMAIN}", "ola-secret")
    for peer in (prosody, ejabberd):
        sender = await peer_user(peer, "writer")
        bounces: asyncio.Queue[Any] = asyncio.Queue()
        sender.add_event_handler("message_error", bounces.put_nowait)
        sender.send_message(mto=f"ola@{SNS_DOMAIN}", mbody=f"von {peer.kind}: bis später ✓", mtype="chat")
        sender.send_message(mto=f"ghost@{SNS_DOMAIN}", mbody="hello?", mtype="chat")
        bounce = await wait(bounces.get(), FEDERATION_TIMEOUT)
        assert (bounce["type"], bounce["from"].bare) == ("error", f"ghost@{SNS_DOMAIN}")
        assert bounce["error"]["condition"] == "service-unavailable"
        await wait(sender.log_out())
    ola = BouncedClient(f"ola@{SNS_DOMAIN}", "ola-secret")
    await wait(ola.log_in(server.c2s_port))
    kept = [await wait(ola.next_message(), FEDERATION_TIMEOUT) for _ in range(2)]
    assert sorted((message["body"], message["from"].bare) for message in kept) == [
        ("von ejabberd: bis später ✓", ejabberd.jid("writer")),
        ("von prosody: bis später ✓", prosody.jid("writer")),
    ]
    await wait(ola.log_out())


@pytest_twisted.ensureDeferred
async def test_a_social_user_chats_with_a_prosody_user(
    start_server: Callable[..., Any], tmp_path: Path, loopback_dns: LoopbackDNS, prosody: Prosody
) -> None:
    """A person logged in through the demo social site (the patent's flow; JID rosa\\40demo with
    its escaped '@') subscribes to a Prosody user and chats both ways: Prosody takes the escaped
    localpart as it is, and the social user gets federation exactly as a local user does."""
    server = await start_sns(start_server, tmp_path, loopback_dns, prosody)
    credentials = await demo_credentials(server, "rosa")
    assert credentials["jid"] == "rosa\\40demo@sns.example"
    rosa = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
    await wait(rosa.log_in(server.c2s_port))
    paul = await peer_user(prosody, "paul")
    await wait(subscribe_mutually(rosa, paul), FEDERATION_TIMEOUT * 2)
    assert paul.client_roster["rosa\\40demo@sns.example"]["subscription"] == "both"
    rosa.send_message(mto="paul@prosody.example", mbody="Hallo Paul, ich bin über Demo angemeldet", mtype="chat")
    received = await wait(paul.next_message(), FEDERATION_TIMEOUT)
    assert (received["body"], received["from"].full) == ("Hallo Paul, ich bin über Demo angemeldet", rosa.boundjid.full)
    paul.send_message(mto=received["from"], mbody="Willkommen, Rosa ☺", mtype="chat")
    received = await wait(rosa.next_message(), FEDERATION_TIMEOUT)
    assert (received["body"], received["from"].bare) == ("Willkommen, Rosa ☺", "paul@prosody.example")
    for client in (rosa, paul):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_without_overrides_the_peers_are_found_through_their_srv_records(
    start_server: Callable[..., Any], tmp_path: Path, loopback_dns: LoopbackDNS, prosody: Prosody, ejabberd: Ejabberd
) -> None:
    """No [xmpp.s2s.hosts]: the server's resolver (resolve.py, on twisted.names over UDP to the test
    DNS instead of resolv.conf's servers) finds each peer from its _xmpp-server._tcp record - the
    port is not 5269 - and messages go both ways with each."""
    from twisted.internet import reactor
    from twisted.names import client

    server = await start_sns(start_server, tmp_path, loopback_dns)
    dns_client = client.Resolver(servers=[("127.0.0.1", loopback_dns.port)], reactor=reactor)
    resolver = ServerResolver(reactor, timeout_per_step=2.0, resolver=dns_client)
    server.server.federation.resolver = resolver
    assert await resolver.resolve(prosody.domain) == [Target(prosody.address, prosody.s2s_port, False)]
    sam = await local_user(server, "sid")
    for peer in (prosody, ejabberd):
        remote = await peer_user(peer, "dora")
        sam.send_message(mto=remote.boundjid.full, mbody="über SRV gefunden", mtype="chat")
        received = await wait(remote.next_message(), FEDERATION_TIMEOUT)
        assert (received["body"], received["from"].full) == ("über SRV gefunden", sam.boundjid.full)
        remote.send_message(mto=received["from"], mbody="bien reçu", mtype="chat")
        received = await wait(sam.next_message(), FEDERATION_TIMEOUT)
        assert (received["body"], received["from"].bare) == ("bien reçu", peer.jid("dora"))
        await wait(remote.log_out())
    await wait(sam.log_out())
