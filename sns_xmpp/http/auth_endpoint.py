"""HTTP authentication for an existing Prosody (issue 21): ``/auth/check`` and ``/auth/exists``.

``POST /auth/check`` takes the JSON that prosody-modules' ``mod_auth_custom_http`` sends,
``{"username": ..., "password": ...}`` (and ``"domain"``, which that module leaves out: then the
first hosted domain), and answers the body ``true`` when the password logs the user in, else
``false``: a local account's password, or a social account's credentials (the stable localpart
``carol\\40demo`` with the hand-over password), as `auth.external.ExternalAccounts` decides for
ejabberd. ``POST /auth/exists`` takes ``{"username": ..., "domain": ...}`` and answers whether
the account exists (a linked social account does), which Prosody asks before keeping an offline
message; sns-xmpp's own module for Prosody (contrib/prosody/mod_auth_sns_xmpp.lua) asks it.

Only a caller that knows ``[http] auth_secret`` is answered (HTTP Basic, any user name, the secret
as the password: ``http://prosody:<secret>@127.0.0.1:5280/auth/check`` as a post_url); any
other request is 401, so the oracle this is stays with Prosody even behind a reverse proxy that
forwards ``/auth/``. Passwords are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web import pages, resource, server
from twisted.web.server import Request

from sns_xmpp.auth.external import ExternalAccounts
from sns_xmpp.observe.log_gate import GatedLogger

log = GatedLogger()

MAX_BODY_BYTES = 65536  # a hand-over password is at most 16 KiB


def _authorised(request: Request, secret: bytes) -> bool:
    header = request.getHeader(b"authorization") or b""
    scheme, _, encoded = header.partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    _user, colon, given = decoded.partition(b":")
    return bool(colon) and hmac.compare_digest(given, secret)


class AuthEndpoint(resource.Resource):
    """``/auth``: its two questions, each a child."""

    def __init__(self, accounts: ExternalAccounts, secret: str, default_domain: str) -> None:
        super().__init__()
        self.putChild(b"check", _Question(accounts, secret.encode(), default_domain, "check"))
        self.putChild(b"exists", _Question(accounts, secret.encode(), default_domain, "exists"))

    def getChild(self, path: bytes, request: Request) -> resource.IResource:
        return pages.notFound()

    def render(self, request: Request) -> bytes:
        request.setResponseCode(404)
        return b"not found\n"


class _Question(resource.Resource):
    isLeaf = True

    def __init__(self, accounts: ExternalAccounts, secret: bytes, default_domain: str, kind: str) -> None:
        super().__init__()
        self.accounts = accounts
        self.secret = secret
        self.default_domain = default_domain
        self.kind = kind

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST")
        return b"POST a JSON object\n"

    def render_POST(self, request: Request) -> bytes | int:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if not _authorised(request, self.secret):
            log.warn("auth_endpoint.unauthorised question={question}", question=self.kind)
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="sns-xmpp auth"')
            return b"false"
        document = self._document(request)
        if document is None:
            request.setResponseCode(400)
            return b"false"
        username, password, domain = document
        if self.kind == "check":
            answer: Deferred[bool] = self.accounts.authenticate(username, domain, password or "")
        else:
            answer = self.accounts.exists(username, domain)
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def reply(result: bool) -> None:
            if not finished[0]:
                request.write(b"true" if result else b"false")
                request.finish()

        def failed(failure: Failure) -> None:
            log.failure("auth_endpoint.failed question={question}", failure, question=self.kind)
            if not finished[0]:
                request.setResponseCode(500)
                request.write(b"false")
                request.finish()

        answer.addCallbacks(reply, failed)
        return server.NOT_DONE_YET

    def _document(self, request: Request) -> tuple[str, str | None, str] | None:
        assert request.content is not None
        body = request.content.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            return None
        try:
            document: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(document, dict):
            return None
        username, password = document.get("username"), document.get("password")
        domain = document.get("domain", self.default_domain)
        if not isinstance(username, str) or not isinstance(domain, str):
            return None
        if self.kind == "check" and not isinstance(password, str):
            return None
        return username, password if isinstance(password, str) else None, domain
