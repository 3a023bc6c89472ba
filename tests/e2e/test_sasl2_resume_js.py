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

from sns_xmpp.jid import parse_jid
from tests.e2e.test_local_im import logged_in, until
from tests.xmppclient import wait


@contextmanager
def c2s_log(bare: str) -> Iterator[list[str]]:
    """The server's c2s.* log lines about *bare* while the block runs, in order."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        text = event.get("log_format") or ""
        if text.startswith("c2s.") and str(event.get("jid", "")).startswith(bare):
            lines.append(formatEvent(event))

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observer)


@pytest_twisted.ensureDeferred
async def test_xmpp_js_resumes_its_session_inside_sasl2_after_a_drop_and_gets_what_came_meanwhile_once(
        server, tmp_path: Path) -> None:
    """xmpp.js over WebSocket logs in (SASL2, Bind2 with stream management enabled) and chats with
    a slixmpp user; its TCP connection is then cut without a stream close, and the server keeps
    the session. A message comes for it meanwhile. It reconnects and resumes that session inside
    SASL2: xmpp.js says so (its `resumed`, not `online`), the server logs a resumption and no new
    bind, and the session object is the one it had. The message comes once, and they chat on."""
    from sns_xmpp.xmpp.features.stream_management import StreamManagement
    from tests.clients import XmppJs, js_clients

    folder = js_clients()
    await server.add_user("erin@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    bob = await logged_in(server, "bob@localhost")
    service = server.http_url.replace("http://", "ws://") + "/xmpp-websocket"
    with c2s_log("erin@localhost") as log:
        erin = await wait(XmppJs.start(folder, service, "erin", tmp_path / "xmppjs.log"))
        try:
            full = await wait(erin.expect("online"), 40)
            session = server.sessions.session(parse_jid(full))
            assert session is not None and isinstance(session.ledger, StreamManagement)
            assert session.ledger.resume_id is not None, "xmpp.js asked for a resumable session"

            erin.command(send={"to": "bob@localhost", "body": "from xmpp.js"})
            heard = await wait(bob.next_message())
            assert (heard["body"], str(heard["from"])) == ("from xmpp.js", full)
            bob.send_message(mto=full, mbody="to xmpp.js", mtype="chat")
            assert await wait(erin.message(), 40) == (str(bob.boundjid), "to xmpp.js")

            # The connection cut (everything erin received acknowledged first), the session kept.
            erin.command(drop=True)
            await wait(erin.expect("dropped"), 40)
            await until(lambda: session.detached)
            bob.send_message(mto=full, mbody="while you were away", mtype="chat")
            # The server took it for the detached session: it waits in the ledger, unacknowledged.
            await until(lambda: any("while you were away" in (s if isinstance(s, str) else s.toXml())
                                    for s in session.ledger.unacked))

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
            erin.command(send={"to": "bob@localhost", "body": "back again"})
            heard = await wait(bob.next_message())
            assert (heard["body"], str(heard["from"])) == ("back again", full)
            bob.send_message(mto=full, mbody="welcome back", mtype="chat")
            assert await wait(erin.message(), 40) == (str(bob.boundjid), "welcome back")
            erin.command(stop=True)
            await wait(erin.expect("stopped"), 40)
        finally:
            erin.kill()

    assert [m["body"] for m in erin.messages] == ["to xmpp.js", "while you were away", "welcome back"]
    assert len({m["id"] for m in erin.messages}) == 3, erin.messages  # (XEP-0359: three, none twice)
    kinds = [line.split()[0] for line in log]
    # One login and bind, the drop, a second SASL2 login that resumed (and bound nothing new).
    assert kinds[:5] == ["c2s.authenticated", "c2s.bound", "c2s.detached", "c2s.authenticated", "c2s.resumed"], log
    assert kinds.count("c2s.bound") == 1, log
    assert all("sasl=2" in line for line in log if line.startswith("c2s.authenticated")), log
    assert bob.messages.empty(), "a message arrived twice"
    await wait(bob.log_out())
