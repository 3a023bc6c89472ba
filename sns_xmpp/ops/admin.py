"""``sns-xmpp-admin``: manage accounts with the daemon's own configuration file.

It opens the store directly (SQLite in WAL mode tolerates the running daemon
beside it), so it needs no reactor and no network.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from sns_xmpp.auth.saslprep import SASLprepError
from sns_xmpp.auth.scram import ScramCredential, derive_all
from sns_xmpp.config import Config, ConfigError, load_config
from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.keyfiles import private_directory
from sns_xmpp.ops import site_tools
from sns_xmpp.ops.manhole import hash_password
from sns_xmpp.sites.registry import load_sites
from sns_xmpp.store.common import migrate
from sns_xmpp.store.opening import database_opener


class AdminError(Exception):
    """A refusal printed as one line, exit status 1."""


def _bare_jid(text: str, config: Config) -> str:
    try:
        jid = parse_jid(text)
    except InvalidFormat:
        raise AdminError(f"'{text}' is not a valid JID") from None
    if jid.user is None or jid.resource is not None:
        raise AdminError(f"'{text}' is not a bare JID like user@{config.server.domains[0]}")
    if jid.host not in config.server.domains:
        raise AdminError(f"'{jid.host}' is not a hosted domain ({', '.join(config.server.domains)})")
    return jid.userhost()


def _local_jid(text: str, config: Config) -> str:
    """A JID for a new local account: never one of the names social accounts get (they hold a backslash)."""
    jid = _bare_jid(text, config)
    if "\\" in jid:
        raise AdminError("local account names cannot contain a backslash (those are social accounts' names)")
    return jid


def _read_password(stdin: TextIO) -> str:
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password again: "):
            raise AdminError("the passwords differ")
    else:
        first = stdin.readline().rstrip("\r\n")
    if not first:
        raise AdminError("the password is empty")
    return first


def _credentials(password: str, config: Config) -> tuple[ScramCredential, ...]:
    try:
        return derive_all(password, iterations=config.xmpp.c2s.scram_iterations)
    except SASLprepError as error:
        raise AdminError(f"unusable password: {error}") from None


def run(argv: Sequence[str], stdin: TextIO, stdout: TextIO) -> None:
    parser = argparse.ArgumentParser(prog="sns-xmpp-admin", description=__doc__)
    parser.add_argument("--config", default="conf/sns-xmpp.toml", help="configuration file")
    topics = parser.add_subparsers(dest="topic", required=True)
    user = topics.add_parser("user", help="local accounts").add_subparsers(dest="action", required=True)
    for action, text in (("add", "create an account; password from a prompt or stdin"),
                         ("remove", "delete an account and everything it owns"),
                         ("passwd", "set a new password; from a prompt or stdin")):
        user.add_parser(action, help=text).add_argument("jid")
    user.add_parser("list", help="list accounts").add_argument("--domain")
    links = topics.add_parser("links", help="social account links").add_subparsers(dest="action", required=True)
    listing = links.add_parser("list", help="list links, optionally of one site or one XMPP user")
    listing.add_argument("--site")
    listing.add_argument("--jid")
    lookup = links.add_parser("lookup", help="the XMPP user a social account is linked to")
    removal = links.add_parser("remove", help="unlink a social account: its sessions end and its credentials "
                               "stop working; its XMPP user stays, and the account comes back to it on "
                               "its next login at the site")
    for sub_parser in (lookup, removal):
        sub_parser.add_argument("site")
        sub_parser.add_argument("account")
    device = topics.add_parser("devices", help="a social account's device passwords").add_subparsers(
        dest="action", required=True)
    device.add_parser("list", help="id, name and creation time of each").add_argument("jid")
    device_removal = device.add_parser("remove", help="forget one: the device using it can no longer log in")
    device_removal.add_argument("jid")
    device_removal.add_argument("id", type=int)
    topics.add_parser("revoke", help="log an account out everywhere: its sessions end within seconds, and "
                      "its site credentials issued until now stop working").add_argument("jid")
    mint = topics.add_parser("mint", help="sign test credentials for a demo or hmac site")
    mint.add_argument("site")
    mint.add_argument("account", help="the social account id (a-z 0-9 _ -)")
    mint.add_argument("--lifetime", type=int, default=600, help="seconds until they expire")
    mint.add_argument("--json", action="store_true", help="print JSON instead of text")
    sites = topics.add_parser("sites", help="social sites").add_subparsers(dest="action", required=True)
    sites.add_parser("list", help="the configured sites and their login entries")
    sites.add_parser("check", help="start each site, reach its provider, print its status")
    rotate = sites.add_parser("rotate-key", help="make a new key for an hmac site and print the roll-out steps")
    rotate.add_argument("site")
    topics.add_parser("check-config", help="validate the file; print the effective configuration, secrets masked")
    topics.add_parser("manhole-hash", help="hash a console password (from a prompt or stdin)")
    topics.add_parser("migrate", help="apply pending schema versions to the configured database")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    private_directory(config.data_dir)
    if args.topic == "mint":
        site_tools.mint(config, args.site, args.account, args.lifetime, args.json, stdout)
        return
    if args.topic == "sites":
        if args.action == "list":
            site_tools.list_sites(config, stdout)
        elif args.action == "check":
            if not site_tools.check_sites(config, stdout):
                raise AdminError("some sites are not ok")
        else:
            site_tools.rotate_key(config, args.site, stdout, time.strftime("%Y%m%d"))
        return
    if args.topic == "check-config":
        load_sites(config.sites, site_tools.site_context(config))
        site_tools.effective_config(config, stdout)
        return
    if args.topic == "migrate":
        print(f"schema version {migrate(database_opener(config))}", file=stdout)
        return
    if args.topic == "manhole-hash":
        print(hash_password(_read_password(stdin)), file=stdout)
        return
    database = database_opener(config)()
    try:
        if args.topic == "links":
            _links(database, args, stdout)
            return
        if args.topic == "devices":
            jid = _bare_jid(args.jid, config)
            if args.action == "list":
                for found in database.device_passwords(jid):
                    print(f"{found.id}\t{found.label}\t{_when(found.created_at)}", file=stdout)
            elif not database.remove_device_password(jid, args.id):
                raise AdminError(f"{jid} has no device password {args.id}")
            else:
                print(f"removed device password {args.id} of {jid}", file=stdout)
            return
        if args.topic == "revoke":
            jid = _bare_jid(args.jid, config)
            if database.revoke(jid, "revoked by an operator", time.time()) is None:
                raise AdminError(f"no account {jid}")
            print(f"revoked {jid}: its sessions end within seconds", file=stdout)
            return
        if args.action == "list":
            for jid in database.list_accounts(args.domain):
                print(jid, file=stdout)
            return
        jid = _local_jid(args.jid, config) if args.action == "add" else _bare_jid(args.jid, config)
        if args.action == "add":
            if database.account_exists(jid):
                raise AdminError(f"{jid} exists already")
            database.create_account(jid, _credentials(_read_password(stdin), config), time.time())
            print(f"created {jid}", file=stdout)
        elif args.action == "passwd":
            if not database.set_credentials(jid, _credentials(_read_password(stdin), config)):
                raise AdminError(f"no account {jid}")
            print(f"password set for {jid}", file=stdout)
        elif args.action == "remove":
            if not database.delete_account(jid):
                raise AdminError(f"no account {jid}")
            print(f"removed {jid}", file=stdout)
    finally:
        database.close()


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _links(database: Any, args: argparse.Namespace, stdout: TextIO) -> None:
    if args.action == "list":
        for link in database.list_links(site=args.site, jid=args.jid):
            revoked = f"\trevoked {_when(link.revoked_at)}" if link.revoked_at is not None else ""
            print(f"{link.site}\t{link.account}\t{link.jid}{revoked}", file=stdout)
    elif args.action == "lookup":
        found = database.get_link(args.site, args.account)
        if found is None:
            raise AdminError(f"no link for {args.account} on {args.site}")
        print(found.jid, file=stdout)
    elif args.action == "remove":
        # Revoked, not deleted: its sessions end, its credentials stop working, and the same site
        # account, logging in at the site again, comes back to the same user.
        if database.revoke("", "unlinked", time.time(), site=args.site, account=args.account) is None:
            raise AdminError(f"no link for {args.account} on {args.site}")
        print(f"unlinked {args.account} on {args.site}", file=stdout)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        run(sys.argv[1:] if argv is None else argv, sys.stdin, sys.stdout)
    except (ConfigError, AdminError, site_tools.ToolError) as error:
        message = str(error)
        raise SystemExit(message if message.startswith("sns-xmpp") else f"sns-xmpp-admin: {message}") from None
