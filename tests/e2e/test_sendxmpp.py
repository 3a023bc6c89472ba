"""Perl's Net::XMPP as a client: sendxmpp logs in with a social user name and sends a message.

Net::XMPP sends the SASL authzid ``<user name>@<domain>`` whatever the user name holds, so a
social login (``<identifier>@demo``) arrives with the authzid ``<identifier>@demo@localhost``,
which was refused with ``invalid-authzid`` (issue 13).

sendxmpp is the Debian package of that name. Without it these tests skip, unless
SNS_XMPP_REQUIRE_CLIENTS is set (the CI sets it and installs the package): then they fail.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest_twisted

from tests.clients import require_client
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait


def _need_sendxmpp() -> str:
    return require_client("sendxmpp")


async def sendxmpp(home: Path, port: int, username: str, password: str, message: Path,
                   *recipients: str) -> tuple[int, str]:
    """Run sendxmpp over STARTTLS to 127.0.0.1:*port* for the domain localhost (the certificate
    is self-signed, so not verified); return its exit status and what it printed."""
    command = _need_sendxmpp()
    process = await asyncio.create_subprocess_exec(
        command, "--tls", "--no-tls-verify", "--jserver", f"127.0.0.1:{port}", "--component", "localhost",
        "--username", username, "--password", password, "--message", str(message), "--verbose", *recipients,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


@pytest_twisted.ensureDeferred
async def test_sendxmpp_logs_in_with_a_social_user_name(server, tmp_path: Path) -> None:
    """sendxmpp, given the demo site's user name and password, authenticates (its authzid is the
    user name at the domain) and bob receives its message from the JID linked to alice."""
    _need_sendxmpp()
    credentials = await demo_credentials(server, "alice")
    await server.add_user("bob@localhost", "secret")
    bob = Client("bob@localhost", "secret")
    await wait(bob.log_in(server.c2s_port))

    message = tmp_path / "message.txt"
    message.write_text("hello bob from perl\n")
    status, output = await wait(sendxmpp(tmp_path, server.c2s_port, credentials["username"],
                                         credentials["password"], message, "bob@localhost"), 30)
    assert status == 0, output

    received = await wait(bob.next_message())
    assert (received["body"].strip(), received["from"].bare) == ("hello bob from perl", "alice\\40demo@localhost")
    await wait(bob.log_out())
