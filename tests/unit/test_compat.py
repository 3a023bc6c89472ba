"""wokkel 18.0.0 imports on a Twisted that no longer has what it expects."""

import importlib

import pytest


@pytest.mark.parametrize("module", ["wokkel.component", "wokkel.disco", "wokkel.muc", "wokkel.data_form",
                                    "wokkel.ping", "wokkel.xmppim", "wokkel.server"])
def test_wokkel_modules_import_after_compat(module: str) -> None:
    """Every wokkel module the server may use imports after the start-up call (tests/conftest.py)."""
    assert importlib.import_module(module)


def test_compat_supplies_the_removed_names() -> None:
    """The shims are exactly the two names wokkel needs, with working values."""
    import sys

    from twisted.python import compat

    from sns_xmpp import compat as shim

    shim.install()
    assert compat._PY3 is True  # type: ignore[attr-defined]
    constants = sys.modules["twisted.python.constants"]
    assert constants.ValueConstant("x").value == "x"
