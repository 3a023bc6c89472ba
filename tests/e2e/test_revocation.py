"""Unlinking ends a social user's live session within seconds, whichever process records it (here
the admin command, writing to the daemon's database), and the same site account, logging in at
the site again, comes back to the same user with the same roster (issue 15)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest_twisted

from sns_xmpp.ops.admin import run as admin
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait


@pytest_twisted.ensureDeferred
async def test_unlinking_ends_the_session_and_the_account_comes_back_to_the_same_user(server, tmp_path: Path) -> None:
    from twisted.internet import reactor

    credentials = await demo_credentials(server, "nora")
    nora = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
    await wait(nora.log_in(server.c2s_port))
    await wait(nora.update_roster("bob@localhost", name="Bob"))

    config = tmp_path / "admin.toml"
    config.write_text(f'[server]\ndata_dir = "{server.server.config.data_dir}"\n')
    out = io.StringIO()
    admin(["--config", str(config), "links", "remove", "demo", "nora"], io.StringIO(), out)
    assert out.getvalue() == "unlinked nora on demo\n"
    unlinked_at = reactor.seconds()
    error = await wait(nora.stream_errors.get(), 10)
    assert error["condition"] == "not-authorized" and "unlinked" in error["text"]
    assert reactor.seconds() - unlinked_at < 5  # the daemon reads revocations every 2 s
    assert server.sessions.resources(credentials["jid"]) == []

    again = await demo_credentials(server, "nora")  # a new login at the site
    assert again["jid"] == credentials["jid"]
    nora = Client(again["jid"], again["password"], mechanism="PLAIN")
    await wait(nora.log_in(server.c2s_port))
    assert nora.boundjid.bare == credentials["jid"]
    # The login asked for the roster (slixmpp with no version kept: the whole roster); asking
    # again with the version it came with would be answered empty (RFC 6121 2.6.3).
    assert nora.client_roster["bob@localhost"]["name"] == "Bob"
    await wait(nora.log_out())


@pytest_twisted.ensureDeferred
async def test_log_out_everywhere_from_the_hand_over(server) -> None:
    """The hand-over gives a 'log out everywhere' token with the credentials (a button on the page,
    logout_url and account_token in JSON): posting it ends the account's live session at once and
    voids the credentials given until then; a forged token changes nothing."""
    import treq

    credentials = await demo_credentials(server, "olga")
    olga = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
    await wait(olga.log_in(server.c2s_port))

    forged = credentials["account_token"][:-2] + ("AA" if not credentials["account_token"].endswith("AA") else "BB")
    refused = await treq.post(credentials["logout_url"], data={"token": forged})
    assert refused.code == 400 and server.sessions.resources(credentials["jid"])
    answer = await treq.post(credentials["logout_url"], data={"token": credentials["account_token"]})
    assert answer.code == 200 and b"logged out on every device" in await answer.content()
    error = await wait(olga.stream_errors.get(), 10)
    assert error["condition"] == "not-authorized" and "logged out on the web" in error["text"]

    stale = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
    stale.connect(host="127.0.0.1", port=server.c2s_port)
    failure = await wait(stale.auth_failures.get())
    stale.abort()
    assert str(failure["text"]).startswith("revoked")
