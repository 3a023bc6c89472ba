"""One settings framework: the server's keys and the site plugins' tables share the checks, the
`<key>_file` reader, the unknown-key refusal and the one-line error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from sns_xmpp import settings
from sns_xmpp.config import ConfigError, parse_config
from sns_xmpp.sites import settings as check
from sns_xmpp.sites.interface import SiteConfigError, SiteContext
from sns_xmpp.sites.registry import load_sites


def _site_error(tables: dict[str, dict[str, Any]], tmp_path: Path) -> ConfigError:
    context = SiteContext(MemoryReactorClock(), "http://127.0.0.1:5280", tmp_path / "data", ("localhost",))
    with pytest.raises(ConfigError) as caught:
        load_sites(tables, context)
    return caught.value


def _server_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value


def test_server_and_site_secret_files_are_read_by_the_one_reader(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `<key>_file`, the server's and each built-in site's, goes through settings.read_secret_file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret").write_text("s" * 32 + "\n")
    (tmp_path / "keys.toml").write_text('k1 = "0123456789abcdef0123"\n')
    read: list[str] = []
    reader = settings.read_secret_file

    def spy(key: str, path: Any, base_dir: Path = Path(".")) -> str:
        read.append(key)
        return reader(key, path, base_dir)

    monkeypatch.setattr(settings, "read_secret_file", spy)
    config = parse_config("""
        [store]
        dsn_file = "secret"
        [manhole]
        password_hash_file = "secret"
        [components."echo.localhost"]
        secret_file = "secret"
    """)
    assert (config.store.dsn, config.components["echo.localhost"]) == ("s" * 32, "s" * 32)
    context = SiteContext(MemoryReactorClock(), "http://127.0.0.1:5280", tmp_path / "data", ("localhost",))
    sites = load_sites({
        "fb": {"plugin": "facebook", "app_id": "1234", "app_secret_file": "secret"},
        "h": {"plugin": "hmac", "keys_file": "keys.toml", "login_url": "https://h.example/{callback}"},
        "idp": {"plugin": "oidc", "issuer": "https://id.example.com", "client_id": "x",
                "client_secret_file": "secret"},
    }, context)
    assert len(sites) == 3
    assert read == ["store.dsn_file", "manhole.password_hash_file", "components.echo.localhost.secret_file",
                    "app_secret_file", "keys_file", "client_secret_file"]


@pytest.mark.parametrize(
    ("server", "site", "problem"),
    [
        ("'missing'", "missing", "cannot read missing: No such file or directory"),
        ("'not-utf8'", "not-utf8", "cannot read not-utf8: not UTF-8 text"),
        ("3", 3, "must be a non-empty string"),
        ("''", "", "must be a non-empty string"),
    ],
)
def test_an_unusable_secret_file_gets_the_same_one_line_error_for_server_and_site(
        server: str, site: Any, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing, unreadable or mistyped `<key>_file`: one line naming the dotted key, the same words for both."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-utf8").write_bytes(b"\xff\xfe secret \x80\n")
    errors = [
        _server_error(f"[store]\ndsn_file = {server}\n"),
        _server_error(f'[components."echo.localhost"]\nsecret_file = {server}\n'),
        _site_error({"fb": {"plugin": "facebook", "app_id": "1234", "app_secret_file": site}}, tmp_path),
        _site_error({"h": {"plugin": "hmac", "keys_file": site, "login_url": "https://h/"}}, tmp_path),
    ]
    keys = ["store.dsn_file", "components.echo.localhost.secret_file", "sites.fb.app_secret_file", "sites.h.keys_file"]
    assert [str(error) for error in errors] == [f"sns-xmpp: config error at '{key}': {problem}" for key in keys]
    assert all("secret" not in error.problem for error in errors)


def test_both_forms_of_a_secret_are_refused_alike(tmp_path: Path) -> None:
    """`key` and `key_file` together: the same refusal for a server key and a site key."""
    server = _server_error("[store]\ndsn = 'x'\ndsn_file = 'y'\n")
    site = _site_error({"fb": {"plugin": "facebook", "app_id": "1", "app_secret": "x" * 20, "app_secret_file": "y"}},
                       tmp_path)
    assert server.problem == "give either 'dsn' or 'dsn_file', not both"
    assert site.problem == "give either 'app_secret' or 'app_secret_file', not both"
    assert (server.key, site.key) == ("store.dsn_file", "sites.fb.app_secret_file")


def test_a_short_secret_is_refused_without_being_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A site's secret from a file that is too short names the `_file` key and never repeats the file's text."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "short").write_text("tiny-secret\n")
    error = _site_error({"fb": {"plugin": "facebook", "app_id": "1", "app_secret_file": "short"}}, tmp_path)
    assert str(error) == "sns-xmpp: config error at 'sites.fb.app_secret_file': must be at least 16 characters"


def test_the_plugin_helpers_keep_their_names_and_key_their_errors_to_the_table() -> None:
    """sns_xmpp.sites.settings and SiteConfigError, which third-party plugins use, are the one framework."""
    assert SiteConfigError is ConfigError
    table = {"n": 2, "f": True, "t": "x"}
    assert check.number(table, "n", 1, 0, 5) == 2.0
    assert (check.flag(table, "f", False), check.text(table, "t")) == (True, "x")
    assert check.number({}, "n", 1, 0, 5) == 1.0
    for call, key, problem in [
        (lambda: check.refuse_unknown(table, ("n", "f")), "t", "unknown key"),
        (lambda: check.number(table, "f", 1, 0, 5), "f", "must be a number 0-5"),
        (lambda: check.flag(table, "n", False), "n", "must be true or false"),
        (lambda: check.text({}, "t"), "t", "required"),
        (lambda: check.text({"t": ""}, "t"), "t", "must be a non-empty string"),
        (lambda: check.secret({}, "s"), "s", "required"),
        (lambda: check.secret({"s": "short"}, "s"), "s", "must be at least 16 characters"),
    ]:
        with pytest.raises(SiteConfigError) as caught:
            call()
        assert (caught.value.key, caught.value.problem) == (key, problem)
    assert str(SiteConfigError("key", "required").within("sites.demo")) == \
        "sns-xmpp: config error at 'sites.demo.key': required"
