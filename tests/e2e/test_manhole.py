"""The operators' console over SSH, driven by Debian's OpenSSH client."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from tests.conftest import free_port, make_config
from tests.xmppclient import Client, wait

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs an OpenSSH client (openssh-client)")


def key_pair(directory: Path, name: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)], check=True)
    return directory / name


def ssh_command(key: Path, port: int) -> list[str]:
    return ["ssh", "-tt", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR", "admin@127.0.0.1"]


class Console:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.seen = b""

    async def until(self, text: bytes) -> None:
        assert self.process.stdout is not None
        while text not in self.seen:
            chunk = await self.process.stdout.read(4096)
            assert chunk, f"the console closed before showing {text!r}: {self.seen[-500:]!r}"
            self.seen += chunk

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\r")


@pytest_twisted.ensureDeferred
async def test_console_lists_sessions_kicks_one_and_refuses_a_stranger(start_server, tmp_path: Path) -> None:
    operator = key_pair(tmp_path, "operator")
    stranger = key_pair(tmp_path, "stranger")
    (tmp_path / "authorized_keys").write_bytes(operator.with_suffix(".pub").read_bytes())
    port = free_port()
    server = await start_server(make_config(tmp_path, f"""
[manhole]
enabled = true
port = {port}
authorized_keys = "{tmp_path / 'authorized_keys'}"
"""))
    await server.add_user("alice@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    alice, bob = Client("alice@localhost/desk", "secret"), Client("bob@localhost/phone", "secret")
    await wait(alice.log_in(server.c2s_port))
    await wait(bob.log_in(server.c2s_port))

    process = await wait(asyncio.create_subprocess_exec(
        *ssh_command(operator, port), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT))
    console = Console(process)
    try:
        await wait(console.until(b">>> "))
        console.type("sorted(s['jid'] for s in sessions())")
        await wait(console.until(b"['alice@localhost/desk', 'bob@localhost/phone']"))
        console.type("kick('alice@localhost', 'maintenance')")
        await wait(console.until(b"\r\n1\r\n"))
        error = await wait(alice.stream_errors.get())
        assert (error["condition"], error["text"]) == ("policy-violation", "maintenance")
        await wait(bob.plugin["xep_0199"].ping(jid="localhost"))  # the other session is untouched
        assert [s.full for s in server.sessions.all_sessions()] == ["bob@localhost/phone"]
    finally:
        process.kill()
        await wait(process.wait())
    await wait(bob.log_out())

    refused = await wait(asyncio.create_subprocess_exec(
        *ssh_command(stranger, port), "true", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT))
    output, _ = await wait(refused.communicate())
    assert refused.returncode == 255 and b"Permission denied" in output
    assert (tmp_path / "data" / "manhole_host_key").stat().st_mode & 0o777 == 0o600
