"""ejabberd's external authentication protocol (``auth_method: external``), on one stream.

ejabberd starts ``extauth_pool_size`` copies of the program and writes each request to one of
them as a 2-byte big-endian length and the text ``<op>:<user>:<server>[:<password>]``; the
answer is the 2-byte length 2 and the 2-byte result, 0 or 1. The requests (ejabberd's
``extauth.erl``): ``auth``, ``isuser``, ``setpass``, ``tryregister``, ``removeuser`` and
``removeuser3``; anything else (``certauth``) is answered 0. The password comes last and may
hold ``:`` (a hand-over password does); a localpart and a domain never do (RFC 7622).

ejabberd 23.01 waits for each answer before it writes the next request to the same process, so
its concurrency is the pool. This protocol does not rely on that: each request is handled as
it arrives, many at once (a site verifying a token, the store, key derivation in a thread), and
the answers are written in the order of the requests, which is how they are matched.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from sns_xmpp.auth.external import ExternalAccounts
from sns_xmpp.observe.log_gate import GatedLogger

log = GatedLogger()

YES = b"\x00\x02\x00\x01"
NO = b"\x00\x02\x00\x00"
WITH_PASSWORD = frozenset({"auth", "setpass", "tryregister", "removeuser3"})
WITHOUT_PASSWORD = frozenset({"isuser", "removeuser"})
INPUT_CLOSED_GRACE = 10  # seconds unanswered requests get once ejabberd closed our input


@dataclass
class Request:
    """One parsed request; *password* is None for those that carry none."""

    op: str
    user: str
    server: str
    password: str | None = None

    def __repr__(self) -> str:  # never the password, wherever a request is shown
        return f"Request(op={self.op!r}, user={self.user!r}, server={self.server!r})"


def parse_request(data: bytes) -> Request | None:
    """The request in one packet; None for anything malformed or unknown."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    op, _, rest = text.partition(":")
    if op in WITH_PASSWORD:
        parts = rest.split(":", 2)
        if len(parts) != 3:
            return None
        return Request(op, parts[0], parts[1], parts[2])
    if op in WITHOUT_PASSWORD:
        parts = rest.split(":")
        if len(parts) != 2:
            return None
        return Request(op, parts[0], parts[1])
    return None


class _Answer:
    __slots__ = ("result",)

    def __init__(self) -> None:
        self.result: bool | None = None


@implementer(IHalfCloseableProtocol)
class ExtauthProtocol(Int16StringReceiver):
    """Requests in, answers out in the same order. When ejabberd closes the program's standard
    input, the requests read so far are still answered; then the stream ends and *on_lost* runs."""

    MAX_LENGTH = 65535  # what a 2-byte length can say

    def __init__(self, accounts: ExternalAccounts, clock: IReactorTime,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.accounts = accounts
        self.clock = clock
        self.on_lost = on_lost
        self._waiting: deque[_Answer] = deque()
        self._input_closed = False
        self._by_account: dict[tuple[str, str], Deferred[None]] = {}
        self.handled = 0  # requests answered, for the benchmark

    def stringReceived(self, data: bytes) -> None:
        answer = _Answer()
        self._waiting.append(answer)
        request = parse_request(data)
        if request is None:
            log.warn("extauth.malformed_request size={size}", size=len(data))
            self._settle(answer, False)
            return
        # Requests about one account run in their order (a setpass, then an auth with the new
        # password); requests about different accounts run side by side.
        key = (request.user.lower(), request.server.lower())
        before = self._by_account.get(key)
        d: Deferred[None] = Deferred()
        self._by_account[key] = d
        if before is None:
            self._run(request, answer, key, d)
        else:
            before.addBoth(lambda _: self._run(request, answer, key, d))

    def _run(self, request: Request, answer: _Answer, key: tuple[str, str], done: Deferred[None]) -> None:
        try:
            d = self._handle(request)
        except Exception:
            d = defer.fail()

        def failed(failure: Failure) -> bool:
            log.failure("extauth.request_failed op={op}", failure, op=request.op)
            return False

        def settled(result: bool) -> None:
            if self._by_account.get(key) is done:
                del self._by_account[key]
            self._settle(answer, bool(result))
            done.callback(None)

        d.addErrback(failed).addCallback(settled)

    def _handle(self, request: Request) -> Deferred[bool]:
        accounts, user, server, password = self.accounts, request.user, request.server, request.password or ""
        if request.op == "auth":
            return accounts.authenticate(user, server, password)
        if request.op == "isuser":
            return accounts.exists(user, server)
        if request.op == "setpass":
            return accounts.set_password(user, server, password)
        if request.op == "tryregister":
            return accounts.register(user, server, password, self.clock.seconds())
        if request.op == "removeuser":
            return accounts.remove(user, server)
        return accounts.remove_checked(user, server, password)  # removeuser3

    def _settle(self, answer: _Answer, result: bool) -> None:
        answer.result = result
        while self._waiting and self._waiting[0].result is not None:
            done = self._waiting.popleft()
            self.handled += 1
            if self.transport is not None and self.connected:
                self.transport.write(YES if done.result else NO)
        self._end_if_done()

    def readConnectionLost(self) -> None:
        log.info("extauth.input_closed waiting={waiting}", waiting=len(self._waiting))
        self._input_closed = True
        self._end_if_done()
        if self._waiting:  # answers still being worked out get a while, not for ever
            self.clock.callLater(INPUT_CLOSED_GRACE, self._give_up)

    def _give_up(self) -> None:
        if self.transport is not None and self.connected:
            log.warn("extauth.unanswered waiting={waiting}", waiting=len(self._waiting))
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        # Nobody reads our answers: ejabberd is gone. StandardIO's loseConnection then stops
        # reading and never reports the end (orphaned extauth processes were found idle, their
        # input no longer polled), so the program ends from here.
        if self.transport is not None:
            self.transport.loseConnection()
        self._ended()

    def _end_if_done(self) -> None:
        if self._input_closed and not self._waiting and self.transport is not None:
            self.transport.loseConnection()

    def lengthLimitExceeded(self, length: int) -> None:  # a 2-byte length never exceeds it
        log.warn("extauth.too_long length={length}", length=length)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._ended()

    def _ended(self) -> None:
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            log.info("extauth.stopped answered={answered}", answered=self.handled)
            on_lost()
