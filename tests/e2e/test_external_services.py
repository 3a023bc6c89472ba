"""External service discovery (XEP-0215) against the daemon, between a social user (the demo
site's) and a local user: the configured STUN/TURN services, with TURN REST credentials a relay
such as coturn (use-auth-secret) accepts. slixmpp has no XEP-0215 plugin: its generic IQ carries
the XEP's requests."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest_twisted
from slixmpp.exceptions import IqError

from tests.conftest import DEMO_SITE, make_config
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

EXTDISCO = "urn:xmpp:extdisco:2"
TURN_SECRET = "a TURN secret shared with coturn"


SERVICES = textwrap.dedent(f"""
    [xmpp.external_services]
    turn_secret = "{TURN_SECRET}"
    credential_lifetime = 3600

    [[xmpp.external_services.services]]
    type = "stun"
    host = "stun.localhost"
    port = 3478
    transport = "udp"

    [[xmpp.external_services.services]]
    type = "turn"
    host = "turn.localhost"
    port = 3478
    transport = "udp"
    restricted = true
""")


async def extdisco(client: Client, payload: str, to: str = "localhost") -> ET.Element:
    iq = client.make_iq_get(ito=to)
    iq.append(ET.fromstring(payload))
    return (await wait(iq.send())).xml


def check_turn_rest(service: ET.Element, bare_jid: str, now: float, lifetime: int) -> None:
    """The TURN REST API's credentials, as coturn's use-auth-secret checks them."""
    username, password = service.get("username"), service.get("password")
    assert username is not None and password is not None
    expiry, _, who = username.partition(":")
    assert who == bare_jid and now + lifetime - 60 <= int(expiry) <= now + lifetime + 60
    expected = base64.b64encode(hmac.new(TURN_SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()
    assert hmac.compare_digest(password, expected)
    assert service.get("expires") == datetime.datetime.fromtimestamp(int(expiry), datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


@pytest_twisted.ensureDeferred
async def test_external_services_from_the_configuration_with_turn_rest_credentials(
        start_server: Callable, tmp_path: Path) -> None:
    """XEP-0215's examples against the daemon: the server announces urn:xmpp:extdisco:2; the social
    user's <services/> lists the configured STUN and TURN servers, the restricted TURN one with
    TURN REST credentials for her bare JID (an HMAC-SHA1 of the shared secret that a relay can
    check); type='turn' selects; <credentials/> for the TURN host answers credentials for the
    local user bob too, and for a host that is not configured, item-not-found."""
    from twisted.internet import reactor

    server = await start_server(make_config(tmp_path, DEMO_SITE + SERVICES))
    credentials = await demo_credentials(server, "rosa")
    rosa_jid = credentials["jid"]
    await server.add_user("bob@localhost", "secret")
    rosa = Client(f"{rosa_jid}/phone", credentials["password"], mechanism="PLAIN")
    bob = Client("bob@localhost/desk", "secret")
    for client in (rosa, bob):
        await wait(client.log_in(server.c2s_port))
    info = await wait(rosa.plugin["xep_0030"].get_info(jid="localhost"))
    assert EXTDISCO in info["disco_info"]["features"]

    answer = await extdisco(rosa, f"<services xmlns='{EXTDISCO}'/>")
    services = answer.find(f"{{{EXTDISCO}}}services")
    assert services is not None
    stun, turn = list(services)
    assert (stun.get("type"), stun.get("host"), stun.get("port"), stun.get("transport")) == (
        "stun", "stun.localhost", "3478", "udp")
    assert stun.get("username") is None and stun.get("restricted") is None
    assert (turn.get("type"), turn.get("host"), turn.get("restricted")) == ("turn", "turn.localhost", "1")
    check_turn_rest(turn, rosa_jid, reactor.seconds(), 3600)

    only_turn = (await extdisco(rosa, f"<services xmlns='{EXTDISCO}' type='turn'/>")).find(f"{{{EXTDISCO}}}services")
    assert only_turn is not None and [s.get("host") for s in only_turn] == ["turn.localhost"]

    granted = await extdisco(bob, f"<credentials xmlns='{EXTDISCO}'><service host='turn.localhost' type='turn'/>"
                                  "</credentials>")
    [service] = list(granted.find(f"{{{EXTDISCO}}}credentials"))  # type: ignore[arg-type]
    check_turn_rest(service, "bob@localhost", reactor.seconds(), 3600)
    try:
        await extdisco(bob, f"<credentials xmlns='{EXTDISCO}'><service host='elsewhere' type='turn'/></credentials>")
        raise AssertionError("credentials for a service that is not configured")
    except IqError as refused:
        assert refused.iq["error"]["condition"] == "item-not-found"
    for client in (rosa, bob):
        await wait(client.log_out())
