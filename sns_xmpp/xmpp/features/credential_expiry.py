"""Sessions that end with the site's credentials, for sites whose ``session_policy`` is "token".

A deployment that wants the social site to stay in charge sets ``session_policy = "token"`` in
the site's table: a login then carries the credentials' expiry (`LoginResult.expires`), and the
session ends then, with the stream error ``not-authorized`` and the reason and where to log in
again in its text. A session waiting to be resumed (XEP-0198) ends at once then. Other sessions
("device", the default) are not touched here.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall
from twisted.words.protocols.jabber.error import StreamError

from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.hooks import SESSION_BOUND, SESSION_UNBOUND
from sns_xmpp.xmpp.sessions import SessionManager


class CredentialExpiry:
    def __init__(self, sessions: SessionManager, login_url: str | None) -> None:
        self.sessions = sessions
        self.login_url = login_url  # the public URL's base, for "log in again at ..."
        self.timers: dict[ClientSession, IDelayedCall] = {}  # only sessions bound by a token

    def bound(self, session: ClientSession) -> None:
        expires = session.login.expires
        if expires is not None:
            delay = max(0.0, expires - self.sessions.clock.seconds())
            self.timers[session] = self.sessions.clock.callLater(delay, self.expired, session)

    def unbound(self, session: ClientSession, replaced: bool) -> None:
        timer = self.timers.pop(session, None)
        if timer is not None and timer.active():
            timer.cancel()

    def expired(self, session: ClientSession) -> None:
        self.timers.pop(session, None)
        if session.detached:
            self.sessions.unbind(session)
            return
        again = f": log in again at {self.login_url}/login-using-{session.login.site}" if self.login_url else ""
        session.stream.fail(StreamError("not-authorized", text=f"the site's credentials have expired{again}"))


def install(registry: FeatureRegistry) -> None:
    expiry = CredentialExpiry(registry.sessions, registry.sites.public_url if registry.sites else None)
    registry.hook(SESSION_BOUND, expiry.bound)
    registry.hook(SESSION_UNBOUND, expiry.unbound)


FEATURE = Feature("credential-expiry", install)
