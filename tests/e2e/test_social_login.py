"""Social login end to end: the HTTP entry, the demo site, the callback, and slixmpp over TLS."""

from __future__ import annotations

import asyncio
import json
import urllib.parse

import pytest
import pytest_twisted
import treq

from sns_xmpp.sites.facebook import sign_request
from sns_xmpp.sites.hmac import sign
from tests.conftest import DEMO_SITE, make_config
from tests.xmppclient import Client, wait

HMAC_SITE = """
[sites.sns-example]
plugin = "hmac"
display_name = "SNS Example"
login_url = "https://sns-example.com/login?apikey=demo-key&return_to={callback}&state={state}"
keys = { old = "old-secret-0123456789", new = "new-secret-0123456789" }
signing_key = "new"
max_lifetime = 3600
leeway = 0
"""

FACEBOOK_SITE = """
[sites.facebook]
plugin = "facebook"
app_id = "1234"
app_secret = "facebook-app-secret-0123456789"
"""


async def demo_credentials(server, account: str) -> dict:  # type: ignore[no-untyped-def]
    """Walk the patent's browser flow: entry -> demo login form -> callback, as JSON."""
    entry = await treq.get(f"{server.http_url}/login-using-demo", allow_redirects=False)
    assert entry.code == 302
    form_url = entry.headers.getRawHeaders("location")[0]
    assert form_url.startswith(f"{server.http_url}/demo-site/login?")
    cookies = entry.cookies()
    form = await treq.get(form_url)
    assert form.code == 200 and b"demonstration site" in await form.content()
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(form_url).query)
    signed = await treq.post(f"{server.http_url}/demo-site/login", allow_redirects=False, data={
        "account": account, "return_to": query["return_to"][0], "state": query["state"][0]})
    assert signed.code == 302
    callback_url = signed.headers.getRawHeaders("location")[0]
    assert callback_url.startswith(f"{server.http_url}/callback/demo?")
    answer = await treq.get(callback_url, cookies=cookies, headers={"accept": "application/json"})
    assert answer.code == 200, await answer.text()
    return json.loads(await answer.content())


async def failure_text(server, username: str, password: str, mechanism: str = "PLAIN") -> str:  # type: ignore[no-untyped-def]
    client = Client("someone@localhost", password, mechanism=mechanism, username=username)
    client.connect(host="127.0.0.1", port=server.c2s_port)
    failure = await wait(client.auth_failures.get())
    client.abort()
    assert failure.get_condition() == "not-authorized"
    return str(failure["text"])


@pytest_twisted.ensureDeferred
async def test_patent_flow_with_the_demo_site_then_chat_with_a_local_user(server_on_each_store) -> None:
    """HTTP entry -> demo site -> callback -> XMPP login as <identifier>@demo, linked once, chatting.

    On SQLite and on PostgreSQL."""
    server = server_on_each_store
    credentials = await demo_credentials(server, "alice")
    assert credentials["username"].startswith("alice.") and credentials["username"].endswith("@demo")
    assert credentials["jid"] == "alice\\40demo@localhost"  # the linked user, made at the hand-over

    await server.add_user("bob@localhost", "secret")
    bob = Client("bob@localhost", "secret")
    await wait(bob.log_in(server.c2s_port))
    # The JID a client is configured with, and the password handed over with it ...
    alice = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
    await wait(alice.log_in(server.c2s_port))
    assert alice.boundjid.bare == "alice\\40demo@localhost"
    alice.send_message(mto="bob@localhost", mbody="hi from a social account", mtype="chat")
    message = await wait(bob.next_message())
    assert (message["body"], message["from"].bare) == ("hi from a social account", "alice\\40demo@localhost")
    bob.send_message(mto=message["from"], mbody="welcome", mtype="chat")
    assert (await wait(alice.next_message()))["body"] == "welcome"
    await wait(alice.log_out())

    # ... and the older user name with the site's own token, from fresh credentials: the same
    # linked user, one link row.
    again = await demo_credentials(server, "alice")
    assert again["password"] != credentials["password"]
    alice = Client("ignored@localhost", again["token"], username=again["username"])
    await wait(alice.log_in(server.c2s_port))
    assert alice.boundjid.bare == "alice\\40demo@localhost"
    links = await server.store.list_links(site="demo")
    assert [(link.account, link.jid) for link in links] == [("alice", "alice\\40demo@localhost")]
    assert links[0].last_login is not None
    await wait(alice.log_out())
    await wait(bob.log_out())


@pytest_twisted.ensureDeferred
async def test_stream_features_list_the_sites_before_authentication(server) -> None:
    async def features() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.c2s_port)
        writer.write(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                     b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
        data = await reader.readuntil(b"</stream:features>")
        writer.close()
        return data

    data = (await wait(features())).decode()
    assert (f"<sites xmlns='urn:x-sns-xmpp:sites:0' list='{server.http_url}/sites'>"
            f"<site id='demo' name='Demo social site' login='{server.http_url}/login-using-demo'/></sites>") in data
    listed = json.loads(await (await treq.get(f"{server.http_url}/sites")).content())
    assert listed["sites"][0]["login"] == f"{server.http_url}/login-using-demo"


@pytest_twisted.ensureDeferred
async def test_a_scram_only_client_logs_in_socially(server) -> None:
    """libstrophe-style clients pick SCRAM-SHA-1 and never fall back: with the older user name and
    the site's own token, the server recomputes the password (the handed-over JID, which does not
    carry the access info, names itself in the stream header instead: tests/e2e/test_handover.py)."""
    credentials = await demo_credentials(server, "carol")
    for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
        client = Client("ignored@localhost", credentials["token"], mechanism=mechanism,
                        username=credentials["username"])
        await wait(client.log_in(server.c2s_port))
        assert client.boundjid.bare == "carol\\40demo@localhost"
        await wait(client.log_out())
    text = await failure_text(server, credentials["username"], "not-the-signature", mechanism="SCRAM-SHA-1")
    assert "wrong credentials" in text


@pytest_twisted.ensureDeferred
async def test_forged_expired_and_unknown_tokens_are_refused_with_reasons(start_server, tmp_path) -> None:
    server = await start_server(make_config(tmp_path, DEMO_SITE + HMAC_SITE))
    site = server.server.sites.get("sns-example")
    from twisted.internet import reactor

    now = int(reactor.seconds())
    identifier, token = site.mint("dora", "s1", now + 600)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    forged = sign("sns-example", b"a-key-nobody-agreed-on!", identifier)
    expired_id, expired_token = site.mint("dora", "s2", now - 30)
    too_long_id, too_long_token = site.mint("dora", "s3", now + 7200)
    unknown_kid = f"dora.s4.{now + 600}.gone"
    cases = [
        (f"{identifier}@sns-example", tampered, "bad-signature"),
        (f"{identifier}@sns-example", forged, "bad-signature"),
        (f"{unknown_kid}@sns-example", sign("sns-example", b"old-secret-0123456789", unknown_kid), "unknown-key"),
        (f"{expired_id}@sns-example", expired_token, "expired"),
        (f"{too_long_id}@sns-example", too_long_token, "lifetime-exceeded"),
        (f"{identifier}@no-such-site", token, "unknown-site"),
        ("dora-no-dots@sns-example", token, "malformed"),
    ]
    for username, password, reason in cases:
        text = await failure_text(server, username, password)
        assert text.startswith(reason), (username, text)
        if reason != "unknown-site":
            assert text.endswith(f"fresh credentials: {server.http_url}/login-using-sns-example"), text
    assert await server.store.list_links() == []
    assert await server.store.list_accounts() == []

    client = Client("x@localhost", token, username=f"{identifier}@sns-example")
    await wait(client.log_in(server.c2s_port))
    assert client.boundjid.bare == "dora\\40sns-example@localhost"
    await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_key_rotation_old_and_new_then_old_removed(start_server, tmp_path) -> None:
    config = make_config(tmp_path, HMAC_SITE)
    server = await start_server(config)
    from twisted.internet import reactor

    expires = int(reactor.seconds()) + 600
    site = server.server.sites.get("sns-example")
    old = site.mint("erin", "s1", expires, kid="old")
    new = site.mint("erin", "s2", expires, kid="new")
    for identifier, token in (old, new):
        client = Client("x@localhost", token, username=f"{identifier}@sns-example")
        await wait(client.log_in(server.c2s_port))
        await wait(client.log_out())
    await start_server.stop(server)

    rotated = make_config(tmp_path, HMAC_SITE.replace('old = "old-secret-0123456789", ', ""),
                          http_port=config.http.port)
    server = await start_server(rotated)
    assert (await failure_text(server, f"{old[0]}@sns-example", old[1])).startswith("unknown-key")
    client = Client("x@localhost", new[1], username=f"{new[0]}@sns-example")
    await wait(client.log_in(server.c2s_port))
    assert client.boundjid.bare == "erin\\40sns-example@localhost"
    await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_facebook_signed_request(start_server, tmp_path) -> None:
    server = await start_server(make_config(tmp_path, FACEBOOK_SITE))
    from twisted.internet import reactor

    now = int(reactor.seconds())
    good = sign_request("facebook-app-secret-0123456789",
                        {"algorithm": "HMAC-SHA256", "user_id": "100200", "issued_at": now, "expires": now + 600})
    client = Client("x@localhost", good, username="100200@facebook")
    await wait(client.log_in(server.c2s_port))
    assert client.boundjid.bare == "100200\\40facebook@localhost"
    await wait(client.log_out())

    wrong_secret = sign_request("another-secret-0123456789",
                                {"algorithm": "HMAC-SHA256", "user_id": "100200", "issued_at": now})
    stale = sign_request("facebook-app-secret-0123456789",
                         {"algorithm": "HMAC-SHA256", "user_id": "100200", "issued_at": now - 7200})
    assert (await failure_text(server, "100200@facebook", wrong_secret)).startswith("bad-signature")
    assert (await failure_text(server, "100200@facebook", stale)).startswith("expired")
    assert (await failure_text(server, "999@facebook", good)).startswith("malformed")


@pytest_twisted.ensureDeferred
async def test_social_users_exist_while_offline(server) -> None:
    """Messages wait for a social user, and a subscription with a local user survives both going offline."""
    await server.add_user("bob@localhost", "secret")
    first = await demo_credentials(server, "frank")
    frank = Client(first["jid"], first["password"], mechanism="PLAIN")
    await wait(frank.log_in(server.c2s_port))
    frank_jid = frank.boundjid.bare
    bob = Client("bob@localhost", "secret")
    await wait(bob.log_in(server.c2s_port))
    bob.send_presence(pto=frank_jid, ptype="subscribe")
    await wait(frank.subscription_requests.get())
    frank.send_presence(pto="bob@localhost", ptype="subscribed")
    await wait(frank.log_out())
    await wait(bob.log_out())

    bob = Client("bob@localhost", "secret")
    bob.register_plugin("xep_0198")
    enabled = asyncio.ensure_future(bob.wait_until("sm_enabled", 15))
    await wait(bob.log_in(server.c2s_port))
    await wait(enabled)
    assert bob.client_roster[frank_jid]["subscription"] == "to"
    acked: asyncio.Queue = asyncio.Queue()
    bob.add_event_handler("stanza_acked", acked.put_nowait)
    bob.send_message(mto=frank_jid, mbody="while you were away", mtype="chat")
    # slixmpp writes <r/> ahead of queued stanzas, so ask only once a ping shows the message is in.
    await wait(bob.plugin["xep_0199"].ping(jid="localhost"))
    bob.plugin["xep_0198"].request_ack()
    while (await wait(acked.get())).name != "message":
        pass  # XEP-0198: the message is acknowledged only once its offline copy is on disk
    await wait(bob.log_out())
    assert await server.store.count_offline(frank_jid) == 1

    later = await demo_credentials(server, "frank")
    frank = Client(later["jid"], later["password"], mechanism="PLAIN")
    await wait(frank.log_in(server.c2s_port))
    assert (await wait(frank.next_message()))["body"] == "while you were away"
    assert frank.client_roster["bob@localhost"]["subscription"] == "from"
    await wait(frank.log_out())


@pytest.mark.parametrize("path", ["/login-using-nowhere", "/callback/nowhere"])
@pytest_twisted.ensureDeferred
async def test_unknown_site_entries_answer_404_with_the_site_list(server, path: str) -> None:
    answer = await treq.get(server.http_url + path, headers={"accept": "application/json"})
    assert answer.code == 404
    assert [site["id"] for site in json.loads(await answer.content())["sites"]] == ["demo"]


@pytest_twisted.ensureDeferred
async def test_callback_refuses_missing_or_foreign_state(server) -> None:
    """No login CSRF: a callback with a state this browser was not given is refused, and nothing is issued."""
    entry = await treq.get(f"{server.http_url}/login-using-demo", allow_redirects=False)
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(entry.headers.getRawHeaders("location")[0]).query)["state"]
    site = server.server.sites.get("demo")
    from twisted.internet import reactor

    identifier, token = site.mint("mallory", "s1", int(reactor.seconds()) + 60)
    query = urllib.parse.urlencode({"identifier": identifier, "signature": token, "state": state[0]})
    no_cookie = await treq.get(f"{server.http_url}/callback/demo?{query}", headers={"accept": "application/json"})
    assert no_cookie.code == 400
    assert "password" not in json.loads(await no_cookie.content())
    redirect = await treq.post(f"{server.http_url}/demo-site/login", allow_redirects=False, data={
        "account": "x", "return_to": "https://evil.example/steal", "state": "s"})
    assert redirect.code == 400 and not redirect.headers.hasHeader("location")


@pytest_twisted.ensureDeferred
async def test_a_third_party_plugin_package_logs_users_in(start_server, tmp_path) -> None:
    """tests/plugin_package, installed like any plugin, adds a site with no change to sns_xmpp."""
    from sns_xmpp_tiny_site import token_for
    from twisted.internet import reactor

    server = await start_server(make_config(tmp_path, """
[sites.tiny]
plugin = "tiny-example"
secret = "tiny-secret-0123456789"
"""))
    token = token_for("tiny-secret-0123456789", "gina", int(reactor.seconds()) + 60)
    client = Client("gina\\40tiny@localhost", token, mechanism="PLAIN")
    await wait(client.log_in(server.c2s_port))
    assert client.boundjid.bare == "gina\\40tiny@localhost"
    await wait(client.log_out())
    # Another last hex digit: a fixed "0" left one token in 16 unchanged, and that login succeeded.
    forged = token[:-1] + ("1" if token.endswith("0") else "0")
    assert (await failure_text(server, "gina@tiny", forged)).startswith("bad-signature")


@pytest_twisted.ensureDeferred
async def test_no_token_or_password_reaches_the_log(server) -> None:
    """Every log event of a good and a refused social login and a local login, searched for the secrets."""
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        credentials = await demo_credentials(server, "hank")
        client = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
        await wait(client.log_in(server.c2s_port))
        await wait(client.log_out())
        bad_password = credentials["password"][::-1]
        await failure_text(server, credentials["username"], bad_password)
        await server.add_user("ivy@localhost", "ivy-password-123")
        await failure_text(server, "ivy", "ivy-wrong-password-456")
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent

    text = "\n".join(formatEvent(event) + repr(event) for event in events)
    assert "auth.social_login" in text
    demo_key = (server.server.config.data_dir / "demo-site.key").read_text().strip()
    for secret in (credentials["password"], credentials["token"], bad_password, "ivy-password-123",
                   "ivy-wrong-password-456", demo_key):
        assert secret not in text


@pytest_twisted.ensureDeferred
async def test_metrics_count_social_logins_by_site_and_result_and_health_is_ok(server) -> None:
    credentials = await demo_credentials(server, "kim")
    client = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
    await wait(client.log_in(server.c2s_port))
    client.send_message(mto=client.boundjid.bare, mbody="note to self", mtype="chat")
    await wait(client.next_message())
    await wait(client.log_out())
    await failure_text(server, credentials["username"], credentials["password"][::-1])

    page = (await (await treq.get(f"{server.http_url}/metrics")).content()).decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in page.splitlines() if line and not line.startswith("#")}
    assert samples['sns_xmpp_logins_total{result="ok",site="demo"}'] == 1
    assert samples['sns_xmpp_logins_total{result="bad-signature",site="demo"}'] == 1
    assert samples["sns_xmpp_auth_duration_seconds_count"] == 2
    assert samples['sns_xmpp_stanzas_routed_total{kind="message"}'] == 1
    health = await treq.get(f"{server.http_url}/health")
    assert (health.code, await health.text()) == (200, "ok\n")
