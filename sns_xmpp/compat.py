"""Let wokkel 18.0.0, the last release, import on current Twisted.

wokkel still imports ``twisted.python.compat._PY3`` and the module
``twisted.python.constants``; Twisted removed both (the constants moved to the
``constantly`` package). Supplying them here, before any wokkel import, is
cheaper and safer than pinning an old Twisted with its old TLS code. `sns_xmpp.startup.install`
calls `install`; importing this module changes nothing.
"""

from __future__ import annotations

import sys

import constantly
from twisted.python import compat


def install() -> None:
    """Provide the names wokkel expects; safe to call more than once."""
    if not hasattr(compat, "_PY3"):
        compat._PY3 = True  # type: ignore[attr-defined]
    sys.modules.setdefault("twisted.python.constants", constantly)
