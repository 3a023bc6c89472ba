"""XMPP clients from other stacks than slixmpp, installed from Debian, for the end-to-end tests.

A test that needs one skips when it is absent, unless SNS_XMPP_REQUIRE_CLIENTS is set (the CI
sets it and installs the packages in .ci/run): then a missing client fails the test.
"""

from __future__ import annotations

import os
import shutil

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
