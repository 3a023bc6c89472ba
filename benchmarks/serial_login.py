"""One login at a time, timed by a client that costs little: the latency of a lone login.

The load generator (`benchmarks.loadgen`) is asyncio with the standard library's TLS layer: it
is built for thousands of connections at once, and a lone STARTTLS login costs it about as much
CPU as it costs the server (its `SSLProtocol` is Python, and Debian's OpenSSL 3.0 handshakes
slowly). One login at a time, server and client take turns, so the client's own CPU is half of
what a latency figure measures. This client is blocking sockets, pyOpenSSL (the OpenSSL that
`cryptography` bundles, as the server uses) and expat through `xml.etree`'s pull parser: it does
the same steps as `loadgen.log_in` (stream, STARTTLS, SASL, restart, bind, session when offered,
initial presence and its echo) with little of its own cost on top, so what it times is mostly
the server and the network stack.

    python -m benchmarks.serial_login --port 5222 --logins 200 [--no-tls] [--server-pid PID]

prints one JSON object: p50/p90/p99/max in milliseconds, and the client's (and, given its pid,
the server's) CPU per login.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from OpenSSL import SSL

from benchmarks.loadgen import ScramClient, percentiles_ms

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
TICKS = os.sysconf("SC_CLK_TCK")


class LoginFailed(Exception):
    pass


class BlockingStream:
    """A client stream over a blocking socket, plain or under pyOpenSSL after STARTTLS."""

    def __init__(self, sock: socket.socket, domain: str) -> None:
        self.sock = sock
        self.domain = domain
        self.tls: SSL.Connection | None = None
        self.parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.ready: list[ET.Element] = []

    def send(self, text: str) -> None:
        data = text.encode()
        if self.tls is not None:
            self.tls.sendall(data)
        else:
            self.sock.sendall(data)

    def _read(self) -> bytes:
        data = self.tls.recv(65536) if self.tls is not None else self.sock.recv(65536)
        if not data:
            raise LoginFailed("the server closed the connection")
        return data

    def next_element(self) -> ET.Element:
        """The next complete child of the stream's root."""
        while not self.ready:
            self.parser.feed(self._read())
            events: list[Any] = list(self.parser.read_events())  # ("start" | "end", Element) only
            for kind, element in events:
                if kind == "start":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1 and isinstance(element, ET.Element):
                        self.ready.append(element)
                    elif self.depth == 0:
                        raise LoginFailed("the server ended the stream")
        return self.ready.pop(0)

    def open_stream(self) -> ET.Element:
        """Send a stream header (a new parser, as after every restart) and return the features."""
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.send(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAM}' "
                  f"to='{self.domain}' version='1.0'>")
        features = self.next_element()
        if features.tag != f"{{{NS_STREAM}}}features":
            raise LoginFailed(f"expected features, got {features.tag}")
        return features

    def start_tls(self, context: SSL.Context) -> None:
        self.tls = SSL.Connection(context, self.sock)
        self.tls.set_tlsext_host_name(self.domain.encode())
        self.tls.set_connect_state()
        self.tls.do_handshake()

    def close(self) -> None:
        try:
            self.send("</stream:stream>")
        except (OSError, SSL.Error):
            pass
        self.sock.close()


def client_context() -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_verify(SSL.VERIFY_NONE)  # the benchmark server's certificate is self-made
    return context


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _expect(stream: BlockingStream, tag: str) -> ET.Element:
    element = stream.next_element()
    if element.tag != tag:
        raise LoginFailed(f"expected {tag}, got {element.tag}: {ET.tostring(element)[:200]!r}")
    return element


def log_in(host: str, port: int, domain: str, username: str, password: str, mechanism: str,
           tls: SSL.Context | None) -> BlockingStream:
    """The whole login, as `loadgen.log_in` does it; returns the bound stream."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = BlockingStream(sock, domain)
    try:
        features = stream.open_stream()
        if tls is not None:
            if features.find(f"{{{NS_TLS}}}starttls") is None:
                raise LoginFailed("STARTTLS not offered")
            stream.send(f"<starttls xmlns='{NS_TLS}'/>")
            _expect(stream, f"{{{NS_TLS}}}proceed")
            stream.start_tls(tls)
            features = stream.open_stream()
        if mechanism == "PLAIN":
            stream.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>"
                        f"{_b64(f'{chr(0)}{username}{chr(0)}{password}'.encode())}</auth>")
        else:
            scram = ScramClient(mechanism, username, password)
            stream.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{_b64(scram.first())}</auth>")
            challenge = _expect(stream, f"{{{NS_SASL}}}challenge")
            response = scram.final(base64.b64decode(challenge.text or ""))
            stream.send(f"<response xmlns='{NS_SASL}'>{_b64(response)}</response>")
        success = _expect(stream, f"{{{NS_SASL}}}success")
        if mechanism != "PLAIN":
            scram.verify(base64.b64decode(success.text or ""))
        features = stream.open_stream()
        stream.send(f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'/></iq>")
        bound = _expect(stream, "{jabber:client}iq")
        jid = bound.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        if bound.get("type") != "result" or not jid:
            raise LoginFailed(f"bind refused: {ET.tostring(bound)[:200]!r}")
        session = features.find(f"{{{NS_SESSION}}}session")
        if session is not None and session.find(f"{{{NS_SESSION}}}optional") is None:
            stream.send(f"<iq type='set' id='session'><session xmlns='{NS_SESSION}'/></iq>")
            _expect(stream, "{jabber:client}iq")
        stream.send("<presence/>")
        while True:  # the server sends the initial presence back to the client's own resource
            element = stream.next_element()
            if element.tag == "{jabber:client}presence" and element.get("from") == jid:
                return stream
    except BaseException:
        sock.close()
        raise


def process_cpu_s(pid: int) -> float:
    """utime + stime of *pid*, all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(host: str, port: int, domain: str, accounts: Sequence[tuple[str, str]], logins: int,
            mechanism: str, use_tls: bool, server_pid: int | None = None, warm_up: int = 10) -> dict[str, Any]:
    """*logins* logins one after another, each on a fresh connection, closed before the next."""
    context = client_context() if use_tls else None
    for index in range(warm_up):  # the server's first logins of an account load it from disk
        username, password = accounts[index % len(accounts)]
        log_in(host, port, domain, username, password, mechanism, context).close()
    samples: list[int] = []
    failures = 0
    client_cpu = 0.0
    server_before = process_cpu_s(server_pid) if server_pid else None
    for index in range(logins):
        username, password = accounts[index % len(accounts)]
        cpu_before, start = time.process_time(), time.perf_counter_ns()
        try:
            stream = log_in(host, port, domain, username, password, mechanism, context)
        except (LoginFailed, OSError, SSL.Error) as failure:
            failures += 1
            print(f"serial_login: {failure}", file=sys.stderr)
            continue
        samples.append(time.perf_counter_ns() - start)
        client_cpu += time.process_time() - cpu_before
        stream.close()
    result: dict[str, Any] = {"ok": len(samples), "failed": failures, "latency_ms": percentiles_ms(samples),
                              "client_cpu_ms_per_login": round(1000 * client_cpu / max(1, len(samples)), 3)}
    if server_pid and server_before is not None:
        # Closing and the warm-up are outside the timed part but inside this figure: it is an upper bound.
        result["server_cpu_ms_per_login"] = round(1000 * (process_cpu_s(server_pid) - server_before) / logins, 3)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5222)
    parser.add_argument("--domain", default="localhost")
    parser.add_argument("--user", default="bench{n}", help="user name pattern, {n} the account's number")
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--password", default="bench-password-0")
    parser.add_argument("--mechanism", default="SCRAM-SHA-256", choices=("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"))
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--no-tls", action="store_true", help="log in over plain TCP")
    parser.add_argument("--server-pid", type=int, help="also report this process's CPU per login")
    args = parser.parse_args(argv)
    accounts = [(args.user.format(n=n), args.password) for n in range(args.accounts)]
    result = measure(args.host, args.port, args.domain, accounts, args.logins, args.mechanism,
                     not args.no_tls, args.server_pid)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
