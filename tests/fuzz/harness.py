"""The in-process harness of the fuzz suite: a `World` (the real negotiator, checkers, sites,
session manager and router over Twisted's test doubles and an inline SQLite store), what a stream
must look like (`ServerOutput`, `stream_problems`, `assert_proper`), the log watch, and the run
profiles. The fuzz tests (`test_c2s_fuzz.py`, `test_component_fuzz.py`), `test_no_cycles` and the
in-process benchmarks import it, so none of them imports a test module.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.words.xish import domish
from zope.interface import implementer

from sns_xmpp.auth.local import LocalAccountChecker
from sns_xmpp.auth.scram import derive_all
from sns_xmpp.auth.social import SocialLoginChecker
from sns_xmpp.auth.throttle import AuthThrottle, ThrottlePolicy
from sns_xmpp.http.login import SocialWeb
from sns_xmpp.http.pending import PendingLogins
from sns_xmpp.observe.metrics import Metrics
from sns_xmpp.sites.facebook import sign_request
from sns_xmpp.sites.interface import SiteContext
from sns_xmpp.sites.registry import load_sites
from sns_xmpp.store import composite
from sns_xmpp.store.sqlite import SQLiteDatabase
from sns_xmpp.xmpp.c2s import ClientStream, ClientStreamFactory, StreamLimits
from sns_xmpp.xmpp.features.built_in import install_features
from sns_xmpp.xmpp.negotiation import C2SSettings, ClientNegotiator
from sns_xmpp.xmpp.routing import LocalRoute, StanzaRouter
from sns_xmpp.xmpp.sessions import SessionManager
from tests.fuzz.strategies import (
    NS_SASL,
    NS_STANZAS,
    NS_STREAMS,
    NS_TLS,
)
from tests.oidc_provider import OIDCProvider, _ProviderResource

# -- profiles and counts --------------------------------------------------------------------------

PROFILE = os.environ.get("SNS_XMPP_FUZZ_PROFILE", "default")
LONG = PROFILE == "long"
SECONDS_PER_TEST = float(os.environ.get("SNS_XMPP_FUZZ_SECONDS", "60"))
REPORT = os.environ.get("SNS_XMPP_FUZZ_REPORT")

settings.register_profile(
    "sns-xmpp-fuzz", deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example])

# What the examples did (how streams ended, SASL results), per test, for the report.
OUTCOMES: Counter[str] = Counter()


def note(label: str) -> None:
    event(label)
    OUTCOMES[label] += 1


class FuzzRun:
    """Runs one @given test: a fixed number of examples, or (long profile) batches until time is up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.examples = 0

    def tick(self) -> None:
        self.examples += 1

    def __call__(self, test: Callable[[], None], examples: int) -> None:
        runner = settings(settings.get_profile("sns-xmpp-fuzz"), max_examples=examples)(test)
        started = time.monotonic()
        OUTCOMES.clear()
        batches = 0
        passed = False
        try:
            while True:
                runner()
                batches += 1
                if not LONG or time.monotonic() - started >= SECONDS_PER_TEST:
                    break
            passed = True
        finally:
            if REPORT:
                with open(REPORT, "a", encoding="utf-8") as report:
                    report.write(json.dumps({
                        "test": self.name, "examples": self.examples, "batches": batches, "passed": passed,
                        "seconds": round(time.monotonic() - started, 1),
                        "outcomes": dict(OUTCOMES.most_common()),
                    }) + "\n")
            if os.environ.get("SNS_XMPP_FUZZ_VERBOSE"):
                print(f"\n{self.name}: {self.examples} examples, {dict(OUTCOMES.most_common())}")


# -- the log: no failures, no errors --------------------------------------------------------------

reactor_log = Logger(namespace="twisted.internet.tcp")


def _is_bad(logged: dict[str, Any]) -> bool:
    if "log_failure" in logged or (logged.get("isError") and logged.get("failure") is not None):
        return True
    level = logged.get("log_level")
    return level in (LogLevel.error, LogLevel.critical) and str(logged.get("log_namespace", "")).startswith("sns_xmpp")


def _describe(logged: dict[str, Any]) -> str:
    failure = logged.get("log_failure") or logged.get("failure")
    trace = failure.getTraceback() if isinstance(failure, Failure) else ""
    return f"{logged.get('log_namespace')}: {formatEvent(logged)}\n{trace}"


@implementer(ILogObserver)
class LogWatch:
    def __init__(self) -> None:
        self.bad: list[dict[str, Any]] = []

    def __call__(self, logged: dict[str, Any]) -> None:
        if _is_bad(logged):
            self.bad.append(logged)

    def check(self) -> None:
        bad, self.bad = self.bad, []
        assert not bad, "logged failures or errors:\n" + "\n".join(_describe(e) for e in bad)


@pytest.fixture
def watch() -> Iterator[LogWatch]:
    observer = LogWatch()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)
    observer.check()


# -- reading what the server sent -----------------------------------------------------------------

# RFC 6120 4.9.3, 6.5 and 8.3.3.
STREAM_CONDITIONS = frozenset({
    "bad-format", "bad-namespace-prefix", "conflict", "connection-timeout", "host-gone", "host-unknown",
    "improper-addressing", "internal-server-error", "invalid-from", "invalid-namespace", "invalid-xml",
    "not-authorized", "not-well-formed", "policy-violation", "remote-connection-failed", "reset",
    "resource-constraint", "restricted-xml", "see-other-host", "system-shutdown", "undefined-condition",
    "unsupported-encoding", "unsupported-feature", "unsupported-stanza-type", "unsupported-version"})
SASL_CONDITIONS = frozenset({
    "aborted", "account-disabled", "credentials-expired", "encryption-required", "incorrect-encoding",
    "invalid-authzid", "invalid-mechanism", "malformed-request", "mechanism-too-weak", "not-authorized",
    "temporary-auth-failure"})
STANZA_CONDITIONS = frozenset({
    "bad-request", "conflict", "feature-not-implemented", "forbidden", "gone", "internal-server-error",
    "item-not-found", "jid-malformed", "not-acceptable", "not-allowed", "not-authorized", "policy-violation",
    "recipient-unavailable", "redirect", "registration-required", "remote-server-not-found",
    "remote-server-timeout", "resource-constraint", "service-unavailable", "subscription-required",
    "undefined-condition", "unexpected-request"})
MARK = b"<stream:stream"


@dataclass
class Segment:
    """One server document: from a stream header to its footer (or to now)."""

    parser: Any
    header: domish.Element | None = None
    elements: list[domish.Element] = field(default_factory=list)
    ended: bool = False


class ServerOutput:
    """The server's bytes parsed as they come; a new header (a stream restart) starts a new document."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.problems: list[str] = []
        self.raw = bytearray()

    def _new_segment(self) -> Segment:
        parser = domish.elementStream()
        segment = Segment(parser)

        def started(root: domish.Element) -> None:
            segment.header = root

        def ended() -> None:
            segment.ended = True

        parser.DocumentStartEvent = started
        parser.ElementEvent = segment.elements.append
        parser.DocumentEndEvent = ended
        self.segments.append(segment)
        return segment

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.raw += data
        del self.raw[:-8192]  # only the tail, for messages
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            self.problems.append(f"server output is not UTF-8: {data[:200]!r}")
            return
        cuts = sorted({0, len(data), *(match.start() for match in re.finditer(re.escape(MARK), data))})
        for begin, end in zip(cuts, cuts[1:], strict=False):
            piece = data[begin:end]
            if piece.startswith(MARK):
                self._parse(self._new_segment(), piece)
            elif self.segments:
                self._parse(self.segments[-1], piece)
            elif piece.strip():
                self.problems.append(f"server wrote before its stream header: {piece[:200]!r}")

    def feed_one(self, write: bytes) -> None:
        """One write of the server: it must be exactly one header, one element or one footer, so that
        nothing the server relays can turn into more (or fewer) stanzas on the wire."""
        counts = (len(self.segments), len(self.elements), sum(s.ended for s in self.segments))
        problems = len(self.problems)
        self.feed(write)
        if len(self.problems) > problems:
            return
        added = (len(self.segments) - counts[0], len(self.elements) - counts[1],
                 sum(s.ended for s in self.segments) - counts[2])
        if added not in ((1, 0, 0), (0, 1, 0), (0, 0, 1)) and write.strip():
            self.problems.append(f"one write became {added[1]} elements, {added[0]} headers and {added[2]} footers "
                                 f"on the wire: {write[:600]!r}")

    def _parse(self, segment: Segment, piece: bytes) -> None:
        if not piece:
            return
        if segment.ended:
            self.problems.append(f"server wrote after its stream footer: {piece[:200]!r}")
            return
        try:
            segment.parser.parse(piece)
        except domish.ParserError as error:
            self.problems.append(f"server output is not well-formed ({error}): {bytes(self.raw[-600:])!r}")
            segment.ended = True  # no more checks on a broken document

    @property
    def elements(self) -> list[domish.Element]:
        return [element for segment in self.segments for element in segment.elements]

    @property
    def last(self) -> Segment | None:
        return self.segments[-1] if self.segments else None

    def find(self, uri: str | None, name: str) -> list[domish.Element]:
        return [e for e in self.elements if e.name == name and (uri is None or e.uri == uri)]

    def text(self) -> str:
        return bytes(self.raw).decode("utf-8", "replace")


def _condition(element: domish.Element, namespace: str) -> str | None:
    for child in element.elements():
        if child.uri == namespace and child.name != "text":
            return str(child.name)
    return None


def element_problems(element: domish.Element) -> list[str]:
    """RFC 6120 conditions in stream errors, SASL failures and stanza errors, anywhere in *element*."""
    problems: list[str] = []
    if element.uri == NS_STREAMS and element.name == "error":
        condition = _condition(element, "urn:ietf:params:xml:ns:xmpp-streams")
        if condition not in STREAM_CONDITIONS:
            problems.append(f"stream error with condition {condition!r}: {element.toXml()[:300]}")
    elif element.uri == NS_SASL and element.name == "failure":
        condition = _condition(element, NS_SASL)
        if condition not in SASL_CONDITIONS:
            problems.append(f"SASL failure with condition {condition!r}: {element.toXml()[:300]}")
    elif element.name in ("message", "presence", "iq") and element.getAttribute("type") == "error":
        errors = [child for child in element.elements() if child.name == "error"]
        if errors and _condition(errors[-1], NS_STANZAS) not in STANZA_CONDITIONS:
            problems.append(f"stanza error without an RFC 6120 condition: {element.toXml()[:300]}")
    return problems


# -- the in-process server ------------------------------------------------------------------------

DOMAINS = ("localhost", "example.org")
PUBLIC_URL = "http://xmpp.test"
START = 1_700_000_000
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-2"}
HMAC_KEY = "sns-secret-0123456789"
FACEBOOK_SECRET = "facebook-app-secret-0123456789"
TLS_CONTEXT = object()  # the fake transport only records that TLS started
UNWIND = b"?>-->]]>'\">"  # ends a PI, a comment, a CDATA section, an attribute value or a tag
END = b"</stream:stream>"
DEFAULT_THROTTLE = ThrottlePolicy()
PROBE = b"<iq type='get' id='fuzz-probe' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"


@implementer(ITLSTransport)
class FakeTLSTransport(StringTransport):  # type: ignore[misc]  # a double: the TCP options go unused
    """A StringTransport that "starts TLS" and remembers anything written after it was told to close."""

    def __init__(self, peer: IPv4Address) -> None:
        super().__init__(peerAddress=peer)
        self.tls_started = False
        self.lost = False
        self.late = b""
        self.writes: list[bytes] = []  # one per XmlStream.send: a header, one element, or the footer

    def startTLS(self, context: object) -> None:
        self.tls_started = True

    def write(self, data: bytes) -> None:
        if self.lost:
            return  # as a real transport does once the connection is gone
        if self.disconnecting:
            self.late += data  # would go out after the footer, before the socket closes
        else:
            self.writes.append(data)
        super().write(data)


class InlineStore:
    """The IStore methods over a real SQLite database, run at once instead of in a worker thread."""

    def __init__(self, database: SQLiteDatabase) -> None:
        self._database = database

    def run(self, work: Callable[[SQLiteDatabase], Any]) -> defer.Deferred:
        """A feature module's own SQL (IStore.run), at once."""
        return defer.maybeDeferred(work, self._database)

    run_read = run_aside = run

    def __getattr__(self, name: str) -> Callable[..., defer.Deferred]:
        if hasattr(composite, name):  # the store's one-call combinations of database calls
            combined = getattr(composite, name)
            return lambda *args, **kwargs: defer.maybeDeferred(combined, self._database, *args, **kwargs)
        method = getattr(self._database, name)
        return lambda *args, **kwargs: defer.maybeDeferred(method, *args, **kwargs)


@dataclass(frozen=True)
class Login:
    username: str
    password: str
    site: str  # "local" or the site id
    scram: bool = True


class Conn:
    """One client connection to the in-process server."""

    def __init__(self, world: World, factory: ClientStreamFactory, host: str) -> None:
        self.world = world
        self.factory = factory
        peer = IPv4Address("TCP", host, 40000 + len(host))
        self.stream: ClientStream = factory.buildProtocol(peer)
        self.received: list[tuple[str | None, str]] = []  # the top-level elements the server parsed
        original = self.stream.onElement

        def observe(element: domish.Element) -> None:
            self.received.append((element.uri, element.name))
            original(element)

        self.stream.onElement = observe  # type: ignore[method-assign]  # before the parser binds it
        self.transport = FakeTLSTransport(peer)
        self.output = ServerOutput()
        self.stream.makeConnection(self.transport)
        self.collect()
        self.lost = False

    @property
    def negotiator(self) -> ClientNegotiator:
        return self.stream.authenticator

    @property
    def closed(self) -> bool:
        return self.stream.closed or self.transport.disconnecting

    def collect(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        writes, self.transport.writes = self.transport.writes, []
        for write in writes:
            self.output.feed_one(write)
        return data

    def feed(self, data: bytes) -> bytes:
        if not self.lost:
            try:
                self.stream.dataReceived(data)
            except Exception:
                # What the reactor does with an exception from dataReceived: log it, drop the connection.
                reactor_log.failure("Unhandled Error from dataReceived")
                self.collect()
                self.lose()
        return self.collect()

    def feed_all(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.feed(chunk)

    def lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.collect()
            self.transport.lost = True
            self.stream.connectionLost(Failure(ConnectionDone()))

    def last_challenge(self, since: int = 0) -> bytes | None:
        """The payload of the last SASL answer if it is a challenge, among the elements received
        from index *since* on (an attempt's own answers: an <auth/> sent while a slowed failure is
        pending gets none, and an earlier attempt's challenge is not its own)."""
        for element in reversed(self.output.elements[since:]):
            if element.uri == NS_SASL and element.name in ("challenge", "success", "failure"):
                if element.name != "challenge":
                    return None
                text = str(element)
                return b"" if text in ("", "=") else base64.b64decode(text)
        return None

    def successes(self) -> int:
        return len(self.output.find(NS_SASL, "success"))

    def answered(self, identifier: str) -> bool:
        return any(e.name == "iq" and e.getAttribute("id") == identifier and e.getAttribute("type") == "result"
                   for e in self.output.elements)


class World:
    """The server's parts, wired as build_server wires them, on a fake clock and an inline SQLite store."""

    def __init__(self, path: Path, features_off: tuple[str, ...] = ()) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(START)
        self.database = SQLiteDatabase(path / "fuzz.sqlite3")
        self.store = InlineStore(self.database)
        self.provider = OIDCProvider()
        self.provider.port_number = 9  # only names the issuer: requests go through StubTreq
        self.provider.clock = self.clock
        context = SiteContext(self.clock, PUBLIC_URL, path / "data", DOMAINS,  # type: ignore[arg-type]
                              http_client=StubTreq(_ProviderResource(self.provider)))
        self.sites = load_sites({
            "demo": {"plugin": "demo"},
            "sns": {"plugin": "hmac", "keys": {"k1": HMAC_KEY}, "login_url": "https://sns.example/?r={callback}"},
            "facebook": {"plugin": "facebook", "app_id": "1234", "app_secret": FACEBOOK_SECRET,
                         "single_use": True},
            "idp": {"plugin": "oidc", "issuer": self.provider.issuer, "client_id": self.provider.client_id,
                    "client_secret": self.provider.client_secret},
        }, context)
        for site in self.sites:
            site.start()
        assert self.sites.get("idp").status() == "ok"  # type: ignore[union-attr]
        self.metrics = Metrics()
        self.checker = SocialLoginChecker(self.store, self.sites, LocalAccountChecker(self.store),  # type: ignore[arg-type]
                                          self.clock, PUBLIC_URL, b"fuzz-salt-key", self.metrics)
        self.router = StanzaRouter(self.metrics)
        self.sessions = SessionManager(DOMAINS, self.store, self.clock, self.router.route, self.metrics,  # type: ignore[arg-type]
                                       max_resources=10)
        for domain in DOMAINS:
            self.router.addRoute(domain, LocalRoute(self.sessions.deliver))
        self.web = SocialWeb(self.sites, PendingLogins(self.clock), PUBLIC_URL, DOMAINS[0], self.clock,
                             self.checker.linked_jid)
        install_features(self.sessions, self.router, self.clock, sites=self.web, disabled=features_off)
        for user, password in PASSWORDS.items():
            self.database.create_account(f"{user}@localhost", derive_all(password), START)
        self._hosts = 0
        self._minted = 0

    def forget_user_data(self) -> None:
        """Offline messages, rosters and subscription requests left by earlier examples (junk
        stanzas store them) go, so that what one example sees does not depend on the ones before."""
        with closing(sqlite3.connect(self.database.path)) as db, db:
            for table in ("offline_messages", "roster_items", "subscription_requests", "roster_versions",
                          "private_storage"):
                db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names

    def settings(self, throttle: ThrottlePolicy | None = DEFAULT_THROTTLE, max_failures: int = 3) -> C2SSettings:
        return C2SSettings(domains=list(DOMAINS), checker=self.checker, sessions=self.sessions,
                           tls_context=TLS_CONTEXT, require_tls=True, max_auth_failures=max_failures,  # type: ignore[arg-type]
                           metrics=self.metrics,
                           throttle=AuthThrottle(self.clock, throttle) if throttle is not None else None)

    def factory(self, settings: C2SSettings, secure: bool, max_stanza_bytes: int = 16384) -> ClientStreamFactory:
        limits = StreamLimits(max_stanza_bytes=max_stanza_bytes, auth_timeout=30, idle_timeout=300, ping_timeout=60,
                              max_connections_per_ip=1000)
        return ClientStreamFactory(lambda: ClientNegotiator(settings), limits, self.clock, secure, self.metrics.limit)

    def plaintext_factory(self) -> ClientStreamFactory:
        """Streams as the benchmark daemon makes them: PLAIN allowed without TLS, no throttle."""
        base = self.settings(throttle=None)
        settings = C2SSettings(domains=base.domains, checker=base.checker, sessions=base.sessions,
                               tls_context=None, require_tls=False, allow_plain_without_tls=True,
                               metrics=base.metrics)
        return self.factory(settings, secure=False)

    def connect(self, factory: ClientStreamFactory) -> Conn:
        self._hosts += 1
        return Conn(self, factory, f"10.{self._hosts >> 16 & 255}.{self._hosts >> 8 & 255}.{self._hosts & 255}")

    # credentials, minted now on the world's clock

    def social(self, site: str, account: str) -> Login:
        now = int(self.clock.seconds())
        if site in ("demo", "sns"):
            hmac_site: Any = self.sites.get(site)
            identifier, token = hmac_site.mint(account, f"s{now}", now + 600)
            return Login(f"{identifier}@{site}", token, site)
        if site == "facebook":
            user_id = str(int(hashlib.sha256(account.encode()).hexdigest()[:12], 16))
            self._minted += 1  # the site is single-use: every token differs
            token = sign_request(FACEBOOK_SECRET, {"algorithm": "HMAC-SHA256", "user_id": user_id,
                                                   "issued_at": now, "expires": now + 600, "n": self._minted})
            return Login(f"{user_id}@facebook", token, site, scram=False)
        oidc: Any = self.sites.get("idp")
        token = self.provider.id_token(now, oidc.issue_nonce(), sub=account)
        return Login(f"{account}@idp", token, "idp", scram=False)

    def logins(self, account: str) -> list[Login]:
        return [Login("alice", PASSWORDS["alice"], "local"), *(self.social(site, account) for site in
                                                               ("demo", "sns", "facebook", "idp"))]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with tempfile.TemporaryDirectory(prefix="sns-xmpp-fuzz-") as path:
        made = World(Path(path))
        yield made
        made.database.close()


ACCOUNT = st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True)


# -- the stream properties ------------------------------------------------------------------------


def stream_problems(conn: Conn) -> list[str]:
    """Everything wrong with how this stream has behaved so far (see the module docstring)."""
    output = conn.output
    problems = list(output.problems)
    for element in output.elements:
        problems += element_problems(element)
    for segment in output.segments[:-1]:
        if segment.ended:
            problems.append("a stream footer followed by another stream header")
    errors = output.find(NS_STREAMS, "error")
    if len(errors) > 1:
        problems.append(f"{len(errors)} stream errors on one stream")
    if conn.transport.late:
        problems.append(f"written after the footer: {conn.transport.late[:200]!r}")
    if conn.lost:
        return problems
    disconnecting = conn.transport.disconnecting
    if conn.stream.closed != disconnecting:
        problems.append(f"half-closed: stream.closed={conn.stream.closed} but transport.disconnecting="
                        f"{disconnecting}")
    last = output.last
    if disconnecting:
        if last is None or not last.ended:
            problems.append("the transport was closed without </stream:stream>")
            return problems
        final = last.elements[-1] if last.elements else None
        if errors and final is not errors[-1]:
            problems.append("the stream error is not the last element before </stream:stream>")
        proper = (
            errors
            or conn.stream.ended_by == "client"
            or (NS_STREAMS, "error") in conn.received
            or (final is not None and final.uri == NS_SASL and final.name == "failure"
                and conn.negotiator.failures >= conn.negotiator.settings.max_auth_failures)
            or (final is not None and final.uri == NS_TLS and final.name == "failure")
        )
        if not proper:
            problems.append(f"closed without a stream error, a final SASL failure or the client's end; last "
                            f"element: {final.toXml()[:200] if final is not None else None}")
    elif last is not None and last.ended:
        problems.append("</stream:stream> was sent but the transport was left open")
    return problems


def assert_proper(conn: Conn, context: str = "") -> None:
    problems = stream_problems(conn)
    assert not problems, f"{context}\n" + "\n".join(problems) + f"\n--- server output ---\n{conn.output.text()[-3000:]}"


def outcome(conn: Conn) -> str:
    """A short label of where the stream stands, for Hypothesis' statistics."""
    errors = conn.output.find(NS_STREAMS, "error")
    if errors:
        texts = [str(child) for child in errors[-1].elements() if child.name == "text"]
        return f"stream error {_condition(errors[-1], 'urn:ietf:params:xml:ns:xmpp-streams')}" + (
            f" ({texts[0]})" if texts else "")
    if conn.transport.disconnecting:
        return "closed by the client" if conn.stream.ended_by == "client" else "closed after SASL failures"
    if conn.stream.bound:
        return "bound"
    if conn.negotiator.login is not None:
        return "authenticated"
    return "open" if conn.output.segments else "open, no header yet"


def finish(conn: Conn, watch: LogWatch, *, can_end: bool = True) -> None:
    """Check, then end the stream from the client side as a client may always do, then drop it."""
    note(outcome(conn))
    for failure in conn.output.find(NS_SASL, "failure"):
        note(f"SASL failure {_condition(failure, NS_SASL)}")
    if conn.successes():
        note("SASL success")
    assert_proper(conn, "after the input")
    if can_end and not conn.closed:
        conn.feed(UNWIND + END)
        if conn.output.segments:
            assert conn.transport.disconnecting, "the client's end of the stream was not honoured"
        else:
            # No stream header parsed yet; expat can wait in the prolog for good (it does after a quote
            # and a NUL). The size limit still ends such a stream.
            conn.feed(b" " * conn.stream.max_stanza_bytes)
            assert conn.transport.disconnecting, "a stream that never started outlived the size limit"
        assert_proper(conn, "after the client ended the stream")
    conn.lose()
    assert_proper(conn, "after the connection was lost")
    watch.check()


# -- 1. stream headers ----------------------------------------------------------------------------
