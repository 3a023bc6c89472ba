"""Client State Indication (XEP-0352) as a feature module: while inactive, presence and chat
states are held and folded (the newest per sender), and a message with a body goes at once,
after them; <active/> lets the rest go."""

from __future__ import annotations

import re

from sns_xmpp.auth.checker import LoginResult
from tests.unit.test_limits import connect
from tests.unit.test_negotiation import HEADER
from tests.unit.test_stream_management import output, world


def test_an_inactive_client_gets_presence_and_chat_states_folded_and_messages_at_once() -> None:
    sessions, factory, _clock = world()
    ends = {}
    for n, user in enumerate(("alice", "bob", "carol")):
        stream, transport = connect(factory, f"192.0.2.{n + 1}")
        stream.dataReceived(HEADER.format(to="localhost").encode())
        sessions.bind(stream, LoginResult(f"{user}@localhost", "PLAIN"), "r")
        ends[user] = (stream, transport)
    alice, alice_out = ends["alice"]
    alice.dataReceived(b"<presence/><inactive xmlns='urn:xmpp:csi:0'/>")
    output(alice_out)
    bob, carol = ends["bob"][0], ends["carol"][0]
    bob.dataReceived(b"<presence to='alice@localhost/r'><show>away</show></presence>"
                     b"<presence to='alice@localhost/r'><show>dnd</show></presence>"
                     b"<message to='alice@localhost/r' type='chat'>"
                     b"<composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
                     b"<message to='alice@localhost/r' type='chat'>"
                     b"<paused xmlns='http://jabber.org/protocol/chatstates'/></message>")
    carol.dataReceived(b"<presence to='alice@localhost/r'><show>xa</show></presence>")
    assert output(alice_out) == ""  # all held
    carol.dataReceived(b"<message to='alice@localhost/r' type='chat'><body>wake up</body></message>")
    seen = output(alice_out)
    order = re.findall(r"<show>(\w+)</show>|<(paused|composing)|<body>([^<]+)</body>", seen)
    # bob's newest presence (dnd, not away), his newest chat state, carol's presence, then the message
    assert [next(part for part in match if part) for match in order] == ["dnd", "paused", "xa", "wake up"]
    bob.dataReceived(b"<presence to='alice@localhost/r'><show>chat</show></presence>")
    assert output(alice_out) == ""
    alice.dataReceived(b"<active xmlns='urn:xmpp:csi:0'/>")
    assert "<show>chat</show>" in output(alice_out)
    bob.dataReceived(b"<presence to='alice@localhost/r'/>")
    assert "<presence" in output(alice_out)  # active again: at once
