"""Finding a remote domain's servers (RFC 6120 §3.2, XEP-0368, RFC 2782) on a fake twisted.names
resolver and a task.Clock: the order of SRV targets, '.', the A/AAAA fallback, the bounded time
per step, the operator's overrides, and the cache."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.names import client, dns, hosts
from twisted.names.error import DNSNameError, DNSServerError

from sns_xmpp.settings import ConfigError
from sns_xmpp.xmpp.s2s.resolve import (
    NEGATIVE_CACHE_SECONDS,
    ServerResolver,
    Target,
    _ServiceRecord,
    order_records,
    parse_override,
)

NO_SUCH_NAME = object()  # NXDOMAIN
SILENT = object()  # a server that never answers


def srv(name: str, priority: int, weight: int, port: int, target: str, ttl: int = 600) -> dns.RRHeader:
    """An SRV record; "." is the root name, as the wire gives it (an empty name)."""
    wire_target = b"" if target == "." else target
    return dns.RRHeader(name, dns.SRV, ttl=ttl, payload=dns.Record_SRV(priority, weight, port, wire_target, ttl))


def a(name: str, address: str, ttl: int = 600) -> dns.RRHeader:
    return dns.RRHeader(name, dns.A, ttl=ttl, payload=dns.Record_A(address, ttl))


def aaaa(name: str, address: str, ttl: int = 600) -> dns.RRHeader:
    return dns.RRHeader(name, dns.AAAA, ttl=ttl, payload=dns.Record_AAAA(address, ttl))


class FakeResolver:
    """An IResolver answering from *zone*: {(name, type): [records] | NO_SUCH_NAME | SILENT};
    anything absent is NXDOMAIN. Every question is written down with its timeout."""

    def __init__(self, zone: dict[tuple[str, int], Any]) -> None:
        self.zone = zone
        self.asked: list[tuple[str, int, Any]] = []
        self.silent: list[defer.Deferred[Any]] = []

    def _answer(self, name: str, kind: int, timeout: Any) -> defer.Deferred[Any]:
        self.asked.append((name, kind, timeout))
        answer = self.zone.get((name, kind), NO_SUCH_NAME)
        if answer is NO_SUCH_NAME:
            return defer.fail(DNSNameError(name))
        if answer is SILENT:
            waiting: defer.Deferred[Any] = defer.Deferred()
            self.silent.append(waiting)
            return waiting
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed((answer, [], []))

    def lookupService(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._answer(name, dns.SRV, timeout)

    def lookupAddress(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._answer(name, dns.A, timeout)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._answer(name, dns.AAAA, timeout)


def resolver_for(zone: dict[tuple[str, int], Any], **options: Any) -> tuple[ServerResolver, FakeResolver, task.Clock]:
    fake = FakeResolver(zone)
    clock = task.Clock()
    return ServerResolver(clock, resolver=fake, random_source=random.Random(7), **options), fake, clock


def result_of(deferred: defer.Deferred[Any]) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the lookup has not finished"
    return results[0]


XMPPS = "_xmpps-server._tcp.remote.example"
XMPP = "_xmpp-server._tcp.remote.example"


def test_both_srv_names_are_asked_at_once_and_mixed_by_priority_with_direct_tls_where_xmpps() -> None:
    """XEP-0368 §3: _xmpps-server and _xmpp-server records are one list, ordered by priority; an
    _xmpps- record is connected with direct TLS. Both questions go out before either answers,
    each with the one short timeout (not Twisted's 1, 3, 11, 45 s); no A/AAAA question follows."""
    zone = {
        (XMPPS, dns.SRV): [srv(XMPPS, 10, 0, 5270, "tls.remote.example")],
        (XMPP, dns.SRV): [srv(XMPP, 5, 0, 5269, "a.remote.example"), srv(XMPP, 20, 0, 5269, "b.remote.example")],
    }
    resolver, fake, _clock = resolver_for(zone, timeout_per_step=2.5)
    assert result_of(resolver.resolve("Remote.Example")) == [
        Target("a.remote.example", 5269, False),
        Target("tls.remote.example", 5270, True),
        Target("b.remote.example", 5269, False),
    ]
    assert fake.asked == [(XMPPS, dns.SRV, (2.5,)), (XMPP, dns.SRV, (2.5,))]


def test_rfc_2782_weighted_choice_within_a_priority() -> None:
    """RFC 2782: zero-weight records first in the running sums, a number from 0 to the sum, the
    first record whose running sum reaches it; again with the rest. Lower priority always first."""
    records = [
        _ServiceRecord(1, 10, "ten", 1, False),
        _ServiceRecord(1, 0, "zero", 2, False),
        _ServiceRecord(1, 30, "thirty", 3, False),
        _ServiceRecord(0, 5, "first", 4, False),
    ]
    picks = iter([5, 35, 0, 3])  # priority 0: 5 of 5; then 35 of 40 -> thirty; 0 of 10 -> zero; 3 of 10 -> ten
    sums: list[int] = []

    def choose(total: int) -> int:
        sums.append(total)
        return next(picks)

    assert [t.host for t in order_records(records, choose)] == ["first", "thirty", "zero", "ten"]
    assert sums == [5, 40, 10, 10]
    # Over many draws the weights show: 30 comes before 10 about three times in four.
    draws = random.Random(1)
    ahead = sum(
        order_records(records[:3], lambda total: draws.randint(0, total))[0].host == "thirty" for _ in range(2000)
    )
    assert 0.68 < ahead / 2000 < 0.82


def test_a_dot_target_means_not_offered_and_forbids_the_address_fallback() -> None:
    """RFC 2782 and XEP-0368 §6: '.' under _xmpps-server means no direct TLS, and the _xmpp-server
    records are used; '.' as the only answer means no XMPP service at all: nothing to connect to,
    and the domain's A/AAAA records are not asked (the domain speaks SRV)."""
    zone = {
        (XMPPS, dns.SRV): [srv(XMPPS, 0, 0, 0, ".")],
        (XMPP, dns.SRV): [srv(XMPP, 0, 0, 5269, "xmpp.remote.example")],
        ("remote.example", dns.A): [a("remote.example", "192.0.2.1")],
    }
    resolver, fake, _clock = resolver_for(zone)
    assert result_of(resolver.resolve("remote.example")) == [Target("xmpp.remote.example", 5269, False)]
    zone[(XMPP, dns.SRV)] = [srv(XMPP, 0, 0, 0, ".")]
    resolver, fake, _clock = resolver_for(zone)
    assert result_of(resolver.resolve("remote.example")) == []
    assert [kind for _name, kind, _timeout in fake.asked] == [dns.SRV, dns.SRV]


def test_without_srv_records_the_domains_own_addresses_at_5269_ipv6_first() -> None:
    """RFC 6120 §3.2.2: no SRV record under either name (NXDOMAIN) -> the domain's AAAA and A
    records, each address a STARTTLS target at port 5269, IPv6 first (RFC 6724's default)."""
    zone = {
        ("remote.example", dns.A): [a("remote.example", "192.0.2.1"), a("remote.example", "192.0.2.2")],
        ("remote.example", dns.AAAA): [aaaa("remote.example", "2001:db8::1")],
    }
    resolver, fake, _clock = resolver_for(zone)
    assert result_of(resolver.resolve("remote.example")) == [
        Target("2001:db8::1", 5269, False),
        Target("192.0.2.1", 5269, False),
        Target("192.0.2.2", 5269, False),
    ]
    assert {(name, kind) for name, kind, _timeout in fake.asked[2:]} == {
        ("remote.example", dns.A),
        ("remote.example", dns.AAAA),
    }


def test_each_step_waits_a_bounded_time_so_an_unknown_domain_resolves_nowhere_well_within_30_s() -> None:
    """Servers that never answer: the SRV step gives up after timeout_per_step, the address step
    after as long again; the answer is an empty list (the caller bounces) after 6 s, not Twisted's
    minute, and the abandoned questions are cancelled. The empty answer is not remembered: the next
    stanza asks again."""
    zone = {key: SILENT for key in [(XMPPS, dns.SRV), (XMPP, dns.SRV), ("remote.example", dns.A),
                                    ("remote.example", dns.AAAA)]}
    resolver, fake, clock = resolver_for(zone, timeout_per_step=3.0)
    answer = resolver.resolve("remote.example")
    clock.advance(2.9)
    assert not answer.called and len(fake.asked) == 2
    clock.advance(0.1)
    assert len(fake.asked) == 4 and not answer.called  # on to the fallback
    clock.advance(3.0)
    assert result_of(answer) == []
    assert all(waiting.called for waiting in fake.silent)  # cancelled
    resolver.resolve("remote.example")
    assert len(fake.asked) == 6


def test_a_server_failure_counts_as_no_answer_and_one_family_does_not_wait_for_the_other() -> None:
    """SERVFAIL on the SRV names falls back to addresses; the A answer arrives while AAAA is silent:
    the A address is used after RFC 8305's 50 ms resolution delay, not after the step's timeout."""
    zone = {
        (XMPPS, dns.SRV): DNSServerError("servfail"),
        (XMPP, dns.SRV): DNSServerError("servfail"),
        ("remote.example", dns.A): [a("remote.example", "127.0.0.9")],
        ("remote.example", dns.AAAA): SILENT,
    }
    resolver, _fake, clock = resolver_for(zone, timeout_per_step=3.0)
    answer = resolver.resolve("remote.example")
    assert not answer.called
    clock.advance(0.05)
    assert result_of(answer) == [Target("127.0.0.9", 5269, False)]


def test_an_override_answers_without_dns() -> None:
    """[xmpp.s2s] hosts: a domain given there goes to its host and port (5269 by default), asked
    of no DNS server, in any letter case."""
    resolver, fake, _clock = resolver_for(
        {}, overrides={"prosody.test": "127.0.0.2", "v6.test": "[::1]:5270", "named.test": "peer.internal:15269"}
    )
    assert result_of(resolver.resolve("Prosody.Test")) == [Target("127.0.0.2", 5269, False)]
    assert result_of(resolver.resolve("v6.test")) == [Target("::1", 5270, False)]
    assert result_of(resolver.resolve("named.test")) == [Target("peer.internal", 15269, False)]
    assert fake.asked == []


def test_a_domain_that_is_an_ip_address_is_connected_to_at_5269_without_dns() -> None:
    """An IP address as the domainpart (RFC 7622 §3.2; IPv6 in brackets) is not looked up; a name
    that merely begins like one is."""
    resolver, fake, _clock = resolver_for({})
    assert result_of(resolver.resolve("192.0.2.7")) == [Target("192.0.2.7", 5269, False)]
    assert result_of(resolver.resolve("[2001:DB8::0:7]")) == [Target("2001:db8::7", 5269, False)]
    assert fake.asked == []
    assert result_of(resolver.resolve("192.0.2.7.example")) == []
    assert fake.asked != []


@pytest.mark.parametrize("bad", ["", "host:", "host:0", "host:70000", "[::1", "[::1]x", "host:port"])
def test_a_malformed_override_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_override(bad)


def test_a_malformed_override_in_the_configuration_is_a_one_line_config_error() -> None:
    """The daemon prints a ConfigError raised while it builds as one line and exits 1: the key
    names the domain, the problem the port."""
    with pytest.raises(ConfigError) as caught:
        ServerResolver(task.Clock(), overrides={"peer.example": "peer.example:http"})
    assert str(caught.value) == (
        "sns-xmpp: config error at 'xmpp.s2s.hosts.peer.example': "
        "'peer.example:http': the port must be a number from 1 to 65535"
    )


def test_answers_are_cached_for_their_ttl_and_shared_while_in_flight_in_a_bounded_cache() -> None:
    """Two stanzas for a new domain ask DNS once; within the records' smallest TTL nothing is asked
    again (and the weighted order is drawn afresh from the cached records); after it, the domain
    is asked again. A domain that resolves nowhere (NXDOMAIN everywhere) is remembered
    NEGATIVE_CACHE_SECONDS. The cache holds at most max_cached_domains, the least recent leaving."""
    zone: dict[tuple[str, int], Any] = {
        (XMPP, dns.SRV): SILENT,
    }
    resolver, fake, clock = resolver_for(zone, max_cached_domains=2)
    first, second = resolver.resolve("remote.example"), resolver.resolve("remote.example")
    fake.silent[0].callback(([srv(XMPP, 0, 1, 5269, "x.remote.example", ttl=100),
                              srv(XMPP, 0, 1, 5269, "y.remote.example", ttl=300)], [], []))
    assert result_of(first) == result_of(second)
    assert len(fake.asked) == 2
    orders = {tuple(t.host for t in result_of(resolver.resolve("remote.example"))) for _ in range(40)}
    assert orders == {("x.remote.example", "y.remote.example"), ("y.remote.example", "x.remote.example")}
    clock.advance(99)
    resolver.resolve("remote.example")
    assert len(fake.asked) == 2
    clock.advance(1)
    zone[(XMPP, dns.SRV)] = [srv(XMPP, 0, 1, 5269, "x.remote.example", ttl=100)]
    resolver.resolve("remote.example")
    assert len(fake.asked) == 4

    resolver.resolve("nowhere.example")  # NXDOMAIN for all four questions
    assert len(fake.asked) == 8
    clock.advance(NEGATIVE_CACHE_SECONDS - 1)
    assert result_of(resolver.resolve("nowhere.example")) == []
    assert len(fake.asked) == 8
    resolver.resolve("third.example")  # a third domain: remote.example, least recently used, leaves
    asked = len(fake.asked)
    resolver.resolve("nowhere.example")
    assert len(fake.asked) == asked
    resolver.resolve("remote.example")
    assert len(fake.asked) == asked + 2


def test_the_default_resolver_asks_the_hosts_file_before_dns_on_the_given_reactor() -> None:
    """Made only when first needed, the default is createResolver's chain without its cache: the
    hosts file first (a name given only in /etc/hosts resolves), then resolv.conf's servers,
    driven by the server's reactor rather than the global one."""
    clock = task.Clock()
    resolver = ServerResolver(clock)
    assert resolver._resolver is None
    chain = resolver.resolver.resolvers
    assert [type(r) for r in chain] == [hosts.Resolver, client.Resolver]
    assert chain[0].file == b"/etc/hosts" and chain[1]._reactor is clock
