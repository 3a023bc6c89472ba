"""The console's password check, off the reactor thread, and its scripts (commands and piped
input, without a terminal) with a stand-in for Conch's session process protocol."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import task, threads
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from sns_xmpp.ops.manhole import ConsoleScript, PasswordHashChecker, hash_password


@pytest_twisted.ensureDeferred
async def test_a_wrong_console_password_is_refused_while_the_reactor_keeps_serving() -> None:
    """600,000 PBKDF2 rounds (half a second) run in the reactor's thread pool: while a wrong
    password is being checked, timers keep firing every 10 ms; the right password is accepted."""
    from twisted.internet import reactor

    checker = PasswordHashChecker(b"admin", hash_password("console-pass"), lambda *args: threads.deferToThreadPool(
        reactor, reactor.getThreadPool(), *args))  # type: ignore[attr-defined]
    ticks: list[float] = []
    loop = task.LoopingCall(lambda: ticks.append(reactor.seconds()))  # type: ignore[attr-defined]
    loop.start(0.01)
    try:
        started = reactor.seconds()  # type: ignore[attr-defined]
        checking = checker.requestAvatarId(UsernamePassword(b"admin", b"console-pasS"))
        refused: list[Failure] = []
        await checking.addErrback(refused.append)
        took = reactor.seconds() - started  # type: ignore[attr-defined]
    finally:
        loop.stop()
    assert refused and refused[0].check(UnauthorizedLogin)
    during = [t for t in ticks if started < t < started + took]
    assert len(during) >= took / 0.01 / 4, f"{len(during)} ticks in {took:.2f} s of hashing"
    accepted = await checker.requestAvatarId(UsernamePassword(b"admin", b"console-pass"))
    assert accepted == b"admin"


class Process:
    """What a ConsoleScript writes to: Conch's SSHSessionProcessProtocol, recorded."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Failure | None = None

    def outReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.out += data

    def errReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.err += data

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        assert self.ended is None
        self.ended = reason

    @property
    def status(self) -> int | None:
        if self.ended is None:
            return None
        return 0 if self.ended.check(ProcessDone) else self.ended.value.exitCode


def test_piped_lines_wait_for_a_deferred_before_the_next_and_end_at_eof() -> None:
    """Piped input split anywhere: a statement whose value is a Deferred holds back the next one
    until it fires, an exception is reported and the rest still runs, and EOF ends the script
    with status 1 because something raised."""
    pending: Deferred[Any] = Deferred()
    namespace: dict[str, Any] = {"later": lambda: pending, "now": lambda: succeed([1, 2])}
    process = Process()
    script = ConsoleScript(namespace, process)
    for piece in (b"x = 4", b"0\nlater()\nx +", b" 2\nif x:\n  print('yes')\n\nnow()\n", b"undefined_name\nx"):
        script.data_received(piece)
    assert process.out == b""
    pending.callback("fired")
    assert process.out == b"'fired'\n42\nyes\n[1, 2]\n"
    assert process.err == b"NameError: name 'undefined_name' is not defined\n"
    assert process.status is None
    script.eof_received()
    assert process.out.endswith(b"[1, 2]\n40\n")
    assert process.status == 1
    assert isinstance(process.ended.value, ProcessTerminated)  # type: ignore[union-attr]


def test_a_command_ignores_input_and_a_failed_deferred_exits_1() -> None:
    """An exec command: EOF before it runs does not end it; a Deferred that fails prints the
    exception's last line to stderr and exits 1; one that succeeds exits 0."""
    failing: Deferred[Any] = Deferred()
    process = Process()
    script = ConsoleScript({"lookup": lambda: failing}, process)
    script.expect_command()
    script.eof_received()
    script.data_received(b"ignored\n")
    script.run_command("lookup()")
    assert process.status is None
    failing.errback(KeyError("nobody"))
    assert (process.out, process.err, process.status) == (b"", b"KeyError: 'nobody'\n", 1)

    process = Process()
    script = ConsoleScript({}, process, newline=b"\r\n")
    script.expect_command()
    script.run_command("print('a'); print('b')")
    assert (process.out, process.err, process.status) == (b"a\r\nb\r\n", b"", 0)
