"""External service discovery (XEP-0215) with Twisted's doubles: the XEP's requests (all services,
services of a type, credentials) answered from the configuration, TURN REST credentials, the
errors, and the configuration's own errors, one line naming the key."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.words.protocols.jabber.error import StanzaError
from wokkel.generic import parseXml

from sns_xmpp.auth.checker import LoginResult
from sns_xmpp.config import ExternalService, ExternalServicesConfig, XMPPConfig, parse_config
from sns_xmpp.settings import ConfigError
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.features.built_in import install_features
from sns_xmpp.xmpp.features.external_services import turn_rest_credentials
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.synchronous_store import SynchronousStore
from tests.unit.test_limits import connect, factory_and_clock
from tests.unit.test_negotiation import HEADER, output

EXTDISCO = "urn:xmpp:extdisco:2"
SECRET = "coturn's static-auth-secret, shared"
NOW = 1_700_000_000
SERVICES = ExternalServicesConfig(
    services=(ExternalService("stun", "stun.shakespeare.lit", 9998, "udp"),
              ExternalService("turn", "turn.shakespeare.lit", 9999, "udp", restricted=True),
              ExternalService("turn", "turn.shakespeare.lit", 443, "tcp", restricted=True, name="TURN over TCP")),
    turn_secret=SECRET, credential_lifetime=3600)


def bard(config: ExternalServicesConfig = SERVICES) -> tuple[SessionManager, ClientStream, StringTransport]:
    factory, _ = factory_and_clock()
    clock = MemoryReactorClock()
    clock.advance(NOW)
    store = SynchronousStore()
    assert store.database.create_account("bard@localhost", (), NOW)
    sessions = SessionManager(["localhost"], store, clock,  # type: ignore[arg-type]
                              lambda stanza: sessions.deliver(stanza))
    install_features(sessions, config=XMPPConfig(external_services=config))
    stream, transport = connect(factory)
    stream.dataReceived(HEADER.format(to="localhost").encode())
    sessions.bind(stream, LoginResult("bard@localhost", "PLAIN"), "globe")
    output(transport)
    return sessions, stream, transport


def expected_turn(port: int, transport: str, name: str = "") -> str:
    username = f"{NOW + 3600}:bard@localhost"
    password = base64.b64encode(hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()
    named = f" name='{name}'" if name else ""
    return (f"<service type='turn' host='turn.shakespeare.lit' port='{port}' transport='{transport}'{named}"
            f" restricted='1' username='{username}' password='{password}' expires='2023-11-14T23:13:20Z'/>")


def test_the_xeps_requests_are_answered_from_the_configuration() -> None:
    """Examples 1 and 2: all services, in the configuration's order, the restricted TURN ones with
    TURN REST credentials for the asker's bare JID that expire after the configured lifetime
    (XEP-0082 UTC); examples 3 and 4: type='turn' selects; examples 6 and 7: credentials for
    one host and type, and a port narrowing them."""
    _sessions, stream, transport = bard()
    stream.dataReceived(f"<iq to='localhost' type='get' id='ul2bc7y6'><services xmlns='{EXTDISCO}'/></iq>"
                        .encode())
    assert output(transport) == (
        "<iq type='result' id='ul2bc7y6' to='bard@localhost/globe' from='localhost'>"
        f"<services xmlns='{EXTDISCO}'>"
        "<service type='stun' host='stun.shakespeare.lit' port='9998' transport='udp'/>"
        + expected_turn(9999, "udp") + expected_turn(443, "tcp", "TURN over TCP") + "</services></iq>")

    stream.dataReceived(f"<iq to='localhost' type='get' id='yv2c19f7'><services xmlns='{EXTDISCO}' "
                        "type='turn'/></iq>".encode())
    answer = output(transport)
    assert f"<services xmlns='{EXTDISCO}' type='turn'>" in answer and "stun.shakespeare.lit" not in answer
    assert answer.count("<service ") == 2

    stream.dataReceived(f"<iq type='get' id='xi2cax48'><credentials xmlns='{EXTDISCO}'>"
                        "<service host='turn.shakespeare.lit' type='turn' port='9999'/></credentials></iq>".encode())
    assert output(transport) == (
        "<iq type='result' id='xi2cax48' to='bard@localhost/globe'>"
        f"<credentials xmlns='{EXTDISCO}'>{expected_turn(9999, 'udp')}</credentials></iq>")
    stream.dataReceived(f"<iq type='get' id='both'><credentials xmlns='{EXTDISCO}'>"
                        "<service host='turn.shakespeare.lit' type='turn'/></credentials></iq>".encode())
    assert output(transport).count("<service ") == 2  # section 3.3: each port of the host


def test_errors() -> None:
    """Credentials for a service not configured: item-not-found (3.3); a credentials request that
    names no host and type, or a set: bad-request; anyone but an account of the domain asked (a
    remote server's user, a component): forbidden. With no services configured, the answer is an
    empty list, and the feature is announced in the server's disco#info either way."""
    sessions, stream, transport = bard()
    for request, condition in (
            (f"<credentials xmlns='{EXTDISCO}'><service host='elsewhere.lit' type='turn'/></credentials>",
             "item-not-found"),
            (f"<credentials xmlns='{EXTDISCO}'><service host='turn.shakespeare.lit'/></credentials>", "bad-request"),
            (f"<credentials xmlns='{EXTDISCO}'/>", "bad-request")):
        stream.dataReceived(f"<iq type='get' id='e'>{request}</iq>".encode())
        assert f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in output(transport), request
    stream.dataReceived(f"<iq type='set' id='s'><services xmlns='{EXTDISCO}'/></iq>".encode())
    assert "<bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in output(transport)

    answer = sessions.hooks.server_iqs[(EXTDISCO, "services")]
    for sender in ("romeo@montague.lit/orchard", "gateway.localhost", "bard@montague.lit/globe"):
        with pytest.raises(StanzaError) as refused:
            answer(parseXml(f"<iq xmlns='jabber:client' type='get' id='r' from='{sender}' to='localhost'>"
                            f"<services xmlns='{EXTDISCO}'/></iq>"))
        assert refused.value.condition == "forbidden", sender
    assert EXTDISCO in sessions.hooks.disco_features

    _sessions, empty, empty_out = bard(ExternalServicesConfig())
    empty.dataReceived(f"<iq type='get' id='none'><services xmlns='{EXTDISCO}'/></iq>".encode())
    assert output(empty_out) == (f"<iq type='result' id='none' to='bard@localhost/globe'>"
                                 f"<services xmlns='{EXTDISCO}'/></iq>")


def test_turn_rest_credentials_are_what_coturn_checks() -> None:
    """draft-uberti-behave-turn-rest-00 2.2, as coturn's use-auth-secret checks them: the username
    is the expiry (Unix seconds) and the user joined by ':', the password the base64 of the
    HMAC-SHA1 of the username under the shared secret. The password here was computed apart, with
    `openssl dgst -sha1 -hmac north -binary | base64`."""
    username, password, expiry = turn_rest_credentials("north", "bob@example.org", 1_300_000_000, 86400)
    assert (username, expiry) == ("1300086400:bob@example.org", 1_300_086_400)
    assert password == "7E11mSubII32kDVl1yurQ7/hCRw="
    # A social JID's escaped '@' (XEP-0106): coturn refuses a backslash in a username (its
    # is_secure_string), so it is written %5C, and a percent sign %25 (one JID per user part).
    social, _, _ = turn_rest_credentials("north", "rosa\\40demo@example.org", 1_300_000_000, 86400)
    assert social == "1300086400:rosa%5C40demo@example.org"
    assert turn_rest_credentials("north", "50%@example.org", 0, 60)[0] == "60:50%25@example.org"


@pytest.mark.parametrize(("text", "key", "problem"), [
    ("[[xmpp.external_services.services]]\nhost = 'turn.example.org'", "xmpp.external_services.services[0].type",
     "required"),
    ("[[xmpp.external_services.services]]\ntype = 'stun'\nhost = 'h'\nport = 70000",
     "xmpp.external_services.services[0].port", "must be an integer 1-65535"),
    ("[[xmpp.external_services.services]]\ntype = 'stun'\nhost = 'h'\ntransport = 'sctp'",
     "xmpp.external_services.services[0].transport", "must be one of 'udp', 'tcp'"),
    ("[[xmpp.external_services.services]]\ntype = 'stun'\nhost = 'h'\nsecret = 'x'",
     "xmpp.external_services.services[0].secret", "unknown key"),
    ("[[xmpp.external_services.services]]\ntype = 'turn'\nhost = 'h'\nrestricted = true",
     "xmpp.external_services.turn_secret", "a restricted service needs the TURN secret (or give turn_secret_file)"),
    ("[xmpp.external_services]\nturn_secret = 'short'", "xmpp.external_services.turn_secret",
     "must be at least 16 characters"),
    ("[xmpp.external_services]\nservices = 'stun.example.org'", "xmpp.external_services.services",
     "must be a list of tables ([[xmpp.external_services.services]])"),
])
def test_a_bad_service_names_its_key_on_one_line(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert str(caught.value) == f"sns-xmpp: config error at '{key}': {problem}"


def test_the_secret_may_live_in_a_file(tmp_path: Path) -> None:
    """turn_secret_file: the secret read from a file (as every secret of the configuration may be)."""
    folder = tmp_path
    (folder / "turn.secret").write_text(SECRET + "\n")
    config = parse_config("[xmpp.external_services]\nturn_secret_file = 'turn.secret'\n"
                          "[[xmpp.external_services.services]]\ntype = 'turn'\nhost = 'h'\nrestricted = true",
                          folder)
    assert config.xmpp.external_services.turn_secret == SECRET
