"""The callback's HTML hand-over, made for a phone: the JID and the password as text with a copy
button each, and a QR code of the JID's ``xmpp:`` URI (RFC 5122) for a phone's client to scan.

Everything is inline (no CDN, no request to anywhere), and the page works without JavaScript: the
values are plain selectable text, and the copy buttons stay hidden until the script shows them.
The page's Content-Security-Policy names its one script and its one style by their SHA-256, so
nothing else, such as markup a site managed to slip into a display name, can run or style it.

The QR code carries the JID only. No standard puts a password in an ``xmpp:`` URI: RFC 5122's
authority is a bare JID, and the XEP-0147 query actions (``message``, ``join``, ``register``, ...)
have none that logs in as an existing account (``register``, with XEP-0401's ``preauth``, makes a
new account, which is not what this page hands over). A QR code on a screen is also easy to
photograph over a shoulder.
"""

from __future__ import annotations

import base64
import hashlib
import html
import urllib.parse

import segno

# RFC 5122, section 2.2: nodeid = *( unreserved / pct-encoded / nodeallow ); quote() keeps the
# unreserved characters itself. Everything else, the XEP-0106 backslash among them, is
# percent-encoded from UTF-8.
NODE_ALLOWED = "!$()*+,;="
HOST_ALLOWED = "!$&'()*+,;="  # RFC 3986 reg-name: unreserved and sub-delims

SCRIPT = """
(function () {
  function select(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var source = document.getElementById(button.getAttribute("data-copy"));
    var label = button.textContent;
    function done(text) {
      button.textContent = text;
      setTimeout(function () { button.textContent = label; }, 3000);
    }
    function fallback() {  // no clipboard API (an http: page, an old browser): select, try the old way
      select(source);
      var copied = false;
      try { copied = document.execCommand("copy"); } catch (e) { copied = false; }
      done(copied ? "Copied" : "Selected: copy it now");
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(source.textContent).then(function () { done("Copied"); }, fallback);
      } else {
        fallback();
      }
    });
  });
})();
"""

# The page's own rules, beside the project's stylesheet (http/style.py).
STYLE = """
code { font-size: 1.05em; word-break: break-all; }
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    f"script-src {_sha256(SCRIPT)}",
    f"style-src 'self' {_sha256(STYLE)}",  # the project's stylesheet, and the page's own rules
    "base-uri 'none'",
    "form-action 'self'",  # the "log out everywhere" button posts to this server
    "frame-ancestors 'none'",
]).encode()


def xmpp_uri(jid: str) -> str:
    """The RFC 5122 URI of a bare JID: ``xmpp:alice%5C40demo@localhost`` for ``alice\\40demo@localhost``."""
    local, at, domain = jid.rpartition("@")
    node = urllib.parse.quote(local, safe=NODE_ALLOWED) + at
    return f"xmpp:{node}{urllib.parse.quote(domain, safe=HOST_ALLOWED)}"


def qr_svg(text: str) -> str:
    """*text* as a QR code, inline SVG: dark on a white quiet zone (scannable on a dark page too)."""
    code = segno.make_qr(text, error="m")
    return str(code.svg_inline(scale=5, border=4, dark="#000", light="#fff", title="QR code of " + text))


def handover_body(jid: str, password: str, display_name: str | None, logout: tuple[str, str] | None = None) -> str:
    """The page body; the caller sends it with CONTENT_SECURITY_POLICY. *logout*: (the server's
    public URL, the account token that its "device password" and "log out everywhere" forms post)."""
    uri = xmpp_uri(jid)
    greeting = f"<p>Welcome, {html.escape(display_name)}.</p>\n" if display_name else ""
    return (
        f"<style>{STYLE}</style>\n{greeting}"
        # The web chat first: no app to install, nothing to copy (http/webchat.py).
        + (f'<form method="post" action="{html.escape(logout[0])}/chat"><input type="hidden" name="token" '
           f'value="{html.escape(logout[1])}"><button type="submit" id="open-chat">Open chat</button> in this '
           "browser, logged in as you with a password for this browser only.</form>\n" if logout else "")
        + f"<p>{'Or log in' if logout else 'Log in'} with any XMPP client using:</p>\n<dl>\n"
        f'<dt>JID</dt><dd><code id="jid">{html.escape(jid)}</code>'
        '<button type="button" data-copy="jid" hidden>Copy</button></dd>\n'
        f'<dt>Password</dt><dd><code id="password">{html.escape(password)}</code>'
        '<button type="button" data-copy="password" hidden>Copy</button></dd>\n</dl>\n'
        f"<figure>{qr_svg(uri)}\n<figcaption>On a phone: scan this with your XMPP client, or open "
        f'<a href="{html.escape(uri)}">{html.escape(uri)}</a>, for the JID; then paste the password.'
        "</figcaption></figure>\n"
        "<p>These credentials expire; come back here for fresh ones.</p>\n"
        + (f'<form method="post" action="{html.escape(logout[0])}/devices"><input type="hidden" name="token" '
           f'value="{html.escape(logout[1])}"><input type="hidden" name="action" value="create">'
           '<label>A client without FAST? <input name="label" maxlength="64" required placeholder="device name">'
           '</label> <button type="submit">Make a password for it</button></form>\n'
           f'<form method="post" action="{html.escape(logout[0])}/logout"><input type="hidden" name="token" '
           f'value="{html.escape(logout[1])}"><button type="submit">Log out everywhere</button> (ends every '
           "session of this account and voids the credentials given until now)</form>\n" if logout else "")
        + f"<script>{SCRIPT}</script>")
