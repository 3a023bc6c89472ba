"""Two and three nodes of one cluster (issue 20), in this process: one PostgreSQL database, one
Redis, each node with its own client port, and real slixmpp clients on different nodes."""

from __future__ import annotations

import asyncio
import inspect
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest_twisted
from slixmpp import JID
from twisted.internet import defer

from tests.conftest import DEMO_SITE, make_config
from tests.e2e.test_s2s import presence_from
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

DEADLINE = 10.0  # seconds a condition has to come true


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Wait, turn by turn of the reactor, for *condition* (a directory announcement to arrive);
    a condition that asks a node returns an awaitable."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + DEADLINE
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
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
    """Whether *node* knows the resource as available (its initial presence announced)."""
    bare, _, resource = full.partition("/")
    session = node.server.sessions.users.get(bare, {}).get(resource)
    return session is not None and session.available


async def alice_and_bob(a: Any, b: Any, make: Callable[[str, str], Client] = Client) -> tuple[Client, Client]:
    """alice logged in on node *a*, bob on node *b*, each node knowing the other's user."""
    await a.add_user("alice@localhost", "secret")
    await a.add_user("bob@localhost", "secret")
    alice, bob = make("alice@localhost/a", "secret"), make("bob@localhost/b", "secret")
    await wait(alice.log_in(a.c2s_port))
    await wait(bob.log_in(b.c2s_port))
    await until(lambda: sees(a, "bob@localhost/b") and sees(b, "alice@localhost/a"), "both see each other")
    return alice, bob


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


@pytest_twisted.ensureDeferred
async def test_a_resource_bound_again_on_another_node_replaces_the_old_session(start_server, tmp_path, postgres_dsn,
                                                                             cluster_keys) -> None:
    """RFC 6120 7.7.2.2 across nodes: the same full JID bound on a second node ends the first
    session with a conflict, and messages then reach the new one only."""
    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    await a.add_user("alice@localhost", "secret")
    await a.add_user("bob@localhost", "secret")
    first = Client("alice@localhost/desk", "secret")
    await wait(first.log_in(a.c2s_port))
    await until(lambda: sees(b, "alice@localhost/desk"), "the second node sees the first session")
    second = Client("alice@localhost/desk", "secret")
    await wait(second.log_in(b.c2s_port))
    error = await wait(first.stream_errors.get())
    assert error["condition"] == "conflict"
    await until(lambda: not a.server.sessions.local_resources("alice@localhost"), "the first node let it go")
    await until(lambda: getattr(a.server.sessions.users.get("alice@localhost", {}).get("desk"), "node", None)
                == "node1", "the first node knows where the resource is now")
    bob = Client("bob@localhost", "secret")
    await wait(bob.log_in(a.c2s_port))
    bob.send_message(mto="alice@localhost/desk", mbody="to the new desk", mtype="chat")
    assert (await wait(second.next_message()))["body"] == "to the new desk"
    assert first.messages.empty()
    for client in (second, bob):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_first_social_login_racing_on_two_nodes_makes_one_user(start_server, tmp_path, postgres_dsn,
                                                                      cluster_keys) -> None:
    """The same new social account logs in on two nodes at once: PostgreSQL's constraint makes
    one user, and both sessions are resources of it, each reaching the other."""
    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    from twisted.internet import reactor

    site = a.server.sites.get("demo")  # signs as the social site would, one session per device
    expires = int(reactor.seconds()) + 600
    (first, first_token), (second, second_token) = site.mint("rita", "s1", expires), site.mint("rita", "s2", expires)
    one = Client("x@localhost/one", first_token, mechanism="PLAIN", username=f"{first}@demo")
    two = Client("x@localhost/two", second_token, mechanism="PLAIN", username=f"{second}@demo")
    await defer.gatherResults([wait(one.log_in(a.c2s_port)), wait(two.log_in(b.c2s_port))])
    assert one.boundjid.bare == two.boundjid.bare
    links = await a.server.store.list_links("demo")
    assert [(link.account, link.jid) for link in links] == [("rita", one.boundjid.bare)]
    await until(lambda: sees(a, two.boundjid.full), "the first node sees the second resource")
    one.send_message(mto=two.boundjid.full, mbody="hello from one", mtype="chat")
    assert (await wait(two.next_message()))["body"] == "hello from one"
    for client in (one, two):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_message_for_a_user_online_nowhere_waits_offline_for_a_login_on_any_node(
        start_server, tmp_path, postgres_dsn, cluster_keys) -> None:
    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    await a.add_user("alice@localhost", "secret")
    await a.add_user("bob@localhost", "secret")
    bob = Client("bob@localhost", "secret")
    await wait(bob.log_in(a.c2s_port))
    bob.send_message(mto="alice@localhost", mbody="while you were away", mtype="chat")
    await wait(bob.log_out())
    alice = Client("alice@localhost", "secret")
    await wait(alice.log_in(b.c2s_port))
    assert (await wait(alice.next_message()))["body"] == "while you were away"
    await wait(alice.log_out())


@pytest_twisted.ensureDeferred
async def test_three_nodes_deliver_presence_and_messages_to_every_resource(start_server, tmp_path, postgres_dsn,
                                                                           cluster_keys) -> None:
    """One account with a resource on each of three nodes, a contact on the first: a message to
    the bare JID reaches all three (equal priority), the contact sees each resource's presence."""
    servers = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys, count=3)
    await servers[0].add_user("alice@localhost", "secret")
    await servers[0].add_user("bob@localhost", "secret")
    bob = Client("bob@localhost/b", "secret")
    await wait(bob.log_in(servers[0].c2s_port))
    alices = []
    for number, node in enumerate(servers):
        alice = Client(f"alice@localhost/r{number}", "secret")
        await wait(alice.log_in(node.c2s_port))
        alices.append(alice)
    for node in servers:
        await until(lambda node=node: all(sees(node, f"alice@localhost/r{n}") for n in range(3)),
                    "every node sees the three resources")
    # bob asks on the first node, alice's resource on the third approves: her three presences go to him.
    bob.send_presence(pto="alice@localhost", ptype="subscribe")
    for alice in alices:
        await wait(alice.subscription_requests.get())
    alices[2].send_presence(pto="bob@localhost", ptype="subscribed")
    seen: set[str] = set()

    async def all_three() -> None:
        while len(seen) < 3:
            presence = await bob.presences.get()
            if presence["from"].bare == "alice@localhost" and presence["type"] != "unavailable":
                seen.add(presence["from"].resource)

    await wait(all_three())
    bob.send_message(mto="alice@localhost", mbody="to all of you", mtype="chat")
    for alice in alices:
        assert (await wait(alice.next_message()))["body"] == "to all of you"
    for client in (*alices, bob):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_the_service_recovers_from_a_redis_restart_that_lost_everything(start_server, tmp_path,
                                                                              postgres_dsn) -> None:
    """Redis killed and started again empty while two users on two nodes chat: each node writes
    its resources again, the inboxes' groups are made again, and messages flow across the nodes
    once more; every message sent after the restart arrives, in order."""
    from tests.redisserver import start_redis

    folder = tmp_path / "redis"
    folder.mkdir()
    redis = start_redis(str(folder))
    keys = f'\n[cluster]\nredis_url = "redis://127.0.0.1:{redis.port}/0"\nheartbeat_interval = 1\nnode_timeout = 3\n'
    try:
        a, b = await nodes(start_server, tmp_path, postgres_dsn, keys)
        alice, bob = await alice_and_bob(a, b)
        alice.send_message(mto="bob@localhost/b", mbody="before", mtype="chat")
        assert (await wait(bob.next_message()))["body"] == "before"

        redis.process.kill()
        redis.process.wait()
        redis = start_redis(str(folder), redis.port)  # empty: no file was kept
        for number in range(20):  # under load: sent while the nodes find Redis again
            alice.send_message(mto="bob@localhost/b", mbody=f"during {number}", mtype="chat")
        bodies = [(await wait(bob.next_message(), timeout=30))["body"] for _ in range(20)]
        assert bodies == [f"during {number}" for number in range(20)]
        bob.send_message(mto="alice@localhost/a", mbody="after", mtype="chat")
        assert (await wait(alice.next_message(), timeout=30))["body"] == "after"
        assert sees(a, "bob@localhost/b") and sees(b, "alice@localhost/a")
        # What Redis lost was written again from the nodes' own sessions.
        import txredisapi

        redis_client = await txredisapi.Connection("127.0.0.1", redis.port, convertNumbers=False)
        try:
            assert await redis_client.hkeys("sns:sessions:node0") == ["alice@localhost/a"]
            assert await redis_client.hkeys("sns:sessions:node1") == ["bob@localhost/b"]
            assert sorted(await redis_client.smembers("sns:nodes")) == ["node0", "node1"]
        finally:
            await redis_client.disconnect()
        for client in (alice, bob):
            await wait(client.log_out())
    finally:
        redis.process.kill()
        redis.process.wait()


@pytest_twisted.ensureDeferred
async def test_a_room_lives_on_one_node_and_occupants_on_every_node_meet_in_it(start_server, tmp_path, postgres_dsn,
                                                                              cluster_keys) -> None:
    """XEP-0045 across nodes: the room is made on the node that first got a stanza for it (its
    lease); an occupant on the other node joins the same room, not a second one of the same name,
    and each hears the other's groupchat messages."""
    from tests.e2e.test_muc import configure, muc_client, next_groupchat

    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    alice, bob = await alice_and_bob(a, b, muc_client)
    room = "lounge@conference.localhost"
    own, *_ = await wait(alice.plugin["xep_0045"].join_muc_wait(room, "Alice"))
    assert own["muc"]["affiliation"] == "owner"
    await wait(configure(alice, room))  # the instant room, unlocked (section 10.1.2)
    own, _subject, others, _history = await wait(bob.plugin["xep_0045"].join_muc_wait(room, "Bob"))
    assert own["muc"]["affiliation"] == "none", "bob joined alice's room, he did not make a second one"
    assert "Alice" in [str(p["from"].resource) for p in others]
    rooms = [len(node.server.features.services["muc"].rooms) for node in (a, b)]
    bob.send_message(mto=room, mbody="hello from the other node", mtype="groupchat")
    assert (await wait(next_groupchat(alice)))["body"] == "hello from the other node"
    alice.send_message(mto=room, mbody="welcome", mtype="groupchat")
    heard = [(await wait(next_groupchat(bob)))["body"] for _ in range(2)]
    assert heard == ["hello from the other node", "welcome"]
    assert rooms == [1, 0], "the room is in the memory of its lease holder only"
    for client in (alice, bob):
        await wait(client.log_out())


async def rooms_listed(client: Client) -> list[tuple[str, str]]:
    """The service's public rooms (XEP-0045 section 6.3) as the client's node lists them."""
    items = await wait(client.plugin["xep_0030"].get_items(jid=JID("conference.localhost")))
    # In the answer's order (slixmpp's "items" is a set).
    return [(item.get("jid", ""), item.get("name", ""))
            for item in items.xml.iter("{http://jabber.org/protocol/disco#items}item")]


@pytest_twisted.ensureDeferred
async def test_the_public_rooms_listed_are_the_whole_services_from_either_node(start_server, tmp_path, postgres_dsn,
                                                                               cluster_keys) -> None:
    """XEP-0045 section 6.3 across nodes: alice (first node) and bob (second) each make a
    temporary public room, a persistent public one and a hidden one, each room living on its
    maker's node. A user on either node is listed the same four public rooms with their names,
    one node's answer; a room destroyed, persistent or temporary, goes from both lists. When the
    first node dies (its heartbeats stop), its temporary room, which was in its memory only, goes
    from the second node's list within node_timeout; its persistent room stays."""
    from tests.e2e.test_muc import configure, muc_client

    quick = cluster_keys + "heartbeat_interval = 1\nnode_timeout = 3\n"
    a, b = await nodes(start_server, tmp_path, postgres_dsn, quick)
    alice, bob = await alice_and_bob(a, b, muc_client)
    made = {alice: [("alpha", {"roomname": "Alpha"}), ("archive", {"persistentroom": True}),
                    ("attic", {"publicroom": False, "roomname": "Attic"})],
            bob: [("bravo", {}), ("bureau", {"persistentroom": True, "roomname": "Bureau"}),
                  ("basement", {"publicroom": False})]}
    for client, rooms in made.items():
        for name, values in rooms:
            room = f"{name}@conference.localhost"
            await wait(client.plugin["xep_0045"].join_muc_wait(room, "Maker"))
            await wait(configure(client, room, **values))
    assert sorted(a.server.features.services["muc"].rooms) == ["alpha@conference.localhost",
                                                              "archive@conference.localhost",
                                                              "attic@conference.localhost"]

    async def listed_by(clients: list[Client], expected: list[tuple[str, str]]) -> bool:
        # The owner's configuration is answered before its room reaches Redis or PostgreSQL.
        return [await rooms_listed(client) for client in clients] == [expected] * len(clients)

    alpha, archive = ("alpha@conference.localhost", "Alpha"), ("archive@conference.localhost", "archive")
    bravo, bureau = ("bravo@conference.localhost", "bravo"), ("bureau@conference.localhost", "Bureau")
    await until(lambda: listed_by([alice, bob], [alpha, archive, bravo, bureau]),
                "both nodes list the four public rooms")
    await wait(alice.plugin["xep_0045"].destroy(archive[0], "done"))
    await wait(bob.plugin["xep_0045"].destroy(bravo[0], "done"))
    await until(lambda: listed_by([alice, bob], [alpha, bureau]), "the destroyed rooms go from both lists")

    cluster = a.server.cluster  # its part of the list expires with its heartbeat, should nobody bury it
    assert 0 < int(await cluster.commands.execute_command("PTTL", cluster.keys.listed("muc-rooms", "node0"))) <= 3000
    cluster.heartbeats.stop()  # the first node, as the others see it, dies (the second buries it)
    await until(lambda: listed_by([bob], [bureau]), "the dead node's temporary room goes")
    for client in (alice, bob):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_component_connected_to_one_node_is_reached_from_the_other(start_server, tmp_path, postgres_dsn,
                                                                          cluster_keys) -> None:
    """XEP-0114 across nodes: slixmpp's ComponentXMPP connects to the first node only; a user on
    the second node talks to it and gets its answers; with the component gone, a stanza for it
    bounces with service-unavailable, as on one server."""
    from tests.conftest import free_port
    from tests.e2e.test_components import COMPONENTS, Echo

    store = f'\n[store]\nbackend = "postgresql"\ndsn = "{postgres_dsn}"\n'
    ports = [free_port(), free_port()]
    a, b = [await start_server(make_config(tmp_path, DEMO_SITE + COMPONENTS.format(port=port) + store + cluster_keys
                                           + f'heartbeat_interval = 1\nnode_timeout = 3\nnode_id = "node{n}"\n'))
            for n, port in enumerate(ports)]
    await a.add_user("alice@localhost", "secret")
    echo = Echo("echo-secret-0123456789", ports[0])
    echo.connect()
    await wait(echo.connected_event.wait())
    alice = Client("alice@localhost", "secret")
    await wait(alice.log_in(b.c2s_port))
    await until(lambda: sees(a, alice.boundjid.full), "the component's node sees alice")
    for attempt in range(20):  # until the component's node has announced it (its next heartbeat)
        alice.send_message(mto="echo.localhost", mbody=f"hello {attempt}", mtype="chat")
        answer = await wait(alice.next_message())
        if answer["type"] != "error":
            break
    assert (answer["from"].bare, answer["body"]) == ("echo.localhost", f"echo: hello {attempt}")
    echo.disconnect()
    await wait(echo.wait_until("disconnected", 10))
    await until(lambda: "echo.localhost" not in a.server.router.routes, "the component is gone")
    for _attempt in range(20):  # until the second node's cached holder runs out (CACHE_SECONDS)
        alice.send_message(mto="echo.localhost", mbody="anyone?", mtype="chat")
        answer = await wait(alice.next_message())
        if answer["type"] == "error":
            break
    assert answer["error"]["condition"] == "service-unavailable"
    await wait(alice.log_out())


async def alice_on_one_node_bob_and_carol_on_the_other(start_server: Any, tmp_path: Path, postgres_dsn: str,
                                                      cluster_keys: str) -> tuple[Any, Any, Client, Client, Client]:
    """The blocking tests' set-up: alice (with XEP-0191) on the first node, bob and carol on the
    second, which has read alice's (empty) blocklist: carol's first message reached her."""
    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    for user in ("alice", "bob", "carol"):
        await a.add_user(f"{user}@localhost", "secret")
    alice = Client("alice@localhost/a", "secret")
    alice.register_plugin("xep_0191")
    await wait(alice.log_in(a.c2s_port))
    bob, carol = Client("bob@localhost/b", "secret"), Client("carol@localhost/c", "secret")
    await wait(bob.log_in(b.c2s_port))
    await wait(carol.log_in(b.c2s_port))
    await until(lambda: sees(b, "alice@localhost/a"), "the second node sees alice")
    carol.send_message(mto="alice@localhost", mbody="before the block", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "before the block"
    return a, b, alice, bob, carol


@pytest_twisted.ensureDeferred
async def test_a_block_set_through_one_node_is_applied_by_the_others(start_server, tmp_path, postgres_dsn,
                                                                     cluster_keys) -> None:
    """XEP-0191 across nodes: alice, on the first node, blocks carol; carol's and bob's messages
    are routed by the second node, which must know the new list at once: alice gets bob's and
    never carol's. After the unblock, carol's gets through again."""
    a, b, alice, bob, carol = await alice_on_one_node_bob_and_carol_on_the_other(
        start_server, tmp_path, postgres_dsn, cluster_keys)

    await wait(alice.plugin["xep_0191"].block("carol@localhost"))
    for attempt in range(3):
        carol.send_message(mto="alice@localhost", mbody=f"blocked {attempt}", mtype="chat")
        bob.send_message(mto="alice@localhost", mbody=f"from bob {attempt}", mtype="chat")
        assert (await wait(alice.next_message()))["body"] == f"from bob {attempt}"
    await wait(alice.plugin["xep_0191"].unblock("carol@localhost"))
    for attempt in range(20):  # the unblock's announcement reaches the second node
        carol.send_message(mto="alice@localhost", mbody=f"unblocked {attempt}", mtype="chat")
        bob.send_message(mto="alice@localhost", mbody=f"marker {attempt}", mtype="chat")
        first = (await wait(alice.next_message()))["body"]
        if first.startswith("unblocked"):
            break
    assert first.startswith("unblocked")
    for client in (alice, bob, carol):
        await wait(client.log_out())


@asynccontextmanager
async def subscriber_away(node: Any) -> AsyncIterator[None]:
    """*node*'s subscriber to the directory's channel cut for the block's time, as a Redis restart
    or a network failure cuts it (its other connections stay), then connected again as txredisapi
    reconnects it: what was announced meanwhile never reaches the node. Returns once the node has
    read again what it may have missed."""
    cluster = node.server.cluster
    [slot] = cluster.subscriber.slots
    resynced = cluster.resynced
    await slot.service.stopService()  # the connection closed, the slot's reconnection held
    try:
        yield
    finally:
        slot.service.startService()
    await until(lambda: cluster.resynced > resynced, "the node read again what it may have missed")


@pytest_twisted.ensureDeferred
async def test_a_block_and_an_unblock_announced_while_a_nodes_subscriber_was_away_are_applied_there_once_it_is_back(
        start_server, tmp_path, postgres_dsn, cluster_keys) -> None:
    """XEP-0191 across nodes when an announcement is missed: alice, on the first node, blocks
    carol while the second node, which routes carol's messages, is not listening. Once it listens
    again it reads the lists again: carol's message no longer gets through (a privacy bug if it
    did). Likewise an unblock missed there is applied once it is back (the list is replaced, not
    only added to)."""
    a, b, alice, bob, carol = await alice_on_one_node_bob_and_carol_on_the_other(
        start_server, tmp_path, postgres_dsn, cluster_keys)

    async with subscriber_away(b):
        await wait(alice.plugin["xep_0191"].block("carol@localhost"))
        carol.send_message(mto="alice@localhost", mbody="while away", mtype="chat")
        assert (await wait(alice.next_message()))["body"] == "while away"  # b did not hear of the block
    carol.send_message(mto="alice@localhost", mbody="blocked", mtype="chat")
    bob.send_message(mto="alice@localhost", mbody="from bob", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "from bob"  # (carol's was sent first, by the same node)

    async with subscriber_away(b):
        await wait(alice.plugin["xep_0191"].unblock("carol@localhost"))
    carol.send_message(mto="alice@localhost", mbody="unblocked", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "unblocked"
    for client in (alice, bob, carol):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_roster_changed_while_a_nodes_subscriber_was_away_is_read_again_there_once_it_is_back(
        start_server, tmp_path, postgres_dsn, cluster_keys) -> None:
    """bob has a resource on each node; the first changes his roster (an item removed, one added)
    while the second node, which holds the roster in memory for its resource, is not listening.
    Once it listens again it reads the roster again: its answer to a roster get has the change."""
    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    await a.add_user("bob@localhost", "secret")
    laptop, phone = Client("bob@localhost/laptop", "secret"), Client("bob@localhost/phone", "secret")
    await wait(laptop.log_in(a.c2s_port))
    await wait(phone.log_in(b.c2s_port))
    await until(lambda: sees(a, "bob@localhost/phone") and sees(b, "bob@localhost/laptop"), "both see bob")
    await wait(laptop.update_roster("dave@localhost", name="Dave"))

    def held_on_b() -> set[str]:
        return set(b.server.sessions.rosters.cached("bob@localhost").items)

    await until(lambda: held_on_b() == {"dave@localhost"}, "the second node read the roster again")

    async with subscriber_away(b):
        await wait(laptop.del_roster_item("dave@localhost"))
        await wait(laptop.update_roster("carol@localhost", name="Carol"))
        assert held_on_b() == {"dave@localhost"}  # b did not hear of the change
    get = phone.Iq()
    get["type"] = "get"
    get.enable("roster")
    answer = await wait(get.send())
    assert set(answer["roster"]["items"]) == {JID("carol@localhost")}
    for client in (laptop, phone):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_vcard_photo_set_through_one_node_is_in_the_presence_every_node_sends(
        start_server, tmp_path, postgres_dsn, cluster_keys) -> None:
    """XEP-0153 across nodes: alice sets a vCard photo from her desk on the first node; her phone
    is on the second node, which read her (empty) photo hash when the phone bound. The presence
    the phone sends afterwards carries the new hash, as the desk's does."""
    import hashlib

    from tests.e2e.test_vcard import PNG

    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    await a.add_user("alice@localhost", "secret")
    desk, phone = Client("alice@localhost/desk", "secret"), Client("alice@localhost/phone", "secret")
    desk.register_plugin("xep_0054")
    await wait(desk.log_in(a.c2s_port))
    await wait(phone.log_in(b.c2s_port))
    await until(lambda: sees(a, "alice@localhost/phone") and sees(b, "alice@localhost/desk"), "both see both")

    async def photo_in(status: str) -> str | None:
        """The <photo/> of the phone's presence with *status*, as the desk gets it."""
        while True:
            presence = await desk.presences.get()
            if presence["from"].full == "alice@localhost/phone" and presence["status"] == status:
                photo = presence.xml.find("{vcard-temp:x:update}x/{vcard-temp:x:update}photo")
                return None if photo is None else photo.text or ""

    phone.send_presence(pstatus="before")
    assert await wait(photo_in("before")) == ""
    card = (await wait(desk.plugin["xep_0054"].get_vcard("alice@localhost")))["vcard_temp"]
    card["PHOTO"]["TYPE"] = "image/png"
    card["PHOTO"]["BINVAL"] = PNG
    await wait(desk.plugin["xep_0054"].publish_vcard(card))
    for attempt in range(20):  # until the change's announcement has reached the second node
        phone.send_presence(pstatus=f"after {attempt}")
        photo = await wait(photo_in(f"after {attempt}"))
        if photo != "":
            break
    assert photo == hashlib.sha1(PNG).hexdigest()
    for client in (desk, phone):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_archive_preferences_set_through_one_node_are_applied_by_the_others(
        start_server, tmp_path, postgres_dsn, cluster_keys) -> None:
    """XEP-0441 across nodes: alice, on the first node, asks never to archive bob. bob is on the
    second node, which archives what he sends her (its delivery's hooks run there): it must know
    her new preferences. Her phone, on that second node, reads them there; then bob's message
    reaches her and is in neither archive of hers, while his earlier one is."""
    from tests.e2e.test_mam import archive

    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    await a.add_user("alice@localhost", "secret")
    await a.add_user("bob@localhost", "secret")
    clients = {}
    for jid, node in (("alice@localhost/desk", a), ("alice@localhost/phone", b), ("bob@localhost/b", b)):
        client = clients[jid] = Client(jid, "secret")
        for plugin in ("xep_0059", "xep_0313", "xep_0441"):
            client.register_plugin(plugin)
        await wait(client.log_in(node.c2s_port))
    desk, phone, bob = clients.values()
    await until(lambda: sees(b, "alice@localhost/desk"), "the second node sees alice's desk")
    bob.send_message(mto="alice@localhost/desk", mbody="archived", mtype="chat")
    assert (await wait(desk.next_message()))["body"] == "archived"

    await wait(desk.plugin["xep_0441"].set_preferences(default="always", never=["bob@localhost"]))
    for _ in range(50):  # until the change's announcement has reached the second node (a read there)
        _default, _always, never = await wait(phone.plugin["xep_0441"].get_preferences())
        if [str(jid) for jid in never] == ["bob@localhost"]:
            break
    assert [str(jid) for jid in never] == ["bob@localhost"]
    bob.send_message(mto="alice@localhost/desk", mbody="not archived", mtype="chat")
    assert (await wait(desk.next_message()))["body"] == "not archived"
    await wait(archive(bob))  # a query on bob's node writes the rows that node still holds
    with_bob = [body for body, _, _ in await wait(archive(desk, with_jid=JID("bob@localhost")))]
    assert with_bob == ["archived"]
    for client in (desk, phone, bob):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_push_registration_made_through_one_node_is_used_and_dropped_by_the_others(
        start_server, tmp_path, postgres_dsn, cluster_keys) -> None:
    """XEP-0357 across nodes: alice enables push on the first node and goes offline; bob, on the
    second node, sends her a message, and that node (which judges it) publishes the notification
    to the app server, a component of the second node. Her disabling it on the first node ends
    it on the second too."""
    from tests.conftest import free_port
    from tests.e2e.test_push import CONFIG, PUSH, SECRET, AppServer, enable_push, summary

    store = f'\n[store]\nbackend = "postgresql"\ndsn = "{postgres_dsn}"\n'
    port = free_port()
    a = await start_server(make_config(tmp_path, DEMO_SITE + store + cluster_keys + 'node_id = "node0"\n'))
    b = await start_server(make_config(tmp_path, DEMO_SITE + CONFIG.format(port=port) + store + cluster_keys
                                       + 'node_id = "node1"\n'))
    app_server = AppServer(port)
    app_server.connect()
    await wait(app_server.connected_event.wait())
    await a.add_user("alice@localhost", "secret")
    await a.add_user("bob@localhost", "secret")
    alice, bob = Client("alice@localhost/phone", "secret"), Client("bob@localhost/b", "secret")
    await wait(alice.log_in(a.c2s_port))
    await wait(bob.log_in(b.c2s_port))
    pushes = b.server.features.services["push"]

    await wait(enable_push(alice, "alice-phone"))
    await until(lambda: "alice@localhost" in pushes.by_owner, "the second node knows the registration")
    await wait(alice.log_out())
    await until(lambda: "alice@localhost" not in b.server.sessions.users, "the second node saw her go")
    bob.send_message(mto="alice@localhost", mbody="wake up", mtype="chat")
    published = await wait(app_server.published.get())
    assert summary(published) == ("localhost", "set", "alice-phone", {
        "FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1"}, SECRET)

    alice = Client("alice@localhost/phone", "secret")
    await wait(alice.log_in(a.c2s_port))
    iq = alice.Iq(stype="set")
    iq.append(ET.fromstring(f"<disable xmlns='{PUSH}' jid='push.localhost' node='alice-phone'/>"))
    await wait(iq.send())
    await until(lambda: "alice@localhost" not in pushes.by_owner, "the second node dropped the registration")
    for client in (alice, bob):
        await wait(client.log_out())
    app_server.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_pep_publish_on_one_node_notifies_a_contact_on_another(start_server, tmp_path, postgres_dsn,
                                                                       cluster_keys) -> None:
    """XEP-0163 across nodes: alice on the first node and bob on the second are each other's
    contacts, and bob's client shows nick+notify in its caps (XEP-0115). alice publishes her
    nickname on her node, which must know that bob's resource wants it although bob's presence
    reached her through the second node; and the other way round."""
    from tests.e2e.test_pep import befriend, next_event, pep_client

    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    await a.add_user("alice@localhost", "secret")
    await a.add_user("bob@localhost", "secret")
    alice = await pep_client(a, "alice@localhost/a", "secret")
    bob = await pep_client(b, "bob@localhost/b", "secret")
    await until(lambda: sees(a, "bob@localhost/b") and sees(b, "alice@localhost/a"), "both see each other")
    await befriend(alice, bob)

    await wait(alice.plugin["xep_0172"].publish_nick("Alice of node 0"))
    await next_event(bob, "user_nick_publish", "alice@localhost", nick="Alice of node 0")
    await wait(bob.plugin["xep_0172"].publish_nick("Bob of node 1"))
    await next_event(alice, "user_nick_publish", "bob@localhost", nick="Bob of node 1")
    for client in (alice, bob):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_persistent_room_made_after_a_node_started_is_served_by_it_once_the_rooms_node_stops(
        start_server, tmp_path, postgres_dsn, cluster_keys) -> None:
    """XEP-0045 across nodes: alice, on the first node, makes a persistent members-only room with
    bob as a member and a subject, after the second node had read the rooms at its start. The
    first node stops; bob, on the second, enters the room it now takes over: the room of the store
    (he is a member, the subject is there), not a new one of his; carol is refused as a stranger."""
    from slixmpp.exceptions import PresenceError

    from tests.e2e.test_muc import configure, muc_client

    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    alice, bob = await alice_and_bob(a, b, muc_client)
    await a.add_user("carol@localhost", "secret")
    room = "kept@conference.localhost"
    await wait(alice.plugin["xep_0045"].join_muc_wait(room, "Alice"))
    await wait(configure(alice, room, persistentroom=True, membersonly=True))
    await wait(alice.plugin["xep_0045"].set_affiliation(room, "member", jid="bob@localhost"))
    subject_set = alice.wait_until("groupchat_subject", 10)
    alice.plugin["xep_0045"].set_subject(room, "Kept across nodes")
    assert (await wait(subject_set))["subject"] == "Kept across nodes"
    assert room not in b.server.features.services["muc"].rooms
    await start_server.stop(a)

    own, subject, _others, _history = await wait(bob.plugin["xep_0045"].join_muc_wait(room, "Bob"))
    assert own["muc"]["affiliation"] == "member", "bob entered the stored room, he did not make a new one"
    assert subject["subject"] == "Kept across nodes"
    carol = muc_client("carol@localhost/c", "secret")
    await wait(carol.log_in(b.c2s_port))
    try:
        await wait(carol.plugin["xep_0045"].join_muc_wait(room, "Carol"))
    except PresenceError as refused:
        assert refused.presence["error"]["condition"] == "registration-required"
    else:
        raise AssertionError("carol entered a members-only room")
    for client in (bob, carol):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_message_stored_while_its_recipient_was_binding_on_another_node_reaches_her_at_once(
        start_server, tmp_path, postgres_dsn, cluster_keys) -> None:
    """RFC 6121 8.5.2 in the milliseconds between a bind on one node and its announcement on the
    other (held open here): alice's phone, on the second node, is available and has been given
    her stored messages (none), when bob's message, on the first node, which has not heard of her
    yet, goes to offline storage. It reaches her once the first node hears of her, not at her
    next login, and once."""
    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    await a.add_user("alice@localhost", "secret")
    await a.add_user("bob@localhost", "secret")
    bob = Client("bob@localhost/b", "secret")
    await wait(bob.log_in(a.c2s_port))
    directory = a.server.cluster.directory
    announced, held = directory.apply, []
    directory.apply = lambda node, full, entry: (held.append((node, full, entry)) if full.startswith("alice@")
                                                 else announced(node, full, entry))
    store, reads = b.server.store, []
    read_stored = store.offline_messages
    store.offline_messages = lambda owner: reads.append(read_stored(owner)) or reads[-1]

    alice = Client("alice@localhost/phone", "secret")
    await wait(alice.log_in(b.c2s_port))
    await until(lambda: any(entry and entry["a"] for _, _, entry in held), "her presence's announcement, held")
    await until(lambda: reads and reads[0].called, "the second node has read her stored messages")
    bob.send_message(mto="alice@localhost", mbody="just as you came", mtype="chat")
    for _ in range(1000):  # until the first node's offline write is in the store
        if await a.store.offline_messages("alice@localhost"):
            break
    else:
        raise AssertionError("bob's message was not stored")
    directory.apply = announced
    for node, full, entry in held:
        announced(node, full, entry)
    assert (await wait(alice.next_message()))["body"] == "just as you came"
    bob.send_message(mto="alice@localhost", mbody="and now", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "and now"  # (not the first again)
    assert await a.store.offline_messages("alice@localhost") == []


def resuming_client(jid: str, password: str) -> Client:
    """A client with XEP-0198 on, asking for resumption (slixmpp's default)."""
    client = Client(jid, password)
    client.register_plugin("xep_0198")
    return client


def unacknowledged(node: Any, full: str) -> list[str]:
    """What *node*'s session of *full* keeps for the client's acknowledgement, as text."""
    bare, _, resource = full.partition("/")
    ledger = node.server.sessions.users[bare][resource].ledger
    return [stanza if isinstance(stanza, str) else stanza.toXml() for stanza in ledger.unacked]


async def dropped_on_first_node(a: Any, b: Any) -> tuple[Client, Client]:
    """alice (stream management on, carbons on) on *a* and bob on *b* exchange a message each way;
    then alice's connection drops without a close, and bob sends her a message while her
    session on *a* waits, detached, for a resumption."""
    alice, bob = await alice_and_bob(a, b, resuming_client)
    alice.register_plugin("xep_0280")
    await wait(alice.plugin["xep_0280"].enable())
    digest = lambda: getattr(b.server.sessions.users["alice@localhost"].get("a"), "resume_digest", None)  # noqa: E731
    await until(lambda: alice.plugin["xep_0198"].sm_id is not None and digest() is not None,
                "the second node knows alice's session may be resumed")
    bob.send_message(mto="alice@localhost/a", mbody="one", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "one"
    alice.send_message(mto="bob@localhost/b", mbody="hi", mtype="chat")
    assert (await wait(bob.next_message()))["body"] == "hi"
    alice.plugin["xep_0198"].send_ack()  # "one" is hers: only what follows is delivered again
    await until(lambda: not any(">one<" in text for text in unacknowledged(a, "alice@localhost/a")),
                "the first node has her acknowledgement")

    alice.transport.abort()  # the network goes away: no </stream:stream>
    await until(lambda: a.server.sessions.users["alice@localhost"]["a"].detached, "the first node keeps it detached")
    bob.send_message(mto="alice@localhost/a", mbody="two", mtype="chat")
    await until(lambda: any(">two<" in text for text in unacknowledged(a, "alice@localhost/a")),
                "the message waits in the detached session")
    return alice, bob


@pytest_twisted.ensureDeferred
async def test_a_session_dropped_on_one_node_resumes_on_another(start_server, tmp_path, postgres_dsn,
                                                                cluster_keys) -> None:
    """XEP-0198 across nodes (a phone behind the balancer reconnects to another node): alice's
    session, detached on the first node with a message she never acknowledged, is resumed on
    the second; she gets that message exactly once, keeps her presence, roster request and
    carbons, and chats on with users of both nodes, which now route her resource to the second."""
    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    alice, bob = await dropped_on_first_node(a, b)
    await a.add_user("carol@localhost", "secret")
    carol = Client("carol@localhost/c", "secret")
    await wait(carol.log_in(a.c2s_port))

    resumed = asyncio.ensure_future(alice.wait_until("session_resumed", 15))
    alice.connect(host="127.0.0.1", port=b.c2s_port)
    await wait(resumed)
    assert (await wait(alice.next_message()))["body"] == "two"
    session = b.server.sessions.users["alice@localhost"]["a"]
    assert not session.remote and not session.detached
    assert session.available and session.roster_requested and session.carbons
    assert "alice@localhost" not in a.server.sessions.users or \
        a.server.sessions.users["alice@localhost"]["a"].remote, "the first node let the session go"
    await until(lambda: getattr(a.server.sessions.users["alice@localhost"].get("a"), "node", None) == "node1",
                "the first node routes the resource to the second")

    bob.send_message(mto="alice@localhost/a", mbody="three", mtype="chat")  # on her new node
    carol.send_message(mto="alice@localhost/a", mbody="four", mtype="chat")  # from her old one
    bodies = {(await wait(alice.next_message()))["body"] for _ in range(2)}
    assert bodies == {"three", "four"}
    alice.send_message(mto="bob@localhost/b", mbody="back", mtype="chat")
    assert (await wait(bob.next_message()))["body"] == "back"
    await wait(alice.plugin["xep_0199"].ping(jid="localhost"))  # all delivered by now, and once
    assert alice.messages.empty() and alice.stream_errors.empty()
    for client in (alice, bob, carol):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_session_still_attached_on_its_node_is_resumed_on_another_and_its_old_stream_ends(
        start_server, tmp_path, postgres_dsn, cluster_keys) -> None:
    """The half-dead connection its node has not noticed yet: the phone resumes on the other node
    while the old stream is still attached. The old stream ends with conflict (XEP-0198 section
    5: the resumed session's old stream is closed), the new one has the session and its messages."""
    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    alice, bob = await alice_and_bob(a, b, resuming_client)
    old = alice.plugin["xep_0198"]
    await until(lambda: old.sm_id is not None and getattr(
        b.server.sessions.users["alice@localhost"].get("a"), "resume_digest", None) is not None,
        "the second node knows alice's session may be resumed")
    bob.send_message(mto="alice@localhost/a", mbody="one", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "one"

    phone = resuming_client("alice@localhost/a", "secret")  # the same client's new connection
    new = phone.plugin["xep_0198"]
    new.sm_id, new.handled, new.seq, new.last_ack = old.sm_id, old.handled, old.seq, old.last_ack
    resumed = asyncio.ensure_future(phone.wait_until("session_resumed", 15))
    phone.connect(host="127.0.0.1", port=b.c2s_port)
    await wait(resumed)
    assert (await wait(alice.stream_errors.get()))["condition"] == "conflict"
    assert not b.server.sessions.users["alice@localhost"]["a"].remote
    bob.send_message(mto="alice@localhost/a", mbody="two", mtype="chat")
    assert (await wait(phone.next_message()))["body"] == "two"
    assert alice.messages.empty()
    for client in (phone, bob):
        await wait(client.log_out())


async def resumption_fails(alice: Client, port: int) -> None:
    """alice reconnects to *port* and asks to resume: <failed/> with item-not-found, then a new
    session is bound."""
    failed: asyncio.Future[Any] = asyncio.ensure_future(alice.wait_until("sm_failed", 15))
    started = asyncio.ensure_future(alice.wait_until("session_start", 15))
    alice.connect(host="127.0.0.1", port=port)
    assert "item-not-found" in str(await wait(failed))
    await wait(started)


@pytest_twisted.ensureDeferred
async def test_a_resumption_of_a_session_whose_node_is_gone_fails(start_server, tmp_path, postgres_dsn,
                                                                  cluster_keys) -> None:
    """The node holding the detached session stops: the <resume/> on the other node fails at
    once with item-not-found (XEP-0198 section 5), and the client binds a new session there.
    The stopping node ended the session as a timeout would, so the message it never
    acknowledged was stored before that node's store closed: the new session gets it, once."""
    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    alice, bob = await dropped_on_first_node(a, b)
    await start_server.stop(a)
    assert [m.stanza.count(">two<") for m in await b.store.offline_messages("alice@localhost")] == [1]
    await until(lambda: "alice@localhost" not in b.server.sessions.users, "the second node forgot the first's")

    await resumption_fails(alice, b.c2s_port)
    assert not b.server.cluster.resumptions.asked, "nobody was asked"
    alice.send_presence()
    assert (await wait(alice.next_message()))["body"] == "two"
    bob.send_message(mto="alice@localhost/a", mbody="to the new session", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "to the new session"
    for client in (alice, bob):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_node_that_stops_hands_what_its_sessions_never_acknowledged_to_the_accounts_other_node(
        start_server, tmp_path, postgres_dsn, cluster_keys) -> None:
    """A graceful stop in a cluster: alice's session on the first node waits, detached, with a
    message she never acknowledged; her laptop is on the second node. The first node stops,
    ending the session as a timeout would: the message goes to the laptop, through the second
    node's inbox before the first leaves, once, and nothing is stored offline."""
    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    alice, bob = await dropped_on_first_node(a, b)
    laptop = Client("alice@localhost/laptop", "secret")
    await wait(laptop.log_in(b.c2s_port))
    await until(lambda: sees(a, "alice@localhost/laptop"), "the first node sees the laptop")
    await start_server.stop(a)

    assert (await wait(laptop.next_message()))["body"] == "two"
    await wait(laptop.plugin["xep_0199"].ping(jid="localhost"))
    assert laptop.messages.empty()
    assert await b.store.count_offline("alice@localhost") == 0
    for client in (laptop, bob):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_resumption_the_holding_node_does_not_answer_fails_in_bounded_time(
        start_server, tmp_path, postgres_dsn, cluster_keys) -> None:
    """The node holding the session is alive but does not answer (here: it sets the request
    aside): the other node gives up after its bound with item-not-found, the client binds a
    new session, and the message it never acknowledged reaches it once. The request answered
    late, the session is no longer there to hand over, and nothing arrives twice."""
    a, b = await nodes(start_server, tmp_path, postgres_dsn, cluster_keys)
    alice, bob = await dropped_on_first_node(a, b)
    inbox = a.server.cluster.inbox
    set_aside: list[dict[str, str]] = []
    answer, inbox.on_resume = inbox.on_resume, set_aside.append
    b.server.cluster.resumptions.wait = 0.5

    await resumption_fails(alice, b.c2s_port)
    assert set_aside, "the first node was asked"
    # The new session replaced the old one (RFC 6120 7.7.2.2), whose node delivers what it held
    # again: offline, as it does not know the new session yet; it comes with the initial presence.
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(int(DEADLINE / 0.01)):
        if await a.store.count_offline("alice@localhost"):
            break
        await deferLater(reactor, 0.01, lambda: None)
    alice.send_presence()
    assert (await wait(alice.next_message()))["body"] == "two"
    answer(set_aside[0])
    await until(lambda: not b.server.cluster.resumptions.asked, "the late answer arrived")
    bob.send_message(mto="alice@localhost/a", mbody="three", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "three", "nothing came twice"
    for client in (alice, bob):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_the_shared_throttle_records_answer_as_one_nodes_records(redis_server) -> None:
    """The throttle's scripts in a real Redis against one node's records (auth/throttle.py), on
    the same random run of failures (named account or none) and right logins over three
    addresses and four accounts, with a small policy so that delays, blocks, strained addresses
    and accounts all happen: every answer is the same. The records expire as one node forgets
    them, and the address is announced once for its pairs."""
    import random

    import txredisapi
    from twisted.internet import task

    from sns_xmpp.auth.throttle import AuthThrottle, ThrottlePolicy
    from sns_xmpp.cluster.keys import Keys
    from sns_xmpp.cluster.throttle import SharedThrottleRecords

    policy = ThrottlePolicy(free_failures=2, max_delay=4.0, block_after=6, block_seconds=600.0, window=300.0,
                            address_block_after=25, account_block_after=12)
    one_node = AuthThrottle(task.Clock(), policy)
    commands = await txredisapi.Connection("127.0.0.1", redis_server.port, convertNumbers=False)
    keys = Keys("throttle-equivalence:")
    announced: list[tuple[str, float]] = []
    shared = SharedThrottleRecords(keys, commands, task.Clock(), policy, lambda *said: announced.append(said))
    try:
        rng = random.Random(20)
        addresses = ["address:10.0.0.1", "address:10.0.0.2", "address:2001:db8::7"]
        accounts: list[str | None] = ["alice@localhost", "bob@localhost", "ß@localhost", "(demo, 42)", None]
        outcomes = {"blocked": 0, "delayed": 0, "strained": 0, "refused right": 0}
        for _ in range(300):
            address, account = rng.choice(addresses), rng.choice(accounts)
            if account is not None and rng.random() < 0.15:
                assert await shared.admit(address, account) == one_node.admit(address, account)
                outcomes["refused right"] += one_node.blocked(address, account)
                continue
            expected = one_node.refused(address, account)
            assert await shared.failed(address, account) == expected, (address, account)
            outcomes["blocked"] += expected.blocked
            outcomes["delayed"] += 0 < expected.delay < policy.max_delay
            outcomes["strained"] += one_node.strained(address, account)
        assert all(outcomes.values()), outcomes  # every branch of the policy was taken
        pair = await commands.execute_command("PTTL", keys.throttle(("pair", addresses[0], "alice@localhost")))
        assert 0 < pair <= policy.block_seconds * 1000
        assert sorted({address for address, _ in announced}) == sorted(addresses)
        assert all(seconds == 2 * policy.block_seconds for _, seconds in announced)
        assert len(announced) == len(addresses)  # once each: the word outlives the records
    finally:
        await commands.disconnect()


@pytest_twisted.ensureDeferred
async def test_failed_logins_on_one_node_block_the_pair_on_another_but_not_the_address(
        start_server, tmp_path, postgres_dsn, cluster_keys) -> None:
    """Two wrong passwords for alice from 127.0.0.1 on the first node (a block after two, for a
    short test) block that pair on the second node too: her right password is refused there with
    temporary-auth-failure, as on one node. Bob, from the same address, still logs in there (a
    correct password is never refused because another account on the address failed). Carol's
    login on the first node is the synchronisation: once the second node has heard of her bind, it
    has heard the first node's earlier announcement of the address (one channel, in order).
    Before, the block was the first node's only."""
    import dataclasses

    import pytest

    from tests.e2e.test_social_login import failure_text

    async def strict(config: Any) -> Any:
        c2s = dataclasses.replace(config.xmpp.c2s, auth_block_after=2)
        return await start_server(dataclasses.replace(config, xmpp=dataclasses.replace(config.xmpp, c2s=c2s)))

    a, b = await nodes(strict, tmp_path, postgres_dsn, cluster_keys)
    for user in ("alice", "bob", "carol"):
        await a.add_user(f"{user}@localhost", "secret")
    for _ in range(2):
        assert await failure_text(a, "alice", "wrong") == "no such account or wrong password"
    carol = Client("carol@localhost/c", "secret")
    await wait(carol.log_in(a.c2s_port))
    await until(lambda: sees(b, "carol@localhost/c"), "the second node heard the first node's announcements")

    alice = Client("alice@localhost", "secret", mechanism="PLAIN")
    with pytest.raises(AssertionError, match="temporary-auth-failure"):
        await wait(alice.log_in(b.c2s_port))
    alice.abort()
    bob = Client("bob@localhost/b", "secret", mechanism="PLAIN")
    await wait(bob.log_in(b.c2s_port))
    for client in (carol, bob):
        await wait(client.log_out())
