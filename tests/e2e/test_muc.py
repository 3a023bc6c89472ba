"""Group chat (XEP-0045) against the daemon, with slixmpp's own xep_0045 and xep_0249 plugins:
a social user (the demo site's) and a local user create, join and chat in a room at
conference.localhost, a late joiner gets the history, a members-only room refuses a stranger, a
ban holds, a direct invitation (XEP-0249) is routed, and a persistent room survives a restart on
each store engine. go-sendxmpp (Go) and Profanity (C, in tmux) join rooms and speak as clients
of other stacks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from slixmpp import JID
from slixmpp.exceptions import IqError, PresenceError

from sns_xmpp.ops.console import namespace
from tests.clients import Terminal
from tests.conftest import DEMO_SITE, make_config
from tests.e2e.test_go_clients import _need_go_sendxmpp, go_sendxmpp
from tests.e2e.test_local_im import _need_profanity, profanity, profanity_account, until
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import TIMEOUT, Client, wait

ROOM = JID("council@conference.localhost")


def muc_client(jid: str, password: str, mechanism: str | None = None) -> Client:
    client = Client(jid, password, mechanism=mechanism)
    client.register_plugin("xep_0045")
    client.register_plugin("xep_0249")
    client.register_plugin("xep_0313")
    client.groupchat: asyncio.Queue[Any] = asyncio.Queue()  # type: ignore[misc]
    client.add_event_handler("groupchat_message", client.groupchat.put_nowait)  # type: ignore[attr-defined]
    client.invitations: asyncio.Queue[Any] = asyncio.Queue()  # type: ignore[misc]
    client.add_event_handler("groupchat_direct_invite", client.invitations.put_nowait)  # type: ignore[attr-defined]
    return client


async def next_groupchat(client: Client) -> Any:
    while True:
        message = await asyncio.wait_for(client.groupchat.get(), TIMEOUT)  # type: ignore[attr-defined]
        if message["body"]:
            return message


async def configure(client: Client, room: JID, **values: Any) -> None:
    """The owner's form (section 10.2) as slixmpp fetches it, changed and submitted."""
    form = await client.plugin["xep_0045"].get_room_config(room)
    form["type"] = "submit"
    for var, value in values.items():
        form.field[f"muc#roomconfig_{var}"]["value"] = value
    await client.plugin["xep_0045"].set_room_config(room, form)


@pytest_twisted.ensureDeferred
async def test_a_social_and_a_local_user_chat_in_a_room_and_its_rules_hold(start_server, tmp_path: Path) -> None:
    """rosa (demo site) creates the room by joining it (status 201) and configures it with the
    owner's form; her reserved nick (7.12) is her site's display name. bob (local) joins and they
    chat; carol, joining late, gets the history with XEP-0203 delays. The room turns members-only:
    carol is removed (322) and refused (registration-required) until made a member; banned, she
    is refused again (forbidden). bob's direct invitation (XEP-0249) reaches carol as slixmpp's
    event. The console's rooms() and /metrics see the room."""
    server = await start_server(make_config(tmp_path, DEMO_SITE))
    credentials = await demo_credentials(server, "rosa")
    for user in ("bob", "carol"):
        await server.add_user(f"{user}@localhost", "secret")
    rosa = muc_client(f"{credentials['jid']}/phone", credentials["password"], "PLAIN")
    bob = muc_client("bob@localhost/laptop", "secret")
    carol = muc_client("carol@localhost/tablet", "secret")
    for client in (rosa, bob, carol):
        await wait(client.log_in(server.c2s_port))
    muc = {name: client.plugin["xep_0045"] for name, client in (("rosa", rosa), ("bob", bob), ("carol", carol))}

    items = await wait(rosa.plugin["xep_0030"].get_items(jid=JID("localhost")))
    assert "conference.localhost" in [jid for jid, _, _ in items["disco_items"]["items"]]
    reserved = await wait(rosa.plugin["xep_0030"].get_info(jid=ROOM, node="x-roomuser-item"))
    rosa_name = [name for _, _, _, name in reserved["disco_info"]["identities"]]
    assert rosa_name == ["rosa"], rosa_name  # the demo site's name for her
    own, _subject, _others, _history = await wait(muc["rosa"].join_muc_wait(ROOM, rosa_name[0]))
    assert own["muc"]["status_codes"] >= {110, 201}
    assert own["muc"]["affiliation"] == "owner"
    await wait(configure(rosa, ROOM, roomname="The Council", historylength="10"))

    await wait(muc["bob"].join_muc_wait(ROOM, "Bob"))
    for n in range(3):
        rosa.send_message(mto=ROOM, mbody=f"motion {n}", mtype="groupchat")
        heard = await wait(next_groupchat(bob))
        assert (heard["body"], heard["from"].resource) == (f"motion {n}", rosa_name[0])
    bob.send_message(mto=ROOM, mbody="seconded", mtype="groupchat")
    reflected = [(await wait(next_groupchat(rosa)))["body"] for _ in range(4)]  # her own come back too (7.4)
    assert reflected == ["motion 0", "motion 1", "motion 2", "seconded"]

    own, _subject, others, history = await wait(muc["carol"].join_muc_wait(ROOM, "Carol", maxstanzas=3))
    assert [message["body"] for message in history] == ["motion 1", "motion 2", "seconded"]
    assert all(message["delay"]["from"] == ROOM for message in history)
    assert {presence["from"].resource for presence in others} == {rosa_name[0], "Bob", "Carol"}

    room = namespace(server.server)["rooms"](str(ROOM))
    assert [o["nick"] for o in room["occupants"]] == sorted([rosa_name[0], "Bob", "Carol"])
    metrics = await (await treq.get(f"{server.http_url}/metrics")).text()
    assert "sns_xmpp_muc_rooms 1.0" in metrics and "sns_xmpp_muc_occupants 3.0" in metrics

    await wait(muc["rosa"].set_affiliation(ROOM, "member", jid=JID("bob@localhost")))
    await wait(configure(rosa, ROOM, membersonly=True))
    with pytest.raises(PresenceError) as refused:
        await wait(muc["carol"].join_muc_wait(ROOM, "Carol"))
    assert refused.value.presence["error"]["condition"] == "registration-required"
    await wait(muc["rosa"].set_affiliation(ROOM, "member", jid=JID("carol@localhost")))
    await wait(muc["carol"].join_muc_wait(ROOM, "Carol"))
    await wait(muc["rosa"].set_affiliation(ROOM, "outcast", jid=JID("carol@localhost"), reason="out of order"))
    with pytest.raises(PresenceError) as refused:
        await wait(muc["carol"].join_muc_wait(ROOM, "Carol"))
    assert refused.value.presence["error"]["condition"] == "forbidden"
    assert await wait(muc["rosa"].get_affiliation_list(ROOM, "outcast")) == [JID("carol@localhost")]

    bob.plugin["xep_0249"].send_invitation(JID("carol@localhost"), ROOM, reason="come back later")
    invitation = await wait(asyncio.wait_for(carol.invitations.get(), TIMEOUT))  # type: ignore[attr-defined]
    assert invitation["groupchat_invite"]["jid"] == ROOM
    assert invitation["from"].bare == "bob@localhost"
    for client in (rosa, bob, carol):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_persistent_room_survives_a_restart(start_server, store_config: str, tmp_path: Path) -> None:
    """On each store engine: a persistent, members-only room with bob as member and a subject is
    there after the daemon restarts; bob enters (the subject is the one set before), a stranger
    is refused; the room's archive pages with slixmpp's xep_0313 and RSM (3 a page) through the
    messages of before the restart, each once, in order, and the stranger may not read it."""
    config = make_config(tmp_path, DEMO_SITE + store_config)
    server = await start_server(config)
    credentials = await demo_credentials(server, "rosa")
    for user in ("bob", "carol"):
        await server.add_user(f"{user}@localhost", "secret")
    rosa = muc_client(f"{credentials['jid']}/phone", credentials["password"], "PLAIN")
    await wait(rosa.log_in(server.c2s_port))
    await wait(rosa.plugin["xep_0045"].join_muc_wait(ROOM, "Rosa"))
    await wait(configure(rosa, ROOM, persistentroom=True, membersonly=True))
    await wait(rosa.plugin["xep_0045"].set_affiliation(ROOM, "member", jid=JID("bob@localhost")))
    for n in range(7):
        rosa.send_message(mto=ROOM, mbody=f"item {n}", mtype="groupchat")
    assert [(await wait(next_groupchat(rosa)))["body"] for _ in range(7)][-1] == "item 6"
    subject_set = asyncio.ensure_future(rosa.wait_until("groupchat_subject", TIMEOUT))
    rosa.plugin["xep_0045"].set_subject(ROOM, "Kept across restarts")
    assert (await wait(subject_set))["subject"] == "Kept across restarts"
    await wait(rosa.log_out())
    await start_server.stop(server)

    server = await start_server(config)
    bob = muc_client("bob@localhost/laptop", "secret")
    carol = muc_client("carol@localhost/tablet", "secret")
    for client in (bob, carol):
        await wait(client.log_in(server.c2s_port))
    own, subject, _others, _history = await wait(bob.plugin["xep_0045"].join_muc_wait(ROOM, "Bob"))
    assert own["muc"]["affiliation"] == "member" and subject["subject"] == "Kept across restarts"
    with pytest.raises(PresenceError) as refused:
        await wait(carol.plugin["xep_0045"].join_muc_wait(ROOM, "Carol"))
    assert refused.value.presence["error"]["condition"] == "registration-required"

    async def archive(client: Client) -> list[tuple[str, str]]:
        """The room's archive through slixmpp's own RSM iterator, 3 a page (XEP-0313 on the room)."""
        return [(message["mam_result"]["forwarded"]["stanza"]["body"], message["mam_result"]["id"])
                async for message in client.plugin["xep_0313"].iterate(jid=ROOM, rsm={"max": 3})]

    found = await wait(archive(bob))
    assert [text for text, _ in found] == [f"item {n}" for n in range(7)]
    assert len({uid for _, uid in found}) == 7
    with pytest.raises(IqError) as forbidden:
        await wait(carol.plugin["xep_0313"].retrieve(jid=ROOM))
    assert forbidden.value.iq["error"]["condition"] == "forbidden"
    for client in (bob, carol):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_go_sendxmpp_speaks_in_a_room(server, tmp_path: Path) -> None:
    """go-sendxmpp -c (Go, its own XMPP library) joins a room bob made and sends a groupchat
    message, which bob hears from go-sendxmpp's occupant JID; once it has quit it is no longer
    in the room."""
    _need_go_sendxmpp()
    for user in ("alice", "bob"):
        await server.add_user(f"{user}@localhost", "secret")
    bob = muc_client("bob@localhost/laptop", "secret")
    await wait(bob.log_in(server.c2s_port))
    await wait(bob.plugin["xep_0045"].join_muc_wait(ROOM, "Bob"))
    await wait(configure(bob, ROOM))
    message = tmp_path / "message.txt"
    message.write_text("hello from Go\n")
    status, output = await wait(go_sendxmpp(tmp_path, server.c2s_port, "--username", "alice@localhost",
                                            "--password", "secret", "--message", str(message), "--chatroom",
                                            "--alias", "gopher", str(ROOM)), 30)
    assert status == 0, output
    heard = await wait(next_groupchat(bob))
    assert (heard["body"], heard["from"]) == ("hello from Go", JID(f"{ROOM}/gopher"))
    rooms = namespace(server.server)["rooms"]
    await until(lambda: [o["nick"] for o in rooms(str(ROOM))["occupants"]] == ["Bob"])  # gone as it quit
    await wait(bob.log_out())


@pytest_twisted.ensureDeferred
async def test_profanity_joins_a_room_and_chats(server, tmp_path: Path) -> None:
    """Profanity (C, libstrophe) types /join as a person would: it enters the room bob (slixmpp)
    made, shows what bob says there, and what is typed in its room window reaches bob as
    groupchat from Profanity's occupant JID; the server sees the occupant with its real JID."""
    _need_profanity()
    for user in ("alice", "bob"):
        await server.add_user(f"{user}@localhost", "secret")
    bob = muc_client("bob@localhost/laptop", "secret")
    await wait(bob.log_in(server.c2s_port))
    await wait(bob.plugin["xep_0045"].join_muc_wait(ROOM, "Bob"))
    await wait(configure(bob, ROOM))
    with profanity(tmp_path, "alice@localhost", profanity_account("alice@localhost", server.c2s_port)):
        terminal = Terminal(tmp_path / "tmux.sock")
        await until(lambda: bool(server.sessions.resources("alice@localhost")))
        await until(lambda: server.sessions.resources("alice@localhost")[0].available)
        terminal.type(f"/join {ROOM} nick Alicia")
        muc = namespace(server.server)["rooms"]
        await until(lambda: "Alicia" in [o["nick"] for o in muc(str(ROOM))["occupants"]])
        assert [o["jid"] for o in muc(str(ROOM))["occupants"] if o["nick"] == "Alicia"] == [
            "alice@localhost/profanity"]
        bob.send_message(mto=ROOM, mbody="welcome, Alicia", mtype="groupchat")
        await until(lambda: "welcome, Alicia" in terminal.screen())
        terminal.type("thank you, Bob")
        while True:
            heard = await wait(next_groupchat(bob))
            if heard["from"] == JID(f"{ROOM}/Alicia"):
                break
        assert heard["body"] == "thank you, Bob"
    await wait(bob.log_out())
