"""sns-xmpp as the auth server of an existing ejabberd or Prosody, for
tests/e2e/test_existing_ejabberd.py and tests/e2e/test_existing_prosody.py.

The peers of tests/peers.py run as their own users (ejabberd's erl as ``ejabberd``), so the
sns-xmpp processes that share the data folder with them run as that user too, as in a
deployment: the HTTP side (twistd with ``[xmpp.c2s] port = -1``), ``sns-xmpp-extauth`` (started
by ejabberd) and the admin command. They run this checkout's code on this test's Python
packages: the virtual environment's interpreter when that user may run it, else Debian's
``python3`` of the same version with the environment's packages added (a venv made from a
pyenv Python under /root, which other users cannot enter).
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.peers import _missing, free_port

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 60.0


def site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def python_for(user: str) -> str:
    """An interpreter *user* may run that imports this checkout with the test's packages."""
    for candidate in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        done = subprocess.run(["runuser", "-u", user, "--", candidate, "-c", "pass"], capture_output=True)
        if done.returncode == 0:
            return candidate
    _missing(f"no Python {sys.version_info.major}.{sys.version_info.minor} the {user} user may run")
    raise AssertionError  # not reached


def command(python: str, code: str, *arguments: str) -> list[str]:
    """*python* running *code* with the environment's packages and this checkout importable."""
    prelude = f"import site, sys; site.addsitedir({site_packages()!r}); sys.path.insert(0, {str(ROOT)!r}); "
    # -S: not the system's dist-packages (Debian's older cryptography) before the environment's.
    return [python, "-I", "-S", "-c", prelude + code, *arguments]


class SnsForPeer:
    """The sns-xmpp side of an existing server: a config file for *domain* in a folder that *user*
    owns, the admin command and the HTTP side as that user, the extauth program's command line."""

    def __init__(self, domain: str, user: str, http_extra: str = "", extra: str = "") -> None:
        self.domain = domain
        self.user = user
        self.python = python_for(user)
        self.folder = Path(tempfile.mkdtemp(prefix="sns-xmpp-authserver-"))
        self.folder.chmod(0o755)
        self.http_port = free_port("127.0.0.1")
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.config = self.folder / "sns-xmpp.toml"
        self.config.write_text(textwrap.dedent(f"""\
            # sns-xmpp as the auth server of {domain}: tests/existing_servers.py
            [server]
            domains = ["{domain}"]
            data_dir = "{self.folder / 'data'}"

            [xmpp.c2s]
            port = -1
            direct_tls_port = -1

            [xmpp.s2s]
            port = -1

            [xmpp.components]
            port = -1

            [http]
            interface = "127.0.0.1"
            port = {self.http_port}
            public_url = "{self.http_url}"
            {http_extra}

            [sites.demo]
            plugin = "demo"
            """) + textwrap.dedent(extra))
        account = pwd.getpwnam(user)
        for path in (self.folder, self.config):
            os.chown(path, account.pw_uid, account.pw_gid)
        self.extauth_log = self.folder / "extauth.log"
        launcher = self.folder / "sns-xmpp-extauth"
        program = shlex.join(command(self.python, "from sns_xmpp.authserver.main import main; main()",
                                     "--config", str(self.config)))
        launcher.write_text(f"#!/bin/sh\n# ejabberd's extauth_program\nexec {program} 2>>{self.extauth_log}\n")
        launcher.chmod(0o755)
        self.extauth_program = str(launcher)
        self.daemon: subprocess.Popen[bytes] | None = None

    def as_user(self, arguments: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", self.user, "--", *arguments], capture_output=True, text=True,
                              timeout=120, cwd=self.folder, **kwargs)

    def admin(self, *arguments: str, stdin: str = "") -> str:
        done = self.as_user(command(self.python, "from sns_xmpp.ops.admin import main; main()",
                                    "--config", str(self.config), *arguments), input=stdin)
        assert done.returncode == 0, f"sns-xmpp-admin {arguments}: {done.stdout}{done.stderr}"
        return done.stdout

    def mint(self, account: str, lifetime: int = 600) -> dict[str, str]:
        """Demo-site credentials as the login callback hands them over (jid, password, ...)."""
        minted: dict[str, str] = json.loads(self.admin("mint", "demo", account, f"--lifetime={lifetime}", "--json"))
        return minted

    def add_user(self, localpart: str, password: str) -> str:
        jid = f"{localpart}@{self.domain}"
        self.admin("user", "add", jid, stdin=password + "\n")
        return jid

    def start_http_side(self) -> None:
        """twistd sns-xmpp as *user*, with only the HTTP side (the login pages) listening."""
        log = open(self.folder / "daemon.log", "wb")  # noqa: SIM115 - kept for the process
        self.daemon = subprocess.Popen(
            ["runuser", "-u", self.user, "--",
             *command(self.python, "sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
                      "--nodaemon", "--pidfile=", "sns-xmpp", f"--config={self.config}")],
            cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise AssertionError(f"sns-xmpp exited with {self.daemon.returncode}:\n{self.log('daemon.log')}")
            try:
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)  # polling a process's start-up, not synchronising a test
        raise AssertionError(f"sns-xmpp did not listen on {self.http_url}:\n{self.log('daemon.log')}")

    def log(self, name: str) -> str:
        path = self.folder / name
        return path.read_text(errors="replace") if path.exists() else ""

    def extauth_pids(self) -> list[int]:
        """The running sns-xmpp-extauth processes of this config (ejabberd's pool)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                arguments = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            mine = str(self.config).encode() in arguments
            if mine and any(b"sns_xmpp.authserver.main" in part for part in arguments):
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            os.killpg(self.daemon.pid, signal.SIGTERM)
            try:
                self.daemon.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait(5)
        if os.environ.get("SNS_XMPP_KEEP_PEER_FOLDERS"):
            print(f"sns-xmpp's folder kept: {self.folder}")
            return
        subprocess.run(["rm", "-rf", str(self.folder)], check=False)


async def login_pages_then_slixmpp_and_go_sendxmpp(sns: SnsForPeer, peer: Any, home: Path) -> None:
    """The must-show shared by both servers: the login pages hand out credentials for *peer*'s
    domain (the linked JID carol\\40demo@<domain> and the sns1: password); *peer* binds slixmpp as
    exactly that JID, and go-sendxmpp's message from it reaches a local user."""
    from tests.e2e.test_go_clients import go_sendxmpp
    from tests.e2e.test_social_login import demo_credentials
    from tests.peers import PeerClient
    from tests.xmppclient import wait

    credentials = await demo_credentials(SimpleNamespace(http_url=sns.http_url), "carol")
    assert credentials["jid"] == f"carol\\40demo@{peer.domain}"
    assert credentials["password"].startswith("sns1:demo:")
    carol = PeerClient(credentials["jid"], credentials["password"], peer.address)
    await wait(carol.log_in(peer.c2s_port))
    assert carol.boundjid.bare == credentials["jid"]
    bob = PeerClient(sns.add_user("bob", "bob-secret"), "bob-secret", peer.address)
    await wait(bob.log_in(peer.c2s_port))
    text = f"hello bob, from go-sendxmpp through {peer.kind}"
    message = home / "message.txt"
    message.write_text(text + "\n")
    status, output = await wait(go_sendxmpp(
        home, peer.c2s_port, "--username", credentials["jid"], "--password", credentials["password"],
        "--message", str(message), bob.boundjid.bare, host=peer.address), 40)
    assert status == 0, output
    received = await wait(bob.next_message())
    assert (received["body"], received["from"].bare) == (text, credentials["jid"])
    for each in (carol, bob):
        await wait(each.log_out())


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of the process *pid*, all its threads, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


__all__ = ["SnsForPeer", "cpu_seconds", "login_pages_then_slixmpp_and_go_sendxmpp", "python_for"]
