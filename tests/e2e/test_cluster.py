"""Two and three nodes of one cluster (issue 20), in this process: one PostgreSQL database, one
Redis, each node with its own client port, and real slixmpp clients on different nodes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer

from tests.conftest import DEMO_SITE, make_config
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

DEADLINE = 10.0  # seconds a condition has to come true


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait, turn by turn of the reactor, for *condition* (a directory announcement to arrive)."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + DEADLINE
    while not condition():
        assert reactor.seconds() < deadline, f"not within {DEADLINE} s: {what}"
        done: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.01, done.callback, None)
        await done


async def nodes(start_server: Any, tmp_path: Path, postgres_dsn: str, cluster_keys: str, count: int = 2) -> list[Any]:
    store = f'\n[store]\nbackend = "postgresql"\ndsn = "{postgres_dsn}"\n'
    started = []
    for number in range(count):
        extra = DEMO_SITE + store + cluster_keys + f'node_id = "node{number}"\n'
        started.append(await start_server(make_config(tmp_path, extra)))
    return started


def sees(node: Any, full: str) -> bool:
    bare, _, resource = full.partition("/")
    return resource in node.server.sessions.users.get(bare, {})


async def presence_from(client: Client, bare: str) -> None:
    while True:
        presence = await client.presences.get()
        if presence["from"].bare == bare and presence["type"] != "unavailable":
            return


@pytest_twisted.ensureDeferred
async def test_users_on_two_nodes_subscribe_see_presence_and_chat(start_server, tmp_path, postgres_dsn,
                                                                   cluster_keys) -> None:
    """A social user (demo site) on one node and a local user on the other: mutual subscription,
    presence both ways, and messages both ways, as on one server; then a second resource of the
    social user on the second node receives carbons of what the first one sends."""
    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    credentials = await demo_credentials(a, "rosa")
    await a.add_user("bob@localhost", "secret")
    rosa = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
    await wait(rosa.log_in(a.c2s_port))
    bob = Client("bob@localhost", "secret")
    await wait(bob.log_in(b.c2s_port))
    rosa_bare = rosa.boundjid.bare
    await until(lambda: sees(a, bob.boundjid.full) and sees(b, rosa.boundjid.full), "each node sees the other's user")

    rosa.send_presence(pto="bob@localhost", ptype="subscribe")
    request = await wait(bob.subscription_requests.get())
    assert request["from"].bare == rosa_bare
    bob.send_presence(pto=rosa_bare, ptype="subscribed")
    bob.send_presence(pto=rosa_bare, ptype="subscribe")
    request = await wait(rosa.subscription_requests.get())
    assert request["from"].bare == "bob@localhost"
    rosa.send_presence(pto="bob@localhost", ptype="subscribed")
    await wait(presence_from(rosa, "bob@localhost"))
    await wait(presence_from(bob, rosa_bare))

    rosa.send_message(mto="bob@localhost", mbody="Grüße von Knoten 0 ✓", mtype="chat")
    received = await wait(bob.next_message())
    assert (received["body"], received["from"].full) == ("Grüße von Knoten 0 ✓", rosa.boundjid.full)
    bob.send_message(mto=rosa_bare, mbody="こんにちは", mtype="chat")
    received = await wait(rosa.next_message())
    assert (received["body"], received["from"].full) == ("こんにちは", bob.boundjid.full)

    # The social user's phone, on the other node, with carbons (XEP-0280).
    phone = Client(credentials["jid"] + "/phone", credentials["password"], mechanism="PLAIN")
    phone.register_plugin("xep_0280")
    await wait(phone.log_in(b.c2s_port))
    await wait(phone.plugin["xep_0280"].enable())
    await until(lambda: getattr(a.server.sessions.users[rosa_bare].get("phone"), "carbons", False),
                "the first node knows the phone enabled carbons")
    carbon: defer.Deferred[Any] = defer.Deferred()
    phone.add_event_handler("carbon_sent", lambda message: carbon.callback(message) if not carbon.called else None)
    rosa.send_message(mto="bob@localhost", mbody="from the laptop", mtype="chat")
    sent = await carbon
    assert sent["carbon_sent"]["body"] == "from the laptop"
    assert (await wait(bob.next_message()))["body"] == "from the laptop"
    for client in (rosa, bob, phone):
        await wait(client.log_out())
