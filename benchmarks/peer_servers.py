"""Prosody and ejabberd beside sns-xmpp: the same lone-login measurement against all three.

Issue 13 compared a lone STARTTLS login here with Prosody's and ejabberd's. This module starts a
throwaway instance of either, from Debian's packages (``apt-get install prosody ejabberd``; their
system services are not needed and should stay stopped), as a foreground child process in a
folder of its own: loopback only, one c2s port, domain ``localhost``, STARTTLS required, a
self-signed certificate made like sns-xmpp's own (`sns_xmpp.xmpp.tls.ensure_self_signed`, P-256),
SCRAM-SHA-256 on stored SCRAM keys (and PLAIN), and the benchmark's accounts ``bench0`` ...
with ``benchmarks.run.PASSWORD``. Each server keeps its own defaults otherwise, Nagle's
algorithm included: Prosody 0.12 leaves it on (``network_settings.nagle = true`` in
net/server_epoll.lua; ``--nodelay`` here turns it off), ejabberd listens with
``{nodelay, true}`` (ejabberd_listener). Logging is errors only, into the folder.

All accounts share one salt (Prosody: ``bench0``'s stored keys are copied; ejabberd: ``bench0``'s
``passwd`` record is copied in Mnesia), as `benchmarks.run.create_accounts` does for sns-xmpp:
the clients cache the salted password per salt, as real clients do per account, so no timed
login pays a client-side PBKDF2.

An instance quacks like `benchmarks.run.Daemon` where `benchmarks.run.run_serial` needs it
(``port``, ``pid``, ``accounts``, ``ensure_running``, ``generator_cpu_s``), so the serial phase's
scenario runs against it unchanged: the same load generator job, the same figures.

    python -m benchmarks.peer_servers prosody --port 5322 --data /tmp/p   # serve until Ctrl-C
    python -m benchmarks.peer_servers compare --runs 3 --logins 200        # all three, alternated

``messages`` measures what issue 16's goal counts, messages per server CPU-second, the same way
against all three: each allows plain TCP, and all three keep every message in their user archive
(sns-xmpp's MAM and carbons, its default; Prosody's ``mod_mam`` on its default internal storage;
ejabberd's ``mod_mam`` with ``default: always`` on its default Mnesia), or none of them has one
(``--archive off``: sns-xmpp with ``features_off`` mam and carbons). Each round runs the msgs
phase's closed loop (`benchmarks.run.run_msgs`) against each server in turn:

    python -m benchmarks.peer_servers messages --runs 3 --duration 10 --archive on

``logins`` runs the login phase's ``scram-sha-256+tcp`` scenario (`benchmarks.run.run_login`)
against each server in turn, with the same set-up as ``messages`` (archives on), for the server
CPU per login beside which sns-xmpp's FAST logins read (issue 15):

    python -m benchmarks.peer_servers logins --runs 3 --logins 3000

``compare`` starts sns-xmpp (`benchmarks.run.Daemon`), Prosody and ejabberd once each, then runs
the serial ``scram-sha-256+tls`` scenario against each in turn, ``--runs`` times, with
`benchmarks.run.run_serial` as the bench does: timed by the load generator, then by
`benchmarks.serial_login` (the lean blocking client). It prints one JSON object on stdout and
a line per measurement on stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks import run
from sns_xmpp.auth.scram import DEFAULT_ITERATIONS
from sns_xmpp.xmpp.tls import ensure_self_signed

HOST = run.HOST
DOMAIN = run.DOMAIN
SERVERS = ("prosody", "ejabberd")
EJABBERD_LIBS = Path("/usr/lib/x86_64-linux-gnu")
STARTUP_TIMEOUT = 60.0


class PeerError(run.BenchError):
    """A peer server could not be set up, started or stopped; printed as one line."""


def free_port() -> int:
    return run.free_port()


class PeerServer:
    """A throwaway server process in *workdir*, listening for c2s on *port* (loopback)."""

    name = "peer"
    # The messages comparison's settings, set before start: the user archive (XEP-0313) on, as
    # sns-xmpp has it by default, and plain TCP allowed (its figures are without TLS).
    archive = False
    plaintext = False

    def __init__(self, workdir: Path, port: int | None = None, accounts: int = 1, nodelay: bool = False) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.accounts = accounts
        self.nodelay = nodelay
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_status: int | None = None
        self.cpu_s: float | None = None
        self.generator_cpu_s = 0.0  # what benchmarks.run.measure adds the generators' CPU to

    # -- what benchmarks.run needs of a daemon --------------------------------------------

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def ensure_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise PeerError(f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}")

    # -- life -----------------------------------------------------------------------------

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def certificate(self) -> tuple[Path, Path]:
        return ensure_self_signed(self.workdir / "certs", [DOMAIN], datetime.datetime.now(datetime.UTC))

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        raise NotImplementedError

    def _spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - the Debian package's binary, our own arguments
                list(argv), cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True)

    def _wait_listening(self, deadline: float, ready: Path | None = None) -> None:
        """Until the c2s port accepts (and *ready* exists, when given)."""
        while True:
            self.ensure_running()
            if ready is None or ready.exists():
                try:
                    socket.create_connection((HOST, self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise PeerError(f"{self.name} did not listen on port {self.port} in time:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait; SIGKILL the whole process group when it does not end in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.cpu_s = run.process_cpu_seconds(self.pid)
            except OSError:
                pass
            self.process.send_signal(signal.SIGTERM)
            try:
                self.exit_status = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.exit_status = self.process.wait()
        else:
            self.exit_status = self.process.returncode
        # Helpers it started in its session (ejabberd's erl_child_setup, say) go with it.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def version(self) -> str:
        raise NotImplementedError

    def __enter__(self) -> PeerServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


# -- Prosody ---------------------------------------------------------------------------------

# Debian's prosody.cfg.lua modules, less those that listen elsewhere, need set-up, or run
# a server to server link (s2s is disabled, dialback with it), and less posix (foreground).
PROSODY_MODULES = ("disco", "roster", "saslauth", "tls", "blocklist", "bookmarks", "carbons", "pep", "private",
                   "smacks", "vcard4", "vcard_legacy", "csi_simple", "ping", "time", "uptime", "version")


def _lua(text: str) -> str:
    return json.dumps(text)  # a JSON string with only ASCII escapes is a Lua string


class Prosody(PeerServer):
    name = "prosody"

    def config(self, certificate: Path, key: Path) -> str:
        data = self.workdir / "data"
        modules = "; ".join(_lua(module) for module in (*PROSODY_MODULES, *(("mam",) if self.archive else ())))
        network = "network_settings = { nagle = false }\n" if self.nodelay else ""
        return f"""-- written by benchmarks/peer_servers.py
run_as_root = true
pidfile = {_lua(str(self.workdir / "prosody.pid"))}
data_path = {_lua(str(data))}
plugin_paths = {{ }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = {"false" if self.plaintext else "true"}
authentication = "internal_hashed"
password_hash = "SHA-256"
default_iteration_count = {DEFAULT_ITERATIONS}
modules_enabled = {{ {modules} }}
modules_disabled = {{ "s2s" }}
{network}log = {{ {{ levels = {{ min = "error" }}, to = "file", filename = {_lua(str(self.log_path))} }} }}
ssl = {{ certificate = {_lua(str(certificate))}, key = {_lua(str(key))} }}
VirtualHost {_lua(DOMAIN)}
"""

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        if shutil.which("prosody") is None:
            raise PeerError("prosody is not installed (apt-get install prosody)")
        deadline = time.monotonic() + timeout
        certificate, key = self.certificate()
        config = self.workdir / "prosody.cfg.lua"
        config.write_text(self.config(certificate, key), encoding="utf-8")
        (self.workdir / "data").mkdir(mode=0o700, exist_ok=True)
        self.create_accounts(config)
        self._spawn(["prosody", "--config", str(config), "-F"])
        self._wait_listening(deadline)

    def create_accounts(self, config: Path) -> None:
        """``prosodyctl register`` bench0, then copy its stored keys (one salt) to the others."""
        first = f"{run.ACCOUNT_PREFIX}0"
        done = subprocess.run(["prosodyctl", "--config", str(config), "register", first, DOMAIN,  # noqa: S603, S607
                               run.PASSWORD], capture_output=True, text=True, timeout=60, check=False)
        folder = self.workdir / "data" / DOMAIN / "accounts"
        stored = folder / f"{first}.dat"
        if done.returncode != 0 or not stored.exists():
            raise PeerError(f"prosodyctl register failed ({done.returncode}): {done.stdout}{done.stderr}")
        keys = stored.read_bytes()
        for index in range(1, self.accounts):
            (folder / f"{run.ACCOUNT_PREFIX}{index}.dat").write_bytes(keys)

    def version(self) -> str:
        done = subprocess.run(["prosodyctl", "about"], capture_output=True, text=True, timeout=30, check=False)  # noqa: S607
        for line in done.stdout.splitlines():
            if line.startswith("Prosody "):
                return line.strip()
        return "prosody (unknown version)"


# -- ejabberd --------------------------------------------------------------------------------

# Debian's ejabberd.yml modules, less those that listen elsewhere (bosh, mqtt, http_api,
# stun), need set-up (muc, push) or only matter to administrators.
EJABBERD_MODULES = ("mod_adhoc", "mod_blocking", "mod_caps", "mod_carboncopy", "mod_client_state", "mod_disco",
                    "mod_last", "mod_offline", "mod_ping", "mod_privacy", "mod_private", "mod_roster",
                    "mod_stream_mgmt", "mod_vcard", "mod_vcard_xupdate", "mod_version")


def _yaml(text: str) -> str:
    return json.dumps(text)  # YAML reads JSON strings


def _erlang_binary(text: str) -> str:
    return "<<" + json.dumps(text) + ">>"


class Ejabberd(PeerServer):
    """ejabberd 23.01 from Debian, started as ``erl ... -s ejabberd`` itself (not ejabberdctl,
    which would run it as the ejabberd user with /var/lib/ejabberd's cookie). The node has no
    distribution at all (``nonode@nohost``: no epmd, no cookie, no port besides c2s), and makes
    the accounts itself once started (an ``-eval`` after ``-s ejabberd``), then writes
    ``accounts.ready``."""

    name = "ejabberd"
    # The BEAM's schedulers spin a while before they sleep (``+sbwt`` and friends, default
    # medium): CPU time that is no work, counted as the server's. False turns it off.
    busy_wait = True

    def config(self, certificate: Path, key: Path) -> str:
        modules = "\n".join(f"  {module}: {{}}" for module in EJABBERD_MODULES)
        if self.archive:  # every message kept, as sns-xmpp and Prosody do by default (ejabberd's is never)
            modules += "\n  mod_mam: {default: always}"
        return f"""# written by benchmarks/peer_servers.py
hosts:
  - {_yaml(DOMAIN)}
loglevel: error
log_rotate_count: 0
certfiles:
  - {_yaml(str(certificate))}
  - {_yaml(str(key))}
c2s_ciphers: "HIGH:!aNULL:!eNULL:!3DES:@STRENGTH"
c2s_protocol_options: ["no_sslv3", "no_tlsv1", "no_tlsv1_1", "cipher_server_preference", "no_compression"]
listen:
  -
    port: {self.port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: c2s_shaper
    access: c2s
    starttls_required: {"false" if self.plaintext else "true"}
auth_method: internal
auth_password_format: scram
auth_scram_hash: sha256
disable_sasl_mechanisms: ["digest-md5", "X-OAUTH2"]
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    deny: blocked
    allow: all
shaper:
  normal:
    rate: 3000
    burst_size: 20000
  fast: 200000
shaper_rules:
  max_user_sessions: 10
  c2s_shaper:
    normal: all
modules:
{modules}
"""

    def accounts_eval(self, ready: Path) -> str:
        """Erlang run once ejabberd has started: register bench0, copy its record, write *ready*."""
        server = _erlang_binary(DOMAIN)
        first = _erlang_binary(f"{run.ACCOUNT_PREFIX}0")
        return (
            f"ok = ejabberd_auth:try_register({first}, {server}, {_erlang_binary(run.PASSWORD)}), "
            f"[R] = mnesia:dirty_read(passwd, {{{first}, {server}}}), "
            f"[ok = mnesia:dirty_write(setelement(2, R, {{<<\"{run.ACCOUNT_PREFIX}\", "
            f"(integer_to_binary(I))/binary>>, {server}}})) || I <- lists:seq(1, {self.accounts - 1})], "
            f"ok = file:write_file({json.dumps(str(ready))}, <<\"ok\">>)."
        )

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        if shutil.which("erl") is None or not any(EJABBERD_LIBS.glob("ejabberd-*")):
            raise PeerError("ejabberd is not installed (apt-get install ejabberd)")
        deadline = time.monotonic() + timeout
        certificate, key = self.certificate()
        config = self.workdir / "ejabberd.yml"
        config.write_text(self.config(certificate, key), encoding="utf-8")
        spool = self.workdir / "spool"
        spool.mkdir(mode=0o700, exist_ok=True)
        ready = self.workdir / "accounts.ready"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir),
               "LANG": "C.UTF-8", "ERL_LIBS": str(EJABBERD_LIBS),
               "EJABBERD_CONFIG_PATH": str(config), "EJABBERD_LOG_PATH": str(self.workdir / "ejabberd.log"),
               "ERL_CRASH_DUMP": str(self.workdir / "erl_crash.dump"),
               "ERL_MAX_PORTS": "32000", "ERL_MAX_ETS_TABLES": "1400"}
        # As ejabberdctl foreground does, less the node name: +K true +P 250000, mnesia in the spool.
        spin = [] if self.busy_wait else ["+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none"]
        self._spawn(["erl", "+K", "true", "+P", "250000", *spin, "-noinput", "-mnesia", "dir", json.dumps(str(spool)),
                     "-s", "ejabberd", "-eval", self.accounts_eval(ready)], env=env)
        self._wait_listening(deadline, ready)

    def log_tail(self, size: int = 3000) -> str:
        tail = super().log_tail(size)
        detail = self.workdir / "error.log"
        if detail.exists():
            tail += "\n" + detail.read_text(encoding="utf-8", errors="replace")[-size:]
        return tail

    def version(self) -> str:
        found = sorted(path.name for path in EJABBERD_LIBS.glob("ejabberd-*"))
        return found[-1] if found else "ejabberd (unknown version)"


def peer_server(kind: str, workdir: Path, port: int | None = None, accounts: int = 1,
                nodelay: bool = False) -> PeerServer:
    classes: dict[str, type[PeerServer]] = {"prosody": Prosody, "ejabberd": Ejabberd}
    if kind not in classes:
        raise PeerError(f"unknown peer server {kind!r} (known: {', '.join(classes)})")
    return classes[kind](workdir, port, accounts, nodelay)


# -- measuring -------------------------------------------------------------------------------

SCENARIO = "scram-sha-256+tls"
# compare's server variants, ``<server>-<variant>``, beside each server as it comes.
VARIANTS = {"prosody": ("", "nodelay"), "ejabberd": ("", "nospin")}


def serial_rows(server: run.Daemon | PeerServer, logins: int) -> dict[str, dict[str, Any]]:
    """The serial phase's STARTTLS SCRAM-SHA-256 scenario, exactly as `benchmarks.run` runs it:
    timed by the load generator, then by `benchmarks.serial_login`. One summary per client."""
    settings = run.parse_args(["--phases", "serial", "--serial-logins", str(logins)])
    [scenario] = run.login_scenarios([SCENARIO], server.accounts, logins, None)
    row = run.run_serial(server, settings, scenario)  # type: ignore[arg-type]
    return {"loadgen": _summary("loadgen", row), "serial_login": _summary("serial_login", row["lean_client"])}


@contextmanager
def servers(folder: Path, names: Sequence[str], accounts: int, nodelay: bool, archive: bool | None = None
            ) -> Iterator[dict[str, Any]]:
    """Each server named in *names* (``sns-xmpp``, ``prosody``, ``ejabberd``; ``prosody-nodelay`` is
    Prosody with Nagle's algorithm off, ``ejabberd-nospin`` ejabberd whose schedulers do not spin
    before they sleep), started in a folder of its own. With *archive* True or False (the
    messages comparison), each allows plain TCP, and keeps every message in its user archive or
    has none (sns-xmpp: MAM and carbons on, its default, or ``features_off``)."""
    started: dict[str, Any] = {}
    with ExitStack() as stack:
        for name in names:
            workdir = folder / name
            workdir.mkdir()
            if name == "sns-xmpp":
                daemon = run.Daemon(workdir, accounts, features_off=("mam", "carbons") if archive is False else ())
                stack.callback(daemon.stop)
                daemon.start()
                started[name] = daemon
            else:
                kind, _, variant = name.partition("-")
                if variant not in VARIANTS.get(kind, ()):
                    raise PeerError(f"unknown server {name!r}")
                peer = peer_server(kind, workdir, None, accounts, nodelay or variant == "nodelay")
                if isinstance(peer, Ejabberd):
                    peer.busy_wait = variant != "nospin"
                if archive is not None:
                    peer.archive, peer.plaintext = archive, True
                stack.enter_context(peer)
                started[name] = peer
        waited = time.monotonic()
        settle([server.pid for server in started.values()])
        print(f"peers: servers started; idle after {time.monotonic() - waited:.1f} s more", file=sys.stderr)
        yield started


def settle(pids: Sequence[int], quiet_s: float = 1.0, limit_s: float = 20.0) -> None:
    """Wait until none of *pids* used CPU for *quiet_s* (at most *limit_s*): a server that has
    just started may still be busy (ejabberd's Mnesia and module start-up) and would otherwise
    disturb the first measurement of another."""
    deadline = time.monotonic() + limit_s
    before = [run.process_cpu_seconds(pid) for pid in pids]
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = [run.process_cpu_seconds(pid) for pid in pids]
        if now == before:
            return
        before = now


def _summary(client: str, row: dict[str, Any]) -> dict[str, Any]:
    if client == "loadgen":
        latency, cpu = row["latency_ms"], row["cpu"]
        ok = row["logins"]
        return {"logins": ok, "failed": row["failed"], "p50": latency["p50"], "p90": latency["p90"],
                "p99": latency["p99"], "max": latency["max"],
                "server_cpu_ms": row["server_cpu_ms_per_login"],
                "client_cpu_ms": round(1000 * cpu["generator_cpu_s"] / ok, 2) if ok else None,
                "other_pct": cpu["other_pct"], "errors": row["errors"]}
    latency = row["latency_ms"]
    return {"logins": row["ok"], "failed": row.get("failed", 0), "p50": latency["p50"], "p90": latency["p90"],
            "p99": latency["p99"], "max": latency["max"], "server_cpu_ms": row.get("server_cpu_ms_per_login"),
            "client_cpu_ms": row.get("client_cpu_ms_per_login"), "other_pct": None, "errors": row.get("errors", {})}


def _line(row: dict[str, Any]) -> str:
    """A login row (a lone login's client, or the login phase's load generator), as the runs go."""
    return (f"{row['client']:<12} {row['server']:<9} logins {row['logins']} failed {row['failed']}"
            f"  p50 {row['p50']} p90 {row['p90']} p99 {row['p99']} max {row['max']} ms"
            f"  server cpu {row['server_cpu_ms']} ms/login, client cpu {row['client_cpu_ms']} ms/login"
            f"  load {row['load']}")


def _messages_line(row: dict[str, Any]) -> str:
    return (f"{row['server']:<9} archive {row['archive']}: {row['per_server_cpu_s']} messages per server "
            f"CPU-second ({row['messages_per_s']}/s, server {row['server_pct']}%, generator "
            f"{row['generator_pct']}%, other {row['other_pct']}%)")


def rounds(names: Sequence[str], runs: int, accounts: int, nodelay: bool, archive: bool | None, keep: bool,
           measure: Callable[[str, Any], list[dict[str, Any]]], line: Callable[[dict[str, Any]], str] = _line
           ) -> dict[str, Any]:
    """Start the servers named in *names* (see `servers`), then *runs* rounds over them in turn,
    each row that *measure* (server name, server) returns tagged with its round and the load, and
    printed as *line* writes it: the report, with the servers' versions and the tails of their logs."""
    report: dict[str, Any] = {"versions": {}, "runs": [], "load_before": run.load_average(),
                              "machine": run.machine_description(), "revision": run.git_revision()}
    folder = Path(tempfile.mkdtemp(prefix="sns-xmpp-peers-"))
    try:
        with servers(folder, names, accounts, nodelay, archive) as started:
            for name, server in started.items():
                report["versions"][name] = server.version() if isinstance(server, PeerServer) else run.git_revision()
            for number in range(1, runs + 1):
                for name, server in started.items():
                    for row in measure(name, server):
                        row.update(run=number, load=run.load_average())
                        print(f"run {number} {line(row)}", file=sys.stderr, flush=True)
                        report["runs"].append(row)
            report["logs"] = {name: server.log_tail(2000) if isinstance(server, PeerServer)
                              else run.read_log(server.log_path).excerpts for name, server in started.items()}
    finally:
        if keep:
            print(f"peers: kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    report["load_after"] = run.load_average()
    return report


def compare(names: Sequence[str], runs: int, logins: int, accounts: int, nodelay: bool,
            keep: bool) -> dict[str, Any]:
    def measure(name: str, server: Any) -> list[dict[str, Any]]:
        return [{**row, "client": client, "server": name} for client, row in serial_rows(server, logins).items()]

    return rounds(names, runs, accounts, nodelay, None, keep, measure)


def messages(names: Sequence[str], runs: int, duration: float, archive: bool, keep: bool) -> dict[str, Any]:
    """The msgs phase's closed loop over plain TCP (`benchmarks.run.run_msgs`: 50 pairs, 4 messages
    in flight each, SCRAM-SHA-256 logins), against each server in turn, *runs* times; each
    server with its user archive on or without one (*archive*). Messages per server CPU-second
    are what issue 16's goal and its figures for Prosody and ejabberd count."""
    settings = run.parse_args(["--phases", "msgs", "--transports", "tcp", "--duration", str(duration),
                               "--open-fraction", "0"])

    def measure(name: str, server: Any) -> list[dict[str, Any]]:
        row = run.run_msgs(server, settings, "tcp")
        cpu = row["cpu"]
        return [{"server": name, "archive": archive, "delivered": row["delivered"],
                 "messages_per_s": row["messages_per_s"],
                 "per_server_cpu_s": round(row["delivered"] / cpu["server_cpu_s"]) if cpu["server_cpu_s"] else None,
                 "server_pct": cpu["server_pct"], "generator_pct": cpu["generator_pct"], "other_pct": cpu["other_pct"],
                 "p99_ms": row["latency_ms"]["p99"], "bounced": row["bounced"], "warnings": row["warnings"]}]

    return rounds(names, runs, 2 * settings.pairs, False, archive, keep, measure, _messages_line)


def logins(names: Sequence[str], runs: int, count: int, keep: bool) -> dict[str, Any]:
    """The login phase's SCRAM-SHA-256 logins over plain TCP (`benchmarks.run.run_login`: 50 at
    once, each a whole login with its initial presence, then the stream closed), against each
    server in turn, *runs* times: server CPU per login, beside which issue 15's FAST figure reads."""
    settings = run.parse_args(["--phases", "login", "--logins", str(count)])
    accounts = 2 * settings.concurrency
    [scenario] = run.login_scenarios(["scram-sha-256+tcp"], accounts, count, None)

    def measure(name: str, server: Any) -> list[dict[str, Any]]:
        row = run.run_login(server, settings, scenario)
        return [{**_summary("loadgen", row), "client": "loadgen", "server": name, "logins_per_s": row["logins_per_s"],
                 "warnings": row["warnings"]}]

    return rounds(names, runs, accounts, False, True, keep, measure)


# -- command line ----------------------------------------------------------------------------


def serve(kind: str, port: int, data: Path | None, accounts: int, nodelay: bool) -> int:
    """Start one peer server, print where it listens, serve until SIGINT/SIGTERM, stop it."""
    if data is not None and data.exists() and any(data.iterdir()):
        raise PeerError(f"--data {data} is not empty: each instance starts afresh")
    folder = data or Path(tempfile.mkdtemp(prefix=f"sns-xmpp-{kind}-"))
    folder.mkdir(parents=True, exist_ok=True)
    stopping: list[int] = []
    handler = signal.signal(signal.SIGTERM, lambda number, _frame: stopping.append(number))
    try:
        with peer_server(kind, folder, port, accounts, nodelay) as server:
            print(json.dumps({"event": "listening", "server": kind, "version": server.version(),
                              "host": HOST, "port": server.port, "domain": DOMAIN, "pid": server.pid,
                              "accounts": accounts, "password": run.PASSWORD, "folder": str(folder)}), flush=True)
            try:
                while not stopping:
                    server.ensure_running()
                    time.sleep(0.2)
            except KeyboardInterrupt:
                pass
    finally:
        signal.signal(signal.SIGTERM, handler)
        if data is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_servers", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=(*SERVERS, "compare", "messages", "logins"),
                        help="serve one peer server until interrupted, or compare all three (lone logins, or "
                             "messages per server CPU-second)")
    parser.add_argument("--port", type=int, default=0, help="c2s port (default: a free one)")
    parser.add_argument("--data", type=Path, help="the server's folder (default: a temporary one, removed)")
    parser.add_argument("--accounts", type=int, default=run.DEFAULTS["serial_logins"],
                        help="bench0 ... bench<N-1> (default %(default)s, as the serial phase's)")
    parser.add_argument("--nodelay", action="store_true", help="Prosody: turn Nagle's algorithm off (not its default)")
    parser.add_argument("--servers", default="sns-xmpp,prosody,ejabberd",
                        help="compare: which, in this order (also prosody-nodelay, ejabberd-nospin)")
    parser.add_argument("--runs", type=int, default=3, help="compare: rounds over all servers")
    parser.add_argument("--logins", type=int, default=run.DEFAULTS["serial_logins"],
                        help="compare: logins per measurement")
    parser.add_argument("--keep", action="store_true", help="compare: keep the servers' folders")
    parser.add_argument("--duration", type=float, default=10.0, help="messages: seconds per measurement")
    parser.add_argument("--archive", choices=("on", "off"), default="on",
                        help="messages: every server with its user archive (MAM) on, or none")
    args = parser.parse_args(argv)
    try:
        if args.what not in ("compare", "messages", "logins"):
            return serve(args.what, args.port, args.data, args.accounts, args.nodelay)
        names = [name for name in args.servers.split(",") if name]
        if args.what == "logins":
            report = logins(names, args.runs, args.logins, args.keep)
        elif args.what == "messages":
            report = messages(names, args.runs, args.duration, args.archive == "on", args.keep)
        else:
            report = compare(names, args.runs, args.logins, args.accounts, args.nodelay, args.keep)
        print(json.dumps(report, indent=1))
        return 0
    except run.BenchError as error:
        print(f"peers: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
