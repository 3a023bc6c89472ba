"""The protocol work of one FAST login (XEP-0484, HT-SHA-256-NONE), in process, without TLS.

``python -m benchmarks.fast_instructions`` wires the server's parts as `benchmarks.login_instructions`
does (the fuzz suite's ``World``: a real SQLite file, the real sites, SASL2, Bind2, FAST and
presence code, logging gated at warn) and runs whole FAST logins through Twisted's
``StringTransport``: stream header, ``<authenticate mechanism='HT-SHA-256-NONE'>`` with ``<fast
count/>`` and Bind2 inline, initial presence, footer, close. No sockets, no reactor, no TLS: the
issue's goal (at most 0.5 ms of server CPU per FAST login without TLS) is about this work.

The streams are set up as the bench daemon's ``fast+tcp`` streams are: plain TCP (not
``secure``), PLAIN and with it SASL2 allowed without TLS, FAST offering ``HT-SHA-256-NONE``, and the
failed-login throttle on with the bench's policy (``auth_block_after = 10000``,
``auth_block_seconds = 1``). Before 2026-12-07 (issue 15's daemon profile) the streams here were
marked ``secure`` and ran without a throttle, which the daemon never does: each login then also
looked for a TLS connection to bind to, and skipped the throttle's bookkeeping.

Set-up, untimed: ``ACCOUNTS`` social logins at the ``hmac`` site by SASL2 PLAIN, each from a
device of its own (``<user-agent id>``) asking for a token. The clock stands still, so with the
default ``--rotation`` (a day, as the daemon's) no login is due to rotate: a device reconnecting
through the day. ``--rotation 0`` rotates at every login (a store write each), and each device keeps
the token its last login returned. The CPU time counts only the server's
calls (feeding the stream, closing it); the client's part (an HMAC, a regular expression) is
outside it. Under ``--callgrind`` the whole loop is counted, the client's part included (a few
thousand instructions of the total).

    python -m benchmarks.fast_instructions --logins 3000
    python -m benchmarks.fast_instructions --logins 1000 --callgrind
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import hmac
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.callgrind import collect, instructions

WARM_UP = 200  # first FAST logins: caches filled, every device's token rotated once
ACCOUNTS = 200  # devices, one social account each, as in scripts/bench
LIFETIME = 30 * 86400.0  # [xmpp.c2s] fast_token_lifetime's default
TOKEN = re.compile(rb"<token xmlns='urn:xmpp:fast:0' expiry='[^']+' token='([^']+)'/>")
BIND2 = b"<bind xmlns='urn:xmpp:bind:0'><tag>bench</tag></bind>"


@dataclass
class Device:
    user: str  # the authcid: the bound JID's localpart
    agent: str
    token: str
    count: int = 1


def _authenticate(mechanism: str, initial: bytes, agent: str, extra: bytes) -> bytes:
    return (f"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='{mechanism}'><initial-response>"
            f"{base64.b64encode(initial).decode()}</initial-response><user-agent id='{agent}'/>").encode() + extra + \
        b"</authenticate>"


ROTATION = 86400.0  # [xmpp.c2s] fast_token_rotation's default


def run(logins: int, rotation: float = ROTATION) -> float:
    """CPU seconds of the server's part per FAST login, over *logins* timed logins."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.logger import LogLevel
    from twisted.python.failure import Failure

    from sns_xmpp import startup
    startup.install()  # before anything imports wokkel (sns_xmpp/compat.py)
    from sns_xmpp.auth.fast import FastTokens
    from sns_xmpp.auth.throttle import ThrottlePolicy
    from sns_xmpp.observe import log_gate
    from sns_xmpp.xmpp.negotiation import C2SSettings
    from tests.fuzz.harness import DOMAINS, World

    log_gate.set_minimum(LogLevel.warn)
    header = (b"<?xml version='1.0'?><stream:stream to='%s' xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>" % DOMAINS[0].encode())
    with tempfile.TemporaryDirectory(prefix="sns-xmpp-fast-instructions-") as path:
        world = World(Path(path))
        base = world.settings(throttle=ThrottlePolicy(block_after=10000, block_seconds=1.0))  # bench.toml.in's
        settings = C2SSettings(domains=base.domains, checker=base.checker, sessions=base.sessions, tls_context=None,
                               require_tls=False, allow_plain_without_tls=True, metrics=base.metrics, sasl2=True,
                               throttle=base.throttle,
                               fast=FastTokens(world.store, world.clock, LIFETIME, rotation))  # type: ignore[arg-type]
        factory = world.factory(settings, secure=False)
        peer = IPv4Address("TCP", "10.0.0.1", 40000)
        spent = [0.0]

        def log_in(chunks: list[bytes]) -> bytes:
            started = time.process_time()
            stream = factory.buildProtocol(peer)
            transport = StringTransport(peerAddress=peer)
            stream.makeConnection(transport)
            for chunk in chunks:
                stream.dataReceived(chunk)
            stream.connectionLost(Failure(ConnectionDone()))
            spent[0] += time.process_time() - started
            return bytes(transport.value())

        request = b"<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"
        devices = []
        for index in range(ACCOUNTS):
            social, agent = world.social("sns", f"u{index}"), str(uuid.uuid4())
            answer = log_in([header, _authenticate("PLAIN", f"\0{social.username}\0{social.password}".encode(), agent,
                                                   BIND2 + request), b"<presence/>", b"</stream:stream>"])
            token = TOKEN.search(answer)
            identifier = re.search(rb"<authorization-identifier>([^@<]+)@", answer)
            if token is None or identifier is None:
                raise SystemExit(f"the social login got no token: {answer[-400:]!r}")
            devices.append(Device(identifier.group(1).decode(), agent, token.group(1).decode()))

        def fast(device: Device) -> bytes:
            initial = device.user.encode() + b"\0" + hmac.digest(device.token.encode(), b"Initiator", hashlib.sha256)
            inline = b"<fast xmlns='urn:xmpp:fast:0' count='%d'/>" % device.count + BIND2
            answer = log_in([header, _authenticate("HT-SHA-256-NONE", initial, device.agent, inline),
                             b"<presence/>", b"</stream:stream>"])
            token = TOKEN.search(answer)
            if b"<success xmlns='urn:xmpp:sasl:2'>" not in answer or b"<presence" not in answer or (
                    token is None and not rotation):
                raise SystemExit(f"a FAST login did not succeed: {answer[-400:]!r}")
            if token is not None:  # rotated
                device.token, device.count = token.group(1).decode(), 1
            else:
                device.count += 1
            return answer

        for index in range(WARM_UP):
            fast(devices[index % ACCOUNTS])
        # As the daemon does once started (service.freeze_startup_objects).
        gc.collect()
        gc.freeze()
        spent[0] = 0.0
        collect("on")
        for index in range(logins):
            fast(devices[index % ACCOUNTS])
        collect("off")
        used = spent[0]
        world.database.close()
    return used / logins


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=3000)
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind")
    parser.add_argument("--rotation", type=float, default=ROTATION,
                        help="fast_token_rotation (s); 0 rotates the token at every login, as before it existed")
    args = parser.parse_args(argv)
    if not args.callgrind:
        seconds = run(args.logins, args.rotation)
        print(f"FAST (HT-SHA-256-NONE, Bind2, no TLS): {1000 * seconds:.3f} ms server CPU per login "
              f"over {args.logins} logins (in process)")
        return
    total = instructions("benchmarks.fast_instructions",
                         ["--logins", str(args.logins), "--rotation", str(args.rotation)])
    print(f"FAST (HT-SHA-256-NONE, Bind2, no TLS): {total // args.logins} instructions per login "
          f"over {args.logins} logins (in process, callgrind, the client's part included)")


if __name__ == "__main__":
    main()
