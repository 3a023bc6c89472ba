"""External service discovery (XEP-0215) against the daemon, between a social user (the demo
site's) and a local user: the configured STUN/TURN services, with TURN REST credentials a relay
such as coturn (use-auth-secret) accepts. slixmpp has no XEP-0215 plugin: its generic IQ carries
the XEP's requests."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import os
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from slixmpp import JID
from slixmpp.exceptions import IqError

from tests.clients import require_client
from tests.conftest import DEMO_SITE, free_port, make_config
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
    assert who == bare_jid.replace("\\", "%5C") and now + lifetime - 60 <= int(expiry) <= now + lifetime + 60
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
    info = await wait(rosa.plugin["xep_0030"].get_info(jid=JID("localhost")))
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


@contextlib.contextmanager
def coturn(folder: Path, port: int) -> Iterator[Path]:
    """coturn on loopback with the TURN REST API on (use-auth-secret) and TURN_SECRET; its log."""
    command = require_client("turnserver", "coturn", also=("turnutils_uclient",))
    log = folder / "turnserver.log"
    with log.open("wb") as output:
        relay = subprocess.Popen(
            [command, "-n", "--no-cli", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
             f"--listening-port={port}", "--use-auth-secret", f"--static-auth-secret={TURN_SECRET}",
             "--realm=localhost", "--no-tls", "--no-dtls", "--allow-loopback-peers", "--log-file=stdout",
             "--verbose", f"--pidfile={folder / 'turnserver.pid'}", f"--userdb={folder / 'turndb'}"],
            stdout=output, stderr=subprocess.STDOUT)
    try:
        yield log
    finally:
        relay.terminate()
        relay.wait(timeout=10)


async def allocate(port: int, username: str, password: str) -> None:
    """A TURN allocation at the relay on *port* with these credentials (turnutils_uclient, coturn's
    own client), off the reactor's thread."""
    from twisted.internet import reactor
    from twisted.internet.utils import getProcessOutputAndValue

    client = require_client("turnutils_uclient", "coturn")
    await getProcessOutputAndValue(
        require_client("timeout", "coreutils"),
        ["10", client, "-n", "1", "-m", "1", "-u", username, "-w", password, "-p", str(port), "-e", "127.0.0.1",
         "-r", str(free_port()), "127.0.0.1"],
        env=dict(os.environ), reactor=reactor)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_coturn_accepts_the_credentials_and_refuses_a_forged_password(
        start_server: Callable, tmp_path: Path) -> None:
    """The credentials the server hands the social user rosa get her a TURN allocation at coturn
    (use-auth-secret, the same secret); the same username with a password not made with the
    secret does not. coturn's verbose log says which allocations succeeded, for which user."""
    from tests.e2e.test_omemo_profanity import eventually

    relay_port = free_port()
    services = SERVICES.replace("host = \"turn.localhost\"\nport = 3478", f"host = \"127.0.0.1\"\nport = {relay_port}")
    server = await start_server(make_config(tmp_path, DEMO_SITE + services))
    credentials = await demo_credentials(server, "rosa")
    rosa = Client(f"{credentials['jid']}/phone", credentials["password"], mechanism="PLAIN")
    await wait(rosa.log_in(server.c2s_port))
    answer = await extdisco(rosa, f"<services xmlns='{EXTDISCO}' type='turn'/>")
    [turn] = list(answer.find(f"{{{EXTDISCO}}}services"))  # type: ignore[arg-type]
    username, password = turn.get("username"), turn.get("password")
    assert username and password and turn.get("host") == "127.0.0.1" and turn.get("port") == str(relay_port)
    await wait(rosa.log_out())

    with coturn(tmp_path, relay_port) as log:
        success = f"user <{username}>: incoming packet ALLOCATE processed, success"

        def text() -> str:
            return log.read_text(errors="replace")

        await eventually(lambda: "UDP listener opened" in text(), text)
        forged = base64.b64encode(hmac.new(b"not the secret", username.encode(), hashlib.sha1).digest()).decode()
        await allocate(relay_port, username, forged)  # coturn's client gives up after the 401s
        await eventually(lambda: f"user <{username}>: incoming packet message processed, error 401" in text(), text)
        assert success not in text(), "a password not made with the secret got an allocation"
        await allocate(relay_port, username, password)
        await eventually(lambda: success in text(), lambda: text()[-3000:])
