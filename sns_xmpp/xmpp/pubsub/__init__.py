"""Publish-subscribe as personal eventing (XEP-0163 on XEP-0060): the node model (`nodes`), what
each request does in one store transaction (`transactions`) and the service that keeps nodes and
items and sends notifications (`service`); the protocol side is the feature module
`xmpp/features/pep.py`, above it."""
