"""The Redis client of the cluster layer (issue 20): txredisapi against redis.asyncio, measured.

    python -m benchmarks.redis_clients [--duration S] [--redis-py DIR] [--hiredis DIR]

Each client runs in a process of its own against a throwaway redis-server on loopback (no
persistence), on the streams the cluster's inboxes use (sns_xmpp/cluster/inbox.py), in two shapes:

- ``sequential``: one XADD of an inbox entry (a 250-byte chat message), then the XREADGROUP that
  reads it back, one after the other: a round trip's cost when nothing else is in flight;
- ``burst``: 256 XADDs issued at once, as independent calls (one per message a node forwards,
  not batched by the caller), then one XREADGROUP COUNT 256 that reads them back, and the XACK
  and XDEL of the 256 ids, as the inbox does with a batch it has handled.

The figure is entries per CPU-second of the client's process (time.process_time, all its threads),
and per wall second; redis-server's own CPU is beside it. Variants:

- ``txredisapi``: Twisted, on the server's own reactor (sns-epoll), one connection that pipelines
  every command (what sns_xmpp/cluster/redis_link.py uses), with txredisapi's pure-Python reply
  parser;
- ``txredisapi+hiredis``: the same, with hiredis installed, which txredisapi then uses to parse
  replies (its HiredisProtocol);
- ``redis.asyncio``, ``redis.asyncio+hiredis``: redis-py on the asyncio event loop, which a Twisted
  server can use only under the asyncio reactor; independent calls each take a connection of
  its pool (it does not pipeline them on one connection), so ``burst`` opens up to 256
  connections; ``burst-pipeline`` is its best case, the 256 XADDs batched by the caller in one
  pipeline.

redis-py and hiredis are not dependencies of the project: install them into folders of their own
(``pip install --target /tmp/redis-py redis``, ``--target /tmp/hiredis hiredis``) and name those
folders; the variants whose modules cannot be imported are left out. The JSON goes to stdout, a
table to stderr. Figures and what they say: docs/performance.md, "Cluster".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
BURST = 256  # as the inbox's READ_BATCH
STANZA = ("<message xmlns='jabber:client' to='bench1@localhost/r1' type='chat' from='bench0@localhost/r0' "
          "id='a1b2c3d4'><body>" + "x" * 120 + "</body></message>")
VARIANTS = ("txredisapi", "txredisapi+hiredis", "redis.asyncio", "redis.asyncio+hiredis")


def entry(number: int) -> list[Any]:
    """An inbox entry's fields, as `Inbox._add` writes them."""
    return ["k", "s", "t", f"bench{number % 100}@localhost/r{number % 100}", "x", STANZA, "o", ""]


# -- the measured loops, one per client library ----------------------------------------------


class Loop:
    """Counts entries through *step* (which handles a batch and says how many) for *duration*
    seconds after a warm-up; CPU and wall time over the timed part."""

    def __init__(self, duration: float) -> None:
        self.duration = duration

    async def run(self, step: Callable[[int], Awaitable[int]]) -> dict[str, Any]:
        done, start = 0, time.monotonic()
        while time.monotonic() - start < min(1.0, self.duration / 5):  # warm-up
            done += await step(done)
        cpu0, wall0, count = time.process_time(), time.monotonic(), 0
        while time.monotonic() - wall0 < self.duration:
            count += await step(done + count)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        return {"entries": count, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                "per_cpu_s": round(count / cpu) if cpu else None, "per_s": round(count / wall)}


async def txredisapi_shapes(port: int, duration: float, stream: str) -> dict[str, Any]:
    import txredisapi
    from twisted.internet import defer

    connection = await txredisapi.Connection(HOST, port, reconnect=False, convertNumbers=False)
    command = connection.execute_command
    try:
        await command("XGROUP", "CREATE", stream, "g", "$", "MKSTREAM")

        async def sequential(number: int) -> int:
            await command("XADD", stream, "MAXLEN", "~", 10000, "*", *entry(number))
            await command("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "STREAMS", stream, ">")
            return 1

        async def burst(number: int) -> int:
            await defer.gatherResults([command("XADD", stream, "*", *entry(number + i)) for i in range(BURST)])
            reply = await command("XREADGROUP", "GROUP", "g", "c", "COUNT", BURST, "STREAMS", stream, ">")
            ids = [entry_id for entry_id, _ in reply[0][1]]
            await defer.gatherResults([command("XACK", stream, "g", *ids), command("XDEL", stream, *ids)])
            return len(ids)

        loop = Loop(duration)
        return {"sequential": await loop.run(sequential), "burst": await loop.run(burst)}
    finally:
        connection.disconnect()


async def redis_asyncio_shapes(port: int, duration: float, stream: str) -> dict[str, Any]:
    import redis.asyncio

    client = redis.asyncio.Redis(host=HOST, port=port, max_connections=2 * BURST)
    try:
        await client.execute_command("XGROUP", "CREATE", stream, "g", "$", "MKSTREAM")

        async def sequential(number: int) -> int:
            await client.execute_command("XADD", stream, "MAXLEN", "~", 10000, "*", *entry(number))
            await client.execute_command("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "STREAMS", stream, ">")
            return 1

        async def read_and_ack() -> int:
            reply = await client.execute_command("XREADGROUP", "GROUP", "g", "c", "COUNT", BURST, "STREAMS",
                                                 stream, ">")
            entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
            ids = [entry_id for entry_id, _ in entries]
            await asyncio.gather(client.execute_command("XACK", stream, "g", *ids),
                                 client.execute_command("XDEL", stream, *ids))
            return len(ids)

        async def burst(number: int) -> int:
            await asyncio.gather(*(client.execute_command("XADD", stream, "*", *entry(number + i))
                                   for i in range(BURST)))
            return await read_and_ack()

        async def burst_pipeline(number: int) -> int:
            pipeline = client.pipeline(transaction=False)
            for i in range(BURST):
                pipeline.execute_command("XADD", stream, "*", *entry(number + i))
            await pipeline.execute()
            return await read_and_ack()

        loop = Loop(duration)
        shapes = {"sequential": await loop.run(sequential), "burst": await loop.run(burst)}
        shapes["burst"]["connections"] = len(client.connection_pool._available_connections)  # noqa: SLF001
        shapes["burst-pipeline"] = await loop.run(burst_pipeline)
        return shapes
    finally:
        await client.aclose()


def child(variant: str, port: int, duration: float) -> dict[str, Any]:
    """Run one variant in this process; what it measured."""
    stream = f"bench:{variant}:{os.getpid()}"
    if variant.startswith("txredisapi"):
        from twisted.internet import defer

        from sns_xmpp.xmpp import reactor as lean

        reactor = lean.install()
        import txredisapi

        found: dict[str, Any] = {}
        done = defer.ensureDeferred(txredisapi_shapes(port, duration, stream))
        done.addCallback(found.update).addErrback(lambda reason: found.update(error=str(reason.value)))
        done.addBoth(lambda _: reactor.stop())
        reactor.run()
        parser = "hiredis" if txredisapi.hiredis is not None else "python"
        return {"variant": variant, "parser": parser, "reactor": type(reactor).__name__, "shapes": found}
    import redis
    import redis.asyncio  # noqa: F401 - the module the variant measures

    shapes = asyncio.run(redis_asyncio_shapes(port, duration, stream))
    from redis.utils import HIREDIS_AVAILABLE

    return {"variant": variant, "redis_py": redis.__version__, "parser": "hiredis" if HIREDIS_AVAILABLE else "python",
            "reactor": "asyncio", "shapes": shapes}


# -- the runner ----------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", HOST, "--dir", str(folder),  # noqa: S603, S607
                               "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return server, port
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("redis_clients: redis-server did not start")


def run_variant(variant: str, port: int, server_pid: int, duration: float, paths: list[str]) -> dict[str, Any]:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *paths]))
    before = process_cpu_seconds(server_pid)
    done = subprocess.run([sys.executable, "-m", "benchmarks.redis_clients", "--child", variant,  # noqa: S603
                           "--port", str(port), "--duration", str(duration)], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120 + 10 * duration, check=False)
    if done.returncode != 0:
        return {"variant": variant, "error": done.stderr.strip()[-500:]}
    found: dict[str, Any] = json.loads(done.stdout)
    found["redis_server_cpu_s"] = round(process_cpu_seconds(server_pid) - before, 3)
    return found


def importable(module: str, paths: list[str]) -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=dict(  # noqa: S603
        os.environ, PYTHONPATH=os.pathsep.join(paths)), capture_output=True, check=False)
    return probe.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_clients", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds timed per shape (default 5)")
    parser.add_argument("--redis-py", default="", help="folder holding redis-py (pip install --target)")
    parser.add_argument("--hiredis", default="", help="folder holding hiredis (pip install --target)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.port, args.duration)))
        return 0
    folder = Path(tempfile.mkdtemp(prefix="sns-xmpp-redis-clients-"))
    server, port = start_redis(folder)
    results = []
    try:
        for variant in args.variants.split(","):
            paths = ([args.redis_py] if variant.startswith("redis.") and args.redis_py else []) + \
                    ([args.hiredis] if variant.endswith("+hiredis") and args.hiredis else [])
            needed = ["redis"] if variant.startswith("redis.") else []
            needed += ["hiredis"] if variant.endswith("+hiredis") else []
            missing = [module for module in needed if not importable(module, paths)]
            if missing:
                results.append({"variant": variant, "skipped": f"cannot import {', '.join(missing)}"})
                continue
            print(f"redis_clients: {variant} ...", file=sys.stderr, flush=True)
            results.append(run_variant(variant, port, server.pid, args.duration, paths))
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    report = {"duration_s": args.duration, "load_average": [round(v, 2) for v in os.getloadavg()], "results": results}
    print(table(report), file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


def table(report: dict[str, Any]) -> str:
    lines = [f"{'variant':<24} {'shape':<16} {'entries':>8} {'per CPU-s':>10} {'per s':>8} {'cpu s':>6}"]
    for result in report["results"]:
        if "shapes" not in result:
            lines.append(f"{result['variant']:<24} {result.get('skipped') or result.get('error')}")
            continue
        for shape, figures in result["shapes"].items():
            if not isinstance(figures, dict):
                lines.append(f"{result['variant']:<24} {shape}: {figures}")
                continue
            lines.append(f"{result['variant']:<24} {shape:<16} {figures['entries']:>8} {figures['per_cpu_s'] or 0:>10} "
                         f"{figures['per_s']:>8} {figures['cpu_s']:>6.2f}")
        lines.append(f"{'':<24} parser {result['parser']}, {result['reactor']}, redis-server CPU "
                     f"{result['redis_server_cpu_s']} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
