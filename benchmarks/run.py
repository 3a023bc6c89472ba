"""Benchmark of the sns-xmpp daemon: logins, message throughput and idle connections.

``scripts/bench`` runs this module. It writes a configuration for a throwaway daemon into a
temporary folder (SQLite, domain localhost, loopback, free ports, TLS optional, PLAIN allowed
without TLS), creates the accounts, starts ``twistd sns-xmpp`` and drives it from
`benchmarks.loadgen`, started afresh in a process of its own for every scenario. Around each
timed part it reads the CPU time of the daemon and of the generator (``/proc/<pid>/stat``),
of the whole machine (``/proc/stat``) and the daemon's resident memory (``/proc/<pid>/status``).

Every phase gets a daemon of its own, and so does each transport of the idle phase, so that
no figure depends on what an earlier phase left behind (memory figures least of all). A phase
may measure in stages on one daemon and one generator (see `benchmarks.loadgen`): the message
phase's open loop follows its closed loop, at half the rate the closed loop reached; the idle
phase holds 2,000 connections, then 10,000, then lets a few pairs chat beside them. The room phase
puts ``--occupants`` clients (50) in one chat room (XEP-0045), each keeping ``--window`` of its
messages in flight: every message goes to every occupant, and the figure is deliveries per
daemon CPU-second. The s2s phase starts two daemons, ``a.bench`` on 127.0.0.1 and ``b.bench`` on
127.0.0.2, federated over loopback (STARTTLS and dialback between them, as shipped), and
``--pairs`` clients of each chat with a partner on the other: messages per CPU-second of both
daemons, to set beside the msgs phase's one daemon.

The login phase measures local accounts and social logins: an ``hmac`` site whose tokens the
generator signs, and an ``oidc`` site whose provider (`benchmarks.idp`) the runner starts on
loopback, with an RSA key it makes and the generator mints ID tokens with.

All figures go to stdout as one JSON object, and to stderr as a table. Problems in the
daemons' logs (warnings, errors, tracebacks; the daemons log at warn level) are reported in
both; such a log is then kept.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import re
import resource
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from sns_xmpp.auth.scram import DEFAULT_ITERATIONS, derive_all
from sns_xmpp.store.sqlite import SQLiteDatabase

ROOT = Path(__file__).resolve().parents[1]
CONFIG_TEMPLATE = Path(__file__).with_name("bench.toml.in")
HOST = "127.0.0.1"
DOMAIN = "localhost"
ACCOUNT_PREFIX = "bench"
PASSWORD = "bench-password-0"  # noqa: S105 - every throwaway benchmark account has it
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

PHASES = ("login", "serial", "msgs", "idle", "room", "s2s", "cluster")
TRANSPORTS = ("tls", "tcp", "ws")  # ws: the stream over a WebSocket (RFC 7395) on the HTTP listener
# The login phase's scenarios, in the order they run (see login_scenarios). FAST over plain TCP
# works because the bench daemon allows PLAIN without TLS, and with it SASL2.
LOGIN_SCENARIOS = ("scram-sha-256+tls", "scram-sha-256+tcp", "plain+tls", "plain+tcp",
                   "hmac+tls", "hmac+tcp", "hmac-scram+tcp", "oidc+tls", "oidc+tcp",
                   "fast+tls", "fast+tcp", "device-scram+tcp", "scram-sha-256+ws")

# Social sites (bench.toml.in). The hmac site's key is known to the generator, which signs a
# fresh token per attempt; the oidc site's provider is benchmarks.idp, whose RSA key the runner
# makes and the generator mints ID tokens with.
HMAC_SITE = "bench"
HMAC_KID = "bench1"
HMAC_KEY = "bench-hmac-key-0-not-a-secret"
OIDC_SITE = "benchidp"
OIDC_CLIENT_ID = "sns-xmpp-bench"
OIDC_KID = "bench-rs256"
# Social account ids cycle through this many per scenario: the first login of each creates the
# XMPP user and the link, later ones only find (and touch) the link.
SOCIAL_USERS = 200
# Social tokens expire this many seconds after they are made.
TOKEN_LIFETIME = 300

# A generator process whose CPU time is at least this share of one core is the bottleneck.
SATURATED_PERCENT = 90.0
# CPU used by neither the daemon nor the generator, in % of one core, above which another
# load on the machine is likely to have disturbed the figures. Loopback networking in
# the kernel's softirq alone stays well below it.
DISTURBED_PERCENT = 30.0


class BenchError(Exception):
    """The benchmark cannot go on; printed as one line."""


# -- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    phases: tuple[str, ...]
    logins: int
    concurrency: int
    duration: float
    open_fraction: float
    open_duration: float
    idle: tuple[int, ...]
    idle_pairs: int
    idle_duration: float
    pairs: int
    window: int
    transports: tuple[str, ...]
    scenarios: tuple[str, ...]
    serial_logins: int
    keep: bool
    quick: bool
    occupants: int = 50  # the room phase's one room
    features_off: tuple[str, ...] = ()


DEFAULTS: dict[str, Any] = {"logins": 1000, "concurrency": 50, "duration": 20.0, "open_duration": 10.0,
                            "idle": (2000, 10000), "idle_duration": 5.0, "serial_logins": 200}
QUICK: dict[str, Any] = {"logins": 100, "concurrency": 10, "duration": 2.0, "open_duration": 2.0,
                         "idle": (100, 500), "idle_duration": 1.0, "serial_logins": 50}
# The target for the open loop at half the closed loop's rate (see run_msgs).
OPEN_LOOP_P99_TARGET_MS = 50.0
# The serial phase: one login at a time, each on a fresh connection, STARTTLS and (for
# comparison) plain TCP. The p50 target is issue 13's: a lone TLS login was about 40 ms, all of
# it Nagle's algorithm waiting for delayed ACKs.
SERIAL_SCENARIOS = ("scram-sha-256+tls", "scram-sha-256+tcp")
SERIAL_P50_TARGET_MS = 5.0


def _names(known: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated subset of *known*, returned in the order of *known*."""

    def parse(text: str) -> tuple[str, ...]:
        names = {name.strip() for name in text.split(",") if name.strip()}
        if not names or not names <= set(known):
            raise argparse.ArgumentTypeError(f"give a comma-separated list of {', '.join(known)}")
        return tuple(name for name in known if name in names)

    return parse


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be positive")
        return value

    return parse


def _counts(text: str) -> tuple[int, ...]:
    """Comma-separated positive numbers, returned ascending and without repeats."""
    try:
        counts = {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError("give comma-separated whole numbers") from None
    if not counts or min(counts) <= 0:
        raise argparse.ArgumentTypeError("give comma-separated positive numbers")
    return tuple(sorted(counts))


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _sizes(sizes: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sizes.items())


def parse_args(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark the sns-xmpp daemon: login rate, message throughput and latency, memory per "
                    "idle connection. JSON on stdout, a table on stderr.")
    parser.add_argument("--quick", action="store_true", help="small numbers for a smoke run: " + _sizes(QUICK))
    parser.add_argument("--phases", type=_names(PHASES), default=PHASES, metavar="LIST",
                        help="which phases to run, comma-separated (default: all, " + ",".join(PHASES) + ")")
    parser.add_argument("--logins", type=_positive(int), metavar="N",
                        help=f"logins per login scenario (default {DEFAULTS['logins']})")
    parser.add_argument("--concurrency", type=_positive(int), metavar="C",
                        help=f"logins in progress at once (default {DEFAULTS['concurrency']})")
    parser.add_argument("--duration", type=_positive(float), metavar="S",
                        help=f"seconds of closed-loop message traffic measured (default {DEFAULTS['duration']:g})")
    parser.add_argument("--open-fraction", type=_fraction, default=0.5, metavar="F",
                        help="rate of the open-loop message run, as a share of the rate the closed loop reached "
                             "just before (default 0.5; 0 skips the open loop)")
    parser.add_argument("--open-duration", type=_positive(float), metavar="S",
                        help=f"seconds of open-loop message traffic measured (default {DEFAULTS['open_duration']:g})")
    parser.add_argument("--idle", type=_counts, metavar="LIST",
                        help="idle connections held, comma-separated counts reached in turn on one daemon "
                             f"(default {','.join(map(str, DEFAULTS['idle']))})")
    parser.add_argument("--idle-pairs", type=int, default=10, metavar="P",
                        help="pairs chatting while the most idle connections are held (default 10; 0: none)")
    parser.add_argument("--idle-duration", type=_positive(float), metavar="S",
                        help="seconds those pairs chat, measured "
                             f"(default {DEFAULTS['idle_duration']:g})")
    parser.add_argument("--pairs", type=_positive(int), default=50, metavar="P",
                        help="pairs of chatting clients in the message phase (default 50)")
    parser.add_argument("--window", type=_positive(int), default=4, metavar="K",
                        help="messages each client keeps in flight to its partner (default 4)")
    parser.add_argument("--transports", type=_names(TRANSPORTS), default=TRANSPORTS, metavar="LIST",
                        help="STARTTLS (tls) and/or plain TCP (tcp) for the message and idle phases "
                             "(default tls,tcp)")
    parser.add_argument("--scenarios", type=_names(LOGIN_SCENARIOS), default=LOGIN_SCENARIOS, metavar="LIST",
                        help="which login scenarios to run, comma-separated (default: all of "
                             + ", ".join(LOGIN_SCENARIOS) + ")")
    parser.add_argument("--serial-logins", type=_positive(int), metavar="N",
                        help="logins one at a time, each on a fresh connection, per serial scenario "
                             f"(default {DEFAULTS['serial_logins']})")
    parser.add_argument("--features-off", type=lambda text: tuple(n.strip() for n in text.split(",") if n.strip()),
                        default=(), metavar="LIST",
                        help="feature modules the daemons run without ([xmpp.features] disabled), to measure "
                             "what a feature costs: e.g. mam,carbons (default: none, as shipped)")
    parser.add_argument("--occupants", type=_positive(int), default=50, metavar="N",
                        help="clients in the room phase's one chat room (default 50)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (config, database, log)")
    args = parser.parse_args(argv)
    if args.idle_pairs < 0:
        parser.error("--idle-pairs must not be negative")
    sizes = QUICK if args.quick else DEFAULTS

    def pick(name: str) -> Any:
        given = getattr(args, name)
        return sizes[name] if given is None else given

    return Settings(phases=args.phases, logins=pick("logins"), concurrency=pick("concurrency"),
                    duration=pick("duration"), open_fraction=args.open_fraction, open_duration=pick("open_duration"),
                    idle=pick("idle"), idle_pairs=args.idle_pairs, idle_duration=pick("idle_duration"),
                    pairs=args.pairs, window=args.window, transports=args.transports, scenarios=args.scenarios,
                    serial_logins=pick("serial_logins"), keep=args.keep, quick=args.quick,
                    occupants=args.occupants,
                    features_off=args.features_off)


# -- /proc ---------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of every thread of *pid* so far."""
    return _cpu_seconds(f"/proc/{pid}/stat")


def main_thread_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of *pid*'s first thread alone (the daemon's reactor): what the
    process's other threads used is the difference (the store's worker, the thread pool)."""
    return _cpu_seconds(f"/proc/{pid}/task/{pid}/stat")


def _cpu_seconds(stat_path: str) -> float:
    with open(stat_path, encoding="ascii") as stat:
        # The command name in parentheses may hold spaces; fields 14 and 15 follow it.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def process_open_files_limit(pid: int) -> int | None:
    """The soft limit on open files *pid* runs with (None if unlimited or unknown).

    The daemon inherits the runner's limit; this checks it holds enough for the idle phase.
    """
    try:
        with open(f"/proc/{pid}/limits", encoding="ascii") as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    return int(soft) if soft.isdigit() else None
    except OSError:
        pass
    return None


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot; idle and iowait count as not busy."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    total = sum(values[:8])
    return total - values[3] - values[4], total


def listen_overflows() -> int:
    """How often since boot a listening socket's accept queue was full (a SYN was dropped); 0 if unknown.

    A dropped SYN costs the client a retransmission, one second later at first, which
    shows as long login latencies while the daemon still has CPU to spare.
    """
    try:
        with open("/proc/net/netstat", encoding="ascii") as netstat:
            lines = netstat.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[0::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(fields.get("ListenOverflows", 0))
    return 0


@dataclass(frozen=True)
class Sample:
    at: float
    server_cpu: float
    server_main_thread_cpu: float
    generator_cpu: float
    machine_busy: int
    machine_total: int
    server_rss_kib: int
    listen_overflows: int

    @classmethod
    def take(cls, server_pid: int, generator_pid: int) -> Sample:
        busy, total = machine_cpu_ticks()
        return cls(time.monotonic(), process_cpu_seconds(server_pid), main_thread_cpu_seconds(server_pid),
                   process_cpu_seconds(generator_pid), busy, total, process_rss_kib(server_pid), listen_overflows())


@dataclass(frozen=True)
class Usage:
    """CPU used between two samples.

    ``server_pct``, ``generator_pct`` and ``other_pct`` are in % of one core; ``other`` is
    everything else that kept a CPU busy (the kernel's network processing, other programs).
    ``machine_pct`` is the busy share of all cores together. ``server_cpu_s`` splits into the
    reactor's thread (``server_reactor_cpu_s``) and the daemon's other threads
    (``server_threads_cpu_s``: the store's worker, which writes the archive's batches, and
    Twisted's thread pool): the split each round of issue 16 took by hand from /proc.
    """

    wall_s: float
    server_cpu_s: float
    server_reactor_cpu_s: float
    server_threads_cpu_s: float
    generator_cpu_s: float
    server_pct: float
    generator_pct: float
    other_pct: float
    machine_pct: float

    @classmethod
    def between(cls, start: Sample, end: Sample) -> Usage:
        wall = max(end.at - start.at, 1e-9)
        server = end.server_cpu - start.server_cpu
        reactor = end.server_main_thread_cpu - start.server_main_thread_cpu
        generator = end.generator_cpu - start.generator_cpu
        busy = (end.machine_busy - start.machine_busy) / CLOCK_TICKS
        ticks = max(end.machine_total - start.machine_total, 1)
        return cls(wall_s=round(wall, 3), server_cpu_s=round(server, 3), server_reactor_cpu_s=round(reactor, 3),
                   server_threads_cpu_s=round(max(0.0, server - reactor), 3), generator_cpu_s=round(generator, 3),
                   server_pct=round(100 * server / wall, 1), generator_pct=round(100 * generator / wall, 1),
                   other_pct=round(max(0.0, 100 * (busy - server - generator) / wall), 1),
                   machine_pct=round(100 * (end.machine_busy - start.machine_busy) / ticks, 1))

    def warnings(self) -> list[str]:
        found = []
        if self.generator_pct >= SATURATED_PERCENT:
            found.append(f"load generator saturated ({self.generator_pct:.0f}% of a core): figures are a lower bound")
        if self.machine_pct >= SATURATED_PERCENT:
            found.append(f"machine saturated ({self.machine_pct:.0f}% of all cores)")
        if self.other_pct >= DISTURBED_PERCENT:
            found.append(f"other work used {self.other_pct:.0f}% of a core: figures may be disturbed")
        return found


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (children inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


# -- the daemon ----------------------------------------------------------------------------


def free_port(address: str = HOST) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def create_accounts(database_path: Path, count: int, domain: str = DOMAIN) -> None:
    """``bench0@localhost`` ... with one password, and one salt: each PBKDF2 costs milliseconds."""
    _fill_accounts(SQLiteDatabase(database_path), count, domain)


def _fill_accounts(database: Any, count: int, domain: str) -> None:
    credentials = derive_all(PASSWORD, iterations=DEFAULT_ITERATIONS)
    try:
        now = time.time()
        for index in range(count):
            database.create_account(f"{ACCOUNT_PREFIX}{index}@{domain}", credentials, now)
    finally:
        database.close()


@dataclass
class LogReport:
    """The daemon's log: how long, and its warnings, errors and tracebacks."""

    lines: int = 0
    problems: int = 0
    excerpts: list[str] = field(default_factory=list)
    kept_at: str | None = None


_LOG_EVENT_START = re.compile(r"^\d{4}-\d\d-\d\dT\S+ \[")
_LOG_PROBLEM = re.compile(r"#(?:warn|error|critical)\]|Traceback|Unhandled")
_LOG_FAILURE = re.compile(r"#(?:error|critical)\]")
MAX_EXCERPTS = 10


def read_log(path: Path, problem: re.Pattern[str] = _LOG_PROBLEM) -> LogReport:
    """Count the log's lines, and its events (a line and its traceback) that match *problem*."""
    report = LogReport()
    if not path.exists():
        return report
    events: list[list[str]] = []
    with path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            report.lines += 1
            if _LOG_EVENT_START.match(line) or not events:
                events.append([line])
            else:
                events[-1].append(line)
    for event in events:
        if any(problem.search(line) for line in event):
            report.problems += 1
            if len(report.excerpts) < MAX_EXCERPTS:
                report.excerpts.append("".join(event).rstrip())
    return report


LIMIT_LINE = re.compile(r'^sns_xmpp_limits_hit_total\{limit="([^"]+)"\} (\S+)$', re.MULTILINE)


class Daemon:
    """``twistd sns-xmpp`` on a fresh benchmark configuration in *workdir*.

    With *idp*, the configuration has the oidc site ``OIDC_SITE`` on that provider, whose nonce
    secret the runner writes into the data folder beforehand, and `start` also waits until the
    provider has served the daemon its keys.

    ``generator_cpu_s`` adds up the CPU time of the load generators run against it (`measure`),
    set-up and teardown included, for the phase totals.
    """

    def __init__(self, workdir: Path, accounts: int, idp: IdentityProvider | None = None,
                 features_off: tuple[str, ...] = (), domain: str = DOMAIN, s2s_address: str | None = None,
                 dsn: str | None = None, cluster: Mapping[str, str] | None = None,
                 data_dir: Path | None = None) -> None:
        self.workdir = workdir
        # The cluster phase's nodes: PostgreSQL at *dsn* (whose accounts the runner has made),
        # the [cluster] table's keys, and the data folder the nodes of one cluster share.
        self.dsn = dsn
        self.cluster = dict(cluster) if cluster else None
        self.data_dir = data_dir or workdir / "data"
        self.features_off = features_off
        self.domain = domain
        # The federation phase's daemons: each listens for s2s on an address of its own; `peers`
        # (domain -> "address:port") is filled in before start.
        self.s2s_address = s2s_address
        self.s2s_port = free_port(s2s_address) if s2s_address else -1
        self.peers: dict[str, str] = {}
        self.accounts = accounts
        self.idp = idp
        self.port = free_port()
        self.http_port = free_port()
        self.config_path = workdir / "bench.toml"
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_status: int | None = None
        self.cpu_s: float | None = None  # its CPU time over its whole life, read just before it is stopped
        self.open_files_limit: int | None = None
        self.generator_cpu_s = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def limits_hit(self) -> dict[str, int]:
        """How often the daemon enforced each limit so far, by name: its
        ``sns_xmpp_limits_hit_total`` on /metrics (a limit never hit has no line yet)."""
        with urllib.request.urlopen(self.http_url + "/metrics", timeout=10) as answer:  # noqa: S310 - our loopback URL
            text = answer.read().decode()
        return {name: int(float(count)) for name, count in LIMIT_LINE.findall(text)}

    def write_config(self) -> None:
        """The configuration file (from bench.toml.in) and the data folder, with the accounts
        unless they live in PostgreSQL (the runner makes those)."""
        data_dir = self.data_dir
        self.config_path.write_text(string.Template(CONFIG_TEMPLATE.read_text(encoding="utf-8")).substitute(
            domain=json.dumps(self.domain), data_dir=json.dumps(str(data_dir)), c2s_port=self.port,
            scram_iterations=DEFAULT_ITERATIONS, http_port=self.http_port,
            http_url=json.dumps(self.http_url), hmac_site=HMAC_SITE, hmac_kid=HMAC_KID,
            hmac_key=json.dumps(HMAC_KEY), oidc_site=self.idp.site_table() if self.idp else "# (none)",
            features_off=json.dumps(list(self.features_off)), s2s_table=self.s2s_table(),
            store_settings=self.store_settings(), cluster_table=self.cluster_table()),
            encoding="utf-8")
        if not data_dir.exists():  # a cluster's second node shares the first one's
            data_dir.mkdir(mode=0o700)  # as the server makes it; a wider one is warned about
        if self.dsn is None:
            create_accounts(data_dir / "sns-xmpp.sqlite3", self.accounts, self.domain)

    def start(self, timeout: float = 60.0) -> None:
        self.write_config()
        data_dir = self.data_dir
        if self.idp is not None:
            self.idp.write_nonce_secret(data_dir)
        twistd = Path(sys.executable).with_name("twistd")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own venv's twistd, our own arguments
                [str(twistd), "--nodaemon", "--pidfile=", "--reactor=sns-epoll", "sns-xmpp",
                 f"--config={self.config_path}"],
                cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # Ctrl-C reaches the runner only; it stops the daemon itself
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise BenchError(f"the daemon exited with status {self.process.returncode} before listening:\n"
                                 + self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:])
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                pass
            # A listener that failed to start is logged, not fatal: waiting longer would not help.
            startup = read_log(self.log_path, _LOG_FAILURE)
            if startup.problems:
                raise BenchError("the daemon logged a problem while starting:\n" + startup.excerpts[0])
            if time.monotonic() > deadline:
                raise BenchError(f"the daemon did not listen on port {self.port} within {timeout:g}s")
            time.sleep(0.1)
        self.open_files_limit = process_open_files_limit(self.pid)
        if self.idp is not None:
            # The oidc site fetches the discovery document and the JWKS once it starts; a login
            # before that waits for them or fails. Its provider_ready line is info, not logged here.
            if not self.idp.wait_served("jwks", max(0.0, deadline - time.monotonic()), self.ensure_running):
                raise BenchError(f"the daemon did not fetch the OpenID provider's keys within {timeout:g}s:\n"
                                 + self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:])

    def store_settings(self) -> str:
        if self.dsn is None:
            return 'backend = "sqlite"\npath = "sns-xmpp.sqlite3"'
        return f'backend = "postgresql"\ndsn = {json.dumps(self.dsn)}'

    def cluster_table(self) -> str:
        if self.cluster is None:
            return "# (none)"
        return "[cluster]\n" + "\n".join(f"{key} = {json.dumps(value)}" for key, value in self.cluster.items())

    def s2s_table(self) -> str:
        if self.s2s_address is None:
            return "[xmpp.s2s]\nport = -1"
        hosts = "\n".join(f"{json.dumps(domain)} = {json.dumps(where)}" for domain, where in self.peers.items())
        return (f"[xmpp.s2s]\ninterface = {json.dumps(self.s2s_address)}\nport = {self.s2s_port}\n"
                f"\n[xmpp.s2s.hosts]\n{hosts}")

    def ensure_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise BenchError(f"the daemon exited with status {self.process.returncode} during the run")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait; SIGKILL only when it does not end in time."""
        if self.process is None or self.process.poll() is not None:
            self.exit_status = None if self.process is None else self.process.returncode
            return
        self.cpu_s = process_cpu_seconds(self.pid)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exit_status = self.process.wait()
            raise BenchError(f"the daemon did not stop within {timeout:g}s of SIGTERM; killed") from None


# -- the OpenID provider -------------------------------------------------------------------


class IdentityProvider:
    """`benchmarks.idp` in a process of its own, publishing an RSA key made here.

    The load generator mints ID tokens with the same key (``key_file``) and makes nonces with
    the nonce secret the runner writes into the daemon's data folder (``write_nonce_secret``).
    """

    def __init__(self, folder: Path, timeout: float = 30.0) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_file = folder / "idp-key.pem"
        self.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
        self.nonce_secret = secrets.token_bytes(32)
        self.log_path = folder / "idp.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "benchmarks.idp", "--key", str(self.key_file), "--kid", OIDC_KID,
                 "--client-id", OIDC_CLIENT_ID], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=log, text=True, start_new_session=True)
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.issuer = self._read_issuer(timeout)
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        """Its stdout, line by line, into the queue; None at its end."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                continue  # not one of its JSON lines
        self._lines.put(None)

    def _read_issuer(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None or "issuer" not in line:
            status = self.process.poll()
            raise BenchError(f"the OpenID provider did not start ({'still running' if status is None else status}):\n"
                             + self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:])
        return str(line["issuer"])

    def wait_served(self, what: str, timeout: float, check: Callable[[], None]) -> bool:
        """Wait until the provider says it has served *what*; False after *timeout* seconds.

        *check* runs every tenth of a second meanwhile (it raises if the daemon has died).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                check()
                continue
            if line is None:
                raise BenchError(f"the OpenID provider exited (status {self.process.wait()})")
            if line.get("served") == what:
                return True
        return False

    def site_table(self) -> str:
        return "\n".join([f"[sites.{OIDC_SITE}]", 'plugin = "oidc"', f"issuer = {json.dumps(self.issuer)}",
                          f"client_id = {json.dumps(OIDC_CLIENT_ID)}",
                          'client_secret = "bench-client-secret"  # the token endpoint is never used'])

    def write_nonce_secret(self, data_dir: Path) -> None:
        """The install's nonce secret, in the file and format that
        `sns_xmpp.sites.oidc_settings.load_or_create_secret` reads."""
        path = data_dir / f"oidc-{OIDC_SITE}.secret"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as secret:
            secret.write(self.nonce_secret.hex() + "\n")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)  # it has read to the end of stdout, which can then be closed
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()


# -- the cluster phase's engines ------------------------------------------------------------


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU time of *pid*, of its children that have ended (reaped), and of its live children:
    PostgreSQL's postmaster and its backends, checkpointer, WAL writer."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    total = sum(int(value) for value in fields[11:15])
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii") as stat:
                child = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(child[1]) == pid:
            total += int(child[11]) + int(child[12])
    return total / CLOCK_TICKS


def redis_command(port: int, *words: str) -> bytes:
    """One command to the bench's redis-server over loopback; its raw reply (RESP)."""
    request = f"*{len(words)}\r\n" + "".join(f"${len(word.encode())}\r\n{word}\r\n" for word in words)
    with socket.create_connection((HOST, port), timeout=5) as connection:
        connection.sendall(request.encode())
        return connection.recv(65536)


class Engines:
    """PostgreSQL and Redis for the cluster phase, started as `scripts/cluster` starts them
    (`sns_xmpp.ops.local_cluster`): a throwaway PostgreSQL in a folder of its own under /tmp,
    redis-server with its append-only file (fsync every second). Each set-up of the phase gets a
    database and a Redis key prefix of its own."""

    def __init__(self, folder: Path) -> None:
        from sns_xmpp.ops import local_cluster

        self._cluster = local_cluster
        self.postgres = local_cluster.start_postgres(folder)
        try:
            self.redis = local_cluster.start_redis(folder)
        except BaseException:
            local_cluster.stop_postgres(self.postgres)
            raise
        self.postmaster = int((Path(self.postgres["data"]) / "postmaster.pid").read_text().split()[0])

    def database(self, name: str) -> str:
        """A fresh database *name* (letters and digits), its schema and the bench accounts; its DSN."""
        import psycopg

        admin = str(self.postgres["dsn"])
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")  # noqa: S608 - our own constant name
        return admin.rsplit("/", 1)[0] + f"/{name}"

    def readers(self) -> dict[str, Callable[[], float]]:
        return {"postgres": lambda: self._cpu("PostgreSQL", process_tree_cpu_seconds, self.postmaster),
                "redis": lambda: self._cpu("redis-server", process_cpu_seconds, int(self.redis["pid"]))}

    @staticmethod
    def _cpu(name: str, read: Callable[[int], float], pid: int) -> float:
        try:
            return read(pid)
        except FileNotFoundError:
            raise BenchError(f"{name} (pid {pid}) exited during the run") from None

    def subscribers(self, channel: str) -> int:
        """How many connections are subscribed to *channel* (each node subscribes once it runs)."""
        found = re.search(rb":(\d+)\r\n$", redis_command(int(self.redis["port"]), "PUBSUB", "NUMSUB", channel))
        return int(found.group(1)) if found else 0

    def stop(self) -> None:
        try:
            self._cluster.stop_redis(self.redis)
        finally:
            self._cluster.stop_postgres(self.postgres)


def create_postgres_accounts(dsn: str, count: int, domain: str = DOMAIN) -> None:
    """The bench accounts (`create_accounts`) in a PostgreSQL database, which this also migrates."""
    from sns_xmpp.store.postgres import PostgresDatabase

    _fill_accounts(PostgresDatabase(dsn), count, domain)


# -- the load generator --------------------------------------------------------------------


class LoadGenerator:
    """One `benchmarks.loadgen` process and its JSON-lines conversation."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loadgen"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._write(json.dumps(job))

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _write(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def command(self, word: str) -> None:
        self._write(word)

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"the load generator sent no {event!r} within {timeout:g}s") from None
        if line is None:
            raise BenchError(f"the load generator exited (status {self.process.wait()}) before {event!r}")
        message: dict[str, Any] = json.loads(line)
        if message.get("event") == "error":
            raise BenchError(f"load generator: {message.get('message')}")
        if message.get("event") != event:
            raise BenchError(f"the load generator sent {message.get('event')!r}, expected {event!r}")
        return message

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if error is not None and self.process.poll() is None:
            self.process.kill()
        self.close()


@dataclass(frozen=True)
class Measurement:
    """What one timed stage gives: the generator's own figures, the CPU over the timed part, memory.

    ``rss_after_release_kib`` is the daemon's memory once the generator has ended, the same for
    every stage of a job.
    """

    figures: dict[str, Any]
    usage: Usage
    start: Sample
    end: Sample
    rss_after_release_kib: int

    @property
    def listen_overflows(self) -> int:
        return self.end.listen_overflows - self.start.listen_overflows

    def warnings(self) -> list[str]:
        found = self.usage.warnings()
        if self.listen_overflows:
            found.append(f"{self.listen_overflows} connection attempts overflowed the listen backlog"
                         " (each waits for a SYN retransmission, 1 s or more)")
        return found


def measure(daemon: Daemon, job: Mapping[str, Any], limit: float, peer: Daemon | None = None,
            others: Mapping[str, Callable[[], float]] | None = None) -> list[Measurement]:
    """Run one generator job, one measurement per timed stage; *limit* bounds each wait in seconds.

    The generator's CPU time over its whole life is added to ``daemon.generator_cpu_s``. With a
    *peer* daemon (the federation phase, the cluster's second node), its CPU over each timed
    stage is in the figures (``peer_cpu_s``); so is the CPU of each of *others* (name -> a
    reader of CPU-seconds so far: PostgreSQL, Redis), in ``others_cpu_s``.
    """
    stages: list[tuple[dict[str, Any], Sample, Sample]] = []
    others = others or {}
    with LoadGenerator(job) as generator:
        more = True
        while more:
            generator.wait_for("ready", limit)
            daemon.ensure_running()
            if peer is not None:
                peer.ensure_running()
            others_start = {name: read() for name, read in others.items()}
            start = Sample.take(daemon.pid, generator.pid)
            peer_start = process_cpu_seconds(peer.pid) if peer is not None else 0.0
            generator.command("go")
            figures = generator.wait_for("measured", limit)
            daemon.ensure_running()
            end = Sample.take(daemon.pid, generator.pid)
            if peer is not None:
                peer.ensure_running()
                figures["peer_cpu_s"] = process_cpu_seconds(peer.pid) - peer_start
            if others:
                figures["others_cpu_s"] = {name: round(read() - others_start[name], 3)
                                           for name, read in others.items()}
            more = bool(figures.pop("more", False))
            figures.pop("event")
            stages.append((figures, start, end))
            generator.command("next" if more else "stop")
        generator.wait_for("done", limit)
        # It has only to exit now; until the runner waits for it, its /proc entry stays.
        with suppress(OSError):
            daemon.generator_cpu_s += process_cpu_seconds(generator.pid)
    time.sleep(0.5)  # the daemon finishes tearing down sessions the generator has closed
    daemon.ensure_running()
    released = process_rss_kib(daemon.pid)
    return [Measurement(figures, Usage.between(start, end), start, end, released) for figures, start, end in stages]


# -- scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginScenario:
    """One login measurement: how clients authenticate, over TLS or not.

    ``credentials`` is the generator's credentials provider and its parameters
    (see ``benchmarks.loadgen.PROVIDERS``), which gives (username, password,
    mechanism) for each attempt.
    """

    name: str
    tls: bool
    credentials: Mapping[str, Any]


def local_credentials(mechanism: str, accounts: int) -> dict[str, Any]:
    return {"provider": "local", "prefix": ACCOUNT_PREFIX, "count": accounts, "password": PASSWORD,
            "mechanism": mechanism}


def hmac_credentials(mechanism: str, prefix: str) -> dict[str, Any]:
    return {"provider": "hmac", "site": HMAC_SITE, "kid": HMAC_KID, "key": HMAC_KEY, "prefix": prefix,
            "users": SOCIAL_USERS, "lifetime": TOKEN_LIFETIME, "mechanism": mechanism}


def oidc_credentials(idp: IdentityProvider, prefix: str, tokens: int) -> dict[str, Any]:
    return {"provider": "oidc", "site": OIDC_SITE, "issuer": idp.issuer, "client_id": OIDC_CLIENT_ID,
            "kid": OIDC_KID, "key_file": str(idp.key_file), "nonce_secret": idp.nonce_secret.hex(),
            "prefix": prefix, "users": SOCIAL_USERS, "tokens": tokens, "lifetime": TOKEN_LIFETIME,
            "mechanism": "PLAIN"}


def device_credentials(provider: str, mechanism: str, prefix: str, http_url: str, logins: int) -> dict[str, Any]:
    """Devices of social accounts at the hmac site, set up by the generator before the timed part:
    ``fast`` tokens (benchmarks.loadgen.fast_devices) or ``device`` passwords (device_passwords).
    As many as the other social scenarios have accounts, or as logins when fewer (``--quick``):
    setting one up costs a login or a hand-over."""
    return {**hmac_credentials(mechanism, prefix), "provider": provider, "http_url": http_url,
            "users": min(SOCIAL_USERS, logins)}


def login_scenarios(names: Sequence[str], accounts: int, logins: int,
                    idp: IdentityProvider | None, http_url: str = "") -> list[LoginScenario]:
    """The scenarios called *names*, in the order of LOGIN_SCENARIOS; the oidc ones need *idp*,
    the device ones the daemon's *http_url* (device passwords are made on the web).

    Each social scenario has account ids of its own (``<scenario>-u<i>``), so that each
    makes its own first logins.
    """
    scenarios = []
    for name in names:
        kind, transport = name.split("+")
        tls = transport == "tls"
        prefix = f"{kind}-{transport}-u"
        if kind == "hmac":
            credentials = hmac_credentials("PLAIN", prefix)
        elif kind == "hmac-scram":
            credentials = hmac_credentials("SCRAM-SHA-256", prefix)
        elif kind == "oidc":
            if idp is None:
                raise BenchError(f"login scenario {name} needs the OpenID provider")
            credentials = oidc_credentials(idp, prefix, logins)
        elif kind == "fast":
            credentials = device_credentials("fast", "HT-SHA-256-NONE", prefix, http_url, logins)
        elif kind == "device-scram":
            credentials = device_credentials("device", "SCRAM-SHA-256", prefix, http_url, logins)
        else:
            credentials = local_credentials(kind.upper(), accounts)
        scenarios.append(LoginScenario(name, tls, credentials))
    return scenarios


def target(daemon: Daemon, tls: bool, transport: str = "") -> dict[str, Any]:
    """Where the generator connects: the c2s port (STARTTLS when *tls*), or for the ``ws``
    transport the HTTP listener's WebSocket endpoint."""
    found: dict[str, Any] = {"host": HOST, "port": daemon.port, "domain": DOMAIN, "tls": tls}
    if transport == "ws":
        found["websocket"] = f"ws://{HOST}:{daemon.http_port}/xmpp-websocket"
    return found


def run_login(daemon: Daemon, settings: Settings, scenario: LoginScenario) -> dict[str, Any]:
    job = {"phase": "login", "target": target(daemon, scenario.tls, scenario.name.split("+")[-1]),
           "credentials": scenario.credentials,
           "count": settings.logins, "concurrency": settings.concurrency}
    [result] = measure(daemon, job, limit=60 + settings.logins / 5)
    figures, usage = result.figures, result.usage
    ok = figures["ok"]
    credentials = scenario.credentials
    social: dict[str, Any] = {}
    if credentials["provider"] in ("fast", "device"):
        # Every account was linked, and every device set up, before the timed part.
        social = {"site": credentials["site"], "devices": max(credentials["users"], settings.concurrency + 1)
                  if credentials["provider"] == "fast" else credentials["users"]}
    elif credentials["provider"] != "local":
        # Attempt n logs in account n % users; the untimed first login has linked account 0.
        # Each other account's first timed login creates its XMPP user and link (if it succeeds).
        first = min(settings.logins, credentials["users"]) - 1
        social = {"site": credentials["site"], "users": credentials["users"], "first_logins": first,
                  "repeat_logins": settings.logins - first}
    return {
        "mechanism": credentials["mechanism"],
        "credentials": credentials["provider"],
        **social,
        "tls": scenario.tls,
        "concurrency": settings.concurrency,
        "logins": ok,
        "failed": figures["failed"],
        "errors": figures["errors"],
        "elapsed_s": round(figures["elapsed"], 3),
        "logins_per_s": round(ok / figures["elapsed"], 1),
        "server_cpu_ms_per_login": round(1000 * usage.server_cpu_s / ok, 2) if ok else None,
        "latency_ms": figures["latency_ms"],
        "listen_overflows": result.listen_overflows,
        "cpu": asdict(usage),
        "warnings": result.warnings(),
    }


def run_serial(daemon: Daemon, settings: Settings, scenario: LoginScenario) -> dict[str, Any]:
    """`serial_logins` logins of *scenario* one after another, each on a fresh connection: the
    latency of a lone login, which waits on nothing but the daemon, the network stack and the client.

    Timed twice: by the load generator (asyncio, the standard library's TLS), and by
    `benchmarks.serial_login`, a blocking client on pyOpenSSL whose own CPU per login is about half
    the generator's. Server and client take turns, so the client's CPU is part of every figure;
    the target is checked on the lean client's, the one closer to what the server costs."""
    row = run_login(daemon, replace(settings, logins=settings.serial_logins, concurrency=1), scenario)
    lean = run_lean_serial(daemon, settings, scenario)
    row["lean_client"] = lean
    if scenario.tls:
        p50 = lean["latency_ms"]["p50"]
        row["p50_target_ms"] = SERIAL_P50_TARGET_MS
        row["p50_target_met"] = p50 is not None and p50 < SERIAL_P50_TARGET_MS
    return row


def run_lean_serial(daemon: Daemon, settings: Settings, scenario: LoginScenario) -> dict[str, Any]:
    """The same logins timed by `benchmarks.serial_login`, in a process of its own."""
    credentials = scenario.credentials
    if credentials.get("provider") != "local":
        raise BenchError(f"the lean serial client logs in to local accounts only, not {scenario.name}")
    command = [sys.executable, "-m", "benchmarks.serial_login", "--host", HOST, "--port", str(daemon.port),
               "--domain", DOMAIN, "--user", f"{credentials['prefix']}{{n}}", "--accounts",
               str(credentials["count"]), "--password", str(credentials["password"]), "--mechanism",
               str(credentials["mechanism"]), "--logins", str(settings.serial_logins),
               "--server-pid", str(daemon.pid)] + ([] if scenario.tls else ["--no-tls"])
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        command, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise BenchError(f"serial_login failed: {done.stderr.strip()[-500:]}")
    return dict(json.loads(done.stdout))


def traffic_figures(result: Measurement) -> dict[str, Any]:
    """One stage of chat traffic: deliveries, their rate and latency, and the daemon's CPU per message."""
    figures, usage = result.figures, result.usage
    delivered, elapsed = figures["delivered"], figures["elapsed"]
    return {
        "delivered": delivered,
        "bounced": figures["errors"],
        "elapsed_s": round(elapsed, 3),
        "messages_per_s": round(delivered / elapsed, 1),
        "sent_per_s": round(figures["sent"] / elapsed, 1),
        "server_cpu_s_per_1000": round(1000 * usage.server_cpu_s / delivered, 3) if delivered else None,
        "latency_ms": figures["latency_ms"],
        "listen_overflows": result.listen_overflows,
        "cpu": asdict(usage),
        "warnings": result.warnings(),
    }


# An open loop that sent less than this share of what it offered was held back by the
# generator (or by the daemon's full socket buffers): its rate is not the one asked for.
OPEN_LOOP_SENT_SHARE = 0.95


def open_loop_figures(result: Measurement, fraction: float) -> dict[str, Any]:
    """The open-loop stage: what it offered, and whether its p99 met the issue's target."""
    offered = result.figures["offered_per_s"]
    figures = {"fraction": fraction, "offered_per_s": round(offered, 1), **traffic_figures(result)}
    p99 = figures["latency_ms"]["p99"]
    figures["p99_target_ms"] = OPEN_LOOP_P99_TARGET_MS
    figures["p99_target_met"] = p99 is not None and p99 < OPEN_LOOP_P99_TARGET_MS
    if figures["sent_per_s"] < OPEN_LOOP_SENT_SHARE * offered:
        figures["warnings"].append(f"sent {figures['sent_per_s']:.0f}/s of the {offered:.0f}/s offered")
    return figures


ARCHIVE_LIMIT = "mam-backlog"  # the daemon's count of messages delivered but not archived


def run_msgs(daemon: Daemon, settings: Settings, transport: str) -> dict[str, Any]:
    """The closed loop, then the open loop at ``open_fraction`` of the rate the closed loop reached."""
    tls = transport == "tls"
    job = {"phase": "msgs", "target": target(daemon, tls, transport),
           "credentials": local_credentials("SCRAM-SHA-256", daemon.accounts), "pairs": settings.pairs,
           "window": settings.window, "duration": settings.duration, "concurrency": settings.concurrency,
           "open_fraction": settings.open_fraction, "open_duration": settings.open_duration}
    unarchived = daemon.limits_hit().get(ARCHIVE_LIMIT, 0)
    closed, *opened = measure(daemon, job, limit=120 + settings.duration + settings.open_duration)
    unarchived = daemon.limits_hit().get(ARCHIVE_LIMIT, 0) - unarchived
    row = {"tls": tls, "pairs": settings.pairs, "window": settings.window,
           "in_flight": closed.figures["in_flight"], **traffic_figures(closed), "unarchived": unarchived}
    if opened:
        row["open_loop"] = open_loop_figures(opened[0], settings.open_fraction)
        row["warnings"] += [f"open loop: {warning}" for warning in row["open_loop"]["warnings"]]
    if unarchived:
        # A figure with MAM on is only one if every message was archived: a store that fell
        # behind past [xmpp.mam] max_buffered_rows makes the rest of them cheap.
        row["warnings"].append(f"{unarchived} messages went unarchived (the archive's backlog was full): "
                               "the figures do not include their archiving")
    return row


def run_room(daemon: Daemon, settings: Settings, transport: str) -> dict[str, Any]:
    """One room of ``occupants`` clients in a closed loop: deliveries (to every occupant) per
    second and per daemon CPU-second."""
    tls = transport == "tls"
    job = {"phase": "room", "target": target(daemon, tls, transport),
           "credentials": local_credentials("SCRAM-SHA-256", daemon.accounts), "occupants": settings.occupants,
           "window": settings.window, "duration": settings.duration, "concurrency": settings.concurrency}
    [closed] = measure(daemon, job, limit=120 + settings.duration)
    row = {"tls": tls, "occupants": settings.occupants, "window": settings.window,
           "in_flight": closed.figures["in_flight"], **traffic_figures(closed)}
    cpu = closed.usage.server_cpu_s
    row["delivered_per_server_cpu_s"] = round(row["delivered"] / cpu) if cpu else None
    return row


def run_s2s(here: Daemon, there: Daemon, settings: Settings) -> dict[str, Any]:
    """``pairs`` clients on *here* chatting with as many on *there*, across the federated link,
    in a closed loop: messages per CPU-second of both daemons together (each message crosses
    both), beside the same traffic between two clients of one daemon (the msgs phase)."""
    job = {"phase": "s2s", "target": target(here, False) | {"domain": here.domain},
           "peer": target(there, False) | {"domain": there.domain},
           "credentials": local_credentials("SCRAM-SHA-256", here.accounts), "pairs": settings.pairs,
           "window": settings.window, "duration": settings.duration, "concurrency": settings.concurrency}
    [closed] = measure(here, job, limit=120 + settings.duration, peer=there)
    peer_cpu = closed.figures.pop("peer_cpu_s")
    row = {"tls": False, "pairs": settings.pairs, "window": settings.window,
           "in_flight": closed.figures["in_flight"], **traffic_figures(closed)}
    both = closed.usage.server_cpu_s + peer_cpu
    row["peer_cpu_s"] = round(peer_cpu, 3)
    row["delivered_per_cpu_s_both"] = round(row["delivered"] / both) if both else None
    return row


# The cluster phase's set-ups, in the order they run: (label, nodes, with Redis). One node on
# PostgreSQL alone is the baseline (a single-node deployment on the cluster's database); one node
# with [cluster] on shows what the cluster layer costs a node that has no other to talk to.
CLUSTER_SETUPS = (("1-node", 1, False), ("1-node-redis", 1, True), ("2-nodes", 2, True))
CLUSTER_LOGIN = "scram-sha-256+tcp"  # the comparison is without TLS


def _nodes_cpu(result: Measurement) -> list[float]:
    """Each node's CPU-seconds over the stage: the target's, then the peer's."""
    found = [result.usage.server_cpu_s]
    if "peer_cpu_s" in result.figures:
        found.append(round(result.figures["peer_cpu_s"], 3))
    return found


def cluster_cpu_figures(result: Measurement, count: int, per: str) -> dict[str, Any]:
    """CPU of the nodes, of PostgreSQL and Redis, per *count* things done (``per``: what)."""
    nodes = _nodes_cpu(result)
    engines = result.figures.get("others_cpu_s", {})
    wall = result.usage.wall_s
    both = sum(nodes)
    scale = 1000  # CPU-seconds per 1000 messages, or milliseconds per login
    found = {
        "nodes_cpu_s": nodes,
        "nodes_pct": round(100 * both / wall, 1),
        "engines_cpu_s": engines,
        f"nodes_cpu_per_{per}": round(scale * both / count, 3) if count else None,
        f"engines_cpu_per_{per}": round(scale * sum(engines.values()) / count, 3) if count else None,
    }
    if count and both:
        found["ceiling_per_s"] = ceilings(count, len(nodes), both, sum(engines.values()),
                                          result.usage.generator_cpu_s)
    return found


def ceilings(count: int, nodes: int, nodes_cpu: float, engines_cpu: float, generator_cpu: float,
             cpus: int | None = None) -> dict[str, float]:
    """What this machine's cores allow, from the CPU each thing done cost (not from the rate
    reached, which other work on the machine lowers): the rate at which the nodes, each using at
    most one core (one Python process; its store thread shares the interpreter's lock), are
    saturated, or at which all the cores are, whichever comes first; ``machine`` counts the
    generator's CPU as the run had it, ``without_generator`` as if the clients ran elsewhere."""
    cores = cpus or os.cpu_count() or 1
    node_bound = nodes * count / nodes_cpu
    return {"machine": round(min(node_bound, cores * count / (nodes_cpu + engines_cpu + generator_cpu))),
            "without_generator": round(min(node_bound, cores * count / (nodes_cpu + engines_cpu)))}


def run_cluster_traffic(nodes: Sequence[Daemon], engines: Engines, settings: Settings, layout: str) -> dict[str, Any]:
    """``pairs`` pairs chatting in a closed loop on the cluster's nodes, as *layout* places them
    (benchmarks.loadgen.cluster_phase): messages per second for the machine, and the CPU of the
    nodes and the engines per message."""
    first, *rest = nodes
    peer = rest[0] if rest else None
    job = {"phase": "cluster", "layout": layout, "target": target(first, False),
           "peer": target(peer, False) if peer is not None else None,
           "credentials": local_credentials("SCRAM-SHA-256", first.accounts), "pairs": settings.pairs,
           "window": settings.window, "duration": settings.duration, "concurrency": settings.concurrency}
    [closed] = measure(first, job, limit=120 + settings.duration, peer=peer, others=engines.readers())
    row = {"layout": layout, "nodes": len(nodes), "pairs": settings.pairs, "window": settings.window,
           "in_flight": closed.figures["in_flight"], **traffic_figures(closed)}
    row.update(cluster_cpu_figures(closed, row["delivered"], "1000"))
    both = sum(row["nodes_cpu_s"])
    row["delivered_per_node_cpu_s"] = round(row["delivered"] / both) if both else None
    return row


def run_cluster_login(nodes: Sequence[Daemon], engines: Engines, settings: Settings) -> dict[str, Any]:
    """``logins`` SCRAM-SHA-256 logins over plain TCP, ``concurrency`` at a time, alternately on
    each node: logins per second for the machine, and the CPU of the nodes and engines per login."""
    first, *rest = nodes
    peer = rest[0] if rest else None
    [scenario] = login_scenarios([CLUSTER_LOGIN], first.accounts, settings.logins, None)
    job = {"phase": "login", "target": target(first, False),
           "peer": target(peer, False) if peer is not None else None, "credentials": scenario.credentials,
           "count": settings.logins, "concurrency": settings.concurrency}
    [result] = measure(first, job, limit=60 + settings.logins / 5, peer=peer, others=engines.readers())
    figures, ok = result.figures, result.figures["ok"]
    row = {"scenario": CLUSTER_LOGIN, "nodes": len(nodes), "concurrency": settings.concurrency, "logins": ok,
           "failed": figures["failed"], "errors": figures["errors"], "elapsed_s": round(figures["elapsed"], 3),
           "logins_per_s": round(ok / figures["elapsed"], 1), "latency_ms": figures["latency_ms"],
           "listen_overflows": result.listen_overflows, "cpu": asdict(result.usage), "warnings": result.warnings()}
    row.update(cluster_cpu_figures(result, ok, "login_ms"))
    return row


def cluster_summary(rows: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's three figures: two nodes against one for the machine's messages and logins per
    second (goal: 1.7x), and a cross-node message's CPU against a local one's."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    one, two = "1-node", "2-nodes"
    found: dict[str, Any] = {"goal": 1.7, "warnings": []}
    for what, mine, theirs, rate in (("msgs", f"{two} local", f"{one} msgs", "messages_per_s"),
                                     ("logins", f"{two} logins", f"{one} logins", "logins_per_s")):
        if mine in rows and theirs in rows:
            found[f"{what}_ratio"] = ratio(rows[mine][rate], rows[theirs][rate])
            for kind in ("machine", "without_generator"):
                found[f"{what}_ceiling_ratio_{kind}"] = ratio(rows[mine].get("ceiling_per_s", {}).get(kind),
                                                             rows[theirs].get("ceiling_per_s", {}).get(kind))
    if f"{two} local" in rows and f"{two} cross" in rows:
        local, cross = rows[f"{two} local"], rows[f"{two} cross"]
        found["cross_vs_local_nodes_cpu"] = ratio(cross["nodes_cpu_per_1000"], local["nodes_cpu_per_1000"])
        found["cross_vs_local_with_engines"] = ratio(
            cross["nodes_cpu_per_1000"] + cross["engines_cpu_per_1000"],
            local["nodes_cpu_per_1000"] + local["engines_cpu_per_1000"])
    if f"{one} msgs" in rows and f"{one}-redis msgs" in rows:
        found["redis_layer_vs_plain_nodes_cpu"] = ratio(rows[f"{one}-redis msgs"]["nodes_cpu_per_1000"],
                                                        rows[f"{one} msgs"]["nodes_cpu_per_1000"])
    return found


def idle_figures(result: Measurement, rss_before_kib: int, tls: bool) -> dict[str, Any]:
    """One stage of the idle phase: the connections held at its end and the memory they take.

    The memory per connection is counted from the fresh daemon's RSS before the first stage,
    so that each stage's figure covers all the connections it holds.
    """
    figures, usage = result.figures, result.usage
    held, opened = figures["held"], figures["opened"]
    grown = result.end.server_rss_kib - rss_before_kib
    warnings = result.warnings()
    if figures["lost"]:
        warnings.append(f"{figures['lost']} held connections were closed by the daemon")
    return {
        "tls": tls,
        "connections": held,
        "opened": opened,
        "failed": figures["failed"],
        "lost": figures["lost"],
        "errors": figures["errors"],
        "rss_before_kib": rss_before_kib,
        "rss_held_kib": result.end.server_rss_kib,
        "kib_per_connection": round(grown / held, 1) if held else None,
        "setup_s": round(figures["elapsed"], 3),
        "server_cpu_ms_per_connection": round(1000 * usage.server_cpu_s / opened, 2) if opened else None,
        "listen_overflows": result.listen_overflows,
        "cpu": asdict(usage),
        "warnings": warnings,
    }


def run_idle(daemon: Daemon, settings: Settings, transport: str) -> dict[str, Any]:
    """Rows ``<transport>-<count>`` for each count of held connections; the last also has ``chat``."""
    tls = transport == "tls"
    job = {"phase": "idle", "target": target(daemon, tls, transport),
           "credentials": local_credentials("SCRAM-SHA-256", daemon.accounts), "counts": list(settings.idle),
           "concurrency": settings.concurrency, "pairs": settings.idle_pairs, "window": settings.window,
           "duration": settings.idle_duration}
    stages = measure(daemon, job, limit=60 + max(settings.idle) / 5 + settings.idle_duration)
    holds, chats = stages[:len(settings.idle)], stages[len(settings.idle):]
    rss_before = holds[0].start.server_rss_kib
    rows = {f"{transport}-{count}": idle_figures(result, rss_before, tls)
            for count, result in zip(settings.idle, holds, strict=True)}
    last = rows[f"{transport}-{settings.idle[-1]}"]
    last["rss_after_release_kib"] = holds[-1].rss_after_release_kib
    if chats:
        chat = chats[0]
        last["chat"] = {"pairs": settings.idle_pairs, "window": settings.window,
                        "in_flight": chat.figures["in_flight"], "held": chat.figures["held"],
                        "lost": chat.figures["lost"], **traffic_figures(chat)}
        if chat.figures["lost"]:
            last["chat"]["warnings"].append(f"{chat.figures['lost']} held connections were closed by the daemon")
        last["warnings"] += [f"chat: {warning}" for warning in last["chat"]["warnings"]]
    return rows


# -- report --------------------------------------------------------------------------------


def machine_description() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        memory_kib = int(meminfo.readline().split()[1])
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_mib": memory_kib // 1024,
            "kernel": platform.release(), "python": platform.python_version()}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages before the run: was the machine busy already?"""
    return [round(value, 2) for value in os.getloadavg()]


def git_revision() -> str | None:
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,  # noqa: S607
                              text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value} KiB"


def _cpu(cpu: Mapping[str, Any]) -> str:
    return (f"{cpu['server_cpu_s']:>6.1f} {cpu['generator_cpu_s']:>6.1f} {cpu['server_pct']:>6.0f}%"
            f" {cpu['generator_pct']:>4.0f}% {cpu['other_pct']:>4.0f}% {cpu['machine_pct']:>6.0f}%")


_CPU_HEADS = f"{'srv s':>6} {'gen s':>6} {'server':>7} {'gen':>5} {'other':>5} {'machine':>7}"
_TRAFFIC_HEADS = f"{'delivered':>9} {'msgs/s':>9} {'cpu s/1000':>11} {'p50 ms':>8} {'p99 ms':>8} {_CPU_HEADS}"


def _traffic(label: str, row: Mapping[str, Any]) -> str:
    return (f"{label:<22} {row['delivered']:>9} {row['messages_per_s']:>9.1f}"
            f" {row['server_cpu_s_per_1000'] or 0:>11.3f} {_ms(row['latency_ms']['p50']):>8}"
            f" {_ms(row['latency_ms']['p99']):>8} {_cpu(row['cpu'])}")


def _login_lines(rows: Mapping[str, Any]) -> list[str]:
    lines = ["", f"{'login':<22} {'ok':>6} {'fail':>5} {'logins/s':>9} {'cpu ms/login':>13} {'p50 ms':>8} "
                 f"{'p99 ms':>8} {_CPU_HEADS}"]
    for name, row in rows.items():
        lines.append(f"{name:<22} {row['logins']:>6} {row['failed']:>5} {row['logins_per_s']:>9.1f} "
                     f"{_ms(row['server_cpu_ms_per_login']):>13} {_ms(row['latency_ms']['p50']):>8} "
                     f"{_ms(row['latency_ms']['p99']):>8} {_cpu(row['cpu'])}")
    if rows:
        concurrency = next(iter(rows.values()))["concurrency"]
        lines.append(f"{concurrency} logins at once")
    social = [f"{name} {row['first_logins']}/{row['repeat_logins']}" for name, row in rows.items()
              if "first_logins" in row]
    if social:
        lines.append("social logins, first (user and link created) / repeat: " + ", ".join(social))
    return lines


def _serial_lines(rows: Mapping[str, Any]) -> list[str]:
    lines = _login_lines(rows)
    lines[1] = "one at a time" + lines[1][len("one at a time"):]
    lines.append(f"{'lean client':<22} {'ok':>6} {'fail':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
                 f"{'server cpu ms':>14} {'client cpu ms':>14}")
    for name, row in rows.items():
        lean = row.get("lean_client")
        if lean:
            latency = lean["latency_ms"]
            lines.append(f"{name:<22} {lean['ok']:>6} {lean['failed']:>5} {_ms(latency['p50']):>8} "
                         f"{_ms(latency['p90']):>8} {_ms(latency['p99']):>8} "
                         f"{_ms(lean.get('server_cpu_ms_per_login')):>14} {_ms(lean['client_cpu_ms_per_login']):>14}")
    lines += [f"{name}: target p50 < {row['p50_target_ms']:g} ms {'met' if row['p50_target_met'] else 'NOT met'}"
              for name, row in rows.items() if "p50_target_ms" in row]
    return lines


def _msgs_lines(rows: Mapping[str, Any]) -> list[str]:
    lines = ["", f"{'msgs':<22} {_TRAFFIC_HEADS}"]
    notes = []
    for name, row in rows.items():
        lines.append(_traffic(f"{name} {row['pairs']}x2 K={row['window']} closed", row))
        notes.append(f"{name} closed loop: {row['in_flight']} messages in flight, {row['elapsed_s']:.0f} s")
        cpu, delivered = row["cpu"], row["delivered"]
        if delivered:
            notes.append(f"{name} closed loop: daemon CPU per message {1e6 * cpu['server_cpu_s'] / delivered:.1f} us "
                         f"(reactor's thread {1e6 * cpu['server_reactor_cpu_s'] / delivered:.1f}, other threads "
                         f"{1e6 * cpu['server_threads_cpu_s'] / delivered:.1f}); "
                         f"{delivered / max(cpu['server_cpu_s'], 1e-9):.0f} per daemon CPU-second")
        if "open_loop" in row:
            open_loop = row["open_loop"]
            lines.append(_traffic(f"{name} open at {open_loop['fraction']:.0%}", open_loop))
            met = "met" if open_loop["p99_target_met"] else "NOT met"
            notes.append(f"{name} open loop: {open_loop['offered_per_s']:.0f}/s offered, "
                         f"{open_loop['sent_per_s']:.0f}/s sent, {open_loop['elapsed_s']:.0f} s; "
                         f"target p99 < {open_loop['p99_target_ms']:g} ms {met}")
    return lines + notes


def _room_lines(rows: Mapping[str, Any]) -> list[str]:
    lines = ["", f"{'room':<22} {_TRAFFIC_HEADS}"]
    notes = []
    for name, row in rows.items():
        lines.append(_traffic(f"{name} {row['occupants']} occ. K={row['window']}", row))
        notes.append(f"{name}: {row['delivered_per_server_cpu_s']} deliveries per daemon CPU-second "
                     f"({row['in_flight']} messages in flight, each to all {row['occupants']} occupants)")
    return lines + notes


def _s2s_lines(rows: Mapping[str, Any]) -> list[str]:
    lines = ["", f"{'s2s':<22} {_TRAFFIC_HEADS}"]
    notes = []
    for name, row in rows.items():
        lines.append(_traffic(f"{name} {row['pairs']}x2 K={row['window']} federated", row))
        notes.append(f"{name}: {row['delivered_per_cpu_s_both']} messages per CPU-second of both daemons "
                     f"(a.bench's CPU in the row, b.bench's {row['peer_cpu_s']} s; each message crosses both)")
    return lines + notes


def _cluster_lines(rows: Mapping[str, Any]) -> list[str]:
    lines = ["", f"{'cluster':<22} {'done':>7} {'per s':>9} {'node cpu':>9} {'pg+redis':>9} {'p50 ms':>8} "
                 f"{'p99 ms':>8} {'nodes':>6} {'gen':>5} {'machine':>7}  node cpu s"]
    for name, row in rows.items():
        if name == "summary":
            continue
        logins = "logins_per_s" in row
        done = row["logins"] if logins else row["delivered"]
        rate = row["logins_per_s"] if logins else row["messages_per_s"]
        key = "login_ms" if logins else "1000"
        engines = row["engines_cpu_s"]
        lines.append(f"{name:<22} {done:>7} {rate:>9.1f} {row[f'nodes_cpu_per_{key}'] or 0:>9.3f} "
                     f"{row[f'engines_cpu_per_{key}'] or 0:>9.3f} {_ms(row['latency_ms']['p50']):>8} "
                     f"{_ms(row['latency_ms']['p99']):>8} {row['nodes_pct']:>5.0f}% "
                     f"{row['cpu']['generator_pct']:>4.0f}% {row['cpu']['machine_pct']:>6.0f}%  "
                     + " + ".join(f"{cpu:.1f}" for cpu in row["nodes_cpu_s"])
                     + f" (pg {engines.get('postgres', 0):.1f}, redis {engines.get('redis', 0):.1f})")
    lines.append("node cpu, pg+redis: CPU-seconds per 1000 messages, or ms per login; nodes: all nodes together "
                 "in % of one core")
    summary = rows.get("summary", {})
    if summary:
        lines.append(f"2 nodes / 1 node: messages/s {summary.get('msgs_ratio')}, logins/s "
                     f"{summary.get('logins_ratio')} (goal {summary['goal']}); what the CPU per message and login "
                     f"allow on {os.cpu_count()} cores: messages {summary.get('msgs_ceiling_ratio_machine')} "
                     f"({summary.get('msgs_ceiling_ratio_without_generator')} without the generator), logins "
                     f"{summary.get('logins_ceiling_ratio_machine')} "
                     f"({summary.get('logins_ceiling_ratio_without_generator')})")
        lines.append("cross-node / local message CPU: "
                     f"nodes {summary.get('cross_vs_local_nodes_cpu')}, with Redis and PostgreSQL "
                     f"{summary.get('cross_vs_local_with_engines')}; one node with [cluster] / without: "
                     f"{summary.get('redis_layer_vs_plain_nodes_cpu')}")
    return lines


def _idle_lines(rows: Mapping[str, Any]) -> list[str]:
    lines = ["", f"{'idle':<22} {'held':>6} {'fail':>5} {'lost':>5} {'RSS before':>12} {'RSS held':>12} "
                 f"{'KiB/conn':>9} {'setup s':>8} {'cpu ms/conn':>12} {_CPU_HEADS}"]
    for name, row in rows.items():
        lines.append(f"{name:<22} {row['connections']:>6} {row['failed']:>5} {row['lost']:>5} "
                     f"{_kib(row['rss_before_kib']):>12} {_kib(row['rss_held_kib']):>12} "
                     f"{row['kib_per_connection'] or 0:>9.1f} {row['setup_s']:>8.1f} "
                     f"{_ms(row['server_cpu_ms_per_connection']):>12} {_cpu(row['cpu'])}")
    released = [f"{name} {_kib(row['rss_after_release_kib'])}" for name, row in rows.items()
                if "rss_after_release_kib" in row]
    lines.append("KiB/conn: (RSS held - RSS before) / held, from the fresh daemon's RSS; after release: "
                 + ", ".join(released))
    chats = {name: row["chat"] for name, row in rows.items() if "chat" in row}
    if chats:
        lines += ["", f"{'chat beside idle':<22} {_TRAFFIC_HEADS}"]
        lines += [_traffic(f"{name} {chat['pairs']}x2 K={chat['window']}", chat) for name, chat in chats.items()]
        lines += [f"{name}: {chat['held']} idle connections held while {chat['pairs']} pairs chatted for "
                  f"{chat['elapsed_s']:.0f} s (closed loop)" for name, chat in chats.items()]
    return lines


def _totals_lines(report: Mapping[str, Any]) -> list[str]:
    totals = report["totals"]
    lines = ["", f"{'phase totals':<22} {'wall s':>7} {'daemon cpu s':>13} {'generator cpu s':>16} {'machine':>8}"]
    for phase, total in totals["phases"].items():
        lines.append(f"{phase:<22} {total['wall_s']:>7.1f} {total['server_cpu_s']:>13.1f} "
                     f"{total['generator_cpu_s']:>16.1f} {total['machine_pct']:>7.0f}%")
    lines.append(f"{'whole run':<22} {totals['wall_s']:>7.1f}   (set-up and teardown included; machine in % of all"
                 " cores)")
    return lines


def table(report: Mapping[str, Any]) -> str:
    """The report as text for people; every figure is also in the JSON."""
    meta, phases = report["meta"], report["phases"]
    machine = meta["machine"]
    lines = [f"sns-xmpp benchmark {meta['date']}, {machine['cpus']} CPUs ({machine['cpu_model']}), "
             f"revision {meta['revision']}, open files limit {meta['open_files_limit']}"]
    if phases.get("login"):
        lines += _login_lines(phases["login"])
    if phases.get("serial"):
        lines += _serial_lines(phases["serial"])
    if phases.get("msgs"):
        lines += _msgs_lines(phases["msgs"])
    if phases.get("room"):
        lines += _room_lines(phases["room"])
    if phases.get("s2s"):
        lines += _s2s_lines(phases["s2s"])
    if phases.get("idle"):
        lines += _idle_lines(phases["idle"])
    if phases.get("cluster"):
        lines += _cluster_lines(phases["cluster"])
    lines += ["", "cpu over each timed part: CPU-seconds of the daemon (srv s) and the load generator (gen s); "
                  "daemon (server), generator (gen) and everything else (other) in % of one core; machine in % "
                  "of all cores"]
    if report["totals"]["phases"]:
        lines += _totals_lines(report)
    lines.append("")
    for phase, rows in phases.items():
        for name, row in rows.items():
            lines += [f"WARNING {phase} {name}: {warning}" for warning in row["warnings"]]
            lines += [f"ERROR {phase} {name}: {count} x {error}" for error, count in row.get("errors", {}).items()]
    for label, daemon in report["daemons"].items():
        log = daemon["log"]
        status = daemon["exit_status"]
        shown = "SIGTERM" if status == -signal.SIGTERM else status
        lines.append(f"daemon {label}: exit status {shown}, open files limit {daemon.get('open_files_limit')}, "
                     f"{log['lines']} log lines (warn and up), {log['problems']} problems, "
                     f"limits hit: {_limits_text(daemon.get('limits_hit'))}"
                     + (f", log kept at {log['kept_at']}" if log["kept_at"] else ""))
        lines += ["  | " + excerpt.replace("\n", "\n  | ") for excerpt in log["excerpts"]]
    return "\n".join(lines)


def _limits_text(limits: Mapping[str, int] | None) -> str:
    """A daemon's limits hit over its life, for its line: None when they could not be read (it
    failed before the end of its phase)."""
    if limits is None:
        return "not read"
    return ", ".join(f"{name} {count}" for name, count in limits.items()) or "none"


# -- main ----------------------------------------------------------------------------------


class Bench:
    """One run: its settings, its temporary folder, and the report it fills in as it goes."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder
        self.started = time.monotonic()
        self._phase_daemons: list[Daemon] = []  # the daemons of the phase running now, for its totals
        self.report: dict[str, Any] = {
            "meta": {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": machine_description(),
                "revision": git_revision(),
                "settings": asdict(settings),
                "open_files_limit": raise_open_files_limit(),
                "load_average": load_average(),
            },
            "phases": {},
            "totals": {"wall_s": 0.0, "phases": {}},
            "daemons": {},
        }

    @contextmanager
    def daemon(self, label: str, accounts: int, idp: IdentityProvider | None = None,
               made: Daemon | None = None) -> Iterator[Daemon]:
        """A fresh daemon with *accounts* accounts (or *made*, set up by the caller in a folder
        named *label*), stopped afterwards; its log is checked and reported."""
        folder = self.folder / label
        if made is None:
            folder.mkdir()
        daemon = made or Daemon(folder, accounts, idp, self.settings.features_off)
        self._phase_daemons.append(daemon)
        limits: dict[str, int] | None = None
        try:
            daemon.start()
            yield daemon
            limits = daemon.limits_hit()
        finally:
            try:
                daemon.stop()
            finally:
                self.report["daemons"][label] = {"exit_status": daemon.exit_status, "limits_hit": limits,
                                                 "open_files_limit": daemon.open_files_limit, "cpu_s": daemon.cpu_s,
                                                 "generator_cpu_s": round(daemon.generator_cpu_s, 3),
                                                 "log": asdict(self._checked_log(daemon))}

    def _checked_log(self, daemon: Daemon) -> LogReport:
        log = read_log(daemon.log_path)
        if self.settings.keep:
            log.kept_at = str(daemon.log_path)
        elif log.problems:
            descriptor, name = tempfile.mkstemp(prefix="sns-xmpp-bench-", suffix=".log")
            os.close(descriptor)
            shutil.copyfile(daemon.log_path, name)
            log.kept_at = name
        return log

    @contextmanager
    def identity_provider(self) -> Iterator[IdentityProvider | None]:
        """The OpenID provider, when an oidc scenario is to run; stopped afterwards."""
        if not any(name.startswith("oidc+") for name in self.settings.scenarios):
            yield None
            return
        idp = IdentityProvider(self.folder)
        try:
            yield idp
        finally:
            idp.stop()

    def login(self) -> dict[str, Any]:
        settings = self.settings
        results: dict[str, Any] = self.report["phases"].setdefault("login", {})
        with self.identity_provider() as idp, \
                self.daemon("login", max(settings.logins, settings.concurrency), idp) as daemon:
            for scenario in login_scenarios(settings.scenarios, daemon.accounts, settings.logins, idp,
                                            daemon.http_url):
                results[scenario.name] = run_login(daemon, settings, scenario)
        return results

    def serial(self) -> dict[str, Any]:
        settings = self.settings
        results: dict[str, Any] = self.report["phases"].setdefault("serial", {})
        with self.daemon("serial", min(settings.serial_logins, SOCIAL_USERS)) as daemon:
            for scenario in login_scenarios(SERIAL_SCENARIOS, daemon.accounts, settings.serial_logins, None):
                results[scenario.name] = run_serial(daemon, settings, scenario)
        return results

    def msgs(self) -> dict[str, Any]:
        results: dict[str, Any] = self.report["phases"].setdefault("msgs", {})
        with self.daemon("msgs", 2 * self.settings.pairs) as daemon:
            for transport in self.settings.transports:
                results[transport] = run_msgs(daemon, self.settings, transport)
        return results

    def room(self) -> dict[str, Any]:
        results: dict[str, Any] = self.report["phases"].setdefault("room", {})
        with self.daemon("room", self.settings.occupants) as daemon:
            for transport in self.settings.transports:
                results[transport] = run_room(daemon, self.settings, transport)
        return results

    def s2s(self) -> dict[str, Any]:
        """Two daemons federated over loopback (TCP, STARTTLS and dialback between them, as the
        shipped defaults require), their clients chatting across the link."""
        results: dict[str, Any] = self.report["phases"].setdefault("s2s", {})
        settings = self.settings
        (self.folder / "s2s-a").mkdir()
        (self.folder / "s2s-b").mkdir()
        here = Daemon(self.folder / "s2s-a", settings.pairs, None, settings.features_off, "a.bench", "127.0.0.1")
        there = Daemon(self.folder / "s2s-b", settings.pairs, None, settings.features_off, "b.bench", "127.0.0.2")
        here.peers = {there.domain: f"127.0.0.2:{there.s2s_port}"}
        there.peers = {here.domain: f"127.0.0.1:{here.s2s_port}"}
        with self.daemon("s2s-a", settings.pairs, made=here), self.daemon("s2s-b", settings.pairs, made=there):
            results["tcp"] = run_s2s(here, there, settings)
        return results

    def cluster(self) -> dict[str, Any]:
        """One node against two on PostgreSQL and Redis (issue 20), in one run: each set-up of
        CLUSTER_SETUPS gets a database and a Redis key prefix of its own, its nodes chat
        (on one node; on two, locally and across) and log in, over plain TCP."""
        settings = self.settings
        results: dict[str, Any] = self.report["phases"].setdefault("cluster", {})
        accounts = max(2 * settings.pairs, settings.logins, settings.concurrency)
        (self.folder / "engines").mkdir()
        engines = Engines(self.folder / "engines")
        try:
            for label, count, clustered in CLUSTER_SETUPS:
                name = "bench_" + label.replace("-", "_")
                dsn = engines.database(name)
                create_postgres_accounts(dsn, accounts)
                nodes = []
                for number in range(count):
                    folder = self.folder / f"{label}-node{number}"
                    folder.mkdir()
                    cluster = {"redis_url": f"redis://{HOST}:{engines.redis['port']}/0",
                               "node_id": f"node{number}", "key_prefix": f"{name}:"} if clustered else None
                    nodes.append(Daemon(folder, accounts, None, settings.features_off, dsn=dsn, cluster=cluster,
                                        data_dir=self.folder / f"{label}-data"))
                with ExitStack() as stack:
                    for number, node in enumerate(nodes):
                        stack.enter_context(self.daemon(f"{label}-node{number}", accounts, made=node))
                    if clustered:
                        self._wait_subscribed(engines, f"{name}:directory", count)
                    for layout in ("one",) if count == 1 else ("local", "cross"):
                        results[f"{label} {'msgs' if layout == 'one' else layout}"] = run_cluster_traffic(
                            nodes, engines, settings, layout)
                    results[f"{label} logins"] = run_cluster_login(nodes, engines, settings)
        finally:
            engines.stop()
        results["summary"] = cluster_summary(results)
        return results

    @staticmethod
    def _wait_subscribed(engines: Engines, channel: str, count: int, timeout: float = 30.0) -> None:
        """Until every node listens to the directory's announcements (each node's sessions reach
        the others through them)."""
        deadline = time.monotonic() + timeout
        while engines.subscribers(channel) < count:
            if time.monotonic() > deadline:
                raise BenchError(f"the cluster's {count} nodes did not all subscribe to {channel} within {timeout:g}s")
            time.sleep(0.1)

    def idle(self) -> dict[str, Any]:
        """Per transport, a daemon of its own holding each count of connections in turn."""
        settings = self.settings
        results: dict[str, Any] = self.report["phases"].setdefault("idle", {})
        for transport in settings.transports:
            with self.daemon(f"idle-{transport}", max(settings.idle) + 2 * settings.idle_pairs) as daemon:
                results.update(run_idle(daemon, settings, transport))
        return results

    @contextmanager
    def totals(self, phase: str) -> Iterator[None]:
        """Wall time and CPU of the whole phase, set-up and teardown included, into ``totals``."""
        self._phase_daemons = []
        start, (busy, total) = time.monotonic(), machine_cpu_ticks()
        try:
            yield
        finally:
            end_busy, end_total = machine_cpu_ticks()
            self.report["totals"]["phases"][phase] = {
                "wall_s": round(time.monotonic() - start, 1),
                "server_cpu_s": round(sum(daemon.cpu_s or 0.0 for daemon in self._phase_daemons), 2),
                "generator_cpu_s": round(sum(daemon.generator_cpu_s for daemon in self._phase_daemons), 2),
                "machine_pct": round(100 * (end_busy - busy) / max(end_total - total, 1), 1),
            }
            self.report["totals"]["wall_s"] = round(time.monotonic() - self.started, 1)

    def connections_needed(self) -> int:
        """About the most connections one process (the daemon or a generator) holds at once."""
        settings = self.settings
        idle = max(settings.idle) + 2 * settings.idle_pairs if "idle" in settings.phases else 0
        return max(idle, settings.concurrency, 2 * settings.pairs, settings.occupants)

    def run(self) -> None:
        settings = self.settings
        needed = self.connections_needed() + 64
        if self.report["meta"]["open_files_limit"] < needed:
            raise BenchError(f"the open files limit is {self.report['meta']['open_files_limit']}; "
                             f"this run needs about {needed}")
        runners: dict[str, Callable[[], dict[str, Any]]] = {"login": self.login, "serial": self.serial,
                                                            "msgs": self.msgs, "idle": self.idle,
                                                            "room": self.room, "s2s": self.s2s,
                                                            "cluster": self.cluster}
        for phase in settings.phases:
            print(f"bench: {phase} ...", file=sys.stderr, flush=True)
            with self.totals(phase):
                self.report["phases"][phase] = runners[phase]()


@contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sns-xmpp-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"bench: kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    with workdir(settings.keep) as folder:
        bench = Bench(settings, folder)
        try:
            bench.run()
        except (BenchError, KeyboardInterrupt) as error:
            print(table(bench.report), file=sys.stderr)
            print(f"bench: {str(error) or 'interrupted'}", file=sys.stderr)
            return 1
    print(table(bench.report), file=sys.stderr)
    print(json.dumps(bench.report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
