"""The configuration file: TOML in, one validated, typed, frozen object out.

Every key is declared once, on a dataclass field, with its default and its
check. An unknown key or a bad value becomes a `ConfigError` naming the dotted
key, which the daemon and the admin command print as one line before exiting
with status 1. The checks, the `<key>_file` secrets and the error are those of
`sns_xmpp.settings`, the framework the site plugins' tables use too.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sns_xmpp import settings
from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.settings import ConfigError, boolean, choice, integer, names

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]


def _setting(default: Any, check: settings.Check, doc: str, *, secret: bool = False) -> Any:
    """A key: its default, its check (`sns_xmpp.settings`), a line of doc; a secret may also be `<key>_file`."""
    return field(default=default, metadata={"check": check, "doc": doc, "secret": secret})


def _interface(value: Any) -> str:
    try:
        ipaddress.ip_address(settings.text(value))
    except ValueError:
        raise ValueError("must be an IP address such as 127.0.0.1 or ::") from None
    return str(value)


def _domains(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of domain names")
    domains: list[str] = []
    for item in value:
        try:
            parsed = parse_jid(settings.text(item))
        except (InvalidFormat, ValueError):
            raise ValueError(f"{item!r} is not a valid domain name") from None
        if parsed.user is not None or parsed.resource is not None:
            raise ValueError(f"{item!r} is not a bare domain name")
        if parsed.host in domains:
            raise ValueError(f"{item!r} is listed twice")
        domains.append(parsed.host)
    return tuple(domains)


def _networks(value: Any) -> tuple[str, ...]:
    """Addresses or networks (``10.0.0.0/8``, ``192.0.2.7``), kept as networks' text."""
    networks: list[str] = []
    for item in names("IP addresses or networks")(value):
        try:
            networks.append(str(ipaddress.ip_network(item)))
        except ValueError:
            try:  # a network written with its host bits: say which one was meant, take neither
                meant = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network such as 10.0.0.0/8") from None
            raise ValueError(f"{item!r} has host bits set (the network is {meant})") from None
    return tuple(networks)


_PROXY_PROTOCOL_FROM = (
    "balancers (addresses or networks) that send the PROXY protocol, v1 or v2; when set, every connection must "
    "come from one of them and start with its header; empty: off"
)


def _url(value: Any) -> str:
    text = settings.text(value)
    if not (text.startswith("http://") or text.startswith("https://")):
        raise ValueError("must be an http:// or https:// URL")
    return text.rstrip("/")


@dataclass(frozen=True)
class ServerConfig:
    domains: tuple[str, ...] = _setting(("localhost",), _domains, "virtual hosts served")
    data_dir: str = _setting("data", settings.text, "where the database, keys and certificates live")


@dataclass(frozen=True)
class C2SConfig:
    interface: str = _setting("127.0.0.1", _interface, "address for client connections")
    port: int = _setting(
        5222, integer(-1, 65535),
        "STARTTLS port; 0 picks a free one, -1 turns the client listener off (the auth server for another server)"
    )
    direct_tls_port: int = _setting(
        5223, integer(-1, 65535), "XEP-0368 direct TLS port; 0 picks a free one, -1 disables"
    )
    require_tls: bool = _setting(True, boolean, "refuse SASL before STARTTLS")
    allow_plain_without_tls: bool = _setting(
        False, boolean, "offer SASL PLAIN on unencrypted streams (benchmarks only)"
    )
    max_stanza_bytes: int = _setting(262144, integer(1024, 16 * 1024 * 1024), "largest stanza")
    max_auth_failures: int = _setting(3, integer(1, 100), "SASL failures before the stream is closed")
    scram_iterations: int = _setting(4096, integer(4096, 1_000_000), "PBKDF2 rounds for new passwords")
    auth_timeout: int = _setting(30, integer(1, 3600), "seconds a stream has to authenticate and bind")
    idle_timeout: int = _setting(300, integer(10, 86400), "seconds of silence before the server pings")
    ping_timeout: int = _setting(60, integer(1, 3600), "seconds to answer that ping before the stream ends")
    max_connections_per_ip: int = _setting(10_000, integer(1, 1_000_000), "open streams one address may hold")
    max_unauthenticated_per_ip: int = _setting(
        1_000, integer(1, 1_000_000), "streams one address may hold before they bind a resource (logins in progress)"
    )
    max_resources: int = _setting(10, integer(1, 1000), "sessions one account may bind at once")
    max_offline_messages: int = _setting(1000, integer(1, 1_000_000), "messages kept for one offline user")
    max_offline_bytes: int = _setting(
        4 * 1024 * 1024, integer(1024, 1024**3), "size of the messages kept for one offline user (XML characters)"
    )
    max_outbound_bytes: int = _setting(
        8 * 1024 * 1024, integer(65536, 1024**3), "unread data a stream may hold before it ends (policy-violation)"
    )
    resume_timeout: int = _setting(300, integer(1, 86400), "seconds a dropped XEP-0198 session waits to resume")
    auth_block_after: int = _setting(20, integer(2, 10000), "failures of one (address, account) pair before a block")
    auth_block_seconds: int = _setting(900, integer(1, 86400), "how long such a block (or a strain) lasts")
    auth_free_failures: int = _setting(3, integer(0, 10000), "failures of a pair answered at once, before slowing")
    auth_max_delay: int = _setting(8, integer(0, 60), "longest a failure's answer is held back (s)")
    auth_address_block_after: int = _setting(
        500, integer(2, 10_000_000), "failures from one address, all accounts, before it is strained"
    )
    auth_account_block_after: int = _setting(
        100, integer(2, 10_000_000), "failures of one account, all addresses, before it is strained"
    )
    fast_token_lifetime: int = _setting(
        30 * 86400, integer(10, 366 * 86400), "seconds a FAST token (XEP-0484) logs its device in without the browser"
    )
    fast_token_rotation: int = _setting(
        86400, integer(0, 366 * 86400),
        "seconds a FAST token serves before a login rotates it (at most half its lifetime; 0: every login)"
    )
    proxy_protocol_from: tuple[str, ...] = _setting((), _networks, _PROXY_PROTOCOL_FROM + " (both client ports)")


@dataclass(frozen=True)
class ComponentListenerConfig:
    interface: str = _setting("127.0.0.1", _interface, "address for XEP-0114 components (keep it loopback)")
    port: int = _setting(5347, integer(-1, 65535), "component port; 0 picks a free one, -1 turns it off")
    max_stanza_bytes: int = _setting(262144, integer(1024, 16 * 1024 * 1024), "largest stanza from a component")
    handshake_timeout: int = _setting(10, integer(1, 3600), "seconds a component has to complete its handshake")
    max_unauthenticated_per_ip: int = _setting(
        16, integer(1, 100_000), "streams one address may hold open before their handshake"
    )


@dataclass(frozen=True)
class FeaturesConfig:
    # Names are checked against the feature list at start-up (xmpp/ sits above config).
    disabled: tuple[str, ...] = _setting(
        (), names("feature names"),
        'feature modules to leave out, by name (e.g. "entity-time"); each built-in feature is on by default',
    )


@dataclass(frozen=True)
class ExternalService:
    """One STUN/TURN (or other) service that XEP-0215 tells the account's clients about."""

    type: str
    host: str
    port: int | None = None
    transport: str | None = None
    restricted: bool = False  # credentials needed (TURN REST ones, from turn_secret)
    name: str | None = None


_SERVICE_KEYS = {
    "type": settings.non_empty_text,
    "host": settings.non_empty_text,
    "port": integer(1, 65535),
    "transport": choice("udp", "tcp"),
    "restricted": boolean,
    "name": settings.non_empty_text,
}


def _external_services(value: Any) -> tuple[ExternalService, ...]:
    """[[xmpp.external_services.services]] tables; a bad one names its key, e.g.
    'xmpp.external_services.services[2].port'."""
    if not isinstance(value, list):
        raise ValueError("must be a list of tables ([[xmpp.external_services.services]])")
    services = []
    for n, table in enumerate(value):
        where = f"xmpp.external_services.services[{n}]"
        if not isinstance(table, dict):
            raise settings.ConfigError(where, "must be a table with type, host, port, transport, restricted")
        settings.refuse_unknown(table, _SERVICE_KEYS, where=where)
        for required in ("type", "host"):
            if required not in table:
                raise settings.ConfigError(settings.dotted(where, required), "required")
        given = {key: settings.checked(settings.dotted(where, key), table[key], check)
                 for key, check in _SERVICE_KEYS.items() if key in table}
        services.append(ExternalService(**given))
    return tuple(services)


def _turn_secret(value: Any) -> str:
    secret = settings.text(value)
    if len(secret) < 16:
        raise ValueError("must be at least 16 characters")
    return secret


@dataclass(frozen=True)
class ExternalServicesConfig:
    services: tuple[ExternalService, ...] = _setting(
        (), _external_services, "STUN/TURN services for XEP-0215: type, host, port, transport, restricted, name"
    )
    turn_secret: str = _setting(
        "", _turn_secret, "the secret shared with the TURN server (coturn's static-auth-secret)", secret=True
    )
    credential_lifetime: int = _setting(86400, integer(60, 30 * 86400), "seconds TURN REST credentials last")


@dataclass(frozen=True)
class MAMConfig:
    retention_days: int = _setting(
        365, integer(0, 36500), "days a message stays in the user archive (XEP-0313); 0 keeps it for ever"
    )
    default_page_size: int = _setting(50, integer(1, 10000), "messages per archive page when a query names no <max/>")
    max_page_size: int = _setting(250, integer(1, 10000), "most messages per archive page, whatever a query asks")
    flush_interval_ms: int = _setting(
        200, integer(1, 60000), "longest an archived message waits in memory before its batch is written"
    )
    flush_rows: int = _setting(5000, integer(1, 100000), "archived messages written at once when that many wait")
    max_buffered_rows: int = _setting(
        50000, integer(100, 10_000_000),
        "archived messages waiting or being written; senders are not read past half of it, and past it new ones go "
        "unarchived"
    )


@dataclass(frozen=True)
class VCardConfig:
    max_bytes: int = _setting(
        65536, integer(1024, 1024 * 1024), "largest vCard kept (XEP-0054), as XML with its base64 PHOTO"
    )


@dataclass(frozen=True)
class PEPConfig:
    max_nodes: int = _setting(256, integer(1, 100_000), "PEP nodes one account may have (XEP-0163)")
    max_items: int = _setting(
        256, integer(1, 100_000), "most items one PEP node keeps; what a client's max_items = 'max' means"
    )
    max_item_bytes: int = _setting(
        131072, integer(1024, 16 * 1024 * 1024), "largest PEP item, as serialised XML (XEP-0084 avatars: 87 KiB)"
    )


@dataclass(frozen=True)
class UploadConfig:
    max_file_bytes: int = _setting(
        10 * 1024 * 1024, integer(1, 1 << 40), "largest file one slot may take (XEP-0363), in bytes"
    )
    quota_bytes: int = _setting(
        1024 * 1024 * 1024, integer(1, 1 << 50), "bytes of files (and open slots) one account may keep"
    )
    max_files: int = _setting(10_000, integer(1, 10_000_000), "files (and open slots) one account may keep")
    file_lifetime_days: int = _setting(30, integer(0, 36500), "days an uploaded file is kept; 0 keeps it for ever")
    slot_lifetime: int = _setting(300, integer(10, 86400), "seconds a slot's PUT URL stays valid")
    directory: str = _setting("uploads", settings.non_empty_text, "folder of the files, relative to server.data_dir")
    # Filled in from [server] data_dir and [http] public_url when the file is read.
    folder: str = field(default="", metadata={"internal": True})
    base_url: str = field(default="", metadata={"internal": True})


@dataclass(frozen=True)
class MUCConfig:
    max_rooms_per_user: int = _setting(
        20, integer(1, 100_000), "chat rooms one account may have created that exist at once (XEP-0045)"
    )
    max_occupants: int = _setting(
        200, integer(2, 100_000), "most occupants in one room, whatever its owner configures"
    )
    default_history: int = _setting(20, integer(0, 10_000), "messages a new room keeps for the occupants who join")
    max_history: int = _setting(100, integer(0, 10_000), "most messages a room keeps for new occupants")
    max_persistent_rooms: int = _setting(
        1000, integer(0, 10_000_000), "persistent rooms the service keeps (each loaded at start)"
    )
    max_affiliations: int = _setting(
        1000, integer(1, 1_000_000), "owners, admins, members and outcasts one room may list"
    )
    max_archived_messages: int = _setting(
        10000, integer(0, 10_000_000), "messages a persistent room's archive keeps (XEP-0313); 0: no room archives"
    )


@dataclass(frozen=True)
class PushConfig:
    include_body: bool = _setting(
        False, boolean, "put the message's body in push notifications (XEP-0357: it passes the app server and "
        "the phone maker's push service)"
    )
    include_sender: bool = _setting(False, boolean, "put the sender's JID in push notifications (as above)")
    max_registrations: int = _setting(
        10, integer(1, 1000), "app server registrations (JID and node) one account may have (XEP-0357)"
    )
    min_interval_ms: int = _setting(
        1000, integer(0, 3_600_000), "shortest time between two notifications to one device; what arrives "
        "meanwhile goes in the next one"
    )


def _domain_names(value: Any) -> tuple[str, ...]:
    domains = []
    for item in names("domain names")(value):
        try:
            parsed = parse_jid(item)
        except InvalidFormat:
            raise ValueError(f"{item!r} is not a valid domain name") from None
        if parsed.user is not None or parsed.resource is not None:
            raise ValueError(f"{item!r} is not a bare domain name")
        domains.append(parsed.host)
    return tuple(domains)


def _s2s_hosts(value: Any) -> tuple[tuple[str, str], ...]:
    """[xmpp.s2s.hosts]: domain = "host[:port]" (checked again, fully, by s2s/resolve.py)."""
    if not isinstance(value, dict):
        raise ValueError('must be a table of domain = "host[:port]"')
    pairs = []
    for domain, target in value.items():
        if not isinstance(target, str) or not target.strip():
            raise ValueError(f"{domain!r}: must be a \"host\" or \"host:port\" string")
        try:
            parsed = parse_jid(domain)
        except InvalidFormat:
            raise ValueError(f"{domain!r} is not a valid domain name") from None
        pairs.append((parsed.host, target.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class S2SConfig:
    interface: str = _setting("127.0.0.1", _interface, "address for other servers' connections (RFC 6120 s2s)")
    port: int = _setting(5269, integer(-1, 65535), "server-to-server port; 0 picks a free one, -1 turns s2s off")
    direct_tls_port: int = _setting(
        -1, integer(-1, 65535), "XEP-0368 direct TLS port for other servers (_xmpps-server); 0 picks a free one, -1 off"
    )
    require_encryption: bool = _setting(True, boolean, "STARTTLS before anything else, both ways")
    require_valid_certificates: bool = _setting(
        False, boolean, "only peers whose certificate verifies for their domain (SASL EXTERNAL); no dialback"
    )
    ca_file: str = _setting("", settings.text, "PEM file of trusted CAs for peers' certificates; empty: the system's")
    max_streams_per_domain: int = _setting(8, integer(1, 10_000), "incoming streams one remote domain may hold")
    max_queued_stanzas: int = _setting(
        1000, integer(1, 1_000_000), "stanzas waiting for one remote domain's stream; more bounce"
    )
    max_stanza_bytes: int = _setting(262144, integer(1024, 16 * 1024 * 1024), "largest stanza from a peer")
    idle_timeout: int = _setting(600, integer(10, 86400), "seconds of silence before a stream is closed")
    connect_timeout: int = _setting(
        25, integer(1, 29), "seconds to resolve, connect and authenticate before queued stanzas bounce"
    )
    auth_timeout: int = _setting(60, integer(5, 3600), "seconds an incoming stream has to authenticate")
    max_unauthenticated_per_ip: int = _setting(
        32, integer(1, 100_000), "incoming streams one address may hold open before they authenticate"
    )
    max_outbound_bytes: int = _setting(
        8 * 1024 * 1024, integer(65536, 1024**3), "data a peer has not read before its stream ends (policy-violation)"
    )
    deny: tuple[str, ...] = _setting((), _domain_names, "remote domains refused both ways")
    hosts: tuple[tuple[str, str], ...] = _setting(
        (), _s2s_hosts, 'where to reach a domain instead of DNS: domain = "host[:port]"'
    )


@dataclass(frozen=True)
class XMPPConfig:
    c2s: C2SConfig = field(default_factory=C2SConfig)
    components: ComponentListenerConfig = field(default_factory=ComponentListenerConfig)
    s2s: S2SConfig = field(default_factory=S2SConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    pep: PEPConfig = field(default_factory=PEPConfig)
    vcard: VCardConfig = field(default_factory=VCardConfig)
    mam: MAMConfig = field(default_factory=MAMConfig)
    muc: MUCConfig = field(default_factory=MUCConfig)
    external_services: ExternalServicesConfig = field(default_factory=ExternalServicesConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    push: PushConfig = field(default_factory=PushConfig)


@dataclass(frozen=True)
class TLSConfig:
    certificate: str = _setting("", settings.text, "PEM certificate chain; empty: self-signed on first start")
    private_key: str = _setting("", settings.text, "PEM private key for the certificate")


@dataclass(frozen=True)
class StoreConfig:
    backend: str = _setting("sqlite", choice("sqlite", "postgresql"), "storage engine")
    path: str = _setting("sns-xmpp.sqlite3", settings.text, "SQLite file, relative to server.data_dir")
    dsn: str = _setting("", settings.text, "PostgreSQL connection string (libpq), for backend = 'postgresql'",
                        secret=True)


@dataclass(frozen=True)
class HTTPConfig:
    interface: str = _setting("127.0.0.1", _interface, "address for the HTTP side")
    port: int = _setting(5280, integer(0, 65535), "HTTP port; 0 picks a free one")
    public_url: str = _setting("http://localhost:5280", _url, "URL clients use to reach the HTTP side")
    header_timeout: int = _setting(20, integer(1, 3600), "seconds a request has to send all its headers")
    body_timeout: int = _setting(30, integer(1, 3600), "seconds a request has to send its body after the headers")
    max_connections_per_ip: int = _setting(512, integer(1, 1_000_000), "open HTTP connections one address may hold")
    websocket: bool = _setting(True, boolean, "XMPP over WebSocket (RFC 7395) at /xmpp-websocket")
    websocket_see_other: str = _setting(
        "", lambda value: _ws_url(value) if value else "",
        "a ws:// or wss:// URL WebSocket clients are sent to instead (RFC 7395 3.6.1 see-other-uri); empty: none",
    )
    trusted_proxies: tuple[str, ...] = _setting(
        (), lambda value: _ip_addresses(value),
        "addresses of TLS-terminating reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are believed",
    )
    proxy_protocol_from: tuple[str, ...] = _setting((), _networks, _PROXY_PROTOCOL_FROM)
    auth_secret: str = _setting(
        "", lambda value: _auth_secret(value),
        "the secret an existing Prosody sends (HTTP Basic) to /auth/check and /auth/exists; empty: those are off",
        secret=True,
    )


def _auth_secret(value: Any) -> str:
    secret = settings.text(value)
    if secret and len(secret) < 16:
        raise ValueError("must be at least 16 characters (or empty: no HTTP authentication endpoint)")
    return secret


def _ws_url(value: Any) -> str:
    text = settings.text(value)
    if not (text.startswith("ws://") or text.startswith("wss://")):
        raise ValueError("must be a ws:// or wss:// URL")
    return text


def _ip_addresses(value: Any) -> tuple[str, ...]:
    addresses = []
    for item in names("IP addresses")(value):
        try:
            addresses.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address") from None
    return tuple(addresses)


def _loopback(value: Any) -> str:
    address = _interface(value)
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError("must be a loopback address: the console is for this machine only")
    return address


@dataclass(frozen=True)
class ManholeConfig:
    enabled: bool = _setting(False, boolean, "run the operators' SSH console")
    interface: str = _setting("127.0.0.1", _loopback, "loopback address for the console")
    port: int = _setting(2222, integer(0, 65535), "console port")
    user: str = _setting("admin", settings.text, "the SSH user name")
    authorized_keys: str = _setting("", settings.text, "OpenSSH authorized_keys file of the operators' keys")
    password_hash: str = _setting("", settings.text, "pbkdf2-sha256 hash from `sns-xmpp-admin manhole-hash`",
                                  secret=True)


def _component_jid(value: Any) -> str:
    text = settings.text(value)
    if not text:
        return ""
    try:
        parsed = parse_jid(text)
    except InvalidFormat:
        raise ValueError(f"{text!r} is not a valid domain name") from None
    if parsed.user is not None or parsed.resource is not None:
        raise ValueError(f"{text!r} is not a bare domain name such as sites.example.org")
    return parsed.host


def _component_secret(value: Any) -> str:
    secret = settings.text(value)
    if len(secret) < 16:
        raise ValueError("must be at least 16 characters")
    return secret


@dataclass(frozen=True)
class SitesComponentConfig:
    jid: str = _setting(
        "", _component_jid, "the XEP-0114 component JID under which an existing server's clients find the sites; "
        "empty: not connected"
    )
    host: str = _setting("127.0.0.1", _interface, "address of the existing server's component listener")
    port: int = _setting(5347, integer(1, 65535), "its port")
    secret: str = _setting("", _component_secret, "the component's shared secret there", secret=True)


@dataclass(frozen=True)
class LogConfig:
    level: str = _setting("info", choice("debug", "info", "warn", "error", "critical"), "lowest level logged")
    format: str = _setting("text", choice("text", "json"), "text lines, or one JSON object per event")


def _redis_url(value: Any) -> str:
    text = settings.text(value)
    if text and not (text.startswith("redis://") or text.startswith("unix://")):
        raise ValueError("must be a redis:// or unix:// URL, or empty for one node on its own")
    return text


def _node_id(value: Any) -> str:
    text = settings.text(value)
    if text and not all(c.isalnum() or c in "-_." for c in text):
        raise ValueError("may hold only letters, digits, '-', '_' and '.'")
    if len(text) > 64:
        raise ValueError("must be at most 64 characters")
    return text


@dataclass(frozen=True)
class ClusterConfig:
    """Several nodes serving the same domains as one server (docs/scaling.md)."""

    redis_url: str = _setting(
        "", _redis_url, "Redis holding the live state the nodes share; empty: this node runs on its own",
        secret=True,
    )
    node_id: str = _setting("", _node_id, "this node's name in the cluster, unique; empty: host name and process id")
    heartbeat_interval: int = _setting(2, integer(1, 60), "seconds between this node's heartbeats")
    node_timeout: int = _setting(
        10, integer(3, 600), "seconds without a heartbeat before a node's sessions are taken as gone",
    )
    reuse_port: bool = _setting(
        True, boolean, "share the client, HTTP and s2s ports with the other nodes on this machine (SO_REUSEPORT)",
    )
    key_prefix: str = _setting("sns:", settings.non_empty_text, "prefix of every Redis key this cluster uses")

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    xmpp: XMPPConfig = field(default_factory=XMPPConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    log: LogConfig = field(default_factory=LogConfig)
    manhole: ManholeConfig = field(default_factory=ManholeConfig)
    sites_component: SitesComponentConfig = field(default_factory=SitesComponentConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # Each site's table is checked by the site's own plugin, which knows its keys.
    sites: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # XEP-0114 components: domain -> its own secret.
    components: Mapping[str, str] = field(default_factory=dict)
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    @property
    def data_dir(self) -> Path:
        return self.base_dir / self.server.data_dir

    @property
    def store_path(self) -> Path:
        return self.data_dir / self.store.path


def _build(cls: type, raw: Mapping[str, Any], where: str, base_dir: Path) -> Any:
    """The dataclass *cls* from its table *raw*, whose dotted name is *where*."""
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    secrets = [name for name, declared in fields.items() if declared.metadata.get("secret")]
    settings.refuse_unknown(raw, [*fields, *(f"{name}_file" for name in secrets)], where=where)
    values: dict[str, Any] = {}
    for key, declared in fields.items():
        if key in secrets:
            given = settings.secret(raw, key, where=where, base_dir=base_dir)
            if given is not None:
                values[key] = settings.checked(*given, declared.metadata["check"])
            continue
        if key not in raw:
            continue
        value, dotted = raw[key], settings.dotted(where, key)
        section = declared.default_factory
        if isinstance(section, type) and dataclasses.is_dataclass(section):
            if not isinstance(value, dict):
                raise ConfigError(dotted, "must be a table")
            values[key] = _build(section, value, dotted, base_dir)
        elif key == "sites":
            values[key] = _sites(value, dotted)
        elif key == "components":
            values[key] = _components(value, dotted, base_dir)
        else:
            values[key] = settings.checked(dotted, value, declared.metadata["check"])
    return cls(**values)


def _sites(value: Any, dotted: str) -> Mapping[str, Mapping[str, Any]]:
    if not isinstance(value, dict):
        raise ConfigError(dotted, "must be a table")
    for site_id, table in value.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{dotted}.{site_id}", "must be a table")
    return dict(value)


def _components(value: Any, dotted: str, base_dir: Path) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(dotted, "must be a table of [components.\"<domain>\"] tables")
    secrets: dict[str, str] = {}
    for domain, table in value.items():
        where = f"{dotted}.{domain}"
        try:
            parsed = parse_jid(domain)
        except (InvalidFormat, ValueError):
            raise ConfigError(where, "is not a valid domain name") from None
        if parsed.user is not None or parsed.resource is not None:
            raise ConfigError(where, "is not a bare domain name")
        if not isinstance(table, dict):
            raise ConfigError(where, "must be a table with 'secret' or 'secret_file'")
        settings.refuse_unknown(table, ("secret", "secret_file"), where=where)
        given = settings.secret(table, "secret", where=where, base_dir=base_dir)
        if given is None:
            raise ConfigError(f"{where}.secret", "required: every component has its own secret, there is no default")
        secret = given[1]
        if not isinstance(secret, str) or len(secret) < 16:
            raise ConfigError(f"{where}.secret", "must be at least 16 characters")
        secrets[parsed.host] = secret
    return secrets


def parse_config(text: str, base_dir: Path = Path(".")) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("(file)", f"not valid TOML: {error}") from None
    config: Config = _build(Config, raw, "", base_dir)
    config = dataclasses.replace(config, base_dir=base_dir)
    upload = dataclasses.replace(config.xmpp.upload, folder=str(config.data_dir / config.xmpp.upload.directory),
                                 base_url=f"{config.http.public_url}/upload")
    config = dataclasses.replace(config, xmpp=dataclasses.replace(config.xmpp, upload=upload))
    c2s = config.xmpp.c2s
    if c2s.allow_plain_without_tls and c2s.require_tls:
        raise ConfigError(
            "xmpp.c2s.allow_plain_without_tls", "needs xmpp.c2s.require_tls = false"
        )
    if c2s.max_offline_bytes >= c2s.max_outbound_bytes:
        # Offline messages go out at once at login: they must fit in what a stream may hold.
        raise ConfigError("xmpp.c2s.max_offline_bytes", "must be less than xmpp.c2s.max_outbound_bytes")
    if config.xmpp.upload.quota_bytes < config.xmpp.upload.max_file_bytes:
        raise ConfigError("xmpp.upload.quota_bytes", "must be at least xmpp.upload.max_file_bytes")
    for domain in config.components:
        if domain in config.server.domains:
            raise ConfigError(f"components.{domain}", "a component cannot take a hosted domain")
    if config.store.backend == "postgresql" and not config.store.dsn:
        raise ConfigError("store.dsn", "required for backend = 'postgresql' (or give store.dsn_file)")
    external = config.xmpp.external_services
    if any(service.restricted for service in external.services) and not external.turn_secret:
        raise ConfigError("xmpp.external_services.turn_secret",
                          "a restricted service needs the TURN secret (or give turn_secret_file)")
    manhole = config.manhole
    if manhole.enabled and not (manhole.authorized_keys or manhole.password_hash):
        raise ConfigError("manhole.authorized_keys", "the console needs authorized_keys or a password_hash")
    cluster = config.cluster
    if cluster.enabled and cluster.node_timeout < 2 * cluster.heartbeat_interval:
        raise ConfigError("cluster.node_timeout", "must be at least twice cluster.heartbeat_interval")
    if cluster.enabled and config.store.backend != "postgresql":
        raise ConfigError("cluster.redis_url",
                          "a cluster keeps its durable state in PostgreSQL: needs store.backend = 'postgresql'")
    if config.sites_component.jid and not config.sites_component.secret:
        raise ConfigError("sites_component.secret", "required with sites_component.jid (or give secret_file)")
    if bool(config.tls.certificate) != bool(config.tls.private_key):
        raise ConfigError("tls.private_key", "give both tls.certificate and tls.private_key, or neither")
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file; relative paths in it are taken from the working directory."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError("(file)", f"cannot read {path}: {error.strerror}") from None
    return parse_config(text, Path("."))
