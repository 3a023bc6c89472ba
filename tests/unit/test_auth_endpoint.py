"""The HTTP authentication an existing Prosody asks (sns_xmpp/http/auth_endpoint.py), as raw HTTP on
the guarded twisted.web site, on the real checkers, site plugin and SQL: mod_auth_custom_http's
JSON, the answers, the secret it needs, and no password in the log."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.web.resource import Resource

from sns_xmpp.auth.scram import derive_all
from sns_xmpp.http.auth_endpoint import AuthEndpoint
from sns_xmpp.http.site import HTTPLimits, web_site
from tests.unit.http_exchange import Response, request
from tests.unit.test_extauth import DOMAIN, Setup

SECRET = "prosody-shares-this-secret"


class Endpoint:
    def __init__(self, tmp_path: Path) -> None:
        self.setup = Setup(tmp_path)
        root = Resource()
        root.putChild(b"auth", AuthEndpoint(self.setup.accounts, SECRET, DOMAIN))
        self.site = web_site(root, Clock(), HTTPLimits())  # type: ignore[arg-type]

    def post(self, question: str, document: object, secret: str | None = SECRET) -> Response:
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"prosody:{secret}".encode()).decode()
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        return request(self.site, "POST", f"/auth/{question}", headers, body, host="127.0.0.1")


@pytest.fixture(name="endpoint")
def make_endpoint(tmp_path: Path) -> Endpoint:
    return Endpoint(tmp_path)


def test_mod_auth_custom_http_json_gets_true_for_good_credentials_and_false_otherwise(endpoint: Endpoint) -> None:
    """{"username", "password"} as prosody-modules' module posts it (no domain: the first hosted
    one), the body exactly 'true' or 'false'; social and local accounts alike."""
    now = endpoint.setup.clock.seconds()
    good, expired = endpoint.setup.handover("carol", now + 600), endpoint.setup.handover("carol", now - 100)
    endpoint.setup.store.database.create_account(f"bob@{DOMAIN}", derive_all("bob-pw", iterations=4096), 0)
    cases = [({"username": "carol\\40sns", "password": good}, b"true"),
             ({"username": "carol\\40sns", "password": good[:-1] + "x"}, b"false"),
             ({"username": "carol\\40sns", "password": expired}, b"false"),
             ({"username": "dave\\40sns", "password": good}, b"false"),
             ({"username": "bob", "password": "bob-pw", "domain": DOMAIN}, b"true"),
             ({"username": "bob", "password": "wrong"}, b"false"),
             ({"username": "bob", "password": "bob-pw", "domain": "elsewhere.example"}, b"false")]
    for document, expected in cases:
        answer = endpoint.post("check", document)
        assert (answer.code, answer.body) == (200, expected), document
        assert answer.header("content-type") == "text/plain; charset=utf-8"
        assert answer.header("cache-control") == "no-store"


def test_exists_is_true_for_local_and_linked_social_users(endpoint: Endpoint) -> None:
    password = endpoint.setup.handover("carol", endpoint.setup.clock.seconds() + 600)
    assert endpoint.post("exists", {"username": "carol\\40sns", "domain": DOMAIN}).body == b"false"
    assert endpoint.post("check", {"username": "carol\\40sns", "password": password}).body == b"true"
    assert endpoint.post("exists", {"username": "carol\\40sns", "domain": DOMAIN}).body == b"true"
    assert endpoint.post("exists", {"username": "carol\\40sns"}).body == b"true"
    assert endpoint.post("exists", {"username": "nobody"}).body == b"false"


@pytest.mark.parametrize("secret", [None, "", "prosody-shares-this-secreT", "x" * 40])
def test_without_the_secret_nothing_is_answered(endpoint: Endpoint, secret: str | None) -> None:
    """A request without the shared secret is 401 and never reaches the accounts."""
    endpoint.setup.store.database.create_account(f"bob@{DOMAIN}", derive_all("bob-pw", iterations=4096), 0)
    answer = endpoint.post("check", {"username": "bob", "password": "bob-pw"}, secret=secret)
    assert (answer.code, answer.body) == (401, b"false")
    assert answer.header("www-authenticate") == 'Basic realm="sns-xmpp auth"'
    raw = request(endpoint.site, "POST", "/auth/check", {"Authorization": "Bearer " + SECRET},
                  json.dumps({"username": "bob", "password": "bob-pw"}).encode())
    assert raw.code == 401


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"username": 1, "password": "x"}', b'{"username": "bob"}',
                                  b'{"password": "x"}', b'{"username": "bob", "password": "x", "domain": 5}'])
def test_malformed_documents_are_400(endpoint: Endpoint, body: bytes) -> None:
    answer = endpoint.post("check", body)
    assert (answer.code, answer.body) == (400, b"false")


def test_only_post_and_only_the_two_questions(endpoint: Endpoint) -> None:
    assert request(endpoint.site, "GET", "/auth/check").code == 405
    assert endpoint.post("nothing", {"username": "bob", "password": "x"}).code == 404


def test_no_password_reaches_the_log(endpoint: Endpoint) -> None:
    password = endpoint.setup.handover("carol", endpoint.setup.clock.seconds() + 600)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        endpoint.post("check", {"username": "carol\\40sns", "password": password})
        endpoint.post("check", {"username": "carol\\40sns", "password": password + "x"})
        endpoint.post("check", {"username": "bob", "password": "bob-local-secret"})
        endpoint.post("check", {"username": "bob", "password": "bob-local-secret"}, secret="wrong-secret-123456")
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = "\n".join(repr(event) for event in events)
    assert "extauth.login" in text and "auth_endpoint.unauthorised" in text
    for secret in (password, password.rsplit(":", 1)[1], "bob-local-secret", SECRET, "wrong-secret-123456"):
        assert secret not in text
