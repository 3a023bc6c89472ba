"""`scripts/cluster`'s node configuration (sns_xmpp/ops/local_cluster.py), without starting anything."""

from __future__ import annotations

from pathlib import Path

from sns_xmpp.config import load_config
from sns_xmpp.ops import local_cluster


def test_nodes_trust_the_balancer_for_the_proxy_protocol_and_keep_the_per_address_caps(tmp_path: Path) -> None:
    """Each node takes the PROXY protocol from the balancer's address on its client and HTTP
    ports, and keeps the configuration's per-address caps (it sees the clients' addresses); the
    caps also go to the balancer, which applies them across the cluster."""
    base = {"xmpp": {"c2s": {"max_connections_per_ip": 20}}, "http": {"max_connections_per_ip": 30}}
    status = {"postgres": {"dsn": "postgresql://postgres:x@127.0.0.1:1/postgres"},
              "redis": {"url": "redis://127.0.0.1:1/0"}}
    node = local_cluster.write_node_config(tmp_path, base, tmp_path / "sns.toml", 0, status)
    config = load_config(node["config"])
    assert config.xmpp.c2s.proxy_protocol_from == config.http.proxy_protocol_from == ("127.0.0.1/32",)
    assert local_cluster.BALANCER_ADDRESS == "127.0.0.1"
    assert (config.xmpp.c2s.max_connections_per_ip, config.http.max_connections_per_ip) == (20, 30)
    assert status["per_address"] == {"c2s": 20, "http": 30}
