"""`scripts/cluster`: a cluster on this machine, for trying it and for the tests (docs/scaling.md).

    scripts/cluster up N [--config FILE] [--state DIR]
    scripts/cluster status [--json]
    scripts/cluster down
    scripts/cluster kill NODE      # kill -9 one node (what the failure tests do)

`up` starts a throwaway PostgreSQL (initdb in the state folder), a Redis (Debian's redis-server,
append-only file on: the nodes' inboxes must survive its restart), N nodes from the same
configuration file plus a [cluster] table, and HAProxy in front of them on the configuration's own
client, direct TLS and HTTP ports, so clients use the addresses they use for one node. The nodes
listen on loopback ports of their own (for the balancer), share the s2s port (SO_REUSEPORT) and
the data folder (the per-install keys must be the same on every node).

HAProxy hands each connection to its node with a PROXY protocol v2 header (``send-proxy-v2``), and
the nodes trust the balancer's address for it (``proxy_protocol_from``), so that their per-address
caps, login throttle and logs see the clients' own addresses. A node's ports then take nothing but
the balancer's connections: `status` names, per node, the balancer's ports that lead to that node
alone (``via_balancer``), for reaching one node on purpose.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

SERVICES = ("c2s", "direct_tls", "http", "components")  # each node's own loopback ports, for the balancer
PROXIED = ("c2s", "direct_tls", "http")  # the ports HAProxy forwards, with a PROXY protocol header
# The address HAProxy connects to the nodes from (its `source`), the one the nodes trust for the header.
BALANCER_ADDRESS = "127.0.0.1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster")
    parser.add_argument("--state", default=".cluster", help="folder of the cluster's state (default .cluster)")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up")
    up.add_argument("nodes", type=int)
    up.add_argument("--config", default="conf/sns-xmpp.toml")
    status = commands.add_parser("status")
    status.add_argument("--json", action="store_true")
    commands.add_parser("down")
    kill = commands.add_parser("kill")
    kill.add_argument("node")
    start = commands.add_parser("start")
    start.add_argument("node")
    args = parser.parse_args(argv)
    state = Path(args.state).absolute()
    if args.command == "up":
        return cluster_up(state, args.nodes, Path(args.config))
    if args.command == "down":
        return cluster_down(state)
    if args.command == "kill":
        return kill_node(state, args.node)
    if args.command == "start":
        return start_node(state, args.node)
    report = read_status(state)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for node in report.get("nodes", []):
            print(f"{node['id']}: pid {node['pid']} {'up' if node['alive'] else 'DOWN'} ports {node['ports']}"
                  f" via balancer {node.get('via_balancer', {})}")
        balancer = report.get("balancer")
        if balancer:
            print(f"balancer: pid {balancer['pid']} ports {balancer['ports']}")
    return 0


# -- up -----------------------------------------------------------------------


def cluster_up(state: Path, count: int, config_path: Path) -> int:
    if (state / "status.json").exists():
        print(f"scripts/cluster: a cluster runs from {state}; `scripts/cluster down` first", file=sys.stderr)
        return 1
    if count < 1:
        print("scripts/cluster: at least one node", file=sys.stderr)
        return 1
    base = tomllib.loads(config_path.read_text())
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    status: dict[str, Any] = {"state": str(state), "nodes": []}
    try:
        status["postgres"] = start_postgres(state)
        status["redis"] = start_redis(state)
        ports = public_ports(base)
        for number in range(count):
            node = write_node_config(state, base, config_path, number, status)
            node["pid"] = spawn_node(state, node)
            status["nodes"].append(node)
            wait_healthy(node, state)  # the first makes the shared keys; the others read them
        status["balancer"] = start_haproxy(state, ports, status["nodes"], status.get("per_address"))
    except Exception as error:
        write_status(state, status)
        print(f"scripts/cluster: {error}", file=sys.stderr)
        cluster_down(state)
        return 1
    write_status(state, status)
    print(json.dumps({"nodes": [n["id"] for n in status["nodes"]], "balancer": status["balancer"]["ports"]}))
    return 0


def public_ports(base: dict[str, Any]) -> dict[str, int]:
    c2s = base.get("xmpp", {}).get("c2s", {})
    return {"c2s": int(c2s.get("port", 5222)), "direct_tls": int(c2s.get("direct_tls_port", 5223)),
            "http": int(base.get("http", {}).get("port", 5280))}


def write_node_config(state: Path, base: dict[str, Any], config_path: Path, number: int,
                      status: dict[str, Any]) -> dict[str, Any]:
    node_id = f"node{number}"
    # Ports free now, not fixed ones: with SO_REUSEPORT a second cluster on fixed ports would bind
    # the same ones without an error and take half of the first one's connections.
    ports = {name: free_port() for name in SERVICES}
    config = json.loads(json.dumps(base))  # a deep copy
    server = config.setdefault("server", {})
    data_dir = Path(server.get("data_dir", "data"))
    if not data_dir.is_absolute():
        data_dir = (config_path.parent.parent if config_path.parent.name == "conf" else Path.cwd()) / data_dir
    server["data_dir"] = str(data_dir.absolute())
    c2s = config.setdefault("xmpp", {}).setdefault("c2s", {})
    c2s["port"], c2s["direct_tls_port"] = ports["c2s"], ports["direct_tls"]
    # The per-address caps apply twice: across the cluster in HAProxy (a stick table per listener,
    # start_haproxy), and on each node, which sees the clients' own addresses through the PROXY
    # protocol (and the balancer's only for its health checks).
    status.setdefault("per_address", {
        "c2s": int(c2s.get("max_connections_per_ip", 10_000)),
        "http": int(config.get("http", {}).get("max_connections_per_ip", 512)),
    })
    c2s["proxy_protocol_from"] = [BALANCER_ADDRESS]
    config["xmpp"].setdefault("components", {})["port"] = ports["components"]
    http = config.setdefault("http", {})
    http["port"] = ports["http"]
    http["proxy_protocol_from"] = [BALANCER_ADDRESS]
    config.setdefault("manhole", {})["enabled"] = False
    config["store"] = {"backend": "postgresql", "dsn": status["postgres"]["dsn"]}
    # The configuration's own [cluster] keys (heartbeat_interval, node_timeout) are kept.
    config["cluster"] = {"key_prefix": "sns:", **config.get("cluster", {}), "redis_url": status["redis"]["url"],
                         "node_id": node_id}
    for site in config.get("sites", {}).values():  # relative key files: from the config's folder
        for key, value in list(site.items()):
            if key.endswith("_file") and isinstance(value, str) and not Path(value).is_absolute():
                site[key] = str((Path.cwd() / value).absolute())
    path = state / f"{node_id}.toml"
    path.write_text(to_toml(config))
    path.chmod(0o600)
    return {"id": node_id, "config": str(path), "ports": ports, "log": str(state / f"{node_id}.log")}


def spawn_node(state: Path, node: dict[str, Any]) -> int:
    twistd = Path(sys.executable).parent / "twistd"
    log = open(node["log"], "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        [str(twistd), "--nodaemon", "--pidfile=", "--reactor=sns-epoll", "sns-xmpp", f"--config={node['config']}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return process.pid


def wait_healthy(node: dict[str, Any], state: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(node["pid"]):
            raise RuntimeError(f"{node['id']} exited; see {node['log']}")
        try:
            if health(node["ports"]["http"]) == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)  # a process starting up: nothing to wait on but its port
    raise RuntimeError(f"{node['id']} not healthy within {timeout} s; see {node['log']}")


def health(port: int) -> int:
    """The status of a node's ``/health``, asked as the balancer asks it: the node's HTTP port
    takes only connections that start with a PROXY protocol header (v1 ``UNKNOWN``: a check of
    the balancer's own, no client behind it). The answer's status line is all that is read."""
    with socket.create_connection((BALANCER_ADDRESS, port), timeout=2) as probe:
        probe.sendall(b"PROXY UNKNOWN\r\nGET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while b"\r\n" not in answer:
            chunk = probe.recv(4096)
            if not chunk:
                break
            answer += chunk
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else 0


# -- the engines -------------------------------------------------------------------


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("postgres")  # PostgreSQL refuses to run as root; Debian's package makes this user


def _postgres_bindir() -> Path:
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not found:
        raise RuntimeError("no PostgreSQL server (Debian: apt-get install postgresql)")
    return found[-1]


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if _server_user() is not None else command


def start_postgres(state: Path) -> dict[str, Any]:
    bindir = _postgres_bindir()
    # Its own folder in /tmp: the server's user may not be able to reach into the state folder.
    folder = Path(tempfile.mkdtemp(prefix="sns-xmpp-cluster-pg-"))
    password = secrets.token_urlsafe(18)
    (folder / "password").write_text(password + "\n")
    user = _server_user()
    if user is not None:
        for path in (folder, folder / "password"):
            os.chown(path, user.pw_uid, user.pw_gid)
    subprocess.run(_as_server_user([str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "-A",
                                    "scram-sha-256", f"--pwfile={folder / 'password'}", "-E", "UTF8",
                                    "--no-locale", "-N"]), check=True, capture_output=True)
    port = free_port()
    subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "start", "-D", str(folder / "data"), "-l",
                                    str(folder / "server.log"), "-w", "-t", "60", "-o",
                                    f"-h 127.0.0.1 -p {port} -k {folder} -c max_connections=400"]),
                   check=True, capture_output=True)
    dsn = f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
    return {"port": port, "dsn": dsn, "bindir": str(bindir), "data": str(folder / "data"), "folder": str(folder)}


def start_redis(state: Path) -> dict[str, Any]:
    folder, port = state / "redis", free_port()
    folder.mkdir(exist_ok=True)
    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                    "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "yes",
                    "--pidfile", str(folder / "redis.pid"), "--logfile", str(folder / "redis.log")], check=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        raise RuntimeError("redis-server did not start")
    return {"port": port, "url": f"redis://127.0.0.1:{port}/0", "pid": int((folder / "redis.pid").read_text())}


def start_haproxy(state: Path, ports: dict[str, int], nodes: list[dict[str, Any]],
                  per_address: dict[str, int] | None = None) -> dict[str, Any]:
    # Each proxied connection takes two descriptors; stay within what this process may open.
    maxconn = max(256, min(100_000, (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 1000) // 2))
    # `source`: the nodes trust this address for the PROXY protocol header (write_node_config).
    lines = ["global", f"    maxconn {maxconn}", "defaults", "    mode tcp", "    timeout connect 5s",
             "    timeout client 1h", "    timeout server 1h", "    option redispatch", "    retries 3",
             f"    source {BALANCER_ADDRESS}"]

    def listener(name: str, port: int, service: str, to: list[dict[str, Any]]) -> list[str]:
        lines = [f"listen {name}", f"    bind 127.0.0.1:{port}", "    balance leastconn"]
        caps = per_address or {}
        cap = caps.get("c2s")
        if service == "http" and cap is not None:
            # The HTTP port carries WebSockets too: a node counts each under the client streams'
            # cap once it is upgraded, and under the HTTP one before. The balancer cannot tell
            # them apart, so it allows a source both.
            cap += caps.get("http", 0)
        if cap is not None:  # the configuration's per-address caps, on the clients' own addresses
            lines += ["    stick-table type ipv6 size 1m expire 1h store conn_cur",
                      "    tcp-request connection track-sc0 src",
                      f"    tcp-request connection reject if {{ sc0_conn_cur gt {cap} }}"]
        # send-proxy-v2: each connection (and health check) starts with the client's address.
        return lines + [f"    server {node['id']} 127.0.0.1:{node['ports'][service]} send-proxy-v2 "
                        "check inter 1s fall 2 rise 1" for node in to]

    for name in PROXIED:
        lines += listener(name, ports[name], name, nodes)
    for node in nodes:  # one node's own way in, through the balancer (its ports take nothing else)
        node["via_balancer"] = {name: free_port() for name in PROXIED}
        for name in PROXIED:
            lines += listener(f"{node['id']}_{name}", node["via_balancer"][name], name, [node])
    config = state / "haproxy.cfg"
    config.write_text("\n".join(lines) + "\n")
    pidfile = state / "haproxy.pid"
    subprocess.run(["haproxy", "-f", str(config), "-D", "-p", str(pidfile)], check=True)
    return {"pid": int(pidfile.read_text().split()[0]), "ports": ports, "config": str(config)}


# -- status, kill, down ------------------------------------------------------------------


def write_status(state: Path, status: dict[str, Any]) -> None:
    (state / "status.json").write_text(json.dumps(status, indent=2))


def read_status(state: Path) -> dict[str, Any]:
    path = state / "status.json"
    if not path.exists():
        return {"state": str(state), "nodes": [], "running": False}
    status: dict[str, Any] = json.loads(path.read_text())
    for node in status.get("nodes", []):
        node["alive"] = alive(node["pid"])
    status["running"] = True
    return status


def kill_node(state: Path, node_id: str) -> int:
    for node in read_status(state).get("nodes", []):
        if node["id"] == node_id:
            os.kill(node["pid"], signal.SIGKILL)
            return 0
    print(f"scripts/cluster: no node {node_id}", file=sys.stderr)
    return 1


def start_node(state: Path, node_id: str) -> int:
    status = read_status(state)
    for node in status.get("nodes", []):
        if node["id"] == node_id and not node["alive"]:
            node["pid"] = spawn_node(state, node)
            wait_healthy(node, state)
            write_status(state, status)
            return 0
    print(f"scripts/cluster: no stopped node {node_id}", file=sys.stderr)
    return 1


def cluster_down(state: Path) -> int:
    status = read_status(state) if (state / "status.json").exists() else {}
    balancer = status.get("balancer")
    if balancer:
        _signal(balancer["pid"], signal.SIGTERM)
    nodes = status.get("nodes", [])
    for node in nodes:
        _signal(node["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 30
    while any(alive(node["pid"]) for node in nodes) and time.monotonic() < deadline:
        time.sleep(0.1)
    for node in nodes:
        _signal(node["pid"], signal.SIGKILL)
    redis = status.get("redis")
    if redis:
        stop_redis(redis)
    postgres = status.get("postgres")
    if postgres:
        stop_postgres(postgres)
    for name in ("postgres", "redis", "status.json", "haproxy.pid"):
        path = state / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    return 0


def stop_redis(redis: dict[str, Any]) -> None:
    """Stop what `start_redis` started."""
    _signal(redis["pid"], signal.SIGTERM)


def stop_postgres(postgres: dict[str, Any]) -> None:
    """Stop what `start_postgres` started, and remove its folder."""
    subprocess.run(_as_server_user([str(Path(postgres["bindir"]) / "pg_ctl"), "stop", "-D", postgres["data"],
                                    "-m", "immediate", "-w"]), capture_output=True)
    shutil.rmtree(postgres["folder"], ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie of ours is dead
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- a small TOML writer (the standard library reads TOML but does not write it) -----------------


def to_toml(table: dict[str, Any], prefix: str = "") -> str:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    lines = [f"{_key(k)} = {_value(v)}" for k, v in scalars]
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, sub in tables:
        name = f"{prefix}.{_key(key)}" if prefix else _key(key)
        body = to_toml(sub, name)
        if any(not isinstance(v, dict) for v in sub.values()) or not sub:
            text += f"\n[{name}]\n"
        text += body
    return text


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} in TOML")


if __name__ == "__main__":
    sys.exit(main())
