"""Fuzzing the client stream: generated and mutated input must end cleanly or keep working.

Most of the suite drives ``ClientStream`` in-process, with Twisted's test doubles: a
``StringTransport`` that can "start TLS", a ``MemoryReactorClock``, the real negotiator, the real
social checker and sites (the OpenID provider of ``tests/oidc_provider.py`` served through
``treq.testing.StubTreq``), the real session manager and router, and the real SQLite database
called inline. One test runs a real server on loopback (the ``start_server`` fixture) and checks
that an honest slixmpp session keeps exchanging messages while fuzz connections run beside it.

Properties, checked after every example:

- nothing raises out of ``dataReceived`` and nothing is logged with ``log.failure`` or at error
  level (the stream's error boundary logs handler exceptions that way, so they count);
- the server's output is well-formed UTF-8 XML, one document per stream restart, and each write
  is exactly one header, one element or one footer (so relayed XML cannot become more stanzas);
- a stream the server ends closes the transport after ``</stream:stream>``, and the last element
  before it is a ``<stream:error/>`` with an RFC 6120 condition, or a SASL ``<failure/>`` that used
  up the allowed failures, or the answer to the client's own end of the stream; a stream that
  keeps going has neither sent a footer nor closed its transport; the client can always end it;
- SASL failures and stanza errors use RFC 6120 conditions only;
- the answers do not depend on how the input is split into reads;
- a successful authentication only follows the right credentials, and one changed byte in the
  user name or password of a valid social login is refused, for every built-in site.

The bugs this suite found are fixed; each has a regression test at the end (docs/security.md
lists them). Nothing is stepped around: any logged failure fails the example.

``SNS_XMPP_FUZZ_PROFILE=long`` (``scripts/fuzz``) runs each fuzz test for
``SNS_XMPP_FUZZ_SECONDS`` instead of a fixed number of examples, and ``SNS_XMPP_FUZZ_REPORT``
names a file that collects the number of examples each test ran.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import ssl
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import greenlet
import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from sns_xmpp.auth.checker import AuthenticationFailed
from sns_xmpp.auth.throttle import ThrottlePolicy
from sns_xmpp.config import parse_config
from sns_xmpp.jid import escape_node
from sns_xmpp.xmpp.sasl import PlainAttempt
from tests.conftest import BASE_CONFIG, DEMO_SITE, free_port
from tests.fuzz import strategies as fs
from tests.fuzz.harness import (
    ACCOUNT,
    END,
    PASSWORDS,
    PROBE,
    UNWIND,
    Conn,
    FuzzRun,
    Login,
    LogWatch,
    ServerOutput,
    World,
    _condition,
    _describe,
    _is_bad,
    assert_proper,
    element_problems,
    finish,
    note,
    outcome,
)
from tests.fuzz.harness import watch as watch  # the fixture
from tests.fuzz.harness import world as world  # the fixture
from tests.fuzz.strategies import (
    NS_BIND,
    NS_SASL,
    NS_SM,
    NS_STANZAS,
    NS_STREAMS,
    NS_TLS,
    Node,
    ScramFinal,
    b64,
    good_header,
    sasl_element,
)
from tests.rawxmpp import RawStream
from tests.xmppclient import Client, wait

HEADER_TAILS = (b"", b"", END, b" ", b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
                b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHg=</auth>",
                b"<message to='bob@localhost'><body>hi</body></message>", b"<stream:error><conflict/></stream:error>",
                b"<stream:stream>", b"<![CDATA[x]]>", b"</x>", b"\x00")


def test_fuzz_stream_headers(world: World, watch: LogWatch) -> None:
    """Stream headers with their namespaces, to/from/version and other attributes varied, byte-mutated,
    truncated and split at random points: each stream answers with features or ends properly."""
    run = FuzzRun("stream_headers")

    @given(st.one_of(fs.stream_header().map(lambda h: h.encode("utf-8", "surrogatepass")), st.binary(max_size=64),
                     st.just(good_header())), st.data())
    def body(header: bytes, data: st.DataObject) -> None:
        run.tick()
        if data.draw(st.booleans(), label="mutate"):
            header = data.draw(fs.mutated(header), label="mutated header")
        raw = header + data.draw(st.sampled_from(HEADER_TAILS), label="tail")
        secure = data.draw(st.booleans(), label="direct TLS")
        conn = world.connect(world.factory(world.settings(), secure))
        conn.feed_all(data.draw(fs.split(raw), label="reads"))
        finish(conn, watch)

    run(body, examples=200)


# -- 2. the same bytes, read in different pieces ----------------------------------------------------

STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"


def bind_iq(resource: str | None, identifier: str = "bind") -> bytes:
    inner = "" if resource is None else f"<resource>{fs.escape_text(resource)}</resource>"
    return f"<iq type='set' id='{identifier}'><bind xmlns='{NS_BIND}'>{inner}</bind></iq>".encode()


def plain_auth(login: Login, authzid: str = "") -> bytes:
    return sasl_element("auth", b64(f"{authzid}\0{login.username}\0{login.password}".encode()), "PLAIN")


def normalised(text: str) -> str:
    """Server output without what is random per stream: ids, nonces, generated resources."""
    text = re.sub(r" id='[0-9a-f]{16}'", " id='*'", text)
    text = re.sub(r"(<challenge[^>]*>)[^<]*(</challenge>)", r"\1*\2", text)
    text = re.sub(r"/[0-9a-f]{12}(?=['\"<])", "/*", text)
    return text


@st.composite
def negotiation_script(draw: st.DrawFn, logins: list[Login]) -> tuple[bytes, tuple[int, ...], bool]:
    """Bytes of a negotiation (header, STARTTLS, SASL, restart, bind, junk) and the offsets where the
    stream may restart (after <starttls/> and after each <auth/>), which always end a read here: the
    server drops, on purpose, whatever follows those in the same read (the STARTTLS injection fix)."""
    secure = draw(st.booleans())
    header = draw(st.sampled_from([good_header(), good_header("example.org"),
                                   good_header(sender="alice@localhost")]))
    data = header
    cuts: list[int] = []
    if not secure and draw(st.booleans()):
        data += STARTTLS
        cuts.append(len(data))
        data += header
    for _ in range(draw(st.integers(0, 3))):
        step = draw(st.sampled_from(["valid", "valid", "wrong", "raw", "abort", "response", "junk", "iq"]))
        if step == "valid":
            data += plain_auth(draw(st.sampled_from(logins)), draw(st.sampled_from(["", "", "alice@localhost"])))
            cuts.append(len(data))
            data += header + bind_iq(draw(st.sampled_from([None, "fuzz", "", " spaced ", "\u00e9"])))
        elif step == "wrong":
            login = draw(st.sampled_from(logins))
            data += plain_auth(Login(login.username, login.password + "x", login.site))
            cuts.append(len(data))
        elif step == "raw":
            data += sasl_element("auth", draw(fs.payload_text(st.binary(max_size=40))),
                                 draw(st.sampled_from(fs.MECHANISMS + fs.OTHER_MECHANISMS)))
            cuts.append(len(data))
        elif step == "abort":
            data += sasl_element("abort", None)
        elif step == "response":
            data += sasl_element("response", draw(st.sampled_from([None, "=", "AAAA", "!"])))
        elif step == "junk":
            data += draw(fs.stanza()).xml().encode()
        else:
            data += draw(st.sampled_from([bind_iq("x", "early"), b"<iq type='get' id='r'><query "
                                          b"xmlns='jabber:iq:roster'/></iq>", b"<enable xmlns='urn:xmpp:sm:3'/>",
                                          b"<resume xmlns='urn:xmpp:sm:3' previd='nope' h='0'/>"]))
    data += draw(st.sampled_from([b"", b"", END, b"<![CDATA[", b"<x", UNWIND + END]))
    return data, tuple(cuts), secure


def test_fuzz_answers_do_not_depend_on_how_input_is_read(world: World, watch: LogWatch) -> None:
    """The same bytes, once in as few reads as the stream resets allow and once cut at random points,
    get the same answers (ids and nonces aside) and the same ending."""
    run = FuzzRun("chunking")

    @given(st.data())
    def body(data: st.DataObject) -> None:
        run.tick()
        account = data.draw(ACCOUNT, label="account")
        logins = [login for login in world.logins(account) if login.site != "facebook"]  # single-use tokens
        script, cuts, secure = data.draw(negotiation_script(logins), label="script")
        outcomes = []
        for reads in (st.just(_pieces(script, cuts)), fs.split(script, cuts)):
            world.forget_user_data()  # both readings start from the same state
            conn = world.connect(world.factory(world.settings(), secure))
            conn.feed_all(data.draw(reads, label="reads"))
            for _ in range(10):
                world.clock.advance(1)
            conn.collect()
            assert_proper(conn)
            if not outcomes:
                note(outcome(conn))
            outcomes.append((normalised(conn.output.text()), conn.transport.disconnecting))
            conn.lose()
            watch.check()
        assert outcomes[0] == outcomes[1], "the answers depend on how the input was read"

    run(body, examples=120)


def _pieces(data: bytes, cuts: tuple[int, ...]) -> list[bytes]:
    points = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


# -- 3. SASL --------------------------------------------------------------------------------------


def scram_final_message(mechanism: str, sent_first: bytes, server_first: bytes, password: str,
                        final: ScramFinal) -> tuple[bytes, bool, bytes]:
    """The client-final-message for *server_first*, edited as *final* says; whether the edit or the
    password must make it fail; and the server signature a right answer earns (RFC 5802)."""
    name = "sha1" if mechanism == "SCRAM-SHA-1" else "sha256"
    parts = sent_first.decode("utf-8", "replace").split(",")
    gs2_header, first_bare = ",".join(parts[:2]) + ",", ",".join(parts[2:])
    server = dict(field.split("=", 1) for field in server_first.decode().split(",") if "=" in field)
    salted = hashlib.pbkdf2_hmac(name, (password if final.right_password else password + "!").encode(),
                                 base64.b64decode(server["s"]), int(server["i"]))
    client_key = hmac.digest(salted, b"Client Key", name)
    stored_key = hashlib.new(name, client_key).digest()
    binding = gs2_header if final.channel_binding is None else final.channel_binding
    fields = [f"c={base64.b64encode(binding.encode()).decode()}", f"r={server['r']}"]
    auth_message = f"{first_bare},{server_first.decode()},{','.join(fields)}".encode()
    proof = bytes(a ^ b for a, b in zip(client_key, hmac.digest(stored_key, auth_message, name), strict=True))
    if final.proof_edit == "flip":
        at = final.flip_at % len(proof)
        proof = proof[:at] + bytes([proof[at] ^ 1]) + proof[at + 1:]
    elif final.proof_edit == "truncate":
        proof = proof[:-1]
    elif final.proof_edit == "extend":
        proof += b"\0"
    proof_text = base64.b64encode(proof).decode()
    if final.proof_edit == "not-base64":
        proof_text = proof_text[:-2] + "!" + proof_text[-1:]
    elif final.proof_edit == "empty":
        proof_text = ""
    elif final.proof_edit == "pad":
        proof_text = proof_text.rstrip("=")
    clean = [*fields, f"p={proof_text}"]
    edited = final.edit.apply(clean)
    must_fail = (not final.right_password or final.proof_edit != "none" or binding != gs2_header
                 or edited != clean)
    server_key = hmac.digest(salted, b"Server Key", name)
    signature = b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, name))
    return ",".join(edited).encode(), must_fail, signature


def _plain_parts(message: bytes) -> tuple[str, str, str] | None:
    parts = message.split(b"\0")
    if len(parts) != 3:
        return None
    try:
        authzid, authcid, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        return None
    return authzid, authcid, password


THROTTLES = (None, ThrottlePolicy(), ThrottlePolicy(free_failures=0, max_delay=2, block_after=3, block_seconds=60))


def test_fuzz_sasl(world: World, watch: LogWatch) -> None:
    """SASL with bad base64, empty and '=' payloads, oversized ones, unknown mechanisms, PLAIN with the
    wrong number of NULs, SCRAM messages with one field changed, OAUTHBEARER gs2 headers and pairs:
    each attempt fails with an RFC 6120 condition or succeeds only with the right credentials."""
    run = FuzzRun("sasl")

    @given(st.data())
    def body(data: st.DataObject) -> None:
        run.tick()
        logins = world.logins(data.draw(ACCOUNT, label="account"))
        secrets = {(login.username, login.password) for login in logins}
        oidc = logins[-1]
        settings = world.settings(data.draw(st.sampled_from(THROTTLES), label="throttle"),
                                  data.draw(st.sampled_from([1, 3, 10]), label="max failures"))
        secure = data.draw(st.booleans(), label="direct TLS")
        conn = world.connect(world.factory(settings, secure))
        claim = data.draw(st.one_of(st.none(), st.sampled_from(logins).map(
            lambda login: login.username.replace("@", "\\40") + "@localhost")), label="from")
        conn.feed(good_header(sender=claim))
        if not secure and data.draw(st.sampled_from([True] * 4 + [False]), label="starttls"):
            conn.feed(STARTTLS)  # in a read of its own, as a TLS client sends it
            assert conn.transport.tls_started
            conn.feed(good_header(sender=claim))
        attempts = 0
        for _ in range(data.draw(st.integers(1, 4), label="steps")):
            if conn.closed:
                break
            clean = attempts == 0 and conn.stream.secure
            before = conn.successes()
            action = data.draw(st.sampled_from(["plain", "plain", "scram", "scram", "scram", "oauthbearer",
                                                "oauthbearer", "raw", "abort", "stray", "pipelined"]), label="action")
            attempts += 1
            if action == "plain":
                login = data.draw(st.sampled_from(logins), label="login")
                valid = data.draw(st.booleans(), label="valid")
                message = (f"\0{login.username}\0{login.password}".encode() if valid else data.draw(
                    fs.plain_message([x.username for x in logins], [x.password for x in logins]), label="message"))
                text = b64(message) if valid else data.draw(fs.payload_text(st.just(message)), label="text")
                conn.feed(sasl_element("auth", text, "PLAIN"))
                if valid and clean:
                    assert conn.successes() == before + 1, f"the right PLAIN credentials failed:\n{conn.output.text()}"
                if conn.successes() > before:
                    parts = _plain_parts(message)
                    assert parts is not None and parts[1:] in secrets, f"PLAIN success for {message!r}"
            elif action == "scram":
                login = data.draw(st.sampled_from(logins), label="login")
                mechanism = data.draw(st.sampled_from(["SCRAM-SHA-1", "SCRAM-SHA-256"]), label="mechanism")
                first = data.draw(fs.scram_first([login.username]), label="client-first")
                mark = len(conn.output.elements)
                if data.draw(st.booleans(), label="initial response"):
                    conn.feed(sasl_element("auth", b64(first.message()), mechanism))
                else:
                    conn.feed(sasl_element("auth", None, mechanism))
                    if conn.last_challenge(mark) != b"" or conn.closed:
                        continue
                    mark = len(conn.output.elements)
                    conn.feed(sasl_element("response", b64(first.message())))
                challenge = conn.last_challenge(mark)
                if not challenge or conn.closed:
                    failures = conn.output.find(NS_SASL, "failure")
                    note("SCRAM: no server-first" + (f" ({_condition(failures[-1], NS_SASL)})" if failures else ""))
                    continue
                final = data.draw(fs.scram_final(), label="client-final")
                message, must_fail, signature = scram_final_message(mechanism, first.message(), challenge,
                                                                    login.password, final)
                conn.feed(sasl_element("response", b64(message)))
                gained = conn.successes() - before
                note(f"SCRAM client-final {'refused' if not gained else 'accepted'}"
                     f"{' (must fail)' if must_fail else ''}")
                if must_fail:
                    assert gained == 0, f"SCRAM success after a changed client-final: {message!r}"
                right = (first.untouched and first.username == fs.scram_name(login.username) and first.authzid == ""
                         and first.gs2_flag in ("n", "y") and login.scram)
                if right and not must_fail and clean:
                    assert gained == 1, f"the right SCRAM exchange failed:\n{conn.output.text()}"
                if gained:
                    success = conn.output.find(NS_SASL, "success")[-1]
                    assert base64.b64decode(str(success)) == signature, "wrong server signature"
            elif action == "oauthbearer":
                valid = data.draw(st.booleans(), label="valid")
                message = (f"n,,\x01auth=Bearer {oidc.password}\x01\x01".encode() if valid
                           else data.draw(fs.oauthbearer_message([oidc.password]), label="message"))
                text = b64(message) if valid else data.draw(fs.payload_text(st.just(message)), label="text")
                mark = len(conn.output.elements)
                conn.feed(sasl_element("auth", text, "OAUTHBEARER"))
                if conn.last_challenge(mark) is not None and not conn.closed:
                    conn.feed(data.draw(st.sampled_from([sasl_element("response", b64(b"\x01")),
                                                         sasl_element("response", "="), sasl_element("abort", None),
                                                         sasl_element("response", b64(message))]), label="answer"))
                if valid and clean:
                    assert conn.successes() == before + 1, f"the right bearer token failed:\n{conn.output.text()}"
                if conn.successes() > before:
                    assert oidc.password.encode() in message, f"OAUTHBEARER success for {message!r}"
            elif action == "raw":
                conn.feed(sasl_element(
                    data.draw(st.sampled_from(["auth", "auth", "auth", "response", "success", "challenge", "failure",
                                               "x"]), label="element"),
                    data.draw(fs.payload_text(st.binary(max_size=64)), label="text"),
                    data.draw(st.one_of(st.none(), st.sampled_from(fs.MECHANISMS + fs.OTHER_MECHANISMS),
                                        fs.xml_text(10)), label="mechanism"),
                    data.draw(st.sampled_from([NS_SASL, NS_SASL, NS_SASL, "jabber:client", NS_TLS, "urn:x"]),
                              label="namespace")))
                assert conn.successes() == before, "success for a random SASL element"
            elif action == "abort":
                conn.feed(sasl_element("abort", data.draw(st.sampled_from([None, "x"]), label="text")))
            elif action == "stray":
                conn.feed(sasl_element("response", data.draw(fs.payload_text(st.binary(max_size=32)), label="text")))
            else:  # several failing attempts in one read
                pieces = data.draw(st.lists(st.sampled_from([
                    sasl_element("auth", b64(b"\0alice\0wrong"), "PLAIN"), sasl_element("abort", None),
                    sasl_element("auth", "!!", "PLAIN"), sasl_element("auth", None, "X-NONE"),
                    sasl_element("response", "AAAA")]), min_size=2, max_size=5), label="pipelined")
                conn.feed(b"".join(pieces))
                assert conn.successes() == before
            if conn.successes() > before:
                assert conn.stream.secure and (secure or conn.transport.tls_started), "success without TLS"
                break
        for _ in range(10):  # let slowed failure answers out
            world.clock.advance(1)
        conn.collect()
        finish(conn, watch)

    run(body, examples=150)


# -- 4. stanzas after authentication ----------------------------------------------------------------


def log_in(world: World, login: Login, resource: str | None, *, sweep: bool = False,
           max_stanza_bytes: int = 65536) -> Conn:
    """A direct-TLS stream authenticated with PLAIN and (unless binding is refused) bound."""
    factory = world.factory(world.settings(), True, max_stanza_bytes)
    if sweep:
        factory.startFactory()
    conn = world.connect(factory)
    conn.feed(good_header())
    conn.feed(plain_auth(login))
    assert conn.successes() == 1, f"{login} did not log in:\n{conn.output.text()}"
    conn.feed(good_header())
    conn.feed(bind_iq(resource))
    return conn


class Honest:
    """A well-behaved bound session beside the fuzzing: it must stay open and keep answering."""

    def __init__(self, world: World) -> None:
        self.conn = log_in(world, Login("bob", PASSWORDS["bob"], "local"), "honest")
        assert self.conn.answered("bind"), self.conn.output.text()
        self.conn.feed(b"<presence/>")
        self.pings = 0

    def check(self) -> None:
        self.pings += 1
        identifier = f"honest-{self.pings}"
        self.conn.feed(f"<iq type='get' id='{identifier}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>".encode())
        assert self.conn.answered(identifier), "the honest session got no answer to its ping"
        assert not self.conn.closed, "the honest session was closed"
        assert_proper(self.conn, "the honest session")
        for segment in self.conn.output.segments:
            segment.elements.clear()  # what it received is checked; do not keep it for ever


def test_fuzz_stanzas_after_authentication(world: World, watch: LogWatch) -> None:
    """After binding: stanzas with odd addressing, unknown namespaces, huge attribute values and nested
    junk, stream management elements, roster and disco queries. A stream either still answers a ping
    afterwards or has ended with a stream error; the honest session beside it is unaffected."""
    run = FuzzRun("stanzas")
    honest = Honest(world)

    @given(st.data())
    def body(data: st.DataObject) -> None:
        run.tick()
        account = data.draw(ACCOUNT, label="account")
        login = data.draw(st.sampled_from([Login("alice", PASSWORDS["alice"], "local"), world.social("demo", account),
                                           world.social("idp", account)]), label="login")
        resource = data.draw(st.one_of(st.sampled_from(["fuzz", "honest", None]), fs.weird_value(huge=False)),
                             label="resource")
        sweep = data.draw(st.booleans(), label="sweeper")
        conn = log_in(world, login, resource, sweep=sweep)
        try:
            for extra in data.draw(st.lists(st.sampled_from([
                    b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>", b"<enable xmlns='urn:xmpp:sm:3'/>",
                    b"<presence/>", b"<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>",
                    b"<iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"]),
                    max_size=3), label="setup"):
                conn.feed(extra)
            stanzas: list[Node] = data.draw(st.lists(fs.stanza(), min_size=1, max_size=5), label="stanzas")
            raw = b"".join(stanza.xml().encode("utf-8", "surrogatepass") for stanza in stanzas)
            mutate = data.draw(st.sampled_from([False] * 4 + [True]), label="mutate")
            if mutate:
                raw = data.draw(fs.mutated(raw), label="mutated")
            conn.feed_all(data.draw(fs.split(raw), label="reads"))
            if not conn.closed and not mutate:
                conn.feed(PROBE)
                probe = [e for e in conn.output.elements if e.name == "iq" and e.getAttribute("id") == "fuzz-probe"]
                assert probe or conn.closed, f"no answer to a ping after the stanzas:\n{conn.output.text()[-3000:]}"
                note("probe answered" if probe else "closed by the probe")
            for _ in range(data.draw(st.sampled_from([0, 0, 5, 70]), label="idle seconds") // 5):
                world.clock.advance(5)  # with the sweeper: idle pings and their deadline
                conn.collect()
            honest.conn.collect()
            finish(conn, watch, can_end=not mutate)
        finally:
            conn.lose()
            conn.factory.stopFactory()
            world.clock.advance(301)  # detached (resumable) sessions expire
        honest.check()
        watch.check()

    run(body, examples=120)
    honest.conn.lose()


# -- 5. one changed byte in a social login ----------------------------------------------------------


def plain_result(world: World, username: bytes, password: bytes) -> Any:
    """What SASL PLAIN answers for these bytes: a LoginResult, or the AuthenticationFailed refusing them."""
    outcomes: list[Any] = []
    PlainAttempt(world.checker, "localhost").respond(b"\0" + username + b"\0" + password).addBoth(outcomes.append)
    assert outcomes, "the check did not finish at once (everything here is in memory)"
    result = outcomes[0]
    if isinstance(result, Failure):
        assert result.check(AuthenticationFailed), result.getTraceback()
        return result.value
    return result


B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
RESPELLINGS = {ord("-"): ord("+"), ord("_"): ord("/"), ord("+"): ord("-"), ord("/"): ord("_")}


@st.composite
def one_byte_change(draw: st.DrawFn, value: bytes) -> tuple[int, int]:
    """(offset, new byte): any byte, a printable one, or a change aimed at an encoding's blind spots
    (the other base64 alphabet, the unused low bits of a segment's last character, letter case).

    Every draw happens whatever *value* holds (tokens differ between runs), so that Hypothesis can
    replay an example.
    """
    kind = draw(st.sampled_from(["any", "printable", "printable", "respell", "last-bits", "case"]))
    position, bits = draw(fs.POSITION), draw(st.integers(1, 3))
    anything, printable = draw(st.integers(0, 255)), draw(st.integers(0x20, 0x7E))
    at = position % len(value)
    spots = [i for i, b in enumerate(value) if b in RESPELLINGS]
    ends = [i - 1 for i, b in enumerate(value) if b == ord(".") and i] + [len(value) - 1]
    if kind == "respell" and spots:
        at = spots[position % len(spots)]
        return at, RESPELLINGS[value[at]]
    if kind == "last-bits" and value[ends[position % len(ends)]] in B64_ALPHABET:
        at = ends[position % len(ends)]
        return at, B64_ALPHABET[B64_ALPHABET.index(value[at]) ^ bits]
    if kind == "case" and chr(value[at]).isalpha() and chr(value[at]).swapcase().isascii():
        return at, ord(chr(value[at]).swapcase())
    byte = anything if kind == "any" else printable
    return at, byte if byte != value[at] else (byte + 1) % 256


SUBJECTS = st.one_of(ACCOUNT, st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=12),
                     st.sampled_from(["User-42", "a@b", "x\\y", "\u00c9lise", "12345678901234567890"]))


def test_fuzz_one_changed_byte_in_a_social_login_is_refused(world: World, watch: LogWatch) -> None:
    """For every built-in site (hmac, demo, facebook, oidc): valid credentials log in through SASL PLAIN,
    and the same credentials with any one byte of the user name or the password changed do not."""
    run = FuzzRun("social_one_byte")

    @given(st.sampled_from(["demo", "sns", "facebook", "idp"]), st.data())
    def body(site: str, data: st.DataObject) -> None:
        run.tick()
        account = data.draw(SUBJECTS if site == "idp" else ACCOUNT, label="account")
        login = world.social(site, account)
        fields = {"username": login.username.encode(), "password": login.password.encode()}
        which = data.draw(st.sampled_from(sorted(fields)), label="field")
        value = fields[which]
        at, byte = data.draw(one_byte_change(value), label="change")
        changed = {**fields, which: value[:at] + bytes([byte]) + value[at + 1:]}
        answer = plain_result(world, changed["username"], changed["password"])
        note(f"change: {site} {which}")
        if not isinstance(answer, AuthenticationFailed):
            if site == "idp" and which == "username" and changed[which].lower() == value.lower():
                note("oidc user name differs only in case: accepted by design")
                return
            raise AssertionError(f"{site}: {which} {value!r} changed to {changed[which]!r} still logs in: {answer}")
        note(f"{site}: refused ({answer.reason})")
        if login.site != "facebook" or which == "username":  # a refused facebook password was not spent
            result = plain_result(world, fields["username"], fields["password"])
            assert not isinstance(result, AuthenticationFailed), f"{site}: the right credentials failed: {result}"
        watch.check()

    run(body, examples=200)


# -- 6. a real server: an honest session keeps working beside the fuzzing -------------------------

HONEST_PASSWORD = "honest-password-0123"


def fuzz_server_config(tmp_path: Path) -> Any:
    """The test configuration, with the auth block raised so fuzz failures from 127.0.0.1 do not lock
    out the fuzz account's good logins (the delays still apply)."""
    text = textwrap.dedent(BASE_CONFIG).format(data=tmp_path / "data", http_port=free_port())
    text = text.replace("direct_tls_port = 0", "direct_tls_port = 0\nauth_block_after = 10000\n"
                                               "max_stanza_bytes = 65536")
    return parse_config(text + textwrap.dedent(DEMO_SITE))


@dataclass(frozen=True)
class RealFuzz:
    """One fuzz connection to the real server: what it sends, in which reads."""

    kind: str  # "header" (plain TCP), "sasl" or "stanzas" (after STARTTLS; stanzas after logging in)
    reads: tuple[bytes, ...]


@st.composite
def real_fuzz(draw: st.DrawFn) -> RealFuzz:
    kind = draw(st.sampled_from(["header", "sasl", "stanzas", "stanzas"]))
    if kind == "header":
        data = draw(st.one_of(fs.stream_header().map(lambda h: h.encode("utf-8", "surrogatepass")),
                              st.binary(max_size=64)))
        if draw(st.booleans()):
            data = draw(fs.mutated(data))
    elif kind == "sasl":
        data = b"".join(draw(st.lists(st.one_of(
            st.builds(lambda text, mechanism: sasl_element("auth", text, mechanism),
                      fs.payload_text(fs.plain_message(["fuzzer", "honest-a"], [HONEST_PASSWORD, "x"])),
                      st.sampled_from(fs.MECHANISMS + fs.OTHER_MECHANISMS)),
            st.sampled_from([sasl_element("abort", None), sasl_element("response", "="), STARTTLS])),
            min_size=1, max_size=4)))
    else:
        stanzas = draw(st.lists(fs.stanza(), min_size=1, max_size=4))
        data = b"".join(stanza.xml().replace("bob@", "honest-b@").encode("utf-8", "surrogatepass")
                        for stanza in stanzas)
    return RealFuzz(kind, tuple(draw(fs.split(data))))


async def read_until(reader: asyncio.StreamReader, done: Callable[[bytes], bool], timeout: float = 15) -> bytes:
    """Read until *done* holds for what arrived, or the server closes the connection; bounded in time."""
    received = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done(received):
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"the server neither answered nor closed in {timeout}s: {received[-500:]!r}")
        chunk = await asyncio.wait_for(reader.read(65536), left)
        if not chunk:
            break
        received += chunk
    return received


async def run_real_fuzz(port: int, fuzz: RealFuzz, resource: str) -> tuple[RealFuzz, bytes, bool]:
    """Send one fuzz connection's bytes; return what the server sent back and whether it closed."""
    if fuzz.kind == "header":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    else:
        stream = await RawStream.open_tls(port)
        reader, writer = stream.reader, stream.writer
        if fuzz.kind == "stanzas":
            await stream.log_in_plain("fuzzer", HONEST_PASSWORD, resource)
    try:
        try:
            for read in fuzz.reads:
                writer.write(read)
                await writer.drain()
            if fuzz.kind == "stanzas":
                writer.write(PROBE)
                answer = await read_until(reader, lambda got: b"fuzz-probe" in got or got.endswith(END))
                writer.write(END)
                answer += await read_until(reader, lambda got: False)
            else:
                writer.write(UNWIND + END)
                answer = await read_until(reader, lambda got: False)
        except ConnectionError:  # the server ended the stream while we were still writing
            answer = await read_until(reader, lambda got: False)
        return fuzz, answer, True
    finally:
        writer.close()


def check_real(fuzz: RealFuzz, answer: bytes) -> None:
    """The server's side of one fuzz connection: well-formed, and ended by the client or with an error."""
    output = ServerOutput()
    if fuzz.kind != "header":  # the headers were read by RawStream; restart a document for the rest
        output.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='" + NS_STREAMS.encode() + b"'>")
    output.feed(answer)
    problems = list(output.problems)
    for element in output.elements:
        problems += element_problems(element)
    last = output.last
    if last is not None and not last.ended:
        problems.append("the server closed the connection without </stream:stream>")
    if fuzz.kind == "stanzas":
        answered = any(e.name == "iq" and e.getAttribute("id") == "fuzz-probe" for e in output.elements)
        errored = bool(output.find(NS_STREAMS, "error"))
        # A client that sends a stream error of its own ends the stream (RFC 6120 4.9.1.1): the
        # server closes its side, with neither an answer nor an error (the closing tag is
        # checked above). Any other element in the streams namespace gets the server's error.
        ended_by_client = NS_STREAMS.encode() in b"".join(fuzz.reads)
        if not answered and not errored and not ended_by_client:
            problems.append("no answer to the ping and no stream error")
        note("real: probe answered" if answered else "real: stream error" if errored
             else "real: closed after the client's stream-level element")
    assert not problems, f"{fuzz}\n" + "\n".join(problems) + f"\n--- server output ---\n{answer[-3000:]!r}"


async def honest_round_trip(a: Client, b: Client, text: str) -> None:
    """honest-a sends honest-b a message and pings the server; both must arrive."""
    a.send_message(mto=b.boundjid.bare, mbody=text, mtype="chat")
    while True:  # the fuzz connections may message honest-b too
        message = await asyncio.wait_for(b.messages.get(), 15)
        if message["body"] == text and message["from"].bare == a.boundjid.bare:
            break
    await a.plugin["xep_0199"].ping(jid="localhost", timeout=15)


def in_greenlet(work: Callable[[], None]) -> defer.Deferred[None]:
    """Run *work* (which may ``pytest_twisted.blockon``) in a greenlet of its own, beside the reactor.

    Tests run inside the reactor's greenlet, where blocking is impossible; Hypothesis runs examples
    one after the other in plain calls. Its engine therefore runs in another greenlet, and each
    example blocks on the network there while the reactor goes on.
    """
    from twisted.internet import reactor

    done: defer.Deferred[None] = defer.Deferred()

    def main() -> None:
        try:
            work()
        except BaseException:
            failure = Failure()
            reactor.callLater(0, done.errback, failure)
        else:
            reactor.callLater(0, done.callback, None)

    greenlet.greenlet(main).switch()
    return done


@pytest_twisted.ensureDeferred
async def test_fuzz_real_server_keeps_an_honest_session(start_server: Callable, tmp_path: Path,
                                                        watch: LogWatch) -> None:
    """A real server on loopback: while bounded batches of fuzz connections (junk headers, SASL junk
    after STARTTLS, stanza junk after logging in) run, an honest slixmpp session exchanges messages and
    pings; every fuzz connection gets well-formed answers and a proper ending."""
    run = FuzzRun("real_server")
    server = await start_server(fuzz_server_config(tmp_path))
    for user in ("honest-a", "honest-b", "fuzzer"):
        await server.add_user(f"{user}@localhost", HONEST_PASSWORD)
    a, b = Client("honest-a@localhost", HONEST_PASSWORD), Client("honest-b@localhost", HONEST_PASSWORD)
    await wait(a.log_in(server.c2s_port))
    await wait(b.log_in(server.c2s_port))
    trips = [0]

    @given(st.lists(real_fuzz(), min_size=1, max_size=4))
    def body(connections: list[RealFuzz]) -> None:
        run.tick()
        trips[0] += 1

        async def together() -> list[Any]:
            return await asyncio.gather(honest_round_trip(a, b, f"round trip {trips[0]}"),
                                        *(run_real_fuzz(server.c2s_port, fuzz, f"fuzz{n}")
                                          for n, fuzz in enumerate(connections)))

        results = pytest_twisted.blockon(wait(together(), 60))
        for fuzz, answer, _ in results[1:]:
            check_real(fuzz, answer)
        watch.check()

    try:
        await in_greenlet(lambda: run(body, examples=10))
        await wait(honest_round_trip(a, b, "after the fuzzing"))
        assert a.is_connected() and b.is_connected()
    finally:
        await wait(a.log_out())
        await wait(b.log_out())


# -- regressions: bugs the fuzzing found, one test each (docs/security.md) -------------------------------


@pytest.fixture
def fresh_world(tmp_path: Path) -> Iterator[World]:
    """A world of its own, so that what the fuzz tests left behind cannot change the outcome."""
    made = World(tmp_path)
    yield made
    made.database.close()


class Failures:
    """The log.failure events logged while it is open."""

    def __enter__(self) -> list[dict[str, Any]]:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._observe)
        return self.events

    def _observe(self, logged: dict[str, Any]) -> None:
        if _is_bad(logged):
            self.events.append(logged)

    def __exit__(self, *exc_info: object) -> None:
        globalLogPublisher.removeObserver(self._observe)


def alice(world: World, resource: str = "laptop") -> Conn:
    conn = log_in(world, Login("alice", PASSWORDS["alice"], "local"), resource)
    assert conn.answered("bind")
    return conn


def test_namespace_uris_are_relayed_escaped(fresh_world: World) -> None:
    """A namespace URI is text like any other: relayed to bob, it must stay inside its element. Here it
    closes alice's message and opens one 'from' admin@localhost on bob's stream (with &#9; for blanks)."""
    bob = log_in(fresh_world, Login("bob", PASSWORDS["bob"], "local"), "phone")
    bob.feed(b"<presence/>")
    sender = alice(fresh_world)
    forged = ("urn:a'/></message><message\tfrom='admin@localhost'\ttype='chat'><body>Your_password_expired"
              "</body></message><message><x\txmlns='urn:b")
    wire = forged.replace("<", "&lt;").replace("\t", "&#9;")
    try:
        sender.feed(f'<message to="bob@localhost" type="chat"><body>hi</body><x xmlns="{wire}"/></message>'.encode())
        bob.collect()
        senders = [e.getAttribute("from") for e in bob.output.elements if e.name == "message"]
        assert senders == ["alice@localhost/laptop"], f"bob received messages from {senders}"
        assert not bob.output.problems, bob.output.problems
    finally:
        sender.lose()
        bob.lose()


def test_plaintext_after_starttls_is_ignored(fresh_world: World) -> None:
    """RFC 6120 5.4.3.3: after <proceed/> only TLS data counts. A PLAIN <auth/> sent in clear text
    right behind <starttls/> (as an attacker on the path can inject it) must not log anybody in."""
    conn = fresh_world.connect(fresh_world.factory(fresh_world.settings(), False))
    conn.feed(good_header())
    conn.feed(STARTTLS + plain_auth(Login("alice", PASSWORDS["alice"], "local")))
    try:
        assert conn.transport.tls_started
        assert conn.successes() == 0 and conn.negotiator.login is None, "clear-text PLAIN accepted as if over TLS"
    finally:
        conn.lose()


@pytest_twisted.ensureDeferred
async def test_plaintext_after_starttls_is_ignored_on_a_real_server(server: Any) -> None:
    """The same over real TCP and TLS: <starttls/> and a clear-text <auth/> in one write. The server must
    not answer that <auth/> over TLS (the check runs in a thread, so the answer is awaited, for at most
    two seconds, after the TLS handshake and the client's new stream header)."""
    await server.add_user("mallory@localhost", HONEST_PASSWORD)

    async def attack() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.c2s_port)
        try:
            writer.write(good_header())
            await reader.readuntil(b"</stream:features>")
            writer.write(STARTTLS + sasl_element("auth", b64(f"\0mallory\0{HONEST_PASSWORD}".encode()), "PLAIN"))
            await reader.readuntil(b"/>")  # <proceed/>
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            await writer.start_tls(context, server_hostname="localhost")
            writer.write(good_header())
            received = b""
            try:
                while b"<success" not in received:
                    chunk = await asyncio.wait_for(reader.read(65536), 2)
                    if not chunk:
                        break
                    received += chunk
            except TimeoutError:
                pass
            return received
        finally:
            writer.close()

    answer = await wait(attack())
    assert b"<success" not in answer, f"a clear-text <auth/> was answered over TLS: {answer!r}"


def test_elements_after_sasl_success_wait_for_the_restart(fresh_world: World) -> None:
    """RFC 6120 6.4.6: after <success/> the client must open a new stream; a bind in the same read
    without it is not part of the new stream and must not bind a resource."""
    conn = fresh_world.connect(fresh_world.factory(fresh_world.settings(), True))
    conn.feed(good_header())
    conn.feed(plain_auth(Login("alice", PASSWORDS["alice"], "local")) + bind_iq("early"))
    try:
        assert conn.successes() == 1
        assert not conn.answered("bind") and not conn.stream.bound, "bound before the stream restart"
    finally:
        conn.lose()


@pytest.mark.parametrize("header_attributes", ["to='a..b'", "to='.'", "to='\u200b'", "to='localhost' from='x@a..b'"])
def test_unparseable_jids_in_the_stream_header(fresh_world: World, header_attributes: str) -> None:
    """Before authentication: a header naming no valid host gets a stream error, not an exception out
    of dataReceived (which Twisted logs and answers by dropping the connection)."""
    conn = fresh_world.connect(fresh_world.factory(fresh_world.settings(), True))
    header = good_header().replace(b"to='localhost'", header_attributes.encode())
    with Failures() as failures:
        conn.feed(header)
    try:
        assert not failures, _describe(failures[0])
        assert conn.output.find(NS_STREAMS, "error") or conn.output.find(None, "features")
    finally:
        conn.lose()


@pytest.mark.parametrize("stanza", [
    b"<message to=''><body>x</body></message>", b"<presence to='a..b'/>", b"<message to='bob@.localhost'/>",
    b"<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid=''/></query></iq>",
    b"<iq type='set' id='r2'><query xmlns='jabber:iq:roster'><item/></query></iq>",
    b"<iq type='set' id='r3'><query xmlns='jabber:iq:roster'><item jid='a..b'/></query></iq>",
    b"<message to='@localhost'><body>x</body></message>", b"<message to='bob@localhost/'><body>x</body></message>"])
def test_unparseable_jids_in_stanzas(fresh_world: World, stanza: bytes) -> None:
    """After binding: a stanza naming an address that is no JID gets jid-malformed or bad-request, and
    nothing is logged as a failure."""
    conn = alice(fresh_world)
    with Failures() as failures:
        conn.feed(stanza)
    try:
        assert not failures, _describe(failures[0])
        conditions = {child.name for e in conn.output.elements if e.getAttribute("type") == "error"
                      for error in e.elements() if error.name == "error" for child in error.elements(NS_STANZAS)}
        assert conditions & {"jid-malformed", "bad-request"}, conn.output.text()[-2000:]
    finally:
        conn.lose()


def test_oversized_jids_are_refused_before_preparation() -> None:
    """RFC 7622 3.3.1/3.2/3.4: each part is at most 1023 bytes. Longer JIDs must be refused before
    stringprep, which costs about a second per 250 kB on the reactor thread, and before parse_jid's
    cache, which keeps up to 65536 of them (of any size)."""
    from sns_xmpp.jid import InvalidFormat, parse_jid

    for text in ("a" * 1024 + "@localhost", "l" * 1024, "alice@localhost/" + "r" * 1024,
                 "\u00e9" * 512 + "@localhost", "alice@localhost/" + "r" * 10**6, "@localhost", "alice@localhost/"):
        with pytest.raises(InvalidFormat):
            parse_jid(text)
            raise AssertionError(f"a JID of {len(text)} characters was accepted")
    longest = "a" * 1023 + "@localhost/" + "\u00e9" * 511
    assert parse_jid(longest).full() == longest


def test_disco_info_without_query(fresh_world: World) -> None:
    """An IQ whose first child is in the disco#info namespace but is not <query/> is no request the
    server knows: service-unavailable (RFC 6120 8.4), without a logged failure."""
    conn = alice(fresh_world)
    with Failures() as failures:
        conn.feed(b"<iq type='get' id='d1' to='localhost'><feature xmlns='http://jabber.org/protocol/disco#info'/>"
                  b"</iq>")
    try:
        assert not failures, _describe(failures[0])
        [reply] = [e for e in conn.output.elements if e.getAttribute("id") == "d1"]
        assert reply.getAttribute("type") == "error" and "service-unavailable" in reply.toXml()
    finally:
        conn.lose()


def test_failed_resumption_is_answered(fresh_world: World) -> None:
    """XEP-0198 5: a <resume/> the server cannot honour is answered with <failed/> (it went unanswered,
    and the client waited until the authentication deadline ended the stream); binding still works."""
    conn = fresh_world.connect(fresh_world.factory(fresh_world.settings(), True))
    conn.feed(good_header())
    conn.feed(plain_auth(Login("alice", PASSWORDS["alice"], "local")))
    conn.feed(good_header())
    conn.feed(b"<resume xmlns='urn:xmpp:sm:3' previd='no-such-session' h='0'/>")
    try:
        assert conn.output.find(NS_SM, "failed"), "no answer to <resume/>"
        conn.feed(bind_iq("after-resume"))
        assert conn.answered("bind")
    finally:
        conn.lose()


def test_stanza_size_is_counted_per_stanza(fresh_world: World) -> None:
    """The limit is per stanza: many small stanzas in one read are fine, and a stanza whose start
    shares a read with a complete one is still counted from its first byte."""
    conn = alice(fresh_world)
    limit = 4096
    conn.stream.max_stanza_bytes = limit
    small = b"<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    try:
        conn.feed(small * (limit // len(small) + 5))
        assert not conn.output.find(NS_STREAMS, "error"), "small stanzas in one read: 'stanza too large'"
    finally:
        conn.lose()
    conn = alice(fresh_world, "other")
    conn.stream.max_stanza_bytes = limit
    try:
        conn.feed(b"<presence/><message to='bob@localhost'><body>" + b"x" * (limit - 100))
        conn.feed(b"x" * (limit - 100))
        conn.feed(b"</body></message>")
        assert conn.output.find(NS_STREAMS, "error"), f"a stanza of {2 * limit - 200} bytes passed a {limit} limit"
    finally:
        conn.lose()


@pytest.mark.parametrize("subject", ["a\\40b", "a\\5cb", "\\40", "a@b\\40c"])
def test_oidc_subject_with_an_escape_sequence(fresh_world: World, subject: str) -> None:
    """The callback hands out '<sub>@<site>' as the user name: it must work whatever the subject holds,
    and so must the JID form of the same name ('<escaped sub>\\40<site>')."""
    login = fresh_world.social("idp", subject)
    for username in (login.username, escape_node(login.username)):
        answer = plain_result(fresh_world, username.encode(), login.password.encode())
        assert not isinstance(answer, AuthenticationFailed), f"{username}: {answer}"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-1", "OAUTHBEARER"])
def test_empty_sasl_response(fresh_world: World, mechanism: str) -> None:
    """<auth/> without an initial response gets an empty challenge; an empty <response/> to it (RFC 6120
    6.4.2 wants '=' for an empty one) must be answered with a SASL failure, not crash the attempt and
    leave the client waiting for the authentication deadline."""
    conn = fresh_world.connect(fresh_world.factory(fresh_world.settings(), True))
    conn.feed(good_header())
    conn.feed(sasl_element("auth", None, mechanism))
    assert conn.last_challenge() == b""
    with Failures() as failures:
        conn.feed(sasl_element("response", None))
    try:
        assert not failures, _describe(failures[0])
        assert conn.output.find(NS_SASL, "failure"), "no answer to the empty <response/>"
    finally:
        conn.lose()


def test_nothing_follows_the_footer_of_a_closing_stream(fresh_world: World) -> None:
    """Between a stream error (or </stream:stream>) and connectionLost the session is still bound; what
    is routed to it then must not be written after </stream:stream> (RFC 6120 4.4: nothing follows)."""
    bob = log_in(fresh_world, Login("bob", PASSWORDS["bob"], "local"), "phone")
    sender = alice(fresh_world)
    try:
        sender.feed(b"<unknown/>")  # unsupported-stanza-type ends alice's stream
        assert sender.transport.disconnecting and not sender.lost
        bob.feed(b"<message to='alice@localhost/laptop' type='chat'><body>late</body></message>")
        sender.collect()
        assert not sender.transport.late, f"written after the footer: {sender.transport.late!r}"
    finally:
        sender.lose()
        bob.lose()
