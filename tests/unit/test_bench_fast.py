"""The load generator's FAST client (benchmarks/loadgen.py) against the server's own HT-SHA-256-NONE
arithmetic: what it sends is what `sns_xmpp.auth.fast` checks, it takes only the server's right
answer, and each simulated device keeps the token and count its last login left it."""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET
from collections import deque
from typing import Any

import pytest
import pytest_twisted

from benchmarks import loadgen
from benchmarks.loadgen import Connection, FastDevice, XMPPError, fast_login, fast_provider
from sns_xmpp.auth.fast import initiator, new_token, responder, token_hash
from tests.xmppclient import wait

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' from='localhost' version='1.0'>")
FEATURES = ET.fromstring(
    "<features xmlns='http://etherx.jabber.org/streams'><authentication xmlns='urn:xmpp:sasl:2'>"
    "<mechanism>PLAIN</mechanism><inline><fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-NONE</mechanism>"
    "</fast></inline></authentication></features>")


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def success(token: str, new: str | None) -> bytes:
    """The server's <success/> for a FAST login with *token*, as sns_xmpp computes its proof."""
    rotated = f"<token xmlns='urn:xmpp:fast:0' expiry='2027-01-01T00:00:00Z' token='{new}'/>" if new else ""
    answer = base64.b64encode(responder(token_hash(token))).decode()
    return (f"<success xmlns='urn:xmpp:sasl:2'><additional-data>{answer}</additional-data>"
            f"<authorization-identifier>u0\\40bench@localhost/bench.1a2b3c4d</authorization-identifier>"
            f"{rotated}<bound xmlns='urn:xmpp:bind:0'/></success>").encode()


async def log_in_once(device: FastDevice, answer: bytes) -> tuple[str, ET.Element]:
    connection = Connection()
    transport = Recorder()
    connection.connection_made(transport)
    connection.data_received(HEADER)
    login = asyncio.ensure_future(fast_login(connection, FEATURES, device))
    await asyncio.sleep(0)
    sent = ET.fromstring(transport.written)
    connection.data_received(answer)
    return await login, sent


@pytest_twisted.ensureDeferred
async def test_a_fast_login_sends_the_servers_proof_and_keeps_the_rotated_token() -> None:
    """The initial response is authcid NUL the HMAC the server computes from its stored digest of the
    token, with the device's count and Bind2; a rotation gives the device the new token at count 1,
    a login without one moves the count on."""
    first, second = new_token(), new_token()
    device = FastDevice("u0\\40bench", "agent-1", first, deque(), count=3)
    jid, sent = await wait(log_in_once(device, success(first, second)))
    assert jid == "u0\\40bench@localhost/bench.1a2b3c4d"
    assert sent.get("mechanism") == "HT-SHA-256-NONE"
    initial = base64.b64decode(sent.findtext("{urn:xmpp:sasl:2}initial-response") or "")
    assert initial == b"u0\\40bench\0" + initiator(token_hash(first))
    assert sent.find("{urn:xmpp:sasl:2}user-agent").get("id") == "agent-1"  # type: ignore[union-attr]
    assert sent.find("{urn:xmpp:fast:0}fast").get("count") == "3"  # type: ignore[union-attr]
    assert sent.find("{urn:xmpp:bind:0}bind") is not None
    assert (device.token, device.count) == (second, 1)

    await wait(log_in_once(device, success(second, None)))
    assert (device.token, device.count) == (second, 2)


@pytest_twisted.ensureDeferred
async def test_an_answer_not_proved_with_the_token_is_refused() -> None:
    """A <success/> whose additional-data is not HMAC(token, "Responder") fails the login, and the
    device keeps its token."""
    token = new_token()
    device = FastDevice("u0\\40bench", "agent-1", token, deque())
    with pytest.raises(XMPPError, match="answer is wrong"):
        await wait(log_in_once(device, success(new_token(), new_token())))
    assert device.token == token


def test_a_device_is_lent_to_one_login_at_a_time() -> None:
    """The pool hands each free device out once until its login gives it back; with none free the
    attempt fails rather than racing another login for a token."""
    free: deque[FastDevice] = deque()
    free.append(FastDevice("a", "agent-a", "t", free))
    provider = fast_provider(free)
    lent = provider(0)
    assert lent.device is not None and lent.mechanism == loadgen.HT_SHA_256_NONE
    with pytest.raises(XMPPError, match="no FAST device free"):
        provider(1)
    free.append(lent.device)
    assert provider(2).device is lent.device
