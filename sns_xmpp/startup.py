"""The one start-up call that changes the process: what importing sns_xmpp must not do.

Two departures from stock libraries are process-wide:

- `compat.install`: the names wokkel 18.0.0 still imports from Twisted (``_PY3`` and
  ``twisted.python.constants``), which current Twisted removed;
- `xmpp.serialization.install`: `EscapingSerializer` as domish's serialiser, because Twisted's
  writes namespace URIs unescaped (docs/security.md, bug #1).

`install` makes both; `service.build_server` calls it, and so do the test set-up
(``tests/conftest.py``) and the in-process benchmarks. Importing any module of the package changes
neither (``tests/unit/test_startup.py`` checks that in a fresh interpreter), and the c2s stream
factory refuses to start without the serialiser.
"""

from __future__ import annotations

from sns_xmpp import compat
from sns_xmpp.xmpp import serialization


def install() -> None:
    """Install the wokkel compatibility names and the escaping serialiser; idempotent."""
    compat.install()
    serialization.install()
