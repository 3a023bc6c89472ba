"""``sns-xmpp-extauth``: ejabberd's external authentication program, on the server's configuration.

    extauth_program: "/usr/bin/sns-xmpp-extauth --config /etc/sns-xmpp/sns-xmpp.toml"

It reads the same configuration file as the daemon: the domains (ejabberd's hosts), the store
(the link table, the local accounts; SQLite beside the daemon, or PostgreSQL), the sites and
their keys. It runs until ejabberd closes its standard input. Standard output is ejabberd's
protocol and nothing else: the log goes to standard error, which ejabberd passes on to its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from twisted.application.service import MultiService
from twisted.internet import threads
from twisted.internet.stdio import StandardIO
from twisted.logger import FileLogObserver, FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner

from sns_xmpp.auth.external import ExternalAccounts
from sns_xmpp.auth.local import LocalAccountChecker
from sns_xmpp.auth.social import SocialLoginChecker
from sns_xmpp.authserver.extauth import ExtauthProtocol
from sns_xmpp.config import Config, ConfigError, load_config
from sns_xmpp.keyfiles import ensure_secret, private_directory
from sns_xmpp.observe import log_gate
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.ops.logs import one_line_text, wanted_observer
from sns_xmpp.reactors import IServerReactor
from sns_xmpp.sites.interface import SiteContext
from sns_xmpp.sites.registry import load_sites
from sns_xmpp.store.opening import database_opener
from sns_xmpp.store.sqlite import ThreadedStore

log = GatedLogger()


@dataclass
class AuthServer:
    """The accounts the protocol asks, and the services (store, sites) behind them."""

    accounts: ExternalAccounts
    services: MultiService


def build_accounts(config: Config, reactor: IServerReactor) -> AuthServer:
    """The store, the sites and the login checkers as the daemon makes them (service.build_server),
    without any listener."""
    top = MultiService()
    private_directory(config.data_dir)
    store = ThreadedStore(database_opener(config), reactor)
    store.setServiceParent(top)
    sites = load_sites(config.sites, SiteContext(reactor, config.http.public_url, config.data_dir,
                                                 config.server.domains))
    sites.setServiceParent(top)
    salt_key = ensure_secret(config.data_dir / "scram-salt.key").encode()

    def hashing(*args: object, **kwargs: object) -> object:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), *args, **kwargs)  # type: ignore[arg-type]

    iterations = config.xmpp.c2s.scram_iterations
    local = LocalAccountChecker(store, hashing, iterations=iterations, salt_key=salt_key)  # type: ignore[arg-type]
    checker = SocialLoginChecker(store, sites, local, reactor, config.http.public_url, salt_key)
    accounts = ExternalAccounts(checker, store, config.server.domains, local.hashing, iterations)
    return AuthServer(accounts, top)


def start_logging(config: Config) -> None:
    """The log to standard error, at the configured level and format (never standard output)."""
    log_gate.set_minimum(LogLevel.levelWithName(config.log.level))
    observer = wanted_observer(config.log, sys.stderr) or FilteringLogObserver(
        FileLogObserver(sys.stderr, one_line_text), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


STOP_TIMEOUT = 5  # seconds the services have to stop once ejabberd closed our input


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sns-xmpp-extauth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="conf/sns-xmpp.toml", help="the server's configuration file")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    from twisted.internet import reactor as global_reactor

    reactor = cast(IServerReactor, global_reactor)
    start_logging(config)
    try:
        server = build_accounts(config, reactor)
    except ConfigError as error:  # a site's settings
        raise SystemExit(str(error)) from None

    def stop() -> None:
        # ejabberd has closed our pipes: end even if a service's stop never finishes (orphaned
        # extauth processes were found lingering after the tests' ejabberd had stopped).
        def end(_: object = None) -> None:
            if reactor.running:
                reactor.stop()

        reactor.callLater(STOP_TIMEOUT, end)
        # And if the shutdown itself hangs (a store thread that never returns: the orphans above
        # did not end on SIGTERM either), the process still goes.
        last_resort = threading.Timer(2 * STOP_TIMEOUT, os._exit, (1,))
        last_resort.daemon = True
        last_resort.start()
        stopped = server.services.stopService()
        if stopped is not None:
            stopped.addBoth(end)
        else:
            end()

    def start() -> None:
        server.services.startService()
        StandardIO(ExtauthProtocol(server.accounts, reactor, on_lost=stop), reactor=reactor)
        log.info("extauth.started domains={domains}", domains=",".join(config.server.domains))

    reactor.callWhenRunning(start)
    reactor.run()


__all__ = ["AuthServer", "build_accounts", "main"]
