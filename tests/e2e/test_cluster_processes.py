"""`scripts/cluster` for real: PostgreSQL, Redis, two node processes and HAProxy in front, and a
node killed with SIGKILL while its users chat (issue 20)."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.conftest import free_port
from tests.xmppclient import Client, wait

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def cluster(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "scripts" / "cluster"), "--state", str(state), *args],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)


@pytest_twisted.async_yield_fixture
async def two_nodes(tmp_path: Path) -> Any:
    ports = {"c2s": free_port(), "direct_tls": free_port(), "http": free_port()}
    config = tmp_path / "sns.toml"
    config.write_text(textwrap.dedent(f"""
        [server]
        domains = ["localhost"]
        data_dir = "{tmp_path / 'data'}"
        [xmpp.c2s]
        port = {ports['c2s']}
        direct_tls_port = {ports['direct_tls']}
        [xmpp.s2s]
        port = -1
        [http]
        port = {ports['http']}
        public_url = "http://127.0.0.1:{ports['http']}"
        [sites.demo]
        plugin = "demo"
    """))
    state = tmp_path / "cluster"
    started = await threads.deferToThread(cluster, state, "up", "2", "--config", str(config))
    assert started.returncode == 0, started.stderr
    try:
        yield state, ports
    finally:
        await threads.deferToThread(cluster, state, "down")


def status(state: Path) -> dict[str, Any]:
    answer = cluster(state, "status", "--json")
    assert answer.returncode == 0, answer.stderr
    report: dict[str, Any] = json.loads(answer.stdout)
    return report


def add_user(state: Path, jid: str) -> None:
    subprocess.run([str(ROOT / ".venv" / "bin" / "sns-xmpp-admin"), "--config", str(state / "node0.toml"),
                    "user", "add", jid], input="secret\nsecret\n", text=True, check=True, capture_output=True)


def node_of(state: Path, full: str) -> str:
    """Which node bound *full* (its log says so)."""
    for node in status(state)["nodes"]:
        if f"c2s.bound jid={full} " in Path(node["log"]).read_text():
            return str(node["id"])
    raise AssertionError(f"no node bound {full}")


@pytest_twisted.ensureDeferred
async def test_a_node_killed_while_its_users_chat_is_replaced_by_the_other_through_the_balancer(two_nodes) -> None:
    """Through HAProxy on the configuration's ports: two users land on the two nodes and chat.
    One node gets SIGKILL. Its user reconnects through the same address and lands on the
    survivor; the survivor has dropped the dead node's sessions (within node_timeout), the
    message sent meanwhile waited offline, and the two chat again."""
    state, ports = two_nodes
    report = status(state)
    assert [node["alive"] for node in report["nodes"]] == [True, True]
    assert report["balancer"]["ports"] == ports
    for user in ("alice", "bob"):
        await threads.deferToThread(add_user, state, f"{user}@localhost")
    alice, bob = Client("alice@localhost/a", "secret"), Client("bob@localhost/b", "secret")
    await wait(alice.log_in(ports["c2s"]))
    await wait(bob.log_in(ports["c2s"]))
    alice_node, bob_node = node_of(state, "alice@localhost/a"), node_of(state, "bob@localhost/b")
    assert alice_node != bob_node, "leastconn put the two users on the two nodes"
    for attempt in range(50):  # the directory's announcement reaches the other node
        bob.send_message(mto="alice@localhost/a", mbody=f"ping {attempt}", mtype="chat")
        received = await wait(alice.next_message())
        if received["body"] == f"ping {attempt}":
            break
    alice.send_message(mto="bob@localhost", mbody="across the nodes ✓", mtype="chat")
    assert (await wait(bob.next_message()))["body"] == "across the nodes ✓"

    assert cluster(state, "kill", bob_node).returncode == 0
    await wait(bob.wait_until("disconnected", 15), timeout=20)
    alive = {node["id"]: node["alive"] for node in status(state)["nodes"]}
    assert alive == {alice_node: True, bob_node: False}
    # Sent while bob is nowhere: once the survivor has found his node dead (node_timeout), offline.
    alice.send_message(mto="bob@localhost", mbody="while you were down", mtype="chat")
    bob = Client("bob@localhost/b", "secret")
    await wait(bob.log_in(ports["c2s"]), timeout=30)
    assert node_of(state, "bob@localhost/b") == alice_node
    bodies = [(await wait(bob.next_message(), timeout=20))["body"]]
    alice.send_message(mto="bob@localhost", mbody="welcome back", mtype="chat")
    while "welcome back" not in bodies:
        bodies.append((await wait(bob.next_message(), timeout=20))["body"])
    assert bodies == ["while you were down", "welcome back"]
    for client in (alice, bob):
        await wait(client.log_out())
