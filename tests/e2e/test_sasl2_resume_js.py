"""XEP-0198's resumption inside SASL2 (XEP-0388) with a client not written here: xmpp.js
(@xmpp/client 0.14, pinned by tests/js/package-lock.json), which always logs in with SASL2 and
Bind2 when offered, and resumes only inside SASL2 (@xmpp/stream-management/sasl2.js: a <resume/>
in <authenticate/> when the server lists <sm/> in SASL2's <inline/> and it holds a resumption id)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest_twisted
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

from sns_xmpp.auth.scram import derive_all
from sns_xmpp.jid import parse_jid
from tests.clients import XmppJs, js_clients
from tests.e2e.test_local_im import logged_in, until
from tests.xmppclient import wait


@contextmanager
def c2s_log(bare: str, prefixes: tuple[str, ...] = ("c2s.",)) -> Iterator[list[str]]:
    """The server's log lines about *bare* starting with one of *prefixes* (by default its c2s.*)
    while the block runs, in order."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        text = event.get("log_format") or ""
        if text.startswith(prefixes) and str(event.get("jid", "")).startswith(bare):
            lines.append(formatEvent(event))

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observer)


async def online_then_detached(server: Any, erin: XmppJs, bob: Any) -> tuple[str, Any]:
    """xmpp.js (*erin*) comes online with a resumable session and chats with the slixmpp user
    *bob*; then its TCP connection is cut without a
    stream close (everything it received acknowledged first), the server keeps the session, and a
    message comes for it meanwhile, waiting unacknowledged in the ledger. Its full JID and the
    session."""
    from sns_xmpp.xmpp.features.stream_management import StreamManagement

    full = await wait(erin.expect("online"), 40)
    session = server.sessions.session(parse_jid(full))
    assert session is not None and isinstance(session.ledger, StreamManagement)
    assert session.ledger.resume_id is not None, "xmpp.js asked for a resumable session"

    await wait(erin.chat_both_ways(full, bob, "from xmpp.js", "to xmpp.js"), 60)

    erin.command(drop=True)
    await wait(erin.expect("dropped"), 40)
    await until(lambda: session.detached)
    bob.send_message(mto=full, mbody="while you were away", mtype="chat")
    # The server took it for the detached session: it waits in the ledger, unacknowledged.
    await until(lambda: any("while you were away" in (s if isinstance(s, str) else s.toXml())
                            for s in session.ledger.unacked))
    return full, session


async def resumed_and_chatting_on(server: Any, erin: XmppJs, bob: Any, full: str, session: Any) -> None:
    """xmpp.js reconnects and resumes *session* inside SASL2: xmpp.js says so (its `resumed`, not
    `online`), the session object is the one it had and the only one; the message that came
    meanwhile arrives once, and they chat on both ways; then xmpp.js stops."""
    erin.command(reconnect=True)
    kind, again = await wait(erin.expect("online", "resumed"), 40)
    assert (kind, again) == ("resumed", full), f"a new session, not the old one resumed; see {erin.trace}"
    # What the server kept comes right after <success/>, which xmpp.js may report before
    # its `resumed` (which waits for its own queue to go out again): the second message.
    while len(erin.messages) < 2:
        await wait(erin.expect("message"), 40)
    assert (erin.messages[1]["from"], erin.messages[1]["body"]) == (str(bob.boundjid), "while you were away")
    assert server.sessions.session(parse_jid(full)) is session and not session.detached
    assert [s.full for s in server.sessions.resources("erin@localhost")] == [session.full]

    # Chatting on, both ways, on the resumed session.
    await wait(erin.chat_both_ways(full, bob, "back again", "welcome back"), 60)
    erin.command(stop=True)
    await wait(erin.expect("stopped"), 40)

    assert [m["body"] for m in erin.messages] == ["to xmpp.js", "while you were away", "welcome back"]
    assert len({m["id"] for m in erin.messages}) == 3, erin.messages  # (XEP-0359: three, none twice)
    assert bob.messages.empty(), "a message arrived twice"


def one_bind_then_resumed(log: list[str]) -> list[str]:
    """The c2s.* kinds in *log*, checked: one login and bind, the drop, a second SASL2 login that
    resumed (and bound nothing new)."""
    kinds = [line.split()[0] for line in log if line.startswith("c2s.")]
    assert kinds[:5] == ["c2s.authenticated", "c2s.bound", "c2s.detached", "c2s.authenticated", "c2s.resumed"], log
    assert kinds.count("c2s.bound") == 1, log
    assert all("sasl=2" in line for line in log if line.startswith("c2s.authenticated")), log
    return kinds


@pytest_twisted.ensureDeferred
async def test_xmpp_js_resumes_its_session_inside_sasl2_after_a_drop_and_gets_what_came_meanwhile_once(
        server, tmp_path: Path) -> None:
    """xmpp.js over WebSocket logs in (SASL2, Bind2 with stream management enabled) and chats with
    a slixmpp user; its TCP connection is then cut without a stream close, and the server keeps
    the session. A message comes for it meanwhile. It reconnects and resumes that session inside
    SASL2: xmpp.js says so (its `resumed`, not `online`), the server logs a resumption and no new
    bind, and the session object is the one it had. The message comes once, and they chat on."""
    folder = js_clients()
    await server.add_user("erin@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    bob = await logged_in(server, "bob@localhost")
    service = server.http_url.replace("http://", "ws://") + "/xmpp-websocket"
    with c2s_log("erin@localhost") as log:
        erin = await wait(XmppJs.start(folder, service, "erin", tmp_path / "xmppjs.log"))
        try:
            full, session = await online_then_detached(server, erin, bob)
            await resumed_and_chatting_on(server, erin, bob, full, session)
        finally:
            erin.kill()

    one_bind_then_resumed(log)
    await wait(bob.log_out())


@pytest_twisted.ensureDeferred
async def test_xmpp_js_resumes_its_session_with_its_fast_token_in_one_authenticate(server, tmp_path: Path) -> None:
    """What a phone does after losing its network: xmpp.js logs in with its password and asks
    for a FAST token (XEP-0484), which it gets; its connection drops, a message comes meanwhile,
    and it logs in again with the token alone (HT-SHA-256-NONE, no password: the account's
    password has changed in the meantime, so a fallback to it would fail) and resumes its session
    inside that same <authenticate/>. The message comes once, and they chat on."""
    folder = js_clients()
    await server.add_user("erin@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    bob = await logged_in(server, "bob@localhost")
    service = server.http_url.replace("http://", "ws://") + "/xmpp-websocket"
    with c2s_log("erin@localhost", ("c2s.", "fast.")) as log:
        erin = await wait(XmppJs.start(folder, service, "erin", tmp_path / "xmppjs.log", fast=True))
        try:
            full, session = await online_then_detached(server, erin, bob)
            # The token came in the password login's <success/> (xmpp.js told it before `online`).
            assert [t["mechanism"] for t in erin.tokens] == ["HT-SHA-256-NONE"], erin.tokens
            # The password xmpp.js knows is no longer the account's: only the token logs it in.
            assert await server.store.set_credentials("erin@localhost", derive_all("changed"))
            await resumed_and_chatting_on(server, erin, bob, full, session)
        finally:
            erin.kill()

    one_bind_then_resumed(log)
    logins = [line for line in log if line.startswith(("c2s.authenticated", "fast."))]
    assert len(logins) == 3, log
    assert "method=HT-" not in logins[0], log  # the password
    assert logins[1].startswith("fast.login jid=erin@localhost"), log
    assert "method=HT-SHA-256-NONE" in logins[2], log
    # One <authenticate/> on the second connection: the token and the resumption in it.
    trace = erin.trace.read_text()
    second = trace[trace.index("OUT <authenticate", trace.index("<authenticate") + 1):]
    authenticate = second[:second.index("\n")]
    assert "HT-SHA-256-NONE" in authenticate and "urn:xmpp:fast:0" in authenticate, authenticate
    assert "<resume" in authenticate, authenticate
    assert second.count("OUT <authenticate") == 1, "xmpp.js fell back to another login"
    await wait(bob.log_out())
