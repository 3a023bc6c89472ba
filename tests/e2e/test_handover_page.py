"""The callback's hand-over page in a real browser (Debian's Chromium, driven by Playwright): the
patent's flow through the demo site, the copy button, the clipboard, the QR code as drawn, and
the copied password logging in with slixmpp (issue 15, item 8)."""

from __future__ import annotations

import struct
import urllib.parse
import zlib
from typing import Any

import pytest
import pytest_twisted

from tests.clients import require_client
from tests.xmppclient import Client, wait

# Before any page script: hide the clipboard API (as on an http: origin that is not localhost),
# keeping a handle for the test to read the clipboard back with.
WITHOUT_CLIPBOARD_API = """
window.__testClipboard = navigator.clipboard;
Object.defineProperty(navigator, "clipboard", {value: undefined, configurable: true});
"""


def png_grey(png: bytes) -> tuple[bytes, int, int]:
    """A screenshot's pixels as grey bytes: 8-bit RGB or RGBA, not interlaced, as Chromium writes them."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, b"", b""
    while position < len(png):
        (length,) = struct.unpack(">I", png[position:position + 4])
        kind, data = png[position + 4:position + 8], png[position + 8:position + 8 + length]
        header = data if kind == b"IHDR" else header
        chunks += data if kind == b"IDAT" else b""
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw, rows, previous = zlib.decompress(chunks), [], bytearray(stride)
    for row in range(height):
        kind, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, up_left = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                nearest = min((abs(p - left), 0, left), (abs(p - up), 1, up), (abs(p - up_left), 2, up_left))
                line[i] = (line[i] + nearest[2]) & 0xFF
        rows.append(bytes(line))
        previous = line
    grey = bytes(sum(line[i:i + 3]) // 3 for line in rows for i in range(0, stride, channels))
    return grey, width, height


def qr_text(png: bytes) -> str:
    import zxingcpp

    grey, width, height = png_grey(png)
    (found,) = zxingcpp.read_barcodes(memoryview(grey).cast("B", (height, width)))
    return str(found.text)


async def hand_over_in_chromium(chromium: str, http_url: str, account: str, clipboard_api: bool) -> dict[str, Any]:
    """Log in through the demo site in Chromium, press the password's copy button, and report what
    the page shows, what the clipboard holds, what the QR code reads and any CSP complaint."""
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True,
                                                   args=["--no-sandbox"])
        try:
            context = await browser.new_context(permissions=["clipboard-read", "clipboard-write"])
            if not clipboard_api:
                await context.add_init_script(WITHOUT_CLIPBOARD_API)
            page = await context.new_page()
            page.set_default_timeout(15_000)
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            await page.goto(f"{http_url}/login-using-demo")
            assert page.url.startswith(f"{http_url}/demo-site/login?")
            await page.fill("input[name=account]", account)
            await page.click("button[type=submit]")
            await page.wait_for_selector("code#password")
            assert urllib.parse.urlsplit(page.url).path == "/callback/demo"
            button = page.locator("button[data-copy=password]")
            await button.click()  # fails (times out) while the script has not shown it
            # What the button says after the click (it turns back to "Copy" a few seconds later).
            # Waited for with Playwright's own matcher: a wait_for_function predicate that has to
            # poll is evaluated with eval() in the page, which the page's CSP (rightly) refuses.
            await expect(button).not_to_have_text("Copy")
            said = await button.text_content()
            reader = "navigator.clipboard" if clipboard_api else "window.__testClipboard"
            return {
                "jid": await page.locator("code#jid").text_content(),
                "password": await page.locator("code#password").text_content(),
                "button": said,
                "selected": await page.evaluate("String(window.getSelection())"),
                "clipboard": await page.evaluate(f"{reader}.readText()"),
                "qr": qr_text(await page.locator("figure svg").screenshot()),
                "csp_complaints": [text for text in console if "Content Security Policy" in text],
            }
        finally:
            await browser.close()


@pytest.mark.parametrize("clipboard_api", [True, False], ids=["clipboard-api", "fallback"])
@pytest_twisted.ensureDeferred
async def test_the_copied_password_logs_in_and_the_qr_code_reads_as_the_xmpp_uri(server, clipboard_api: bool) -> None:
    """In Chromium, under the page's own Content-Security-Policy: the copy button puts exactly the
    shown password on the clipboard (through the clipboard API, or, without it, by selecting the
    text and copying the old way), that password logs in with slixmpp as the shown JID, and the
    QR code as the browser draws it reads as the JID's xmpp: URI."""
    chromium = require_client("chromium")
    seen = await wait(hand_over_in_chromium(chromium, server.http_url, "dora", clipboard_api), 90)
    assert seen["jid"] == "dora\\40demo@localhost"
    assert seen["password"].startswith("sns1:demo:")
    assert seen["clipboard"] == seen["password"]
    assert seen["button"] == "Copied"
    if not clipboard_api:
        assert seen["selected"] == seen["password"]
    assert seen["qr"] == "xmpp:dora%5C40demo@localhost"
    assert seen["csp_complaints"] == []

    client = Client(seen["jid"], seen["clipboard"], mechanism="PLAIN")
    await wait(client.log_in(server.c2s_port))
    assert client.boundjid.bare == "dora\\40demo@localhost"
    await wait(client.log_out())
