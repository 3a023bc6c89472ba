"""Configuration: the shipped file loads, and every mistake names its dotted key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sns_xmpp.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid_and_uses_the_embedded_default() -> None:
    config = load_config(ROOT / "conf" / "sns-xmpp.toml")
    assert config.server.domains == ("localhost",)
    assert config.store.backend == "sqlite"
    assert config.xmpp.c2s.require_tls is True


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[xmpp.c2s]\nport = 70000", "xmpp.c2s.port", "must be an integer -1-65535"),
        ("[xmpp.c2s]\nport = '5222'", "xmpp.c2s.port", "must be an integer -1-65535"),
        ("[xmpp.c2s]\nprot = 1", "xmpp.c2s.prot", "unknown key"),
        ("[nonsense]\na = 1", "nonsense", "unknown key"),
        ("[server]\ndomains = []", "server.domains", "must be a non-empty list of domain names"),
        ("[server]\ndomains = ['bob@localhost']", "server.domains", "'bob@localhost' is not a bare domain name"),
        ("[server]\ndomains = ['a..b']", "server.domains", "'a..b' is not a valid domain name"),
        ("[server]\ndomains = ['']", "server.domains", "'' is not a valid domain name"),
        ("[xmpp.c2s]\ninterface = 'localhost'", "xmpp.c2s.interface", "must be an IP address"),
        ("[xmpp.c2s]\nallow_plain_without_tls = true", "xmpp.c2s.allow_plain_without_tls",
         "needs xmpp.c2s.require_tls = false"),
        ("[tls]\ncertificate = 'a.pem'", "tls.private_key", "give both"),
        ("[xmpp]\nc2s = 3", "xmpp.c2s", "must be a table"),
        ("[xmpp.c2s]\nmax_offline_bytes = 9000000", "xmpp.c2s.max_offline_bytes",
         "must be less than xmpp.c2s.max_outbound_bytes"),
        ("[cluster]\nredis_url = 'http://x'", "cluster.redis_url", "must be a redis:// or unix:// URL"),
        ("[cluster]\nredis_url = 'redis://127.0.0.1'", "cluster.redis_url", "needs store.backend = 'postgresql'"),
        ("[store]\nbackend = 'postgresql'\ndsn = 'x'\n[cluster]\nredis_url = 'redis://127.0.0.1'\n"
         "heartbeat_interval = 5\nnode_timeout = 6", "cluster.node_timeout", "at least twice"),
        ("[cluster]\nnode_id = 'a b'", "cluster.node_id", "may hold only letters"),
    ],
)
def test_bad_values_name_the_key(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.key == key
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"sns-xmpp: config error at '{key}': ")


def test_daemon_prints_one_line_and_exits_1_on_a_config_error(tmp_path: Path) -> None:
    """The twistd plugin refuses a bad file with the one-line message, no usage text, no traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[xmpp.c2s]\nport = 99999\n")
    twistd = Path(sys.executable).with_name("twistd")
    done = subprocess.run([str(twistd), "--nodaemon", "--pidfile=", "sns-xmpp", f"--config={bad}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "sns-xmpp: config error at 'xmpp.c2s.port': must be an integer -1-65535"]


def test_log_section_chooses_the_observer() -> None:
    """JSON output with a level filter when asked; twistd's own observer for the default."""
    import io
    import json

    from twisted.logger import Logger

    from sns_xmpp.ops.logs import wanted_observer

    assert wanted_observer(parse_config("").log) is None
    out = io.StringIO()
    observer = wanted_observer(parse_config("[log]\nformat = 'json'\nlevel = 'warn'").log, out)
    assert observer is not None
    logger = Logger(namespace="test", observer=observer)
    logger.info("quiet {n}", n=1)
    logger.warn("loud {n}", n=2)
    events = [json.loads(line) for line in out.getvalue().strip("\x1e\n").split("\x1e")]
    assert [(event["log_format"], event["n"]) for event in events] == [("loud {n}", 2)]


def test_features_section_lists_modules_to_leave_out() -> None:
    """[xmpp.features] disabled names feature modules to leave out: none by default, names are not checked here."""
    assert parse_config("").xmpp.features.disabled == ()
    config = parse_config("[xmpp.features]\ndisabled = ['entity-time', 'no-such-feature']")
    assert config.xmpp.features.disabled == ("entity-time", "no-such-feature")
    assert load_config(ROOT / "conf" / "sns-xmpp.toml").xmpp.features.disabled == ()
    for bad in ("'entity-time'", "['']", "[1]", "[['ping']]"):
        with pytest.raises(ConfigError) as caught:
            parse_config(f"[xmpp.features]\ndisabled = {bad}")
        assert str(caught.value) == ("sns-xmpp: config error at 'xmpp.features.disabled': "
                                     "must be a list of feature names (non-empty strings)")
    with pytest.raises(ConfigError, match="'xmpp.features.enabled': unknown key"):
        parse_config("[xmpp.features]\nenabled = ['ping']")
