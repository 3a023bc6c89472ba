"""An OpenID Connect provider as the social site, end to end: browser flow, PLAIN, OAUTHBEARER, forgeries."""

from __future__ import annotations

import base64
import json

import pytest_twisted
import treq

from tests.conftest import make_config
from tests.oidc_provider import OIDCProvider, mirror_ecdsa_signature
from tests.rawxmpp import RawStream
from tests.xmppclient import Client, wait

SITE = """
[sites.idp]
plugin = "oidc"
display_name = "Test Identity Provider"
issuer = "{issuer}"
client_id = "{client_id}"
client_secret = "{client_secret}"
retry_initial = 0.1
"""


async def oidc_server(start_server, tmp_path, extra: str = ""):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    provider = OIDCProvider()
    provider.listen(reactor)
    server = await start_server(make_config(tmp_path, SITE.format(
        issuer=provider.issuer, client_id=provider.client_id, client_secret=provider.client_secret) + extra))
    site = server.server.sites.get("idp")
    await site.when_ready()
    return provider, server, site


@pytest_twisted.ensureDeferred
async def test_authorization_code_flow_then_xmpp_login_and_bearer(start_server, tmp_path) -> None:
    provider, server, site = await oidc_server(start_server, tmp_path)
    try:
        entry = await treq.get(f"{server.http_url}/login-using-idp", allow_redirects=False)
        authorize = entry.headers.getRawHeaders("location")[0]
        assert authorize.startswith(f"{provider.issuer}/authorize?")
        back = await treq.get(authorize, allow_redirects=False)
        callback = back.headers.getRawHeaders("location")[0]
        answer = await treq.get(callback, cookies=entry.cookies(), headers={"accept": "application/json"})
        credentials = json.loads(await answer.content())
        assert answer.code == 200, credentials
        assert credentials["username"] == "User-42@idp"
        assert credentials["display_name"] == provider.name  # the ID token's name reaches the person

        client = Client(credentials["jid"], credentials["password"], mechanism="PLAIN")
        await wait(client.log_in(server.c2s_port))
        linked = client.boundjid.bare
        assert linked.endswith("\\40idp@localhost") and linked == credentials["jid"]
        await wait(client.log_out())
        [link] = await server.store.list_links(site="idp")
        assert (link.account, link.jid) == ("User-42", linked)

        async def bearer(token: str) -> list[str]:
            stream = await RawStream.open_tls(server.c2s_port)
            assert "<mechanism>OAUTHBEARER</mechanism>" in stream.features
            answers = [await stream.auth("OAUTHBEARER", f"n,,\x01auth=Bearer {token}\x01\x01".encode())]
            if answers[0].startswith("<challenge"):
                answers.append(await stream.respond(b"\x01"))
            stream.close()
            return answers

        from twisted.internet import reactor

        good = provider.id_token(reactor.seconds(), site.issue_nonce())
        assert (await wait(bearer(good)))[0].startswith("<success")
        challenge, failure = await wait(bearer(good[:-4] + "AAAA"))
        document = json.loads(base64.b64decode(challenge.split(">", 1)[1].split("<", 1)[0]))
        assert document == {"status": "invalid_token", "scope": "openid",
                            "openid-configuration": f"{provider.issuer}/.well-known/openid-configuration"}
        assert "<not-authorized/>" in failure
        assert len(await server.store.list_links(site="idp")) == 1
    finally:
        await provider.stop()


@pytest_twisted.ensureDeferred
async def test_forged_id_tokens_are_refused(start_server, tmp_path) -> None:
    """alg=none and HS256 keyed with the provider's public key: the two classic JWT forgeries."""
    provider, server, site = await oidc_server(start_server, tmp_path)
    try:
        from twisted.internet import reactor

        claims = provider.claims(reactor.seconds(), site.issue_nonce())
        for forged in (provider.forge_none(claims), provider.forge_hs256_with_public_key(claims)):
            client = Client("x@localhost", forged, mechanism="PLAIN", username="User-42@idp")
            client.connect(host="127.0.0.1", port=server.c2s_port)
            failure = await wait(client.auth_failures.get())
            client.abort()
            assert failure.get_condition() == "not-authorized"
            assert "fresh credentials" in str(failure["text"])
        assert await server.store.list_links() == []
    finally:
        await provider.stop()


@pytest_twisted.ensureDeferred
async def test_provider_outage_at_the_callback_is_a_bad_gateway(start_server, tmp_path) -> None:
    """A token endpoint that answers 5xx or does not answer in time is the provider's failure: the
    callback answers 502 with the reason, not 400 as if the person's login were bad."""
    provider, server, _ = await oidc_server(start_server, tmp_path, "request_timeout = 0.3\n")
    try:
        for outage, reason in ((503, "token endpoint: HTTP 503"), (None, "token endpoint: request timed out")):
            provider.outage["/token"] = outage
            entry = await treq.get(f"{server.http_url}/login-using-idp", allow_redirects=False)
            back = await treq.get(entry.headers.getRawHeaders("location")[0], allow_redirects=False)
            callback = back.headers.getRawHeaders("location")[0]
            answer = await treq.get(callback, cookies=entry.cookies(), headers={"accept": "application/json"})
            document = json.loads(await answer.content())
            assert answer.code == 502, (outage, answer.code, document)
            assert document["error"].startswith(f"provider-unavailable: {reason}"), document
            page = await treq.get(f"{server.http_url}/login-using-idp", allow_redirects=False)
            assert page.code == 302  # the site itself is still up: only this exchange failed
            await page.content()
    finally:
        await provider.stop()


@pytest_twisted.ensureDeferred
async def test_single_use_token_is_not_reborn_by_a_mirrored_ecdsa_signature(start_server, tmp_path) -> None:
    """With single_use, an ES256 ID token opens one session; the same token with s replaced by n-s (a
    second valid signature over the same claims) is refused as a replay, not logged in again."""
    from twisted.internet import reactor

    provider, server, site = await oidc_server(start_server, tmp_path, "single_use = true\n")
    try:
        token = provider.id_token(reactor.seconds(), site.issue_nonce(), kid=provider.ec_kid)
        mirrored = mirror_ecdsa_signature(token)
        assert (await site.verify("User-42", mirrored, reactor.seconds())).account == "User-42"  # it verifies

        async def plain(password: str) -> str:
            stream = await RawStream.open_tls(server.c2s_port)
            answer = await stream.auth("PLAIN", f"\0User-42@idp\0{password}".encode())
            stream.close()
            return answer

        assert (await wait(plain(token))).startswith("<success")
        replay = await wait(plain(mirrored))
        assert "<not-authorized/>" in replay and "replayed: these credentials were used" in replay, replay
    finally:
        await provider.stop()


@pytest_twisted.ensureDeferred
async def test_a_back_channel_logout_ends_the_session_and_voids_the_tokens_issued_before(
        start_server, tmp_path) -> None:
    """OpenID Connect Back-Channel Logout 1.0: the provider posts a signed logout token; the linked
    account's session ends at once, an ID token issued before no longer logs in ('revoked'), the
    same logout token again, an ID token passed off as a logout token and a forged one are 400s,
    and a login at the provider afterwards comes back to the same user."""
    from twisted.internet import reactor

    provider, server, site = await oidc_server(start_server, tmp_path)
    try:
        before = provider.id_token(reactor.seconds(), site.issue_nonce())
        client = Client("ignored@localhost", before, mechanism="PLAIN", username=f"{provider.sub}@idp")
        await wait(client.log_in(server.c2s_port))
        jid = client.boundjid.bare
        endpoint = f"{server.http_url}/backchannel-logout/idp"

        async def post(token: str) -> tuple[int, dict]:
            answer = await treq.post(endpoint, data={"logout_token": token})
            body = await answer.content()
            assert answer.headers.getRawHeaders("cache-control") == ["no-store"]
            return answer.code, json.loads(body) if body else {}

        logout = provider.logout_token(reactor.seconds())
        code, document = await post(provider.id_token(reactor.seconds(), site.issue_nonce()))
        assert (code, document["error"]) == (400, "invalid_request")
        assert document["error_description"].startswith("malformed: logout token")
        forged_claims = json.loads(base64.urlsafe_b64decode(logout.split(".")[1] + "=="))
        code, _ = await post(provider.forge_none(forged_claims))
        assert code == 400 and server.sessions.resources(jid)
        assert await post(logout) == (200, {})
        error = await wait(client.stream_errors.get(), 10)
        assert error["condition"] == "not-authorized" and server.sessions.resources(jid) == []
        code, document = await post(logout)
        assert code == 400 and document["error_description"].startswith("replayed")

        stale = Client("ignored@localhost", before, mechanism="PLAIN", username=f"{provider.sub}@idp")
        stale.connect(host="127.0.0.1", port=server.c2s_port)
        failure = await wait(stale.auth_failures.get())
        stale.abort()
        assert str(failure["text"]).startswith("revoked")

        provider_clock_tick = reactor.seconds() + 1  # a login at the provider, a second later
        fresh = provider.id_token(provider_clock_tick, site.issue_nonce())
        again = Client("ignored@localhost", fresh, mechanism="PLAIN", username=f"{provider.sub}@idp")
        await wait(again.log_in(server.c2s_port))
        assert again.boundjid.bare == jid
        await wait(again.log_out())
    finally:
        await provider.stop()


SECOND_SITE = """
[sites.idp-mobile]
plugin = "oidc"
issuer = "{issuer}"
client_id = "sns-xmpp-mobile"
client_secret = "another-secret"
access_tokens = "userinfo"
retry_initial = 0.1
"""


@pytest_twisted.ensureDeferred
async def test_oauthbearer_takes_tokens_the_client_got_itself_on_two_sites_of_one_provider(
        start_server, tmp_path) -> None:
    """Issue 15, item 7: an ID token the client got from the provider itself (any nonce, or none)
    logs in once (its jti is then remembered); two sites on one issuer, one client id each, each
    take their own tokens; an access token is taken where the site validates it at the userinfo
    endpoint, and refused where it does not, or when the provider does not know it."""
    from twisted.internet import reactor

    provider = OIDCProvider()
    provider.listen(reactor)
    try:
        server = await start_server(make_config(tmp_path, SITE.format(
            issuer=provider.issuer, client_id=provider.client_id, client_secret=provider.client_secret)
            + SECOND_SITE.format(issuer=provider.issuer)))
        for site_id in ("idp", "idp-mobile"):
            await server.server.sites.get(site_id).when_ready()

        async def bearer(token: str) -> str:
            stream = await RawStream.open_tls(server.c2s_port)
            answer = await stream.auth("OAUTHBEARER", f"n,,\x01auth=Bearer {token}\x01\x01".encode())
            if answer.startswith("<challenge"):
                answer += await stream.respond(b"\x01")
            stream.close()
            return answer

        now = reactor.seconds()
        own = provider.id_token(now, None, jti="own-1")  # no nonce: not from this server's login
        assert (await wait(bearer(own))).startswith("<success")
        assert "replayed" in await wait(bearer(own))  # once only
        mobile = provider.id_token(now, "their-nonce", aud="sns-xmpp-mobile", jti="mobile-1")
        assert (await wait(bearer(mobile))).startswith("<success")
        links = {link.site: link.jid for link in await server.store.list_links()}
        assert set(links) == {"idp", "idp-mobile"} and links["idp"] != links["idp-mobile"]

        provider.userinfo = {"name": "Test User"}
        provider.access_tokens.add("opaque-access-token-0123456789")
        for _ in range(2):  # an access token is no one-time token
            assert (await wait(bearer("opaque-access-token-0123456789"))).startswith("<success")
        refused = await wait(bearer("unknown-access-token-0123456789"))
        assert "<failure" in refused and server.sessions.resources(links["idp-mobile"]) == []
        assert len(await server.store.list_links()) == 2  # the access token was idp-mobile's user
    finally:
        await provider.stop()


@pytest_twisted.ensureDeferred
async def test_a_refresh_token_reconfirms_the_account_and_its_withdrawal_revokes_it(
        start_server, tmp_path) -> None:
    """Item 4: with offline_access the provider gives a refresh token at the login; the server
    keeps it sealed and re-confirms the account with it (the token rotating), which moves the
    devices' lifetime on; when the person withdraws the access at the provider, the next round
    revokes the account: its live session ends and its device passwords go."""
    from twisted.internet import reactor

    provider, server, site = await oidc_server(start_server, tmp_path,
                                               'scopes = ["openid", "offline_access"]\ndevice_lifetime = 600\n')
    try:
        entry = await treq.get(f"{server.http_url}/login-using-idp", allow_redirects=False)
        back = await treq.get(entry.headers.getRawHeaders("location")[0], allow_redirects=False)
        answer = await treq.get(back.headers.getRawHeaders("location")[0], cookies=entry.cookies(),
                                headers={"accept": "application/json"})
        credentials = json.loads(await answer.content())
        jid = credentials["jid"]
        [kept] = await server.store.refresh_tokens_due(reactor.seconds())
        assert kept.jid == jid and provider.refresh_tokens and next(iter(provider.refresh_tokens)) not in kept.sealed
        made = await treq.post(credentials["devices_url"], data={"token": credentials["account_token"],
                                                                   "action": "create", "label": "phone"},
                               headers={"Accept": ["application/json"]})
        password = json.loads(await made.content())["password"]
        [before] = await server.store.device_passwords(jid)

        reconfirmer = server.server.top.getServiceNamed("reconfirmer")
        reconfirmer.every = 0.0  # due at once (a day after the last confirmation, normally)
        assert await reconfirmer.run_round() == 1
        [after] = await server.store.device_passwords(jid)
        [renewed] = await server.store.refresh_tokens_due(reactor.seconds())
        assert after.expires_at >= before.expires_at and renewed.sealed != kept.sealed

        client = Client(jid, password, mechanism="SCRAM-SHA-256")
        await wait(client.log_in(server.c2s_port))
        provider.withdraw_refresh_tokens()
        assert await reconfirmer.run_round() == 0
        error = await wait(client.stream_errors.get(), 10)
        assert error["condition"] == "not-authorized"
        assert await server.store.device_passwords(jid) == [] and await server.store.refresh_tokens_due(1e12) == []
    finally:
        await provider.stop()
