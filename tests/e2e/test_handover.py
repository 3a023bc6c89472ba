"""Issue 15's stable identity, with real clients: the JID and password the login callback hands
over log in twice, and the client is bound as exactly that JID, so that a client which stores
its account under the bound JID (Conversations does) logs in the same way next time.

Clients from three stacks: slixmpp (Python), go-sendxmpp (Go's TLS), Profanity (libstrophe, C,
which picks SCRAM whenever it is offered: it names itself in its stream header, and the server
offers it only what can work for a social JID).
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from tests.e2e.test_go_clients import go_sendxmpp
from tests.e2e.test_local_im import _need_profanity, profanity, until
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait


@pytest_twisted.ensureDeferred
async def test_slixmpp_logs_in_twice_as_the_handed_over_jid(server) -> None:
    credentials = await demo_credentials(server, "carol")
    assert credentials["jid"] == "carol\\40demo@localhost"
    for _ in range(2):
        client = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
        await wait(client.log_in(server.c2s_port))
        assert client.boundjid.bare == credentials["jid"]
        await wait(client.log_out())
    # The bound JID is what the client stores; its user name is that JID's localpart, which the
    # older credentials' site could not parse ('malformed': Conversations was locked out).
    client = Client("ignored@localhost", credentials["password"], mechanism="PLAIN",
                    username=credentials["jid"].split("@")[0])
    await wait(client.log_in(server.c2s_port))
    assert client.boundjid.bare == credentials["jid"]
    await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_go_sendxmpp_logs_in_twice_as_the_handed_over_jid(server, tmp_path: Path) -> None:
    """go-sendxmpp (Go crypto/tls) sends twice with the handed-over pair; the messages arrive from
    the handed-over JID."""
    credentials = await demo_credentials(server, "dave")
    await server.add_user("bob@localhost", "secret")
    bob = Client("bob@localhost", "secret")
    await wait(bob.log_in(server.c2s_port))
    for n in range(2):
        message = tmp_path / f"message{n}.txt"
        message.write_text(f"hello {n}\n")
        status, output = await wait(go_sendxmpp(tmp_path, server.c2s_port, "--username", credentials["jid"],
                                                "--password", credentials["password"], "--message", str(message),
                                                "bob@localhost"), 30)
        assert status == 0, output
        received = await wait(bob.next_message())
        assert (received["body"], received["from"].bare) == (f"hello {n}", credentials["jid"])
    await wait(bob.log_out())


@pytest_twisted.ensureDeferred
async def test_profanity_logs_in_twice_as_the_handed_over_jid(server, tmp_path: Path) -> None:
    """Profanity, configured with the handed-over JID and password (as a person would paste them),
    is bound as that JID, and again after it quits and starts anew."""
    _need_profanity()
    credentials = await demo_credentials(server, "erin")
    jid = credentials["jid"]
    # A GLib key file: a backslash in a value is written doubled.
    accounts = f"""\
        [erin]
        enabled=true
        jid={jid.replace(chr(92), chr(92) * 2)}
        server=127.0.0.1
        port={server.c2s_port}
        resource=profanity
        password={credentials["password"]}
        tls.policy=trust
        """
    earlier: list[object] = []  # the first run's session: killed, it waits (XEP-0198) to be resumed
    for run in range(2):
        with profanity(tmp_path, "erin", accounts, run=str(run)):
            await until(lambda: [s for s in server.sessions.resources(jid) if s not in earlier] != [])
            [session] = server.sessions.resources(jid)  # the new login replaced the detached one
            assert session.full == f"{jid}/profanity"
            earlier.append(session)
