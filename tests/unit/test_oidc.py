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
from sns_xmpp.sites.interface import IBearerSite, Rejection, SiteConfigError, SiteContext, SiteRejection
from sns_xmpp.sites.oidc import OIDCSite, make_oidc_site
from sns_xmpp.sites.oidc_tokens import NonceKey
from tests.oidc_provider import OIDCProvider, b64, b64json, public_jwk

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
    assert verifyObject(IBearerSite, site)
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
    assert account.token_digest == hashlib.sha256(credentials.password.encode()).digest()
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
    ps_kid = provider.add_key("RSA", key=provider.private_keys[provider.rsa_kid], alg="PS256")  # alg off the list
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
        ("alg none", "user-42", provider.forge_none(claims), Rejection.BAD_SIGNATURE),
        ("HS256 keyed with the RSA public key", "user-42", provider.forge_hs256_with_public_key(claims),
         Rejection.BAD_SIGNATURE),
        ("RS256 header naming the EC key", "user-42",
         provider.mint(claims, kid=provider.ec_kid, header={"alg": "RS256"}), Rejection.BAD_SIGNATURE),
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
        ("key whose alg is not the header's", "user-42", token(kid=ps_kid), Rejection.UNKNOWN_KEY),
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
    assert (await rejection(site.verify("user-42", token, now))).kind is Rejection.PROVIDER_UNAVAILABLE
    assert (await rejection(site.start_login(CALLBACK, "s"))).kind is Rejection.PROVIDER_UNAVAILABLE

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
    claims = provider.claims(1_700_000_000, "n.n")
    tokens = [provider.mint(claims, kid=kid) for kid in (provider.rsa_kid, provider.ec_kid, okp)]
    keys, skipped = jose.load_jwks(provider.jwks())
    assert len(keys) == 3 and skipped == []
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
