"""The RSA-cookie site: the sns-xmpp contract suite, then what is particular to this site."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from sns_xmpp.sites.interface import Rejection, SiteConfigError, SiteContext, SiteRejection
from sns_xmpp.testing import ContractRun, SiteContractTests

from sns_xmpp_rsa_cookie import RsaCookieSite, make_site
from sns_xmpp_rsa_cookie.contract import RsaCookieContract, site_key
from sns_xmpp_rsa_cookie.cookie import b64url_decode, b64url_encode, read_cookie, sign_cookie


class TestRsaCookieContract(SiteContractTests):
    """Every property the contract suite checks, one test each."""

    contract = RsaCookieContract


@pytest_twisted.async_yield_fixture
async def environment() -> AsyncIterator[ContractRun]:
    """The contract's environment (key files, a session service on 127.0.0.1), for the tests below."""
    from twisted.internet import reactor

    async with ContractRun(RsaCookieContract(), reactor) as run:
        yield run


def cookie_for(uid: str, now: float, sid: str = "s1") -> str:
    return sign_cookie(site_key(), uid, sid, int(now), int(now) + 600)


def test_decoding_refuses_a_second_spelling_of_the_same_bytes() -> None:
    """Base64url with spare bits set decodes to the same bytes in lenient decoders; here it is refused,
    so one signature cannot travel as two different cookies."""
    encoded = b64url_encode(b"\xff")  # "_w": the last character carries 4 spare bits
    assert b64url_decode(encoded) == b"\xff"
    with pytest.raises(SiteRejection) as caught:
        b64url_decode(encoded[:-1] + "x")
    assert caught.value.kind is Rejection.MALFORMED


def test_a_cookie_signed_by_another_key_is_a_bad_signature() -> None:
    """Only the site's key signs cookies: a well-formed cookie under any other key is 'bad-signature'."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = sign_cookie(other, "alice", "s1", 1000, 1600)
    with pytest.raises(SiteRejection) as caught:
        read_cookie(site_key().public_key(), forged)
    assert caught.value.kind is Rejection.BAD_SIGNATURE


def test_a_private_key_file_is_refused_without_being_echoed(tmp_path: Any) -> None:
    """Pointing public_key_file at the private key is refused, and the error does not quote the file."""
    from sns_xmpp_rsa_cookie.contract import pem

    private = tmp_path / "private.pem"
    private.write_bytes(pem(site_key(), private=True))
    context = SiteContext(None, "http://127.0.0.1:5280", tmp_path, ("localhost",))
    with pytest.raises(SiteConfigError) as caught:
        make_site("rsa", {"public_key_file": str(private), "login_url": "https://x/"}, context)
    assert caught.value.key == "public_key_file"
    assert "private key" in caught.value.problem and "BEGIN" not in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_a_session_ended_at_the_site_is_refused_as_expired(environment: ContractRun) -> None:
    """The session service says the session is over (404): the cookie, still signed and unexpired, is refused."""
    site: Any = await environment.site()
    contract: Any = environment.contract
    now = environment.now()
    contract.sessions.ended.add("gone")
    with pytest.raises(SiteRejection) as caught:
        await site.verify("alice", cookie_for("alice", now, sid="gone"), now)
    assert caught.value.kind is Rejection.EXPIRED
    account = await site.verify("alice", cookie_for("alice", now, sid="live"), now)
    assert account.account == "alice"
    assert contract.sessions.asked == ["gone", "live"]


@pytest_twisted.ensureDeferred
async def test_the_callback_hands_out_the_cookie_as_the_password(environment: ContractRun) -> None:
    """finish_login turns the site's redirect (?cookie=...) into the XMPP user name and password."""
    site: RsaCookieSite = await environment.site()  # type: ignore[assignment]
    now = environment.now()
    cookie = cookie_for("bob", now)
    credentials = await site.finish_login({"cookie": cookie}, {}, now)
    assert credentials.username == "bob@rsa-cookie"
    assert credentials.password == cookie
    assert json.loads(b64url_decode(cookie.split(".")[0]))["exp"] == credentials.expires
    login = await site.start_login("http://127.0.0.1:5280/callback/rsa-cookie", "st 1")
    assert login.url.endswith("?return_to=http%3A%2F%2F127.0.0.1%3A5280%2Fcallback%2Frsa-cookie&state=st%201")
