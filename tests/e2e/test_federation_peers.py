"""Federation with real servers of other projects (tests/peers.py): Prosody 0.12 and ejabberd 23.01
from Debian, each on its own loopback address, found through the test's DNS server."""

from __future__ import annotations

import asyncio

import pytest_twisted

from tests.peers import (  # noqa: F401 - the fixtures
    Ejabberd,
    PeerClient,
    Prosody,
    ejabberd_server,
    loopback_dns_server,
    prosody_server,
)
from tests.xmppclient import wait

FEDERATION_TIMEOUT = 40  # a first s2s link: DNS, TCP, STARTTLS, dialback with its verification back


async def presence_from(client: PeerClient, bare: str) -> None:
    while True:
        presence = await client.presences.get()
        if presence["from"].bare == bare and presence["type"] != "unavailable":
            return


async def subscribe_mutually(first: PeerClient, second: PeerClient) -> None:
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
