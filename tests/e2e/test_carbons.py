"""Message Carbons (XEP-0280) with slixmpp's own plugin, between a social user's two resources
and a local user: what one resource sends and receives, the other sees."""

from __future__ import annotations

import asyncio

import pytest_twisted

from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait


@pytest_twisted.ensureDeferred
async def test_carbons_reach_the_second_resource_of_a_social_user(server) -> None:
    credentials = await demo_credentials(server, "rosa")
    await server.add_user("bob@localhost", "secret")
    bob = Client("bob@localhost", "secret")
    await wait(bob.log_in(server.c2s_port))
    resources = []
    for name in ("phone", "desktop"):
        client = Client(f"{credentials['jid']}/{name}", credentials["password"], mechanism="PLAIN")
        client.register_plugin("xep_0280")
        client.carbons: asyncio.Queue = asyncio.Queue()  # type: ignore[attr-defined]
        for event in ("carbon_received", "carbon_sent"):
            client.add_event_handler(event, client.carbons.put_nowait)  # type: ignore[attr-defined]
        await wait(client.log_in(server.c2s_port))
        await wait(client.plugin["xep_0280"].enable())
        resources.append(client)
    phone, desktop = resources
    disco = await wait(bob.plugin["xep_0030"].get_info(jid="localhost"))
    assert "urn:xmpp:carbons:2" in disco["disco_info"]["features"]

    bob.send_message(mto=phone.boundjid.full, mbody="to the phone", mtype="chat")
    assert (await wait(phone.next_message()))["body"] == "to the phone"
    received = await wait(desktop.carbons.get())  # type: ignore[attr-defined]
    assert received["carbon_received"]["body"] == "to the phone"
    assert received["carbon_received"]["from"].bare == "bob@localhost"

    phone.send_message(mto="bob@localhost", mbody="from the phone", mtype="chat")
    assert (await wait(bob.next_message()))["body"] == "from the phone"
    sent = await wait(desktop.carbons.get())  # type: ignore[attr-defined]
    assert sent["carbon_sent"]["body"] == "from the phone" and sent["carbon_sent"]["to"].bare == "bob@localhost"
    for client in (phone, desktop, bob):
        await wait(client.log_out())
