"""The XMPP side: c2s streams, sessions, routing, components."""
