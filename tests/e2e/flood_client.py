"""A separate process that opens many XMPP connections which never authenticate.

Usage: python -m tests.e2e.flood_client PORT COUNT PER_ADDRESS
Prints "opened N" once all are open, then, when the server has closed them all,
one JSON line: how many ended with <connection-timeout/>, and samples of any other ending.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")


async def main(port: int, count: int, per_address: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    readers = []
    for n in range(count):
        address = f"127.0.{1 + n // (per_address * 250)}.{1 + (n // per_address) % 250}"
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
        writer.write(HEADER.encode())
        readers.append((reader, writer))
    print(f"opened {len(readers)}", flush=True)
    endings = await asyncio.gather(*(reader.read() for reader, _ in readers))
    timed_out = sum(b"<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in e for e in endings)
    others = [e.decode("utf-8", "replace")[-300:] for e in endings
              if b"<connection-timeout" not in e][:3]
    print(json.dumps({"closed": len(endings), "connection_timeout": timed_out, "others": others}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
