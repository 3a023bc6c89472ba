"""Limits enforced with Twisted's test doubles: deadlines, pings, per-address caps, throttling, resources."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.auth.throttle import AuthThrottle, ThrottlePolicy
from sns_xmpp.xmpp.c2s import ClientStreamFactory, StreamLimits
from sns_xmpp.xmpp.negotiation import C2SSettings, ClientNegotiator
from sns_xmpp.xmpp.sessions import BindRefused, SessionManager
from tests.unit.feature_tables import FeatureTables
from tests.unit.featured import featured
from tests.unit.test_negotiation import HEADER, OnePasswordChecker, TLSlessTransport, output, stream_error

LIMITS = StreamLimits(max_stanza_bytes=65536, auth_timeout=30, idle_timeout=300, ping_timeout=60,
                      max_connections_per_ip=2)


def no_sessions() -> SessionManager:
    """A session core with no features: these streams go no further than authentication."""
    return SessionManager(["localhost"], None, MemoryReactorClock(), lambda stanza: None)  # type: ignore[arg-type]


def factory_and_clock(throttle: AuthThrottle | None = None, clock: MemoryReactorClock | None = None,  # type: ignore[no-untyped-def]
                      limits: StreamLimits = LIMITS, on_limit: Callable[[str], None] | None = None):
    clock = clock or MemoryReactorClock()
    settings = C2SSettings(domains=["localhost"], checker=OnePasswordChecker(), sessions=no_sessions(),
                           tls_context=None, require_tls=False, allow_plain_without_tls=True, throttle=throttle,
                           max_auth_failures=100)
    factory = ClientStreamFactory(lambda: ClientNegotiator(settings), limits, clock, on_limit=on_limit)
    factory.startFactory()
    return factory, clock


def connect(factory: ClientStreamFactory, host: str = "192.0.2.1"):  # type: ignore[no-untyped-def]
    stream = factory.buildProtocol(IPv4Address("TCP", host, 5000))
    transport = TLSlessTransport(peerAddress=IPv4Address("TCP", host, 5000))
    stream.makeConnection(transport)
    return stream, transport


def test_unauthenticated_streams_are_reaped_and_bound_ones_pinged() -> None:
    factory, clock = factory_and_clock()
    idle, idle_transport = connect(factory)
    busy, busy_transport = connect(factory, "192.0.2.2")
    busy.bound = True
    clock.advance(31)
    clock.advance(10)
    assert stream_error(output(idle_transport)) == "connection-timeout"
    assert not busy_transport.disconnecting

    clock.advance(300)
    assert "<ping xmlns='urn:xmpp:ping'/>" in output(busy_transport)
    busy.dataReceived(b" ")  # any answer counts
    clock.advance(70)
    assert not busy_transport.disconnecting
    clock.advance(300)
    assert "<ping" in output(busy_transport)
    clock.advance(80)
    assert stream_error(output(busy_transport)) == "connection-timeout"


def test_connections_per_address_are_capped() -> None:
    factory, _ = factory_and_clock()
    first, second = connect(factory), connect(factory)
    third_stream, third = connect(factory)
    assert stream_error(output(third)) == "policy-violation"
    assert not first[1].disconnecting and not second[1].disconnecting
    other_stream, other = connect(factory, "192.0.2.9")
    assert not other.disconnecting
    third_stream.connectionLost(None)  # the refused connection closes, as its transport would report
    first[0].connectionLost(None)
    again_stream, again = connect(factory)
    assert not again.disconnecting


def test_one_address_holds_many_bound_streams_but_few_logins_in_progress() -> None:
    """Carrier-grade NAT: thousands of people behind one address, each with a bound stream, may
    not be refused for each other's number; only the logins in progress (not yet bound) have a
    small cap per address, and all streams a large one."""
    limits = StreamLimits(max_stanza_bytes=65536, max_connections_per_ip=5, max_unauthenticated_per_ip=2)
    limited: list[str] = []
    factory, _ = factory_and_clock(limits=limits, on_limit=limited.append)

    bound = []
    for _ in range(2):  # two logins at a time, each bound before the next two begin
        pair = [connect(factory), connect(factory)]
        refused, refused_transport = connect(factory)
        answer = output(refused_transport)
        assert stream_error(answer) == "policy-violation" and "too many logins in progress" in answer
        refused.connectionLost(None)
        for stream, transport in pair:
            assert not transport.disconnecting
            stream.bound = True
            bound.append((stream, transport))
    assert limited == ["unauthenticated-per-address"] * 2

    fifth, fifth_transport = connect(factory)  # four bound and one in progress: five streams
    assert not fifth_transport.disconnecting
    sixth, sixth_transport = connect(factory)
    answer = output(sixth_transport)
    assert stream_error(answer) == "policy-violation" and "too many connections from your address" in answer
    assert limited[-1] == "connections-per-address"
    sixth.connectionLost(None)
    _, elsewhere = connect(factory, "192.0.2.9")  # another address is not touched
    assert not elsewhere.disconnecting

    # A login in progress that ends gives its place back; a bound stream that ends gives back
    # only its place among all streams.
    fifth.connectionLost(None)
    bound[0][0].connectionLost(None)
    assert factory.unbound_per_address["192.0.2.1"] == 0 and factory.per_address["192.0.2.1"] == 3
    again = [connect(factory), connect(factory)]
    assert not any(transport.disconnecting for _, transport in again)


def test_throttle_grows_the_delay_then_blocks_and_forgets() -> None:
    clock = Clock()
    throttle = AuthThrottle(clock, ThrottlePolicy(free_failures=3, max_delay=8, block_after=6, block_seconds=100,
                                                  window=50))
    delays = [throttle.failed("address:a", "account:x") for _ in range(5)]
    assert delays == [0, 0, 0, 0.25, 0.5]
    assert not throttle.blocked("address:a", "account:x")
    throttle.failed("address:a", "account:x")
    assert throttle.blocked("address:a", "account:x")
    # Blocking is per (address, account): the address's other accounts, the account elsewhere go on.
    assert not throttle.blocked("address:a", "account:y") and not throttle.blocked("address:b", "account:x")
    clock.advance(101)
    assert not throttle.blocked("address:a", "account:x")
    clock.advance(60)
    assert throttle.failed("address:a", "account:x") == 0  # the quiet window has passed: a fresh count


def test_blocked_clients_get_temporary_auth_failure_even_with_the_right_password() -> None:
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, ThrottlePolicy(free_failures=1, max_delay=4, block_after=4, block_seconds=600))
    factory, _ = factory_and_clock(throttle, clock)
    stream, transport = connect(factory)
    stream.dataReceived(HEADER.format(to="localhost").encode())
    output(transport)
    wrong = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHdyb25n</auth>"
    right = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHJpZ2h0</auth>"
    stream.dataReceived(wrong)
    assert "<not-authorized/>" in output(transport)
    stream.dataReceived(wrong)
    assert output(transport) == "", "the second failure is answered late"
    clock.advance(0.25)
    assert "<not-authorized/>" in output(transport)
    for _ in range(2):
        stream.dataReceived(wrong)
        clock.advance(4)
        output(transport)
    stream.dataReceived(right)
    assert "<temporary-auth-failure/>" in output(transport)
    other, other_transport = connect(factory, "198.51.100.7")  # another address, the same account
    other.dataReceived(HEADER.format(to="localhost").encode() + right)
    assert "<success" in output(other_transport), "only the pair (address, account) is blocked"


@pytest.mark.parametrize("limit", [2])
def test_an_account_binds_at_most_max_resources(limit: int) -> None:
    class Store(FeatureTables):
        def load_roster(self, owner: str) -> defer.Deferred:
            return defer.succeed(([], [], 0))

    factory, clock = factory_and_clock()
    sessions = featured(SessionManager(["localhost"], Store(), clock, lambda stanza: None,  # type: ignore[arg-type]
                                       max_resources=limit))
    login = LoginResult("alice@localhost", "PLAIN")
    for n in range(limit):
        stream, _ = connect(factory, f"192.0.2.{n + 10}")
        assert sessions.bind(stream, login, f"r{n}").result == f"alice@localhost/r{n}"
    extra, _ = connect(factory, "192.0.2.99")
    refused = sessions.bind(extra, login, "one-too-many")
    failures: list = []
    refused.addErrback(failures.append)
    assert failures[0].check(BindRefused) and failures[0].value.condition == "resource-constraint"
    replacing, _ = connect(factory, "192.0.2.98")
    assert sessions.bind(replacing, login, "r0").result == "alice@localhost/r0"  # a replacement is no extra


def test_a_resource_that_resourceprep_maps_to_nothing_is_a_bad_request() -> None:
    """The fuzzer's find: U+200B alone became an empty resourcepart, and the session was bound as
    the bare JID, where nothing answered it; the client may bind again with another resource."""
    class Store(FeatureTables):
        def load_roster(self, owner: str) -> defer.Deferred:
            return defer.succeed(([], [], 0))

    factory, clock = factory_and_clock()
    sessions = featured(SessionManager(["localhost"], Store(), clock, lambda stanza: None))  # type: ignore[arg-type]
    login = LoginResult("alice@localhost", "PLAIN")
    stream, _ = connect(factory, "192.0.2.10")
    failures: list = []
    sessions.bind(stream, login, "\u200b\u00ad").addErrback(failures.append)
    assert failures[0].check(BindRefused) and failures[0].value.condition == "bad-request"
    assert sessions.users.get("alice@localhost", {}) == {}
    assert sessions.bind(stream, login, "phone\u200b").result == "alice@localhost/phone"


class PendingWritesStore(FeatureTables):
    """A store whose offline writes finish when the test fires them (`writes`)."""

    def __init__(self) -> None:
        self.writes: list[defer.Deferred] = []

    def load_roster(self, owner: str) -> defer.Deferred:
        return defer.succeed(([], [], 0))

    def store_offline_capped(self, owner: str, stanza: str, now: float, cap: int,
                             max_size: int | None = None) -> defer.Deferred:
        self.writes.append(defer.Deferred())
        return self.writes[-1]


def test_an_ack_for_a_message_to_an_offline_user_waits_for_the_disk() -> None:
    """XEP-0198: <a h/> counts a stored message only once the store says it is on disk."""
    store = PendingWritesStore()
    writes = store.writes
    factory, clock = factory_and_clock()
    sessions = featured(SessionManager(["localhost"], store, clock, lambda stanza: sessions.deliver(stanza)))  # type: ignore[arg-type]
    stream, transport = connect(factory)
    stream.dataReceived(HEADER.format(to="localhost").encode())
    sessions.bind(stream, LoginResult("bob@localhost", "PLAIN"), "r")
    output(transport)
    stream.dataReceived(b"<enable xmlns='urn:xmpp:sm:3'/>")
    assert "<enabled xmlns='urn:xmpp:sm:3'/>" in output(transport)
    stream.dataReceived(b"<message to='alice@localhost' type='chat'><body>hi</body></message>"
                        b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq><r xmlns='urn:xmpp:sm:3'/>")
    assert "<a " not in output(transport), "not acknowledged while the write is pending"
    writes[0].callback(1)
    assert "<a xmlns='urn:xmpp:sm:3' h='2'/>" in output(transport)


def test_a_full_offline_queue_bounces_instead_of_dropping() -> None:
    stored: list[str] = []

    class Store(FeatureTables):
        def store_offline_capped(self, owner: str, stanza: str, now: float, cap: int,
                                 max_size: int | None = None) -> defer.Deferred:
            if len(stored) >= cap:
                return defer.succeed(None)
            stored.append(stanza)
            return defer.succeed(len(stored))

    routed: list = []
    sessions = featured(SessionManager(["localhost"], Store(), Clock(), routed.append),  # type: ignore[arg-type]
                        max_offline_messages=2)
    from twisted.words.xish import domish

    for n in range(3):
        message = domish.Element((None, "message"))
        message["to"], message["from"], message["type"] = "alice@localhost", "bob@localhost/r", "chat"
        message.addElement("body", content=f"m{n}")
        sessions.deliver(message)
    assert len(stored) == 2
    [bounce] = routed
    assert (bounce["type"], bounce["to"]) == ("error", "bob@localhost/r")
    assert bounce.error.firstChildElement().name == "service-unavailable"


def test_a_malformed_stanza_past_the_size_limit_gets_the_same_error_however_it_is_read() -> None:
    """Cut before the limit is reached, the stanza's bytes are refused as too large at the end of a
    read before expat meets the error; read whole, expat meets the error first. Both get
    policy-violation (found by the fuzz suite's chunking property)."""
    data = HEADER.format(to="localhost").encode() + b"<message id='" + b"a" * 70000 + b"'><p:query xmlns:p=''/>"
    errors = []
    for pieces in ([data], [data[:5000], data[5000:]], [data[:-40], data[-40:]]):
        factory, _ = factory_and_clock()
        stream, transport = connect(factory)
        for piece in pieces:
            stream.dataReceived(piece)
        errors.append(stream_error(output(transport)))
    assert errors == ["policy-violation"] * 3
    factory, _ = factory_and_clock()
    stream, transport = connect(factory)  # within the limit, the same error is what it is
    stream.dataReceived(HEADER.format(to="localhost").encode() + b"<message><p:query xmlns:p=''/>")
    assert stream_error(output(transport)) == "not-well-formed"


def test_an_error_inside_a_start_tag_past_the_size_limit_gets_the_same_error_however_it_is_read() -> None:
    """expat reports an error in a start tag's attributes (an undefined entity) only once it has
    the whole tag: read in pieces, a tag longer than the limit is refused as too large first; read
    whole, it must be too (found by the component fuzz test's chunking property). An error in text
    is the error, however it is read."""
    header = HEADER.format(to="localhost").encode()
    too_long = header + b"<message from='&amp;&cmp;" + b"a" * 70000 + b"'/>"
    in_text = header + b"<message><body>&cmp;</body></message>" + b"<message id='" + b"a" * 70000
    for data, expected in ((too_long, "policy-violation"), (in_text, "not-well-formed")):
        errors = []
        for pieces in ([data], [data[:65588], data[65588:]], [data[:300], data[300:]]):
            factory, _ = factory_and_clock()
            stream, transport = connect(factory)
            for piece in pieces:
                stream.dataReceived(piece)
            errors.append(stream_error(output(transport)))
        assert errors == [expected] * 3, data[:80]


def test_roster_groups_are_checked_in_linear_time_with_the_rfc_errors() -> None:
    """RFC 6121 2.3.3: duplicate groups are bad-request, an empty group not-acceptable; more than
    MAX_GROUPS_PER_ITEM groups are refused before any is read (de-duplicating ten thousand of them
    in a list took 1.4 s of the reactor's time)."""
    from twisted.words.protocols.jabber.error import StanzaError
    from wokkel.generic import parseXml

    from sns_xmpp.store.records import RosterItem
    from sns_xmpp.xmpp.roster import MAX_GROUPS_PER_ITEM, updated_item

    def refusal(groups: list[str]) -> str | None:
        xml = "".join(f"<group>{g}</group>" for g in groups)
        item = parseXml(f"<item xmlns='jabber:iq:roster' jid='x@localhost'>{xml}</item>")
        try:
            updated_item(RosterItem("x@localhost"), item)
        except StanzaError as error:
            return error.condition
        return None

    assert refusal(["Friends", "Work"]) is None
    assert refusal(["Friends", "Work", "Friends"]) == "bad-request"
    assert refusal(["Friends", ""]) == "not-acceptable"
    assert refusal([f"g{n}" for n in range(MAX_GROUPS_PER_ITEM)]) is None
    assert refusal([f"g{n}" for n in range(MAX_GROUPS_PER_ITEM + 1)]) == "not-acceptable"
    kept = updated_item(RosterItem("x@localhost"), parseXml(
        "<item xmlns='jabber:iq:roster' jid='x@localhost'><group>b</group><group>a</group></item>"))
    assert kept.groups == ("b", "a"), "the client's order is kept"


def test_buffered_bytes_reads_twisteds_write_buffers_tripwire() -> None:
    """Tripwire for the private names buffered_bytes reads (FileDescriptor's dataBuffer, offset,
    _tempDataLen): bytes written and not yet taken by the socket, through Twisted's own doWrite,
    and through a TLSMemoryBIOProtocol in front (direct TLS)."""
    from twisted.internet import abstract
    from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

    from sns_xmpp.xmpp.c2s import buffered_bytes

    class HalfTaking(abstract.FileDescriptor):
        """A socket that takes half of what it is offered."""

        connected = 1

        def writeSomeData(self, data: bytes) -> int:
            return len(data) // 2

    connection = HalfTaking(reactor=MemoryReactorClock())
    connection.write(b"x" * 1000)
    connection.write(b"y" * 200)
    assert buffered_bytes(connection) == 1200
    connection.doWrite()
    assert buffered_bytes(connection) == 600
    from twisted.internet.ssl import CertificateOptions

    tls = TLSMemoryBIOProtocol(TLSMemoryBIOFactory(CertificateOptions(), False, None), None)  # type: ignore[arg-type]
    tls.transport = connection
    assert buffered_bytes(tls) == 600
    assert buffered_bytes(object()) == 0, "a transport without such buffers counts nothing"
    # The same layers lead the archive's flow control to the connection to pause (MAM's writer).
    factory, _ = factory_and_clock()
    stream, _ = connect(factory)
    stream.transport = tls
    assert stream.reader() is connection
    stream.lost = True
    assert stream.reader() is None, "a connection that is gone is not paused"


def test_directed_presences_are_capped_per_session_in_count_and_length() -> None:
    """Past MAX_DIRECTED outstanding directed presences (or MAX_DIRECTED_CHARS of addresses) a new
    one is refused with resource-constraint and not sent; a directed unavailable frees its place,
    and going unavailable announces only the tracked ones."""
    from sns_xmpp.xmpp.features.presence import MAX_DIRECTED, MAX_DIRECTED_CHARS
    from tests.unit.test_stream_management import log_in, world

    routed: list = []
    sessions, factory, clock = world()
    sessions.route = routed.append
    stream, transport, session = log_in(sessions, factory, "mallory@localhost", "192.0.2.9", sm=False)
    stream.dataReceived("".join(f"<presence to='u{n}@example.net'/>" for n in range(MAX_DIRECTED + 5)).encode())
    assert len(session.directed) == MAX_DIRECTED and len(routed) == MAX_DIRECTED
    answer = output(transport)
    assert answer.count("<resource-constraint ") == 5 and "from='u304@example.net'" in answer
    stream.dataReceived(b"<presence to='u0@example.net' type='unavailable'/><presence to='new@example.net'/>")
    assert "new@example.net" in session.directed and "u0@example.net" not in session.directed
    assert "<resource-constraint " not in output(transport)
    routed.clear()
    stream.dataReceived(b"<presence type='unavailable'/>")
    assert len(routed) == MAX_DIRECTED and not session.directed and session.directed_chars == 0

    long_jid = "a" * 1000 + "@example.net"
    stream.dataReceived("".join(f"<presence to='{n}{long_jid}'/>" for n in range(80)).encode())
    assert session.directed_chars <= MAX_DIRECTED_CHARS < 80 * len(long_jid)
    assert "<resource-constraint " in output(transport)


def test_offline_storage_is_bounded_in_size_as_well_as_count() -> None:
    """A few large messages fill a user's offline storage long before the message count does; the
    next one bounces to its sender with service-unavailable, nothing is dropped silently."""
    from twisted.words.xish import domish

    from tests.unit.test_stream_management import MemoryStore

    store = MemoryStore()
    routed: list = []
    sessions = featured(SessionManager(["localhost"], store, Clock(), routed.append),  # type: ignore[arg-type]
                        max_offline_messages=1000, max_offline_bytes=1024 * 1024)
    for n in range(12):
        message = domish.Element((None, "message"))
        message["to"], message["from"], message["type"] = "alice@localhost", "bob@localhost/r", "chat"
        message.addElement("body", content=f"{n} " + "x" * 100_000)
        sessions.deliver(message)
    kept = store.offline["alice@localhost"]
    assert len(kept) == 10 and sum(len(m.stanza) for m in kept) <= 1024 * 1024
    assert [(b["type"], b.error.firstChildElement().name) for b in routed] == [("error", "service-unavailable")] * 2


def test_a_roster_is_bounded_in_items_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every presence change fans out over the roster and every login sends it whole (it must fit
    in the stream's outbound bound), so a roster is capped in items (MAX_ROSTER_ITEMS) and in the
    length of its addresses, names and groups (MAX_ROSTER_CHARS). A new item past either, from a
    roster set, a subscription request or a pre-approval, is refused with resource-constraint and
    not stored; changing or removing existing items still works."""
    from sns_xmpp.xmpp import roster
    from tests.unit.test_stream_management import log_in, world

    monkeypatch.setattr(roster, "MAX_ROSTER_ITEMS", 3)
    routed: list = []
    sessions, factory, clock = world()
    sessions.route = routed.append
    stream, transport, session = log_in(sessions, factory, "mallory@localhost", "192.0.2.9", sm=False)

    def roster_set(contact: str, name: str = "") -> str:
        stream.dataReceived(f"<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='{contact}' "
                            f"name='{name}'/></query></iq>".encode())
        return output(transport)

    for n in range(3):
        assert "type='result'" in roster_set(f"c{n}@example.net")
    assert "<resource-constraint " in roster_set("c3@example.net")
    stream.dataReceived(b"<presence type='subscribe' to='c4@example.net'/>"
                        b"<presence type='subscribed' to='c5@example.net'/>")
    assert output(transport).count("<resource-constraint ") == 2 and routed == []
    assert "type='result'" in roster_set("c0@example.net", "renamed")
    stream.dataReceived(b"<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='c1@example.net' "
                        b"subscription='remove'/></query></iq>")
    assert "type='result'" in output(transport)
    assert "type='result'" in roster_set("c6@example.net")
    assert sorted(sessions.rosters.cached("mallory@localhost").items) == [  # type: ignore[union-attr]
        "c0@example.net", "c2@example.net", "c6@example.net"]

    monkeypatch.setattr(roster, "MAX_ROSTER_ITEMS", 1000)
    monkeypatch.setattr(roster, "MAX_ROSTER_CHARS", 1000)  # 49 in use
    assert "<resource-constraint " in roster_set("c7@example.net", "n" * 1000)
    assert "<resource-constraint " in roster_set("c0@example.net", "n" * 990)
    assert "type='result'" in roster_set("c8@example.net", "n" * 800)


def test_offline_writes_in_flight_are_capped_per_sender() -> None:
    """Each offline message is a synced write on the store's one writer thread, which every user
    shares: a client that sends thousands of them faster than the disk syncs would queue minutes of
    writes ahead of everyone else's. Past MAX_WRITES_IN_FLIGHT per sender, more bounce with
    resource-constraint (type wait) until the disk catches up; other senders are not held back."""
    from twisted.words.xish import domish

    from sns_xmpp.xmpp.features.offline import MAX_WRITES_IN_FLIGHT
    from sns_xmpp.xmpp.hooks import MESSAGE_OFFLINE

    writes: list[defer.Deferred] = []

    class SlowDisk(FeatureTables):
        def store_offline_capped(self, owner: str, stanza: str, now: float, cap: int,
                                 max_size: int | None = None) -> defer.Deferred:
            writes.append(defer.Deferred())
            return writes[-1]

    routed: list = []
    sessions = featured(SessionManager(["localhost"], SlowDisk(), Clock(), routed.append))  # type: ignore[arg-type]

    def send(sender: str, n: int) -> None:
        message = domish.Element((None, "message"))
        message["to"], message["from"], message["type"] = "alice@localhost", sender, "chat"
        message.addElement("body", content=f"m{n}")
        sessions.deliver(message)

    for n in range(MAX_WRITES_IN_FLIGHT + 20):
        send("mallory@localhost/flood", n)
    assert len(writes) == MAX_WRITES_IN_FLIGHT
    assert len(routed) == 20 and {(b["type"], b.error.firstChildElement().name, b.error["type"])
                                  for b in routed} == {("error", "resource-constraint", "wait")}
    send("bob@localhost/r", 0)
    assert len(writes) == MAX_WRITES_IN_FLIGHT + 1, "another sender is not held back"
    for write in writes[:10]:
        write.callback(1)
    routed.clear()
    send("mallory@localhost/flood", 999)
    assert len(writes) == MAX_WRITES_IN_FLIGHT + 2 and routed == []
    [storage] = [hook.__self__ for hook in sessions.hooks.chain(MESSAGE_OFFLINE)  # the offline feature's state
                 if hasattr(hook.__self__, "writes")]
    before = storage.writes["mallory@localhost"]
    writes[10].errback(RuntimeError("the disk failed"))  # not stored: the sender hears so
    assert [b.error.firstChildElement().name for b in routed] == ["internal-server-error"]
    assert storage.writes["mallory@localhost"] == before - 1
