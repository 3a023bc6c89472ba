"""A SASL2/Bind2/FAST client written from the XEP texts (XEP-0388, XEP-0386, XEP-0484 and
draft-schmaus-kitten-sasl-ht), raw XML over TLS against the running server: the first social
login requests a token and binds with stream management inline; once the social credentials have
expired the token still logs in; a rotated-out token fails after its grace period; a revocation
ends the live session and every token (issue 15)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest_twisted

from sns_xmpp.config import parse_config
from tests.conftest import BASE_CONFIG, free_port
from tests.e2e.test_social_login import demo_credentials
from tests.rawxmpp import RawStream
from tests.xmppclient import wait

LIFETIME = 20  # s: the grace period of a rotated-out token is a tenth of it (2 s)
ROTATION = 2  # s: a token this old is rotated by the next login
# The end of an answer: SASL2's, the features after it (no Bind2), or the stream's.
ENDINGS = ("</success>", "</failure>", "</challenge>", "</stream:features>", "</stream:stream>")


class Sasl2Client:
    """What a client needs of SASL2, Bind2 and FAST, and nothing more."""

    def __init__(self, stream: RawStream, agent: str) -> None:
        self.stream = stream
        self.agent = agent

    async def answer(self) -> str:
        data = b""
        while not data.decode(errors="replace").rstrip().endswith(ENDINGS):
            chunk = await self.stream.reader.read(65536)
            assert chunk, data
            data += chunk
        return data.decode()

    async def authenticate(self, mechanism: str, initial: bytes, extra: str = "") -> str:
        self.stream.writer.write((
            f"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='{mechanism}'>"
            f"<initial-response>{base64.b64encode(initial).decode()}</initial-response>"
            f"<user-agent id='{self.agent}'><software>tests</software><device>e2e</device></user-agent>"
            f"{extra}</authenticate>").encode())
        return await self.answer()

    async def fast(self, user: str, token: str, count: int, extra: str = "", mechanism: str = "HT-SHA-256-NONE",
                   cb: bytes = b"") -> str:
        """A FAST login: authcid NUL HMAC(token, "Initiator" || cb-data)."""
        proof = hmac.new(token.encode(), b"Initiator" + cb, hashlib.sha256).digest()
        answer = await self.authenticate(mechanism, user.encode() + b"\0" + proof,
                                         f"<fast xmlns='urn:xmpp:fast:0' count='{count}'/>{extra}")
        if answer.startswith("<success"):
            responder = hmac.new(token.encode(), b"Responder" + cb, hashlib.sha256).digest()
            assert f"<additional-data>{base64.b64encode(responder).decode()}</additional-data>" in answer, answer
        return answer


BIND = ("<bind xmlns='urn:xmpp:bind:0'><tag>tests</tag><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>")
REQUEST = "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"


def token_of(answer: str) -> str:
    match = re.search(r"<token xmlns='urn:xmpp:fast:0' expiry='[^']+' token='([^']+)'/>", answer)
    assert match, answer
    return match.group(1)


def identifier_of(answer: str) -> str:
    return answer.split("<authorization-identifier>")[1].split("</authorization-identifier>")[0]


async def sleep(seconds: float) -> None:
    """Time passing (credentials expiring), not synchronisation."""
    await wait(asyncio.sleep(seconds), seconds + 5)


async def connect(server: Any, agent: str) -> Sasl2Client:
    return Sasl2Client(await wait(RawStream.open_tls(server.c2s_port)), agent)


@pytest_twisted.ensureDeferred
async def test_a_social_login_gets_a_fast_token_that_outlives_its_credentials_until_revoked(
        start_server: Any, tmp_path: Path) -> None:
    from twisted.internet import reactor

    http_port = free_port()
    base = textwrap.dedent(BASE_CONFIG).format(data=tmp_path / "data", http_port=http_port)
    base = base.replace("direct_tls_port = 0\n", f"direct_tls_port = 0\nfast_token_lifetime = {LIFETIME}\n"
                                                  f"fast_token_rotation = {ROTATION}\n")
    server = await start_server(parse_config(base + '\n[sites.demo]\nplugin = "demo"\nmax_lifetime = 2\nleeway = 0\n'))
    credentials = await demo_credentials(server, "fay")
    jid, password = credentials["jid"], credentials["password"]
    user = jid.split("@")[0]
    agent = str(uuid.uuid4())

    # The first (social) login: SASL2 PLAIN, Bind2 with stream management inline, a token asked for.
    client = await connect(server, agent)
    assert "<authentication xmlns='urn:xmpp:sasl:2'><mechanism>" in client.stream.features
    assert "<mechanism>HT-SHA-256-NONE</mechanism></fast>" in client.stream.features
    answer = await wait(client.authenticate("PLAIN", f"\0{user}\0{password}".encode(), BIND + REQUEST))
    assert answer.startswith("<success xmlns='urn:xmpp:sasl:2'>"), answer
    assert identifier_of(answer).startswith(jid + "/tests.")
    assert "<bound xmlns='urn:xmpp:bind:0'><enabled xmlns='urn:xmpp:sm:3'" in answer
    first = token_of(answer)
    assert [s.jid.full() for s in server.sessions.resources(jid)] == [identifier_of(answer)]
    client.stream.close()

    # The social credentials expire; the token still logs in, bound at once, and rotates.
    await sleep(3)
    stale = await wait(RawStream.open_tls(server.c2s_port))
    refused = await wait(stale.auth("PLAIN", f"\0{user}\0{password}".encode()))
    assert "<not-authorized/>" in refused and "expired" in refused, refused
    stale.close()
    live = await connect(server, agent)
    answer = await wait(live.fast(user, first, 1, BIND))
    assert answer.startswith("<success") and identifier_of(answer).startswith(jid + "/tests."), answer
    second = token_of(answer)
    assert second != first

    # The rotated-out token is still taken during its grace period, then never again.
    other = await connect(server, agent)
    answer = await wait(other.fast(user, first, 2))
    assert "</success><stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>" in answer, answer
    third = token_of(answer)
    other.stream.close()
    await sleep(LIFETIME / 10 + 0.5)
    late = await connect(server, agent)
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>" in await wait(late.fast(user, first, 3))
    late.stream.close()

    # A revocation ends the live session within seconds, and the token with it.
    revoked_at = reactor.seconds()
    assert await server.store.revoke(jid, "admin", revoked_at) is not None
    ended = await wait(live.answer(), 10)
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in ended, ended
    assert reactor.seconds() - revoked_at < 5  # the daemon reads revocations every 2 s
    after = await connect(server, agent)
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>" in await wait(after.fast(user, third, 1))
    after.stream.close()


@pytest_twisted.ensureDeferred
async def test_a_fast_token_bound_to_the_tls_server_end_point(server: Any) -> None:
    """HT-SHA-256-ENDP (RFC 5929 tls-server-end-point) over the server's real TLS: offered (with
    tls-exporter on TLS 1.3) in <fast/>; the proof over SHA-256 of the certificate the client saw
    logs in, and the server's answer is bound to it too."""
    credentials = await demo_credentials(server, "gus")
    user, agent = credentials["jid"].split("@")[0], str(uuid.uuid4())
    client = await connect(server, agent)
    answer = await wait(client.authenticate("PLAIN", f"\0{user}\0{credentials['password']}".encode(),
                                            "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-ENDP'/>"))
    token = token_of(answer)
    client.stream.close()
    bound = await connect(server, agent)
    offered = ("<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-EXPR</mechanism>"
               "<mechanism>HT-SHA-256-ENDP</mechanism><mechanism>HT-SHA-256-NONE</mechanism></fast>")
    assert offered in bound.stream.features
    certificate = bound.stream.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    cb = hashlib.sha256(certificate).digest()  # the certificate is signed with ECDSA-SHA256
    answer = await wait(bound.fast(user, token, 1, mechanism="HT-SHA-256-ENDP", cb=cb))
    assert answer.startswith("<success"), answer
    bound.stream.close()


@pytest_twisted.ensureDeferred
async def test_direct_tls_offers_the_channel_bound_mechanisms_too(server: Any) -> None:
    """XEP-0368 direct TLS: the stream's TLS connection is found there as after STARTTLS."""
    import ssl

    async def features() -> str:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", server.direct_tls_port, ssl=context,
                                                       server_hostname="localhost")
        stream = RawStream(reader, writer, "localhost")
        text = await stream.restart()
        stream.close()
        return text

    assert "<mechanism>HT-SHA-256-EXPR</mechanism><mechanism>HT-SHA-256-ENDP</mechanism>" in await wait(features())


@pytest_twisted.ensureDeferred
async def test_scram_sha_256_plus_binds_to_the_tls_server_end_point(server: Any) -> None:
    """Item 2's SCRAM-SHA-256-PLUS: after TLS the -PLUS mechanisms come before their plain forms,
    XEP-0440 lists the channel binding types, and a SCRAM exchange bound to tls-server-end-point
    (the hash of the certificate the client saw) logs in; data of another channel does not."""
    import base64

    from tests.rawxmpp import RawStream
    from tests.unit.test_scram import client_final

    await server.add_user("ann@localhost", "secret")

    async def log_in(cb: bytes | None = None) -> str:
        stream = await RawStream.open_tls(server.c2s_port)
        assert "<mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism>" in stream.features
        assert "<channel-binding type='tls-server-end-point'/>" in stream.features
        certificate = stream.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        header = b"p=tls-server-end-point,,"
        first = await stream.auth("SCRAM-SHA-256-PLUS", header + b"n=ann,r=cnonce")
        server_first = base64.b64decode(first.split(">", 1)[1].split("<", 1)[0])
        bound = cb if cb is not None else hashlib.sha256(certificate).digest()
        answer = await stream.respond(client_final("SCRAM-SHA-256", "secret", "n=ann,r=cnonce", server_first,
                                                   header + bound))
        stream.close()
        return answer

    assert (await wait(log_in())).startswith("<success")
    assert "<failure" in await wait(log_in(b"\x00" * 32))
