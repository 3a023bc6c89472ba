"""Local accounts with a real client (slixmpp) over loopback TLS: the RFC 6120/6121 basics."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted

from sns_xmpp.jid import parse_jid
from sns_xmpp.xmpp.features import stream_management
from sns_xmpp.xmpp.features.stream_management import REQUEST_EVERY
from tests.clients import require_client
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


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_not_authorized_and_every_mechanism_works(server) -> None:
    """SCRAM-SHA-1, SCRAM-SHA-256 and PLAIN (after TLS), STARTTLS and direct TLS; a bad password fails."""
    await server.add_user("carol@localhost", "right")
    wrong = Client("carol@localhost", "wrong", mechanism="SCRAM-SHA-256")
    wrong.connect(host="127.0.0.1", port=server.c2s_port)
    failure = await wait(wrong.auth_failures.get())
    assert failure.get_condition() == "not-authorized"
    wrong.abort()

    for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"):
        client = await logged_in(server, "carol@localhost", "right", mechanism=mechanism)
        assert client.boundjid.bare == "carol@localhost"
        await wait(client.log_out())
    client = Client("carol@localhost", "right")
    await wait(client.log_in(server.direct_tls_port, direct_tls=True))
    assert client.boundjid.bare == "carol@localhost"
    await wait(client.log_out())

    await server.add_user("carol@example.org", "other")  # a second virtual host, its own user
    client = Client("carol@example.org", "other")
    await wait(client.log_in(server.c2s_port))
    assert client.boundjid.bare == "carol@example.org"
    await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_garbage_on_one_stream_leaves_other_clients_chatting(server) -> None:
    await server.add_user("alice@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    alice = await logged_in(server, "alice@localhost")
    bob = await logged_in(server, "bob@localhost")

    async def garbage() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.c2s_port)
        writer.write(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                     b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
                     b"<message><<<\x00\xff")
        data = await reader.read()  # until the server closes
        writer.close()
        return data

    answer = await wait(garbage())
    assert b"<not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in answer
    assert answer.endswith(b"</stream:stream>")

    alice.send_message(mto="bob@localhost", mbody="still here?", mtype="chat")
    assert (await wait(bob.next_message()))["body"] == "still here?"
    await wait(alice.log_out())
    await wait(bob.log_out())


@pytest_twisted.ensureDeferred
async def test_offline_message_survives_a_restart_and_unknown_users_bounce(start_server, tmp_path) -> None:
    """A message to an offline user is kept through a restart and delivered once, in order, with a delay stamp."""
    server = await start_server()
    await server.add_user("alice@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    alice = await logged_in(server, "alice@localhost")
    for text in ("first", "second"):
        alice.send_message(mto="bob@localhost", mbody=text, mtype="chat")
    alice.send_message(mto="nobody@localhost", mbody="anyone?", mtype="chat")
    bounced = await wait(alice.next_message())
    assert (bounced["type"], bounced["error"]["condition"]) == ("error", "service-unavailable")
    await wait(alice.log_out())
    await start_server.stop(server)

    server = await start_server()
    bob = await logged_in(server, "bob@localhost")
    first, second = await wait(bob.next_message()), await wait(bob.next_message())
    assert [first["body"], second["body"]] == ["first", "second"]
    assert first["delay"]["stamp"] is not None and first["from"].bare == "alice@localhost"
    assert await server.store.count_offline("bob@localhost") == 0
    await wait(bob.log_out())


@pytest_twisted.ensureDeferred
async def test_same_resource_replaces_the_old_session_with_conflict(server) -> None:
    await server.add_user("dave@localhost", "secret")
    first = Client("dave@localhost/desk", "secret")
    await wait(first.log_in(server.c2s_port))
    second = Client("dave@localhost/desk", "secret")
    await wait(second.log_in(server.c2s_port))
    error = await wait(first.stream_errors.get())
    assert error["condition"] == "conflict"
    assert second.boundjid.full == "dave@localhost/desk"
    assert [s.full for s in server.sessions.resources("dave@localhost")] == ["dave@localhost/desk"]
    await wait(second.log_out())


@pytest_twisted.ensureDeferred
async def test_roster_set_and_remove_push_to_every_interested_resource(server) -> None:
    await server.add_user("erin@localhost", "secret")
    phone = Client("erin@localhost/phone", "secret")
    laptop = Client("erin@localhost/laptop", "secret")
    await wait(phone.log_in(server.c2s_port))
    await wait(laptop.log_in(server.c2s_port))
    pushed: asyncio.Queue = asyncio.Queue()
    laptop.add_event_handler("roster_update", pushed.put_nowait)

    await wait(phone.update_roster("frank@example.org", name="Frank", groups=["Friends"]))
    await wait(pushed.get())
    assert laptop.client_roster["frank@example.org"]["name"] == "Frank"
    assert laptop.client_roster["frank@example.org"]["groups"] == ["Friends"]
    roster = await server.store.get_roster("erin@localhost")
    assert [(i.contact, i.name, i.groups) for i in roster] == [("frank@example.org", "Frank", ("Friends",))]

    await wait(phone.del_roster_item("frank@example.org"))
    await wait(pushed.get())
    assert "frank@example.org" not in laptop.client_roster
    assert await server.store.get_roster("erin@localhost") == []
    await wait(phone.log_out())
    await wait(laptop.log_out())


@pytest_twisted.ensureDeferred
async def test_stream_management_resumes_a_dropped_session_without_losing_a_message(server) -> None:
    """XEP-0198: acks, then a dropped connection resumes the same session and gets what was sent meanwhile."""
    await server.add_user("alice@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    alice = Client("alice@localhost/laptop", "secret")
    alice.register_plugin("xep_0198")
    enabled = asyncio.ensure_future(alice.wait_until("sm_enabled", 15))
    await wait(alice.log_in(server.c2s_port))
    await wait(enabled)
    sm = alice.plugin["xep_0198"]
    assert sm.sm_id
    bob = await logged_in(server, "bob@localhost")

    bob.send_message(mto="alice@localhost/laptop", mbody="one", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "one"
    alice.transport.abort()  # the network goes away: no </stream:stream>
    bob.send_message(mto="alice@localhost/laptop", mbody="two", mtype="chat")
    await wait(bob.plugin["xep_0199"].ping(jid="localhost"))

    resumed = asyncio.ensure_future(alice.wait_until("session_resumed", 15))
    alice.connect(host="127.0.0.1", port=server.c2s_port)
    await wait(resumed)
    assert (await wait(alice.next_message()))["body"] == "two"
    [session] = server.sessions.resources("alice@localhost")
    assert session.full == "alice@localhost/laptop" and not session.detached
    await wait(alice.log_out())
    await wait(bob.log_out())


@pytest_twisted.ensureDeferred
async def test_a_graceful_stop_keeps_what_sessions_never_acknowledged(start_server,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The server stops as SIGTERM stops it (stopService) and ends its sessions as a XEP-0198
    timeout ends one: the message a detached session holds for its resumption, and the one an
    attached session received but never acknowledged, are in offline storage before the store
    closes, each once (not the phone's handed to the laptop, whose stream is over too); after a
    start on the same database the account's next login gets both."""
    monkeypatch.setattr(stream_management, "REQUEST_EVERY", 10_000)  # no <r/>: nothing is acknowledged
    server = await start_server()
    await server.add_user("alice@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    devices = {}
    for resource in ("phone", "laptop"):
        client = devices[resource] = Client(f"alice@localhost/{resource}", "secret")
        client.register_plugin("xep_0198")
        enabled = asyncio.ensure_future(client.wait_until("sm_enabled", 15))
        await wait(client.log_in(server.c2s_port))
        await wait(enabled)
    bob = await logged_in(server, "bob@localhost")
    bob.send_message(mto="alice@localhost/laptop", mbody="to the laptop", mtype="chat")
    assert (await wait(devices["laptop"].next_message()))["body"] == "to the laptop"
    devices["phone"].transport.abort()  # the network goes away: the session waits, detached
    bob.send_message(mto="alice@localhost/phone", mbody="to the phone", mtype="chat")
    await wait(bob.plugin["xep_0199"].ping(jid="localhost"))
    phone = server.sessions.session(parse_jid("alice@localhost/phone"))
    assert phone is not None and phone.detached and phone.ledger is not None and len(phone.ledger.unacked) > 0
    await start_server.stop(server)

    server = await start_server()
    assert await server.store.count_offline("alice@localhost") == 2
    alice = await logged_in(server, "alice@localhost/desk")
    bodies = sorted([(await wait(alice.next_message()))["body"] for _ in range(2)])
    assert bodies == ["to the laptop", "to the phone"]
    await wait(alice.plugin["xep_0199"].ping(jid="localhost"))
    assert await server.store.count_offline("alice@localhost") == 0
    await wait(alice.log_out())


@pytest_twisted.ensureDeferred
async def test_stream_management_client_gets_its_offline_messages_acks_them_and_stays(server) -> None:
    """XEP-0198 as every mainstream client uses it: three messages wait offline; the client logs in
    with stream management, gets them, acknowledges what it really received, and stays connected
    (the server counted the offline messages it sent, so the ack is not "too high")."""
    await server.add_user("alice@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    alice = await logged_in(server, "alice@localhost")
    for text in ("one", "two", "three"):
        alice.send_message(mto="bob@localhost", mbody=text, mtype="chat")
    await wait(alice.plugin["xep_0199"].ping(jid="localhost"))
    assert await server.store.count_offline("bob@localhost") == 3

    bob = Client("bob@localhost/phone", "secret")
    bob.register_plugin("xep_0198")
    enabled = asyncio.ensure_future(bob.wait_until("sm_enabled", 15))
    await wait(bob.log_in(server.c2s_port))
    await wait(enabled)
    bodies = [(await wait(bob.next_message()))["body"] for _ in range(3)]
    assert bodies == ["one", "two", "three"]
    sm = bob.plugin["xep_0198"]
    handled = sm.handled  # the roster, its own presence and the three messages
    assert handled >= 5
    sm.send_ack()  # what the client really handled, offline messages included
    await wait(bob.plugin["xep_0199"].ping(jid="localhost"))  # answered: the stream is still up
    [session] = server.sessions.resources("bob@localhost")
    assert session.ledger is not None and session.ledger.acked >= handled
    assert bob.stream_errors.empty() and not session.stream.closed
    await wait(bob.log_out())
    await wait(alice.log_out())



def _need_profanity() -> str:
    return require_client("profanity", also=("tmux",))


def profanity_account(jid: str, port: int, password: str = "secret") -> str:
    """Profanity's accounts file for *jid* on this server's c2s port, trusting its certificate."""
    return (f"[{jid}]\nenabled=true\njid={jid}\nserver=127.0.0.1\nport={port}\nresource=profanity\n"
            f"password={password}\ntls.policy=trust\n")


@contextlib.contextmanager
def profanity(tmp_path: Path, account: str, accounts: str, run: str = "") -> Iterator[None]:
    """Profanity in a tmux server of its own, with *accounts* as its accounts file (a GLib key
    file), logged in as the account named *account* there; killed when the block ends."""
    command = _need_profanity()
    data, config = tmp_path / "data", tmp_path / "config"
    (data / "profanity").mkdir(parents=True, exist_ok=True)
    (config / "profanity").mkdir(parents=True, exist_ok=True)
    (data / "profanity" / "accounts").write_text(textwrap.dedent(accounts))
    tmux_socket = str(tmp_path / f"tmux{run}.sock")
    env = f"HOME={tmp_path} XDG_DATA_HOME={data} XDG_CONFIG_HOME={config} TERM=xterm"
    started = subprocess.run(
        ["tmux", "-S", tmux_socket, "new-session", "-d", "-x", "160", "-y", "40",
         f"env {env} {command} -a {account} -l DEBUG -f {tmp_path / f'profanity{run}.log'}"],
        capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    try:
        yield
    finally:
        subprocess.run(["tmux", "-S", tmux_socket, "kill-server"], capture_output=True)


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Poll server-side state that an external client changes (no event to wait on from here)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError("timed out")


@pytest_twisted.ensureDeferred
async def test_profanity_with_stream_management_gets_offline_messages_and_stays(server, tmp_path: Path) -> None:
    """Profanity (C, libstrophe, XEP-0198 on by default) logs in while three messages wait offline:
    it gets them, acknowledges them and stays connected (it was thrown out with undefined-condition,
    "handled count too high", when offline messages went around stream management's count)."""
    _need_profanity()
    await server.add_user("alice@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    alice = await logged_in(server, "alice@localhost")
    for text in ("one", "two", "three"):
        alice.send_message(mto="bob@localhost", mbody=text, mtype="chat")
    await wait(alice.plugin["xep_0199"].ping(jid="localhost"))
    assert await server.store.count_offline("bob@localhost") == 3

    with profanity(tmp_path, "bob@localhost", profanity_account("bob@localhost", server.c2s_port)):
        def acknowledged() -> bool:
            sessions = server.sessions.resources("bob@localhost")
            return bool(sessions) and sessions[0].ledger is not None and sessions[0].ledger.acked >= 5

        await until(acknowledged)
        [session] = server.sessions.resources("bob@localhost")
        assert session.ledger is not None and not session.stream.closed
        assert await server.store.count_offline("bob@localhost") == 0
        # Enough live messages that the server's next <r/> follows the last of them, with nothing
        # else in flight: the answer then counts exactly what the client received, offline
        # messages included, and must be accepted.
        asked_at = (session.ledger.sent // REQUEST_EVERY + 1) * REQUEST_EVERY
        for n in range(asked_at - session.ledger.sent):
            alice.send_message(mto="bob@localhost", mbody=f"live {n}", mtype="chat")
        await until(lambda: session.stream.closed or session.ledger is not None and session.ledger.acked >= asked_at)
        assert not session.stream.closed and server.sessions.resources("bob@localhost") == [session]
    await wait(alice.log_out())
