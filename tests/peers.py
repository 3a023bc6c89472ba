"""Real XMPP servers of other projects, for the federation tests: Debian's Prosody and ejabberd.

Each runs as a process of the test (not the system service), from its own configuration in a
temporary folder, on its own loopback address: Prosody for ``prosody.example`` on 127.0.0.2,
ejabberd for ``ejabberd.example`` on 127.0.0.3, with free c2s and s2s ports on those addresses (two
test runs on one machine do not collide), a self-signed certificate each, s2s over required TLS
with dialback (neither can validate the other's certificate), and the users a test registers
with their own admin commands. Stopping leaves nothing running (ejabberd runs without epmd).

Names: a small DNS server on 127.0.0.1 (`LoopbackDNS`, in a thread) answers for the test
domains under ``.example`` (not ``.test``: libunbound answers NXDOMAIN for RFC 6761's ``test.``
itself, never asking) - A and ``_xmpp-server._tcp`` SRV records, which also carry the ports - and nothing else.
Prosody asks it through libunbound (its ``unbound`` option: ``forward``, no resolv.conf, no hosts
file, and ``do-not-query-localhost: no``); ejabberd through Erlang's resolver (an ``inetrc`` with
the nameserver and port). So
/etc/hosts and /etc/resolv.conf are never touched, and sns-xmpp reaches the peers through its own
``[xmpp.s2s] hosts`` override map (`PeerServer.override`).

A test needing a peer skips when it cannot run (the binary absent; Prosody without lua-unbound;
ejabberd not as root), unless SNS_XMPP_REQUIRE_CLIENTS is set (the CI installs the Debian packages
``prosody``, ``lua-unbound`` and ``ejabberd``): then it fails.
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.names import dns

from tests.xmppclient import Client

PROSODY = "/usr/bin/prosody"
PROSODYCTL = "/usr/bin/prosodyctl"
EJABBERDCTL = "/usr/sbin/ejabberdctl"
STARTUP_SECONDS = 60.0  # ejabberd on a busy 2-core machine takes several seconds


def _missing(reason: str) -> None:
    if os.environ.get("SNS_XMPP_REQUIRE_CLIENTS"):
        pytest.fail(f"SNS_XMPP_REQUIRE_CLIENTS is set, but {reason}")
    pytest.skip(reason)


def require_peer(path: str, package: str) -> str:
    """*path* if it is installed, else skip (or fail under SNS_XMPP_REQUIRE_CLIENTS)."""
    if not os.access(path, os.X_OK):
        _missing(f"{path} (Debian package {package}) is not installed")
    return path


def require_prosody() -> None:
    require_peer(PROSODY, "prosody")
    # Without libunbound's binding (only recommended by the package) Prosody resolves with its
    # own Lua resolver, which reads /etc/resolv.conf and ignores the test's DNS.
    found = subprocess.run(["lua5.4", "-e", 'require "lunbound"'], capture_output=True)
    if found.returncode != 0:
        _missing("Prosody's DNS binding lunbound (Debian package lua-unbound) is not installed")


def require_ejabberd() -> None:
    require_peer(EJABBERDCTL, "ejabberd")
    if os.geteuid() != 0:  # ejabberdctl runs ejabberd as its own user through su
        _missing("ejabberd is started through ejabberdctl, which needs root (it switches to the ejabberd user)")


def free_port(address: str, kind: int = socket.SOCK_STREAM) -> int:
    """A port free now on *address* (a loopback address; Linux routes all of 127.0.0.0/8 there)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def self_signed(folder: Path, domain: str) -> tuple[Path, Path]:
    """A certificate and key for *domain* (server and client authentication: s2s uses both)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = folder / f"{domain}.crt", folder / f"{domain}.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_path, key_path


class LoopbackDNS:
    """An authoritative DNS server on 127.0.0.1 (UDP, a thread of its own) for the test domains:
    each `add_server` gives a domain an A record and a ``_xmpp-server._tcp`` SRV record with its
    s2s port; any other name is NXDOMAIN at once (nothing waits on a timeout). TTLs are 0, so a
    record changed between tests (a restarted sns-xmpp on a new port) is seen at once."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = int(self.socket.getsockname()[1])
        self.records: dict[tuple[bytes, int], list[dns.RRHeader]] = {}
        self.asked: list[tuple[str, str]] = []  # (name, type) of every question, for a failure's story
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="loopback-dns", daemon=True)
        self._thread.start()

    def add_server(self, domain: str, address: str, s2s_port: int) -> None:
        name = domain.lower().encode()
        service = b"_xmpp-server._tcp." + name
        self.records[(name, dns.A)] = [dns.RRHeader(name, dns.A, ttl=0, payload=dns.Record_A(address, 0))]
        # The SRV target is the address itself, written as a name: ejabberd 23.01 looks the
        # target up with the C library's getaddrinfo (the system's hosts file and DNS, not this
        # server), which takes an address as it is. Prosody asks this server for it (below).
        self.records[(service, dns.SRV)] = [
            dns.RRHeader(service, dns.SRV, ttl=0, payload=dns.Record_SRV(0, 0, s2s_port, address.encode(), 0))
        ]

    def answer(self, query: bytes) -> bytes | None:
        try:
            message = dns.Message()
            message.fromStr(query)
        except Exception:  # not DNS: no answer
            return None
        reply = dns.Message(
            id=message.id, answer=True, opCode=message.opCode, auth=True, recDes=message.recDes, recAv=True
        )
        reply.queries = message.queries
        known = {name for name, _kind in self.records}
        for question in message.queries:
            name = question.name.name.lower()
            self.asked.append((name.decode(errors="replace"), dns.QUERY_TYPES.get(question.type, str(question.type))))
            if name not in known:
                reply.rCode = dns.ENAME
            reply.answers.extend(self.records.get((name, question.type), []))
            if question.type == dns.A and _is_ipv4(name):
                reply.rCode = dns.OK
                reply.answers.append(dns.RRHeader(name, dns.A, ttl=0, payload=dns.Record_A(name.decode(), 0)))
        return reply.toStr()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                query, sender = self.socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.answer(query)
            if reply is not None:
                self.socket.sendto(reply, sender)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self.socket.close()


def _is_ipv4(name: bytes) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, name.decode("ascii"))
    except (OSError, UnicodeError):
        return False
    return True


class PeerServer:
    """A running peer: its domain, loopback address, ports and folder; register users, stop."""

    kind = ""

    def __init__(self, domain: str, address: str, dns_server: LoopbackDNS) -> None:
        self.domain = domain
        self.address = address
        self.dns = dns_server
        self.c2s_port = free_port(address)
        self.s2s_port = free_port(address)
        self.folder = Path(tempfile.mkdtemp(prefix=f"sns-xmpp-{self.kind}-"))
        self.process: subprocess.Popen[bytes] | None = None
        dns_server.add_server(domain, address, self.s2s_port)

    @property
    def override(self) -> str:
        """This peer's entry for sns-xmpp's ``[xmpp.s2s] hosts`` map."""
        return f"{self.address}:{self.s2s_port}"

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def register(self, user: str, password: str) -> str:
        raise NotImplementedError

    def log(self) -> str:
        raise NotImplementedError

    def client(self, user: str, password: str, **kwargs: Any) -> PeerClient:
        return PeerClient(self.jid(user), password, self.address, **kwargs)

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.kind} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                with socket.create_connection((self.address, self.c2s_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)  # polling a process's start-up, not synchronising a test
        raise AssertionError(f"{self.kind} did not listen on {self.address}:{self.c2s_port}:\n{self.log()[-4000:]}")

    def _end_group(self) -> None:
        """SIGTERM to the process group the server started in, SIGKILL if it lingers."""
        if self.process is None:
            return
        for signal_number, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, signal_number)
            except ProcessLookupError:
                break
            try:
                self.process.wait(grace)
                # The group may outlive its leader (ejabberd's erl under su): check it is empty.
                os.killpg(self.process.pid, 0)
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
            time.sleep(0.2)
        self.process = None


    def _remove_folder(self) -> None:
        if os.environ.get("SNS_XMPP_KEEP_PEER_FOLDERS"):  # to read the peers' logs after a failure
            print(f"{self.kind}'s folder kept: {self.folder}")
            return
        shutil.rmtree(self.folder, ignore_errors=True)


class PeerClient(Client):
    """tests.xmppclient.Client connecting to a peer's loopback address instead of 127.0.0.1."""

    def __init__(self, jid: str, password: str, address: str, **kwargs: Any) -> None:
        super().__init__(jid, password, **kwargs)
        self.peer_address = address

    def connect(self, host: str = "", port: int = 5222, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().connect(host=self.peer_address, port=port, **kwargs)


class Prosody(PeerServer):
    kind = "prosody"

    def __init__(self, domain: str, address: str, dns_server: LoopbackDNS, *,
                 authentication: str = 'authentication = "internal_hashed"', extra_modules: tuple[str, ...] = (),
                 plugin_paths: tuple[str, ...] = (), tail: str = "") -> None:
        """*authentication*: the config lines of the auth provider (sns-xmpp's HTTP authentication
        module for tests/e2e/test_existing_prosody.py), global options too; *plugin_paths*: folders
        of extra modules; *tail*: lines after the VirtualHost (a Component)."""
        super().__init__(domain, address, dns_server)
        certificate, key = self_signed(self.folder, domain)
        (self.folder / "data").mkdir()
        modules = ", ".join(f'"{name}"' for name in
                            ("roster", "saslauth", "tls", "dialback", "disco", "ping", "offline", *extra_modules))
        paths = ", ".join(f'"{path}"' for path in plugin_paths)
        authentication = textwrap.indent(authentication, " " * 12)
        self.config = self.folder / "prosody.cfg.lua"
        self.config.write_text(textwrap.dedent(f"""\
            -- A Prosody for sns-xmpp's federation tests; see tests/peers.py.
            run_as_root = true  -- the test's own process, files in its own folder
            pidfile = "{self.folder}/prosody.pid"
            data_path = "{self.folder}/data"
            log = {{ debug = "{self.folder}/prosody.log" }}
            interfaces = {{ "{address}" }}
            c2s_ports = {{ {self.c2s_port} }}
            s2s_ports = {{ {self.s2s_port} }}
            c2s_direct_tls_ports = {{ }}
            s2s_direct_tls_ports = {{ }}
            http_ports = {{ }}
            https_ports = {{ }}
            modules_enabled = {{ {modules} }}
            plugin_paths = {{ {paths} }}
{authentication}
            storage = "internal"
            c2s_require_encryption = true
            s2s_require_encryption = true
            s2s_secure_auth = false  -- self-signed peers: dialback over TLS
            s2s_timeout = 20
            use_ipv6 = false
            unbound = {{
                resolvconf = false, hoststxt = false, forward = "127.0.0.1@{dns_server.port}",
                options = {{ ["do-not-query-localhost:"] = "no" }},  -- the test's DNS is on loopback
            }}
            certificate = "{certificate}"
            ssl = {{ certificate = "{certificate}", key = "{key}" }}
            VirtualHost "{domain}"
            """) + textwrap.dedent(tail))
        self.process = subprocess.Popen(
            [PROSODY, "--config", str(self.config), "-F"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "stderr.log", "wb"),  # noqa: SIM115 - kept for the process
            start_new_session=True,
        )
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise

    def register(self, user: str, password: str) -> str:
        done = subprocess.run(
            [PROSODYCTL, "--config", str(self.config), "register", user, self.domain, password],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, f"prosodyctl register {user}: {done.stdout}{done.stderr}"
        return self.jid(user)

    def log(self) -> str:
        texts = [path.read_text(errors="replace") for path in (self.folder / "stderr.log", self.folder / "prosody.log")
                 if path.exists()]
        return "\n".join(texts)

    def stop(self) -> None:
        self._end_group()
        self._remove_folder()


class Ejabberd(PeerServer):
    kind = "ejabberd"

    def __init__(self, domain: str, address: str, dns_server: LoopbackDNS, *,
                 authentication: str = "auth_method: internal\nauth_password_format: scram") -> None:
        """*authentication*: the config lines of the auth method (sns-xmpp-extauth's for
        tests/e2e/test_existing_servers.py)."""
        super().__init__(domain, address, dns_server)
        account = pwd.getpwnam("ejabberd")
        certificate, key = self_signed(self.folder, domain)
        pem = self.folder / f"{domain}.pem"
        pem.write_bytes(certificate.read_bytes() + key.read_bytes())
        for sub in ("spool", "logs"):
            (self.folder / sub).mkdir()
        self.folder.chmod(0o755)  # ejabberdctl runs erl as the ejabberd user (su)
        authentication = textwrap.indent(authentication, " " * 12)
        (self.folder / "ejabberd.yml").write_text(textwrap.dedent(f"""\
            # An ejabberd for sns-xmpp's federation tests; see tests/peers.py.
            hosts: ["{domain}"]
            loglevel: info
            certfiles: ["{pem}"]
            listen:
              - port: {self.c2s_port}
                ip: "{address}"
                module: ejabberd_c2s
                starttls_required: true
              - port: {self.s2s_port}
                ip: "{address}"
                module: ejabberd_s2s_in
            s2s_use_starttls: required
            outgoing_s2s_families: [ipv4]
            outgoing_s2s_timeout: 20
{authentication}
            acl:
              local:
                user_regexp: ""
              loopback:
                ip: ["127.0.0.0/8"]
            access_rules:
              local:
                allow: local
              c2s:
                allow: all
              s2s:
                allow: all
            s2s_access: s2s
            shaper_rules:
              c2s_shaper: none
            modules:
              mod_disco: {{}}
              mod_offline: {{}}
              mod_ping: {{}}
              mod_roster: {{}}
              mod_s2s_dialback: {{}}
            """))
        self.node = f"ejabberd-test-{self.c2s_port}@localhost"
        (self.folder / "ejabberdctl.cfg").write_text(textwrap.dedent(f"""\
            ERLANG_NODE={self.node}
            ERL_DIST_PORT={free_port("127.0.0.1")}
            INET_DIST_INTERFACE=127.0.0.1
            EJABBERD_PID_PATH={self.folder}/ejabberd.pid
            """))
        # Erlang's resolver: localhost from here (the node's name), everything else from the test
        # DNS; the system's resolv.conf and hosts file are not read (they would replace the
        # nameserver at their next reload).
        (self.folder / "inetrc").write_text(textwrap.dedent(f"""\
            {{resolv_conf, ""}}.
            {{hosts_file, ""}}.
            {{lookup, [file, dns]}}.
            {{host, {{127,0,0,1}}, ["localhost"]}}.
            {{nameserver, {{127,0,0,1}}, {dns_server.port}}}.
            """))
        for path in [self.folder, *self.folder.rglob("*")]:
            os.chown(path, account.pw_uid, account.pw_gid)
        key.chmod(0o600)
        pem.chmod(0o600)
        self.process = subprocess.Popen(
            [*self._ctl(), "foreground"],
            stdout=open(self.folder / "stdout.log", "wb"),  # noqa: SIM115 - kept for the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise

    def _ctl(self) -> list[str]:
        return [
            EJABBERDCTL,
            "--config-dir", str(self.folder),
            "--config", str(self.folder / "ejabberd.yml"),
            "--ctl-config", str(self.folder / "ejabberdctl.cfg"),
            "--logs", str(self.folder / "logs"),
            "--spool", str(self.folder / "spool"),
        ]

    def register(self, user: str, password: str) -> str:
        done = subprocess.run([*self._ctl(), "register", user, self.domain, password],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"ejabberdctl register {user}: {done.stdout}{done.stderr}"
        return self.jid(user)

    def log(self) -> str:
        texts = [path.read_text(errors="replace")
                 for path in (self.folder / "stdout.log", self.folder / "logs" / "ejabberd.log") if path.exists()]
        return "\n".join(texts)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            subprocess.run([*self._ctl(), "stop"], capture_output=True, timeout=60)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
        self._end_group()
        self._remove_folder()


# The fixtures have names of their own (name=...) so that a test module imports the functions
# and takes the fixtures as arguments without shadowing an imported name.
@pytest.fixture(scope="module", name="loopback_dns")
def loopback_dns_server() -> Iterator[LoopbackDNS]:
    """The test DNS for the module's peers (and sns-xmpp's domain, if a test adds it)."""
    server = LoopbackDNS()
    yield server
    server.close()
    if os.environ.get("SNS_XMPP_KEEP_PEER_FOLDERS"):
        print("questions to the test DNS:", server.asked)


@pytest.fixture(scope="module", name="prosody")
def prosody_server(loopback_dns: LoopbackDNS) -> Iterator[Prosody]:
    """Prosody for prosody.example on 127.0.0.2, for the module's tests."""
    require_prosody()
    server = Prosody("prosody.example", "127.0.0.2", loopback_dns)
    yield server
    server.stop()


@pytest.fixture(scope="module", name="ejabberd")
def ejabberd_server(loopback_dns: LoopbackDNS) -> Iterator[Ejabberd]:
    """ejabberd for ejabberd.example on 127.0.0.3, for the module's tests."""
    require_ejabberd()
    server = Ejabberd("ejabberd.example", "127.0.0.3", loopback_dns)
    yield server
    server.stop()
