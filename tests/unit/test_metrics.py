"""The stanza counter is a plain dict behind a collector; /metrics shows it as a prometheus Counter would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from sns_xmpp.observe.metrics import STANZA_KINDS, Metrics


def _stanza_lines(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if "stanzas_routed" in line and "_created{" not in line]


def test_routed_stanzas_read_as_a_counter_would() -> None:
    metrics = Metrics()
    reference_registry = CollectorRegistry()
    reference = Counter("sns_xmpp_stanzas_routed", "Stanzas routed, by kind", ["kind"], registry=reference_registry)
    for kind in STANZA_KINDS:
        reference.labels(kind)
    for kind in ("message", "message", "iq", "stream:error", "presence", "message"):
        metrics.stanza(kind)
        if kind in STANZA_KINDS:
            reference.labels(kind).inc()
    assert metrics.stanzas_routed == {"message": 3, "presence": 1, "iq": 1}
    assert _stanza_lines(metrics.registry) == _stanza_lines(reference_registry)
    assert 'sns_xmpp_stanzas_routed_total{kind="message"} 3.0' in _stanza_lines(metrics.registry)
