"""XEP-0198 resumption inside SASL2 (XEP-0388's inline features; XEP-0198's "Integration with
SASL2 and Bind2"): a client written from the XEP texts puts <resume xmlns='urn:xmpp:sm:3'
previd h/> into its <authenticate/> and reads <resumed/> or <failed/> inside <success/>."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.internet import defer
from twisted.words.xish import domish
from twisted.words.xish.domish import Element

from sns_xmpp.auth.checker import AuthenticationFailed, LoginResult
from sns_xmpp.auth.fast import initiator, responder
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features.stream_management import NS_SM, Resumed, Resumption
from sns_xmpp.xmpp.stanzas import parse_stanza
from tests.unit.test_negotiation import OnePasswordChecker, output
from tests.unit.test_sasl2 import SASL2, World, authenticate, b64

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
BIND2 = ("<bind xmlns='urn:xmpp:bind:0'><tag>AwesomeXMPP</tag>"
         "<enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>")


class TwoPasswordChecker(OnePasswordChecker):
    """alice/right as before, and bob/bobs: two accounts, for a previd of the other's."""

    def check_plain(self, authcid: str, password: str, authzid: str | None, domain: str) -> defer.Deferred:
        if (authcid, password) == ("bob", "bobs"):
            return defer.succeed(LoginResult(f"bob@{domain}", "PLAIN"))
        if (authcid, password) == ("alice", "right"):
            return defer.succeed(LoginResult(f"alice@{domain}", "PLAIN"))
        return defer.fail(AuthenticationFailed("not-authorized", "wrong"))


def two_accounts(tmp_path: Path) -> World:
    world = World(tmp_path)
    world.settings.checker = TwoPasswordChecker()
    return world


def resumption(world: World) -> Resumption:
    handle = world.sessions.hooks.sasl2_inline[(NS_SM, "resume")].handle
    resumer = handle.__self__  # type: ignore[attr-defined]
    assert isinstance(resumer, Resumption)
    return resumer


def message(to: str, body: str) -> Element:
    parsed = parse_stanza(f"<message xmlns='jabber:client' to='{to}' from='erin@localhost/x' type='chat'>"
                          f"<body>{body}</body></message>")
    assert parsed is not None
    return parsed


def bodies(answer: str) -> list[str]:
    return re.findall(r"<body>([^<]*)</body>", answer)


def bound_then_dropped(world: World, user: str = "alice", password: str = "right",
                       extra: str = "") -> tuple[ClientSession, str, str, int]:
    """A SASL2+Bind2 login with resumable stream management, one presence from the client, two
    messages to it of which it acknowledges the first (and what came before it: its own presence),
    then a drop (no </stream>) and a message while it is away. Returns the detached session, its
    previd, the token asked for and the client's count of stanzas received (its h)."""
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", f"\x00{user}\x00{password}".encode(), BIND2 + extra))
    answer = output(transport)
    previd = re.search(r"<enabled xmlns='urn:xmpp:sm:3' id='([^']+)' resume='true'", answer)
    assert previd, answer
    token = re.search(r"token='([^']+)'", answer)
    [session] = world.sessions.resources(f"{user}@localhost")
    stream.dataReceived(b"<presence/>")
    session.send(message(session.full, "one"))
    session.send(message(session.full, "two"))
    output(transport)
    assert session.ledger is not None
    h = session.ledger.sent - 1  # type: ignore[attr-defined]
    stream.dataReceived(f"<a xmlns='{NS_SM}' h='{h}'/>".encode())  # "one" seen, "two" not
    stream.connectionLost(None)  # type: ignore[arg-type]  # dropped: no </stream:stream>
    assert session.detached
    session.send(message(session.full, "while away"))
    return session, previd.group(1), token.group(1) if token else "", h


def resume(previd: str, h: int) -> str:
    return f"<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>"


def test_plain_with_resume_inside_authenticate_gets_resumed_in_success_then_the_unacknowledged_stanzas(
        tmp_path: Path) -> None:
    """XEP-0198's SASL2 example: <resume/> in the <authenticate/> (Bind2 beside it, as a client
    that always binds sends it); one <success/> whose authorization identifier is the resumed
    session's full JID, with <resumed previd h/> (h: the one stanza the server handled, the
    presence); the Bind2 request is ignored (no <bound/>, no second resource), no features follow;
    then the stanzas the client never acknowledged, in order, and the counters go on from there."""
    world = two_accounts(tmp_path)
    session, previd, _, h = bound_then_dropped(world)
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right", resume(previd, h) + BIND2))
    answer = output(transport)
    assert answer.startswith(f"<success xmlns='{SASL2}'><authorization-identifier>{session.full}"
                             f"</authorization-identifier><resumed xmlns='{NS_SM}' previd='{previd}' h='1'/>"
                             "</success>"), answer
    assert "<bound" not in answer and "<stream:features" not in answer
    assert bodies(answer) == ["two", "while away"]
    assert world.sessions.resources("alice@localhost") == [session] and not session.detached
    assert session.stream is stream
    session.send(message(session.full, "after"))
    assert bodies(output(transport)) == ["after"]
    stream.dataReceived(b"<message to='erin@localhost' type='chat'><body>hi</body></message>"
                        + f"<r xmlns='{NS_SM}'/>".encode())
    assert f"<a xmlns='{NS_SM}' h='2'/>" in output(transport), "the presence before, this message now"
    stream.dataReceived(f"<a xmlns='{NS_SM}' h='{h + 3}'/>".encode())  # two, while away, after
    assert session.ledger is not None and not session.ledger.unacked  # type: ignore[attr-defined]


def test_a_fast_login_with_resume_resumes_and_carries_the_responder_proof(tmp_path: Path) -> None:
    """The phone's case: HT-SHA-256-NONE with <fast count/> and <resume/> in one <authenticate/>;
    <success/> has the additional data HMAC(token, "Responder") and <resumed/>, then the
    unacknowledged stanzas."""
    world = two_accounts(tmp_path)
    session, previd, token, h = bound_then_dropped(
        world, extra="<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>")
    assert token
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("HT-SHA-256-NONE", b"alice\x00" + initiator(token.encode()),
                                     "<fast xmlns='urn:xmpp:fast:0' count='1'/>" + resume(previd, h) + BIND2))
    answer = output(transport)
    assert answer.startswith(f"<success xmlns='{SASL2}'><additional-data>{b64(responder(token.encode()))}"
                             f"</additional-data><authorization-identifier>{session.full}</authorization-identifier>"
                             f"<resumed xmlns='{NS_SM}' previd='{previd}' h='1'/>"), answer
    assert bodies(answer) == ["two", "while away"] and session.stream is stream


def test_an_unknown_previd_fails_inside_success_and_bind2_in_the_same_authenticate_binds(tmp_path: Path) -> None:
    """XEP-0198: a resumption that fails is <failed/> with item-not-found inside <success/>, and the
    server goes on with the Bind2 request of the same <authenticate/>: a new session, its
    <enabled/> in <bound/>. Its resource is the old one's (the same <user-agent id>), which it
    replaces, as XEP-0386 asks; the old stanzas are not sent on this stream as a resumption's."""
    world = two_accounts(tmp_path)
    session, previd, _, h = bound_then_dropped(world)
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right", resume("no-such-id", 0) + BIND2))
    answer = output(transport)
    assert re.match(f"<success xmlns='{SASL2}'><authorization-identifier>alice@localhost/AwesomeXMPP\\.[0-9a-f]{{8}}"
                    f"</authorization-identifier><failed xmlns='{NS_SM}'><item-not-found xmlns='{STANZAS}'/>"
                    f"</failed><bound xmlns='urn:xmpp:bind:0'><enabled xmlns='{NS_SM}' id='", answer), answer
    assert not bodies(answer)
    [new] = world.sessions.resources("alice@localhost")
    assert new is not session and new.stream is stream and new.full == session.full
    assert previd not in resumption(world).resumable, "replaced"


def test_another_accounts_previd_is_refused_and_the_stream_stays_authenticated_for_a_bind(tmp_path: Path) -> None:
    """The session must belong to the account that authenticated: bob's previd in alice's
    <authenticate/> is item-not-found, as an unknown one. Without Bind2 the authorization
    identifier is the bare JID and the features after authentication follow, for an RFC 6120
    bind; bob's session stays detached, resumable by bob."""
    world = two_accounts(tmp_path)
    bobs, previd, _, h = bound_then_dropped(world, "bob", "bobs")
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right", resume(previd, h)))
    answer = output(transport)
    assert answer.startswith(f"<success xmlns='{SASL2}'><authorization-identifier>alice@localhost"
                             f"</authorization-identifier><failed xmlns='{NS_SM}'>"
                             f"<item-not-found xmlns='{STANZAS}'/></failed></success><stream:features>"), answer
    assert bobs.detached and bobs.login.jid == "bob@localhost" and not bodies(answer)
    stream.dataReceived(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                        b"<resource>r</resource></bind></iq>")
    assert "<jid>alice@localhost/r</jid>" in output(transport)

    again, again_transport, _ = world.connect()
    again.dataReceived(authenticate("PLAIN", b"\x00bob\x00bobs", resume(previd, h)))
    assert f"<resumed xmlns='{NS_SM}' previd='{previd}' h='1'/>" in output(again_transport)


def test_a_session_another_node_holds_is_answered_in_success_only_once_it_is_known(tmp_path: Path) -> None:
    """In a cluster the session may be on another node (Resumption.elsewhere asks it): nothing is
    written while the answer is awaited, no <success/> ahead of it; the outcome, when it comes,
    is inside <success/> and the unacknowledged stanzas follow. A holder that never answers is
    <failed/> in <success/>, and Bind2 goes on."""
    world = two_accounts(tmp_path)
    session, previd, _, h = bound_then_dropped(world)
    resumer = resumption(world)
    held = resumer.resumable.pop(previd)  # "on another node"
    asked: list[tuple[ClientStream, LoginResult, domish.Element, defer.Deferred[Resumed | domish.Element]]] = []

    def elsewhere(stream: ClientStream, login: LoginResult,
                  element: domish.Element) -> defer.Deferred[Resumed | domish.Element]:
        outcome: defer.Deferred[Resumed | domish.Element] = defer.Deferred()
        asked.append((stream, login, element, outcome))
        return outcome

    resumer.elsewhere = elsewhere
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right", resume(previd, h) + BIND2))
    assert output(transport) == "" and len(asked) == 1
    resumer.resumable[previd] = held  # it arrived (cluster/resumption.py's `take`)
    [(on, login, element, outcome)] = asked
    outcome.callback(resumer.attempt(on, login, element, here=True))
    answer = output(transport)
    assert answer.startswith(f"<success xmlns='{SASL2}'><authorization-identifier>{session.full}"
                             f"</authorization-identifier><resumed xmlns='{NS_SM}' previd='{previd}'"), answer
    assert bodies(answer) == ["two", "while away"]

    late, late_transport, _ = world.connect()
    late.dataReceived(authenticate("PLAIN", b"\x00alice\x00right", resume("elsewhere-too", 0) + BIND2))
    assert output(late_transport) == ""
    asked[-1][3].callback(Element((NS_SM, "failed")))  # (cluster/resumption.py: no answer in time)
    assert output(late_transport).startswith(f"<success xmlns='{SASL2}'><authorization-identifier>alice@localhost/")


def test_the_resume_inside_authenticate_goes_to_stream_management_only_when_registered(tmp_path: Path) -> None:
    """An <authenticate/> child in a namespace no feature registered is ignored: the login is the
    usual one, through the text path of <success/>."""
    world = World(tmp_path)
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right", "<x xmlns='urn:example:unknown'/>"))
    answer = output(transport)
    assert answer.startswith(f"<success xmlns='{SASL2}'><authorization-identifier>alice@localhost"
                             "</authorization-identifier></success><stream:features>"), answer
