"""The cluster's inbox batches what a reactor round forwards to each node (sns_xmpp/cluster/inbox.py):
one XADD per node per round, in order, the senders answered when Redis has it; the reading node
hands each stanza of a batch to its session."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from sns_xmpp.cluster.inbox import KIND_BATCH, KIND_REPLACE, KIND_STANZA, Inbox
from sns_xmpp.cluster.keys import Keys
from sns_xmpp.xmpp.hooks import Hooks


class Commands:
    """txredisapi's execute_command, recorded; each answer is the test's to give."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.answers: list[Deferred[Any]] = []

    def execute_command(self, *args: Any) -> Deferred[Any]:
        self.calls.append(args)
        self.answers.append(Deferred())
        return self.answers[-1]

    def entries(self) -> list[tuple[str, dict[str, str]]]:
        """(stream key, fields) of each XADD made."""
        found = []
        for call in self.calls:
            if call[0] == "XADD":
                fields = list(call[call.index("*") + 1:])
                found.append((call[1], dict(zip(fields[::2], fields[1::2], strict=True))))
        return found


class Session:
    remote = False

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, text: str) -> None:
        self.sent.append(text)


class Rosters:
    def settled(self, bare: str) -> None:
        return None


class Sessions:
    def __init__(self) -> None:
        self.rosters = Rosters()
        self.hooks = Hooks()
        self.bound = {"bob@localhost/phone": Session(), "bob@localhost/laptop": Session()}

    def session(self, jid: Any) -> Session | None:
        return self.bound.get(jid.full())


def inbox(commands: Commands, clock: Clock, sessions: Sessions | None = None) -> Inbox:
    return Inbox("n1", Keys("t:"), commands, commands, sessions or Sessions(), clock)  # type: ignore[arg-type]


def test_a_rounds_stanzas_for_one_node_are_one_entry_in_order_and_their_senders_wait_for_redis() -> None:
    commands, clock = Commands(), Clock()
    box = inbox(commands, clock)
    acked: list[int] = []
    for n in range(3):
        box.forward("n2", "bob@localhost/phone", f"<message id='m{n}'/>").addCallback(lambda _, n=n: acked.append(n))
    box.forward("n3", "carol@localhost/pc", "<message id='c'/>")
    assert commands.calls == []  # nothing until the round ends, or another entry for n2 is made
    box.replace("n2", "bob@localhost/laptop")  # goes after what was forwarded to n2 before it
    assert [(key, fields["k"]) for key, fields in commands.entries()] == [
        (Keys("t:").inbox("n2"), KIND_BATCH), (Keys("t:").inbox("n2"), KIND_REPLACE)]
    assert commands.entries()[0][1]["x"].split("\x00") == [
        part for n in range(3) for part in ("bob@localhost/phone", f"<message id='m{n}'/>")]
    clock.advance(0)  # the round's end: the lone stanza for n3 goes as one of its own
    assert commands.entries()[2] == (Keys("t:").inbox("n3"), {
        "k": KIND_STANZA, "t": "carol@localhost/pc", "x": "<message id='c'/>", "o": ""})
    assert acked == []
    commands.answers[0].callback(b"1-0")  # Redis has n2's batch
    assert acked == [0, 1, 2]


def test_a_batch_redis_refused_is_added_again_as_it_was() -> None:
    commands, clock = Commands(), Clock()
    box = inbox(commands, clock)
    acked = []
    for n in range(2):
        box.forward("n2", "bob@localhost/phone", f"<message id='m{n}'/>").addCallback(acked.append)
    clock.advance(0)
    commands.answers[0].errback(ConnectionError("lost"))
    assert len(commands.calls) == 2 and commands.calls[1] == commands.calls[0]
    assert acked == []
    commands.answers[1].callback(b"1-0")
    assert acked == [None, None]


def test_the_reading_node_hands_each_stanza_of_a_batch_to_its_session() -> None:
    sessions = Sessions()
    box = inbox(Commands(), Clock(), sessions)
    items = [["bob@localhost/phone", "<message id='1'/>"], ["not a jid@@/", "<message id='x'/>"],
             ["bob@localhost/laptop", "<message id='2'/>"], ["bob@localhost/phone", "<message id='3'/>"]]
    box.take({"k": KIND_BATCH, "t": "", "x": "\x00".join(part for item in items for part in item), "o": ""})
    assert sessions.bound["bob@localhost/phone"].sent == ["<message id='1'/>", "<message id='3'/>"]
    assert sessions.bound["bob@localhost/laptop"].sent == ["<message id='2'/>"]


def test_a_stanza_handed_to_another_node_reads_back_as_the_full_serialiser_writes_it() -> None:
    """The inbox's text comes from the client stream's serialiser where it can (reusing what MAM
    made); parsed again it is the same stanza as Twisted's own serialisation gives."""
    from twisted.words.xish import domish

    from sns_xmpp.xmpp.serialization import plain_xml, standalone_client_xml
    from sns_xmpp.xmpp.stanzas import parse_stanza

    message = domish.Element(("jabber:client", "message"))
    message["to"], message["from"], message["type"] = "bob@localhost/phone", "alice@localhost/pc", "chat"
    message.addElement("body", content="a < b & 'c'")
    plain_xml(message, "jabber:client", {"http://etherx.jabber.org/streams": "stream"}, remember=True)
    message.children.append(domish.SerializedXML("<stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='1'/>"))
    presence = domish.Element(("jabber:client", "presence"))
    presence.addElement(("http://jabber.org/protocol/caps", "c"))["ver"] = "x=="
    prefixed = domish.Element(("jabber:client", "iq"))
    prefixed.addElement(("urn:example", "query")).localPrefixes["ex"] = "urn:example"
    for stanza in (message, presence, prefixed):
        text = standalone_client_xml(stanza)
        again, expected = parse_stanza(text), parse_stanza(stanza.toXml())
        assert again is not None and expected is not None and again.toXml() == expected.toXml(), text
