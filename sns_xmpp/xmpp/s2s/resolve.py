"""Where a remote domain's XMPP servers listen: RFC 6120 §3.2 and XEP-0368, in bounded time.

The order of the steps:

1. an operator's override (``[xmpp.s2s] hosts``: ``domain = "host[:port]"``; RFC 6120 §3.2
   encourages a configured association over SRV), for private federations and the tests, with no
   DNS at all; a domain that is an IP address (RFC 7622 §3.2 allows it) is that address at port
   5269, with nothing to resolve;
2. the SRV records ``_xmpps-server._tcp.<domain>`` (XEP-0368: connect with direct TLS) and
   ``_xmpp-server._tcp.<domain>`` (RFC 6120 §3.2.1: connect and STARTTLS), asked in parallel and
   mixed into one order: by priority, then RFC 2782's weighted random choice within a priority;
3. only when neither name has SRV records (RFC 6120 §3.2.2), the domain's own A and AAAA records
   at port 5269, through the chain `twisted.names.client.createResolver` makes (here on the
   server's reactor), which asks the hosts file (/etc/hosts) before DNS: a name given only there
   resolves.

A target of ``.`` says the service is decidedly not offered (RFC 2782, RFC 6120 §3.2.1): such a
record is skipped, and since the domain answered SRV at all, there is no A/AAAA fallback
(XEP-0368 §5) - a domain whose only record is ``.`` resolves nowhere.

Each step waits at most ``timeout_per_step`` seconds. Twisted's resolver, left to itself, tries
again after 1, 3, 11 and 45 s: a minute for an unknown domain, when the stanzas queued for it
must bounce with ``remote-server-not-found`` within 30 s. Nothing here blocks the reactor: all of
it is twisted.names over UDP (and the hosts file, a small read).

The answer is a list of `Target`, in the order to try them; an empty list means the domain
resolves nowhere and the caller bounces. Answers are cached for their records' TTL (at most
`MAX_CACHE_SECONDS`, a bounded number of domains); an answer that found nothing is kept
`NEGATIVE_CACHE_SECONDS` when every question had an answer (NXDOMAIN, no records), and not at
all when one timed out or failed (SERVFAIL, no server reachable): the next stanza asks again.
Lookups of one domain in flight are shared: a burst of stanzas to a new domain asks DNS once.
"""

from __future__ import annotations

import random
import socket
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.names import client, dns, hosts
from twisted.names.error import DNSNameError, DomainError
from twisted.names.resolve import ResolverChain
from twisted.python.failure import Failure

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.settings import ConfigError

__all__ = ["DEFAULT_PORT", "ServerResolver", "Target", "parse_override"]

log = GatedLogger()

DEFAULT_PORT = 5269  # RFC 6120 §3.2.2 / §14.7: xmpp-server
MAX_CACHE_SECONDS = 3600.0
NEGATIVE_CACHE_SECONDS = 30.0
# RFC 8305 §3 ("Resolution Delay"): once one address family has answered, the other gets this
# long more. A name known only to /etc/hosts has no AAAA there, and asking DNS for it could
# otherwise hold the whole step.
RESOLUTION_DELAY = 0.05


@dataclass(frozen=True)
class Target:
    """One place to connect: *host* is a name (an SRV target, to be resolved by the connecting
    endpoint) or an address (the A/AAAA fallback, already resolved); *direct_tls* says TLS from
    the first byte (XEP-0368) rather than STARTTLS."""

    host: str
    port: int
    direct_tls: bool


@dataclass(frozen=True)
class _ServiceRecord:
    priority: int
    weight: int
    host: str
    port: int
    direct_tls: bool


def parse_override(value: str) -> Target:
    """An override's ``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as a STARTTLS `Target`
    (port 5269 by default). Raises ValueError."""
    text = value.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r}: expected [address] or [address]:port")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a name, an IPv4 address or a bare IPv6 address
        host = text
    port = DEFAULT_PORT
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    if not host:
        raise ValueError(f"{value!r}: no host")
    return Target(host, port, False)


def order_records(records: Sequence[_ServiceRecord], choose: Callable[[int], int]) -> list[Target]:
    """*records* in RFC 2782's order: ascending priority; within one priority, repeatedly a
    weighted random pick (the zero-weight records first in the running sums, so they have a small
    chance to come first). *choose(n)* returns a number from 0 to n inclusive."""
    ordered: list[Target] = []
    for priority in sorted({record.priority for record in records}):
        remaining = sorted(
            (record for record in records if record.priority == priority), key=lambda record: record.weight != 0
        )
        while remaining:
            pick = choose(sum(record.weight for record in remaining))
            running, index = remaining[0].weight, 0
            while running < pick:
                index += 1
                running += remaining[index].weight
            chosen = remaining.pop(index)
            ordered.append(Target(chosen.host, chosen.port, chosen.direct_tls))
    return ordered


class _Cached:
    __slots__ = ("expires", "records", "addresses")

    def __init__(self, expires: float, records: list[_ServiceRecord] | None, addresses: list[Target]) -> None:
        self.expires = expires
        self.records = records  # SRV records to order afresh on each use, or None for the fallback
        self.addresses = addresses


class ServerResolver:
    """Finds a remote domain's servers; see the module's docstring for the steps.

    *resolver* is a `twisted.names` IResolver; by default the chain `client.createResolver` makes
    (the hosts file first, then the servers of resolv.conf), made at the first lookup so a server
    without s2s never makes one.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        timeout_per_step: float = 3.0,
        overrides: Mapping[str, str] = {},  # noqa: B006 - read, never changed
        resolver: Any = None,
        max_cached_domains: int = 4096,
        random_source: random.Random | None = None,
    ) -> None:
        self.clock = reactor
        self.timeout_per_step = timeout_per_step
        self.overrides: dict[str, Target] = {}
        for domain, target in overrides.items():
            try:
                self.overrides[domain.lower()] = parse_override(target)
            except ValueError as error:  # the daemon prints this one line and exits 1
                raise ConfigError(f"xmpp.s2s.hosts.{domain}", str(error)) from None
        self._resolver = resolver
        self.max_cached_domains = max_cached_domains
        self._random = random_source or random.SystemRandom()
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._pending: dict[str, list[defer.Deferred[list[Target]]]] = {}

    @property
    def resolver(self) -> Any:
        if self._resolver is None:
            # client.createResolver's chain, on this reactor rather than the global one, and
            # without its cache (this class keeps its own, bounded).
            self._resolver = ResolverChain(
                [hosts.Resolver(b"/etc/hosts"), client.Resolver(b"/etc/resolv.conf", reactor=self.clock)]
            )
        return self._resolver

    def resolve(self, domain: str) -> defer.Deferred[list[Target]]:
        """The targets for *domain*, best first; empty if it resolves nowhere. Never fails."""
        domain = domain.lower().rstrip(".")
        override = self.overrides.get(domain)
        if override is not None:
            return defer.succeed([override])
        address = _ip_literal(domain)
        if address is not None:  # RFC 7622 §3.2: a domainpart may be an address; nothing to resolve
            return defer.succeed([Target(address, DEFAULT_PORT, False)])
        cached = self._cache.get(domain)
        if cached is not None:
            if cached.expires > self.clock.seconds():
                self._cache.move_to_end(domain)
                return defer.succeed(self._targets(cached))
            del self._cache[domain]
        waiter: defer.Deferred[list[Target]] = defer.Deferred()
        waiting = self._pending.get(domain)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        self._pending[domain] = [waiter]
        started = self.clock.seconds()
        defer.Deferred.fromCoroutine(self._lookup(domain)).addBoth(self._finished, domain, started)
        return waiter

    def _targets(self, cached: _Cached) -> list[Target]:
        if cached.records is None:
            return list(cached.addresses)
        return order_records(cached.records, lambda total: self._random.randint(0, total))

    def _finished(self, result: _Cached | Failure, domain: str, started: float) -> None:
        if isinstance(result, Failure):  # a bug below; the stanzas bounce rather than wait forever
            log.failure("s2s.resolve_failed domain={domain}", result, domain=domain)
            targets: list[Target] = []
        else:
            targets = self._targets(result)
            if result.expires > self.clock.seconds():
                self._cache[domain] = result
                while len(self._cache) > self.max_cached_domains:
                    self._cache.popitem(last=False)
        log.info(
            "s2s.resolved domain={domain} targets={targets} seconds={seconds:.3f}",
            domain=domain,
            targets=" ".join(f"{'xmpps' if t.direct_tls else 'xmpp'}://{t.host}:{t.port}" for t in targets) or "-",
            seconds=self.clock.seconds() - started,
        )
        for waiter in self._pending.pop(domain, []):
            waiter.callback(list(targets))

    async def _lookup(self, domain: str) -> _Cached:
        try:
            ascii_domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return _Cached(self.clock.seconds() + NEGATIVE_CACHE_SECONDS, None, [])
        secure, plain = await defer.gatherResults(
            [
                self._ask(dns.SRV, f"_xmpps-server._tcp.{ascii_domain}"),
                self._ask(dns.SRV, f"_xmpp-server._tcp.{ascii_domain}"),
            ]
        )
        records: list[_ServiceRecord] = []
        answered = False
        ttls: list[int] = []
        timed_out = secure is None or plain is None
        for answer, direct_tls in ((secure, True), (plain, False)):
            for ttl, payload in _records(answer, dns.SRV):
                answered = True
                ttls.append(ttl)
                target = str(payload.target).rstrip(".")
                if not target:  # "." : not offered under this name (RFC 2782)
                    continue
                records.append(_ServiceRecord(payload.priority, payload.weight, target, payload.port, direct_tls))
        if answered:
            return self._cached(records, [], ttls, timed_out)
        addresses, ttls, timed_out_now = await self._addresses(ascii_domain)
        return self._cached(None, [Target(address, DEFAULT_PORT, False) for address in addresses], ttls,
                            timed_out or timed_out_now)

    def _cached(self, records: list[_ServiceRecord] | None, addresses: list[Target], ttls: list[int],
                timed_out: bool) -> _Cached:
        now = self.clock.seconds()
        if records or addresses:
            return _Cached(now + min([MAX_CACHE_SECONDS, *ttls]), records, addresses)
        # Nothing found: remembered briefly, unless a question went unanswered (asked again next time).
        return _Cached(now if timed_out else now + NEGATIVE_CACHE_SECONDS, records, addresses)

    async def _addresses(self, ascii_domain: str) -> tuple[list[str], list[int], bool]:
        """The domain's IPv6 then IPv4 addresses (RFC 6724's default order prefers IPv6), their
        TTLs, and whether a family ran out of time; once one family has answered with addresses the
        other gets `RESOLUTION_DELAY` more."""
        answers: dict[int, Any] = {}
        both = defer.Deferred[None]()
        grace: list[IDelayedCall] = []

        def settle() -> None:
            if not both.called:
                both.callback(None)

        def arrived(answer: Any, kind: int) -> None:
            answers[kind] = answer
            if len(answers) == 2:
                for call in grace:
                    if call.active():
                        call.cancel()
                settle()
            elif _records(answer, kind) and not grace:
                grace.append(self.clock.callLater(RESOLUTION_DELAY, settle))

        self._ask(dns.AAAA, ascii_domain).addCallback(arrived, dns.AAAA)
        self._ask(dns.A, ascii_domain).addCallback(arrived, dns.A)
        await both
        addresses: list[str] = []
        ttls: list[int] = []
        for ttl, payload in _records(answers.get(dns.AAAA), dns.AAAA):
            addresses.append(socket.inet_ntop(socket.AF_INET6, payload.address))
            ttls.append(ttl)
        for ttl, payload in _records(answers.get(dns.A), dns.A):
            addresses.append(payload.dottedQuad())
            ttls.append(ttl)
        unique = list(dict.fromkeys(addresses))
        timed_out = len(answers) == 2 and any(answer is None for answer in answers.values())
        return unique, ttls, timed_out

    def _ask(self, kind: int, name: str) -> defer.Deferred[Any]:
        """The answer to one question (`_records` reads it), ``([], [], [])`` for NXDOMAIN, or None
        when it failed otherwise or took longer than the step's time (then abandoned: the
        resolver's own timeout tuple ends it at about the same moment)."""
        ask = {dns.SRV: self.resolver.lookupService, dns.A: self.resolver.lookupAddress,
               dns.AAAA: self.resolver.lookupIPV6Address}[kind]
        lookup: defer.Deferred[Any] = ask(name, (self.timeout_per_step,))
        outcome: defer.Deferred[Any] = defer.Deferred()

        def give_up() -> None:
            log.debug("s2s.resolve_timeout name={name} type={type}", name=name, type=dns.QUERY_TYPES[kind])
            outcome.callback(None)
            lookup.cancel()  # a late answer to a Deferred without a canceller is then ignored

        expiry = self.clock.callLater(self.timeout_per_step, give_up)

        def done(result: Any) -> None:
            if outcome.called:  # given up already
                return
            expiry.cancel()
            if isinstance(result, Failure):
                if result.check(DNSNameError, DomainError):  # NXDOMAIN: an answer, with no records
                    result = ([], [], [])
                else:
                    log.debug("s2s.resolve_error name={name} type={type} error={error}", name=name,
                              type=dns.QUERY_TYPES[kind], error=result.getErrorMessage())
                    result = None
            outcome.callback(result)

        lookup.addBoth(done)
        return outcome


def _ip_literal(domain: str) -> str | None:
    """The address a domainpart names, if it is an IPv4 address or a bracketed IPv6 one."""
    text = domain[1:-1] if domain.startswith("[") and domain.endswith("]") else domain
    family = socket.AF_INET6 if text is not domain else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except OSError:
        return None


def _records(answer: Any, kind: int) -> list[tuple[int, Any]]:
    """The TTL and payload of each of the answer section's records of type *kind* (CNAMEs and the
    like left out). The payload is typed Any: twisted.names declares only its interface."""
    if not answer:
        return []
    return [(header.ttl, header.payload) for header in answer[0] if header.type == kind]
