"""SCRAM server exchange (RFC 5802, RFC 7677) and SASLprep (RFC 4013)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sns_xmpp.auth.saslprep import SASLprepError, saslprep
from sns_xmpp.auth.scram import (
    MECHANISMS,
    ScramCredential,
    ScramError,
    ScramServerExchange,
    derive_all,
    derive_credential,
)

HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}

# (mechanism, client nonce, server nonce, salt, proof, server signature)
RFC_VECTORS = [
    pytest.param(
        "SCRAM-SHA-1",
        "fyko+d2lbbFgONRv9qkxdawL",
        "3rfcNHYJY1ZVvWVs7j",
        "QSXCR+Q6sek8bf92",
        "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        "rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        id="RFC5802",
    ),
    pytest.param(
        "SCRAM-SHA-256",
        "rOprNGfwEbeRWgbNEkqO",
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        "W22ZaJ0SNY7soEsUEjb6gQ==",
        "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        id="RFC7677",
    ),
]


def client_final(
    mechanism: str, password: str, client_first_bare: str, server_first: bytes, gs2_header: bytes = b"n,,"
) -> bytes:
    """What an honest client answers to *server_first*, per RFC 5802 section 3."""
    name = HASHES[mechanism]
    attrs = dict(field.split("=", 1) for field in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac(name, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.digest(salted, b"Client Key", name)
    without_proof = f"c={base64.b64encode(gs2_header).decode()},r={attrs['r']}"
    auth_message = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.digest(hashlib.new(name, client_key).digest(), auth_message, name)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def started(
    mechanism: str = "SCRAM-SHA-256", credential: ScramCredential | None = None, first: bytes = b"n,,n=user,r=cnonce"
) -> tuple[ScramServerExchange, bytes]:
    exchange = ScramServerExchange(mechanism, nonce_factory=lambda: "snonce")
    exchange.client_first(first)
    return exchange, exchange.server_first(credential)


def refused(step: Callable[[bytes], object], message: bytes) -> ScramError:
    with pytest.raises(ScramError) as info:
        step(message)
    return info.value


@pytest.mark.parametrize(("mechanism", "cnonce", "snonce", "salt", "proof", "signature"), RFC_VECTORS)
def test_rfc_test_vectors(mechanism: str, cnonce: str, snonce: str, salt: str, proof: str, signature: str) -> None:
    credential = derive_credential(mechanism, "pencil", salt=base64.b64decode(salt), iterations=4096)
    exchange = ScramServerExchange(mechanism, lookup={"user": credential}.get, nonce_factory=lambda: snonce)

    assert exchange.client_first(f"n,,n=user,r={cnonce}".encode()) == "user"
    assert exchange.username == "user" and exchange.authzid is None
    server_first = exchange.server_first()
    assert server_first == f"r={cnonce}{snonce},s={salt},i=4096".encode()

    final = client_final(mechanism, "pencil", f"n=user,r={cnonce}", server_first)
    assert final == f"c=biws,r={cnonce}{snonce},p={proof}".encode()
    assert exchange.client_final(final) == f"v={signature}".encode()
    assert exchange.auth_message == f"n=user,r={cnonce},{server_first.decode()},c=biws,r={cnonce}{snonce}"
    # The attempt is over: replaying the last message is refused.
    assert refused(exchange.client_final, final).server_error == "other-error"


def test_derive_all_salts_each_mechanism_separately() -> None:
    credentials = derive_all("pencil", iterations=1)
    assert [c.mechanism for c in credentials] == list(MECHANISMS)
    assert len({c.salt for c in credentials}) == 2 and all(len(c.salt) == 16 for c in credentials)
    with pytest.raises(SASLprepError):
        derive_credential("SCRAM-SHA-1", "bell\u0007")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_wrong_password_and_unknown_user_fail_alike(mechanism: str) -> None:
    credential = derive_credential(mechanism, "pencil", iterations=64)
    exchange, server_first = started(mechanism, credential)
    wrong = refused(exchange.client_final, client_final(mechanism, "pen", "n=user,r=cnonce", server_first))

    def unknown_server_first(user: str) -> bytes:
        exchange = ScramServerExchange(mechanism, lookup=lambda _: None, nonce_factory=lambda: "snonce")
        exchange.client_first(f"n,,n={user},r=cnonce".encode())
        return exchange.server_first()

    assert unknown_server_first("ghost") == unknown_server_first("ghost") != unknown_server_first("spook")
    exchange, server_first = started(mechanism, None, b"n,,n=ghost,r=cnonce")
    salt = base64.b64decode(server_first.split(b",")[1][2:])
    assert len(salt) == 16 and server_first.endswith(b",i=4096")
    unknown = refused(exchange.client_final, client_final(mechanism, "pencil", "n=ghost,r=cnonce", server_first))

    for error in (wrong, unknown):
        assert (error.server_error, error.sasl_condition, str(error)) == (
            "invalid-proof",
            "not-authorized",
            "wrong credentials",
        )


@pytest.mark.parametrize(
    ("first", "username", "authzid"),
    [
        (b"n,,n=a=2Cb=3Dc,r=x", "a,b=c", None),
        (b"y,a=boss=2C@example.org,n=I\xc2\xadX,r=x", "IX", "boss,@example.org"),
        (b"n,,n=\xe2\x85\xa8,r=x,q=optional-extension", "IX", None),
    ],
)
def test_username_and_authzid_decoding(first: bytes, username: str, authzid: str | None) -> None:
    exchange = ScramServerExchange("SCRAM-SHA-1")
    assert exchange.client_first(first) == username
    assert (exchange.username, exchange.authzid) == (username, authzid)


@pytest.mark.parametrize(
    ("first", "server_error"),
    [
        (b"n,,n=a=2Xb,r=x", "invalid-username-encoding"),
        (b"n,,n=a=,r=x", "invalid-username-encoding"),
        (b"n,,n=,r=x", "invalid-username-encoding"),
        (b"n,,n=\xc2\xad,r=x", "invalid-username-encoding"),  # SASLprep maps it to nothing
        (b"n,,n=bell\x07,r=x", "invalid-username-encoding"),
        (b"p=tls-exporter,,n=user,r=x", "channel-binding-not-supported"),
        (b"n,,m=ext,n=user,r=x", "extensions-not-supported"),
        (b"x,,n=user,r=x", "invalid-encoding"),
        (b"n,b=c,n=user,r=x", "invalid-encoding"),
        (b"n,,r=x,n=user", "invalid-encoding"),
        (b"n,,n=user", "invalid-encoding"),
        (b"n,,n=user,r=", "invalid-encoding"),
        (b"n,,n=user,r=no\x7fdel", "invalid-encoding"),
        (b"n,,n=user,r=caf\xc3\xa9", "invalid-encoding"),
        (b"n,,n=\xff,r=x", "invalid-encoding"),
        (b"n,,n=user,r=x,\x00=y", "invalid-encoding"),
        (b"n,,n=user,r=" + b"x" * 4096, "other-error"),
    ],
)
def test_bad_client_first(first: bytes, server_error: str) -> None:
    error = refused(ScramServerExchange("SCRAM-SHA-256").client_first, first)
    assert error.server_error == server_error
    assert error.sasl_condition == "malformed-request"


@pytest.mark.parametrize(
    ("final", "server_error", "condition"),
    [
        (b"c=eSws,r=cnoncesnonce,p=AAAA", "channel-bindings-dont-match", "not-authorized"),
        (b"c=biws,r=cnonceother,p=AAAA", "other-error", "not-authorized"),
        (b"c=biws,r=cnoncesnonce,p=AAAA", "invalid-proof", "not-authorized"),
        (b"c=biws,r=cnoncesnonce,p=not base64", "invalid-encoding", "malformed-request"),
        (b"c=biws,r=cnoncesnonce", "invalid-encoding", "malformed-request"),
        (b"r=cnoncesnonce,c=biws,p=AAAA", "invalid-encoding", "malformed-request"),
        (b"c=biws,r=cnoncesnonce,p=AAAA,x=late", "invalid-encoding", "malformed-request"),
    ],
)
def test_bad_client_final(final: bytes, server_error: str, condition: str) -> None:
    exchange, _ = started(credential=derive_credential("SCRAM-SHA-256", "pencil", iterations=1))
    error = refused(exchange.client_final, final)
    assert (error.server_error, error.sasl_condition) == (server_error, condition)


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        ("I\u00adX", "IX"),
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        ("\u0007", None),
        ("\u0627\u0031", None),
        ("\u0627\u0031\u0628", "\u0627\u0031\u0628"),  # RandALCat at both ends is fine
        ("a\u2003b\u200b", "a b"),  # non-ASCII space mapped to SPACE, zero-width space to nothing
        ("\ue000", None),  # private use
        ("\u0221", None),  # unassigned in Unicode 3.2
    ],
)
def test_saslprep(text: str, prepared: str | None) -> None:
    if prepared is None:
        with pytest.raises(SASLprepError):
            saslprep(text)
    else:
        assert saslprep(text) == prepared


def test_saslprep_query_allows_unassigned() -> None:
    assert saslprep("\u0221", allow_unassigned=True) == "\u0221"


# Fragments that reach past the first checks more often than uniform bytes do.
_FRAGMENTS = [bytes([b]) for b in b"nypacrmx=,\x00\x7f\xff"] + [b"2C", b"3D", b"biws", "\u00ad\u2168\u0627".encode()]
_ALPHABET = st.sampled_from(_FRAGMENTS)
_MESSAGES = st.one_of(st.binary(max_size=200), st.lists(_ALPHABET, max_size=40).map(b"".join))


@given(first=_MESSAGES, final=_MESSAGES)
def test_arbitrary_bytes_only_raise_scram_error(first: bytes, final: bytes) -> None:
    for prefix in (b"", b"n,,n=u,r=", b"n,,n="):
        try:
            ScramServerExchange("SCRAM-SHA-1").client_first(prefix + first)
        except ScramError:
            pass
    credential = derive_credential("SCRAM-SHA-1", "pencil", iterations=1)
    for prefix in (b"", b"c=biws,r=cnoncesnonce,", b"c=biws,r=cnoncesnonce,p="):
        exchange, _ = started("SCRAM-SHA-1", credential)
        with pytest.raises(ScramError):
            exchange.client_final(prefix + final)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_a_proof_may_match_any_of_several_credentials_under_one_salt(mechanism: str) -> None:
    """An account's device passwords share one salt and count, so SCRAM, which sends the salt
    before any proof, can check the proof against each: the one that matches signs the server's
    answer; a password that is none of them fails as a wrong one does; credentials under another
    salt cannot be mixed in."""
    salt = b"device-salt-0123"
    phone, laptop = (derive_credential(mechanism, password, salt=salt, iterations=4096) for password in ("p1", "p2"))
    exchange = ScramServerExchange(mechanism, nonce_factory=lambda: "snonce")
    exchange.client_first(b"n,,n=user,r=cnonce")
    first = exchange.server_first(phone, (laptop,))
    answer = exchange.client_final(client_final(mechanism, "p2", "n=user,r=cnonce", first))
    name = HASHES[mechanism]
    auth_message = exchange.auth_message.encode()
    assert answer == b"v=" + base64.b64encode(hmac.digest(laptop.server_key, auth_message, name))
    exchange = ScramServerExchange(mechanism, nonce_factory=lambda: "snonce")
    exchange.client_first(b"n,,n=user,r=cnonce")
    first = exchange.server_first(phone, (laptop,))
    assert refused(exchange.client_final, client_final(mechanism, "p3", "n=user,r=cnonce", first)).server_error == (
        "invalid-proof")
    exchange = ScramServerExchange(mechanism, nonce_factory=lambda: "snonce")
    exchange.client_first(b"n,,n=user,r=cnonce")
    with pytest.raises(ValueError, match="share"):
        exchange.server_first(phone, (derive_credential(mechanism, "p2"),))


def test_scram_plus_binds_to_the_channel_and_refuses_a_downgrade() -> None:
    """RFC 5802 section 6 / RFC 7677: SCRAM-SHA-256-PLUS with p=<type> checks c= against the GS2
    header and this connection's channel binding data; other data, a type the connection cannot
    give, p= on the plain mechanism, and "y" where -PLUS was offered (a downgrade) are refused."""
    credential = derive_credential("SCRAM-SHA-256", "pencil", salt=b"salt-0123456789a", iterations=4096)
    bindings = {"tls-server-end-point": b"\x01" * 32}

    def exchange(mechanism: str, plus_offered: bool = True) -> ScramServerExchange:
        return ScramServerExchange(mechanism, nonce_factory=lambda: "snonce", channel_binding=bindings.get,
                                   plus_offered=plus_offered)

    good = exchange("SCRAM-SHA-256-PLUS")
    good.client_first(b"p=tls-server-end-point,,n=user,r=cnonce")
    first = good.server_first(credential)
    header = b"p=tls-server-end-point,,"
    assert good.client_final(client_final("SCRAM-SHA-256", "pencil", "n=user,r=cnonce", first,
                                          header + bindings["tls-server-end-point"])).startswith(b"v=")
    other = exchange("SCRAM-SHA-256-PLUS")
    other.client_first(b"p=tls-server-end-point,,n=user,r=cnonce")
    first = other.server_first(credential)
    forged = client_final("SCRAM-SHA-256", "pencil", "n=user,r=cnonce", first, header + b"\x02" * 32)
    assert refused(other.client_final, forged).server_error == "channel-bindings-dont-match"
    assert refused(exchange("SCRAM-SHA-256-PLUS").client_first,
                   b"p=tls-unique,,n=user,r=cnonce").server_error == "unsupported-channel-binding-type"
    assert refused(exchange("SCRAM-SHA-256").client_first,
                   b"p=tls-server-end-point,,n=user,r=cnonce").server_error == "channel-binding-not-supported"
    assert refused(exchange("SCRAM-SHA-256").client_first, b"y,,n=user,r=cnonce").server_error == (
        "server-does-support-channel-binding")
    exchange("SCRAM-SHA-256", plus_offered=False).client_first(b"y,,n=user,r=cnonce")  # nothing offered: fine
