"""The contract between the server and its persistent storage.

Every method returns a Deferred so the reactor never waits on disk; the
synchronous twin used by the admin tool is
:class:`sns_xmpp.store.sqlite.SQLiteDatabase`, which has the same methods
returning plain values.  JIDs are bare (``user@domain``) and already
normalised: the store compares them as exact text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

from twisted.internet.defer import Deferred
from zope.interface import Interface

from sns_xmpp.store.records import (
    Account,
    DevicePassword,
    FastToken,
    FastTokenIssue,
    OfflineMessage,
    RefreshToken,
    Revocation,
    RosterItem,
    ScramCredential,
    SocialLink,
)

if TYPE_CHECKING:  # common.py imports this module's errors
    from sns_xmpp.store.common import Database

_R = TypeVar("_R")

__all__ = [
    "IStore",
    "JidTakenError",
    "SchemaTooNewError",
    "StoreClosedError",
    "StoreError",
    "StoreUnavailableError",
]


class StoreError(Exception):
    """Base class for errors the store raises on purpose."""


class StoreClosedError(StoreError):
    """The store was closed, or has not opened, so it cannot run the call."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached now (a server down or starting); a later call tries again."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer release; refusing to touch it."""


class NoSuchAccountError(StoreError):
    """The account a write is for does not exist (e.g. an offline message to nobody)."""


class JidTakenError(StoreError):
    """``link_account`` was asked to create an account whose JID exists.

    Linking a social identity to an existing account would hand that
    account to whoever controls the social identity, so the caller must
    pick another JID instead.
    """


class IStore(Interface):
    """Accounts, rosters, offline messages and social-site links."""

    # -- accounts --------------------------------------------------------

    def get_account(jid: str) -> Deferred[Account | None]:
        """The account, with its credentials sorted by mechanism, or None."""

    def account_exists(jid: str) -> Deferred[bool]:
        """Whether an account (password or social) exists for ``jid``."""

    def create_account(
        jid: str,
        credentials: Sequence[ScramCredential],
        now: float,
        social: bool = False,
    ) -> Deferred[bool]:
        """Create an account; False if ``jid`` exists (never overwrites).

        A social account must have no credentials (ValueError otherwise);
        at most one credential per mechanism.
        """

    def set_credentials(jid: str, credentials: Sequence[ScramCredential]) -> Deferred[bool]:
        """Replace all credentials of a password account.

        False if there is no such account or it is a social one (a social
        account gaining a password would open a second way in).
        """

    def delete_account(jid: str) -> Deferred[bool]:
        """Delete the account and everything it owns, in one transaction.

        Removes its credentials, roster, pending subscription requests,
        offline messages and social links.  Other users' roster items and
        requests that mention ``jid`` stay: unsubscribing them is protocol
        work for the caller.  False if there was no such account.
        """

    def list_accounts(domain: str | None = None) -> Deferred[list[str]]:
        """Sorted bare JIDs, optionally only those at ``domain``."""

    # -- roster (RFC 6121 2) ----------------------------------------------

    def get_roster(owner: str) -> Deferred[list[RosterItem]]:
        """The owner's roster items, sorted by contact."""

    def put_roster_item(owner: str, item: RosterItem) -> Deferred[None]:
        """Insert the item, or replace the one for the same contact, and bump the owner's roster
        version (RFC 6121 2.6) in the same transaction.

        The owner must be an existing account (IntegrityError otherwise).
        """

    def remove_roster_item(owner: str, contact: str) -> Deferred[None]:
        """Remove the item if present, and bump the owner's roster version (as put_roster_item)."""

    # -- inbound subscription requests (RFC 6121 3.1.3) -------------------

    def add_subscription_request(owner: str, contact: str) -> Deferred[None]:
        """Remember that ``contact`` asked to see ``owner``'s presence."""

    def remove_subscription_request(owner: str, contact: str) -> Deferred[None]:
        """Forget the request if present."""

    def subscription_requests(owner: str) -> Deferred[list[str]]:
        """Contacts waiting for the owner's answer, sorted."""

    def load_roster(owner: str) -> Deferred[tuple[list[RosterItem], list[str], int]]:
        """``(get_roster(owner), subscription_requests(owner), version)`` in one call: *version*
        counts the changes to the owner's items (0 before the first)."""

    # -- offline messages (XEP-0160) --------------------------------------

    def store_offline(owner: str, stanza: str, now: float) -> Deferred[int]:
        """Store a serialized stanza; fires with its id once on disk.

        The commit is synced (not just written to the WAL) before the
        Deferred fires, so an accepted message survives a power cut. Fails
        with NoSuchAccountError when *owner* has no account: one round trip
        checks and stores.
        """

    def offline_messages(owner: str) -> Deferred[list[OfflineMessage]]:
        """The owner's messages in arrival order."""

    def delete_offline(owner: str, ids: Sequence[int]) -> Deferred[None]:
        """Delete the owner's messages with these ids; others' ids are ignored."""

    def count_offline(owner: str) -> Deferred[int]:
        """How many messages wait for the owner."""

    def store_offline_capped(owner: str, stanza: str, now: float, cap: int,
                             max_size: int | None = None) -> Deferred[int | None]:
        """`store_offline` unless *cap* messages already wait for the owner, or (with *max_size*)
        they and *stanza* would exceed *max_size* characters of XML (then None), in one call."""

    # -- social links -----------------------------------------------------

    def get_link(site: str, account: str) -> Deferred[SocialLink | None]:
        """The link for the site's account, or None."""

    def link_account(site: str, account: str, jid: str, now: float) -> Deferred[SocialLink]:
        """The link for (site, account), creating it and its account if new.

        An existing link is returned unchanged, whatever ``jid`` says, so
        racing first logins agree on one JID.  Otherwise a social account
        ``jid`` and the link are created in one transaction; if ``jid`` is
        already an account the call fails with :class:`JidTakenError`.
        """

    def touch_link(site: str, account: str, now: float) -> Deferred[None]:
        """Record a login through the link (no-op if there is none)."""

    def social_login(site: str, account: str, candidates: Iterable[str], now: float) -> Deferred[SocialLink | None]:
        """The link for a login through (site, account), in one call.

        Without a link, one is made (with its account) for the first of *candidates* that is
        not taken; None if all are. ``last_login`` is recorded, at most once a minute
        (`sns_xmpp.store.composite.TOUCH_INTERVAL`), so that a repeat login usually writes
        nothing.
        """

    def list_links(site: str | None = None, jid: str | None = None) -> Deferred[list[SocialLink]]:
        """Links filtered by site and/or JID, sorted by (site, account)."""

    def remove_link(site: str, account: str) -> Deferred[bool]:
        """Remove the link only; its account stays until deleted.

        False if there was no such link.
        """

    # -- revocation ---------------------------------------------------------

    def revoke(jid: str, reason: str, now: float, site: str | None = None,
               account: str | None = None) -> Deferred[int | None]:
        """Revoke the account's links (or, with *site* and *account*, that one link, whichever
        account it names) and record a revocation that the running servers read to end its live
        sessions; the revocation's id, or None if there was no such account or link. A revoked
        link stays, with the time: credentials issued later bring the same account back to the
        same user."""

    def revocations_after(last_id: int, limit: int = 1000) -> Deferred[list[Revocation]]:
        """Revocations recorded after *last_id*, oldest first, at most *limit*."""

    def last_revocation_id() -> Deferred[int]:
        """The newest revocation's id (0 if none): where a starting server begins to read."""

    # -- device passwords (issue 15) -----------------------------------------

    def add_device_password(jid: str, label: str, credentials: Sequence[ScramCredential],
                            now: float, expires_at: float | None = None) -> Deferred[int]:
        """Keep a device password (its SCRAM-SHA-1 and -SHA-256 keys, one salt: the account's
        device salt, shared by all its devices); its id."""

    def device_passwords(jid: str) -> Deferred[list[DevicePassword]]:
        """The account's device passwords, oldest first."""

    def remove_device_password(jid: str, device_id: int) -> Deferred[bool]:
        """Forget one; False if the account has no such device password."""

    def device_password_jids() -> Deferred[list[str]]:
        """The accounts that have device passwords (SCRAM is offered to them by name)."""

    # -- re-confirmation with the provider (issue 15) -------------------------------

    def extend_devices(jid: str, until: float, fast_lifetime: float) -> Deferred[None]:
        """The provider confirmed the account again: its devices (FAST tokens, device passwords)
        may last until *until*; a FAST token no longer than *fast_lifetime* from its issue."""

    def put_refresh_token(site: str, account: str, jid: str, sealed: str, now: float) -> Deferred[None]:
        """Keep (or replace) the sealed refresh token of a linked account, confirmed *now*."""

    def refresh_tokens_due(before: float, limit: int = 100) -> Deferred[list[RefreshToken]]:
        """Refresh tokens last confirmed at or before *before*, oldest first."""

    def delete_refresh_token(site: str, account: str) -> Deferred[None]:
        """Forget one."""

    # -- replay protection ------------------------------------------------

    def remember_token(site: str, token_digest: bytes, expires_at: float, now: float) -> Deferred[bool]:
        """True if the digest is new for the site (or its use expired).

        False means a replay: the digest was used and ``expires_at`` of
        that use is still after ``now``.  Expired rows are swept a bounded
        number at a time on each call.
        """

    # -- FAST tokens (XEP-0484) -------------------------------------------

    def fast_token(jid: str, agent: str) -> Deferred[FastToken | None]:
        """The FAST token of the account's client *agent* (its ``<user-agent id>``), or None."""

    def put_fast_token(jid: str, agent: str, mechanism: str, token_hash: bytes, issued_at: float,
                       expires_at: float, confirmed_until: float | None = None) -> Deferred[bool]:
        """Store a new token (its SHA-256 digest) for (jid, agent), replacing any there, the
        previous one included; False if there is no such account. *confirmed_until*: the
        device's lifetime, which no rotation passes."""

    def use_fast_token(jid: str, agent: str, used_hash: bytes, count: int, now: float,
                       replacement: FastTokenIssue | None) -> Deferred[bool]:
        """Take a FAST login with the token whose digest is *used_hash*, in one statement: the
        current token (unexpired) or the previous one (within its grace period), with *count*
        above the last count it gave. With a *replacement* the login rotates: the replacement
        becomes current, a used current token the previous. Without one (invalidate) the row goes.
        False if nothing matched: another login took the count first, or the token is gone."""

    # -- a feature module's own tables -------------------------------------------------------

    def run(work: Callable[[Database], _R]) -> Deferred[_R]:
        """Run ``work(database)`` on the store's worker, in order with every other call: a feature
        module's own writes (and reads that must see them), through `Database.transaction` and
        `Database.query`. The database is the blocking twin of this store (store/common.py)."""

    def run_read(work: Callable[[Database], _R]) -> Deferred[_R]:
        """Like `run` for work that only reads: it may run at once on the reactor thread, on the
        read connection, when no call is queued (so it never overtakes a write)."""

    def run_aside(work: Callable[[Database], _R]) -> Deferred[_R]:
        """Like `run` for a write no read waits for: `run_read` may go ahead of it while it
        waits or runs. The user archive's batches: the archive's own reads wait for them
        explicitly (`ArchiveWriter.flush`), and nothing else reads what they write, so a login's
        or a roster's read need not wait behind 20 ms of archive rows."""

    def close() -> Deferred[None]:
        """Finish pending calls and release the database."""
