"""Importing sns_xmpp changes nothing in the process; `startup.install` is the one call that does."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from sns_xmpp.xmpp.c2s import ClientStreamFactory, StreamLimits

FRESH_INTERPRETER = textwrap.dedent("""
    import importlib, pkgutil, sys
    from twisted.python import compat
    from twisted.words.xish import domish

    stock_serialiser = domish.SerializerClass
    import sns_xmpp
    names = sorted(info.name for info in pkgutil.walk_packages(sns_xmpp.__path__, "sns_xmpp.")
                   if not info.name.endswith("__main__"))
    for name in names:
        importlib.import_module(name)
    changed = []
    if domish.SerializerClass is not stock_serialiser:
        changed.append("serialiser")
    if hasattr(compat, "_PY3") or "twisted.python.constants" in sys.modules:
        changed.append("wokkel names")
    from sns_xmpp import startup
    startup.install()
    installed = [domish.SerializerClass.__name__, hasattr(compat, "_PY3"), "twisted.python.constants" in sys.modules]
    print(len(names), changed, installed)
""")


def test_importing_every_module_changes_nothing_until_the_start_up_call() -> None:
    """In a fresh interpreter, every module of the package is imported: Twisted's serialiser and
    Twisted's own names are as they were. Then startup.install() puts both in place."""
    done = subprocess.run([sys.executable, "-c", FRESH_INTERPRETER], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split(" ", 1)[0]) > 50  # the modules imported
    assert done.stdout.strip().endswith("[] ['EscapingSerializer', True, True]"), done.stdout


def test_a_client_stream_factory_refuses_to_start_without_the_serialiser(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry point that forgot the start-up call fails at once, rather than serving with Twisted's
    serialiser (which would relay a client's namespace URI unescaped)."""
    from twisted.internet.task import Clock
    from twisted.words.xish import domish

    monkeypatch.setattr(domish, "SerializerClass", domish._ListSerializer)
    with pytest.raises(RuntimeError, match="startup.install"):
        ClientStreamFactory(lambda: None, StreamLimits(65536), Clock())  # type: ignore[arg-type,return-value]
