"""XMPP clients from other stacks than slixmpp, installed from Debian, for the end-to-end tests.

A test that needs one skips when it is absent, unless SNS_XMPP_REQUIRE_CLIENTS is set (the CI
sets it and installs the packages in .ci/run): then a missing client fails the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest


def require_client(command: str, package: str | None = None, *, also: tuple[str, ...] = ()) -> str:
    """The path of *command* (Debian package *package*, by default the same name), or skip or fail;
    *also* names commands the test needs beside it (tmux for a terminal client)."""
    path = shutil.which(command)
    if path is None:
        if os.environ.get("SNS_XMPP_REQUIRE_CLIENTS"):
            pytest.fail(f"SNS_XMPP_REQUIRE_CLIENTS is set, but {command} is not installed")
        pytest.skip(f"needs {command} (Debian package {package or command})")
    for other in also:
        if shutil.which(other) is None:
            pytest.fail(f"{command} is installed but {other}, which the test needs beside it, is not")
    return path


JS_CLIENTS = Path(__file__).with_name("js")


def npm_installed(folder: Path) -> Path:
    """*folder* with its npm packages installed as its package-lock.json pins them: npm ci once per
    change of the lock file (the stamp is the one scripts/run leaves in webchat/, so either
    install serves the other); skip or fail without Node.js."""
    require_client("node", "nodejs")
    npm = require_client("npm")
    lock = folder / "package-lock.json"
    stamp = folder / "node_modules" / f".installed-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}"
    if not stamp.exists():
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=folder,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm ci in {folder.name}/ failed:\n{done.stdout}\n{done.stderr}"
        stamp.touch()
    return folder


def js_clients() -> Path:
    """tests/js, for the Node.js clients (xmpp.js)."""
    return npm_installed(JS_CLIENTS)


class XmppJs:
    """tests/js/session.mjs: an xmpp.js client the test drives, a JSON line per command and per
    event (what crossed the wire is in *trace*, for the failures)."""

    def __init__(self, process: asyncio.subprocess.Process, trace: Path) -> None:
        self.process = process
        self.trace = trace
        self.messages: list[dict[str, Any]] = []  # every message received, in order
        self.tokens: list[dict[str, Any]] = []  # every FAST token received (mechanism, expiry), in order

    @classmethod
    async def start(cls, folder: Path, service: str, username: str, trace: Path, *, fast: bool = False) -> XmppJs:
        """*fast*: the client asks for a FAST token and logs in with it once it has one (its
        `token` event when it gets one); otherwise it keeps none and uses its password."""
        with trace.open("wb") as errors:  # the child keeps its own descriptor
            process = await asyncio.create_subprocess_exec(
                "node", str(folder / "session.mjs"), service, "localhost", username, "secret",
                *(["fast"] if fast else []),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=errors)
        return cls(process, trace)

    def command(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")

    async def expect(self, *kinds: str, timeout: float = 30) -> Any:
        """The next event of one of *kinds*: its value, or (kind, value) for several kinds; messages
        and tokens on the way are kept in `messages` and `tokens`, and an error or the client's
        exit fails the test."""
        assert self.process.stdout is not None
        while True:
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
            except TimeoutError:
                raise AssertionError(f"xmpp.js: no {kinds} within {timeout} s; see {self.trace}") from None
            if not line:
                raise AssertionError(f"xmpp.js exited waiting for {kinds}:\n{self.trace.read_text()[-4000:]}")
            event = json.loads(line)
            if "message" in event:
                self.messages.append(event["message"])
            if "token" in event:
                self.tokens.append(event["token"])
            if "error" in event:
                raise AssertionError(f"xmpp.js: {event['error']}:\n{self.trace.read_text()[-4000:]}")
            for kind in kinds:
                if kind in event:
                    return event[kind] if len(kinds) == 1 else (kind, event[kind])

    async def message(self) -> tuple[str, str]:
        """The next message's sender and body."""
        before = len(self.messages)
        while len(self.messages) == before:
            await self.expect("message")
        return self.messages[before]["from"], self.messages[before]["body"]

    async def chat_both_ways(self, full: str, partner: Any, outgoing: str, incoming: str) -> None:
        """This client, bound as *full*, sends *outgoing* to *partner*'s bare JID (a slixmpp
        `tests.xmppclient.Client`), who hears it from *full*; *partner* answers *incoming*, which
        arrives here from *partner*."""
        self.command(send={"to": partner.boundjid.bare, "body": outgoing})
        heard = await partner.next_message()
        assert (heard["body"], str(heard["from"])) == (outgoing, full)
        partner.send_message(mto=full, mbody=incoming, mtype="chat")
        assert await asyncio.wait_for(self.message(), 40) == (str(partner.boundjid), incoming)

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


class Terminal:
    """A full-screen program in a tmux server of its own (its socket *socket*), typed at and read
    as a person would: `tmux send-keys` and `tmux capture-pane`."""

    def __init__(self, socket: str | os.PathLike[str]) -> None:
        self.socket = os.fspath(socket)

    def _tmux(self, *arguments: str) -> str:
        done = subprocess.run(["tmux", "-S", self.socket, *arguments], capture_output=True, text=True)
        assert done.returncode == 0, f"tmux {' '.join(arguments)}: {done.stderr}"
        return done.stdout

    def type(self, line: str) -> None:
        """Type *line* as it is (no key names), then Enter."""
        self._tmux("send-keys", "-l", line)
        self._tmux("send-keys", "Enter")

    def screen(self) -> str:
        """What the terminal shows now, wrapped lines joined."""
        return self._tmux("capture-pane", "-p", "-J")
