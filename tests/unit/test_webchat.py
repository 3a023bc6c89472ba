"""The web chat's resource (http/webchat.py) with an in-memory device store: what POST /chat hands
the browser, where Converse.js is and is not installed, which tokens it takes, and what
POST /chat/logout removes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from sns_xmpp.auth.devices import DeviceRefused
from sns_xmpp.http.devices import DeviceAccounts
from sns_xmpp.http.logout import AccountTokens
from sns_xmpp.http.webchat import DEVICE_LABEL_PREFIX, MAX_WEB_CHATS, LogoutTokens, WebChat
from sns_xmpp.store.records import DevicePassword

JID = "erin\\40demo@localhost"
URL = "https://chat.example"
SECRET = b"k" * 32


class Devices:
    """Device passwords in memory, ids counted from 1 (and reused after a removal of the last, as
    SQLite's rowid may)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: dict[str, list[DevicePassword]] = {}
        self.made: list[str] = []
        self.created_labels: list[str] = []

    def create(self, jid: str, label: str) -> Deferred[str]:
        rows = self.rows.setdefault(jid, [])
        rows.append(DevicePassword(max((d.id for d in rows), default=0) + 1, jid, label, (), self.clock.seconds()))
        self.created_labels.append(label)
        self.clock.advance(1)
        password = f"device-password-{len(self.made)}"
        self.made.append(password)
        return defer.succeed(password)

    def remove(self, jid: str, device_id: int) -> Deferred[bool]:
        before = self.rows.get(jid, [])
        self.rows[jid] = [d for d in before if d.id != device_id]
        return defer.succeed(len(self.rows[jid]) != len(before))

    def listing(self, jid: str) -> Deferred[list[DevicePassword]]:
        return defer.succeed(list(self.rows.get(jid, [])))

    def labels(self, jid: str = JID) -> list[str]:
        return [d.label for d in self.rows.get(jid, [])]


class World:
    def __init__(self, folder: Path, websocket: str | None = "xmpp-websocket") -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.devices = Devices(self.clock)
        self.account_tokens = AccountTokens(SECRET, self.clock)
        self.logout_tokens = LogoutTokens(SECRET)
        accounts = DeviceAccounts(self.devices.create, self.devices.remove, self.devices.listing)
        self.chat = WebChat(self.account_tokens, accounts, self.logout_tokens, URL, websocket, folder)

    def post(self, path: list[bytes], **fields: str) -> DummyRequest:
        request = DummyRequest(path)
        request.method = b"POST"
        request.args = {name.encode(): [value.encode()] for name, value in fields.items()}
        resource: Any = self.chat
        for segment in path:
            resource = resource.getChildWithDefault(segment, request)
        answer = resource.render(request)
        if answer != NOT_DONE_YET:
            request.write(answer)
            request.finish()
        assert request.finished
        return request

    def open_chat(self, token: str | None = None) -> DummyRequest:
        return self.post([], token=token if token is not None else self.account_tokens.issue(JID))


def text(request: DummyRequest) -> str:
    return b"".join(request.written).decode()


def header(request: DummyRequest, name: str) -> str:
    values = request.responseHeaders.getRawHeaders(name.encode())
    assert values is not None, name
    return values[0].decode()


def config_of(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="sns-chat-config">(.*?)</script>', page)
    assert found is not None, page
    return dict(json.loads(found.group(1)))


def logout_token_of(page: str) -> str:
    found = re.search(r'action="[^"]*/chat/logout"[^>]*><input type="hidden" name="token" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    dist = tmp_path / "node_modules" / "converse.js" / "dist"
    dist.mkdir(parents=True)
    (dist / "converse.min.js").write_text("export default {};\n")
    return tmp_path


def test_the_chat_page_configures_converse_with_a_device_password_under_its_own_policy(installed: Path) -> None:
    """POST /chat with the hand-over's account token makes one "web chat" device password and
    answers Converse.js's page: logged in as the account with that password over the WebSocket
    URL built from public_url (wss:// for https://), its assets from this server, uncached, under
    a policy that runs scripts from this server only and connects to the WebSocket alone."""
    world = World(installed)
    request = world.open_chat()
    page = text(request)
    assert request.responseCode in (None, 200)
    (label,) = world.devices.labels()
    assert label.startswith(DEVICE_LABEL_PREFIX)
    assert config_of(page) == {"jid": JID, "password": "device-password-0",
                               "websocket_url": "wss://chat.example/xmpp-websocket",
                               "assets_path": "https://chat.example/chat/dist/"}
    assert '<script type="module" src="https://chat.example/chat/start.js"></script>' in page
    assert header(request, "cache-control") == "no-store"
    policy = dict(d.strip().split(" ", 1) for d in header(request, "content-security-policy").split(";"))
    assert policy["script-src"] == "'self'"
    assert policy["connect-src"] == "'self' wss://chat.example/xmpp-websocket"
    assert policy["frame-ancestors"] == "'none'" and policy["default-src"] == "'none'"


def test_without_converse_or_without_the_websocket_the_page_says_why_and_still_hands_out_credentials(
        tmp_path: Path) -> None:
    """Where Node.js never installed Converse.js, or the WebSocket is off, the page says how to
    get it and still shows the JID and the device password, with a button that removes it."""
    for websocket, why in [("xmpp-websocket", "apt-get install nodejs npm"), (None, "[http] websocket")]:
        world = World(tmp_path, websocket)
        page = text(world.open_chat())
        assert why in page
        assert f'<code id="jid">{JID}</code>' in page
        assert '<code id="password">device-password-0</code>' in page
        assert "sns-chat-config" not in page
        token = logout_token_of(page)
        assert world.devices.labels() != []
        world.post([b"logout"], token=token)
        assert world.devices.labels() == []


def test_a_bad_or_expired_account_token_opens_no_chat(installed: Path) -> None:
    """No device password without a valid, unexpired account token: a forged one, another kind of
    token (a chat's logout token), or one past its day are refused with 400."""
    world = World(installed)
    page = text(world.open_chat())
    logout_token = logout_token_of(page)
    expired = world.account_tokens.issue(JID)
    world.clock.advance(world.account_tokens.ttl + 1)
    for token in ["", "x.y", logout_token, expired]:
        request = world.open_chat(token)
        assert request.responseCode == 400, token
        assert "sns-chat-config" not in text(request)
    assert len(world.devices.labels()) == 1


def test_logout_removes_exactly_its_own_device(installed: Path) -> None:
    """POST /chat/logout with a chat's logout token removes that chat's device password and no
    other: not the account's other devices, not a later device that got the removed one's id;
    an account token is no logout token."""
    world = World(installed)
    world.devices.create(JID, "phone")
    first = logout_token_of(text(world.open_chat()))
    second = logout_token_of(text(world.open_chat()))
    assert world.post([b"logout"], token=world.account_tokens.issue(JID)).responseCode == 400
    assert len(world.devices.labels()) == 3

    world.post([b"logout"], token=second)
    assert len(world.devices.labels()) == 2
    third_page = text(world.open_chat())  # may reuse the removed device's id
    world.post([b"logout"], token=second)  # the old token again: names a device no longer there
    assert len(world.devices.labels()) == 3
    world.post([b"logout"], token=first)
    world.post([b"logout"], token=logout_token_of(third_page))
    assert world.devices.labels() == ["phone"]


def test_opening_the_chat_again_and_again_keeps_only_the_latest_web_chats(installed: Path) -> None:
    """Chats closed without logging out leave their device passwords; the next chat removes the
    oldest web chats beyond MAX_WEB_CHATS, and never a device of another kind."""
    world = World(installed)
    world.devices.create(JID, "phone")
    for _ in range(MAX_WEB_CHATS + 3):
        world.open_chat()
    assert world.devices.labels() == ["phone", *world.devices.created_labels[-MAX_WEB_CHATS:]]


def test_an_account_that_may_have_no_device_password_gets_no_chat_and_is_told_why(installed: Path) -> None:
    """A site whose sessions must end with its credentials (session_policy = "token") refuses
    device passwords: the chat is not opened, and the page gives the refusal's reason."""
    world = World(installed)

    def refuse(jid: str, label: str) -> Deferred[str]:
        return defer.fail(DeviceRefused("this site wants its sessions to end with its credentials"))

    world.chat.accounts.create = refuse
    request = world.open_chat()
    assert request.responseCode == 400
    assert "this site wants its sessions to end with its credentials" in text(request)
    assert "sns-chat-config" not in text(request)
