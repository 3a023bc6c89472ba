"""Refresh tokens at rest: sealed, bound to their row, never readable from the database alone."""

from __future__ import annotations

from sns_xmpp.auth.reconfirm import Sealer


def test_a_sealed_refresh_token_opens_only_for_its_account_under_its_key() -> None:
    """AES-GCM with the site and the account as associated data: the same token seals differently
    each time, opens for its own row only, and not under another install's key or once altered."""
    sealer = Sealer(b"install-secret")
    sealed = sealer.seal("refresh-token-123", "idp", "User-42")
    assert "refresh-token-123" not in sealed and sealed != sealer.seal("refresh-token-123", "idp", "User-42")
    assert sealer.open(sealed, "idp", "User-42") == "refresh-token-123"
    assert sealer.open(sealed, "idp", "User-43") is None  # moved to another account's row
    assert Sealer(b"another-install").open(sealed, "idp", "User-42") is None
    flipped = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    assert sealer.open(flipped, "idp", "User-42") is None and sealer.open("not base64!", "idp", "User-42") is None
