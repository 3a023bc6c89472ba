"""Device passwords on the web (issue 15): ``POST /devices`` with the hand-over's account token.

``action=create`` with a ``label`` makes a password for one device and shows it once;
``action=remove`` with an ``id`` forgets one; ``action=list`` lists them. Each answer lists the
account's device passwords with a button to remove each; ``Accept: application/json`` gets the
same as JSON. The token is the one the hand-over gives (`logout.AccountTokens`): holding it is
holding the account's fresh credentials.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.server import Request

from sns_xmpp.auth.devices import DeviceRefused
from sns_xmpp.http.logout import AccountTokens, page
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store.records import DevicePassword

log = GatedLogger()


class DeviceAccounts:
    """What the page uses of the checker and the store (`auth.social.SocialLoginChecker`)."""

    def __init__(self, create: Callable[[str, str], Deferred[str]],
                 remove: Callable[[str, int], Deferred[bool]],
                 listing: Callable[[str], Deferred[list[DevicePassword]]]) -> None:
        self.create = create
        self.remove = remove
        self.listing = listing


class Devices(resource.Resource):
    isLeaf = True

    def __init__(self, tokens: AccountTokens, accounts: DeviceAccounts, url: str) -> None:
        super().__init__()
        self.tokens = tokens
        self.accounts = accounts
        self.url = url  # this resource's public URL, for the forms

    def render_POST(self, request: Request) -> bytes | int:
        request.setHeader(b"cache-control", b"no-store")
        fields = {key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
                  for key, values in (request.args or {}).items() if values}
        token = fields.get("token", "")
        jid = self.tokens.open(token)
        if jid is None:
            return self._answer(request, 400, "Not allowed", "this link is not valid or has expired: log in at "
                                "the site again and use the new page")
        action = fields.get("action", "list")
        created: Deferred[Any]
        if action == "create":
            created = self.accounts.create(jid, fields.get("label", ""))
        elif action == "remove" and fields.get("id", "").isdigit():
            created = self.accounts.remove(jid, int(fields["id"])).addCallback(lambda found: None)
        elif action == "list":
            created = Deferred()
            created.callback(None)
        else:
            return self._answer(request, 400, "Not understood", "action is create (with a label), remove (with "
                                "an id) or list")
        created.addCallback(lambda password: self.accounts.listing(jid).addCallback(
            lambda devices: self._shown(request, jid, token, password, devices)))
        created.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _shown(self, request: Request, jid: str, token: str, password: str | None,
               devices: list[DevicePassword]) -> None:
        listed = [{"id": d.id, "label": d.label, "created": d.created_at} for d in devices]
        if b"application/json" in (request.getHeader(b"accept") or b""):
            document: dict[str, Any] = {"jid": jid, "devices": listed}
            if password is not None:
                document["password"] = password
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps(document).encode())
            request.finish()
            return
        shown = (f"<p>The password for this device (shown once: copy it now):</p><p><code>{html.escape(password)}"
                 f"</code></p><p>Log in as <code>{html.escape(jid)}</code> with it, by any mechanism.</p>"
                 if password is not None else "")
        rows = "".join(
            f'<li>{html.escape(d.label)} <form method="post" action="{html.escape(self.url)}">'
            f'<input type="hidden" name="token" value="{html.escape(token)}">'
            f'<input type="hidden" name="action" value="remove"><input type="hidden" name="id" value="{d.id}">'
            '<button type="submit">Remove</button></form></li>' for d in devices)
        body = (shown + f"<p>Device passwords of {html.escape(jid)}:</p><ul>{rows or '<li>none</li>'}</ul>"
                f'<form method="post" action="{html.escape(self.url)}">'
                f'<input type="hidden" name="token" value="{html.escape(token)}">'
                '<input type="hidden" name="action" value="create">'
                '<label>Device <input name="label" maxlength="64" required></label> '
                '<button type="submit">Make a password for it</button></form>')
        request.write(page("Device passwords", body))
        request.finish()

    def _failed(self, reason: Failure, request: Request) -> None:
        if isinstance(reason.value, DeviceRefused):
            request.write(self._answer(request, 400, "Not made", str(reason.value)))
        else:
            log.failure("http.devices_failed", reason)
            request.write(self._answer(request, 503, "Try again later", "the device passwords could not be "
                                       "read or written"))
        request.finish()

    def _answer(self, request: Request, code: int, title: str, problem: str) -> bytes:
        request.setResponseCode(code)
        if b"application/json" in (request.getHeader(b"accept") or b""):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": problem}).encode()
        return page(title, f"<p>{html.escape(problem)}.</p>")
