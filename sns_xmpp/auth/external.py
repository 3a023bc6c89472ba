"""Accounts for another XMPP server: what ejabberd's external authentication and Prosody's HTTP
authentication ask, answered with the same checkers, site plugins and link table as this server's
own logins (docs/operations.md, "Social login for an existing ejabberd or Prosody").

Such a server binds the SASL user name it was given as the JID, so a social login arrives as the
stable localpart the link table holds (``carol\\40demo``) with the hand-over password
``sns1:<site>:...`` (docs/protocol.md, "Credentials handed over"); a login is taken only when
the account it proves is exactly that JID. Local accounts log in with their password. Every
answer is a yes or a no: the reasons are logged here, never the password.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from sns_xmpp.auth.checker import AuthenticationFailed, ILoginChecker, LoginResult
from sns_xmpp.auth.local import Hashing
from sns_xmpp.auth.saslprep import SASLprepError
from sns_xmpp.auth.scram import ScramCredential, derive_all
from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store.interface import IStore

log = GatedLogger()

MAX_FIELD_CHARS = 16384 + 1024  # a hand-over password (auth/social.MAX_HANDOVER_CHARS) with room


class ExternalAccounts:
    """Yes or no to another server's questions about ``user@server``, for the hosted *domains*."""

    def __init__(self, checker: ILoginChecker, store: IStore, domains: Sequence[str], hashing: Hashing,
                 iterations: int) -> None:
        self.checker = checker
        self.store = store
        self.domains = tuple(domains)
        self.hashing = hashing  # key derivation off the reactor thread (LocalAccountChecker's)
        self.iterations = iterations

    def jid(self, user: str, server: str) -> str | None:
        """The prepared bare JID of *user* at a hosted *server*; None for anything else."""
        if not user or len(user) > MAX_FIELD_CHARS or "@" in user or "/" in user:
            return None
        try:
            jid = parse_jid(f"{user}@{server}")
        except InvalidFormat:
            return None
        if jid.host not in self.domains:
            return None
        return jid.userhost()

    # -- the questions --------------------------------------------------------------

    def authenticate(self, user: str, server: str, password: str) -> Deferred[bool]:
        """Whether *password* logs *user* in at *server*: a local account's password, or social
        credentials (the hand-over password, a device password) of exactly that linked JID."""
        jid = self.jid(user, server)
        if jid is None or not password or len(password) > MAX_FIELD_CHARS:
            log.info("extauth.refused reason={reason}", reason="malformed")
            return defer.succeed(False)
        d: Deferred[LoginResult] = self.checker.check_plain(user, password, None, server)

        def checked(result: LoginResult) -> bool:
            if result.jid != jid:
                # The other server would bind the name it was given, not the account proved.
                log.info("extauth.refused jid={jid} reason={reason}", jid=jid, reason="other-account")
                return False
            log.info("extauth.login jid={jid} site={site}", jid=jid, site=result.site or "local")
            return True

        def refused(failure: Failure) -> bool:
            if isinstance(failure.value, AuthenticationFailed):
                log.info("extauth.refused jid={jid} reason={reason}", jid=jid, reason=failure.value.reason)
            else:
                log.failure("extauth.check_failed jid={jid}", failure, jid=jid)
            return False

        return d.addCallbacks(checked, refused)

    def exists(self, user: str, server: str) -> Deferred[bool]:
        """Whether *user* is an account here: a local one, or a social one linked once (so that the
        other server keeps its offline messages)."""
        jid = self.jid(user, server)
        if jid is None:
            return defer.succeed(False)
        return self.store.account_exists(jid)

    def set_password(self, user: str, server: str, password: str) -> Deferred[bool]:
        """A new password for a local account; a social account has none (its site vouches)."""
        return Deferred.fromCoroutine(self._set_password(user, server, password))

    async def _set_password(self, user: str, server: str, password: str) -> bool:
        jid = self._local(user, server)
        credentials = await self._credentials(password) if jid is not None else None
        if jid is None or credentials is None:
            return False
        changed = bool(await self.store.set_credentials(jid, credentials))
        log.info("extauth.password_set jid={jid} done={done}", jid=jid, done=changed)
        return changed

    def register(self, user: str, server: str, password: str, now: float) -> Deferred[bool]:
        """A new local account, never under a social account's name (those hold a backslash)."""
        return Deferred.fromCoroutine(self._register(user, server, password, now))

    async def _register(self, user: str, server: str, password: str, now: float) -> bool:
        jid = self._local(user, server)
        credentials = await self._credentials(password) if jid is not None else None
        if jid is None or credentials is None:
            return False
        created = bool(await self.store.create_account(jid, credentials, now))
        log.info("extauth.registered jid={jid} done={done}", jid=jid, done=created)
        return created

    def remove(self, user: str, server: str) -> Deferred[bool]:
        """Delete the account and what it owns (a social one's link too: its next login at the site
        makes it again)."""
        jid = self.jid(user, server)
        if jid is None:
            return defer.succeed(False)
        def removed(done: bool) -> bool:
            log.info("extauth.removed jid={jid} done={done}", jid=jid, done=bool(done))
            return bool(done)

        return self.store.delete_account(jid).addCallback(removed)

    def remove_checked(self, user: str, server: str, password: str) -> Deferred[bool]:
        """`remove`, once *password* logs the account in (a user deleting their own account)."""
        return self.authenticate(user, server, password).addCallback(
            lambda valid: self.remove(user, server) if valid else False)

    # -- helpers --------------------------------------------------------------------

    def _local(self, user: str, server: str) -> str | None:
        jid = self.jid(user, server)
        return jid if jid is not None and "\\" not in jid else None

    async def _credentials(self, password: str) -> tuple[ScramCredential, ...] | None:
        if not password or len(password) > MAX_FIELD_CHARS:
            return None
        try:
            credentials: tuple[ScramCredential, ...] = await self.hashing(derive_all, password,
                                                                          iterations=self.iterations)
        except SASLprepError:
            return None
        return credentials
