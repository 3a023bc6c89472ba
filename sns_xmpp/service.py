"""The twistd plugin's options and the one MultiService it runs.

This is the only module that touches the global reactor and the wall clock;
everything it builds receives them.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from twisted.application import service
from twisted.internet import threads
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import ILogObserver, LogLevel
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from sns_xmpp import startup
from sns_xmpp.auth.external import ExternalAccounts
from sns_xmpp.auth.fast import FastTokens
from sns_xmpp.auth.local import LocalAccountChecker
from sns_xmpp.auth.reconfirm import Reconfirmer, Sealer
from sns_xmpp.auth.social import SocialLoginChecker
from sns_xmpp.auth.throttle import AuthThrottle, ThrottlePolicy
from sns_xmpp.authserver.component import SitesComponent
from sns_xmpp.cluster.node import ClusterNode
from sns_xmpp.config import Config, ConfigError, load_config
from sns_xmpp.http.auth_endpoint import AuthEndpoint
from sns_xmpp.http.devices import DeviceAccounts, Devices
from sns_xmpp.http.host_meta import well_known
from sns_xmpp.http.login import Root, SocialWeb
from sns_xmpp.http.logout import AccountTokens, BackChannelLogoutRoot, WebLogout
from sns_xmpp.http.pending import PendingLogins
from sns_xmpp.http.site import HTTPLimits, web_site
from sns_xmpp.http.style import static_folder
from sns_xmpp.http.webchat import LogoutTokens, WebChat
from sns_xmpp.keyfiles import ensure_secret, private_directory
from sns_xmpp.observe import log_gate
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.observe.metrics import Health, Metrics, metrics_resource
from sns_xmpp.ops.console import namespace
from sns_xmpp.ops.logs import wanted_observer
from sns_xmpp.ops.manhole import console_factory
from sns_xmpp.ops.reload import SiteReloader
from sns_xmpp.reactors import IServerReactor
from sns_xmpp.sites.interface import SiteContext
from sns_xmpp.sites.registry import SiteRegistry, load_sites
from sns_xmpp.store.opening import database_opener
from sns_xmpp.store.sqlite import ThreadedStore
from sns_xmpp.xmpp.c2s import ClientStreamFactory, StreamLimits
from sns_xmpp.xmpp.components import ComponentLimits, ComponentServerFactory
from sns_xmpp.xmpp.features import FeatureRegistry
from sns_xmpp.xmpp.features.built_in import UnknownFeature, install_features
from sns_xmpp.xmpp.negotiation import C2SSettings, ClientNegotiator
from sns_xmpp.xmpp.proxy_protocol import TrustedProxies
from sns_xmpp.xmpp.revocation import RevocationWatcher, end_sessions
from sns_xmpp.xmpp.routing import LocalRoute, StanzaRouter
from sns_xmpp.xmpp.s2s.federation import Federation, make_federation
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.tls import ensure_self_signed, server_context
from sns_xmpp.xmpp.transport import FlushingTCPServerEndpoint, NoDelayTCPServerEndpoint
from sns_xmpp.xmpp.websocket import PATH as WEBSOCKET_PATH
from sns_xmpp.xmpp.websocket import XMPPWebSocketFactory, XMPPWebSocketResource

log = GatedLogger()


class ServerService(service.MultiService):
    """The top service; hands twistd the log observer the configuration asks for."""

    def __init__(self, log_observer: ILogObserver | None) -> None:
        super().__init__()
        self.log_observer = log_observer

    def setServiceParent(self, parent: Any) -> Any:
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    def stopService(self) -> Deferred[None]:
        """Stop the children last added first, each once the one added after it has stopped.

        Twisted's MultiService stops them all in one go, so a child's stop that writes later
        (the sessions' unacknowledged messages, which a blocked sender's list read may delay; the
        messages a cluster's inbox still holds, read from Redis first) found the store closed,
        and the messages were lost. The store is added first: it closes last."""
        service.Service.stopService(self)
        stopped: Deferred[None] = succeed(None)
        for child in reversed(list(self)):
            stopped.addCallback(_stop_child, child)
        return stopped


def _stop_child(_: object, child: service.IService) -> Deferred[None]:
    stopping: Deferred[Any] = maybeDeferred(child.stopService)

    def failed(reason: Failure) -> None:  # the others stop all the same
        log.failure("service.stop_failed name={name}", reason, name=child.name)

    return stopping.addCallbacks(lambda _: None, failed)


def freeze_startup_objects() -> None:
    """Leave what start-up made (modules, classes, configuration: some 70 000 objects) out of
    the garbage collector's full collections from now on.

    A full collection scans every tracked object; with the start-up objects in it, one took
    40-50 ms on the benchmark machine, a pause every stream on the daemon feels. What is
    frozen is never collected, so this runs once, after start-up's garbage is gone.
    """
    gc.collect()
    gc.freeze()


class Options(usage.Options):
    optParameters = [["config", "c", "conf/sns-xmpp.toml", "configuration file (TOML)"]]

    def postOptions(self) -> None:
        try:
            self["loaded"] = load_config(self["config"])
        except ConfigError as error:
            # SystemExit prints exactly this line and exits 1; a UsageError
            # would print the whole usage text first.
            raise SystemExit(str(error)) from None


class StreamFactoryService(service.Service):
    """Starts and stops a stream factory that no listening port of its own starts (the WebSocket
    streams, which arrive through the HTTP listener): its idle sweeps, and <system-shutdown/> to
    its streams as the server stops."""

    def __init__(self, factory: ClientStreamFactory) -> None:
        self.factory = factory

    def startService(self) -> None:
        super().startService()
        self.factory.doStart()

    def stopService(self) -> Any:
        super().stopService()
        self.factory.shut_down()
        self.factory.doStop()


class ListenerService(service.Service):
    """Listens on an endpoint while running and remembers the port it got."""

    # What to do when listening fails; the daemon sets this to stop the process.
    on_failure: Callable[[], None] | None = None

    def __init__(self, name: str, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> None:
        self.setName(name)
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        self.listening = listening_port = self.endpoint.listen(self.factory)

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            address = port.getHost()
            log.info("listener.up name={name} address={address}", name=self.name, address=address)
            return port

        def failed(reason: Failure) -> None:
            log.failure("listener.failed name={name}", reason, name=self.name)
            if ListenerService.on_failure is not None:
                ListenerService.on_failure()

        listening_port.addCallbacks(listening, failed)

    def stopService(self) -> Any:
        super().stopService()
        stopped = self.port.stopListening() if self.port is not None else None
        shut_down = getattr(self.factory, "shut_down", None)
        if shut_down is not None:
            shut_down()
        return stopped

    @property
    def port_number(self) -> int:
        assert self.port is not None
        return int(self.port.getHost().port)  # type: ignore[attr-defined]


@dataclass
class Server:
    """Handles on the running parts, for tests and the operators' console."""

    config: Config
    store: ThreadedStore
    router: StanzaRouter
    sessions: SessionManager
    sites: SiteRegistry
    top: service.MultiService
    reloader: SiteReloader | None
    features: FeatureRegistry | None = None  # what the installed features offer (the console's rooms())
    federation: Federation | None = None  # the server-to-server links, when [xmpp.s2s] port is not -1
    cluster: ClusterNode | None = None  # this node's place among several, when [cluster] redis_url is set

    def listener(self, name: str) -> ListenerService:
        named: ListenerService = self.top.getServiceNamed(name)
        return named


class FeatureStop(service.Service):
    """As the server stops: every session ends, as a XEP-0198 timeout ends one (its
    unacknowledged messages to the account's other resources, in a cluster those on other
    nodes, or to offline storage), then the features' stop actions run (`FeatureRegistry.on_stop`:
    stream management waits for those deliveries, MAM writes its last batch). Added after the
    store and the cluster, so stopped (and waited for) before them: the listeners have ended the
    streams already, and the store and the cluster's inbox still take what this writes."""

    def __init__(self, registry: FeatureRegistry) -> None:
        self.registry = registry

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.registry.sessions.end_all()
        return self.registry.stop()


def build_server(config: Config, reactor: IServerReactor, config_path: Path | None = None) -> Server:
    startup.install()  # the wokkel names and the escaping serialiser, before any stream exists
    log_gate.set_minimum(LogLevel.levelWithName(config.log.level))
    top = ServerService(wanted_observer(config.log))
    private_directory(config.data_dir)  # the database and the keys: 0700

    store = ThreadedStore(database_opener(config), reactor)
    store.setName("store")
    store.setServiceParent(top)

    metrics = Metrics()
    router = StanzaRouter(metrics)
    sessions = SessionManager(config.server.domains, store, reactor, router.route, metrics,
                              config.xmpp.c2s.max_resources)
    metrics.watch_sessions(lambda: [s.login.site or s.login.method for s in sessions.all_sessions()],
                           lambda: len(sessions.rosters))
    revocations = RevocationWatcher(store, sessions, reactor)  # ends the sessions of revoked accounts
    revocations.setName("revocations")
    revocations.setServiceParent(top)
    for domain in config.server.domains:
        router.addRoute(domain, LocalRoute(sessions.deliver))
    cluster = None
    if config.cluster.enabled:  # one node of several (docs/scaling.md)
        cluster = ClusterNode(config.cluster, sessions, reactor)
        cluster.setName("cluster")
        cluster.setServiceParent(top)

    if config.tls.certificate:
        certificate, key = config.base_dir / config.tls.certificate, config.base_dir / config.tls.private_key
    else:
        now = datetime.datetime.fromtimestamp(reactor.seconds(), datetime.UTC)
        certificate, key = ensure_self_signed(config.data_dir / "tls", config.server.domains, now)
    tls_context = server_context(certificate, key)

    public_url = config.http.public_url
    site_context = SiteContext(reactor, public_url, config.data_dir, config.server.domains)
    sites = load_sites(config.sites, site_context)
    sites.setServiceParent(top)
    # Per install, made on first start: keys the salts that unknown users seem to have.
    salt_key = ensure_secret(config.data_dir / "scram-salt.key").encode()
    local = LocalAccountChecker(store, lambda *args, **kwargs: threads.deferToThreadPool(
        reactor, reactor.getThreadPool(), *args, **kwargs), iterations=config.xmpp.c2s.scram_iterations,
        salt_key=salt_key)
    checker = SocialLoginChecker(store, sites, local, reactor, public_url, salt_key, metrics)
    # Started logins travel sealed in the browser's cookie, under this per-install key (0600).
    login_state_key = ensure_secret(config.data_dir / "login-state.key").encode()
    pending = PendingLogins(reactor, secret=login_state_key)
    account_tokens = AccountTokens(login_state_key, reactor)  # the same key, in a context of its own
    # Providers' refresh tokens, sealed under a per-install key (0600), re-confirm accounts daily.
    sealer = Sealer(ensure_secret(config.data_dir / "refresh-tokens.key").encode())
    reconfirmer = Reconfirmer(store, sites, reactor, sealer, config.xmpp.c2s.fast_token_lifetime)
    reconfirmer.setName("reconfirmer")
    reconfirmer.setServiceParent(top)
    web = SocialWeb(sites, pending, public_url, config.server.domains[0], reactor, checker.linked_jid,
                    account_tokens, reconfirmer.keep)
    try:
        features = install_features(sessions, router, reactor, config=config.xmpp, sites=web,
                                    disabled=config.xmpp.features.disabled)
    except UnknownFeature as error:
        raise ConfigError("xmpp.features.disabled", str(error)) from None
    # After the store and the cluster: it ends the sessions, and stops (ServerService waits) before them.
    FeatureStop(features).setServiceParent(top)
    if cluster is not None:
        cluster.lease_entities(router, features.entity_services)
        cluster.list_entities(features.listings)
        cluster.resume_across_nodes(features.services.get("stream-management"))
    root = Root(web)
    root.putChild(b"metrics", metrics_resource(metrics))
    root.putChild(b"static", static_folder())  # the pages' one stylesheet (http/style.py)
    for segment, resource in features.http_resources.items():  # a feature's own HTTP side (upload)
        root.putChild(segment, resource)

    def log_out(site_id: str, account: str, token_digest: bytes, remember_until: float) -> Deferred[int]:
        """A back-channel logout: the account is revoked, and its sessions here end at once."""
        d: Deferred[Any] = checker.log_out(site_id, account, token_digest, remember_until)
        return d.addCallback(lambda jid: end_sessions(sessions, jid, "logged out at the site") if jid else 0)

    root.putChild(b"backchannel-logout", BackChannelLogoutRoot(sites, log_out, reactor))

    def log_out_everywhere(jid: str) -> Deferred[int]:
        """The hand-over page's button: the account is revoked, and its sessions here end at once."""
        d: Deferred[Any] = store.revoke(jid, "logged out on the web", reactor.seconds())
        return d.addCallback(lambda recorded: end_sessions(sessions, jid, "logged out on the web"))

    root.putChild(b"logout", WebLogout(account_tokens, log_out_everywhere))
    device_accounts = DeviceAccounts(checker.create_device_password, checker.devices.remove, store.device_passwords)
    root.putChild(b"devices", Devices(account_tokens, device_accounts, f"{public_url}/devices"))
    if config.http.auth_secret:  # an existing Prosody's HTTP authentication (docs/operations.md)
        external = ExternalAccounts(checker, store, config.server.domains, local.hashing,
                                    config.xmpp.c2s.scram_iterations)
        root.putChild(b"auth", AuthEndpoint(external, config.http.auth_secret, config.server.domains[0]))
    if config.sites_component.jid:  # the sites for an existing server's clients (authserver/component.py)
        component = config.sites_component
        SitesComponent(reactor, component.host, component.port, component.jid, component.secret,
                       web).setServiceParent(top)
    # The web chat: Converse.js logged in with a device password of its own (http/webchat.py).
    root.putChild(b"chat", WebChat(account_tokens, device_accounts, LogoutTokens(login_state_key), public_url,
                                   WEBSOCKET_PATH.decode() if config.http.websocket else None))
    checker.devices.load().addErrback(lambda reason: log.failure("devices.load_failed", reason))
    root.putChild(b"health", Health(lambda: all(listener.port is not None for listener in _listeners(top)),
                                    lambda: store.account_exists("health-check@invalid"), reactor))
    # The ports the nodes of a cluster on one machine share (the kernel spreads the connections).
    shared = config.cluster.enabled and config.cluster.reuse_port
    ListenerService("http", _tcp_endpoint(reactor, config.http.interface, config.http.port, reuse_port=shared,
                                          proxies=TrustedProxies(config.http.proxy_protocol_from)),
                    web_site(root, reactor, HTTPLimits(
                        header_timeout=config.http.header_timeout, body_timeout=config.http.body_timeout,
                        max_connections_per_ip=config.http.max_connections_per_ip,
                        body_limits=features.http_body_limits))).setServiceParent(top)

    c2s = config.xmpp.c2s
    settings = C2SSettings(
        domains=config.server.domains,
        checker=checker,
        sessions=sessions,
        tls_context=tls_context,
        require_tls=c2s.require_tls,
        allow_plain_without_tls=c2s.allow_plain_without_tls,
        max_auth_failures=c2s.max_auth_failures,
        metrics=metrics,
        throttle=AuthThrottle(reactor, ThrottlePolicy(
            free_failures=c2s.auth_free_failures, max_delay=c2s.auth_max_delay, block_after=c2s.auth_block_after,
            block_seconds=c2s.auth_block_seconds, address_block_after=c2s.auth_address_block_after,
            account_block_after=c2s.auth_account_block_after)),
        sasl2=True,
        fast=FastTokens(store, reactor, c2s.fast_token_lifetime, c2s.fast_token_rotation),
    )

    if cluster is not None and settings.throttle is not None:
        cluster.share_throttle(settings.throttle)  # failures on any node count on every node
    limits = StreamLimits(c2s.max_stanza_bytes, c2s.auth_timeout, c2s.idle_timeout, c2s.ping_timeout,
                          c2s.max_connections_per_ip, c2s.max_outbound_bytes, c2s.max_unauthenticated_per_ip)

    def factory(secure: bool) -> ClientStreamFactory:
        return ClientStreamFactory(lambda: ClientNegotiator(settings), limits, reactor, secure, metrics.limit)

    # Behind a balancer that sends the PROXY protocol: the clients' own addresses (empty: off).
    balancers = TrustedProxies(c2s.proxy_protocol_from)
    if c2s.port >= 0:  # -1: the HTTP side alone, for an existing ejabberd or Prosody (docs/operations.md)
        ListenerService("c2s", FlushingTCPServerEndpoint(reactor, c2s.port, LISTEN_BACKLOG, c2s.interface,
                                                         reuse_port=shared, proxies=balancers),
                        factory(False)).setServiceParent(top)
    if c2s.direct_tls_port >= 0:
        ListenerService("c2s-direct-tls",
                        FlushingTCPServerEndpoint(reactor, c2s.direct_tls_port, LISTEN_BACKLOG, c2s.interface,
                                                  tls=tls_context, reuse_port=shared, proxies=balancers),
                        factory(True)).setServiceParent(top)
    if config.http.websocket:
        # The same streams over RFC 7395's framing on the HTTP listener: no STARTTLS there (the
        # listener has no TLS; a TLS-terminating proxy in front, or loopback, makes it private).
        websocket_settings = dataclasses.replace(settings, tls_context=None)
        websocket_streams = ClientStreamFactory(lambda: ClientNegotiator(websocket_settings), limits, reactor,
                                                False, metrics.limit)
        StreamFactoryService(websocket_streams).setServiceParent(top)
        root.putChild(WEBSOCKET_PATH, XMPPWebSocketResource(XMPPWebSocketFactory(
            websocket_streams, c2s.max_stanza_bytes, config.http.trusted_proxies,
            see_other=config.http.websocket_see_other)))
        root.putChild(b".well-known", well_known(public_url, WEBSOCKET_PATH.decode()))  # XEP-0156
    components = config.xmpp.components
    if config.components and components.port >= 0:
        router.component_domains.update(config.components)
        ListenerService("components", _tcp_endpoint(reactor, components.interface, components.port),
                        ComponentServerFactory(router, config.components, reactor, ComponentLimits(
                            components.max_stanza_bytes, components.handshake_timeout,
                            components.max_unauthenticated_per_ip))).setServiceParent(top)

    s2s = config.xmpp.s2s
    federation = None
    if s2s.port >= 0:
        # Per install, made on first start: the secret behind this server's dialback keys (XEP-0185).
        dialback_secret = ensure_secret(config.data_dir / "dialback.key")
        federation = make_federation(router, reactor, s2s, certificate, key, dialback_secret, config.base_dir)
        federation.setServiceParent(top)
        router.remote = federation
        metrics.watch_s2s(federation.stream_states)
        ListenerService("s2s", _tcp_endpoint(reactor, s2s.interface, s2s.port, reuse_port=shared),
                        federation.listener_factory()).setServiceParent(top)
        if s2s.direct_tls_port >= 0:
            ListenerService("s2s-direct-tls",
                            NoDelayTCPServerEndpoint(reactor, s2s.direct_tls_port, LISTEN_BACKLOG, s2s.interface,
                                                     tls=federation.inbound_settings.server_tls,
                                                     reuse_port=shared),
                            federation.listener_factory(direct_tls=True)).setServiceParent(top)

    reloader = SiteReloader(config_path, sites, site_context) if config_path is not None else None
    server = Server(config, store, router, sessions, sites, top, reloader, features, federation, cluster)
    if config.manhole.enabled:
        console = config.manhole
        ssh = console_factory(namespace(server), config.data_dir, console.user,
                              config.base_dir / console.authorized_keys if console.authorized_keys else None,
                              console.password_hash or None, reactor,
                              lambda *args: threads.deferToThreadPool(reactor, reactor.getThreadPool(), *args))
        ListenerService("manhole", _tcp_endpoint(reactor, console.interface, console.port),
                        ssh).setServiceParent(top)
    return server


def _listeners(top: service.MultiService) -> list[ListenerService]:
    return [child for child in top if isinstance(child, ListenerService)]


# Twisted's default backlog of 50 drops connection attempts in a reconnect storm
# after a restart (the benchmark saw it); the kernel caps this at somaxconn.
LISTEN_BACKLOG = 1024


def _tcp_endpoint(reactor: IServerReactor, interface: str, port: int, reuse_port: bool = False,
                  proxies: TrustedProxies | None = None) -> IStreamServerEndpoint:
    """A listener (IPv4 or IPv6 by the interface) whose connections have TCP_NODELAY, as the c2s
    ones do (sns_xmpp.xmpp.transport): an answer is not held back waiting for an ACK. With
    *proxies*, behind the PROXY protocol (sns_xmpp.xmpp.proxy_protocol)."""
    return NoDelayTCPServerEndpoint(reactor, port, LISTEN_BACKLOG, interface, reuse_port=reuse_port,
                                    proxies=proxies)


def makeService(options: Options, reactor: IServerReactor | None = None) -> service.IService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = cast(IServerReactor, global_reactor)  # every Twisted reactor provides all of it
    try:
        server = build_server(options["loaded"], reactor, Path(options["config"]))
    except ConfigError as error:  # a site's or the console's settings, found while building
        raise SystemExit(str(error)) from None
    reloader = server.reloader
    assert reloader is not None
    def stop_with_failure() -> None:
        # A server missing a listener must not look healthy to its supervisor: stop
        # cleanly, then exit non-zero (twistd itself has no exit status to set).
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        reactor.callWhenRunning(reactor.stop)

    ListenerService.on_failure = stop_with_failure
    # SIGHUP reloads the sites; the handler only schedules, the reactor thread does the work.
    signal.signal(signal.SIGHUP, lambda number, frame: reactor.callFromThread(reloader.reload))
    reactor.callWhenRunning(freeze_startup_objects)  # in the daemon's process only, not in the tests'
    return server.top


__all__ = ["Options", "makeService", "build_server"]
