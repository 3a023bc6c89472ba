"""Throttle fairness with a real client (slixmpp over TLS): expired credentials are no guess."""

from __future__ import annotations

import time

import pytest_twisted

from tests.conftest import DEMO_SITE, make_config
from tests.e2e.test_social_login import HMAC_SITE, failure_text
from tests.xmppclient import Client, wait


@pytest_twisted.ensureDeferred
async def test_fifteen_expired_logins_then_a_fresh_one_from_the_same_address(start_server, tmp_path) -> None:
    """A phone retrying its expired (validly signed) social credentials 15 times from 127.0.0.1 is
    told 'expired' each time, at once, and the fresh credentials then log in: expired credentials
    neither slow nor block (before, the 4th answer waited 0.25 s, doubling, and the 10th blocked)."""
    server = await start_server(make_config(tmp_path, DEMO_SITE + HMAC_SITE))
    site = server.server.sites.get("sns-example")
    from twisted.internet import reactor

    now = int(reactor.seconds())
    slowest = 0.0
    for attempt in range(15):
        identifier, token = site.mint("fern", f"s{attempt}", now - 30)
        started = time.monotonic()
        text = await failure_text(server, f"{identifier}@sns-example", token)
        slowest = max(slowest, time.monotonic() - started)
        assert text.startswith("expired: "), text
    # Each answer includes a TLS handshake on a shared 2-core machine; a slowed one took 8 s.
    assert slowest < 2.0, f"an expired login took {slowest:.2f} s"

    identifier, token = site.mint("fern", "fresh", now + 600)
    client = Client("x@localhost", token, username=f"{identifier}@sns-example")
    await wait(client.log_in(server.c2s_port))
    assert client.boundjid.bare == "fern\\40sns-example@localhost"
    await wait(client.log_out())
