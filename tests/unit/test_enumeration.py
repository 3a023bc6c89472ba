"""An unknown local user name looks, and costs, like a known one: no user enumeration by SASL."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet import defer

from sns_xmpp.auth.checker import AuthenticationFailed
from sns_xmpp.auth.local import LocalAccountChecker
from sns_xmpp.auth.scram import ScramServerExchange, derive_all, derive_credential
from sns_xmpp.store.records import Account

ITERATIONS = 10_000  # configured; real users' keys were made with it
ALICE = Account("alice@localhost", 0.0, derive_all("right", iterations=ITERATIONS), social=False)


class Store:
    def get_account(self, jid: str) -> defer.Deferred:
        return defer.succeed(ALICE if jid == ALICE.jid else None)


class CountingHashing:
    """The checker's 'where key derivation runs', counting each derivation and its rounds."""

    def __init__(self) -> None:
        self.rounds: list[int] = []

    def __call__(self, function: Any, *args: Any, **kwargs: Any) -> defer.Deferred:
        if function is derive_credential:
            self.rounds.append(kwargs["iterations"])
        return defer.maybeDeferred(function, *args, **kwargs)


def checker(salt_key: bytes = b"per-install secret", hashing: Any = defer.maybeDeferred) -> LocalAccountChecker:
    return LocalAccountChecker(Store(), hashing, iterations=ITERATIONS, salt_key=salt_key)  # type: ignore[arg-type]


def server_first(local: LocalAccountChecker, username: str, mechanism: str = "SCRAM-SHA-256") -> dict[str, str]:
    """The server-first-message's attributes for *username*, as a client would see them."""
    exchange = ScramServerExchange(mechanism)
    exchange.client_first(f"n,,n={username},r=cnonce".encode())
    lookup = local.scram_lookup(exchange.username, mechanism, "localhost").result
    message = exchange.server_first(lookup.credential).decode()
    return dict(field.split("=", 1) for field in message.split(","))


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_server_first_of_an_unknown_user_looks_like_a_real_ones(mechanism: str) -> None:
    """Same i= as real users (the configured count, not 4096); a salt of the same size that is
    stable for one name (across checkers sharing the per-install secret, as after a restart, and
    across spellings of the name), differs between names, and differs between installs."""
    first, again = checker(), checker()
    real = server_first(first, "alice", mechanism)
    unknown = server_first(first, "mallory", mechanism)
    assert unknown["i"] == real["i"] == str(ITERATIONS)
    assert len(base64.b64decode(unknown["s"])) == len(base64.b64decode(real["s"]))
    assert server_first(again, "mallory", mechanism)["s"] == unknown["s"]
    assert server_first(again, "MALLORY@localhost", mechanism)["s"] == unknown["s"]
    assert server_first(first, "trent", mechanism)["s"] != unknown["s"]
    assert server_first(checker(b"another install"), "mallory", mechanism)["s"] != unknown["s"]


def test_plain_for_an_unknown_user_derives_a_key_as_for_a_known_one() -> None:
    """PLAIN for an unknown user runs the same PBKDF2 (same count) before refusing, so that the
    answer takes as long: 3.6 ms against 0.7 ms told who exists."""
    hashing = CountingHashing()
    local = checker(hashing=hashing)
    for name in ("alice", "mallory", "bad/name"):
        failures: list = []
        local.check_plain(name, "wrong", None, "localhost").addErrback(failures.append)
        assert failures[0].check(AuthenticationFailed) and failures[0].value.condition == "not-authorized"
        assert str(failures[0].value) == "no such account or wrong password"
    assert hashing.rounds == [ITERATIONS] * 3
