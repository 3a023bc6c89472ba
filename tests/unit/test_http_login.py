"""The login entry and callback over raw HTTP: state bound to the browser, refusals, headers, POST hand-over."""

from __future__ import annotations

import gc
import html
import re
import time
import urllib.parse
from pathlib import Path

import pytest
from twisted.internet import defer, task
from twisted.web.server import Site

from sns_xmpp.http.login import Root, SocialWeb
from sns_xmpp.http.pending import PendingLogins
from sns_xmpp.http.site import web_site
from sns_xmpp.sites.hmac import HmacSite
from sns_xmpp.sites.interface import LoginStart, SiteContext
from sns_xmpp.sites.registry import load_sites
from tests.unit.http_exchange import Response, request

START = 1_800_000_000.0
KEY = "sns-key-0123456789abcdef"
PUBLIC_URL = "https://xmpp.example"
HONEST = "198.51.100.7"
ATTACKER = "203.0.113.66"


class World:
    def __init__(self, tmp_path: Path, public_url: str = PUBLIC_URL) -> None:
        self.clock = task.Clock()
        self.clock.advance(START)
        context = SiteContext(self.clock, public_url, tmp_path / "data", ("localhost",))
        self.sites = load_sites({
            "sns": {"plugin": "hmac", "keys": {"k1": KEY},
                    "login_url": "https://sns.example/login?r={callback}&state={state}"},
            "other": {"plugin": "hmac", "keys": {"k1": KEY},
                      "login_url": "https://other.example/login?r={callback}&state={state}"},
        }, context)
        self.linked: list[tuple[str, str, str]] = []
        self.web = SocialWeb(self.sites, PendingLogins(self.clock, secret=b"s" * 32), public_url, "localhost",
                             self.clock, self.link)
        self.site: Site = web_site(Root(self.web), self.clock)

    def link(self, site_id: str, account: str, domain: str) -> defer.Deferred[str]:
        """The link table, as the checker keeps it: a new user per (site, account)."""
        self.linked.append((site_id, account, domain))
        return defer.succeed(f"{account}\\40{site_id}-{len(self.linked)}@{domain}")

    def start(self, site_id: str = "sns", host: str = HONEST) -> tuple[str, str, Response]:
        """A login entry: (state, cookie header value, the answer)."""
        answer = request(self.site, "GET", f"/login-using-{site_id}", host=host)
        assert answer.code == 302, answer.body
        location = answer.header("location") or ""
        state = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["state"][0]
        cookies = answer.cookies()
        return state, "; ".join(f"{name}={value}" for name, value in cookies.items()), answer

    def signed(self, user: str = "alice", site_id: str = "sns") -> dict[str, str]:
        site = self.sites.get(site_id)
        assert isinstance(site, HmacSite)
        identifier, token = site.mint(user, "s1", int(self.clock.seconds()) + 600)
        return {"identifier": identifier, "signature": token}

    def callback(self, params: dict[str, str], cookie: str | None, site_id: str = "sns", method: str = "GET",
                 host: str = HONEST) -> Response:
        headers = {"Accept": "application/json"}
        if cookie:
            headers["Cookie"] = cookie
        query = urllib.parse.urlencode(params)
        if method == "GET":
            return request(self.site, "GET", f"/callback/{site_id}?{query}", headers, host=host)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return request(self.site, "POST", f"/callback/{site_id}", headers, query.encode(), host=host)


def test_a_flood_of_login_starts_does_not_cancel_an_honest_browsers_login(tmp_path: Path) -> None:
    """20,000 login starts from one address (more than any server-side list would keep) leave an
    honest browser's login, started before them, able to finish: its state travels in its own
    cookie, and the server keeps nothing per start (its memory does not grow with the flood)."""
    world = World(tmp_path)
    state, cookie, _ = world.start()
    request(world.site, "GET", "/login-using-sns", host=ATTACKER)  # first-use caches, before measuring
    gc.collect()
    objects_before = len(gc.get_objects())
    began = time.perf_counter()
    for _ in range(20_000):
        request(world.site, "GET", "/login-using-sns", host=ATTACKER)
    flood_seconds = time.perf_counter() - began
    gc.collect()
    kept = len(gc.get_objects()) - objects_before
    print(f"20000 login starts in {flood_seconds:.1f} s, {kept} more live objects")
    assert kept < 1_000  # a server-side list of 10,000 attempts keeps two objects or more per attempt
    world.clock.advance(60)
    answer = world.callback({**world.signed(), "state": state}, cookie)
    assert answer.code == 200, answer.body
    assert b'"password"' in answer.body


@pytest.mark.parametrize("case", ["no cookie", "other browser", "forged", "expired", "other site", "no state"])
def test_the_callback_refuses_a_state_this_browser_was_not_given(tmp_path: Path, case: str) -> None:
    """No login CSRF and no stale logins: a callback is refused with 400 and its reason, and issues
    nothing, unless it carries this server's unexpired, untampered cookie for this state and site."""
    world = World(tmp_path)
    state, cookie, _ = world.start()
    other_state, other_cookie, _ = world.start(host=ATTACKER)
    params = {**world.signed(), "state": state}
    reason = "missing"
    if case == "no cookie":
        cookie = ""
    elif case == "other browser":  # the attacker's own, valid cookie, with the victim's state
        cookie = other_cookie
        reason = "another browser"
    elif case == "forged":
        name, _, value = cookie.partition("=")
        cookie = f"{name}={value[:-2]}{'A' if value[-2] != 'A' else 'B'}{value[-1]}"
        reason = "not one this server issued"
    elif case == "expired":
        world.clock.advance(601)
        reason = "expired"
    elif case == "other site":
        params = {**world.signed(site_id="other"), "state": state}
        answer = world.callback(params, cookie, site_id="other")
        assert answer.code == 400 and b"password" not in answer.body
        assert "another site" in answer.body.decode()
        return
    elif case == "no state":
        del params["state"]
    answer = world.callback(params, cookie)
    assert answer.code == 400, answer.body
    assert b"password" not in answer.body
    assert reason in answer.body.decode(), answer.body
    assert answer.header("cache-control") == "no-store"


@pytest.mark.parametrize("public_url, secure", [("https://xmpp.example", True), ("http://127.0.0.1:5280", False)])
def test_the_state_cookie_is_httponly_lax_path_scoped_and_secure_on_https(tmp_path: Path, public_url: str,
                                                                           secure: bool) -> None:
    """The cookie reaches only the site's callback, never scripts, and only over TLS when the site is https."""
    world = World(tmp_path, public_url)
    _, _, answer = world.start()
    (line,) = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in line.split(";")[1:]}
    assert attributes["path"] == "Path=/callback/sns"
    assert "httponly" in attributes and attributes["samesite"] == "SameSite=Lax"
    assert ("secure" in attributes) is secure
    assert attributes["max-age"] == "Max-Age=600"


def test_every_answer_of_the_http_side_sends_no_referrer_and_credentials_are_not_stored(tmp_path: Path) -> None:
    """Callback URLs carry credentials: no page of the HTTP side leaks its URL in a Referer header,
    and pages that show credentials are not cached."""
    world = World(tmp_path)
    state, cookie, entry = world.start()
    answers = [entry, request(world.site, "GET", "/"), request(world.site, "GET", "/sites"),
               request(world.site, "GET", "/login-using-nowhere"), request(world.site, "GET", "/nothing-here"),
               world.callback({"state": "x"}, None)]
    done = world.callback({**world.signed(), "state": state}, cookie)
    assert done.code == 200
    for answer in [*answers, done]:
        assert answer.header("referrer-policy") == "no-referrer", answer.raw[:200]
    assert done.header("cache-control") == "no-store"


def test_a_site_may_hand_credentials_over_by_post(tmp_path: Path) -> None:
    """POST hand-over keeps credentials out of URLs: the callback takes the same form fields by
    POST, with the same checks; GET keeps working."""
    world = World(tmp_path)
    state, cookie, _ = world.start()
    answer = world.callback({**world.signed(), "state": state}, cookie, method="POST")
    assert answer.code == 200, answer.body
    assert b'"password"' in answer.body
    assert answer.header("cache-control") == "no-store"
    # Used: the cookie is cleared on success.
    assert any("Max-Age=0" in line for line in answer.headers["set-cookie"])


def test_a_cross_site_post_without_the_cookie_is_relayed_once_from_this_origin(tmp_path: Path) -> None:
    """A browser does not send a SameSite=Lax cookie with another site's POST: the callback answers
    a same-origin form that posts the fields again (then the cookie comes along); a relayed POST
    that still has no cookie is refused, so login CSRF stays refused."""
    world = World(tmp_path)
    state, cookie, _ = world.start()
    fields = {**world.signed(), "state": state}
    query = urllib.parse.urlencode(fields).encode()
    relay = request(world.site, "POST", "/callback/sns",
                    {"Content-Type": "application/x-www-form-urlencoded"}, query)
    assert relay.code == 200
    assert relay.header("cache-control") == "no-store"
    page = relay.body.decode()
    assert 'method="post" action="https://xmpp.example/callback/sns"' in page
    posted = dict(re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', page))
    posted = {name: html.unescape(value) for name, value in posted.items()}
    assert {name: posted[name] for name in fields} == fields
    assert world.callback(posted, cookie, method="POST").code == 200
    again = world.callback(posted, None, method="POST")
    assert again.code == 400 and b"password" not in again.body


def test_pending_data_too_large_for_a_cookie_is_a_clear_500_not_a_hung_request(tmp_path: Path) -> None:
    """A plugin whose pending data would not fit in a browser's cookie gets a finished 500 page
    (and a logged failure), not a request left open and a cookie the browser would drop."""
    world = World(tmp_path)
    site = world.sites.get("sns")
    assert site is not None
    site.start_login = lambda callback_url, state: defer.succeed(  # type: ignore[method-assign]
        LoginStart("https://sns.example/login", {"blob": "a" * 5000}))
    answer = request(world.site, "GET", "/login-using-sns")
    assert answer.code == 500
    assert "set-cookie" not in answer.headers


def test_the_callback_hands_over_the_linked_jid_with_a_password_that_carries_the_access_info(
        tmp_path: Path) -> None:
    """The JID handed over is the one the link table binds (here a '-1' user, as after a collision),
    not one derived from the identifier; the password carries the site, the account access info
    and its signature, which the XMPP side checks under that JID (issue 15)."""
    import json

    from sns_xmpp.auth.social import parse_handover

    world = World(tmp_path)
    state, cookie, _ = world.start()
    signed = world.signed()
    answer = world.callback({**signed, "state": state}, cookie)
    assert answer.code == 200, answer.body
    document = json.loads(answer.body)
    assert world.linked == [("sns", "alice", "localhost")]
    assert document["jid"] == "alice\\40sns-1@localhost"
    assert parse_handover(document["password"]) == ("sns", signed["identifier"], signed["signature"])
    assert (document["username"], document["token"]) == (f"{signed['identifier']}@sns", signed["signature"])


def _qr_text(svg: str) -> str:
    """What a QR scanner reads from segno's inline SVG: its path (rows of 'h' runs, one module
    high, drawn at y + 0.5) drawn into a grey-scale bitmap, then decoded by zxing-cpp."""
    import zxingcpp

    width = int(re.search(r'<svg[^>]* width="(\d+)"', svg).group(1))  # type: ignore[union-attr]
    height = int(re.search(r'<svg[^>]* height="(\d+)"', svg).group(1))  # type: ignore[union-attr]
    scale = int(re.search(r'transform="scale\((\d+)\)"', svg).group(1))  # type: ignore[union-attr]
    (path,) = re.findall(r'<path [^>]*class="qrline"[^>]*d="([^"]+)"', svg)
    size = width // scale
    assert size == height // scale and size * scale == width
    modules = [[False] * size for _ in range(size)]
    x = y = 0.0
    for command, a, b in re.findall(r"([Mmh])(-?[\d.]+)(?: (-?[\d.]+))?", path):
        if command == "M":
            x, y = float(a), float(b)
        elif command == "m":
            x, y = x + float(a), y + float(b)
        else:  # h: a dark run along row y - 0.5
            run = float(a)
            for column in range(int(x), int(x + run)):
                modules[int(y)][column] = True
            x += run
    pixels = bytes(0 if modules[row // 4][column // 4] else 255
                   for row in range(size * 4) for column in range(size * 4))
    (found,) = zxingcpp.read_barcodes(memoryview(pixels).cast("B", (size * 4, size * 4)))
    return str(found.text)


def test_the_html_hand_over_has_copy_buttons_and_a_qr_code_of_the_xmpp_uri_under_a_strict_csp(
        tmp_path: Path) -> None:
    """For people on a phone (issue 15, item 8): the page shows the JID and the password as text
    (selectable without JavaScript), a copy button for each, and a QR code whose content is the
    RFC 5122 URI of the JID (the XEP-0106 backslash percent-encoded; no password in it). The page
    loads nothing from elsewhere, and its Content-Security-Policy lets exactly its own inline
    script run (by hash, not 'unsafe-inline'), so injected markup could run nothing."""
    import base64
    import hashlib

    from sns_xmpp.auth.social import parse_handover

    world = World(tmp_path)
    state, cookie, _ = world.start()
    signed = world.signed()
    query = urllib.parse.urlencode({**signed, "state": state})
    answer = request(world.site, "GET", f"/callback/sns?{query}", {"Cookie": cookie, "Accept": "text/html"})
    assert answer.code == 200, answer.body
    assert answer.header("content-type") == "text/html; charset=utf-8"
    page = answer.body.decode()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page  # phone-sized
    shown = {name: html.unescape(value)
             for name, value in re.findall(r'<code id="(jid|password)">([^<]*)</code>', page)}
    assert shown["jid"] == "alice\\40sns-1@localhost"
    assert parse_handover(shown["password"]) == ("sns", signed["identifier"], signed["signature"])
    buttons = re.findall(r'<button type="button" data-copy="(\w+)"[^>]*>', page)
    assert buttons == ["jid", "password"]

    (svg,) = re.findall(r"<svg.*?</svg>", page, re.DOTALL)
    assert _qr_text(svg) == "xmpp:alice%5C40sns-1@localhost"
    assert 'href="xmpp:alice%5C40sns-1@localhost"' in page
    assert shown["password"] not in svg and "password" not in _qr_text(svg)

    # Nothing from elsewhere: no src, no URL but the xmpp: one, and the one stylesheet is this
    # server's own.
    assert re.findall(r"<link[^>]*>", page) == ['<link rel="stylesheet" href="/static/sns-xmpp.css">'], page
    assert not re.search(r"\ssrc=|https?://", page), page
    policy = dict(part.strip().split(" ", 1) for part in (answer.header("content-security-policy") or "").split(";")
                  if part.strip())
    (script,) = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert policy["script-src"] == f"'sha256-{digest}'"
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in (answer.header("content-security-policy") or "")
    for style in re.findall(r"<style>(.*?)</style>", page, re.DOTALL):
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy["style-src"].split()


@pytest.mark.parametrize("jid, uri", [
    ("alice\\40demo@localhost", "xmpp:alice%5C40demo@localhost"),  # the XEP-0106 backslash
    ("ji\u0159i@example.org", "xmpp:ji%C5%99i@example.org"),  # UTF-8, then percent-encoded
    ("a!$()*+,;=-._~z@localhost", "xmpp:a!$()*+,;=-._~z@localhost"),  # unreserved and nodeallow stay
])
def test_the_xmpp_uri_percent_encodes_what_rfc_5122_does_not_allow_in_a_node(jid: str, uri: str) -> None:
    """RFC 5122's nodeid is unreserved characters, the nodeallow set and percent-encoded octets
    of UTF-8: the backslash of an escaped JID is not among them and must travel as %5C."""
    from sns_xmpp.http.handover_page import xmpp_uri

    assert xmpp_uri(jid) == uri


def test_a_logout_token_names_its_account_until_it_expires_and_nothing_else_passes_for_one() -> None:
    """The hand-over's 'log out everywhere' proof: the JID it was issued for, for a day; a token
    that is altered, expired, or a login state sealed under the same key is no proof."""
    from sns_xmpp.http.logout import AccountTokens

    clock = task.Clock()
    tokens = AccountTokens(b"k" * 32, clock)
    token = tokens.issue("olga\\40demo@localhost")
    assert tokens.open(token) == "olga\\40demo@localhost"
    payload, _, mac = token.partition(".")
    assert tokens.open(f"{payload}x.{mac}") is None and tokens.open(token[:-1]) is None
    login_state = PendingLogins(clock, secret=b"k" * 32).seal("state", "demo", {})
    assert tokens.open(login_state) is None  # the same key, another context
    clock.advance(tokens.ttl + 1)
    assert tokens.open(token) is None
