"""The web chat in a real browser (issue 19, "Must show"): Debian's Chromium, driven headless by
Playwright, logs in through the demo site as a person would, opens Converse.js from the hand-over
page and chats with a local user connected with slixmpp over TCP.

The screenshots of the run are saved in tests/artifacts/webchat/ (ignored by git; the test prints
the folder)."""

from __future__ import annotations

import asyncio
import urllib.parse
from pathlib import Path
from typing import Any

import pytest_twisted
from slixmpp import JID

from sns_xmpp.http.webchat import DEVICE_LABEL_PREFIX, WEBCHAT_FOLDER
from tests.clients import npm_installed, require_client
from tests.xmppclient import Client, wait

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "webchat"
ERIN = "erin\\40demo@localhost"


def installed_webchat() -> Path:
    """webchat/ with Converse.js installed as its lock file pins it (npm ci when it changed)."""
    return npm_installed(WEBCHAT_FOLDER)


async def chat_in_chromium(chromium: str, server: Any, bob: Client) -> dict[str, Any]:
    """The whole walk, as a person would do it, with a screenshot at each step."""
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for earlier in ARTIFACTS.glob("*.png"):  # only this run's
        earlier.unlink()
    seen: dict[str, Any] = {}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1000, "height": 700})
            page.set_default_timeout(15_000)
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            websockets: list[str] = []
            failed: list[str] = []
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.on("websocket", lambda socket: websockets.append(socket.url))

            async def shot(name: str) -> None:
                await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

            # 1. The front page's demo button, and the demo site's form, as erin.
            await page.goto(f"{server.http_url}/")
            await page.get_by_role("button", name="Log in with Demo social site").click()
            await page.fill("input[name=account]", "erin")
            await shot("1-demo-form")
            await page.click("button[type=submit]")

            # 2. The hand-over page's "Open chat": Converse.js, logged in, online.
            await page.wait_for_selector("#open-chat")
            seen["callback_path"] = urllib.parse.urlsplit(page.url).path
            await shot("2-callback")
            async with page.expect_response(lambda r: r.url == f"{server.http_url}/chat"
                                            and r.request.method == "POST") as answer:
                await page.get_by_role("button", name="Open chat").click()
            chat_page = await answer.value
            seen["chat_headers"] = await chat_page.all_headers()
            seen["chat_html"] = await chat_page.text()
            profile = page.locator("converse-user-profile")
            await profile.get_by_text("I am online").wait_for()
            seen["profile"] = await profile.inner_text()
            seen["devices"] = await server.store.device_passwords(ERIN)
            seen["websockets"] = list(websockets)
            await shot("3-online")

            # 3. A new chat with the local user, and a message to them.
            await page.click(".dropdown--contacts button.dropdown-toggle")
            await page.click("a.new-chat")
            modal = page.locator("converse-new-chat-modal")
            await modal.locator("input").fill("bob@localhost")
            await modal.get_by_role("button", name="Start Chat").click()
            textarea = page.locator("converse-chat textarea.chat-textarea")
            await textarea.fill("Hello Bob, from the web chat")
            await textarea.press("Enter")
            seen["bob_got"] = await bob.next_message()

            # 4. Bob's answer, in the page.
            bob.send_message(mto=seen["bob_got"]["from"], mbody="Hello Erin, from slixmpp", mtype="chat")
            reply = page.locator(".chat-msg__text", has_text="Hello Erin, from slixmpp")
            await reply.wait_for()
            await shot("4-reply")
            await page.set_viewport_size({"width": 390, "height": 800})  # on a phone
            await shot("5-reply-on-a-phone")
            await page.set_viewport_size({"width": 1000, "height": 700})

            # Converse.js's blocking (XEP-0191 on the server): erin blocks bob from the chat's menu.
            await page.locator("converse-chat-heading button.dropdown-toggle").click()
            await page.locator("a.block-user").click()
            await page.locator("converse-confirm-modal").get_by_role("button", name="Confirm").click()
            await page.click(".dropdown--contacts button.dropdown-toggle")
            await page.get_by_text("Show block list").click()
            await page.locator("converse-blocklist-modal").get_by_text("bob@localhost").wait_for()
            await shot("6-blocked")
            bob.send_message(mto=JID(ERIN), mbody="Are you there?", mtype="chat")
            answer_to_bob = await bob.next_message()
            while answer_to_bob["type"] != "error" and not answer_to_bob["body"]:  # a chat state as the chat closed
                answer_to_bob = await bob.next_message()
            seen["bob_blocked"] = answer_to_bob
            await page.locator("converse-blocklist-modal button.btn-secondary").click()

            # Logging out ends this browser's device password.
            await page.locator("converse-user-profile converse-avatar").first.click()
            await page.get_by_role("button", name="Log out").click()
            await page.locator("converse-confirm-modal").get_by_role("button", name="Confirm").click()
            await page.get_by_role("heading", name="Logged out of the chat").wait_for()
            await shot("7-logged-out")
            seen["devices_after"] = await server.store.device_passwords(ERIN)
            seen["failed"] = failed
            seen["csp_complaints"] = [text for text in console if "Content Security Policy" in text]
        finally:
            await browser.close()
    return seen


@pytest_twisted.ensureDeferred
async def test_a_social_user_chats_in_converse_from_the_hand_over_page(server) -> None:
    """Issue 19's "Must show": from `/` through the demo site's form as erin, the hand-over page's
    "Open chat" opens Converse.js logged in (over /xmpp-websocket, with a device password of its
    own, never the site's signed token), online; a message typed there reaches a local user on
    TCP, whose answer appears in the page; the chat page carries its own strict policy and is not
    cached; Converse.js's blocking works against the server's XEP-0191 (the blocked user's message
    is refused); and logging out in Converse removes that device password."""
    chromium = require_client("chromium")
    installed_webchat()
    await server.add_user("bob@localhost", "bob-secret")
    bob = Client("bob@localhost", "bob-secret")
    await wait(bob.log_in(server.c2s_port))
    try:
        print(f"\nscreenshots: {ARTIFACTS}")
        seen = await wait(asyncio.ensure_future(chat_in_chromium(chromium, server, bob)), 60)
    finally:
        await wait(bob.log_out())

    assert seen["callback_path"] == "/callback/demo"
    assert seen["failed"] == []  # every file Converse.js asked this server for was there
    headers = seen["chat_headers"]
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    policy = dict(directive.strip().split(" ", 1) for directive in headers["content-security-policy"].split(";"))
    assert policy["script-src"] == "'self'"
    assert policy["connect-src"] == f"'self' ws://127.0.0.1:{server.http_url.rsplit(':', 1)[1]}/xmpp-websocket"
    assert policy["frame-ancestors"] == "'none'" and policy["default-src"] == "'none'"
    assert "unsafe-eval" not in headers["content-security-policy"]
    # Only what the policy is meant to stop: Converse.js's splash links its sponsors' logos on its web site.
    assert all("conversejs.org/" in text for text in seen["csp_complaints"]), seen["csp_complaints"]

    assert ERIN in seen["profile"]
    assert seen["websockets"] == [f"{server.http_url.replace('http://', 'ws://')}/xmpp-websocket"]
    # The browser got a device password, not the hand-over's password (the site's signed token).
    assert '"password": "' in seen["chat_html"] and "sns1:" not in seen["chat_html"]
    (device,) = seen["devices"]
    assert device.label.startswith(DEVICE_LABEL_PREFIX)
    message = seen["bob_got"]
    assert message["from"].bare == ERIN
    assert message["body"] == "Hello Bob, from the web chat"
    blocked = seen["bob_blocked"]
    assert blocked["type"] == "error" and blocked["error"]["condition"] == "service-unavailable"
    assert seen["devices_after"] == []
