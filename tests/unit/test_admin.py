"""sns-xmpp-admin against a real SQLite file: users, links, minting, key rotation, config check."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest
from twisted.cred.credentials import UsernamePassword

from sns_xmpp.auth.social import parse_handover
from sns_xmpp.ops.admin import AdminError, run
from sns_xmpp.ops.manhole import PasswordHashChecker
from sns_xmpp.sites.hmac import make_hmac_site
from sns_xmpp.sites.interface import SiteContext
from sns_xmpp.store.sqlite import SQLiteDatabase


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "keys.toml").write_text('old = "old-secret-0123456789"\n')
    path = tmp_path / "sns-xmpp.toml"
    path.write_text(textwrap.dedent(f"""
        [server]
        data_dir = "{tmp_path / 'data'}"
        [sites.demo]
        [sites.sns]
        plugin = "hmac"
        keys_file = "{tmp_path / 'keys.toml'}"
        login_url = "https://sns.example/login"
        [sites.fb]
        plugin = "facebook"
        app_id = "12"
        app_secret = "facebook-secret-0123456789"
    """))
    return path


def admin(config: Path, *args: str, stdin: str = "") -> str:
    out = io.StringIO()
    run(["--config", str(config), *args], io.StringIO(stdin), out)
    return out.getvalue()


def test_migrate_reports_the_schema_version(config: Path) -> None:
    from sns_xmpp.store.common import load_schema_scripts

    assert admin(config, "migrate") == f"schema version {len(load_schema_scripts())}\n"


def test_users_and_links(config: Path, tmp_path: Path) -> None:
    assert admin(config, "user", "add", "Alice@localhost", stdin="pw\n") == "created alice@localhost\n"
    with pytest.raises(AdminError, match="backslash"):
        admin(config, "user", "add", "a\\40demo@localhost", stdin="pw\n")
    with pytest.raises(AdminError, match="not a hosted domain"):
        admin(config, "user", "add", "bob@elsewhere", stdin="pw\n")
    database = SQLiteDatabase(tmp_path / "data" / "sns-xmpp.sqlite3")
    database.link_account("demo", "zed", "zed\\40demo@localhost", 1.0)
    database.close()
    assert admin(config, "links", "list") == "demo\tzed\tzed\\40demo@localhost\n"
    assert admin(config, "links", "lookup", "demo", "zed") == "zed\\40demo@localhost\n"
    assert admin(config, "links", "remove", "demo", "zed") == "unlinked zed on demo\n"
    # Revoked, not deleted: the account comes back to the same user on its next login at the site.
    assert admin(config, "links", "lookup", "demo", "zed") == "zed\\40demo@localhost\n"
    assert admin(config, "links", "list").startswith("demo\tzed\tzed\\40demo@localhost\trevoked 20")
    with pytest.raises(AdminError, match="no link"):
        admin(config, "links", "remove", "demo", "nobody")
    assert admin(config, "revoke", "zed\\40demo@localhost") == (
        "revoked zed\\40demo@localhost: its sessions end within seconds\n")
    with pytest.raises(AdminError, match="no account"):
        admin(config, "revoke", "ghost@localhost")
    database = SQLiteDatabase(tmp_path / "data" / "sns-xmpp.sqlite3")
    assert [(r.jid, r.reason) for r in database.revocations_after(0)] == [
        ("zed\\40demo@localhost", "unlinked"), ("zed\\40demo@localhost", "revoked by an operator")]
    database.close()


def test_mint_signs_what_the_site_accepts(config: Path, tmp_path: Path) -> None:
    minted = json.loads(admin(config, "mint", "sns", "carol", "--json"))
    identifier, site_id = minted["username"].rsplit("@", 1)
    site = make_hmac_site("sns", {"keys": {"old": "old-secret-0123456789"}, "login_url": "https://x/"},
                          SiteContext(None, "http://h", tmp_path, ("localhost",)))
    import time

    assert site.check(identifier, minted["token"], time.time()).account == "carol"
    # Handed over as the login callback does: the linked user, and the access info in the password.
    assert minted["jid"] == "carol\\40sns@localhost" == admin(config, "links", "lookup", "sns", "carol").strip()
    assert parse_handover(minted["password"]) == ("sns", identifier, minted["token"])
    with pytest.raises(Exception, match="not a demo or hmac site"):
        admin(config, "mint", "fb", "carol")


def test_rotate_key_appends_to_the_keys_file_and_check_config_masks_secrets(config: Path, tmp_path: Path) -> None:
    steps = admin(config, "sites", "rotate-key", "sns")
    assert "signing_key" in steps and "SIGHUP" in steps
    keys = (tmp_path / "keys.toml").read_text().splitlines()
    assert keys[0] == 'old = "old-secret-0123456789"' and len(keys) == 2
    new_secret = keys[1].split('"')[1]
    shown = admin(config, "check-config")
    document = json.loads(shown)
    assert document["sites"]["fb"]["app_secret"] == "***"
    for secret in ("facebook-secret-0123456789", "old-secret-0123456789", new_secret):
        assert secret not in shown


def test_manhole_hash_is_checked_in_constant_time(config: Path) -> None:
    from twisted.cred.error import UnauthorizedLogin
    from twisted.internet.defer import maybeDeferred

    hashed = admin(config, "manhole-hash", stdin="console-pass\n").strip()
    checker = PasswordHashChecker(b"admin", hashed, maybeDeferred)  # hashed at once; in a thread when served
    good = checker.requestAvatarId(UsernamePassword(b"admin", b"console-pass"))
    bad = checker.requestAvatarId(UsernamePassword(b"admin", b"console-pasS"))
    assert good.result == b"admin"
    refusals: list = []
    bad.addErrback(refusals.append)
    assert refusals[0].check(UnauthorizedLogin)


@pytest.mark.parametrize("jid", ["a\\40demo@localhost", "A\\40Demo@localhost", "a\uff3c40demo@localhost",
                                 "zoe\u00ad\\40demo@localhost", "h-rx6zoplmvfgr5xuqljdwofneei\\40open@localhost"])
def test_user_add_cannot_take_a_social_jid(config: Path, jid: str) -> None:
    """Social accounts' JIDs (``<account>\\40<site>``) are out of reach of local registration,
    however the name is spelled before preparation (case, full-width backslash, soft hyphen)."""
    with pytest.raises(AdminError, match="backslash"):
        admin(config, "user", "add", jid, stdin="pw\n")


def test_device_passwords_are_listed_and_removed_by_the_admin(config: Path, tmp_path: Path) -> None:
    from sns_xmpp.auth.scram import derive_credential

    admin(config, "migrate")  # makes the data folder and the database
    database = SQLiteDatabase(tmp_path / "data" / "sns-xmpp.sqlite3")
    database.link_account("demo", "zed", "zed\\40demo@localhost", 1.0)
    keys = [derive_credential(m, "pw", salt=b"s" * 16, iterations=4096) for m in ("SCRAM-SHA-1", "SCRAM-SHA-256")]
    phone = database.add_device_password("zed\\40demo@localhost", "phone", keys, 0.0)
    database.close()
    assert admin(config, "devices", "list", "zed\\40demo@localhost") == f"{phone}\tphone\t1970-01-01 00:00:00 UTC\n"
    assert admin(config, "devices", "remove", "zed\\40demo@localhost", str(phone)) == (
        f"removed device password {phone} of zed\\40demo@localhost\n")
    with pytest.raises(AdminError, match="no device password"):
        admin(config, "devices", "remove", "zed\\40demo@localhost", str(phone))
    assert admin(config, "devices", "list", "zed\\40demo@localhost") == ""
