"""The XMPP side: c2s streams, sessions, routing, components."""

# Before any stanza is serialised: Twisted's own serialiser writes namespace URIs unescaped.
from sns_xmpp.xmpp import serialization as _serialization  # noqa: F401
