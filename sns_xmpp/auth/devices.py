"""Device passwords: for clients without FAST, a password the server makes for one device of a
social account (issue 15), shown once, kept as SCRAM keys, listed and revocable.

Every device password of an account is derived under the account's one device salt (keyed by the
per-install secret, so it needs no storage and two devices made at once cannot disagree) and one
iteration count, so that SCRAM, which sends the salt before the client proves anything, can check
the proof against each of them (`auth.scram.ScramServerExchange.server_first`'s alternatives).
The passwords are random and made by the server: more iterations would add cost, not safety.
A revocation deletes them (`IStore.revoke`).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from sns_xmpp.auth.scram import derive_credential
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store.interface import IStore
from sns_xmpp.store.records import DevicePassword, ScramCredential

log = GatedLogger()

DEVICE_ITERATIONS = 4096
MECHANISMS = ("SCRAM-SHA-1", "SCRAM-SHA-256")
MAX_DEVICES = 20  # per account: each is one more HMAC at every SCRAM login of the account
MAX_LABEL_CHARS = 64
_SALT_CONTEXT = b"sns-xmpp device password salt\0"


class DeviceRefused(Exception):
    """Why a device password cannot be made, in words for the person."""


class DevicePasswords:
    def __init__(self, store: IStore, clock: IReactorTime, salt_key: bytes,
                 hashing: Callable[..., Deferred[Any]]) -> None:
        self.store = store
        self.clock = clock
        self._salt_key = salt_key
        self._hashing = hashing  # runs the key derivation off the reactor thread
        # The accounts that have device passwords, as far as this process knows: what decides
        # whether SCRAM is offered to a client naming a social JID. PLAIN works either way.
        self.accounts: set[str] = set()

    def salt(self, jid: str) -> bytes:
        return hmac.digest(self._salt_key, _SALT_CONTEXT + jid.encode(), "sha256")[:16]

    def load(self) -> Deferred[None]:
        """Learn which accounts have device passwords (at start)."""
        return self.store.device_password_jids().addCallback(self.accounts.update)

    def create(self, jid: str, label: str, expires_at: float | None = None) -> Deferred[str]:
        """A new device password for *jid*, returned once (only its keys are kept), working until
        *expires_at* (the device's lifetime)."""
        return defer.ensureDeferred(self._create(jid, label, expires_at))

    async def _create(self, jid: str, label: str, expires_at: float | None) -> str:
        label = label.strip()
        if not label or len(label) > MAX_LABEL_CHARS or not label.isprintable():
            raise DeviceRefused(f"name the device in 1-{MAX_LABEL_CHARS} printable characters")
        if len(await self.store.device_passwords(jid)) >= MAX_DEVICES:
            raise DeviceRefused(f"at most {MAX_DEVICES} device passwords per account: remove one first")
        password = secrets.token_urlsafe(18)
        salt = self.salt(jid)
        credentials = [await self._hashing(derive_credential, mechanism, password, salt=salt,
                                           iterations=DEVICE_ITERATIONS) for mechanism in MECHANISMS]
        await self.store.add_device_password(jid, label, credentials, self.clock.seconds(), expires_at)
        self.accounts.add(jid)
        log.info("auth.device_password_created jid={jid}", jid=jid)
        return password

    def remove(self, jid: str, device_id: int) -> Deferred[bool]:
        def removed(found: bool) -> Deferred[bool]:
            return self.store.device_passwords(jid).addCallback(lambda left: self._forget(jid, left, found))

        return self.store.remove_device_password(jid, device_id).addCallback(removed)

    def _forget(self, jid: str, left: Sequence[DevicePassword], found: bool) -> bool:
        if not left:
            self.accounts.discard(jid)
        return found

    def current(self, devices: Sequence[DevicePassword]) -> list[DevicePassword]:
        """Those of *devices* whose lifetime has not ended."""
        now = self.clock.seconds()
        return [device for device in devices if device.expires_at is None or device.expires_at > now]

    def check_plain(self, jid: str, password: str, devices: Sequence[DevicePassword]) -> Deferred[bool]:
        """Whether *password* is one of *devices*' (the account's)."""
        d: Deferred[ScramCredential] = self._hashing(derive_credential, "SCRAM-SHA-256", password,
                                                     salt=self.salt(jid), iterations=DEVICE_ITERATIONS)

        def compare(derived: ScramCredential) -> bool:
            found = False
            for device in devices:  # every one, so the time does not tell which matched
                stored = next(c for c in device.credentials if c.mechanism == "SCRAM-SHA-256")
                found |= hmac.compare_digest(stored.stored_key, derived.stored_key)
            return found

        return d.addCallback(compare)


def scram_credentials(devices: Sequence[DevicePassword], mechanism: str) -> tuple[ScramCredential, ...]:
    """Each device's credential for *mechanism*, under the account's one salt."""
    return tuple(c for device in devices for c in device.credentials if c.mechanism == mechanism)

