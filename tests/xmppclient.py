"""A real XMPP client for the end-to-end tests: slixmpp on the asyncio loop the reactor runs on."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from typing import Any, TypeVar

import slixmpp
from twisted.internet.defer import Deferred

T = TypeVar("T")
TIMEOUT = 15


def wait(awaitable: Awaitable[T], timeout: float = TIMEOUT) -> Deferred[T]:
    """Let a Twisted coroutine await an asyncio awaitable (with a bound on the wait)."""
    return Deferred.fromFuture(asyncio.ensure_future(asyncio.wait_for(awaitable, timeout)))


class Client(slixmpp.ClientXMPP):
    """slixmpp with the test server's self-signed certificate accepted and queues of what arrives."""

    def __init__(self, jid: str, password: str, mechanism: str | None = None, username: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(jid, password, sasl_mech=mechanism, **kwargs)
        if username is not None:  # a SASL user name other than the JID's localpart
            self.credentials["username"] = username
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.ssl_context = context
        self.enable_direct_tls = False
        self.messages: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.presences: asyncio.Queue[slixmpp.Presence] = asyncio.Queue()
        self.subscription_requests: asyncio.Queue[slixmpp.Presence] = asyncio.Queue()
        self.auth_failures: asyncio.Queue[Any] = asyncio.Queue()
        self.stream_errors: asyncio.Queue[Any] = asyncio.Queue()
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler("presence_available", self.presences.put_nowait)
        self.add_event_handler("presence_unavailable", self.presences.put_nowait)
        self.add_event_handler("presence_subscribe", self.subscription_requests.put_nowait)
        self.add_event_handler("failed_auth", self.auth_failures.put_nowait)
        self.add_event_handler("stream_error", self.stream_errors.put_nowait)
        # Subscription answers are the test's to give, not slixmpp's automatic ones.
        self.roster.auto_authorize = None
        self.roster.auto_subscribe = False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.register_plugin("xep_0203")

    async def log_in(self, port: int, *, presence: bool = True, direct_tls: bool = False) -> None:
        session = asyncio.ensure_future(self.wait_until("session_start", TIMEOUT))
        if direct_tls:
            self.enable_direct_tls = True
            self.enable_starttls = False
        self.connect(host="127.0.0.1", port=port)
        # slixmpp tries the next mechanism after a failure; only running out of them is final.
        failure = asyncio.ensure_future(self.wait_until("failed_all_auth", TIMEOUT))
        done, _ = await asyncio.wait([session, failure], timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        failure.cancel()
        if session not in done:
            session.cancel()
            failures = [str(self.auth_failures.get_nowait()) for _ in range(self.auth_failures.qsize())]
            raise AssertionError(f"login did not complete: {failures}")
        await self.get_roster()
        if presence:
            self.send_presence()

    async def log_out(self) -> None:
        self.disconnect()
        await self.wait_until("disconnected", TIMEOUT)

    async def next_message(self) -> slixmpp.Message:
        return await asyncio.wait_for(self.messages.get(), TIMEOUT)
