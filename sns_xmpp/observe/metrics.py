"""Prometheus metrics (served at /metrics) and the /health check.

Each server has its own registry, so several servers in one process (the
tests) do not share counters. Counters on the stanza path are bound to their
labels once, which keeps an increment to a lock and an add.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.twisted import MetricsResource
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web import resource, server
from twisted.web.server import Request

STANZA_KINDS = ("message", "presence", "iq")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.logins = Counter("sns_xmpp_logins", "Authentication attempts by site ('local' for local "
                              "accounts) and result ('ok' or the refusal)", ["site", "result"],
                              registry=self.registry)
        self._login_counters: dict[tuple[str, str], Any] = {}
        self.auth_seconds = Histogram("sns_xmpp_auth_duration_seconds", "Time from <auth/> to success or failure",
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                      registry=self.registry)
        # Counted in a plain dict and reported by a collector: every routed stanza counts, and a
        # prometheus Counter takes a lock and two checks per increment (4% of routing a message).
        self.stanzas_routed = dict.fromkeys(STANZA_KINDS, 0)
        self.registry.register(_StanzaCollector(self.stanzas_routed, time.time()))
        self.offline_stored = Counter("sns_xmpp_offline_stored", "Messages stored for offline users",
                                      registry=self.registry)
        self.offline_delivered = Counter("sns_xmpp_offline_delivered", "Stored messages delivered at login",
                                         registry=self.registry)
        limits = Counter("sns_xmpp_limits_hit", "Times a limit was enforced, by limit", ["limit"],
                         registry=self.registry)
        self.limits_hit = limits
        self.provider_errors = Counter("sns_xmpp_site_provider_errors", "Logins failed because a site's "
                                       "provider could not be reached", ["site"], registry=self.registry)
        self.uploads = Counter("sns_xmpp_uploads", "Files stored through HTTP upload (XEP-0363)",
                               registry=self.registry)
        self.upload_bytes = Counter("sns_xmpp_upload_bytes", "Bytes of the files stored through HTTP upload",
                                    registry=self.registry)
        self.upload_puts_refused = Counter("sns_xmpp_upload_puts_refused", "Upload PUTs refused, by HTTP status",
                                           ["status"], registry=self.registry)

    def login(self, site: str | None, result: str, seconds: float) -> None:
        # One child per (site, result), bound once: labels() validates and locks on every call.
        key = (site or "local", result)
        counter = self._login_counters.get(key)
        if counter is None:
            counter = self._login_counters[key] = self.logins.labels(*key)
        counter.inc()
        self.auth_seconds.observe(seconds)

    def limit(self, name: str) -> None:
        self.limits_hit.labels(name).inc()

    def upload_stored(self, size: int) -> None:
        self.uploads.inc()
        self.upload_bytes.inc(size)

    def upload_refused(self, status: int) -> None:
        self.upload_puts_refused.labels(str(status)).inc()

    def stanza(self, kind: str) -> None:
        counts = self.stanzas_routed
        if kind in counts:
            counts[kind] += 1

    def watch_sessions(self, session_labels: Callable[[], Iterable[str]], rosters_cached: Callable[[], int]) -> None:
        """Report bound sessions by the label each gives (its site or mechanism) and the rosters
        held in memory, read at each scrape from the two callables (the session manager's)."""
        self.registry.register(_SessionCollector(session_labels, rosters_cached))

    def watch_s2s(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """Report the server-to-server streams by (direction, state), read at each scrape."""
        self.registry.register(_S2SCollector(states))

    def watch_rooms(self, rooms: Callable[[], int], occupants: Callable[[], int]) -> None:
        """Report the chat rooms (XEP-0045) and their occupants, read at each scrape."""
        self.registry.register(_GaugesCollector((
            ("sns_xmpp_muc_rooms", "Chat rooms of the conference service", rooms),
            ("sns_xmpp_muc_occupants", "Occupants of all chat rooms", occupants))))


class _S2SCollector:
    """``sns_xmpp_s2s_streams`` by direction (in, out) and state, read at each scrape."""

    def __init__(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self.states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("sns_xmpp_s2s_streams", "Server-to-server streams by direction and state",
                                   labels=["direction", "state"])
        counts: dict[tuple[str, str], int] = {}
        for key in self.states():
            counts[key] = counts.get(key, 0) + 1
        for (direction, state), count in sorted(counts.items()):
            family.add_metric([direction, state], count)
        yield family


class _StanzaCollector:
    """``sns_xmpp_stanzas_routed_total`` by kind, as a prometheus Counter would report it."""

    def __init__(self, counts: dict[str, int], created: float) -> None:
        self.counts = counts
        self.created = created

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("sns_xmpp_stanzas_routed", "Stanzas routed, by kind", labels=["kind"])
        for kind, count in list(self.counts.items()):  # a scrape runs in a thread: a copy to iterate
            family.add_metric([kind], count, created=self.created)
        yield family


class _SessionCollector:
    def __init__(self, session_labels: Callable[[], Iterable[str]], rosters_cached: Callable[[], int]) -> None:
        self.session_labels = session_labels
        self.rosters_cached = rosters_cached

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("sns_xmpp_sessions", "Bound sessions by authentication (site or mechanism)",
                                   labels=["auth"])
        counts: dict[str, int] = {}
        for label in self.session_labels():
            counts[label] = counts.get(label, 0) + 1
        for label, count in sorted(counts.items()):
            family.add_metric([label], count)
        yield family
        queued = GaugeMetricFamily("sns_xmpp_rosters_cached", "Rosters held in memory")
        queued.add_metric([], self.rosters_cached())
        yield queued


class _GaugesCollector:
    """Gauges read from callables at each scrape."""

    def __init__(self, gauges: tuple[tuple[str, str, Callable[[], int]], ...]) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, documentation, read in self.gauges:
            family = GaugeMetricFamily(name, documentation)
            family.add_metric([], read())
            yield family


def metrics_resource(metrics: Metrics) -> resource.IResource:
    return MetricsResource(registry=metrics.registry)


class Health(resource.Resource):
    """200 when every listener is up and the store answers within a few seconds, else 503."""

    isLeaf = True

    def __init__(self, listeners_up: Callable[[], bool], store_answers: Callable[[], Deferred[Any]],
                 clock: IReactorTime, timeout: float = 5) -> None:
        super().__init__()
        self.listeners_up = listeners_up
        self.store_answers = store_answers
        self.clock = clock
        self.timeout = timeout

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if not self.listeners_up():
            request.setResponseCode(503)
            request.write(b"listeners down\n")
            request.finish()
            return server.NOT_DONE_YET
        check = self.store_answers()
        check.addTimeout(self.timeout, self.clock)

        def healthy(_: object) -> None:
            request.write(b"ok\n")
            request.finish()

        def unhealthy(_: object) -> None:
            request.setResponseCode(503)
            request.write(b"store not answering\n")
            request.finish()

        check.addCallbacks(healthy, unhealthy)
        return server.NOT_DONE_YET
