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
from typing import TextIO

from sns_xmpp.auth.saslprep import SASLprepError
from sns_xmpp.auth.scram import ScramCredential, derive_all
from sns_xmpp.config import Config, ConfigError, load_config
from sns_xmpp.store.sqlite import SQLiteDatabase
from sns_xmpp.xmpp.addressing import InvalidFormat, parse_jid


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
    args = parser.parse_args(argv)

    config = load_config(args.config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    database = SQLiteDatabase(config.store_path)
    try:
        if args.action == "list":
            for jid in database.list_accounts(args.domain):
                print(jid, file=stdout)
            return
        jid = _bare_jid(args.jid, config)
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


def main(argv: Sequence[str] | None = None) -> None:
    try:
        run(sys.argv[1:] if argv is None else argv, sys.stdin, sys.stdout)
    except (ConfigError, AdminError) as error:
        message = str(error)
        raise SystemExit(message if message.startswith("sns-xmpp") else f"sns-xmpp-admin: {message}") from None
