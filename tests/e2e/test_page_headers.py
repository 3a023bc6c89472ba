"""What the login pages say about themselves to the browser (issue 19, item 4): every HTML page
nosniff and a Content-Security-Policy that forbids framing; the pages that show credentials never
cached; the login cookie HttpOnly and SameSite. Walked through the demo site's login as a
browser would, page by page."""

from __future__ import annotations

import urllib.parse

import pytest_twisted
import treq


def _security_headers(answer, name: str) -> str:  # type: ignore[no-untyped-def]
    """The page's policy, after checking what every page must say."""
    assert answer.headers.getRawHeaders("x-content-type-options") == ["nosniff"], name
    assert answer.headers.getRawHeaders("referrer-policy") == ["no-referrer"], name
    [policy] = answer.headers.getRawHeaders("content-security-policy")
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy, (name, policy)
    return str(policy)


@pytest_twisted.ensureDeferred
async def test_every_page_of_a_login_says_how_a_browser_may_treat_it(server) -> None:
    home = await treq.get(server.http_url + "/")
    assert home.code == 200 and home.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert "script-src" not in _security_headers(home, "/")  # no script on the start page

    entry = await treq.get(f"{server.http_url}/login-using-demo", allow_redirects=False)
    assert entry.code == 302
    [cookie] = entry.headers.getRawHeaders("set-cookie")
    assert "; HttpOnly" in cookie and "; SameSite=Lax" in cookie
    assert entry.headers.getRawHeaders("cache-control") == ["no-store"]
    form_url = entry.headers.getRawHeaders("location")[0]
    form = await treq.get(form_url)
    _security_headers(form, "the demo site's form")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(form_url).query)
    signed = await treq.post(f"{server.http_url}/demo-site/login", allow_redirects=False, data={
        "account": "erin", "return_to": query["return_to"][0], "state": query["state"][0]})
    callback_url = signed.headers.getRawHeaders("location")[0]

    shown = await treq.get(callback_url, cookies=entry.cookies())
    assert shown.code == 200 and b"erin" in await shown.content()
    _security_headers(shown, "the credentials page")
    assert shown.headers.getRawHeaders("cache-control") == ["no-store"]

    # A provider's form_post hand-over without the cookie is relayed by a page with one script,
    # allowed by its hash alone.
    relayed = await treq.post(f"{server.http_url}/callback/demo", data={"state": "x", "code": "y"})
    policy = _security_headers(relayed, "the relay page")
    assert "script-src 'sha256-" in policy and "'unsafe-inline'" not in policy
    assert relayed.headers.getRawHeaders("cache-control") == ["no-store"]

    # One stylesheet, from this server, linked by every page above (the demo site's too).
    sheet = await treq.get(server.http_url + "/static/sns-xmpp.css")
    assert sheet.code == 200 and sheet.headers.getRawHeaders("content-type") == ["text/css; charset=utf-8"]
    assert b"@media" in await sheet.content()
    for page in (home, form, shown):
        assert b'<link rel="stylesheet" href="/static/sns-xmpp.css">' in await page.content()

    missing = await treq.get(server.http_url + "/login-using-nowhere")
    assert missing.code == 404
    _security_headers(missing, "an error page")
