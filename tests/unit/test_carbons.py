"""Message Carbons (XEP-0280 v2) as a feature module: enabled per resource, copies of sent and
received messages to the account's other enabled resources, by the XEP's eligibility rules."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from wokkel.generic import parseXml

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.xmpp.features.carbons import eligible
from tests.unit.test_limits import connect
from tests.unit.test_negotiation import HEADER
from tests.unit.test_stream_management import output, world

CARBONS = "urn:xmpp:carbons:2"


def test_carbons_copy_sent_and_received_messages_to_the_other_enabled_resources() -> None:
    """Section 7: alice's phone and desktop enable carbons (a plain IQ, and inline in Bind2 terms),
    her tablet does not. What the phone sends to bob reaches the desktop as <sent/>; what bob
    sends to the phone's full JID reaches the desktop as <received/>; a private message, a
    headline, and one to the bare JID (which reaches every resource anyway) are not copied."""
    sessions, factory, _clock = world()
    streams = {}
    for n, resource in enumerate(("phone", "desktop", "tablet")):
        stream, transport = connect(factory, f"192.0.2.{n + 10}")  # the test factory takes two per address
        stream.dataReceived(HEADER.format(to="localhost").encode())
        sessions.bind(stream, LoginResult("alice@localhost", "PLAIN"), resource)
        stream.dataReceived(b"<presence/>")
        streams[resource] = (stream, transport)
    bob, bob_out = connect(factory, "192.0.2.2")
    bob.dataReceived(HEADER.format(to="localhost").encode())
    sessions.bind(bob, LoginResult("bob@localhost", "PLAIN"), "r")
    bob.dataReceived(b"<presence/>")
    streams["phone"][0].dataReceived(f"<iq type='set' id='e1'><enable xmlns='{CARBONS}'/></iq>".encode())
    assert "type='result' id='e1'" in output(streams["phone"][1])
    assert [s.resource for s in sessions.resources("alice@localhost")] == ["phone", "desktop", "tablet"]
    desktop = sessions.session(sessions.resources("alice@localhost")[1].jid)
    assert desktop is not None and desktop.resource == "desktop"
    sessions.hooks.inline[CARBONS].act(desktop, parseXml(f"<enable xmlns='{CARBONS}'/>"))
    for _, transport in streams.values():
        output(transport)
    output(bob_out)

    streams["phone"][0].dataReceived(b"<message to='bob@localhost' type='chat' id='m1'><body>hi bob</body></message>")
    bob_out_text = output(bob_out)
    assert "hi bob" in bob_out_text
    sent = ET.fromstring(f"<x xmlns='jabber:client'>{output(streams['desktop'][1])}</x>")
    [copy] = sent
    forwarded = copy.find(f"{{{CARBONS}}}sent/{{urn:xmpp:forward:0}}forwarded/{{jabber:client}}message")
    assert copy.get("from") == "alice@localhost" and copy.get("to") == "alice@localhost/desktop"
    assert forwarded is not None and forwarded.get("to") == "bob@localhost" and forwarded.get("id") == "m1"
    assert output(streams["tablet"][1]) == ""

    bob.dataReceived(b"<message to='alice@localhost/phone' type='chat' id='m2'><body>hi alice</body></message>")
    assert "hi alice" in output(streams["phone"][1])
    received = output(streams["desktop"][1])
    assert f"<received xmlns='{CARBONS}'>" in received and "hi alice" in received
    assert output(streams["tablet"][1]) == ""

    for stanza in (f"<message to='alice@localhost/phone' type='chat'><body>secret</body><private xmlns='{CARBONS}'/>"
                   "</message>", "<message to='alice@localhost/phone' type='headline'><body>news</body></message>",
                   "<message to='alice@localhost' type='chat'><body>to all</body></message>"):
        bob.dataReceived(stanza.encode())
        assert "<received" not in output(streams["desktop"][1])
    streams["phone"][0].dataReceived(f"<iq type='set' id='d1'><disable xmlns='{CARBONS}'/></iq>".encode())
    bob.dataReceived(b"<message to='alice@localhost/desktop' type='chat'><body>again</body></message>")
    assert "<received" not in output(streams["phone"][1])


def test_eligibility_follows_section_6() -> None:
    def message(xml: str) -> bool:
        return eligible(parseXml(f"<message xmlns='jabber:client' {xml}</message>"))

    assert message("type='chat'>")  # a chat message, even without a body
    assert message("><body>x</body>")  # normal with a body
    assert message("><active xmlns='http://jabber.org/protocol/chatstates'/>")  # normal, an IM payload
    assert not message(">")  # normal, nothing for IM
    assert not message("type='groupchat'><body>x</body>") and not message("type='headline'><body>x</body>")
    assert not message("type='error'><body>x</body>")
    assert not message(f"type='chat'><body>x</body><private xmlns='{CARBONS}'/>")
    assert not message("type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/>")
