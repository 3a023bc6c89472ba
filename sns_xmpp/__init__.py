"""sns-xmpp: log in to XMPP with an account you already have on a social site.

Importing the package changes nothing in the process: `sns_xmpp.startup.install` does that, once.
"""

__version__ = "0.1.0"
