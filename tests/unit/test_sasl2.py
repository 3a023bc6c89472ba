"""SASL2 (XEP-0388), Bind2 (XEP-0386) and FAST (XEP-0484) on a client stream, fed raw XML through
Twisted's StringTransport and checked against the XEPs' example exchanges."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.interfaces import ISystemHandle
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from sns_xmpp.auth.fast import FastTokens, initiator, responder, token_hash
from sns_xmpp.auth.throttle import AuthThrottle, ThrottlePolicy
from sns_xmpp.store.sqlite import SQLiteDatabase
from sns_xmpp.xmpp.c2s import ClientStream, ClientStreamFactory, StreamLimits
from sns_xmpp.xmpp.negotiation import C2SSettings, ClientNegotiator
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.featured import featured
from tests.unit.test_negotiation import HEADER, OnePasswordChecker, TLSlessTransport, output
from tests.unit.test_stream_management import MemoryStore

NOW = 1_800_000_000.0
AGENT = "d4565fa7-4d72-4749-b3d3-740edbf87770"  # XEP-0388's example
SASL2 = "urn:xmpp:sasl:2"
ERRORS = "urn:ietf:params:xml:ns:xmpp-sasl"


class Synchronous:
    """An SQLite database behind the store's Deferred interface, answering at once."""

    def __init__(self, db: SQLiteDatabase) -> None:
        self.db = db

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.db, name)
        return lambda *args: defer.maybeDeferred(method, *args)


class World:
    def __init__(self, tmp_path: Path, secure: bool = True, block_after: int = 20, rotation: float = 0.0) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.db = SQLiteDatabase(tmp_path / "store.sqlite")
        self.db.create_account("alice@localhost", [], NOW)
        self.sessions = featured(SessionManager(["localhost"], MemoryStore(), self.clock,  # type: ignore[arg-type]
                                                lambda stanza: None))
        self.fast = FastTokens(Synchronous(self.db), self.clock, lifetime=30 * 86400,  # type: ignore[arg-type]
                               rotation=rotation)
        self.throttle = AuthThrottle(self.clock, ThrottlePolicy(free_failures=0, block_after=block_after,
                                                                max_delay=0))
        self.settings = C2SSettings(domains=["localhost"], checker=OnePasswordChecker(), sessions=self.sessions,
                                    tls_context=object(), require_tls=True, max_auth_failures=100,
                                    throttle=self.throttle, sasl2=True, fast=self.fast)
        self.factory = ClientStreamFactory(lambda: ClientNegotiator(self.settings), StreamLimits(65536),
                                           self.clock, secure)

    def connect(self) -> tuple[ClientStream, StringTransport, str]:
        stream = self.factory.buildProtocol(None)
        transport = TLSlessTransport()
        stream.makeConnection(transport)
        stream.dataReceived(HEADER.format(to="localhost").encode())
        return stream, transport, output(transport)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def authenticate(mechanism: str, initial: bytes | None, extra: str = "") -> bytes:
    response = f"<initial-response>{b64(initial)}</initial-response>" if initial is not None else ""
    return (f"<authenticate xmlns='{SASL2}' mechanism='{mechanism}'>{response}"
            f"<user-agent id='{AGENT}'><software>AwesomeXMPP</software><device>Kiva's Phone</device></user-agent>"
            f"{extra}</authenticate>").encode()


def token_of(answer: str) -> str:
    match = re.search(r"<token xmlns='urn:xmpp:fast:0' expiry='([^']+)' token='([^']+)'/>", answer)
    assert match, answer
    return match.group(2)


def fast_login(world: World, token: str, count: int, extra: str = "") -> str:
    stream, transport, _ = world.connect()
    proof = initiator(token.encode())
    stream.dataReceived(authenticate("HT-SHA-256-NONE", b"alice\x00" + proof,
                                     f"<fast xmlns='urn:xmpp:fast:0' count='{count}'{extra}/>"))
    return output(transport)


def test_sasl2_is_offered_after_tls_only_with_sasl1s_mechanisms_bind2_inline_features_and_fast(
        tmp_path: Path) -> None:
    """XEP-0388 3.1 and XEP-0386 3.1: <authentication/> lists SASL1's mechanisms, XEP-0198's <sm/>
    (a <resume/> may ride in the <authenticate/>), Bind2 with the features that can ride inline
    (stream management registers <enable/>), and FAST's HT mechanism; never on a stream without
    TLS, where an <authenticate/> gets encryption-required."""
    _stream, _transport, features = World(tmp_path).connect()
    assert (f"<authentication xmlns='{SASL2}'><mechanism>SCRAM-SHA-256</mechanism><mechanism>PLAIN</mechanism>"
            "<inline><sm xmlns='urn:xmpp:sm:3'/><bind xmlns='urn:xmpp:bind:0'><inline><feature var='urn:xmpp:sm:3'/>"
            "<feature var='urn:xmpp:carbons:2'/><feature var='urn:xmpp:csi:0'/></inline></bind>"
            "<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-NONE</mechanism></fast></inline>"
            "</authentication>") in features
    (tmp_path / "plain").mkdir()
    insecure = World(tmp_path / "plain", secure=False)
    stream, transport, features = insecure.connect()
    assert "urn:xmpp:sasl:2" not in features
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right"))
    assert output(transport) == (f"<failure xmlns='{SASL2}'><encryption-required xmlns='{ERRORS}'/>"
                                 "<text>STARTTLS first</text></failure>")


def test_plain_with_bind2_stream_management_inline_and_a_fast_token_in_one_round_trip(tmp_path: Path) -> None:
    """XEP-0388/0386/0484 example: one <authenticate/> with the initial response, the user agent,
    Bind2 with a tag and <enable/> for XEP-0198, and a token request; one <success/> with the full
    JID, <bound/> holding <enabled/>, and the token; no stream restart. The token is 86 characters
    (64 random bytes), stored only as its SHA-256 digest."""
    world = World(tmp_path)
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right",
                                     "<bind xmlns='urn:xmpp:bind:0'><tag>AwesomeXMPP</tag>"
                                     "<enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>"
                                     "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"))
    answer = output(transport)
    suffix = hashlib.sha256(f"alice@localhost\x00{AGENT}".encode()).hexdigest()[:8]
    assert answer.startswith(f"<success xmlns='{SASL2}'><authorization-identifier>"
                             f"alice@localhost/AwesomeXMPP.{suffix}</authorization-identifier>"
                             "<bound xmlns='urn:xmpp:bind:0'><enabled xmlns='urn:xmpp:sm:3' id='"), answer
    assert "resume='true'" in answer and "<stream:stream" not in answer and "<stream:features" not in answer
    token = token_of(answer)
    assert len(token) == 86
    assert "expiry='2027-02-14T08:00:00Z'" in answer  # 30 days after NOW (2027-01-15T08:00:00Z)
    [session] = world.sessions.resources("alice@localhost")
    assert session.ledger is not None, "stream management enabled inline"
    assert world.db._read("SELECT token_hash FROM fast_tokens", ()) == [(token_hash(token).hex(),)]


def test_a_challenge_and_response_then_success_without_bind2_sends_the_features_after_authentication(
        tmp_path: Path) -> None:
    """XEP-0388: no initial response gets an empty <challenge/>, the <response/> completes it; the
    authorization identifier is the bare JID while nothing is bound, and the features after
    authentication follow at once (no restart), for RFC 6120 binding."""
    world = World(tmp_path)
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", None))
    assert output(transport) == f"<challenge xmlns='{SASL2}'>=</challenge>"
    plain = b64(b"\x00alice\x00right")
    stream.dataReceived(f"<response xmlns='{SASL2}'>{plain}</response>".encode())
    answer = output(transport)
    assert answer.startswith(f"<success xmlns='{SASL2}'><authorization-identifier>alice@localhost"
                             "</authorization-identifier></success><stream:features><bind xmlns="), answer
    stream.dataReceived(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                        b"<resource>r</resource></bind></iq>")
    assert "<jid>alice@localhost/r</jid>" in output(transport)


def test_a_sasl2_failure_says_why_and_is_throttled_as_a_sasl1_one(tmp_path: Path) -> None:
    """XEP-0388 <failure/>: the SASL condition in RFC 6120's namespace and the text. Its failures
    count against the same (address, account) pair as SASL1's: after the block, the right password
    is refused alike over either."""
    world = World(tmp_path, block_after=2)
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00wrong"))
    assert output(transport) == (f"<failure xmlns='{SASL2}'><not-authorized xmlns='{ERRORS}'/>"
                                 "<text>wrong</text></failure>")
    stream.dataReceived(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                        + b64(b"\x00alice\x00wrong").encode() + b"</auth>")
    assert "<not-authorized/>" in output(transport)
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right"))
    assert output(transport) == (f"<failure xmlns='{SASL2}'><temporary-auth-failure xmlns='{ERRORS}'/>"
                                 "<text>too many failed attempts; try again later</text></failure>")
    assert world.throttle.blocked("address:192.168.1.1", "account:alice")
    stream.dataReceived(authenticate("NOPE", b""))
    assert f"<invalid-mechanism xmlns='{ERRORS}'/>" in output(transport)


def test_hmac_with_the_stored_digest_equals_hmac_with_the_token() -> None:
    """RFC 2104 section 3: a key longer than the hash's block (64 bytes for SHA-256) is replaced by
    its hash, so the server, keeping only SHA-256(token), computes exactly the client's HMACs."""
    from sns_xmpp.auth.fast import new_token

    token = new_token()
    assert len(token.encode()) > 64
    assert initiator(token.encode()) == initiator(token_hash(token))
    assert responder(token.encode(), b"cb") == responder(token_hash(token), b"cb")
    assert hmac.new(token.encode(), b"Initiator", "sha256").digest() == initiator(token_hash(token))


def test_fast_logins_rotate_refuse_replays_keep_the_old_token_for_a_grace_period_and_invalidate(
        tmp_path: Path) -> None:
    """XEP-0484 with HT-SHA-256-NONE: the initial response is authcid NUL HMAC(token, "Initiator");
    <success/> carries HMAC(token, "Responder") as additional data and a new token. A count not above
    the last is refused; the rotated-out token works during the grace period only; invalidate ends
    the token; a revocation deletes the account's tokens."""
    world = World(tmp_path)
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right",
                                     "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"))
    first = token_of(output(transport))

    answer = fast_login(world, first, 1)
    assert answer.startswith(f"<success xmlns='{SASL2}'><additional-data>{b64(responder(first.encode()))}"
                             "</additional-data><authorization-identifier>alice@localhost"
                             "</authorization-identifier><token xmlns='urn:xmpp:fast:0'"), answer
    second = token_of(answer)
    assert second != first
    replayed = fast_login(world, second, 0)
    assert "malformed-request" in replayed  # counts start at 1
    assert fast_login(world, first, 1) == (f"<failure xmlns='{SASL2}'><not-authorized xmlns='{ERRORS}'/>"
                                           "<text>FAST count replayed</text></failure>")
    third = token_of(fast_login(world, first, 2))  # the old token, within its grace period
    world.clock.advance(world.fast.grace + 1)
    assert "<not-authorized" in fast_login(world, first, 3), "rotated out, grace over"
    assert "<not-authorized" in fast_login(world, "x" * 86, 1), "never issued"
    answer = fast_login(world, third, 1, " invalidate='true'")
    assert answer.startswith(f"<success xmlns='{SASL2}'>") and "<token" not in answer
    assert "<not-authorized" in fast_login(world, third, 2), "invalidated"

    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right",
                                     "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"))
    fourth = token_of(output(transport))
    assert world.db.revoke("alice@localhost", "admin", NOW + 100) is not None
    assert "<not-authorized" in fast_login(world, fourth, 1), "revoked"


def test_a_token_rotates_when_due_and_logins_before_that_write_nothing_yet_still_ask_the_row(
        tmp_path: Path) -> None:
    """XEP-0484 3.4: the server rotates a token that is due. Before that a FAST login changes no
    row (a store write per login was a sixth of its cost), yet refuses a count this node has seen,
    and the row still decides: a revoked token fails at once, although this node knew it."""
    world = World(tmp_path, rotation=3600)
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right",
                                     "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"))
    first = token_of(output(transport))
    issued = world.db.fast_token("alice@localhost", AGENT)
    for count in (1, 2):
        answer = fast_login(world, first, count)
        assert answer.startswith(f"<success xmlns='{SASL2}'>") and "<token" not in answer, answer
    assert world.db.fast_token("alice@localhost", AGENT) == issued, "nothing written"
    assert fast_login(world, first, 2).endswith("<text>FAST count replayed</text></failure>")

    world.clock.advance(3600)
    answer = fast_login(world, first, 3)
    second = token_of(answer)
    rotated = world.db.fast_token("alice@localhost", AGENT)
    assert second != first and rotated is not None and rotated.previous_hash == issued.token_hash
    assert "<token" not in fast_login(world, second, 1), "new again: not due"
    assert world.db.revoke("alice@localhost", "admin", NOW + 4000) is not None
    assert "<not-authorized" in fast_login(world, second, 2), "revoked: the row decides"


def test_an_expired_token_is_refused_but_is_no_guess(tmp_path: Path) -> None:
    """A genuine token past its lifetime is refused, and, like expired social credentials, does not
    count toward blocking: a phone retrying it in the background never locks its owner out."""
    world = World(tmp_path, block_after=2)
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right",
                                     "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"))
    token = token_of(output(transport))
    world.clock.advance(30 * 86400 + 1)
    for count in (1, 2, 3):
        assert "<not-authorized" in fast_login(world, token, count)
    assert not world.throttle.blocked("address:192.168.1.1", "account:alice")


def test_a_fast_login_needs_the_fast_element_but_not_its_count(tmp_path: Path) -> None:
    """XEP-0484 3.3: a token's login carries <fast/>; without it, it is malformed. Its count is
    required only with TLS 0-RTT, which this server does not take: a login without one (xmpp.js
    sends none) succeeds and counts as one above the last, so a count given later must pass it."""
    world = World(tmp_path)
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("HT-SHA-256-NONE", b"alice\x00" + b"x" * 32, ""))
    assert f"<malformed-request xmlns='{ERRORS}'/>" in output(transport)

    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right",
                                     "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"))
    token = token_of(output(transport))
    for _ in range(2):
        stream, transport, _ = world.connect()
        stream.dataReceived(authenticate("HT-SHA-256-NONE", b"alice\x00" + initiator(token.encode()),
                                         "<fast xmlns='urn:xmpp:fast:0'/>"))
        answer = output(transport)
        assert answer.startswith(f"<success xmlns='{SASL2}'>"), answer
    assert fast_login(world, token, 2).endswith("<text>FAST count replayed</text></failure>")
    assert fast_login(world, token, 3).startswith(f"<success xmlns='{SASL2}'>")


# -- channel binding: HT-SHA-256-EXPR (RFC 9266) and HT-SHA-256-ENDP (RFC 5929) --------------------


def tls_pair(tmp_path: Path, max_version: int | None = None) -> tuple[Any, Any]:
    """A server and a client pyOpenSSL connection over memory BIOs, handshaken, with the server's
    own self-signed certificate (xmpp/tls.py)."""
    import datetime

    from OpenSSL import SSL

    from sns_xmpp.xmpp.tls import ensure_self_signed

    certificate, key = ensure_self_signed(tmp_path / "tls", ["localhost"], datetime.datetime.now(datetime.UTC))
    server_context = SSL.Context(SSL.TLS_METHOD)
    server_context.use_certificate_chain_file(str(certificate))
    server_context.use_privatekey_file(str(key))
    client_context = SSL.Context(SSL.TLS_METHOD)
    if max_version is not None:
        client_context.set_max_proto_version(max_version)
    server, client = SSL.Connection(server_context, None), SSL.Connection(client_context, None)
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(10):
        for one, other in ((client, server), (server, client)):
            try:
                one.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                other.bio_write(one.bio_read(65536))
            except SSL.WantReadError:
                pass
    return server, client


@implementer(ISystemHandle)
class TLSTransport(TLSlessTransport):
    """A StringTransport whose system handle is the server's end of a real TLS connection."""

    def __init__(self, connection: Any) -> None:
        super().__init__()
        self.connection = connection

    def getHandle(self) -> Any:  # noqa: N802 - Twisted's name
        return self.connection


def test_channel_binding_data_match_the_client_side_of_the_tls_connection(tmp_path: Path) -> None:
    """tls-exporter is the TLS 1.3 exporter with RFC 9266's label and no context, as the client
    computes it; tls-server-end-point is SHA-256 of the server's (ECDSA-SHA256) certificate, as the
    client sees it (RFC 5929 4.1). Over TLS 1.2, tls-exporter is not offered."""
    from OpenSSL import SSL

    from sns_xmpp.xmpp.sasl2 import channel_binding, channel_bindings

    server, client = tls_pair(tmp_path)
    assert server.get_protocol_version_name() == "TLSv1.3"
    assert channel_bindings(server) == ("HT-SHA-256-EXPR", "HT-SHA-256-ENDP", "HT-SHA-256-NONE")
    assert channel_binding(server, "HT-SHA-256-EXPR") == client.export_keying_material(
        b"EXPORTER-Channel-Binding", 32)
    peer = client.get_peer_certificate().to_cryptography()
    from cryptography.hazmat.primitives.serialization import Encoding

    assert channel_binding(server, "HT-SHA-256-ENDP") == hashlib.sha256(peer.public_bytes(Encoding.DER)).digest()
    assert channel_binding(server, "HT-SHA-256-NONE") == b""
    assert channel_binding(None, "HT-SHA-256-ENDP") is None
    old, _ = tls_pair(tmp_path, SSL.TLS1_2_VERSION)
    assert channel_bindings(old) == ("HT-SHA-256-ENDP", "HT-SHA-256-NONE")
    assert channel_binding(old, "HT-SHA-256-EXPR") is None


@pytest.mark.parametrize("mechanism", ["HT-SHA-256-EXPR", "HT-SHA-256-ENDP"])
def test_a_channel_bound_fast_login_holds_only_on_its_own_tls_connection(tmp_path: Path, mechanism: str) -> None:
    """XEP-0484 with a channel-bound HT mechanism: the stream offers it, the proof HMAC(token,
    "Initiator" || cb-data) over this connection's data logs in and the server answers HMAC(token,
    "Responder" || cb-data); the same proof made for another connection (a token relayed by a man
    in the middle) is refused, and so is the token with HT-SHA-256-NONE (no downgrade)."""
    world = World(tmp_path)
    stream, transport, _ = world.connect()
    stream.dataReceived(authenticate("PLAIN", b"\x00alice\x00right",
                                     f"<request-token xmlns='urn:xmpp:fast:0' mechanism='{mechanism}'/>"))
    token = token_of(output(transport)).encode()
    server, client = tls_pair(tmp_path)
    if mechanism == "HT-SHA-256-EXPR":
        cb = client.export_keying_material(b"EXPORTER-Channel-Binding", 32)
    else:
        from cryptography.hazmat.primitives.serialization import Encoding

        cb = hashlib.sha256(client.get_peer_certificate().to_cryptography().public_bytes(Encoding.DER)).digest()

    def bound_login(proof_cb: bytes, count: int) -> str:
        stream = world.factory.buildProtocol(None)
        transport = TLSTransport(server)
        stream.makeConnection(transport)
        stream.dataReceived(HEADER.format(to="localhost").encode())
        features = output(transport)
        assert f"<mechanism>{mechanism}</mechanism>" in features.split("<fast xmlns='urn:xmpp:fast:0'>")[1]
        stream.dataReceived(authenticate(mechanism, b"alice\x00" + initiator(token, proof_cb),
                                         f"<fast xmlns='urn:xmpp:fast:0' count='{count}'/>"))
        return output(transport)

    assert "<not-authorized" in bound_login(b"another connection's data", 1)
    unbound = fast_login(world, token.decode(), 1)  # the same token without channel binding: no downgrade
    assert f"<text>this token needs {mechanism}</text>" in unbound, unbound
    answer = bound_login(cb, 2)
    assert answer.startswith(f"<success xmlns='{SASL2}'><additional-data>{b64(responder(token, cb))}"), answer
    _stream, plain, features = world.connect()  # no TLS connection to bind to: not offered, refused
    assert mechanism not in features


@pytest.mark.parametrize("identifier", ["alice@localhost/phone.1a2b3c4d", "a&b<c>'d\"@localhost/r&<>'\""])
@pytest.mark.parametrize("additional_data", [None, b"", b"\x00responder\xff" * 3])
@pytest.mark.parametrize("bound", [None, []])
@pytest.mark.parametrize("token", [None, "tok-en_1", "a&b<c>'d\""])
def test_the_success_text_is_the_success_element_serialised(identifier: str, additional_data: bytes | None,
                                                            bound: list[Any] | None, token: str | None) -> None:
    """success_xml, the text a login's <success/> is written as, is byte for byte what serialising
    success_element on a client stream gives, for every part it may hold (escaped text and
    attributes included); with children in <bound/> it leaves the element to the serialiser."""
    from sns_xmpp.auth.fast import IssuedToken
    from sns_xmpp.xmpp.sasl2 import success_element, success_xml

    issued = IssuedToken(token, "HT-SHA-256-NONE", NOW) if token is not None else None
    # What ClientStream.serialize reads of the stream: its default namespace and root prefixes.
    stream = SimpleNamespace(namespace="jabber:client", prefixes={"http://etherx.jabber.org/streams": "stream"})
    expected = ClientStream.serialize(stream, success_element(identifier, additional_data, bound, issued))  # type: ignore[arg-type]
    assert success_xml(identifier, additional_data, bound, issued) == expected
    from twisted.words.xish import domish
    assert success_xml(identifier, additional_data, [domish.Element(("urn:xmpp:sm:3", "enabled"))], issued) is None
