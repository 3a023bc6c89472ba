"""sns-xmpp: log in to XMPP with an account you already have on a social site."""

from sns_xmpp import compat as _compat  # noqa: F401  (must run before any wokkel import)

__version__ = "0.1.0"
