"""Plain values the store hands out and accepts.

They are frozen so a value read from the store can be shared between
callers without anyone changing it behind the others' backs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "SUBSCRIPTION_STATES",
    "Account",
    "OfflineMessage",
    "RosterItem",
    "ScramCredential",
    "FastToken",
    "FastTokenIssue",
    "SocialLink",
]

# RFC 6121 2.1.2.5; the database has the same CHECK constraint.
SUBSCRIPTION_STATES = frozenset({"none", "to", "from", "both"})


@dataclass(frozen=True)
class ScramCredential:
    """What the server stores for one SCRAM mechanism: enough to verify, not to log in
    (made by `auth.scram.derive`)."""

    mechanism: str  # "SCRAM-SHA-1" or "SCRAM-SHA-256"
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


@dataclass(frozen=True)
class Account:
    jid: str  # bare JID, already normalised by the caller
    created_at: float
    credentials: tuple[ScramCredential, ...]  # sorted by mechanism
    social: bool  # logs in through a social site; never has credentials


@dataclass(frozen=True)
class RosterItem:
    contact: str
    name: str | None = None
    groups: tuple[str, ...] = ()
    subscription: str = "none"
    ask: bool = False  # our outbound subscription request is pending
    approved: bool = False  # inbound subscription pre-approved (RFC 6121 3.4)

    def __post_init__(self) -> None:
        # Fail where the bad value is made rather than at the database,
        # whose IntegrityError would not say which field was wrong.
        if self.subscription not in SUBSCRIPTION_STATES:
            raise ValueError(f"invalid subscription state {self.subscription!r}")


@dataclass(frozen=True)
class OfflineMessage:
    id: int  # grows with arrival; never reused, so deleting by id is safe
    stanza: str  # serialized XML
    stored_at: float


@dataclass(frozen=True)
class SocialLink:
    site: str
    account: str  # the user's identifier on the site
    jid: str
    created_at: float
    last_login: float | None
    # When the link was last revoked (unlinked, logged out everywhere): credentials the site
    # issued before this never log in again; later ones do, as the same user.
    revoked_at: float | None = None


@dataclass(frozen=True)
class Revocation:
    """One revocation of an account's links, in the order recorded: what the running servers
    read to end the account's live sessions."""

    id: int
    jid: str
    reason: str
    at: float


@dataclass(frozen=True)
class FastToken:
    """A FAST token (XEP-0484) of one account and client (``<user-agent id>``), as stored: the
    SHA-256 digests of the token and of the one it replaced, never the tokens themselves."""

    jid: str
    agent: str
    mechanism: str
    token_hash: bytes  # SHA-256(token): the HMAC key the token itself stands for (RFC 2104 3)
    issued_at: float
    expires_at: float
    last_count: int  # the highest count a login with this token gave
    previous_hash: bytes | None = None  # the token it replaced, taken until previous_until
    previous_until: float | None = None
    previous_count: int = 0
    # The device's lifetime: no rotation takes the token past this (None: no such bound).
    confirmed_until: float | None = None


@dataclass(frozen=True)
class FastTokenIssue:
    """A token that replaces the one a FAST login used (rotation): its digest and lifetime, and
    until when the used one is still taken (the grace period)."""

    mechanism: str
    token_hash: bytes
    issued_at: float
    expires_at: float
    grace_until: float


@dataclass(frozen=True)
class DevicePassword:
    """A password the server made for one device of an account (issue 15), kept as SCRAM keys:
    its SCRAM-SHA-1 and SCRAM-SHA-256 credentials, which share the account's device salt."""

    id: int
    jid: str
    label: str
    credentials: tuple[ScramCredential, ...]
    created_at: float
    expires_at: float | None = None  # the device's lifetime (None: no such bound)


@dataclass(frozen=True)
class RefreshToken:
    """A provider's refresh token for a linked account, as kept: sealed, never in clear."""

    site: str
    account: str
    jid: str
    sealed: str
    confirmed_at: float  # when the provider last confirmed the account (the login, or a refresh)
