"""Slowloris against the real HTTP listener, in a server process with an ordinary descriptor limit."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import free_port

# The server process: the whole service, with RLIMIT_NOFILE lowered to 256 (a small but real
# limit: the attack needs only more sockets than the limit, whatever it is).
SERVER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from twisted.internet import reactor
from sns_xmpp.config import load_config
from sns_xmpp.service import build_server
server = build_server(load_config(sys.argv[1]), reactor)
server.top.startService()
server.listener("http").listening.addCallback(lambda port: print("ready", flush=True))
reactor.run()
"""

CONFIG = """
[server]
domains = ["localhost"]
data_dir = "{data}"

[xmpp.c2s]
port = 0
direct_tls_port = -1

[xmpp.components]
port = -1

[http]
port = {port}
public_url = "http://127.0.0.1:{port}"
max_connections_per_ip = 64
"""

ATTACK_SOCKETS = 400


def test_an_honest_request_is_answered_quickly_during_a_slowloris(tmp_path: Path) -> None:
    """400 sockets from one address that send a request line and then nothing would take every
    descriptor the server has (256), so an honest client from another address would wait in the
    accept queue until Twisted's 60 s idle timeout freed some. With the per-address cap the
    surplus is refused at once and the honest request is answered within seconds."""
    port = free_port()
    config = tmp_path / "sns-xmpp.toml"
    config.write_text(textwrap.dedent(CONFIG).format(data=tmp_path / "data", port=port))
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(config)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    attackers: list[socket.socket] = []
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if line.strip() == "ready":
                break
        else:
            raise AssertionError("the server ended before listening")
        for _ in range(ATTACK_SOCKETS):
            attacker = socket.create_connection(("127.0.0.1", port), timeout=10)
            attacker.sendall(b"GET /sites HTTP/1.1\r\nHost: x\r\n")
            attackers.append(attacker)
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=15, source_address=("127.0.0.2", 0)) as honest:
            honest.sendall(b"GET /sites HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            try:
                while chunk := honest.recv(65536):
                    answer += chunk
            except (TimeoutError, ConnectionResetError) as error:
                answer += f"[{error!r}]".encode()
        latency = time.monotonic() - began
        print(f"honest answer after {latency:.3f} s during a slowloris of {ATTACK_SOCKETS} sockets")
        assert answer.startswith(b"HTTP/1.1 200"), (latency, answer[:100])
        assert latency < 5
    finally:
        for attacker in attackers:
            attacker.close()
        server.kill()
        server.wait()
