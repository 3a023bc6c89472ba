"""Local accounts with a real client (slixmpp) over loopback TLS: the RFC 6120/6121 basics."""

from __future__ import annotations

import pytest_twisted

from tests.xmppclient import Client, wait


async def logged_in(server, jid: str, password: str = "secret", **kwargs) -> Client:  # type: ignore[no-untyped-def]
    client = Client(jid, password, **kwargs)
    await wait(client.log_in(server.c2s_port))
    return client


@pytest_twisted.ensureDeferred
async def test_two_users_subscribe_see_presence_and_chat_both_ways(server) -> None:
    """Alice and Bob log in with SCRAM-SHA-256 over STARTTLS, subscribe mutually and chat."""
    await server.add_user("alice@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    alice = await logged_in(server, "alice@localhost", mechanism="SCRAM-SHA-256")
    bob = await logged_in(server, "bob@localhost", mechanism="SCRAM-SHA-256")
    assert alice.boundjid.bare == "alice@localhost" and alice.boundjid.resource

    alice.send_presence(pto="bob@localhost", ptype="subscribe")
    request = await wait(bob.subscription_requests.get())
    assert request["from"].bare == "alice@localhost"
    bob.send_presence(pto="alice@localhost", ptype="subscribed")
    bob.send_presence(pto="alice@localhost", ptype="subscribe")
    request = await wait(alice.subscription_requests.get())
    assert request["from"].bare == "bob@localhost"
    alice.send_presence(pto="bob@localhost", ptype="subscribed")

    async def presence_from(client: Client, bare: str) -> None:
        while True:
            presence = await client.presences.get()
            if presence["from"].bare == bare and presence["type"] != "unavailable":
                return

    await wait(presence_from(alice, "bob@localhost"))
    await wait(presence_from(bob, "alice@localhost"))
    assert alice.client_roster["bob@localhost"]["subscription"] == "both"

    alice.send_message(mto="bob@localhost", mbody="hello bob", mtype="chat")
    received = await wait(bob.next_message())
    assert (received["body"], received["from"].full) == ("hello bob", alice.boundjid.full)
    bob.send_message(mto=received["from"], mbody="hello alice", mtype="chat")
    received = await wait(alice.next_message())
    assert (received["body"], received["from"].bare) == ("hello alice", "bob@localhost")

    await wait(bob.log_out())
    await wait(alice.log_out())
