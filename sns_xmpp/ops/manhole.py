"""The operators' console: a Python prompt inside the running server, over SSH (twisted.conch).

Off by default; when on, it listens on loopback and admits only the keys in an
``authorized_keys`` file or a configured password hash (checked in a thread: 600,000 PBKDF2
rounds would stall the reactor for half a second per guess). Its host key is made on first
start in the data folder. The names it offers are in `console.py`.

With a terminal (``ssh -t``, or plain ``ssh`` from a terminal) it is Twisted's interactive
manhole. Without one it runs scripts, as ``ejabberdctl`` and ``prosodyctl shell`` do: a command
(``ssh admin@host 'stats()'``) is run and its value printed, and piped input is run line by
line until its end; the exit status is 0, or 1 if anything raised (its last line goes to stderr).
"""

from __future__ import annotations

import base64
import codeop
import contextlib
import hashlib
import hmac
import io
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import interfaces as iconch
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred import credentials, error, portal
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from sns_xmpp.config import ConfigError
from sns_xmpp.observe.log_gate import GatedLogger

log = GatedLogger()

InThread = Callable[..., Deferred[Any]]  # deferToThreadPool with the reactor and its pool bound

PBKDF2_PREFIX = "pbkdf2-sha256"


def hash_password(password: str, iterations: int = 600_000, salt: bytes | None = None) -> str:
    """The form of ``manhole.password_hash``: ``pbkdf2-sha256$<iterations>$<salt>$<hash>``."""
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join([PBKDF2_PREFIX, str(iterations), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()])


class PasswordHashChecker:
    """Checks a username/password against one configured PBKDF2 hash, in constant time."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, user: bytes, password_hash: str, in_thread: InThread) -> None:
        self.in_thread = in_thread
        try:
            prefix, iterations, salt, digest = password_hash.split("$")
            if prefix != PBKDF2_PREFIX:
                raise ValueError(prefix)
            self.iterations = int(iterations)
            self.salt = base64.b64decode(salt, validate=True)
            self.digest = base64.b64decode(digest, validate=True)
        except ValueError:
            raise ConfigError("manhole.password_hash", "must be pbkdf2-sha256$iterations$salt$hash "
                                                       "(sns-xmpp-admin manhole-hash makes one)") from None
        self.user = user

    def requestAvatarId(self, creds: Any) -> Deferred[bytes]:
        hashed: Deferred[bytes] = self.in_thread(hashlib.pbkdf2_hmac, "sha256", creds.password, self.salt,
                                                 self.iterations)

        def compare(offered: bytes) -> bytes:
            if hmac.compare_digest(offered, self.digest) and hmac.compare_digest(creds.username, self.user):
                return self.user
            raise error.UnauthorizedLogin()

        return hashed.addCallback(compare)


def host_key(data_dir: Path) -> keys.Key:
    """The console's SSH host key, made once (mode 0600) and never shipped."""
    path = data_dir / "manhole_host_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
    return keys.Key.fromFile(str(path))


def authorized_keys(path: Path) -> list[keys.Key]:
    try:
        lines = path.read_bytes().splitlines()
    except OSError as problem:
        raise ConfigError("manhole.authorized_keys", f"cannot read {path}: {problem.strerror}") from None
    found = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith(b"#"):
            try:
                found.append(keys.Key.fromString(line))
            except (keys.BadKeyError, ValueError, IndexError):
                raise ConfigError("manhole.authorized_keys", f"{path}: a line is not an OpenSSH public key") from None
    if not found:
        raise ConfigError("manhole.authorized_keys", f"{path} holds no keys")
    return found


class _Console:
    def __init__(self, namespace: dict[str, Any], clock: IReactorTime) -> None:
        self.namespace = namespace
        self.clock = clock

    def __call__(self) -> insults.ServerProtocol:
        return insults.ServerProtocol(manhole.ColoredManhole, self.namespace)


def _last_line(problem: BaseException) -> str:
    """What an operator reads of an exception: its last line (``ZeroDivisionError: division by zero``)."""
    return traceback.format_exception_only(type(problem), problem)[-1].rstrip("\n")


class ConsoleScript:
    """Console input without a terminal: an exec command, or a piped shell's lines.

    Each statement runs in the console's namespace; an expression's value is printed (a Deferred's
    once it fires, before the next statement runs), an exception's last line goes to stderr. At
    the end the exit status is sent: 0, or 1 if anything raised.
    """

    def __init__(self, namespace: dict[str, Any], process: Any, newline: bytes = b"\n") -> None:
        self.namespace = namespace
        self.process = process  # Conch's SSHSessionProcessProtocol: output, stderr, the exit status
        self.newline = newline
        self.failed = False
        self.finished = False
        self._input = b""
        self._block: list[str] = []  # the lines of a statement not yet complete
        self._queue: list[str] = []  # complete statements waiting for the one running
        self._waiting = False  # a statement's Deferred has not fired yet
        self._eof = False

    # -- input ------------------------------------------------------------------------

    def expect_command(self) -> None:
        """A command is coming (run_command): input, and its end, are ignored."""
        self._eof = True

    def run_command(self, command: str) -> None:
        self._eof = True
        self._queue.append(command)
        self._next()

    def data_received(self, data: bytes) -> None:
        if self._eof:
            return
        self._input += data
        *lines, self._input = self._input.split(b"\n")
        for line in lines:
            self._line(line.decode("utf-8", "replace").rstrip("\r"))
        self._next()

    def eof_received(self) -> None:
        if self._eof:
            return
        if self._input:
            self._line(self._input.decode("utf-8", "replace").rstrip("\r"))
            self._input = b""
        if self._block:
            self._queue.append("\n".join(self._block) + "\n")
            self._block = []
        self._eof = True
        self._next()

    def _line(self, line: str) -> None:
        self._block.append(line)
        source = "\n".join(self._block)
        try:
            complete = codeop.compile_command(source, "<console>", "single") is not None
        except (SyntaxError, ValueError, OverflowError):
            complete = True  # run it, to report the error
        if complete:
            self._block = []
            if source.strip():
                self._queue.append(source + "\n")

    # -- running ----------------------------------------------------------------------

    def _next(self) -> None:
        while self._queue and not self._waiting and not self.finished:
            self._run(self._queue.pop(0))
        if self._eof and not self._queue and not self._waiting and not self.finished:
            self.finished = True
            code = 1 if self.failed else 0
            log.info("console.script_ended status={status}", status=code)
            self.process.processEnded(Failure(ProcessTerminated(exitCode=code) if code else ProcessDone(0)))

    def _run(self, source: str) -> None:
        captured = io.StringIO()
        try:
            try:
                code = compile(source, "<console>", "eval")
            except SyntaxError:
                code = compile(source, "<console>", "exec")
            with contextlib.redirect_stdout(captured):
                value = eval(code, self.namespace)  # noqa: S307 - the operators' console: running code is its job
        except Exception as problem:
            self._write(captured.getvalue())
            self._error(_last_line(problem))
            return
        self._write(captured.getvalue())
        if isinstance(value, Deferred):
            self._waiting = True
            value.addCallbacks(self._show, lambda failure: self._error(_last_line(failure.value)))
            value.addBoth(self._resume)
        else:
            self._show(value)

    def _resume(self, ignored: object) -> None:
        self._waiting = False
        self._next()

    def _show(self, value: object) -> None:
        if value is not None:
            self.namespace["_"] = value
            self._write(repr(value) + "\n")

    def _error(self, text: str) -> None:
        self.failed = True
        if not self.finished:
            self.process.errReceived(text.encode() + self.newline)

    def _write(self, text: str) -> None:
        if text and not self.finished:
            self.process.outReceived(text.replace("\n", self.newline.decode()).encode("utf-8"))

    def closed(self) -> None:
        """The client went away: nothing more is written (a pending Deferred may still fire)."""
        self.finished = True


class _Input:
    """What Conch's session writes the client's bytes to, once a script is its client."""

    def __init__(self, script: ConsoleScript) -> None:
        self.script = script

    def write(self, data: bytes) -> None:
        self.script.data_received(data)

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.script.closed()


class ConsoleSession(manhole_ssh.TerminalSession):
    """Twisted's terminal session, which knows only an interactive terminal, plus scripts: an exec
    request, or a shell without a terminal (piped input). Also takes window changes and EOF,
    which Twisted's answers with NotImplementedError (a traceback in the log)."""

    chainedProtocolFactory: Any
    pty = False
    terminal: insults.ServerProtocol | None = None
    script: ConsoleScript | None = None

    def getPty(self, term: bytes, windowSize: tuple[int, ...], attrs: Any) -> None:  # noqa: N802, N803
        super().getPty(term, windowSize, attrs)
        self.pty = True

    def openShell(self, proto: Any) -> None:  # noqa: N802 - Twisted's name
        if not self.pty:
            proto.makeConnection(_Input(self._script(proto)))
            return
        self.terminal = self.chainedProtocolFactory()
        self.transportFactory(proto, self.terminal, iconch.IConchUser(self.original), self.width, self.height)

    def execCommand(self, proto: Any, cmd: bytes) -> None:  # noqa: N802 - Twisted's name
        script = self._script(proto)
        script.expect_command()  # ssh sends EOF at once when its stdin is empty
        proto.makeConnection(_Input(script))
        log.info("console.command")  # not the command: it may hold a password (user_add, say)
        # Once Conch has answered the exec request: a command that ends at once closes the channel.
        self.chainedProtocolFactory.clock.callLater(0, script.run_command, cmd.decode("utf-8", "replace"))

    def _script(self, proto: Any) -> ConsoleScript:
        self.script = ConsoleScript(self.chainedProtocolFactory.namespace, proto, b"\r\n" if self.pty else b"\n")
        return self.script

    def windowChanged(self, newWindowSize: tuple[int, ...]) -> None:  # noqa: N802, N803 - Twisted's names
        if self.terminal is not None and self.terminal.terminalProtocol is not None:
            self.terminal.terminalProtocol.terminalSize(newWindowSize[1], newWindowSize[0])

    def eofReceived(self) -> None:  # noqa: N802 - Twisted's name
        if self.script is not None:
            self.script.eof_received()

    def closed(self) -> None:
        if self.script is not None:
            self.script.closed()


def console_factory(namespace: dict[str, Any], data_dir: Path, user: str, authorized_keys_path: Path | None,
                    password_hash: str | None, clock: IReactorTime, in_thread: InThread) -> manhole_ssh.ConchFactory:
    checkers: list[Any] = []
    if authorized_keys_path is not None:
        database = InMemorySSHKeyDB({user.encode(): authorized_keys(authorized_keys_path)})
        checkers.append(SSHPublicKeyChecker(database))
    if password_hash:
        checkers.append(PasswordHashChecker(user.encode(), password_hash, in_thread))
    if not checkers:
        raise ConfigError("manhole.authorized_keys", "the console needs authorized_keys or a password_hash")
    realm = manhole_ssh.TerminalRealm()
    realm.sessionFactory = ConsoleSession
    realm.chainedProtocolFactory = _Console(namespace, clock)  # type: ignore[assignment]
    factory = manhole_ssh.ConchFactory(portal.Portal(realm, checkers))  # type: ignore[arg-type]
    key = host_key(data_dir)
    # Twisted annotates these as bytes, but its SSH factory takes Key objects.
    factory.publicKeys = {key.sshType(): key.public()}
    factory.privateKeys = {key.sshType(): key}  # type: ignore[dict-item]
    return factory
