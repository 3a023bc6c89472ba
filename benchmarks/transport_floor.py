"""The floor under a login: Twisted's TCP transport with a protocol that does nothing.

``python -m benchmarks.transport_floor`` starts a Twisted server (epoll reactor, its own
process) whose protocol answers every read with one small write, and connects clients that
make the seven round trips of a login (header, auth, header, bind, session, presence, close)
with nothing in them, 50 at once. It prints the server's CPU per connection: what accepting,
reading, writing and closing cost before any XMPP is parsed (docs/performance.md).
``--flushing`` serves with the daemon's c2s transport (`sns_xmpp.xmpp.transport`) instead of
Twisted's ``tcp.Server``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

ROUND_TRIPS = 7
REQUEST = b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"
ANSWER = b"<iq type='result' id='b1'/>" * 4


def serve(flushing: bool, lean: bool = False) -> None:
    from typing import Any

    if lean:
        from sns_xmpp.xmpp import reactor as lean_reactor

        lean_reactor.install()
    else:
        from twisted.internet import epollreactor

        epollreactor.install()
    from twisted.internet import protocol
    from twisted.internet import reactor as installed

    reactor: Any = installed

    class Answer(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.write(ANSWER)

    factory = protocol.ServerFactory()
    factory.protocol = Answer
    if flushing:
        from sns_xmpp.xmpp.transport import FlushingPort

        port = FlushingPort(0, factory, 1024, "127.0.0.1", reactor)
        port.startListening()
    else:
        port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def connect_all(port: int, count: int, concurrency: int) -> None:
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(ROUND_TRIPS):
                writer.write(REQUEST)
                await reader.read(65536)
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(one() for _ in range(count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--flushing", action="store_true", help="serve with sns_xmpp's FlushingServer")
    parser.add_argument("--lean-reactor", action="store_true",
                        help="serve on sns_xmpp's LeanEPollReactor (twistd --reactor=sns-epoll)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.flushing, args.lean_reactor)
        return
    server = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "benchmarks.transport_floor", "--serve", *(["--flushing"] if args.flushing else []),
         *(["--lean-reactor"] if args.lean_reactor else [])],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        asyncio.run(connect_all(port, args.concurrency * 10, args.concurrency))  # warm-up
        before, started = cpu_seconds(server.pid), time.monotonic()
        asyncio.run(connect_all(port, args.connections, args.concurrency))
        used, elapsed = cpu_seconds(server.pid) - before, time.monotonic() - started
        print(f"{'FlushingServer' if args.flushing else 'tcp.Server'}"
              f"{' on LeanEPollReactor' if args.lean_reactor else ''}: "
              f"{args.connections} connections of {ROUND_TRIPS} round trips, {args.concurrency} at once: "
              f"server CPU {1000 * used / args.connections:.3f} ms per connection, "
              f"{args.connections / elapsed:.0f} connections/s")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
