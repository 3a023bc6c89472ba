"""XMPP clients from other stacks than slixmpp, installed from Debian, for the end-to-end tests.

A test that needs one skips when it is absent, unless SNS_XMPP_REQUIRE_CLIENTS is set (the CI
sets it and installs the packages in .ci/run): then a missing client fails the test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

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
