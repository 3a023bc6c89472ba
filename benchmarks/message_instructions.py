"""The server's work for one routed chat message, in process, counted in CPU instructions.

``python -m benchmarks.message_instructions`` logs two users in on the fuzz suite's ``World``
(as ``benchmarks.login_instructions`` does) and has one send the other chat messages with a
body, each parsed, routed, serialised and written to the recipient's ``StringTransport``: no
sockets, no reactor. It prints the CPU time per message; with ``--callgrind``, instructions per
message, which repeat to within a fraction of a percent where the machine's speed does not.

    python -m benchmarks.message_instructions --messages 20000
    python -m benchmarks.message_instructions --messages 20000 --callgrind
"""

from __future__ import annotations

import argparse
import base64
import gc
import tempfile
import time
from pathlib import Path

from benchmarks.callgrind import collect, instructions

WARM_UP = 2000


def run(messages: int, features_off: tuple[str, ...] = (), bare: bool = False) -> float:
    """CPU seconds per message over *messages* routed messages, the features *features_off* left
    out (what a feature costs per message: the difference)."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.logger import LogLevel

    from sns_xmpp import startup
    startup.install()  # before anything imports wokkel (sns_xmpp/compat.py)
    from sns_xmpp.observe import log_gate
    from tests.fuzz.harness import DOMAINS, World

    log_gate.set_minimum(LogLevel.warn)
    header = (b"<stream:stream to='%s' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
              b"version='1.0'>" % DOMAINS[0].encode())
    with tempfile.TemporaryDirectory(prefix="sns-xmpp-message-instructions-") as path:
        world = World(Path(path), features_off)
        factory = world.plaintext_factory()
        peer = IPv4Address("TCP", "10.0.0.1", 40000)

        def log_in(account: str, resource: bytes) -> tuple[object, StringTransport]:
            stream = factory.buildProtocol(peer)
            transport = StringTransport(peerAddress=peer)
            stream.makeConnection(transport)
            login = world.social("sns", account)
            auth = base64.b64encode(b"\0" + login.username.encode() + b"\0" + login.password.encode())
            for chunk in (header, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + auth
                          + b"</auth>", header, b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:"
                          b"xmpp-bind'><resource>" + resource + b"</resource></bind></iq>", b"<presence/>"):
                stream.dataReceived(chunk)
            return stream, transport

        sender, _ = log_in("alice", b"phone")
        recipient, received = log_in("bob", b"laptop")
        to = (recipient.otherEntity.userhost() if bare else recipient.otherEntity.full()).encode()  # type: ignore[attr-defined]
        message = (b"<message to='%s' type='chat' id='m%%d'><body>hello there, how are you doing today?</body>"
                   b"</message>" % to)
        for n in range(WARM_UP):
            sender.dataReceived(message % n)  # type: ignore[attr-defined]
        received.clear()
        gc.collect()
        gc.freeze()
        collect("on")
        started = time.process_time()
        for n in range(messages):
            sender.dataReceived(message % n)  # type: ignore[attr-defined]
            if n % 100 == 99:
                received.clear()
        used = time.process_time() - started
        collect("off")
        sender.dataReceived(message % messages)  # type: ignore[attr-defined]
        if b"id='m%d'" % messages not in received.value():
            raise SystemExit(f"the last message was not delivered: {received.value()[-400:]!r}")
        world.database.close()
    return used / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind")
    parser.add_argument("--features-off", default="", metavar="LIST",
                        help="feature modules to leave out, comma-separated (e.g. mam,carbons)")
    parser.add_argument("--bare", action="store_true",
                        help="address the messages to the bare JID, as scripts/bench's clients do")
    args = parser.parse_args()
    off = tuple(name for name in args.features_off.split(",") if name)
    if not args.callgrind:
        seconds = run(args.messages, off, args.bare)
        print(f"{1e6 * seconds:.2f} us CPU per message over {args.messages} messages (in process)")
        return
    total = instructions("benchmarks.message_instructions",
                         ["--messages", str(args.messages), "--features-off", ",".join(off)]
                         + (["--bare"] if args.bare else []))
    print(f"{total // args.messages} instructions per message over {args.messages} messages (in process, callgrind)")


if __name__ == "__main__":
    main()
