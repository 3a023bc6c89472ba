"""A connection leaves nothing for the cycle collector: reference counting frees its streams,
parsers and stanzas as soon as they are done with (parsing.py's docstring says why that matters).

The cycle collector is switched off while whole conversations run in process, then asked how
many unreachable objects it finds: each one is a reference cycle the server made. Before the
parser stopped linking children to parents and streams cut their cycles at the end, a login
left 45, and a message with a body 3.
"""

from __future__ import annotations

import base64
import collections
import gc
from collections.abc import Callable

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sns_xmpp.xmpp.c2s import ClientStream, ClientStreamFactory
from tests.fuzz.harness import DOMAINS, World
from tests.fuzz.harness import world as world  # the fixture: one World for the module

HEADER = (b"<?xml version='1.0'?><stream:stream to='%s' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>" % DOMAINS[0].encode())
PEER = IPv4Address("TCP", "10.0.0.1", 40000)


def _auth(world: World, site: str, account: str) -> bytes:
    login = world.social(site, account)
    payload = base64.b64encode(b"\0" + login.username.encode() + b"\0" + login.password.encode())
    return b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + payload + b"</auth>"


def _connect(factory: ClientStreamFactory) -> tuple[ClientStream, StringTransport]:
    stream = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    stream.makeConnection(transport)
    return stream, transport


def _log_in(world: World, factory: ClientStreamFactory, site: str, account: str,
            resource: str) -> tuple[ClientStream, StringTransport]:
    stream, transport = _connect(factory)
    for chunk in (HEADER, _auth(world, site, account), HEADER,
                  b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  b"<resource>" + resource.encode() + b"</resource></bind></iq>",
                  b"<presence><show>chat</show><status>here</status></presence>"):
        stream.dataReceived(chunk)
    assert b"type='result' id='b1'" in transport.value(), transport.value()[-300:]
    return stream, transport


def _lose(stream: ClientStream) -> None:
    stream.connectionLost(Failure(ConnectionDone()))


def _cycles_made_by(run: Callable[[], None]) -> list[str]:
    """The types of the unreachable objects *run* leaves behind, most common first. Objects that
    existed before are held meanwhile, so that what earlier tests left in a global ring (Twisted's
    buffer of log events, say) and *run* pushes out is not counted as *run*'s."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    existing = gc.get_objects()
    try:
        run()
        gc.collect()
        found = collections.Counter(type(thing).__name__ for thing in gc.garbage)
    finally:
        del existing
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    return [f"{count} {name}" for name, count in found.most_common()]


def test_logins_chats_and_the_ends_of_streams_leave_no_cycles(world: World) -> None:
    """Stream errors and stanza errors, which Twisted builds as element trees linked both ways, are
    left to the cycle collector: at most one of the first per stream, and both off the paths
    every client takes."""
    factory = world.plaintext_factory()
    for site in ("sns", "idp"):  # the first logins make the accounts and fill the caches
        _lose(_log_in(world, factory, site, "carol", "warm")[0])

    def conversation() -> None:
        alice, _ = _log_in(world, factory, "sns", "alice", "phone")
        bob, bob_out = _log_in(world, factory, "idp", "bob", "laptop")
        bob_jid = bob.otherEntity.full()  # type: ignore[union-attr]
        alice.dataReceived(b"<message to='%s' type='chat' id='m1'><body>hi <b>there</b></body>"
                           b"<thread>t1</thread></message>" % bob_jid.encode())
        assert b"id='m1' from='alice\\40sns@localhost/phone'><body>hi <b>there</b></body>" in bob_out.value()
        alice.dataReceived(b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        alice.dataReceived(b"</stream:stream>")  # the client ends the stream
        _lose(alice)
        bob.dataReceived(b"<message to='nobody@%s'><body>half a sta" % DOMAINS[0].encode())
        _lose(bob)  # the connection drops with a stanza open in the parser

        # Authentication and the restarted stream's header in one read: the stream restarts while
        # expat is still parsing that read, so the old parser is let go once the read is parsed.
        eager, _ = _connect(factory)
        eager.dataReceived(HEADER)
        eager.dataReceived(_auth(world, "sns", "dave") + HEADER.split(b"?>", 1)[1])
        assert not eager.closed and eager.stream is not None
        _lose(eager)

    assert _cycles_made_by(conversation) == []


def test_no_module_links_children_to_their_parents() -> None:
    """``addElement`` and ``addChild`` set ``child.parent``, a cycle with every child; the server
    builds its trees with stanzas.add_element and append_child instead, on every path, rare or not."""
    import pathlib
    import re

    import sns_xmpp

    linking = re.compile(r"\.add(Element|Child)\(")
    offenders = [f"{path.name}:{number}" for path in pathlib.Path(sns_xmpp.__file__).parent.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if linking.search(line) and not line.lstrip().startswith(("#", '"""'))]
    assert offenders == []
