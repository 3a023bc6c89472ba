"""Blocking Command (XEP-0191) with slixmpp's own plugin, between a social user and a local user:
once she blocks him nothing passes either way, pushes reach her other resource, unblocking
restores delivery, and the list survives a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest_twisted
import slixmpp
from slixmpp.exceptions import IqError

from tests.conftest import DEMO_SITE, make_config
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

BLOCKED = "{urn:xmpp:blocking:errors}blocked"


def client(jid: str, password: str, mechanism: str | None = None) -> Client:
    """A client with slixmpp's XEP-0191 plugin, its pushes and message errors in queues."""
    made = Client(jid, password, mechanism=mechanism)
    made.register_plugin("xep_0191")
    made.pushes: asyncio.Queue = asyncio.Queue()  # type: ignore[attr-defined]
    made.errors: asyncio.Queue = asyncio.Queue()  # type: ignore[attr-defined]
    for event in ("blocked", "unblocked"):
        made.add_event_handler(event, made.pushes.put_nowait)  # type: ignore[attr-defined]
    made.add_event_handler("message_error", made.errors.put_nowait)  # type: ignore[attr-defined]
    return made


async def next_chat(receiver: Client) -> slixmpp.Message:
    """The next message that is not an error (slixmpp queues an error with a body as both)."""
    while True:
        message = await receiver.next_message()
        if message["type"] != "error":
            return message


async def presence_from(receiver: Client, sender: str, kind: str = "available", status: str = "") -> slixmpp.Presence:
    """The next presence of *kind* from *sender* (those queued before are passed over)."""
    while True:
        presence = await receiver.presences.get()
        if presence["from"].bare == sender and presence["type"] == kind and presence["status"] == status:
            return presence


@pytest_twisted.ensureDeferred
async def test_a_blocked_local_user_gets_nothing_through_until_the_social_user_unblocks_him(  # type: ignore[no-untyped-def]
        start_server, store_config: str, tmp_path: Path) -> None:
    """rosa (a social user, on her phone and her desktop) and bob (local) share presence. rosa's
    phone blocks bob: her desktop gets the push, bob sees her go offline; his message is bounced
    with service-unavailable, his ping too, his presence does not reach her; her message and ping
    to him are refused with not-acceptable and <blocked/>. The unblock is pushed, each sees the
    other's presence again, and the first messages either gets are the ones sent after it. She
    blocks him again; after a restart her list is still there and his message to her, now
    offline, is bounced rather than kept. On SQLite, then on PostgreSQL."""
    server = await start_server(make_config(tmp_path, DEMO_SITE + store_config))
    credentials = await demo_credentials(server, "rosa")
    rosa_jid = credentials["jid"]
    await server.add_user("bob@localhost", "secret")
    bob = client("bob@localhost", "secret")
    await wait(bob.log_in(server.c2s_port))
    phone = client(f"{rosa_jid}/phone", credentials["password"], mechanism="PLAIN")
    desktop = client(f"{rosa_jid}/desktop", credentials["password"], mechanism="PLAIN")
    for resource in (phone, desktop):
        await wait(resource.log_in(server.c2s_port))

    server_features = (await wait(phone.plugin["xep_0030"].get_info(jid="localhost")))["disco_info"]["features"]
    account_features = (await wait(phone.plugin["xep_0030"].get_info(jid=rosa_jid)))["disco_info"]["features"]
    assert "urn:xmpp:blocking" in server_features and "urn:xmpp:blocking" in account_features

    bob.send_presence(pto=rosa_jid, ptype="subscribe")
    await wait(phone.subscription_requests.get())
    phone.send_presence(pto="bob@localhost", ptype="subscribed")
    phone.send_presence(pto="bob@localhost", ptype="subscribe")
    await wait(bob.subscription_requests.get())
    bob.send_presence(pto=rosa_jid, ptype="subscribed")
    await wait(presence_from(bob, rosa_jid))
    await wait(presence_from(phone, "bob@localhost"))

    assert await wait(phone.plugin["xep_0191"].get_blocked_jids()) == set()
    await wait(phone.plugin["xep_0191"].block("bob@localhost"))
    for resource in (desktop, phone):  # the push goes to every resource, the asking one too
        push = await wait(resource.pushes.get())  # type: ignore[attr-defined]
        assert push["type"] == "set" and [item["jid"] for item in push["block"]] == ["bob@localhost"]
    await wait(presence_from(bob, rosa_jid, "unavailable"))  # she went offline for him
    assert await wait(desktop.plugin["xep_0191"].get_blocked_jids()) == {slixmpp.JID("bob@localhost")}

    bob.send_message(mto=rosa_jid, mbody="blocked?", mtype="chat")
    bounced = await wait(bob.errors.get())  # type: ignore[attr-defined]
    assert (bounced["body"], bounced["error"]["condition"]) == ("blocked?", "service-unavailable")
    try:
        await wait(bob.plugin["xep_0199"].send_ping(phone.boundjid.full, timeout=10))
        raise AssertionError("bob's ping reached her")
    except IqError as refused:
        assert refused.iq["error"]["condition"] == "service-unavailable"
    bob.send_presence(pstatus="busy")
    await wait(bob.plugin["xep_0199"].send_ping("localhost"))  # the server has handled his presence
    await wait(phone.plugin["xep_0199"].send_ping("localhost"))  # and she has all it sent her before
    queued = [phone.presences.get_nowait() for _ in range(phone.presences.qsize())]
    assert not [p for p in queued if p["from"].bare == "bob@localhost" and p["status"] == "busy"]

    phone.send_message(mto="bob@localhost", mbody="can you hear me now?", mtype="chat")
    refusal = await wait(phone.errors.get())  # type: ignore[attr-defined]
    assert refusal["error"]["condition"] == "not-acceptable" and refusal.xml.find(
        f"{{jabber:client}}error/{BLOCKED}") is not None
    try:
        await wait(phone.plugin["xep_0199"].send_ping(bob.boundjid.full, timeout=10))
        raise AssertionError("her ping reached bob")
    except IqError as refused:
        assert refused.iq["error"]["condition"] == "not-acceptable"
        assert refused.iq.xml.find(f"{{jabber:client}}error/{BLOCKED}") is not None

    await wait(desktop.plugin["xep_0191"].unblock("bob@localhost"))
    for resource in (phone, desktop):
        push = await wait(resource.pushes.get())  # type: ignore[attr-defined]
        assert push["type"] == "set" and [item["jid"] for item in push["unblock"]] == ["bob@localhost"]
    await wait(presence_from(bob, rosa_jid))  # her current presence
    await wait(presence_from(phone, "bob@localhost", status="busy"))  # the probe's answer: his, set while blocked
    bob.send_message(mto=rosa_jid, mbody="after the unblock", mtype="chat")
    assert (await wait(next_chat(phone)))["body"] == "after the unblock"  # "blocked?" never came
    phone.send_message(mto="bob@localhost", mbody="hello again", mtype="chat")
    assert (await wait(next_chat(bob)))["body"] == "hello again"

    await wait(phone.plugin["xep_0191"].block("bob@localhost"))
    for each in (phone, desktop, bob):
        await wait(each.log_out())

    await start_server.stop(server)
    server = await start_server(make_config(tmp_path, DEMO_SITE + store_config))  # the same data, a new HTTP port
    bob = client("bob@localhost", "secret")
    await wait(bob.log_in(server.c2s_port))
    bob.send_message(mto=rosa_jid, mbody="while you are away", mtype="chat")
    bounced = await wait(bob.errors.get())  # type: ignore[attr-defined]
    assert bounced["error"]["condition"] == "service-unavailable"
    credentials = await demo_credentials(server, "rosa")
    assert credentials["jid"] == rosa_jid
    phone = client(f"{rosa_jid}/phone", credentials["password"], mechanism="PLAIN")
    await wait(phone.log_in(server.c2s_port))
    assert await wait(phone.plugin["xep_0191"].get_blocked_jids()) == {slixmpp.JID("bob@localhost")}
    bob.send_message(mto=rosa_jid, mbody="still blocked?", mtype="chat")
    assert (await wait(bob.errors.get()))["error"]["condition"] == "service-unavailable"  # type: ignore[attr-defined]
    await wait(phone.plugin["xep_0191"].unblock("bob@localhost"))
    bob.send_message(mto=rosa_jid, mbody="free at last", mtype="chat")
    assert (await wait(next_chat(phone)))["body"] == "free at last"  # nothing of his was kept offline
    for each in (phone, bob):
        await wait(each.log_out())


@pytest_twisted.ensureDeferred
async def test_profanity_blocks_and_unblocks_a_social_user(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Profanity (C, libstrophe) as the local user bob: `/blocked add` blocks rosa, a social user on
    slixmpp, whose message is then bounced with service-unavailable and whose presence bob no
    longer sees; `/blocked` lists her (the list Profanity keeps from the server's answers and
    pushes); `/blocked remove` lets her next message through to his screen, and only that one."""
    from tests.clients import Terminal
    from tests.e2e.test_local_im import _need_profanity, profanity, profanity_account, until

    _need_profanity()
    credentials = await demo_credentials(server, "rosa")
    rosa_jid = credentials["jid"]
    await server.add_user("bob@localhost", "secret")
    rosa = client(rosa_jid, credentials["password"], mechanism="PLAIN")
    await wait(rosa.log_in(server.c2s_port))
    blocking = server.sessions.hooks.account_iqs[("urn:xmpp:blocking", "blocklist")].__self__
    with profanity(tmp_path, "bob@localhost", profanity_account("bob@localhost", server.c2s_port)):
        terminal = Terminal(tmp_path / "tmux.sock")
        await until(lambda: bool(server.sessions.available("bob@localhost")))
        terminal.type(f"/blocked add {rosa_jid}")
        await until(lambda: blocking.lists.get("bob@localhost") == {rosa_jid})
        rosa.send_message(mto="bob@localhost", mbody="knock knock", mtype="chat")
        bounced = await wait(rosa.errors.get())  # type: ignore[attr-defined]
        assert (bounced["body"], bounced["error"]["condition"]) == ("knock knock", "service-unavailable")
        terminal.type("/blocked")
        await until(lambda: rosa_jid in terminal.screen())
        terminal.type(f"/blocked remove {rosa_jid}")
        await until(lambda: blocking.lists.get("bob@localhost") == set())
        rosa.send_message(mto="bob@localhost", mbody="open sesame", mtype="chat")
        await until(lambda: f"<< chat message: {rosa_jid}" in terminal.screen())  # the first since the block
        terminal.type("/win 2")
        await until(lambda: "open sesame" in terminal.screen())
        assert "knock knock" not in terminal.screen()
    await wait(rosa.log_out())
