"""The bench's cluster phase (benchmarks/run.py, benchmarks/loadgen.py): the nodes' configuration
is one the server takes as a cluster node on PostgreSQL, the figures it derives are the issue's,
and its clients greet their partners until every greeting has arrived."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from benchmarks import loadgen
from benchmarks.run import Daemon, ceilings, cluster_summary
from sns_xmpp.config import load_config
from tests.xmppclient import wait


def test_a_cluster_node_is_configured_on_postgresql_with_its_cluster_table(tmp_path: Path) -> None:
    """The node's file loads as the server loads it: PostgreSQL at the runner's DSN, [cluster] on,
    the data folder shared; no SQLite accounts are made for it."""
    shared = tmp_path / "data"
    node = Daemon(tmp_path, 10, dsn="postgresql://bench@127.0.0.1:1/bench_two",
                  cluster={"redis_url": "redis://127.0.0.1:2/0", "node_id": "node1", "key_prefix": "two:"},
                  data_dir=shared)
    node.write_config()
    config = load_config(node.config_path)
    assert config.store.backend == "postgresql"
    assert config.store.dsn == "postgresql://bench@127.0.0.1:1/bench_two"
    assert config.cluster.enabled and config.cluster.node_id == "node1" and config.cluster.key_prefix == "two:"
    assert config.data_dir == shared
    assert list(shared.iterdir()) == []


def test_a_lone_daemon_is_configured_as_before(tmp_path: Path) -> None:
    """Without a DSN: SQLite with the accounts in it, and no [cluster]."""
    node = Daemon(tmp_path, 3)
    node.write_config()
    config = load_config(node.config_path)
    assert config.store.backend == "sqlite" and not config.cluster.enabled
    assert (tmp_path / "data" / "sns-xmpp.sqlite3").exists()


def test_ceilings_are_what_the_cpu_per_message_allows() -> None:
    """1000 messages for 0.1 CPU-s of one node: it saturates at 10,000/s; with 0.03 s of the engines
    and 0.07 s of the generator, 2 cores hold 10,000/s, and without the generator 15,384/s, above
    what the node can do."""
    assert ceilings(1000, 1, 0.1, 0.03, 0.07, cpus=2) == {"machine": 10000, "without_generator": 10000}
    assert ceilings(1000, 2, 0.1, 0.03, 0.07, cpus=2) == {"machine": 10000, "without_generator": 15385}


def test_the_summary_sets_two_nodes_against_one_and_cross_against_local() -> None:
    def row(rate_key: str, rate: float, nodes_cpu: float, engines_cpu: float, per: str = "1000") -> dict[str, Any]:
        return {rate_key: rate, f"nodes_cpu_per_{per}": nodes_cpu, f"engines_cpu_per_{per}": engines_cpu,
                "ceiling_per_s": {"machine": rate, "without_generator": 2 * rate}}

    rows = {"1-node msgs": row("messages_per_s", 10000, 0.1, 0.02),
            "1-node-redis msgs": row("messages_per_s", 9000, 0.12, 0.02),
            "2-nodes local": row("messages_per_s", 15000, 0.12, 0.02),
            "2-nodes cross": row("messages_per_s", 5000, 0.36, 0.04),
            "1-node logins": row("logins_per_s", 400, 1.5, 0.3, "login_ms"),
            "2-nodes logins": row("logins_per_s", 500, 3.0, 0.5, "login_ms")}
    summary = cluster_summary(rows)
    assert summary["msgs_ratio"] == 1.5 and summary["logins_ratio"] == 1.25
    assert summary["msgs_ceiling_ratio_without_generator"] == 1.5
    assert summary["cross_vs_local_nodes_cpu"] == 3.0
    assert summary["cross_vs_local_with_engines"] == pytest.approx(2.857, abs=0.001)
    assert summary["redis_layer_vs_plain_nodes_cpu"] == 1.2


class LateNode:
    """Two clients' connections through a 'server' that drops each client's first greeting (the
    recipient's node did not know the sender's partner yet) and delivers later ones."""

    def __init__(self) -> None:
        self.dropped: set[str] = set()
        self.sessions: dict[str, loadgen.Session] = {}
        self.sent = 0

    def session(self, bare: str) -> loadgen.Session:
        node = self

        class Wire(loadgen.Connection):
            def send(self, data: str) -> None:
                node.sent += 1
                stanza = ET.fromstring(data)
                to = stanza.get("to", "")
                if bare not in node.dropped:
                    node.dropped.add(bare)
                    return
                delivered = ET.fromstring(f"<message xmlns='jabber:client' from='{bare}/r' to='{to}' "
                                          "type='headline'/>")
                receiver = node.sessions[to].connection.on_stanza
                assert receiver is not None
                asyncio.get_running_loop().call_soon(receiver, delivered)

        session = loadgen.Session(Wire(), f"{bare}/r")
        self.sessions[bare] = session
        return session


async def greet(node: LateNode) -> None:
    a, b = node.session("a@localhost"), node.session("b@localhost")
    await loadgen.greet_partners([(a, b)], timeout=5)


@pytest_twisted.ensureDeferred
async def test_partners_are_greeted_again_until_both_have_heard() -> None:
    node = LateNode()
    await wait(greet(node))
    assert node.dropped == {"a@localhost", "b@localhost"}
    assert node.sent == 4  # each greeting dropped once, then delivered
