"""Social logins: ``<identifier>@<site>`` user names checked by the site, then linked to an XMPP user.

The user name is never cut at '@' to find a local user: the text after the
last '@' names a site, a hosted domain (the bare-JID form of a local name), or
nothing we know, which is refused. Linking is by the site's stable account id.

What the login callback hands over is the linked JID itself, with a password that carries the
patent's account access info and the site's signature (`handover_password`): a client logs in
as the JID it is bound as, and keeps doing so until the credentials expire (docs/protocol.md,
"Credentials handed over").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from sns_xmpp.auth.checker import AuthenticationFailed, IBearerChecker, LoginResult, ScramLookup
from sns_xmpp.auth.devices import DevicePasswords, DeviceRefused, scram_credentials
from sns_xmpp.auth.local import LocalAccountChecker
from sns_xmpp.auth.scram import derive_credential, stand_in_credential
from sns_xmpp.jid import InvalidFormat, before_domain, escape_node, parse_jid, unescape_node
from sns_xmpp.observe.log_gate import GatedLogger, escape_controls
from sns_xmpp.observe.metrics import Metrics
from sns_xmpp.sites.interface import ISite, Rejection, SiteRejection, VerifiedAccount
from sns_xmpp.sites.registry import SiteRegistry
from sns_xmpp.store.interface import IStore
from sns_xmpp.store.records import DevicePassword, SocialLink

log = GatedLogger()

SIMPLE_ACCOUNT = re.compile(r"[a-z0-9_.-]{1,64}")
# A site's SCRAM password is a keyed signature, not a person's choice: more rounds would add cost, not safety.
SOCIAL_SCRAM_ITERATIONS = 4096
HASHED_PREFIX = "h-"  # a literal id never keeps it: see social_localpart
HANDOVER_PREFIX = "sns1:"
MAX_HANDOVER_CHARS = 16384  # a token (an ID token, a signed request) and its access info, with room


def handover_password(site_id: str, identifier: str, token: str) -> str:
    """The password handed over with the linked JID: ``sns1:<site>:<identifier, base64url>:<token>``.

    It carries the account access info (the identifier: for the hmac sites the account, the
    session, the expiry and the key id) and the site's signature (the token), so the server can
    check both from a PLAIN login under the JID's own localpart. Site ids and base64url have no
    ':', so the token, which comes last, may hold anything."""
    encoded = base64.urlsafe_b64encode(identifier.encode()).decode().rstrip("=")
    return f"{HANDOVER_PREFIX}{site_id}:{encoded}:{token}"


def parse_handover(password: str) -> tuple[str, str, str] | None:
    """(site id, identifier, token) of a handed-over password; None for any other password."""
    if not password.startswith(HANDOVER_PREFIX) or len(password) > MAX_HANDOVER_CHARS:
        return None
    parts = password[len(HANDOVER_PREFIX):].split(":", 2)
    if len(parts) != 3 or not all(parts):
        return None
    site_id, encoded, token = parts
    try:
        identifier = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except ValueError:
        return None
    return site_id, identifier, token


class BearerFailed(AuthenticationFailed):
    """An OAUTHBEARER refusal, carrying the RFC 7628 error document for the client."""

    def __init__(self, text: str, openid_configuration: str | None, site: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__("not-authorized", text, site=site, reason=reason)
        document: dict[str, str] = {"status": "invalid_token", "scope": "openid"}
        if openid_configuration:
            document["openid-configuration"] = openid_configuration
        self.error_document = json.dumps(document).encode()


def split_social(authcid: str, domain: str) -> tuple[str, str] | None:
    """(identifier, site id) for a social user name, in plain or XEP-0106 JID form; None for a local name."""
    name = authcid
    node = before_domain(name, domain)
    if node is not None and "\\" in node:
        name = node  # "<identifier>\40<site>@<domain>": the whole JID was sent
    if "@" not in name:
        # The JID form, "<identifier>\40<site>". A plain "<identifier>@<site>" is taken as it is:
        # an identifier may hold text like "\40" (OIDC subjects are any string).
        name = unescape_node(name)
        if "@" not in name:
            return None
    identifier, _, site_id = name.rpartition("@")
    if site_id.lower() == domain.lower():  # a local name in bare-JID form; a domainpart is case-insensitive
        return None
    return identifier, site_id


def social_localpart(site_id: str, account: str) -> str:
    """The XMPP localpart made for a new social account: ``<account>\\40<site>``.

    Local account names may not contain a backslash (the admin command refuses
    them), so these can never collide with a local account; accounts whose id
    is not simple lower-case text get ``h-<hash>`` instead, as XMPP folds case.
    The two forms are disjoint: an id that itself begins with ``h-`` is hashed
    too, so nobody who may choose their id can take the JID documented for a
    hashed one (the owner would have been pushed to ``-2``). Links made before
    keep their JIDs: the link table, not this function, says who an account is.
    """
    if not SIMPLE_ACCOUNT.fullmatch(account) or account.startswith(HASHED_PREFIX):
        digest = base64.b32encode(hashlib.sha256(account.encode()).digest()).decode().lower().rstrip("=")
        account = HASHED_PREFIX + digest[:26]
    return escape_node(f"{account}@{site_id}")


@implementer(IBearerChecker)
class SocialLoginChecker:
    """Social logins by site, everything else to the local accounts."""

    def __init__(self, store: IStore, sites: SiteRegistry, local: LocalAccountChecker, clock: IReactorTime,
                 public_url: str, salt_key: bytes, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.store = store
        self.sites = sites
        self.local = local
        self.clock = clock
        self.public_url = public_url
        self._salt_key = salt_key
        self.mechanisms = local.mechanisms + (("OAUTHBEARER",) if sites.bearer_sites() else ())
        self.devices = DevicePasswords(store, clock, salt_key, local.hashing)

    def mechanisms_for(self, claimed_jid: str | None, domain: str) -> tuple[str, ...]:
        """Only PLAIN (and OAUTHBEARER) for a claimed social identity whose site cannot do SCRAM.

        Clients such as Profanity (libstrophe) pick SCRAM whenever it is offered
        and never fall back; a client that names itself in the stream header
        can thus be offered what will work.
        """
        social = None
        if claimed_jid:
            try:
                claimed = parse_jid(claimed_jid)
            except InvalidFormat:
                claimed = None
            if claimed is not None and claimed.user and claimed.host == domain:
                social = split_social(claimed.user, domain)
                if claimed.userhost() in self.devices.accounts:
                    return self.mechanisms  # its device passwords do SCRAM
        if social is None:
            return self.mechanisms
        site = self.sites.get(social[1])
        if site is not None and site.scram_password(social[0], self.clock.seconds()) is not None:
            return self.mechanisms
        return tuple(name for name in self.mechanisms if not name.startswith("SCRAM-"))

    def _site(self, site_id: str) -> ISite:
        site = self.sites.get(site_id)
        if site is None:
            known = ", ".join(sorted(s.site_id for s in self.sites)) or "none"
            # The name is the client's: control characters would make the answer ill-formed XML.
            raise AuthenticationFailed("not-authorized",
                                       f"unknown-site: no site '{escape_controls(site_id)}' (sites: {known})",
                                       site="unknown", reason="unknown-site")
        return site

    def _refused(self, site_id: str, rejection: SiteRejection) -> AuthenticationFailed:
        log.info("auth.social_refused site={site} kind={kind}", site=site_id, kind=rejection.kind.value)
        if rejection.kind is Rejection.PROVIDER_UNAVAILABLE:
            self.metrics.provider_errors.labels(site_id).inc()
        return AuthenticationFailed(
            "not-authorized",
            f"{rejection}; fresh credentials: {self.public_url}/login-using-{site_id}",
            site=site_id, reason=rejection.kind.value)

    def throttle_key(self, authcid: str, domain: str) -> str:
        """(site, account id) for a social name, whatever the session or form of the identifier."""
        social = split_social(authcid, domain)
        if social is None:
            return self.local.throttle_key(authcid, domain)
        identifier, site_id = social
        site = self.sites.get(site_id)
        if site is not None:
            try:
                return f"social:{site_id}\x00{site.parse_identifier(identifier)}"
            except SiteRejection:
                pass
            except Exception:
                log.failure("auth.parse_identifier_failed site={site}", site=site_id)
        return f"social:{site_id}\x00?{identifier}"  # no account: such a name never logs in

    # -- PLAIN ------------------------------------------------------------------

    def check_plain(self, authcid: str, password: str, authzid: str | None, domain: str) -> Deferred[LoginResult]:
        handed = parse_handover(password)
        named = _named_social_jid(authcid, domain)  # a social JID's localpart (local names hold no backslash)
        if named is not None:
            if handed is not None:
                return defer.ensureDeferred(self._handed_over(named, handed, authzid, domain))
            return defer.ensureDeferred(self._device_or_social(named, authcid, password, authzid, domain))
        social = split_social(authcid, domain)
        if social is None:
            return self.local.check_plain(authcid, password, authzid, domain)
        return defer.ensureDeferred(self._social(social, password, authzid, domain, "PLAIN"))

    async def _social(self, social: tuple[str, str], token: str, authzid: str | None, domain: str,
                      method: str) -> LoginResult:
        identifier, site_id = social
        site = self._site(site_id)
        handed = parse_handover(token)
        if handed is not None:
            # A handed-over password under the older user name: the same site and identifier.
            if handed[:2] != (site_id, identifier):
                raise _other_account(site_id)
            token = handed[2]
        return await self._open(site, await self._verified(site, identifier, token), authzid, domain, method,
                                f"{identifier}@{site_id}")

    async def _handed_over(self, named_jid: str, handed: tuple[str, str, str], authzid: str | None,
                           domain: str) -> LoginResult:
        """A PLAIN login as the JID the callback handed over, with its hand-over password."""
        site_id, identifier, token = handed
        site = self._site(site_id)
        return await self._open(site, await self._verified(site, identifier, token), authzid, domain, "PLAIN",
                                f"{identifier}@{site_id}", named_jid)

    async def _device_or_social(self, named_jid: str, authcid: str, password: str, authzid: str | None,
                                domain: str) -> LoginResult:
        """A social JID with a device password, or else (an account that has none) the older
        JID form of a social identity with the site's token."""
        devices = self.devices.current(await self.store.device_passwords(named_jid))
        if not devices:
            social = split_social(authcid, domain)
            site = self.sites.get(social[1]) if social is not None else None
            if social is None or site is None or not _names_an_account(site, social[0]):
                # A linked JID (not an identifier) with neither a device password nor the
                # hand-over password: a wrong password, as for anyone.
                raise AuthenticationFailed("not-authorized", "wrong credentials", reason="wrong-password")
            return await self._social(social, password, authzid, domain, "PLAIN")
        if not await self.devices.check_plain(named_jid, password, devices):
            raise AuthenticationFailed("not-authorized", "wrong credentials", reason="wrong-password")
        return await self._device_login(named_jid, authzid, "PLAIN")

    async def _device_login(self, jid: str, authzid: str | None, method: str) -> LoginResult:
        if authzid and authzid != jid:
            raise AuthenticationFailed("invalid-authzid", "you may only act as yourself")
        links = await self.store.list_links(jid=jid)
        log.info("auth.device_login jid={jid} method={method}", jid=jid, method=method)
        return LoginResult(jid=jid, method=method, site=links[0].site if links else None)

    def create_device_password(self, jid: str, label: str) -> Deferred[str]:
        """A device password for the social account *jid* (shown once); refused for accounts of
        a site whose sessions must end with its credentials (session_policy = "token")."""

        def checked(links: list[SocialLink]) -> Deferred[str]:
            if not links:
                raise DeviceRefused("device passwords are for social accounts")
            if any(self.sites.session_policy(link.site) == "token" for link in links):
                raise DeviceRefused("this site wants its sessions to end with its credentials")
            lifetime = min(self.sites.device_lifetime(link.site) for link in links)
            return self.devices.create(jid, label, self.clock.seconds() + lifetime)

        return self.store.list_links(jid=jid).addCallback(checked)

    async def _verified(self, site: ISite, identifier: str, token: str) -> VerifiedAccount:
        try:
            site.parse_identifier(identifier)
            account: VerifiedAccount = await site.verify(identifier, token, self.clock.seconds())
        except SiteRejection as rejection:
            raise self._refused(site.site_id, rejection) from None
        return account

    async def _open(self, site: ISite, account: VerifiedAccount, authzid: str | None, domain: str, method: str,
                    identity: str | None, named_jid: str | None = None) -> LoginResult:
        now = self.clock.seconds()
        link = await self._link(site.site_id, account.account, domain, now)
        jid = link.jid
        if link.revoked_at is not None and (account.issued_at is None or account.issued_at <= link.revoked_at):
            # Revoked (unlinked, logged out everywhere): credentials the site issued before that
            # never log in again; those it issues later bring the account back to the same user.
            # Tokens state their times to the second, so those of the revocation's own second
            # are refused too: the safe side (a new login a second later works).
            raise self._refused(site.site_id, SiteRejection(
                Rejection.REVOKED, "these credentials were issued before the account was logged out"))
        if named_jid is not None and named_jid not in (jid, _social_jid(identity, domain)):
            # The user name is another account's (its linked JID, or the older identity form):
            # refused before a single-use token is spent.
            raise _other_account(site.site_id)
        if (site.single_use or account.single_use) and not await self.store.remember_token(
                site.site_id, account.token_digest, account.expires, now):
            raise self._refused(site.site_id, SiteRejection(Rejection.REPLAYED, "these credentials were used"))
        allowed = {jid}
        if identity is not None:
            allowed |= {identity, f"{escape_node(identity)}@{domain}"}
        if authzid and authzid not in allowed:
            raise AuthenticationFailed("invalid-authzid", "you may only act as yourself")
        log.info("auth.social_login site={site} jid={jid} method={method}", site=site.site_id, jid=jid,
                 method=method)
        token_bound = self.sites.session_policy(site.site_id) == "token"
        return LoginResult(jid=jid, method=method, site=site.site_id,
                           expires=account.expires if token_bound else None,
                           confirmed_until=account.expires if token_bound
                           else now + self.sites.device_lifetime(site.site_id),
                           display_name=account.display_name)

    def linked_jid(self, site_id: str, account: str, domain: str) -> Deferred[str]:
        """The XMPP user (site, account) is linked to, made on the first call: what the login
        callback hands over, so that it is exactly the JID the client will be bound as."""
        d = defer.ensureDeferred(self._link(site_id, account, domain, self.clock.seconds()))
        return d.addCallback(lambda link: link.jid)

    async def _link(self, site_id: str, account: str, domain: str, now: float) -> SocialLink:
        link = await self.store.social_login(site_id, account, candidate_jids(site_id, account, domain), now)
        if link is None:
            raise AuthenticationFailed("temporary-auth-failure", "could not create the account")
        if link.last_login is None:
            log.info("auth.social_linked site={site} jid={jid}", site=site_id, jid=link.jid)
        return link

    # -- logging out ----------------------------------------------------------------

    def log_out(self, site_id: str, account: str, token_digest: bytes, remember_until: float) -> Deferred[str | None]:
        """The site says the person logged out there (a back-channel logout token, once): log the
        linked account out everywhere. Fires with its JID, None if the account never logged in
        here; fails with SiteRejection(REPLAYED) for a token already used."""
        return defer.ensureDeferred(self._log_out(site_id, account, token_digest, remember_until))

    async def _log_out(self, site_id: str, account: str, token_digest: bytes, remember_until: float) -> str | None:
        now = self.clock.seconds()
        if not await self.store.remember_token(site_id, token_digest, remember_until, now):
            raise SiteRejection(Rejection.REPLAYED, "this logout token was used")
        link = await self.store.get_link(site_id, account)
        if link is None or await self.store.revoke(link.jid, "logged out at the site", now, site=site_id,
                                                   account=account) is None:
            return None
        log.info("auth.social_logged_out site={site} jid={jid}", site=site_id, jid=link.jid)
        return link.jid

    # -- SCRAM ------------------------------------------------------------------

    def scram_lookup(self, authcid: str, mechanism: str, domain: str) -> Deferred[ScramLookup]:
        named = _named_social_jid(authcid, domain)
        if named is not None:
            return self.store.device_passwords(named).addCallback(self.devices.current).addCallback(
                lambda devices: self._device_lookup(named, devices, mechanism) if devices
                else self._social_scram_lookup(authcid, mechanism, domain))
        return self._social_scram_lookup(authcid, mechanism, domain)

    def _device_lookup(self, jid: str, devices: list[DevicePassword], mechanism: str) -> ScramLookup:
        first, *others = scram_credentials(devices, mechanism)

        def complete(authzid: str | None) -> Deferred[LoginResult]:
            return defer.ensureDeferred(self._device_login(jid, authzid, mechanism))

        return ScramLookup(first, complete, tuple(others))

    def _social_scram_lookup(self, authcid: str, mechanism: str, domain: str) -> Deferred[ScramLookup]:
        social = split_social(authcid, domain)
        if social is None:
            return self.local.scram_lookup(authcid, mechanism, domain)
        identifier, site_id = social
        site = self.sites.get(site_id)
        password = site.scram_password(identifier, self.clock.seconds()) if site is not None else None
        # The salt only has to be stable for one identifier; keying it keeps it unguessable.
        salt = hmac.new(self._salt_key, authcid.encode(), hashlib.sha256).digest()[:16]
        if site is None or password is None:
            # Shaped like a site's answer: one cannot tell which identifiers a site would take.
            return defer.succeed(ScramLookup(stand_in_credential(mechanism, salt, SOCIAL_SCRAM_ITERATIONS),
                                             _refuse_unknown))

        def complete(authzid: str | None) -> Deferred[LoginResult]:
            return defer.ensureDeferred(self._social(social, password, authzid, domain, mechanism))

        derived = self.local.hashing(derive_credential, mechanism, password, salt=salt,
                                     iterations=SOCIAL_SCRAM_ITERATIONS)
        return derived.addCallback(lambda credential: ScramLookup(credential, complete))

    # -- OAUTHBEARER (RFC 7628) -------------------------------------------------------

    def check_bearer(self, token: str, authzid: str | None, domain: str) -> Deferred[LoginResult]:
        return defer.ensureDeferred(self._bearer(token, authzid, domain))

    async def _bearer(self, token: str, authzid: str | None, domain: str) -> LoginResult:
        candidates = self.sites.bearer_sites()
        discovery = candidates[0].openid_configuration if candidates else None
        issuer = _unverified_issuer(token)
        if issuer is not None:  # a JWT names its provider; an opaque access token does not
            candidates = [site for site in candidates if site.issuer == issuer]
        # Several sites may share one provider (one client id each): the token is the first one's
        # that takes it; if none does, the first refusal is the answer.
        first: BearerFailed | None = None
        for site in candidates:
            try:
                account: VerifiedAccount = await site.verify_bearer(token, self.clock.seconds())
            except SiteRejection as rejection:
                if first is None:
                    refusal = self._refused(site.site_id, rejection)
                    first = BearerFailed(str(rejection), site.openid_configuration, site=site.site_id,
                                         reason=refusal.reason)
                continue
            return await self._open(site, account, authzid, domain, "OAUTHBEARER", None)
        if first is not None:
            raise first
        raise BearerFailed("no configured provider issued this token", discovery)


def _social_jid(identity: str | None, domain: str) -> str | None:
    """The JID form of a social identity ``<identifier>@<site>``: ``<identifier>\\40<site>@<domain>``."""
    if identity is None:
        return None
    try:
        return parse_jid(f"{escape_node(identity)}@{domain}").userhost()
    except InvalidFormat:
        return None


def _named_social_jid(authcid: str, domain: str) -> str | None:
    """The prepared bare JID a user name names when it is a social JID (its localpart, or the bare
    JID at *domain*): one whose localpart holds a backslash, which no local name may."""
    node = before_domain(authcid, domain)
    if node is None:
        node = authcid
    if "@" in node or "\\" not in node:
        return None
    try:
        return parse_jid(f"{node}@{domain}").userhost()
    except InvalidFormat:
        return None


def _names_an_account(site: ISite, identifier: str) -> bool:
    try:
        site.parse_identifier(identifier)
    except SiteRejection:
        return False
    return True


def _other_account(site_id: str) -> AuthenticationFailed:
    return AuthenticationFailed("not-authorized", "these credentials belong to another account",
                                site=site_id, reason="other-account")


def _unverified_issuer(token: str) -> str | None:
    """The ``iss`` claim, only to pick the provider that will then verify everything."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 16384:
        return None
    try:
        claims: Any = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


def candidate_jids(site_id: str, account: str, domain: str) -> Iterator[str]:
    """The JIDs a first login may get, in order; made only if the store needs them (a repeat
    login, the usual case, does not)."""
    base = social_localpart(site_id, account)
    yield f"{base}@{domain}"
    for attempt in range(2, 10):
        yield f"{base}-{attempt}@{domain}"


def _refuse_unknown(authzid: str | None) -> Deferred[LoginResult]:
    return defer.fail(AuthenticationFailed("not-authorized", "unknown site or malformed identifier"))


