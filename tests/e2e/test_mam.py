"""Message Archive Management (XEP-0313) with slixmpp's own plugins (xep_0313, xep_0059, xep_0359)
against the daemon, between a social user and a local user: both archives hold the messages both
ways, the filters and RSM paging return each message once, in order, before and after a restart."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from slixmpp import JID

from tests.clients import Terminal
from tests.conftest import DEMO_SITE, make_config
from tests.e2e.test_local_im import _need_profanity, profanity, profanity_account, until
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

MAM = "urn:xmpp:mam:2"


async def archive(client: Client, **query: Any) -> list[tuple[str, str, Any]]:
    """Every message of the client's archive matching *query*, paged 5 at a time by slixmpp's own
    RSM iterator: (body, UID, stamp) each, in the order they came."""
    found = []
    async for message in client.plugin["xep_0313"].iterate(rsm={"max": 5}, **query):
        result = message["mam_result"]
        found.append((result["forwarded"]["stanza"]["body"], result["id"], result["forwarded"]["delay"]["stamp"]))
    return found


async def logged_in(jid: str, password: str, port: int, mechanism: str | None = None) -> Client:
    client = Client(jid, password, mechanism=mechanism)
    for plugin in ("xep_0059", "xep_0313", "xep_0359"):
        client.register_plugin(plugin)
    await wait(client.log_in(port))
    return client


@pytest_twisted.ensureDeferred
async def test_the_archive_pages_every_message_once_and_survives_a_restart(start_server, store_config: str,
                                                                          tmp_path: Path) -> None:
    """On each store engine: Rosa (a social user) and Bob (local) chat; 23 messages paged 5 at a
    time come back once each, in order, in both archives, by 'with' and by time; after a restart
    the archives are the same, the last message before the stop (still in the writer's batch)
    among them, and new UIDs do not collide with old ones."""
    # Batches wait a minute: what is not queried before the stop is written only by the stop.
    config = make_config(tmp_path, DEMO_SITE + store_config + "\n[xmpp.mam]\nflush_interval_ms = 60000\n")
    server = await start_server(config)
    credentials = await demo_credentials(server, "rosa")
    await server.add_user("bob@localhost", "secret")
    await server.add_user("carol@localhost", "secret")
    rosa = await logged_in(f"{credentials['jid']}/phone", credentials["password"], server.c2s_port, "PLAIN")
    bob = await logged_in("bob@localhost/laptop", "secret", server.c2s_port)
    carol = await logged_in("carol@localhost/tablet", "secret", server.c2s_port)
    rosa_bare = rosa.boundjid.bare
    info = await wait(rosa.plugin["xep_0030"].get_info(jid=JID(rosa_bare)))
    assert MAM in info["disco_info"]["features"]

    carol.send_message(mto=JID(rosa_bare), mbody="from carol", mtype="chat")
    assert (await wait(rosa.next_message()))["body"] == "from carol"
    stamped = []
    for n in range(23):  # both ways, each seen by its recipient with the recipient's stanza-id
        sender, recipient = (rosa, bob) if n % 2 == 0 else (bob, rosa)
        sender.send_message(mto=JID(recipient.boundjid.bare), mbody=f"m{n}", mtype="chat")
        delivered = await wait(recipient.next_message())
        assert delivered["body"] == f"m{n}"
        assert delivered["stanza_id"]["by"] == recipient.boundjid.bare
        stamped.append((recipient is rosa, delivered["stanza_id"]["id"]))
    expected = [f"m{n}" for n in range(23)]

    everything = await wait(archive(rosa))
    assert [body for body, _, _ in everything] == ["from carol", *expected]
    with_bob = await wait(archive(rosa, with_jid=JID("bob@localhost")))
    assert [body for body, _, _ in with_bob] == expected
    assert [uid for body, uid, _ in with_bob if int(body[1:]) % 2] == [uid for to_rosa, uid in stamped if to_rosa]
    assert [body for body, _, _ in await wait(archive(bob, with_jid=JID(rosa_bare)))] == expected
    assert [body for body, _, _ in await wait(archive(rosa, with_jid=JID("carol@localhost")))] == ["from carol"]
    start, end = with_bob[5][2], with_bob[9][2]
    window = await wait(archive(rosa, start=start, end=end))
    assert [body for body, _, stamp in everything if start <= stamp <= end] == [body for body, _, _ in window]
    assert window[0][0] == "m5" and window[-1][0] == "m9"
    bob.send_message(mto=JID(rosa_bare), mbody="just before the stop", mtype="chat")
    assert (await wait(rosa.next_message()))["body"] == "just before the stop"
    for client in (rosa, bob, carol):
        await wait(client.log_out())

    await start_server.stop(server)
    again = await start_server(config)
    rosa = await logged_in(f"{credentials['jid']}/desktop", credentials["password"], again.c2s_port, "PLAIN")
    bob = await logged_in("bob@localhost/laptop", "secret", again.c2s_port)
    assert (await wait(archive(rosa)))[:-1] == everything
    assert (await wait(archive(rosa, with_jid=JID("bob@localhost"))))[:-1] == with_bob
    expected.append("just before the stop")
    assert [body for body, _, _ in await wait(archive(bob, with_jid=JID(rosa_bare)))] == expected
    rosa.send_message(mto=JID("bob@localhost"), mbody="after the restart", mtype="chat")
    assert (await wait(bob.next_message()))["body"] == "after the restart"
    after = await wait(archive(bob))
    assert [body for body, _, _ in after] == [*expected, "after the restart"]
    assert len({uid for _, uid, _ in after}) == 25
    for client in (rosa, bob):
        await wait(client.log_out())


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_profanity_fetches_a_conversation_from_the_archive(server, tmp_path: Path) -> None:
    """A client from another stack (Profanity: C, libstrophe) with its MAM on: a social user's
    messages to a local user, delivered to the local user's other client while Profanity was not
    running (so neither offline storage nor Profanity's own history has them), show in
    Profanity's chat window when it opens it: Profanity asked the archive, with 'with' and RSM,
    and understood the answer."""
    _need_profanity()
    credentials = await demo_credentials(server, "rosa")
    await server.add_user("bob@localhost", "secret")
    rosa = await logged_in(f"{credentials['jid']}/phone", credentials["password"], server.c2s_port, "PLAIN")
    laptop = await logged_in("bob@localhost/laptop", "secret", server.c2s_port)
    lines = [f"archived line {n} {secrets.token_hex(3)}" for n in range(3)]
    for line in lines:
        rosa.send_message(mto=JID("bob@localhost"), mbody=line, mtype="chat")
        assert (await wait(laptop.next_message()))["body"] == line
    await wait(laptop.log_out())
    assert await server.store.count_offline("bob@localhost") == 0

    with profanity(tmp_path, "bob@localhost", profanity_account("bob@localhost", server.c2s_port)):
        terminal = Terminal(tmp_path / "tmux.sock")
        log = tmp_path / "profanity.log"

        def learnt_the_features() -> bool:  # Profanity looks for MAM in the domain's disco#info
            text = log.read_text(errors="replace") if log.exists() else ""
            return any("RECV" in line and "disco#info" in line and MAM in line for line in text.splitlines())

        await until(learnt_the_features)
        terminal.type("/mam on")
        terminal.type(f"/msg {rosa.boundjid.bare}")
        try:
            await until(lambda: all(line in terminal.screen() for line in lines), timeout=20)
        except AssertionError:
            raise AssertionError(f"the archive's lines are not on Profanity's screen:\n{terminal.screen()}") from None
        sent = [line for line in log.read_text(errors="replace").splitlines() if "SENT" in line and MAM in line]
        assert sent and "<query" in sent[0], sent
    await wait(rosa.log_out())
