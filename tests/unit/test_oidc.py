"""The OpenID Connect site and its JOSE verifier, against a real provider on 127.0.0.1."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_twisted
import treq
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.web.client import Agent
from zope.interface import provider as provides
from zope.interface.verify import verifyObject

from sns_xmpp.sites import jose
from sns_xmpp.sites.interface import (
    IBearerSite,
    ILogoutSite,
    IRefreshingSite,
    ProviderUnavailable,
    Rejection,
    SiteConfigError,
    SiteContext,
    SiteRejection,
)
from sns_xmpp.sites.oidc import OIDCSite, ProviderError, make_oidc_site, parse_metadata
from sns_xmpp.sites.oidc_tokens import NonceKey, replay_key
from tests.oidc_provider import OIDCProvider, b64, b64json, mirror_ecdsa_signature, public_jwk

CALLBACK = "http://127.0.0.1:5280/login/idp/callback"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _context(data_dir: Path) -> SiteContext:
    return SiteContext(reactor=_reactor(), public_url="http://127.0.0.1:5280", data_dir=data_dir,
                       domains=("localhost",))


@pytest.fixture
def log_events():
    events: list[dict] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def assert_not_logged(events: list[dict], secrets: list[str]) -> None:
    assert events, "the test should have produced log events"
    text = "\n".join(f"{formatEvent(event)} {event!r}" for event in events)
    for secret in secrets:
        assert secret and secret not in text


@pytest_twisted.async_yield_fixture
async def provider():
    p = OIDCProvider()
    p.listen(_reactor())
    yield p
    await p.stop()


@pytest_twisted.async_yield_fixture
async def sites(tmp_path: Path):
    made: list[OIDCSite] = []

    def make(provider: OIDCProvider, data_dir: Path | None = None, **overrides: Any) -> OIDCSite:
        settings = {"issuer": provider.issuer, "client_id": provider.client_id,
                    "client_secret": provider.client_secret, **overrides}
        site = make_oidc_site("idp", settings, _context(data_dir or tmp_path / "data"))
        made.append(site)
        site.start()
        return site

    yield make
    for site in made:
        site.stop()


async def ready(site: OIDCSite) -> None:
    await site.when_ready().addTimeout(10, _reactor())


async def rejection(d: Deferred) -> SiteRejection:
    try:
        await d
    except SiteRejection as e:
        return e
    raise AssertionError("accepted")


async def follow_authorization(url: str) -> dict[str, str]:
    """Play the browser: load the provider's login URL and return the callback's query."""
    http = treq.client.HTTPClient(Agent(_reactor()))
    response = await http.get(url, allow_redirects=False)
    await response.content()
    assert response.code == 302
    location = urlsplit(response.headers.getRawHeaders("location")[0])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK
    return dict(parse_qsl(location.query))


@pytest_twisted.ensureDeferred
async def test_site_provides_ibearersite_and_loads_the_provider(provider: OIDCProvider, sites: Callable,
                                                                tmp_path: Path) -> None:
    """The site is an IBearerSite, loads the provider's metadata, and makes its nonce secret private."""
    site = sites(provider)
    assert verifyObject(IBearerSite, site) and verifyObject(ILogoutSite, site) and verifyObject(IRefreshingSite, site)
    assert site.status() == "starting"
    await ready(site)
    assert site.status() == "ok"
    assert site.openid_configuration == f"{provider.issuer}/.well-known/openid-configuration"
    assert site.scram_password("user-42", 0.0) is None
    assert site.single_use is False
    assert site.parse_identifier("User-42") == "User-42"
    for bad in ("", "x" * 256, "a\nb", "a\x00b"):
        with pytest.raises(SiteRejection) as info:
            site.parse_identifier(bad)
        assert info.value.kind is Rejection.MALFORMED
    secret_file = tmp_path / "data" / "oidc-idp.secret"
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600


@pytest_twisted.ensureDeferred
async def test_authorization_code_flow(provider: OIDCProvider, sites: Callable, log_events: list[dict],
                                      tmp_path: Path) -> None:
    """start_login/finish_login run the code flow with PKCE and a nonce; the ID token is then a password."""
    site = sites(provider, scopes=["openid", "profile"])
    await ready(site)
    now = _reactor().seconds()

    start = await site.start_login(CALLBACK, "state-1")
    params = await follow_authorization(start.url)
    seen = provider.authorizations[-1]
    assert seen["nonce"] == start.pending["nonce"] and seen["state"] == "state-1"
    assert seen["scope"] == "openid profile" and seen["redirect_uri"] == CALLBACK
    verifier = start.pending["code_verifier"]
    assert seen["code_challenge"] == b64(hashlib.sha256(verifier.encode()).digest())

    credentials = await site.finish_login(params, start.pending, now)
    issued = provider.issued[-1]
    assert credentials.username == "User-42@idp"
    assert credentials.password == issued["id_token"]
    assert now < credentials.expires <= now + 601
    # The client lowercases the localpart; the ID token still logs in, as the exact sub.
    account = await site.verify("user-42", credentials.password, now)
    assert (account.site, account.account, account.display_name) == ("idp", "User-42", "Test User")
    assert account.token_digest == replay_key(jose.verify_compact(credentials.password, jose.load_jwks(
        provider.jwks())[0]))
    assert account.expires == credentials.expires

    # A code works once; the state must match; the provider's refusal is a rejection.
    replay = await rejection(site.finish_login(params, start.pending, now))
    assert replay.kind is Rejection.MALFORMED and "invalid_grant" in replay.reason
    wrong_state = await rejection(site.finish_login({**params, "state": "state-2"}, start.pending, now))
    assert wrong_state.kind is Rejection.MALFORMED and "state" in wrong_state.reason
    provider.deny_next = "access_denied"
    denied = await site.start_login(CALLBACK, "state-3")
    refused = await rejection(site.finish_login(await follow_authorization(denied.url), denied.pending, now))
    assert refused.kind is Rejection.MALFORMED and "access_denied" in refused.reason
    # An ID token whose nonce is valid but belongs to another login is refused.
    other = await site.start_login(CALLBACK, "state-4")
    other_params = await follow_authorization(other.url)
    swapped = await rejection(site.finish_login(other_params, {**other.pending, "nonce": site.issue_nonce()}, now))
    assert swapped.kind is Rejection.MALFORMED and "nonce" in swapped.reason
    # Client authentication is checked by the provider: a wrong secret gets no token.
    impostor = sites(provider, client_secret="not-the-secret")
    await ready(impostor)
    attempt = await impostor.start_login(CALLBACK, "state-5")
    unauthorised = await rejection(impostor.finish_login(await follow_authorization(attempt.url), attempt.pending, now))
    assert "invalid_client" in unauthorised.reason

    nonce_secret = (tmp_path / "data" / "oidc-idp.secret").read_text().strip()
    tokens = [entry["id_token"] for entry in provider.issued]
    codes = [entry["code"] for entry in provider.issued] + [params["code"]]
    assert_not_logged(log_events, [provider.client_secret, verifier, *tokens, *(t.split(".")[2] for t in tokens),
                                   *codes, nonce_secret])


@functools.cache
def _foreign_nonce() -> str:
    return NonceKey(os.urandom(32), "idp").issue()


@pytest_twisted.ensureDeferred
async def test_verify_accepts_good_tokens_and_refuses_forgeries(provider: OIDCProvider, sites: Callable,
                                                                tmp_path: Path) -> None:
    """RS256, ES256 and EdDSA tokens log in; forged, misdirected, stale and unsolicited tokens do not."""
    okp_kid = provider.add_key("OKP")
    enc_kid = provider.add_key("EC", use="enc")  # published, but not for signatures
    ps_kid = provider.add_key("RSA", key=provider.private_keys[provider.rsa_kid], alg="PS256")
    site = sites(provider)
    await ready(site)
    now = _reactor().seconds()
    nonce = site.issue_nonce()

    def token(**overrides: Any) -> str:
        return provider.id_token(now, nonce, **overrides)

    good = token()
    for kid in (provider.rsa_kid, provider.ec_kid, okp_kid):
        account = await site.verify("user-42", token(kid=kid), now)
        assert account.account == "User-42"
    accepted = [
        ("bearer, any sub", None, token(sub="someone")),
        ("expired within leeway", "user-42", token(exp=int(now) - 30)),
        ("several audiences with azp", "user-42", token(aud=[provider.client_id, "other"], azp=provider.client_id)),
    ]
    for name, identifier, accepted_token in accepted:
        verified = (site.verify_bearer(accepted_token, now) if identifier is None
                    else site.verify(identifier, accepted_token, now))
        assert (await verified).site == "idp", name
    # A restarted server (same data folder) still knows the nonces it issued.
    restarted = make_oidc_site("idp", {"issuer": provider.issuer, "client_id": provider.client_id,
                                       "client_secret": provider.client_secret}, _context(tmp_path / "data"))
    assert restarted._nonces.check(nonce) and not restarted._nonces.check(_foreign_nonce())

    header, payload, signature = good.split(".")
    claims = provider.claims(now, nonce)
    cases = [
        ("alg none", "user-42", provider.forge_none(claims), Rejection.UNSUPPORTED_ALGORITHM),
        ("HS256 keyed with the RSA public key", "user-42", provider.forge_hs256_with_public_key(claims),
         Rejection.UNSUPPORTED_ALGORITHM),
        ("RS256 header naming the EC key", "user-42",
         provider.mint(claims, kid=provider.ec_kid, header={"alg": "RS256"}), Rejection.UNSUPPORTED_ALGORITHM),
        ("tampered payload", "user-42", f"{header}.{b64json({**claims, 'sub': 'Admin'})}.{signature}",
         Rejection.BAD_SIGNATURE),
        ("signature of another token", "user-42", f"{header}.{payload}.{token(name='x').split('.')[2]}",
         Rejection.BAD_SIGNATURE),
        ("wrong issuer", "user-42", token(iss="https://evil.example"), Rejection.MALFORMED),
        ("wrong audience", "user-42", token(aud="another-client"), Rejection.MALFORMED),
        ("several audiences, no azp", "user-42", token(aud=[provider.client_id, "other"]), Rejection.MALFORMED),
        ("expired", "user-42", token(exp=int(now) - 61), Rejection.EXPIRED),
        ("issued in the future", "user-42", token(iat=int(now) + 120), Rejection.MALFORMED),
        ("no nonce", "user-42", provider.id_token(now, None), Rejection.MALFORMED),
        ("foreign nonce", "user-42", provider.id_token(now, _foreign_nonce()), Rejection.MALFORMED),
        ("made-up nonce", "user-42", provider.id_token(now, "abc.def"), Rejection.MALFORMED),
        ("no sub", None, token(sub=None), Rejection.MALFORMED),
        ("identifier names another sub", "user-43", good, Rejection.MALFORMED),
        ("access token type", "user-42", provider.mint(claims, header={"typ": "at+jwt"}), Rejection.MALFORMED),
        ("too large", "user-42", token(name="x" * 9000), Rejection.MALFORMED),
        ("padded base64", "user-42", f"{header}.{payload}=.{signature}", Rejection.MALFORMED),
        ("not a JWS", "user-42", "not-a-token", Rejection.MALFORMED),
        ("key with use=enc", "user-42", token(kid=enc_kid), Rejection.UNKNOWN_KEY),
        ("key whose alg is not the header's", "user-42", token(kid=ps_kid), Rejection.UNSUPPORTED_ALGORITHM),
    ]
    wrong = []
    for name, identifier, bad, kind in cases:
        d = site.verify_bearer(bad, now) if identifier is None else site.verify(identifier, bad, now)
        refused = await rejection(d)
        if refused.kind is not kind:
            wrong.append((name, refused.kind, refused.reason))
    assert wrong == []


@pytest_twisted.ensureDeferred
async def test_key_rotation_refetches_the_key_set_once(provider: OIDCProvider, sites: Callable) -> None:
    """A token under a new kid is accepted after one JWKS refetch; a removed key stops working then."""
    site = sites(provider)
    await ready(site)
    now = _reactor().seconds()
    nonce = site.issue_nonce()
    old_kid = provider.rsa_kid
    old_token = provider.id_token(now, nonce, kid=old_kid)
    assert (await site.verify("user-42", old_token, now)).account == "User-42"

    fetched = provider.hits["/jwks"]
    new_kid = provider.add_key("RSA")
    provider.remove_key(old_kid)
    assert (await site.verify("user-42", provider.id_token(now, nonce, kid=new_kid), now)).account == "User-42"
    assert provider.hits["/jwks"] == fetched + 1
    assert (await rejection(site.verify("user-42", old_token, now))).kind is Rejection.UNKNOWN_KEY
    # Unknown kids do not make the server hammer the provider: no second refetch within the interval.
    newer_kid = provider.add_key("EC")
    refused = await rejection(site.verify("user-42", provider.id_token(now, nonce, kid=newer_kid), now))
    assert refused.kind is Rejection.UNKNOWN_KEY
    assert provider.hits["/jwks"] == fetched + 1


async def started_unreachable(sites: Callable, provider: OIDCProvider, **settings: Any) -> OIDCSite:
    """Start a site and wait until it has logged that its provider is unreachable."""
    reactor = _reactor()
    unreachable: Deferred = Deferred()

    @provides(ILogObserver)
    def watch(event: dict) -> None:
        if str(event.get("log_format", "")).startswith("oidc.provider_unreachable") and not unreachable.called:
            reactor.callLater(0, unreachable.callback, None)

    globalLogPublisher.addObserver(watch)
    try:
        site = sites(provider, **settings)  # start() must not raise
        await unreachable.addTimeout(10, reactor)
    finally:
        globalLogPublisher.removeObserver(watch)
    return site


@pytest_twisted.ensureDeferred
async def test_a_silent_provider_times_out(sites: Callable) -> None:
    """A provider that accepts connections but never answers does not hang the site."""
    from twisted.internet.protocol import Factory, Protocol

    reactor = _reactor()
    silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    provider = OIDCProvider()
    provider.port_number = silent.getHost().port
    try:
        site = await started_unreachable(sites, provider, request_timeout=0.1, retry_initial=30)
        assert site.status() == "provider unreachable: request timed out after 0.1s"
    finally:
        await silent.stopListening()


@pytest_twisted.ensureDeferred
async def test_provider_down_at_start_is_retried(sites: Callable, log_events: list[dict]) -> None:
    """A provider that is down at start is logged and retried; the site recovers when it comes up."""
    reactor = _reactor()
    provider = OIDCProvider()
    port = provider.listen(reactor)
    await provider.stop()  # the provider's address is known, but nothing answers there
    site = await started_unreachable(sites, provider, retry_initial=0.05, retry_max=0.2)
    assert site.status().startswith("provider unreachable: cannot connect")
    now = reactor.seconds()
    token = provider.id_token(now, site.issue_nonce())
    for refused in (await rejection(site.verify("user-42", token, now)),
                    await rejection(site.start_login(CALLBACK, "s"))):
        # Known down before this request: the HTTP side's 503, not a 502 for one failed exchange.
        assert isinstance(refused, ProviderUnavailable) and refused.known_down, refused

    provider.listen(reactor, port)
    try:
        await ready(site)
        assert site.status() == "ok"
        assert (await site.verify("user-42", token, now)).account == "User-42"
    finally:
        await provider.stop()
    assert_not_logged(log_events, [provider.client_secret, token, token.split(".")[2]])


BASE_SETTINGS = {"issuer": "https://id.example.com", "client_id": "xmpp", "client_secret": "s3cret"}


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"issuer": None}, "issuer"),
        ({"client_id": None}, "client_id"),
        ({"client_secret": None}, "client_secret"),
        ({"issuer": "http://id.example.com"}, "issuer"),
        ({"issuer": "id.example.com"}, "issuer"),
        ({"issuer": "https://id.example.com/?tenant=1"}, "issuer"),
        ({"client_id": ""}, "client_id"),
        ({"scopes": ["profile"]}, "scopes"),
        ({"scopes": "openid"}, "scopes"),
        ({"leeway": -1}, "leeway"),
        ({"leeway": True}, "leeway"),
        ({"max_token_bytes": "8k"}, "max_token_bytes"),
        ({"single_use": "yes"}, "single_use"),
        ({"request_timeout": 0}, "request_timeout"),
        ({"client_secrets": "typo"}, "client_secrets"),
        ({"client_secret_file": "no-such-file"}, "client_secret_file"),
        ({"client_secret": None, "client_secret_file": "no-such-file"}, "client_secret_file"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "token_endpoint_auth_method"),
        ({"endpoint_origins": "https://www.googleapis.com"}, "endpoint_origins"),
        ({"endpoint_origins": ["https://www.googleapis.com/oauth2"]}, "endpoint_origins"),
        ({"endpoint_origins": ["http://www.googleapis.com"]}, "endpoint_origins"),
    ],
)
def test_config_errors_name_the_key(changes: dict, key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad settings are refused with the key that is wrong."""
    monkeypatch.chdir(tmp_path)
    settings = {k: v for k, v in {**BASE_SETTINGS, **changes}.items() if v is not None}
    with pytest.raises(SiteConfigError) as info:
        make_oidc_site("idp", settings, _context(tmp_path / "data"))
    assert info.value.key == key


def test_settings_accept_files_loopback_http_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """client_secret_file is read relative to the current folder; http is fine on loopback only."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.txt").write_text("from-a-file\n")
    for issuer in ("http://127.0.0.1:8080", "http://localhost:8080/realm", "http://[::1]:8080"):
        site = make_oidc_site("idp", {"issuer": issuer, "client_id": "xmpp", "client_secret_file": "secret.txt"},
                              _context(tmp_path / "data"))
        assert site.settings.client_secret == "from-a-file"
        assert "from-a-file" not in repr(site.settings)
        assert (site.settings.scopes, site.settings.leeway, site.settings.max_token_bytes) == (("openid",), 60, 8192)
        assert (site.single_use, site.settings.refresh_interval, site.settings.request_timeout) == (False, 3600, 10)


@functools.cache
def _signed_tokens() -> tuple[list[str], list[jose.PublicJWK]]:
    provider = OIDCProvider()
    okp = provider.add_key("OKP")
    pss = provider.add_key("RSA", key=provider.private_keys[provider.rsa_kid], alg="PS256")
    claims = provider.claims(1_700_000_000, "n.n")
    tokens = [provider.mint(claims, kid=kid) for kid in (provider.rsa_kid, provider.ec_kid, okp)]
    tokens.append(provider.mint(claims, kid=pss, header={"alg": "PS256"}))
    keys, skipped = jose.load_jwks(provider.jwks())
    assert len(keys) == 4 and skipped == []
    return tokens, keys


B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_one_character_change_to_a_token_is_refused(data: st.DataObject) -> None:
    """No edit of a single character of a signed token (header, payload or signature) still verifies."""
    tokens, keys = _signed_tokens()
    for token in tokens:
        assert jose.verify_compact(token, keys)["sub"] == "User-42"
    token = data.draw(st.sampled_from(tokens))
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from(B64URL_ALPHABET + ".="))
    assume(replacement != token[index])
    with pytest.raises(jose.JOSEError):
        jose.verify_compact(token[:index] + replacement + token[index + 1:], keys)


def test_jose_refuses_unsafe_keys_and_encodings() -> None:
    """Keys that must not verify anything are refused, as are ambiguous encodings."""
    provider = OIDCProvider()
    rsa_key, ec_key = provider.private_keys[provider.rsa_kid], provider.private_keys[provider.ec_kid]
    ec_jwk = public_jwk(ec_key, "ec")
    refused = {
        "symmetric": {"kty": "oct", "k": b64(b"secret")},
        "encryption key": public_jwk(ec_key, "k", use="enc"),
        "alg for another key type": public_jwk(ec_key, "k", alg="RS256"),
        "HMAC alg": public_jwk(rsa_key, "k", alg="HS256"),
        "private part": public_jwk(ec_key, "k", d=b64(b"\x01" * 32)),
        "off the curve": {**ec_jwk, "y": b64((int.from_bytes(jose.b64url_decode(ec_jwk["y"]), "big") ^ 1)
                                             .to_bytes(32, "big"))},
        "small RSA": {"kty": "RSA", "n": b64((2**1023 + 1).to_bytes(128, "big")), "e": "AQAB"},
        "other curve": {**ec_jwk, "crv": "P-384"},
        "verify not allowed": public_jwk(ec_key, "k", key_ops=["sign"]),
    }
    for name, jwk in refused.items():
        with pytest.raises(jose.JOSEError):
            jose.load_jwk(jwk)
            pytest.fail(name)
    assert jose.load_jwk(ec_jwk).allows("ES256") and not jose.load_jwk(ec_jwk).allows("RS256")
    for text in ("AA=", "A", "A+", "AB"):  # padding, impossible length, other alphabet, leftover bits
        with pytest.raises(jose.JOSEError):
            jose.b64url_decode(text)
    with pytest.raises(jose.JOSEError, match="not valid JSON"):
        jose.parse_json_object(b'{"alg":"RS256","alg":"none"}', "header")
    with pytest.raises(jose.JOSEError, match="not valid JSON"):
        jose.parse_json_object(b'{"exp":NaN}', "payload")


def test_b64url_canonical_rule_is_decode_then_encode_gives_the_same_text() -> None:
    """The last-character rule of b64url_decode agrees with re-encoding for every character and length."""
    for prefix in ("", "A", "AB", "ABCD", "ABCDE", "ABCDEF"):
        for last in B64URL_ALPHABET:
            text = prefix + last
            if len(text) % 4 == 1:
                continue
            data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            canonical = base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") == text
            try:
                assert jose.b64url_decode(text) == data
                accepted = True
            except jose.JOSEError:
                accepted = False
            assert accepted == canonical, text


def test_checked_headers_are_remembered_boundedly_and_never_shared() -> None:
    """Headers are parsed once per distinct header, only accepted ones are kept, at most 64, and each
    parsed token gets its own copy."""
    tokens, keys = _signed_tokens()
    jose._accepted_headers.clear()
    first = jose.parse_compact(tokens[0])
    first.header["alg"] = "none"  # a caller's change must not reach the next token
    assert jose.verify_compact(tokens[0], keys)["sub"] == "User-42"
    header, payload, signature = tokens[0].split(".")
    refused = jose.b64url_encode(b'{"alg":"none"}')
    with pytest.raises(jose.JOSEError):
        jose.parse_compact(f"{refused}.{payload}.{signature}")
    assert refused not in jose._accepted_headers
    for n in range(200):
        jose.parse_compact(f"{jose.b64url_encode(json.dumps({'alg': 'RS256', 'kid': str(n)}).encode())}.{payload}.")
    assert len(jose._accepted_headers) <= 64


def test_control_or_surrogate_is_unicodes_cc_and_cs() -> None:
    """The expression that replaced a unicodedata lookup per character matches exactly Cc and Cs."""
    import unicodedata

    from sns_xmpp.sites.oidc_tokens import CONTROL_OR_SURROGATE

    for code in range(0x110000):
        char = chr(code)
        assert bool(CONTROL_OR_SURROGATE.match(char)) == (unicodedata.category(char) in ("Cc", "Cs")), hex(code)


async def browser_login(site: OIDCSite, state: str = "state-1") -> Any:
    """Run the whole code flow against the test provider; return finish_login's Deferred's result."""
    start = await site.start_login(CALLBACK, state)
    params = await follow_authorization(start.url)
    return await site.finish_login(params, start.pending, _reactor().seconds())


@pytest_twisted.ensureDeferred
async def test_pss_tokens_log_in_and_refusals_name_what_failed(provider: OIDCProvider, sites: Callable) -> None:
    """PS256/PS384/PS512 (RSASSA-PSS, RFC 7518 §3.5) verify; an algorithm off the list is refused as
    unsupported-algorithm, naming it, and bad-signature is kept for signatures that do not verify.
    none and HS256-keyed-with-the-public-key stay refused."""
    rsa_key = provider.private_keys[provider.rsa_kid]
    pss = {alg: provider.add_key("RSA", kid=f"pss-{alg}", key=rsa_key, alg=alg) for alg in ("PS256", "PS384", "PS512")}
    site = sites(provider)
    await ready(site)
    now = _reactor().seconds()
    claims = provider.claims(now, site.issue_nonce())
    for alg, kid in pss.items():
        account = await site.verify("user-42", provider.mint(claims, kid=kid, header={"alg": alg}), now)
        assert account.account == "User-42", alg

    ps256 = provider.mint(claims, kid=pss["PS256"], header={"alg": "PS256"})
    header, payload, _ = ps256.split(".")
    other_signature = provider.mint({**claims, "name": "x"}, kid=pss["PS256"], header={"alg": "PS256"}).split(".")[2]
    cases = [
        ("ES512", provider.mint(claims, kid=provider.ec_kid, header={"alg": "ES512"}),
         "unsupported-algorithm: ES512 is not accepted"),
        ("none", provider.forge_none(claims), "unsupported-algorithm: none is not accepted"),
        ("HS256 with the public key", provider.forge_hs256_with_public_key(claims),
         "unsupported-algorithm: HS256 is not accepted"),
        ("a name that is no algorithm", provider.mint(claims, header={"alg": "<script>" * 3}),
         "unsupported-algorithm: the token's algorithm is not accepted"),
        ("RS256 under a PS256 key", provider.mint(claims, kid=pss["PS256"], header={"alg": "RS256"}),
         "unsupported-algorithm: the token's key is not for RS256"),
        ("PS256 signature of other claims", f"{header}.{payload}.{other_signature}",
         "bad-signature: signature does not verify"),
    ]
    refused = {name: str(await rejection(site.verify("user-42", token, now))) for name, token, _ in cases}
    assert refused == {name: expected for name, _, expected in cases}


@pytest_twisted.ensureDeferred
async def test_replay_key_is_the_claims_not_the_signature(provider: OIDCProvider, sites: Callable) -> None:
    """The single-use record of an ID token is keyed on what it says (jti, else iss+sub+iat+nonce),
    so a second signature over the same claims (ECDSA's s -> n-s) is the same token."""
    site = sites(provider, single_use=True)
    await ready(site)
    now = _reactor().seconds()
    nonce = site.issue_nonce()
    token = provider.id_token(now, nonce, kid=provider.ec_kid)
    mirrored = mirror_ecdsa_signature(token)
    assert mirrored != token
    first, second = await site.verify("user-42", token, now), await site.verify("user-42", mirrored, now)
    assert first.token_digest == second.token_digest
    # The same claims under another key are the same token too; other claims are another.
    assert (await site.verify("user-42", provider.id_token(now, nonce), now)).token_digest == first.token_digest
    later = await site.verify("user-42", provider.id_token(now + 1, nonce), now)
    assert later.token_digest != first.token_digest
    # With a jti, the jti (and issuer) is the key, whatever else the claims say.
    with_jti = [await site.verify("user-42", provider.id_token(now + n, site.issue_nonce(), jti="j-1"), now)
                for n in (0, 1)]
    assert with_jti[0].token_digest == with_jti[1].token_digest != first.token_digest


@pytest_twisted.ensureDeferred
async def test_provider_outage_at_the_token_endpoint_is_provider_unavailable(
        provider: OIDCProvider, sites: Callable) -> None:
    """A token endpoint that answers 5xx or never answers fails the login as ProviderUnavailable (the
    HTTP side's 502), not as the person's mistake."""
    site = sites(provider, request_timeout=0.2)
    await ready(site)
    for outage in (503, 500, None):
        provider.outage["/token"] = outage
        try:
            await browser_login(site)
        except ProviderUnavailable as e:
            assert e.kind is Rejection.PROVIDER_UNAVAILABLE and not e.known_down
            assert e.reason.startswith("token endpoint: "), e.reason
        else:
            raise AssertionError(f"accepted during outage {outage}")
    # A new key while the JWKS is down: the provider, not the token, is at fault.
    del provider.outage["/token"]
    provider.outage["/jwks"] = 502
    new_kid = provider.add_key("EC")
    now = _reactor().seconds()
    refused = await rejection(site.verify("user-42", provider.id_token(now, site.issue_nonce(), kid=new_kid), now))
    assert isinstance(refused, ProviderUnavailable), refused


@pytest_twisted.ensureDeferred
async def test_userinfo_supplies_the_name_the_id_token_lacks(provider: OIDCProvider, sites: Callable,
                                                            log_events: list[dict]) -> None:
    """When the ID token has no name, the userinfo endpoint is asked (with the access token) and its name
    is the account's display name; a userinfo for another sub refuses the login (OIDC Core 5.3.2); a
    failing userinfo endpoint only costs the name."""
    provider.id_token_overrides = {"name": None}
    provider.userinfo = {"name": "Ada Lovelace", "email": "ada@example.org"}
    site = sites(provider)
    await ready(site)
    now = _reactor().seconds()
    credentials = await browser_login(site)
    assert provider.userinfo_seen == [f"Bearer {provider.issued[-1]['access_token']}"]
    assert credentials.display_name == "Ada Lovelace"  # what the callback page greets the person with
    assert (await site.verify("user-42", credentials.password, now)).display_name == "Ada Lovelace"

    provider.userinfo = {"sub": "Someone-Else", "name": "Mallory"}
    refused = await rejection(Deferred.fromCoroutine(browser_login(site, "state-2")))
    assert str(refused) == "malformed: the userinfo is for another account"

    fresh = sites(provider, request_timeout=0.2)  # one that has not learnt the name yet
    await ready(fresh)
    for outage in (500, None):
        provider.outage["/userinfo"] = outage
        credentials = await browser_login(fresh, "state-3")
        assert (await fresh.verify("user-42", credentials.password, now)).display_name is None
    assert [e["reason"] for e in log_events if e.get("log_format", "").startswith("oidc.userinfo_failed")] == [
        "userinfo: HTTP 500", "request timed out after 0.2s"]

    # An ID token that names the person is enough: userinfo is not asked.
    del provider.outage["/userinfo"]
    provider.id_token_overrides = {}
    asked = len(provider.userinfo_seen)
    named = await browser_login(site, "state-4")
    assert len(provider.userinfo_seen) == asked
    assert named.display_name is not None and named.display_name != "Ada Lovelace"
    assert_not_logged(log_events, [entry["access_token"] for entry in provider.issued])


@pytest.mark.parametrize(
    ("advertised", "setting", "used"),
    [
        (None, None, "client_secret_basic"),
        (["client_secret_basic", "client_secret_post"], None, "client_secret_basic"),
        (["client_secret_post"], None, "client_secret_post"),
        (["client_secret_basic", "client_secret_post"], "client_secret_post", "client_secret_post"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_token_endpoint_authentication_follows_discovery(provider: OIDCProvider, sites: Callable,
                                                               advertised: list[str] | None, setting: str | None,
                                                               used: str) -> None:
    """The client authenticates as the provider advertises (token_endpoint_auth_methods_supported):
    client_secret_basic when listed or not advertised, else client_secret_post; or as configured."""
    provider.token_auth_methods = advertised
    provider.client_secret = "s3cret: with spaces+plus%"  # RFC 6749 §2.3.1: form-encoded before base64
    site = sites(provider, **({"token_endpoint_auth_method": setting} if setting else {}))
    await ready(site)
    credentials = await browser_login(site)
    assert credentials.username == "User-42@idp"
    assert provider.token_auth_seen == [used]


@pytest_twisted.ensureDeferred
async def test_endpoints_on_another_origin_need_the_operators_word(provider: OIDCProvider, sites: Callable,
                                                                   tmp_path: Path) -> None:
    """A discovery document whose endpoints are off the issuer's origin is refused, naming
    endpoint_origins; listing that origin there (as Google's layout needs) accepts it."""
    foreign = f"http://localhost:{provider.port_number}"
    provider.discovery_overrides = {"jwks_uri": f"{foreign}/jwks"}
    site = await started_unreachable(sites, provider, retry_initial=30)
    assert site.status() == (f"provider unreachable: discovery document: jwks_uri is on {foreign}, not the "
                             f"issuer's origin (list it in sites.idp.endpoint_origins if that is intended)")
    for endpoint in ("token_endpoint", "userinfo_endpoint", "authorization_endpoint"):
        provider.discovery_overrides = {endpoint: f"{foreign}/{endpoint}"}
        with pytest.raises(ProviderError, match=f"^discovery document: {endpoint} is on "):
            parse_metadata(provider.discovery(), provider.issuer, site_id="idp", endpoint_origins=())
    provider.discovery_overrides = {"jwks_uri": f"{foreign}/jwks"}
    allowed = sites(provider, endpoint_origins=[foreign + "/"])
    await ready(allowed)
    assert allowed.status() == "ok"

    # Google's layout, with the allow-list docs/sites.md gives for it.
    issuer = "https://accounts.google.com"
    google: dict[str, Any] = {"issuer": issuer,
              "authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
              "token_endpoint": "https://oauth2.googleapis.com/token",
              "userinfo_endpoint": "https://openidconnect.googleapis.com/v1/userinfo",
              "jwks_uri": "https://www.googleapis.com/oauth2/v3/certs",
              "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"]}
    listed = make_oidc_site("google", {**BASE_SETTINGS, "issuer": issuer, "endpoint_origins": [
        "https://oauth2.googleapis.com", "https://openidconnect.googleapis.com", "https://www.googleapis.com"]},
        _context(tmp_path / "data")).settings.endpoint_origins
    metadata = parse_metadata(google, issuer, "google", listed)
    assert metadata.jwks_uri == google["jwks_uri"]
    with pytest.raises(ProviderError, match="sites.google.endpoint_origins"):
        parse_metadata(google, issuer, "google", ())


LOGOUT_EVENT = {"http://schemas.openid.net/event/backchannel-logout": {}}


@pytest.mark.parametrize(("change", "problem"), [
    ({}, None),
    ({"aud": ["other", "sns-xmpp-test"]}, None),
    ({"nonce": "n"}, "has a nonce"),  # 2.4: so an ID token never passes for a logout token
    ({"events": None}, "no back-channel logout event"),
    ({"events": {"http://schemas.openid.net/event/backchannel-logout": "yes"}}, "no back-channel logout event"),
    ({"jti": None}, "no jti"),
    ({"sub": None, "sid": "s1"}, "a sid alone is not supported"),
    ({"aud": "other"}, "another client"),
    ({"iss": "https://evil.example"}, "another issuer"),
    ({"iat": 1000 - 400}, "no acceptable time"),  # older than five minutes (and the leeway)
    ({"iat": 1000 + 120}, "no acceptable time"),  # from the future
    ({"exp": 1000 - 100}, "expired"),
])
def test_logout_token_claims_follow_back_channel_logout_section_2_6(change: dict, problem: str | None) -> None:
    """A logout token must name the issuer, this client, a recent iat, a jti, the back-channel
    logout event and a subject, and must not carry a nonce."""
    from sns_xmpp.sites.oidc_tokens import check_logout_claims

    claims = {"iss": "https://idp.example", "aud": "sns-xmpp-test", "sub": "User-42", "iat": 1000, "exp": 1120,
              "jti": "j1", "events": LOGOUT_EVENT}
    claims.update(change)
    claims = {k: v for k, v in claims.items() if v is not None}

    def check() -> str:
        return check_logout_claims(claims, issuer="https://idp.example", client_id="sns-xmpp-test", now=1000,
                                   leeway=60)

    if problem is None:
        assert check() == "User-42"
    else:
        with pytest.raises(SiteRejection, match=problem):
            check()
