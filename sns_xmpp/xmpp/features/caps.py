"""Entity capabilities (XEP-0115): what each available resource an account sees can do, for PEP's
+notify filtering (XEP-0163 section 4.3.2).

The presences an account receives (its contacts' broadcasts, RFC 6121 4.2) and those its own
resources send carry ``<c hash ver node/>``. The features behind a ``ver`` are known from the
cache, or asked once with disco#info to that full JID (section 6.2). The answer is verified
(section 5.1's algorithm, sha-1; section 5.4's checks) before it is cached by ``ver``: a ``ver``
that does not verify is not cached, its answer is used for that one resource only. The cache and
the queries in flight are bounded.

`EntityCaps.seen(owner)` is what PEP reads: the full JIDs with their features. Listeners
registered with `on_available` hear of a resource that came available with features (or changed
them): PEP sends it the last published items then.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.words.xish import domish

from sns_xmpp.jid import JID, InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.hooks import PRESENCE_FROM_CLIENT, PRESENCE_FROM_NODE, PRESENCE_TO_LOCAL, SESSION_UNBOUND
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import NS_CLIENT, add_element

log = GatedLogger()

NS_CAPS = "http://jabber.org/protocol/caps"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DATA = "jabber:x:data"
XML_LANG = ("http://www.w3.org/XML/1998/namespace", "lang")

MAX_CACHED = 2000  # distinct vers: one per client version in use, so a few dozen in practice
MAX_QUERIES = 200  # disco#info queries in flight
MAX_SEEN = 1000  # resources one account keeps capabilities of (its contacts' and its own)
MAX_WAITING = 1000  # (account, resource) pairs waiting on one ver's query
QUERY_TIMEOUT = 30.0

Listener = Callable[[str, str, frozenset[str]], None]
"""(owner, full JID, features): the resource came available with these features, or changed them."""


class IllFormed(ValueError):
    """Section 5.4: a disco#info answer that must not be cached."""


def ver_string(query: domish.Element) -> str:
    """Section 5.1's verification string of a disco#info <query/>; IllFormed for what section 5.4
    says must not be accepted (duplicate identities or features, a FORM_TYPE with several values,
    two forms of one FORM_TYPE)."""
    identities = []
    for identity in query.elements(NS_DISCO_INFO, "identity"):
        identities.append("/".join((identity.getAttribute("category", ""), identity.getAttribute("type", ""),
                                    identity.getAttribute(XML_LANG, ""), identity.getAttribute("name", ""))))
    features = [feature.getAttribute("var", "") for feature in query.elements(NS_DISCO_INFO, "feature")]
    if len(set(identities)) != len(identities) or len(set(features)) != len(features):
        raise IllFormed("duplicate identity or feature")
    text = "".join(s + "<" for s in sorted(identities)) + "".join(s + "<" for s in sorted(features))
    forms: dict[str, str] = {}
    for form in query.elements(NS_DATA, "x"):
        form_type = None
        fields = []
        for field in form.elements(NS_DATA, "field"):
            values = sorted(str(value) for value in field.elements(NS_DATA, "value"))
            if field.getAttribute("var") == "FORM_TYPE":
                if len(values) != 1:
                    raise IllFormed("FORM_TYPE with other than one value")
                if field.getAttribute("type") != "hidden":
                    form_type = None  # section 5.4 3.6: such a form is ignored
                    break
                form_type = values[0]
            else:
                fields.append((field.getAttribute("var", ""), values))
        else:
            if form_type is None:
                continue  # no FORM_TYPE: not part of the string
            if form_type in forms:
                raise IllFormed("two forms of one FORM_TYPE")
            forms[form_type] = form_type + "<" + "".join(
                var + "<" + "".join(value + "<" for value in values) for var, values in sorted(fields))
    return text + "".join(forms[form_type] for form_type in sorted(forms))


def ver_of(query: domish.Element) -> str:
    """The sha-1 ver of a disco#info answer (section 5.1, steps 7 and 8)."""
    return base64.b64encode(hashlib.sha1(ver_string(query).encode("utf-8")).digest()).decode()  # noqa: S324 (the XEP's hash)


def verifies(ver: str, query: domish.Element) -> bool:
    try:
        return secrets.compare_digest(ver_of(query), ver)
    except IllFormed:
        return False


def features_of(query: domish.Element) -> frozenset[str]:
    return frozenset(feature.getAttribute("var", "") for feature in query.elements(NS_DISCO_INFO, "feature"))


class EntityCaps:
    def __init__(self, sessions: SessionManager, clock: IReactorTime) -> None:
        self.sessions = sessions
        self.clock = clock
        self.cache: OrderedDict[str, frozenset[str]] = OrderedDict()  # verified sha-1 ver -> features
        self._seen: dict[str, dict[str, frozenset[str]]] = {}  # owner -> full JID -> features
        self._wanted: dict[tuple[str, str], str] = {}  # (owner, full) -> the ver it last announced
        # (full, id) -> (what is asked, the sha-1 ver or "", the timeout)
        self._queries: dict[tuple[str, str], tuple[str, str, IDelayedCall]] = {}
        # What is being asked -> the (owner, full) that wait on it: a sha-1 ver (whoever announced
        # it), else one resource's node#ver (what only that resource's answer may tell).
        self._waiting: dict[str, list[tuple[str, str]]] = {}
        self.listeners: list[Listener] = []
        # In a cluster: (owner, full) learnt from a presence another node routed to the owner's
        # session here (PRESENCE_FROM_NODE) -> that session's full JID, which asks the resource's
        # features (the answer comes back to it through the inbox; one to the bare JID would stay
        # on the other node). The node that routed the presence learnt it too, and told the
        # listeners (PEP's last items): here it is learnt for PEP's publishes only, without them.
        self._from_node: dict[tuple[str, str], str] = {}

    def on_available(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def seen(self, owner: str) -> Mapping[str, frozenset[str]]:
        return self._seen.get(owner, {})

    # -- presence ------------------------------------------------------------

    def presence(self, owner: str, full: str, presence: domish.Element, via: str | None = None) -> None:
        """An available or unavailable presence of *full* that *owner*'s account received or sent
        (*via*: the owner's session here that another node of a cluster delivered it to)."""
        if presence.getAttribute("type") == "unavailable":
            self._forget(owner, full)
            return
        if presence.getAttribute("type") is not None:
            return
        caps = next(presence.elements(NS_CAPS, "c"), None)
        if caps is None:
            self._forget(owner, full)
            return
        ver, node = caps.getAttribute("ver"), caps.getAttribute("node")
        if not ver or not node:
            return
        if via is not None:
            self._from_node[(owner, full)] = via
        elif self._from_node:  # (a truth test on one node)
            self._from_node.pop((owner, full), None)
        if self._wanted.get((owner, full)) == ver:
            return  # a status change: the features are what they were
        seen = self._seen.get(owner, {})
        if full not in seen and len(seen) >= MAX_SEEN:
            self.sessions.metrics.limit("caps-seen")
            self._from_node.pop((owner, full), None)
            return
        known = self.cache.get(ver) if caps.getAttribute("hash") == "sha-1" else None
        if known is not None:
            self.cache.move_to_end(ver)
            self._wanted[(owner, full)] = ver
            self._learn(owner, full, known)
            return
        self._wanted[(owner, full)] = ver
        self._ask(owner, full, f"{node}#{ver}", ver if caps.getAttribute("hash") == "sha-1" else "")

    def _ask(self, owner: str, full: str, node: str, ver: str) -> None:
        wait_key = ver or f"{full} {node}"
        if wait_key in self._waiting:  # asked already (of another resource, or for another account)
            if len(self._waiting[wait_key]) < MAX_WAITING:
                self._waiting[wait_key].append((owner, full))
            else:
                self._wanted.pop((owner, full), None)  # not asked: its next presence may be
            return
        if len(self._queries) >= MAX_QUERIES:
            self.sessions.metrics.limit("caps-queries")
            self._wanted.pop((owner, full), None)
            return
        self._waiting[wait_key] = [(owner, full)]
        query_id = "caps-" + secrets.token_hex(8)
        iq = domish.Element((NS_CLIENT, "iq"))
        iq["type"], iq["id"], iq["from"], iq["to"] = "get", query_id, self._from_node.get((owner, full), owner), full
        add_element(iq, (NS_DISCO_INFO, "query"))["node"] = node
        key = (full, query_id)
        timeout = self.clock.callLater(QUERY_TIMEOUT, self._gave_up, key, node)
        self._queries[key] = (wait_key, ver, timeout)
        self.sessions.hooks.responses[key] = lambda answer: self._answered(owner, full, node, key, answer)
        self.sessions.route(iq)

    def _gave_up(self, key: tuple[str, str], node: str) -> None:
        """No answer in time: the others that waited on this ver are asked themselves."""
        wait_key, ver, _timeout = self._queries.pop(key, ("", "", None))
        self.sessions.hooks.responses.pop(key, None)
        self._ask_the_others(self._waiting.pop(wait_key, []), key[0], node, ver)

    def _ask_the_others(self, waiting: list[tuple[str, str]], asked: str, node: str, ver: str) -> None:
        for waiter, resource in waiting:
            if resource != asked and self._wanted.get((waiter, resource)) == ver:
                self._ask(waiter, resource, node, ver)

    def _answered(self, owner: str, full: str, node: str, key: tuple[str, str], answer: domish.Element) -> None:
        wait_key, ver, timeout = self._queries.pop(key, ("", "", None))
        if timeout is not None and timeout.active():
            timeout.cancel()
        waiting = self._waiting.pop(wait_key, [(owner, full)])
        query = next(answer.elements(NS_DISCO_INFO, "query"), None)
        if answer.getAttribute("type") != "result" or query is None:
            self._ask_the_others(waiting, full, node, ver)
            return
        features = features_of(query)
        verified = bool(ver) and verifies(ver, query)
        if verified:
            self.cache[ver] = features
            self.cache.move_to_end(ver)
            while len(self.cache) > MAX_CACHED:
                self.cache.popitem(last=False)
        elif ver:
            log.warn("caps.unverified {jid} {ver}", jid=full, ver=ver)
        for waiter, resource in waiting:
            if self._wanted.get((waiter, resource)) != ver and ver:
                continue  # it announced another ver since
            if verified or resource == full:
                self._learn(waiter, resource, features)
            else:  # what one resource said of an unverified ver is not taken for another
                self._ask(waiter, resource, node, ver)

    def _learn(self, owner: str, full: str, features: frozenset[str]) -> None:
        seen = self._seen.setdefault(owner, {})
        if seen.get(full) == features:
            return
        seen[full] = features
        if self._from_node and (owner, full) in self._from_node:
            return  # the node that routed the presence told its listeners
        for listener in self.listeners:
            try:
                listener(owner, full, features)
            except Exception:
                log.failure("caps.listener_failed")

    def _forget(self, owner: str, full: str) -> None:
        self._wanted.pop((owner, full), None)
        if self._from_node:
            self._from_node.pop((owner, full), None)
        seen = self._seen.get(owner)
        if seen is not None and seen.pop(full, None) is not None and not seen:
            del self._seen[owner]


SERVER_NODE = "urn:sns-xmpp"  # section 4: a URI for the software (any URI will do)


def server_caps(registry: FeatureRegistry) -> Callable[[str], domish.Element | None]:
    """Section 6.3: the server's own capabilities among the stream features, for a client that
    would otherwise ask the domain's disco#info. The ver is the hash of what the disco feature
    answers (asked here once per domain, once every feature is installed), so that it verifies."""
    made: dict[str, domish.Element | None] = {}

    def make(domain: str) -> domish.Element | None:
        if domain not in made:
            made[domain] = None
            disco = registry.hooks.server_iqs.get((NS_DISCO_INFO, "query"))
            if disco is not None:
                iq = domish.Element((NS_CLIENT, "iq"))
                iq["type"], iq["id"], iq["to"] = "get", "caps", domain
                add_element(iq, (NS_DISCO_INFO, "query"))
                answer = disco(iq)
                if isinstance(answer, domish.Element):
                    caps = domish.Element((NS_CAPS, "c"))
                    caps["hash"], caps["node"], caps["ver"] = "sha-1", SERVER_NODE, ver_of(answer)
                    made[domain] = caps
        return made[domain]

    return make


def install(registry: FeatureRegistry) -> None:
    caps = EntityCaps(registry.sessions, registry.clock)
    registry.services["caps"] = caps
    registry.stream_feature(server_caps(registry), after_auth=True)

    def received(presence: domish.Element, to: JID) -> None:
        if to.resource is None:
            try:
                sender = parse_jid(presence.getAttribute("from", ""))
            except InvalidFormat:
                return None
            if sender.resource is not None:
                caps.presence(to.userhost(), sender.full(), presence)
        return None

    def sent(session: ClientSession, presence: domish.Element) -> None:
        if presence.getAttribute("to") is None:
            caps.presence(session.bare, session.full, presence)
        return None

    def unbound(session: ClientSession, replaced: bool) -> None:
        caps._forget(session.bare, session.full)

    def from_node(session: ClientSession, presence: domish.Element) -> None:
        try:
            sender = parse_jid(presence.getAttribute("from", ""))
        except InvalidFormat:
            return None
        if sender.resource is not None:
            caps.presence(session.bare, sender.full(), presence, via=session.full)
        return None

    # Before presence's own handlers, which end the chains; these only look.
    registry.hook(PRESENCE_TO_LOCAL, received, priority=20)
    registry.hook(PRESENCE_FROM_CLIENT, sent, priority=20)
    registry.hook(SESSION_UNBOUND, unbound)
    registry.hook(PRESENCE_FROM_NODE, from_node)  # a cluster's: what other nodes routed here
    registry.account_disco_feature(NS_CAPS)


def entity_caps(registry: FeatureRegistry) -> EntityCaps | None:
    """The installed capabilities tracker, or None when the feature is off."""
    found = registry.services.get("caps")
    return found if isinstance(found, EntityCaps) else None


FEATURE = Feature("caps", install)
