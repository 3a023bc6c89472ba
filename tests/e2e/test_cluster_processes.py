"""`scripts/cluster` for real: PostgreSQL, Redis, two node processes and HAProxy in front, and a
node killed with SIGKILL while its users chat (issue 20)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import select
import socket
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.conftest import free_port
from tests.e2e.test_s2s import presence_from
from tests.xmppclient import Client, wait

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def cluster(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`scripts/cluster` *args*: its module, run by the tests' own interpreter (the script first
    makes or updates .venv, which the tests already run in; a worktree has none of its own)."""
    return subprocess.run([sys.executable, "-m", "sns_xmpp.ops.local_cluster", "--state", str(state), *args],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)


@pytest.fixture
def cluster_of(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """Start a cluster (scripts/cluster up) and take it down after the test, whatever happens to
    the test's reactor meanwhile (a synchronous finalizer)."""

    def start(count: int, extra: str = "", per_address: int = 1000, c2s: str = "") -> tuple[Path, dict[str, int]]:
        ports = {"c2s": free_port(), "direct_tls": free_port(), "http": free_port()}
        config = tmp_path / "sns.toml"
        config.write_text(textwrap.dedent(f"""
            [server]
            domains = ["localhost"]
            data_dir = "{tmp_path / 'data'}"
            [xmpp.c2s]
            port = {ports['c2s']}
            direct_tls_port = {ports['direct_tls']}
            # Every client comes from the balancer's address: the per-address cap must take them all.
            max_connections_per_ip = {per_address}
            {c2s}
            [xmpp.s2s]
            port = -1
            [http]
            port = {ports['http']}
            public_url = "http://127.0.0.1:{ports['http']}"
            [sites.demo]
            plugin = "demo"
        """) + extra)
        state = tmp_path / "cluster"
        request.addfinalizer(lambda: cluster(state, "down"))
        started = cluster(state, "up", str(count), "--config", str(config))
        assert started.returncode == 0, started.stderr
        return state, ports

    return start


def count_refused(sockets: list[socket.socket]) -> int:
    """How many of these connections the far end closed or reset (HAProxy's refusal) within 2 s;
    an accepted one stays silent (a node speaks only after the client's stream header)."""
    readable, _, _ = select.select(sockets, [], [], 2)
    refused = 0
    for sock in readable:
        try:
            refused += sock.recv(1) == b""
        except ConnectionResetError:
            refused += 1
    return refused


def status(state: Path) -> dict[str, Any]:
    answer = cluster(state, "status", "--json")
    assert answer.returncode == 0, answer.stderr
    report: dict[str, Any] = json.loads(answer.stdout)
    return report


def add_user(state: Path, jid: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "sns-xmpp-admin"), "--config", str(state / "node0.toml"),
                    "user", "add", jid], input="secret\nsecret\n", text=True, check=True, capture_output=True)


def plain_login_from(source: str, port: int, user: str, password: str) -> str:
    """One SASL PLAIN login over direct TLS (XEP-0368) from the loopback address *source* (all of
    127.0.0.0/8 is this machine's): 'success', or the condition of the server's failure."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    credentials = base64.b64encode(f"\x00{user}\x00{password}".encode()).decode()

    def read_until(tls: ssl.SSLSocket, *ends: bytes) -> bytes:
        answer = b""
        while not any(end in answer for end in ends):
            chunk = tls.recv(4096)
            if not chunk:
                raise AssertionError(f"the server closed the stream after {answer!r}")
            answer += chunk
        return answer

    with socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                    b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
        read_until(tls, b"</stream:features>")
        tls.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>".encode())
        answer = read_until(tls, b"<success", b"</failure>")
    if b"<success" in answer:
        return "success"
    condition = re.search(rb"<failure[^>]*><([a-z-]+)", answer)
    return condition.group(1).decode() if condition else answer.decode()


def binds(state: Path, full: str) -> dict[str, int]:
    """How many times each node bound *full* so far (their logs say so)."""
    return {node["id"]: Path(node["log"]).read_text().count(f"c2s.bound jid={full} ")
            for node in status(state)["nodes"]}


PAIRS = 50
BEFORE_KILL = 6  # messages each client sends (acknowledged) before the node dies
AFTER_KILL = 6  # and after it is back


class Chatter(Client):
    """A client with stream management that counts what the server acknowledged it."""

    def __init__(self, jid: str) -> None:
        super().__init__(jid, "secret")
        # slixmpp writes its <r/> at once, ahead of the stanza still in its send queue: the
        # test queues its own <r/> behind each message instead.
        self.register_plugin("xep_0198", {"window": 1_000_000})
        self.acked: list[str] = []
        self.progress = asyncio.Event()  # set at each acknowledgement, and at a disconnection
        self.add_event_handler("stanza_acked", self._acked)
        self.add_event_handler("disconnected", lambda _: self.progress.set())

    def _acked(self, stanza: Any) -> None:
        if stanza.name == "message" and stanza["body"]:
            self.acked.append(stanza["body"])
            self.progress.set()


@pytest_twisted.ensureDeferred
async def test_fifty_pairs_chat_through_a_node_killed_and_every_acknowledged_message_arrives_once(
        cluster_of: Any) -> None:
    """50 pairs chat through HAProxy over two nodes. One node gets SIGKILL mid-conversation; its
    clients log in again through the same address (the survivor takes them). Every message whose
    sender saw it acknowledged (XEP-0198 <a/>) reaches its recipient exactly once: live, from the
    dead node's Redis inbox (delivered by the survivor), or from offline storage at the login."""
    import io

    from sns_xmpp.ops import admin

    state, ports = cluster_of(2, "\n[cluster]\nheartbeat_interval = 1\nnode_timeout = 3\n")
    names = [f"{side}{pair}" for pair in range(PAIRS) for side in "ab"]

    def add_users() -> None:
        for name in names:
            admin.run(["--config", str(state / "node0.toml"), "user", "add", f"{name}@localhost"],
                      io.StringIO("secret\nsecret\n"), io.StringIO())

    await threads.deferToThread(add_users)
    partner = {f"a{p}": f"b{p}" for p in range(PAIRS)} | {f"b{p}": f"a{p}" for p in range(PAIRS)}
    received: dict[str, list[str]] = {name: [] for name in names}
    arrived = asyncio.Event()  # set at each message that arrives anywhere

    def got(name: str, body: str) -> None:
        received[name].append(body)
        arrived.set()

    acked: dict[str, list[str]] = {name: [] for name in names}

    async def connect(name: str) -> Chatter:
        client = Chatter(f"{name}@localhost/r")
        client.add_event_handler("message", lambda message: got(name, message["body"]))
        await client.log_in(ports["c2s"])
        return client

    async def send(clients: dict[str, Chatter], name: str, first: int, count: int) -> None:
        client = clients[name]
        for number in range(first, first + count):  # paced by the server's acknowledgements
            before = len(client.acked)
            client.send_message(mto=f"{partner[name]}@localhost", mbody=f"{name}:{number}", mtype="chat")
            client.send("<r xmlns='urn:xmpp:sm:3'/>")  # after the message, through the same queue
            while len(client.acked) == before and client.is_connected():
                client.progress.clear()
                await asyncio.wait_for(client.progress.wait(), 30)

    clients: dict[str, Chatter] = {}
    for batch in range(0, len(names), 10):
        logged_in = await wait(asyncio.gather(*(connect(n) for n in names[batch:batch + 10])), timeout=60)
        clients.update(zip(names[batch:batch + 10], logged_in, strict=True))
    await wait(asyncio.gather(*(send(clients, n, 0, BEFORE_KILL) for n in names)), timeout=120)
    victim = "node0"
    on_victim = [n for n in names if f"c2s.bound jid={n}@localhost/r " in
                 Path(state / f"{victim}.log").read_text()]
    assert 0 < len(on_victim) < len(names), "the balancer spread the clients over both nodes"
    # Kill while every client is mid-conversation.
    sending = asyncio.ensure_future(asyncio.gather(*(send(clients, n, BEFORE_KILL, AFTER_KILL) for n in names)))
    while sum(len(c.acked) for c in clients.values()) < len(names) * (BEFORE_KILL + 2):
        await wait(asyncio.wait_for(arrived.wait(), 30))  # a third of the way into the second round
        arrived.clear()
    assert cluster(state, "kill", victim).returncode == 0
    await wait(sending, timeout=120)
    for name in names:
        acked[name] = list(clients[name].acked)
    # The victim's clients log in again (to the survivor) and send the rest.
    await wait(asyncio.gather(*(clients[n].wait_until("disconnected", 30) for n in on_victim
                                if clients[n].is_connected())), timeout=40)
    for name in on_victim:
        clients[name].abort()  # no reconnection of its own: a new client logs in instead
        clients[name] = await wait(connect(name), timeout=30)
    await wait(asyncio.gather(*(send(clients, n, 100, 2) for n in names)), timeout=120)
    for name in names:
        if name in on_victim:
            acked[name] += clients[name].acked
        else:
            acked[name] = list(clients[name].acked)

    def all_in() -> bool:
        return all(set(acked[n]) <= set(received[partner[n]]) for n in names)

    # The survivor finds the dead node (node_timeout) and delivers what its inbox held.
    try:
        while not all_in():
            arrived.clear()
            await wait(asyncio.wait_for(arrived.wait(), 30))
    except TimeoutError:
        pass  # what is missing is named below
    missing = {n: sorted(set(acked[n]) - set(received[partner[n]])) for n in names}
    assert {n: m for n, m in missing.items() if m} == {}
    twice = {n: [b for b in set(received[n]) if received[n].count(b) > 1] for n in names}
    assert {n: t for n, t in twice.items() if t} == {}
    total = sum(len(acked[n]) for n in names)
    assert total >= PAIRS * 2 * (BEFORE_KILL + 2)
    for name in names:
        clients[name].disconnect()


@pytest.mark.parametrize("count", [2, 3])
@pytest_twisted.ensureDeferred
async def test_through_the_balancer_users_on_different_nodes_subscribe_chat_get_carbons_and_conflict(
        cluster_of: Any, count: int) -> None:
    """Two and three nodes behind HAProxy, clients on its one address: a social user (the demo
    site's login pages, through the balancer's HTTP port, racing on two nodes for one new account)
    and a local user on different nodes subscribe, see presence and chat; the social user's
    second resource, on another node, gets carbons; binding a resource again on another node
    replaces the old session. The nodes see each client's own address (the PROXY protocol): one
    client's failed logins do not block another's behind the same balancer."""
    from types import SimpleNamespace

    from tests.e2e.test_social_login import demo_credentials

    # A pair (address, account) is blocked after two failures, with no delays (free failures: 3).
    state, ports = cluster_of(count, per_address=20, c2s="auth_block_after = 2")
    # The per-address cap, which the nodes cannot apply (all comes from the balancer's address),
    # is the balancer's: the 21st connection from one address is refused.
    held = [socket.create_connection(("127.0.0.1", ports["c2s"])) for _ in range(21)]
    try:
        refused = await threads.deferToThread(count_refused, held)
    finally:
        for sock in held:
            sock.close()
    assert refused == 1
    await threads.deferToThread(add_user, state, "bob@localhost")
    balancer = SimpleNamespace(http_url=f"http://127.0.0.1:{ports['http']}")
    # The first login of a new social account, twice at once (leastconn sends the two to two nodes).
    first, second = await defer.gatherResults([defer.ensureDeferred(demo_credentials(balancer, "rita")),
                                               defer.ensureDeferred(demo_credentials(balancer, "rita"))])
    assert first["jid"] == second["jid"]
    rita_bare = first["jid"]
    fillers: list[Client] = []
    where: dict[Client, str] = {}  # the node each client landed on

    async def on_a_node_other_than(jid: str, password: str, avoid: set[str], **options: Any) -> Client:
        """Log in through the balancer until the client lands on a node not in *avoid* (the ones
        that did not are kept connected, so leastconn moves on)."""
        for _ in range(count + 1):
            client = Client(jid, password, **options)
            client.register_plugin("xep_0280")
            before = binds(state, jid)
            await wait(client.log_in(ports["c2s"]))
            landed = [node for node, number in binds(state, jid).items() if number > before.get(node, 0)]
            assert len(landed) == 1
            where[client] = landed[0]
            if landed[0] not in avoid:
                return client
            fillers.append(client)
        raise AssertionError(f"the balancer never put {jid} outside {avoid}")

    rita = await on_a_node_other_than(f"{rita_bare}/laptop", first["password"], set(), mechanism="PLAIN")
    rita_node = where[rita]
    bob = await on_a_node_other_than("bob@localhost/b", "secret", {rita_node})
    phone = await on_a_node_other_than(f"{rita_bare}/phone", second["password"], {rita_node}, mechanism="PLAIN")
    assert where[bob] != rita_node and where[phone] != rita_node

    rita.send_presence(pto="bob@localhost", ptype="subscribe")
    assert (await wait(bob.subscription_requests.get()))["from"].bare == rita_bare
    bob.send_presence(pto=rita_bare, ptype="subscribed")
    bob.send_presence(pto=rita_bare, ptype="subscribe")
    await wait(rita.subscription_requests.get())
    rita.send_presence(pto="bob@localhost", ptype="subscribed")

    await wait(presence_from(rita, "bob@localhost"))
    await wait(presence_from(bob, rita_bare))
    await wait(phone.plugin["xep_0280"].enable())
    carbon: defer.Deferred[Any] = defer.Deferred()
    phone.add_event_handler("carbon_sent", lambda m: None if carbon.called else carbon.callback(m))
    for attempt in range(50):  # until the phone's carbons reach the laptop's node (its announcement)
        rita.send_message(mto="bob@localhost", mbody=f"hello bob {attempt}", mtype="chat")
        assert (await wait(bob.next_message()))["body"] == f"hello bob {attempt}"
        if carbon.called:
            break
    assert (await carbon)["carbon_sent"]["body"].startswith("hello bob")
    bob.send_message(mto=rita.boundjid.full, mbody="ありがとう", mtype="chat")
    assert (await wait(rita.next_message()))["body"] == "ありがとう"

    # The laptop's resource bound again on another node (through the balancer's port to that node
    # alone: on the shared one a try that landed on the same node would be the same-node conflict).
    other = next(node for node in status(state)["nodes"] if node["id"] != rita_node)
    again = Client(f"{rita_bare}/laptop", second["password"], mechanism="PLAIN")
    await wait(again.log_in(other["via_balancer"]["c2s"]))
    assert (await wait(rita.stream_errors.get()))["condition"] == "conflict"
    bob.send_message(mto=f"{rita_bare}/laptop", mbody="to the new laptop", mtype="chat")
    assert (await wait(again.next_message()))["body"] == "to the new laptop"
    for client in (again, bob, phone, *fillers):
        client.disconnect()

    # The nodes see the clients' own addresses (HAProxy's PROXY protocol header), not the
    # balancer's: two clients on two loopback addresses reach one node through the balancer
    # (direct TLS, the header outside the handshake). The first blocks its (address, bob) pair
    # with wrong passwords; the second, on the same node, still logs in as bob. Seen as the
    # balancer's one address, as before, both would be one pair, and the second refused too.
    node = status(state)["nodes"][0]
    through = node["via_balancer"]["direct_tls"]
    for password, answer in (("wrong", "not-authorized"), ("wrong", "not-authorized"),
                             ("secret", "temporary-auth-failure")):
        assert await threads.deferToThread(plain_login_from, "127.0.0.2", through, "bob", password) == answer
    assert await threads.deferToThread(plain_login_from, "127.0.0.3", through, "bob", "secret") == "success"
    log = Path(node["log"]).read_text()
    assert re.search(r"c2s\.auth_failed .*peer=127\.0\.0\.2:\d+", log), "the node logs the client's address"
    assert re.search(r"c2s\.authenticated jid=bob@localhost.* peer=127\.0\.0\.3:\d+", log)


def logins(state: Path, bare: str) -> dict[str, int]:
    """How many times each node authenticated *bare* so far (SASL or SASL2: a one-shot client's
    login, a WebSocket's, and a resumption's, which starts with a login too)."""
    return {node["id"]: Path(node["log"]).read_text().count(f"c2s.authenticated jid={bare} ")
            for node in status(state)["nodes"]}


def landed(state: Path, bare: str, before: dict[str, int]) -> str:
    """The one node that authenticated *bare* since *before* (`logins`)."""
    after = logins(state, bare)
    new = [node for node, number in after.items() if number > before.get(node, 0)]
    assert len(new) == 1, f"{bare} logged in on {new} since {before}"
    return new[0]


async def logged(path: str, text: str, timeout: float = 15) -> None:
    """Until the node log *path* has *text* (what a node noticed, with no other sign of it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while text not in Path(path).read_text():
        assert loop.time() < deadline, f"no {text!r} in {path} within {timeout} s"
        await asyncio.sleep(0.05)  # polling the condition, bounded above


@pytest_twisted.ensureDeferred
async def test_go_sendxmpp_and_xmpp_js_through_the_balancer_reach_users_on_the_other_node(
        cluster_of: Any, tmp_path: Path) -> None:
    """Clients from other stacks than slixmpp use two nodes through HAProxy, each message crossing
    from one node to the other (the recipient is always on the node the sender's connection did
    not land on, which the nodes' logs tell): go-sendxmpp (Go's crypto/tls) over STARTTLS and over
    direct TLS; xmpp.js over WebSocket through the balancer's HTTP port (the PROXY protocol on the
    HTTP side), chatting both ways with a slixmpp user on the other node, then its connection cut
    and its reconnection landing on the other node, where it resumes its session (XEP-0198 inside
    SASL2) and chats both ways again (the address it has leads there now). Every message arrives once."""
    import io

    from sns_xmpp.ops import admin
    from tests.clients import XmppJs, js_clients, require_client
    from tests.e2e.test_go_clients import go_sendxmpp

    require_client("go-sendxmpp")
    folder = js_clients()
    state, ports = cluster_of(2)

    def add_users() -> None:
        for name in ("alice", "bob", "carol", "dave", "frank", "erin"):
            admin.run(["--config", str(state / "node0.toml"), "user", "add", f"{name}@localhost"],
                      io.StringIO("secret\nsecret\n"), io.StringIO())

    await threads.deferToThread(add_users)
    nodes = {node["id"]: node for node in status(state)["nodes"]}
    other = {"node0": "node1", "node1": "node0"}
    # One slixmpp user on each node, through the balancer's ports to that node alone.
    residents: dict[str, Client] = {}
    for node_id, name in (("node0", "dave"), ("node1", "frank")):
        residents[node_id] = Client(f"{name}@localhost/r", "secret")
        await wait(residents[node_id].log_in(nodes[node_id]["via_balancer"]["c2s"]))
        assert binds(state, f"{name}@localhost/r")[node_id] == 1

    async def next_body(client: Client) -> tuple[str, str]:
        message = await wait(client.next_message())
        return message["body"], str(message["from"])

    # go-sendxmpp, once through each of the balancer's XMPP ports. The recipient logs in first,
    # through the same port: its connection is then the only one on that listener, so leastconn
    # sends go-sendxmpp's to the other node.
    clients: list[Client] = []
    for port, direct_tls, recipient in ((ports["c2s"], False, "bob"), (ports["direct_tls"], True, "carol")):
        client = Client(f"{recipient}@localhost/r", "secret")
        clients.append(client)
        await wait(client.log_in(port, direct_tls=direct_tls))
        recipient_node = next(node for node, number in binds(state, f"{recipient}@localhost/r").items() if number)
        before = logins(state, "alice@localhost")
        text = f"to {recipient} from Go over {'direct TLS' if direct_tls else 'STARTTLS'}"
        message = tmp_path / f"{recipient}.txt"
        message.write_text(text + "\n")
        arguments = ["--username", "alice@localhost", "--password", "secret", "--message", str(message)]
        answer, output = await wait(go_sendxmpp(tmp_path, port, *arguments, *(["--tls"] if direct_tls else []),
                                                f"{recipient}@localhost"), 30)
        assert answer == 0, output
        sender_node = landed(state, "alice@localhost", before)
        assert sender_node == other[recipient_node], "the balancer put go-sendxmpp beside its recipient"
        body, sender = await next_body(client)
        assert (body, sender.split("/")[0]) == (text, "alice@localhost")
        # Once: a second message from the sender's node, through the same way (that node's Redis
        # inbox of the recipient's node), comes next, with nothing between.
        residents[sender_node].send_message(mto=f"{recipient}@localhost/r", mbody="fence", mtype="chat")
        assert (await next_body(client))[0] == "fence"

    # xmpp.js over WebSocket through the balancer's HTTP port.
    service = f"ws://127.0.0.1:{ports['http']}/xmpp-websocket"
    before = logins(state, "erin@localhost")
    erin = await wait(XmppJs.start(folder, service, "erin", tmp_path / "xmppjs.log"))
    try:
        full = await wait(erin.expect("online"), 40)
        first = landed(state, "erin@localhost", before)
        await wait(erin.chat_both_ways(full, residents[other[first]], f"from xmpp.js on {first}", "to xmpp.js"), 60)

        # The connection cut under xmpp.js (a network drop, everything it received acknowledged,
        # so that nothing is due to come again), and its reconnection through the same address:
        # leastconn takes turns among nodes as loaded as each other (neither holds a WebSocket
        # now), so it lands on the other node.
        erin.command(drop=True)
        await wait(erin.expect("disconnected"), 40)
        await wait(logged(nodes[first]["log"], f"c2s.detached jid={full}"))  # the node kept the session
        before = logins(state, "erin@localhost")
        erin.command(reconnect=True)
        # The session kept on the first node resumed on the second: xmpp.js sends <resume/> inside
        # SASL2's <authenticate/> (the server lists <sm/> in its <inline/>), and the first node
        # hands the session over (tests/e2e/test_sasl2_resume_js.py has the same on one server).
        kind, again = await wait(erin.expect("online", "resumed"), 40)
        assert (kind, again) == ("resumed", full), f"a new session, not the kept one resumed; see {erin.trace}"
        second = landed(state, "erin@localhost", before)
        assert second == other[first], f"the reconnection landed on {second} again"

        # Both ways again, with the user now on the other node: the address it has now leads there.
        await wait(erin.chat_both_ways(full, residents[first], f"from xmpp.js on {second}", "to xmpp.js again"), 60)
        erin.command(stop=True)
        await wait(erin.expect("stopped"), 40)
    finally:
        erin.kill()
    assert [m["body"] for m in erin.messages] == ["to xmpp.js", "to xmpp.js again"]
    assert len({m["id"] for m in erin.messages}) == 2, erin.messages  # (XEP-0359: two messages, not one twice)
    for client in (*residents.values(), *clients):
        assert client.messages.empty(), "a message arrived twice"
        client.disconnect()
