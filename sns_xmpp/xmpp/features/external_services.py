"""External service discovery (XEP-0215, urn:xmpp:extdisco:2): the STUN and TURN servers of the
configuration ([xmpp.external_services]), told to the server's own accounts, with short-lived
credentials for the restricted ones; Conversations and Dino find their call relays this way.

- A <services/> get (section 3.1), optionally naming a 'type' (3.2), is answered with the
  configured services of that type. A restricted service comes with credentials at once (as
  Conversations expects: it asks for no more), and 'expires' when they end.
- A <credentials/> get (3.3) names a service by host and type (and port): its credentials, or
  item-not-found when no configured service matches.
- Only the server's own accounts are answered (section 3: forbidden for the others), since the
  credentials open the relay to whoever holds them.

The credentials are those of the TURN REST API draft (draft-uberti-behave-turn-rest-00, section
2.2), which coturn's use-auth-secret implements: the username is "<expiry>:<bare JID>" (the expiry
in Unix seconds), the password base64(HMAC-SHA1(secret, username)). The relay checks the HMAC with
the shared secret and refuses an expired username; the server keeps nothing. coturn refuses a
username with a backslash in it (its is_secure_string), which every social JID has (XEP-0106's
"\\40" for the site account's '@'), so the JID's backslashes are written "%5C" there (and its
percent signs "%25", so that the user part still names one JID).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac

from twisted.internet.interfaces import IReactorTime
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.config import ExternalService, ExternalServicesConfig
from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import append_child

NS_EXTDISCO = "urn:xmpp:extdisco:2"


def turn_user(bare_jid: str) -> str:
    """The JID as the user part of a TURN REST username: no backslash, which coturn refuses (the
    other characters it refuses, quotes and white space, are not in a bare JID)."""
    return bare_jid.replace("%", "%25").replace("\\", "%5C")


def turn_rest_credentials(secret: str, bare_jid: str, now: float, lifetime: int) -> tuple[str, str, int]:
    """(username, password, expiry) as the TURN REST API makes them: valid until *expiry*."""
    expiry = int(now) + lifetime
    username = f"{expiry}:{turn_user(bare_jid)}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii"), expiry


def xep0082(seconds: int) -> str:
    """A XEP-0082 dateTime in UTC."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ExternalServices:
    def __init__(self, sessions: SessionManager, config: ExternalServicesConfig, clock: IReactorTime) -> None:
        self.sessions = sessions
        self.config = config
        self.clock = clock

    def _asker(self, iq: domish.Element) -> str:
        """The asking account's bare JID; forbidden for anyone who is not an account of the
        domain asked (a remote server's user, a component). Only gets are requests here (a set
        is how a server pushes, section 3.2)."""
        if iq.getAttribute("type") != "get":
            raise StanzaError("bad-request", text="ask with a get")
        try:
            sender = parse_jid(iq.getAttribute("from", ""))
            to = iq.getAttribute("to")
            domain = parse_jid(to).host if to else sender.host
        except InvalidFormat:
            raise StanzaError("forbidden") from None
        if sender.user is None or sender.host != domain or sender.host not in self.sessions.domains:
            raise StanzaError("forbidden", text="external services are for this server's accounts")
        return sender.userhost()

    def _element(self, service: ExternalService, owner: str) -> domish.Element:
        element = domish.Element((NS_EXTDISCO, "service"))
        element["type"], element["host"] = service.type, service.host
        if service.port is not None:
            element["port"] = str(service.port)
        if service.transport is not None:
            element["transport"] = service.transport
        if service.name is not None:
            element["name"] = service.name
        if service.restricted:
            element["restricted"] = "1"
            username, password, expiry = turn_rest_credentials(
                self.config.turn_secret, owner, self.clock.seconds(), self.config.credential_lifetime)
            element["username"], element["password"] = username, password
            element["expires"] = xep0082(expiry)
        return element

    def services(self, iq: domish.Element) -> domish.Element:
        """Sections 3.1 and 3.2."""
        owner = self._asker(iq)
        wanted = next(iq.elements(NS_EXTDISCO, "services")).getAttribute("type")
        answer = domish.Element((NS_EXTDISCO, "services"))
        if wanted is not None:
            answer["type"] = wanted
        for service in self.config.services:
            if wanted is None or service.type == wanted:
                append_child(answer, self._element(service, owner))
        return answer

    def credentials(self, iq: domish.Element) -> domish.Element:
        """Section 3.3: the services matching host and type (and port, if named)."""
        owner = self._asker(iq)
        asked = list(next(iq.elements(NS_EXTDISCO, "credentials")).elements(NS_EXTDISCO, "service"))
        if len(asked) != 1 or not asked[0].getAttribute("host") or not asked[0].getAttribute("type"):
            raise StanzaError("bad-request", text="name one service by its host and type")
        host, kind, port = asked[0]["host"], asked[0]["type"], asked[0].getAttribute("port")
        matching = [service for service in self.config.services
                    if service.host == host and service.type == kind
                    and (port is None or str(service.port) == port)]
        if not matching:
            raise StanzaError("item-not-found", text="no such service here")
        answer = domish.Element((NS_EXTDISCO, "credentials"))
        for service in matching:
            append_child(answer, self._element(service, owner))
        return answer


def install(registry: FeatureRegistry) -> None:
    external = ExternalServices(registry.sessions, registry.config.external_services, registry.clock)
    registry.iq(NS_EXTDISCO, "services", external.services)
    registry.iq(NS_EXTDISCO, "credentials", external.credentials)
    registry.disco_feature(NS_EXTDISCO)


FEATURE = Feature("external-services", install)
