"""Counting instructions with valgrind's callgrind around the timed part of an in-process benchmark.

The benchmark module runs itself under valgrind (`instructions`) with collection off; around its
timed loop it switches collection on and off (`collect`), which does nothing outside valgrind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence

_UNDER = "SNS_XMPP_UNDER_CALLGRIND"


def collect(state: str) -> None:
    """Switch callgrind's collection "on" or "off" for this process (a no-op outside valgrind)."""
    if not os.environ.get(_UNDER):
        return
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())],  # noqa: S603, S607
                   stdout=subprocess.DEVNULL, check=True, timeout=60)


def instructions(module: str, arguments: Sequence[str]) -> int:
    """The instructions ``python -m module *arguments*`` executes while it collects."""
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run(  # noqa: S603
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={folder}/out",  # noqa: S607
             sys.executable, "-m", module, *arguments],
            env={**os.environ, _UNDER: "1", "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=True)
    collected = re.search(r"Collected : (\d+)", out.stderr)
    if collected is None:
        raise SystemExit(f"callgrind printed no count:\n{out.stderr[-2000:]}")
    return int(collected.group(1))
