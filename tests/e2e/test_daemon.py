"""The daemon as operators run it: `scripts/run`, `sns-xmpp-admin`, SIGTERM and a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest_twisted

from tests.conftest import free_port
from tests.xmppclient import Client, wait

ROOT = Path(__file__).resolve().parents[2]


class Daemon:
    """`scripts/run --config=...` as a child process, with its output read until it is listening."""

    def __init__(self, config: Path, cwd: Path) -> None:
        self.config = config
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | None = None
        self.output: list[str] = []

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            str(ROOT / "scripts" / "run"), f"--config={self.config}", cwd=self.cwd,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert self.process.stdout is not None
        while True:
            line = (await self.process.stdout.readline()).decode()
            assert line, "the daemon exited before listening:\n" + "".join(self.output)
            self.output.append(line)
            if "listener.up name=c2s-direct-tls" in line:
                return

    def kill(self) -> None:
        """Never leave a daemon behind a failed test."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    async def stop(self) -> None:
        """SIGTERM, and a clean shutdown; twistd re-raises the signal, so that is its exit status."""
        assert self.process is not None and self.process.stdout is not None
        self.process.send_signal(signal.SIGTERM)
        rest = await self.process.stdout.read()
        self.output.append(rest.decode())
        assert await self.process.wait() == -signal.SIGTERM
        assert self.output[-1].rstrip().endswith("Server Shut Down."), self.output[-1]


def admin(config: Path, cwd: Path, *args: str, password: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("sns-xmpp-admin")), f"--config={config}", *args],
                          input=password + "\n", cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest_twisted.ensureDeferred
async def test_run_script_admin_command_and_restart_keep_offline_messages(tmp_path: Path) -> None:
    port, direct, http = free_port(), free_port(), free_port()
    config = tmp_path / "sns-xmpp.toml"
    config.write_text((ROOT / "conf" / "sns-xmpp.toml").read_text()
                      .replace("port = 5222", f"port = {port}")
                      .replace("direct_tls_port = 5223", f"direct_tls_port = {direct}")
                      .replace("port = 5280", f"port = {http}"))
    for user in ("alice", "bob"):
        created = admin(config, tmp_path, "user", "add", f"{user}@localhost", password="pw-" + user)
        assert (created.returncode, created.stdout) == (0, f"created {user}@localhost\n"), created.stderr
    again = admin(config, tmp_path, "user", "add", "alice@localhost", password="x")
    assert (again.returncode, again.stderr) == (1, "sns-xmpp-admin: alice@localhost exists already\n")
    assert admin(config, tmp_path, "user", "list").stdout.split() == ["alice@localhost", "bob@localhost"]

    daemon = Daemon(config, tmp_path)
    try:
        await run_and_restart(daemon, tmp_path, port, direct)
    finally:
        daemon.kill()


async def run_and_restart(daemon: Daemon, tmp_path: Path, port: int, direct: int) -> None:
    await wait(daemon.start(), timeout=120)
    assert (tmp_path / "data" / "tls" / "self-signed.crt").exists(), "first start makes the certificate"
    alice = Client("alice@localhost", "pw-alice")
    await wait(alice.log_in(port))
    alice.send_message(mto="bob@localhost", mbody="see you after the restart", mtype="chat")
    await wait(alice.plugin["xep_0199"].ping(jid="localhost"))  # the server has handled the message
    await wait(daemon.stop(), timeout=60)
    output = "".join(daemon.output)
    assert "pw-alice" not in output and "see you after" not in output, "no secrets or bodies in the log"

    await wait(daemon.start(), timeout=120)
    bob = Client("bob@localhost", "pw-bob")
    await wait(bob.log_in(direct, direct_tls=True))
    message = await wait(bob.next_message())
    assert (message["body"], message["from"].bare) == ("see you after the restart", "alice@localhost")
    await wait(bob.log_out())
    await wait(daemon.stop(), timeout=60)


def test_run_script_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\ndomains = 'localhost'\n")
    done = subprocess.run([str(ROOT / "scripts" / "run"), f"--config={bad}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "sns-xmpp: config error at 'server.domains': must be a non-empty list of domain names")
    assert "Traceback" not in done.stderr and "Usage" not in done.stderr
