"""The daemon as operators run it: `scripts/run`, `sns-xmpp-admin`, SIGTERM and a restart."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest_twisted

from tests.conftest import free_port
from tests.xmppclient import Client, wait

ROOT = Path(__file__).resolve().parents[2]


class Daemon:
    """`scripts/run --config=...` as a child process; its output is read as it comes."""

    def __init__(self, config: Path, cwd: Path) -> None:
        self.config = config
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | None = None
        self.output: list[str] = []
        self._new_line = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            str(ROOT / "scripts" / "run"), f"--config={self.config}", cwd=self.cwd,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._reader = asyncio.ensure_future(self._read())
        await self.wait_for("listener.up name=c2s-direct-tls")

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.output.append(line.decode())
            self._new_line.set()
        self._new_line.set()

    async def wait_for(self, text: str, after: int = 0) -> int:
        """Wait until a line after line *after* contains *text*; return the line count then."""
        while True:
            if any(text in line for line in self.output[after:]):
                return len(self.output)
            assert self._reader is not None and not self._reader.done(), (
                f"the daemon ended before logging {text!r}:\n" + "".join(self.output))
            self._new_line.clear()
            await self._new_line.wait()

    async def crash(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        assert self.process is not None and self._reader is not None
        self.process.kill()
        await self._reader
        assert await self.process.wait() == -signal.SIGKILL

    def kill(self) -> None:
        """Never leave a daemon behind a failed test."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    async def stop(self) -> None:
        """SIGTERM, and a clean shutdown; twistd re-raises the signal, so that is its exit status."""
        assert self.process is not None and self._reader is not None
        self.process.send_signal(signal.SIGTERM)
        await self._reader
        assert await self.process.wait() == -signal.SIGTERM
        assert self.output[-1].rstrip().endswith("Server Shut Down."), self.output[-1]


def shipped_config_on_free_ports() -> tuple[str, int, int]:
    """The shipped configuration with free loopback ports: (text, c2s port, direct TLS port)."""
    port, direct, http, s2s = free_port(), free_port(), free_port(), free_port()
    text = (ROOT / "conf" / "sns-xmpp.toml").read_text()
    # Whole lines: replacing the text "port = 5280" also hit a direct_tls_port that a free port
    # had made 5280x, and the daemon then refused a port of six digits (a CI flake). The s2s
    # port too: a Prosody or ejabberd on the machine holds 5269.
    for line, value in (("port = 5222", port), ("direct_tls_port = 5223", direct), ("port = 5280", http),
                        ("port = 5269", s2s)):
        key = line.split(" = ")[0]
        text, replaced = re.subn(rf"(?m)^{re.escape(line)}$", f"{key} = {value}", text)
        assert replaced == 1, line
    return text, port, direct


def admin(config: Path, cwd: Path, *args: str, password: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("sns-xmpp-admin")), f"--config={config}", *args],
                          input=password + "\n", cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest_twisted.ensureDeferred
async def test_run_script_admin_command_and_restart_keep_offline_messages(tmp_path: Path) -> None:
    text, port, direct = shipped_config_on_free_ports()
    config = tmp_path / "sns-xmpp.toml"
    config.write_text(text)
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
    assert (await wait(alice.stream_errors.get()))["condition"] == "system-shutdown"
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


SITE = """
[sites.sns-example]
plugin = "hmac"
login_url = "https://sns-example.com/login?return_to={callback}&state={state}"
keys = { KEYS }
"""


@pytest_twisted.ensureDeferred
async def test_sighup_rotates_keys_without_dropping_sessions(tmp_path: Path) -> None:
    """SIGHUP: the connected client stays, the new key logs in, the removed key is refused; a broken file is refused."""
    from sns_xmpp.sites.hmac import sign

    base, port, _ = shipped_config_on_free_ports()
    config = tmp_path / "sns-xmpp.toml"
    config.write_text(base + SITE.replace("KEYS", 'old = "old-secret-0123456789"'))
    daemon = Daemon(config, tmp_path)
    try:
        await wait(daemon.start(), timeout=120)
        from twisted.internet import reactor

        def token(user: str, kid: str, key: bytes) -> tuple[str, str]:
            identifier = f"{user}.s1.{int(reactor.seconds()) + 600}.{kid}"
            return f"{identifier}@sns-example", sign("sns-example", key, identifier)

        old_name, old_token = token("stays", "old", b"old-secret-0123456789")
        stays = Client("x@localhost", old_token, mechanism="PLAIN", username=old_name)
        await wait(stays.log_in(port))

        config.write_text(base + SITE.replace("KEYS", 'new = "new-secret-0123456789"'))
        seen = len(daemon.output)
        daemon.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        seen = await wait(daemon.wait_for("sites.reloaded", after=seen))

        await wait(stays.plugin["xep_0199"].ping(jid="localhost"))  # still connected
        new_name, new_token = token("fresh", "new", b"new-secret-0123456789")
        fresh = Client("x@localhost", new_token, mechanism="PLAIN", username=new_name)
        await wait(fresh.log_in(port))
        old_name, old_token = token("late", "old", b"old-secret-0123456789")
        late = Client("x@localhost", old_token, mechanism="PLAIN", username=old_name)
        late.connect(host="127.0.0.1", port=port)
        assert str((await wait(late.auth_failures.get()))["text"]).startswith("unknown-key")
        late.abort()

        config.write_text(base + SITE.replace("KEYS", 'new = "short"'))
        daemon.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        await wait(daemon.wait_for("sites.reload_refused", after=seen))
        again = Client("x@localhost", new_token, mechanism="PLAIN", username=new_name)
        await wait(again.log_in(port))  # the old sites still stand
        for client in (stays, fresh, again):
            await wait(client.log_out())
        await wait(daemon.stop(), timeout=60)
    finally:
        daemon.kill()


@pytest_twisted.ensureDeferred
async def test_every_acknowledged_message_survives_sigkill_once(tmp_path: Path) -> None:
    """XEP-0198 acks for messages to an offline user come after the disk: a SIGKILL loses none of them."""
    from tests.rawxmpp import RawStream

    text, port, _ = shipped_config_on_free_ports()
    config = tmp_path / "sns-xmpp.toml"
    config.write_text(text)
    for user in ("alice", "bob"):
        assert admin(config, tmp_path, "user", "add", f"{user}@localhost", password="pw-" + user).returncode == 0
    daemon = Daemon(config, tmp_path)
    try:
        await wait(daemon.start(), timeout=120)

        async def send_then_crash() -> int:
            bob = await RawStream.open_tls(port)
            await bob.log_in_plain("bob", "pw-bob")
            assert "<enabled" in await bob.send_and_read("<enable xmlns='urn:xmpp:sm:3'/>", b"/>")
            acked, sent = 0, 0
            for _ in range(8):
                for _ in range(25):
                    bob.writer.write(f"<message to='alice@localhost' type='chat'><body>m{sent}</body></message>"
                                     .encode())
                    sent += 1
                answer = await bob.send_and_read("<r xmlns='urn:xmpp:sm:3'/>", b"/>")
                acked = int(answer.split("h='")[1].split("'")[0])
            for _ in range(50):  # in flight when the server dies
                bob.writer.write(f"<message to='alice@localhost' type='chat'><body>m{sent}</body></message>".encode())
                sent += 1
            await bob.writer.drain()
            await daemon.crash()
            bob.close()
            return acked

        acked = await wait(send_then_crash(), timeout=60)
        assert acked == 200, "every message of a round is acknowledged once stored"

        await wait(daemon.start(), timeout=120)
        alice = Client("alice@localhost", "pw-alice")
        await wait(alice.log_in(port))
        sentinel = Client("bob@localhost", "pw-bob")
        await wait(sentinel.log_in(port))
        sentinel.send_message(mto="alice@localhost", mbody="sentinel", mtype="chat")
        bodies: list[str] = []
        while (body := str((await wait(alice.next_message()))["body"])) != "sentinel":
            bodies.append(body)
        assert len(bodies) == len(set(bodies)), "nothing is delivered twice"
        assert {f"m{n}" for n in range(acked)} <= set(bodies), "every acknowledged message is delivered"
        assert [int(b[1:]) for b in bodies] == sorted(int(b[1:]) for b in bodies), "in the order sent"
        for client in (alice, sentinel):
            await wait(client.log_out())
        await wait(daemon.stop(), timeout=60)
    finally:
        daemon.kill()


def test_a_port_in_use_stops_the_daemon_with_a_failure_status(tmp_path: Path) -> None:
    """A daemon that cannot listen must not sit there looking healthy to its supervisor."""
    import socket

    text, port, _ = shipped_config_on_free_ports()
    config = tmp_path / "sns-xmpp.toml"
    config.write_text(text)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run([str(ROOT / "scripts" / "run"), f"--config={config}"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "listener.failed name=c2s" in done.stdout
