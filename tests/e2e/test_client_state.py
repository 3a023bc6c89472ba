"""Client State Indication (XEP-0352) with slixmpp's own plugin: while the social user's client is
inactive, a contact's presence changes are folded into the newest, and a message brings them and
itself at once."""

from __future__ import annotations

import asyncio

import pytest_twisted

from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait


@pytest_twisted.ensureDeferred
async def test_an_inactive_client_gets_the_newest_presence_with_the_next_message(server) -> None:
    credentials = await demo_credentials(server, "sara")
    await server.add_user("bob@localhost", "secret")
    sara = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
    sara.register_plugin("xep_0352")
    seen: list = []  # every presence stanza, whatever slixmpp's roster makes of it
    sara.add_event_handler("presence", seen.append)
    enabled = asyncio.ensure_future(sara.wait_until("csi_enabled", 15))
    await wait(sara.log_in(server.c2s_port))
    await wait(enabled)  # the server offered <csi/>
    bob = Client("bob@localhost", "secret")
    await wait(bob.log_in(server.c2s_port))
    sara.plugin["xep_0352"].send_inactive()
    await wait(sara.plugin["xep_0199"].ping(jid="localhost"))  # the <inactive/> is in before bob starts
    seen.clear()
    for show in ("away", "dnd", "xa"):
        bob.send_presence(pto=sara.boundjid.full, pshow=show)
    await wait(bob.plugin["xep_0199"].ping(jid="localhost"))  # bob's presences are at the server
    assert seen == [], "held while inactive"
    bob.send_message(mto=sara.boundjid.full, mbody="are you there?", mtype="chat")
    assert (await wait(sara.next_message()))["body"] == "are you there?"
    await wait(sara.plugin["xep_0199"].ping(jid="localhost"))  # slixmpp has handled what came with it
    # Folded into the newest, and delivered with the message.
    assert [(p["from"].bare, p["show"]) for p in seen] == [("bob@localhost", "xa")]
    for client in (sara, bob):
        await wait(client.log_out())
