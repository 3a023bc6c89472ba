"""The node's connections to Redis, on txredisapi (Twisted-native: the server keeps its reactor).

Three connections, each reconnecting on its own: one for commands (pipelined: txredisapi sends a
command as soon as it is called and matches replies in order), one subscribed to the directory's
channel, and one for the inbox's blocking reads, which would hold up the commands behind them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred

from sns_xmpp.observe.log_gate import GatedLogger

log = GatedLogger()


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int | None
    password: str | None
    username: str | None


def parse_redis_url(url: str) -> RedisAddress:
    """redis://[[user]:password@]host[:port][/db]"""
    parts = urlsplit(url)
    db = parts.path.strip("/")
    return RedisAddress(parts.hostname or "127.0.0.1", parts.port or 6379, int(db) if db else None,
                        unquote(parts.password) if parts.password else None,
                        unquote(parts.username) if parts.username else None)


def _subscriber_protocol(channels: list[str], on_message: Callable[[str, str], None],
                         on_subscribed: Callable[[], object]) -> type:
    """txredisapi's subscriber, which subscribes again after each reconnection and hands each
    message on. (txredisapi is imported here, not with this module: importing it installs
    Twisted's default reactor, and importing a module of ours changes nothing in the process.)"""
    import txredisapi

    class Subscriber(txredisapi.SubscriberProtocol):
        def connectionMade(self) -> Any:  # noqa: N802 - Twisted's name
            made = super().connectionMade()

            def subscribe(_: object) -> None:
                self.subscribe(channels).addCallback(lambda _: on_subscribed())

            if isinstance(made, Deferred):
                made.addCallback(subscribe)
            else:
                subscribe(None)
            return made

        def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:  # noqa: N802
            try:
                on_message(reply_text(channel), reply_text(message))
            except Exception:
                log.failure("cluster.message_failed")

    return Subscriber


def reply_text(value: Any) -> str:
    """A value of a Redis reply as text (hiredis and the pure-Python parser give bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def reply_pairs(flat: Any) -> dict[str, str]:
    """A reply of field-value pairs (HGETALL, a script's flat list) as a dict of texts."""
    if isinstance(flat, dict):
        return {reply_text(k): reply_text(v) for k, v in flat.items()}
    values = [reply_text(v) for v in flat or []]
    return dict(zip(values[::2], values[1::2], strict=False))


def connect(url: str) -> Any:
    """A lazy, reconnecting command connection (txredisapi's handler)."""
    import txredisapi

    address = parse_redis_url(url)
    return txredisapi.lazyConnection(address.host, address.port, address.db, reconnect=True,
                                     password=address.password, username=address.username,
                                     convertNumbers=False)


def subscribe(url: str, channels: list[str], on_message: Callable[[str, str], None],
              on_subscribed: Callable[[], object]) -> Any:
    """A reconnecting subscriber to *channels*; *on_subscribed* after each (re)subscription,
    when what was missed while away must be read again."""
    import txredisapi

    address = parse_redis_url(url)
    factory = txredisapi.SubscriberFactory(isLazy=True)
    factory.protocol = _subscriber_protocol(channels, on_message, on_subscribed)
    factory.password, factory.username = address.password, address.username
    factory.reconnect = True
    factory.startConnecting(txredisapi._makeEndpoint(address.host, address.port))
    return factory
