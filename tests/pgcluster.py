"""A throwaway PostgreSQL cluster for tests.

``initdb`` into a temporary directory, start on loopback at a free port with
fsync off, hand out DSNs for fresh databases, stop with ``-m immediate`` and
delete everything.  PostgreSQL refuses to run as root, so under root the
binaries run as the ``postgres`` system user (Debian's package creates it),
which owns the temporary directory.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

__all__ = ["Cluster", "PostgresUnavailable", "find_bindir", "running_cluster"]

DEBIAN_BINDIRS = "/usr/lib/postgresql"
START_TIMEOUT = 60  # seconds pg_ctl -w waits for the server to accept connections
START_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it
SERVER_USER = "postgres"
SHM = "/dev/shm"
SHM_NEEDED = 512 * 1024 * 1024  # a cluster is ~40 MB, each live test database ~8 MB more


class PostgresUnavailable(Exception):
    """PostgreSQL cannot run here at all; the message says why (a reason to skip)."""


def _works(bindir: Path) -> bool:
    for name in ("initdb", "pg_ctl", "postgres"):
        if not os.access(bindir / name, os.X_OK):
            return False
    try:
        subprocess.run([bindir / "pg_ctl", "--version"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None.

    ``initdb`` on PATH first (resolving symlinks, so that its siblings are
    found: Debian's postgres binaries are not on PATH), then the newest
    ``/usr/lib/postgresql/<version>/bin``.
    """
    candidates = []
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(os.path.realpath(on_path)).parent)
        candidates.append(Path(on_path).parent)
    candidates.extend(sorted(Path(DEBIAN_BINDIRS).glob("*/bin"), key=_version_key, reverse=True))
    for bindir in candidates:
        if _works(bindir):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    """A running throwaway cluster; ``create_database`` gives each test its own."""

    port: int
    password: str
    superuser: str = "postgres"

    def dsn(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1",
            port=self.port,
            user=self.superuser,
            password=self.password,
            dbname=dbname,
            connect_timeout=10,
        )

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn("postgres"), autocommit=True)

    def create_database(self, name: str) -> str:
        """Create an empty database and return its DSN.

        Its default collation is a linguistic one (ICU ``en-US``) where the
        server supports it, so that code relying on the default collation
        for code-point order shows up in tests.
        """
        with self.admin() as conn:
            try:
                conn.execute(
                    f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING UTF8'
                    " LOCALE 'C' LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
                )
            except (
                psycopg.errors.SyntaxError,  # before PostgreSQL 15
                psycopg.errors.FeatureNotSupported,  # built without ICU
                psycopg.errors.InvalidParameterValue,
            ):
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING UTF8')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _scratch_dir() -> str | None:
    """Memory-backed /dev/shm when it has room: CREATE DATABASE is ten times faster there."""
    try:
        stat = os.statvfs(SHM)
    except OSError:
        return None
    if os.access(SHM, os.W_OK | os.X_OK) and stat.f_bavail * stat.f_frsize >= SHM_NEEDED:
        return SHM
    return None  # the usual temporary directory


def _server_user() -> pwd.struct_passwd | None:
    """Whom to run the server as: None for ourselves, or the postgres user under root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, and PostgreSQL refuses to; no {SERVER_USER!r} system user to run it as"
            " (installing Debian's postgresql package creates one)"
        ) from None


class _Runner:
    def __init__(self, bindir: Path, base: Path, user: pwd.struct_passwd | None) -> None:
        self.bindir = bindir
        self.base = base
        self.user = user
        self.env = {
            key: value for key, value in os.environ.items() if not key.startswith("PG") and not key.startswith("LC_")
        }
        self.env.update(HOME=str(base), LANG="C.UTF-8")

    def __call__(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        options: dict[str, Any] = {}
        if self.user is not None:
            options = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.base,  # root's working directory may be closed to the server user
            env=self.env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT + 30,
            check=False,
            **options,
        )


def _failed(what: str, result: subprocess.CompletedProcess[str], log: Path | None = None) -> RuntimeError:
    details = (result.stdout + result.stderr).strip()
    if log is not None and log.exists():
        details += "\n--- server log ---\n" + log.read_text(errors="replace")[-4000:]
    return RuntimeError(f"{what} failed (exit {result.returncode}):\n{details}")


@contextmanager
def running_cluster() -> Iterator[Cluster]:
    """Run a throwaway cluster for the duration of the ``with`` block.

    Raises :class:`PostgresUnavailable` when no binaries are installed or
    there is no user to run them as; any other failure is an error.
    """
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            f"no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in {DEBIAN_BINDIRS}/*/bin;"
            " install them with: apt-get install postgresql"
        )
    user = _server_user()
    base = Path(tempfile.mkdtemp(prefix="sns-xmpp-pg-", dir=_scratch_dir()))  # mode 0700
    try:
        password = secrets.token_urlsafe(24)
        (base / "password").write_text(password + "\n")
        if user is not None:
            for path in (base, base / "password"):
                os.chown(path, user.pw_uid, user.pw_gid)
        run = _Runner(bindir, base, user)
        data, log = base / "data", base / "server.log"
        # A superuser password even on loopback: other local users could otherwise
        # connect and run programs as the server's user (COPY ... PROGRAM).
        result = run(
            "initdb", "-D", str(data), "-U", "postgres", "-A", "scram-sha-256", f"--pwfile={base / 'password'}",
            "-E", "UTF8", "--no-locale", "-N",
        )  # fmt: skip
        if result.returncode != 0:
            raise _failed("initdb", result)
        started = False
        try:
            cluster = Cluster(port=_start(run, data, log, base), password=password)
            started = True
            with cluster.admin() as conn:  # pg_ctl -w said ready; prove it over TCP
                conn.execute("SELECT 1")
            yield cluster
        finally:
            # Also after a start that timed out, whose server may still come up.
            result = run("pg_ctl", "stop", "-D", str(data), "-m", "immediate", "-w")
            if started and result.returncode != 0:
                raise _failed("pg_ctl stop", result, log)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _start(run: _Runner, data: Path, log: Path, socket_dir: Path) -> int:
    for _attempt in range(START_ATTEMPTS):
        port = _free_port()
        # Loopback only, a private socket directory, fsync off (-F): nothing
        # here needs to survive a crash.
        options = f"-h 127.0.0.1 -p {port} -k {shlex.quote(str(socket_dir))} -F"
        result = run("pg_ctl", "start", "-D", str(data), "-l", str(log), "-w", "-t", str(START_TIMEOUT), "-o", options)
        if result.returncode == 0:
            return port
        if "could not bind" not in (log.read_text(errors="replace") if log.exists() else ""):
            raise _failed("pg_ctl start", result, log)
        log.unlink()
    raise _failed("pg_ctl start (every port tried was taken)", result, log)
