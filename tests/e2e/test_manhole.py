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


def script_command(key: Path, port: int) -> list[str]:
    """ssh without a terminal (-T): a command, or piped input, as an operator's script runs it."""
    return ["ssh", "-T", *ssh_command(key, port)[2:]]


async def run_ssh(command: list[str], stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, out, err


@pytest_twisted.ensureDeferred
async def test_the_console_runs_commands_and_piped_scripts_with_an_exit_status(start_server, tmp_path: Path) -> None:
    """`ssh admin@host 'stats()'` prints the value and exits 0; an exception exits 1 with its last
    line on stderr; a Deferred's value is printed once it fires; piped lines run in order until
    EOF. None of it leaves a traceback in the server's log."""
    from twisted.logger import globalLogPublisher

    operator = key_pair(tmp_path, "operator")
    (tmp_path / "authorized_keys").write_bytes(operator.with_suffix(".pub").read_bytes())
    port = free_port()
    server = await start_server(make_config(tmp_path, f"""
[manhole]
enabled = true
port = {port}
authorized_keys = "{tmp_path / 'authorized_keys'}"
"""))
    await server.add_user("alice@localhost", "secret")
    failures: list[dict] = []

    def observe(event: dict) -> None:
        if "log_failure" in event or event.get("isError"):
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        status, out, err = await wait(run_ssh([*script_command(operator, port), "stats()['sessions']"]))
        assert (status, out, err) == (0, b"0\n", b"")
        status, out, err = await wait(run_ssh([*script_command(operator, port), "kick('not a jid')"]))
        assert (status, out, err) == (1, b"", b"ValueError: not a JID: 'not a jid'\n")
        status, out, err = await wait(run_ssh([*script_command(operator, port), "user('alice@localhost')"]))
        assert (status, err) == (0, b"") and out.startswith(b"{'jid': 'alice@localhost', 'exists': True, ")

        script = (b"total = 40\n"
                  b"for n in range(2):\n"
                  b"    total += 1\n"
                  b"\n"
                  b"total\n"
                  b"print('sessions', stats()['sessions'])\n"
                  b"links('demo')\n"
                  b"1 / 0\n"
                  b"'after the error'")  # the last line without a newline runs too
        status, out, err = await wait(run_ssh(script_command(operator, port), stdin=script))
        assert out == b"42\nsessions 0\n[]\n'after the error'\n"
        assert (status, err) == (1, b"ZeroDivisionError: division by zero\n")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert failures == []


POLLER = """
import sys, time, urllib.request
url, until = sys.argv[1], time.monotonic() + float(sys.argv[2])
waits = []
while time.monotonic() < until:
    sent = time.monotonic()
    urllib.request.urlopen(url).read()
    waits.append(time.monotonic() - sent)
print(len(waits), max(waits))
"""


@pytest_twisted.ensureDeferred
async def test_console_passwords_are_checked_off_the_reactor(start_server, tmp_path: Path) -> None:
    """OpenSSH tries three wrong console passwords (a hash of about a second each) while another
    process polls /health: no poll waits half as long as one hash takes, all three are refused,
    and the right password then runs a command."""
    import os
    import sys
    import time

    from sns_xmpp.ops.manhole import hash_password

    started = time.monotonic()
    hashed = hash_password("console-pass-0123", iterations=3_000_000)
    one_hash = time.monotonic() - started
    port = free_port()
    server = await start_server(make_config(tmp_path, f"""
[manhole]
enabled = true
port = {port}
password_hash = "{hashed}"
"""))

    def with_password(password: str, *command: str) -> tuple[list[str], dict[str, str]]:
        askpass = tmp_path / f"askpass-{len(password)}"
        askpass.write_text(f"#!/bin/sh\necho '{password}'\n")
        askpass.chmod(0o700)
        environment = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force",
                       "DISPLAY": "none"}
        return ["ssh", "-T", "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
                "-o", "NumberOfPasswordPrompts=3", "-o", "LogLevel=ERROR", "admin@127.0.0.1", *command], environment

    poller = await wait(asyncio.create_subprocess_exec(
        sys.executable, "-c", POLLER, f"{server.http_url}/health", str(3 * one_hash),
        stdout=asyncio.subprocess.PIPE))
    command, environment = with_password("wrong-password", "stats()")
    guessing = await wait(asyncio.create_subprocess_exec(
        *command, env=environment, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE))
    _, refused = await wait(guessing.communicate())
    polled, _ = await wait(poller.communicate())
    assert guessing.returncode == 255 and b"Permission denied" in refused
    count, longest = polled.split()
    assert int(count) >= 10 and float(longest) < one_hash / 2, (
        f"/health waited up to {float(longest) * 1000:.0f} ms (one hash: {one_hash * 1000:.0f} ms)")

    command, environment = with_password("console-pass-0123", "stats()['sessions']")
    accepted = await wait(asyncio.create_subprocess_exec(
        *command, env=environment, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE))
    out, err = await wait(accepted.communicate())
    assert (accepted.returncode, out, err) == (0, b"0\n", b"")
