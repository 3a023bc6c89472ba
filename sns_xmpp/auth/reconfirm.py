"""Re-confirming social accounts with their provider, without the browser (issue 15).

When an OpenID provider gives a refresh token (scope ``offline_access``) at a login, the server
keeps it sealed (AES-GCM under a per-install key) and, once a day, asks the provider to confirm
the account again (`IRefreshingSite.refresh`). Confirmed, the account's devices (FAST tokens,
device passwords) live on for the site's ``device_lifetime`` from then, so a phone never needs the
browser while the person keeps their account at the provider. Not confirmed (the person withdrew
the access, or logged out there), the account is revoked: its sessions end, its devices go.
A provider that cannot be reached is asked again at the next round.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.sites.interface import IRefreshingSite, ProviderUnavailable, SiteRejection
from sns_xmpp.sites.registry import SiteRegistry
from sns_xmpp.store.interface import IStore
from sns_xmpp.store.records import RefreshToken

log = GatedLogger()

ROUND_SECONDS = 3600.0  # how often the server looks for accounts due
CONFIRM_EVERY = 86400.0  # how long after its last confirmation an account is due again
_CONTEXT = b"sns-xmpp refresh token v1"


class Sealer:
    """Seals refresh tokens at rest: AES-256-GCM, a random nonce each time, the site and account
    as associated data (a sealed token cannot be moved to another account's row)."""

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(hashlib.sha256(_CONTEXT + secret).digest())

    def seal(self, token: str, site: str, account: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, token.encode(), f"{site}\0{account}".encode())
        return base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, site: str, account: str) -> str | None:
        try:
            raw = base64.b64decode(sealed, validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], f"{site}\0{account}".encode()).decode()
        except (ValueError, InvalidTag):
            return None


class Reconfirmer(service.Service):
    def __init__(self, store: IStore, sites: SiteRegistry, clock: IReactorTime, sealer: Sealer,
                 fast_lifetime: float, interval: float = ROUND_SECONDS, every: float = CONFIRM_EVERY) -> None:
        self.store = store
        self.sites = sites
        self.clock = clock
        self.sealer = sealer
        self.fast_lifetime = fast_lifetime
        self.interval = interval
        self.every = every
        self._loop: LoopingCall | None = None
        self._running_round = False

    def keep(self, site: str, account: str, jid: str, refresh_token: str) -> Deferred[None]:
        """Keep the refresh token a login brought (the login itself confirmed the account now)."""
        sealed = self.sealer.seal(refresh_token, site, account)
        return self.store.put_refresh_token(site, account, jid, sealed, self.clock.seconds())

    def startService(self) -> None:
        super().startService()
        loop = self._loop = LoopingCall(self.run_round)
        loop.clock = self.clock
        loop.start(self.interval, now=False).addErrback(self._failed)

    def stopService(self) -> Deferred[None] | None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()

    def run_round(self) -> Deferred[int] | None:
        """Re-confirm the accounts due; fires with how many the providers confirmed."""
        if self._running_round:
            return None
        self._running_round = True
        d = defer.ensureDeferred(self._round())
        d.addErrback(self._failed)

        def done(result: Any) -> Any:
            self._running_round = False
            return result

        return d.addBoth(done)

    async def _round(self) -> int:
        now = self.clock.seconds()
        confirmed = 0
        for due in await self.store.refresh_tokens_due(now - self.every):
            if await self._reconfirm(due, now):
                confirmed += 1
        return confirmed

    async def _reconfirm(self, due: RefreshToken, now: float) -> bool:
        site = self.sites.get(due.site)
        token = self.sealer.open(due.sealed, due.site, due.account)
        if site is None or not IRefreshingSite.providedBy(site) or token is None:
            await self.store.delete_refresh_token(due.site, due.account)  # nothing can use it
            return False
        try:
            renewed: str = await cast(IRefreshingSite, site).refresh(due.account, token, now)
        except ProviderUnavailable as unavailable:
            log.warn("reconfirm.provider_unavailable site={site} reason={reason}", site=due.site,
                     reason=unavailable.reason)
            return False
        except SiteRejection as rejection:
            log.info("reconfirm.refused site={site} jid={jid} kind={kind}", site=due.site, jid=due.jid,
                     kind=rejection.kind.value)
            await self.store.revoke(due.jid, "the site no longer confirms the account", now, site=due.site,
                                    account=due.account)
            return False
        await self.store.put_refresh_token(due.site, due.account, due.jid,
                                           self.sealer.seal(renewed, due.site, due.account), now)
        await self.store.extend_devices(due.jid, now + self.sites.device_lifetime(due.site), self.fast_lifetime)
        log.info("reconfirm.confirmed site={site} jid={jid}", site=due.site, jid=due.jid)
        return True

    def _failed(self, reason: Failure) -> None:
        log.failure("reconfirm.failed", reason)
