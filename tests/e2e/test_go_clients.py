"""Go's crypto/tls as a client: go-sendxmpp logs in and sends a chat message over STARTTLS and
over direct TLS (XEP-0368), and a slixmpp user receives it.

Go offers ALPN on every handshake (``xmpp-client``); a server that aborted the handshake over
ALPN locked out every Go client (issue 13: ``remote error: tls: internal error``).

go-sendxmpp is the Debian package of that name. Without it these tests skip, unless
SNS_XMPP_REQUIRE_CLIENTS is set (the CI sets it and installs the package): then they fail.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import pytest_twisted

from tests.clients import require_client
from tests.xmppclient import Client, wait


def _need_go_sendxmpp() -> str:
    return require_client("go-sendxmpp")


async def go_sendxmpp(home: Path, port: int, *arguments: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """Run go-sendxmpp against *host*:*port* (certificate not verified: it is self-signed);
    return its exit status and what it printed."""
    command = _need_go_sendxmpp()
    process = await asyncio.create_subprocess_exec(
        command, "--no-tls-verify", "--jserver", f"{host}:{port}", "--timeout", "10", *arguments,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])
@pytest_twisted.ensureDeferred
async def test_go_sendxmpp_logs_in_and_its_message_arrives(server, tmp_path: Path, direct_tls: bool) -> None:
    """go-sendxmpp (Go crypto/tls, ALPN xmpp-client) completes the handshake, authenticates as
    alice, and bob, logged in with slixmpp, receives her chat message from alice's JID."""
    _need_go_sendxmpp()
    await server.add_user("alice@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    bob = Client("bob@localhost", "secret")
    await wait(bob.log_in(server.c2s_port))

    message = tmp_path / "message.txt"
    text = f"hello bob over {'direct TLS' if direct_tls else 'STARTTLS'}"
    message.write_text(text + "\n")
    port = server.direct_tls_port if direct_tls else server.c2s_port
    arguments = ["--username", "alice@localhost", "--password", "secret", "--message", str(message)]
    if direct_tls:
        arguments.append("--tls")
    status, output = await wait(go_sendxmpp(tmp_path, port, *arguments, "bob@localhost"), 30)
    assert status == 0, output

    received = await wait(bob.next_message())
    assert (received["body"], received["from"].bare) == (text, "alice@localhost")
    await wait(bob.log_out())


@pytest_twisted.ensureDeferred
async def test_the_listening_ports_select_alpn_xmpp_client(server) -> None:
    """On the running server's direct TLS port, a client offering ALPN xmpp-client (XEP-0368)
    gets it; one offering only another protocol still completes its handshake, without ALPN."""
    import ssl

    async def selected(offered: list[str]) -> str | None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(offered)
        _, writer = await asyncio.open_connection("127.0.0.1", server.direct_tls_port, ssl=context,
                                                  server_hostname="localhost")
        protocol: str | None = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()
        return protocol

    assert await wait(selected(["xmpp-client"])) == "xmpp-client"
    assert await wait(selected(["h2", "xmpp-client"])) == "xmpp-client"
    assert await wait(selected(["http/1.1"])) is None
