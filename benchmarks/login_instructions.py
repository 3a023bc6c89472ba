"""The protocol work of one social login, in process, counted in CPU instructions.

``python -m benchmarks.login_instructions`` wires the server's parts as the fuzz suite's
``World`` does (a real SQLite file, the real sites, SASL, binding and presence code) and runs
whole logins (header, PLAIN, restart, bind, session, initial presence, footer, close) through
Twisted's ``StringTransport``: no sockets, no reactor, logging gated at warn as in the
benchmark daemon. It prints the CPU time per login.

With ``--callgrind`` it runs itself under valgrind's callgrind, collecting only around the timed
logins, and prints *instructions* per login. On a virtual machine whose speed drifts by a third
within minutes (docs/performance.md), that count is what tells a 2% change of the protocol code
from noise: it repeats to within 0.2%. It counts no kernel work (system calls), so changes to
sockets or the reactor are measured with ``scripts/bench`` and ``benchmarks.transport_floor``.

    python -m benchmarks.login_instructions --site sns --logins 3000
    python -m benchmarks.login_instructions --site idp --logins 300 --callgrind
"""

from __future__ import annotations

import argparse
import base64
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.callgrind import collect, instructions

WARM_UP = 200  # first logins: the accounts and links are made, caches filled
ACCOUNTS = 200  # as in scripts/bench: the accounts cycle, most logins find their link


def _scripts(world: Any, site: str, count: int) -> list[list[bytes]]:
    from tests.fuzz.harness import DOMAINS

    header = (b"<?xml version='1.0'?><stream:stream to='%s' xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>" % DOMAINS[0].encode())
    scripts = []
    for i in range(count):
        login = world.social(site, f"u{i % ACCOUNTS}")
        auth = base64.b64encode(b"\0" + login.username.encode() + b"\0" + login.password.encode())
        scripts.append([
            header,
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + auth + b"</auth>",
            header,
            b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>",
            b"<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
            b"<presence/>",
            b"</stream:stream>",
        ])
    return scripts


def run(site: str, logins: int) -> float:
    """CPU seconds per login over *logins* timed logins."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.logger import LogLevel
    from twisted.python.failure import Failure

    from sns_xmpp import startup
    startup.install()  # before anything imports wokkel (sns_xmpp/compat.py)
    from sns_xmpp.observe import log_gate
    from tests.fuzz.harness import World

    log_gate.set_minimum(LogLevel.warn)
    with tempfile.TemporaryDirectory(prefix="sns-xmpp-login-instructions-") as path:
        world = World(Path(path))
        factory = world.plaintext_factory()
        peer = IPv4Address("TCP", "10.0.0.1", 40000)
        scripts = _scripts(world, site, WARM_UP + logins + 1)

        def log_in(chunks: list[bytes]) -> bytes:
            stream = factory.buildProtocol(peer)
            transport = StringTransport(peerAddress=peer)
            stream.makeConnection(transport)
            for chunk in chunks:
                stream.dataReceived(chunk)
            stream.connectionLost(Failure(ConnectionDone()))
            return bytes(transport.value())

        for chunks in scripts[:WARM_UP]:
            log_in(chunks)
        # As the daemon does once started (service.freeze_startup_objects): a full collection
        # then scans only what the logins make, not the set-up.
        gc.collect()
        gc.freeze()
        collect("on")
        started = time.process_time()
        for chunks in scripts[WARM_UP:-1]:
            log_in(chunks)
        used = time.process_time() - started
        collect("off")
        answer = log_in(scripts[-1])
        if b"<success" not in answer or b"type='result' id='b1'" not in answer:
            raise SystemExit(f"the last login did not succeed: {answer[-400:]!r}")
        world.database.close()
    return used / logins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="sns", choices=["sns", "idp", "demo", "facebook"],
                        help="sns: the hmac site; idp: OpenID Connect with RS256 (default sns)")
    parser.add_argument("--logins", type=int, default=3000)
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind")
    args = parser.parse_args()
    if not args.callgrind:
        seconds = run(args.site, args.logins)
        print(f"{args.site}: {1000 * seconds:.3f} ms CPU per login over {args.logins} logins (in process)")
        return
    total = instructions("benchmarks.login_instructions", ["--site", args.site, "--logins", str(args.logins)])
    print(f"{args.site}: {total // args.logins} instructions per login "
          f"over {args.logins} logins (in process, callgrind)")


if __name__ == "__main__":
    main()
