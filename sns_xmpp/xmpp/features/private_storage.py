"""Private XML storage (XEP-0049, jabber:iq:private): an account keeps XML fragments on the server,
each under its own namespace, and reads them back; clients keep their preferences there, and
bookmarks (XEP-0048's storage:bookmarks) are such a fragment like any other.

Section 2.3, as the XEP describes the protocol in use:
- a set holds one or more elements, each qualified by its own namespace; the elements of one
  namespace replace what the account kept in it (several elements of one namespace are kept
  together). An empty element with no attributes forgets the namespace, since a get for it answers
  the same empty element;
- a get names exactly one namespace with an (empty) element of it, and is answered with what is
  kept there, or with the element as asked when nothing is;
- only the account itself reads or writes its fragments: anyone else hears forbidden (the XEP's
  preferred condition);
- the reserved namespaces (those beginning with 'jabber:' or 'http://jabber.org/', and
  'vcard-temp') are refused with not-acceptable, as is a set with no element; a get with no element
  (or with more than one namespace) is a bad request (XEP-0086's bad-format).

Limits: each namespace's XML at most `MAX_FRAGMENT_BYTES`, an account at most `QUOTA` (namespaces
and bytes over all of them, checked in the write's transaction).
"""

from __future__ import annotations

from functools import partial

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store.private_storage import OverQuota, Quota, fragment, put_fragments
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import append_child

log = GatedLogger()

NS_PRIVATE = "jabber:iq:private"
RESERVED_PREFIXES = ("jabber:", "http://jabber.org/")
RESERVED = ("vcard-temp",)
# One namespace's XML: bookmarks of a few hundred rooms fit many times over.
MAX_FRAGMENT_BYTES = 128 * 1024
# An account's: a client keeps a handful of namespaces (bookmarks, roster notes, its settings).
QUOTA = Quota(max_namespaces=100, max_bytes=1024 * 1024)


def reserved(namespace: str) -> bool:
    return namespace in RESERVED or namespace.startswith(RESERVED_PREFIXES)


def _namespace_of(element: domish.Element) -> str:
    namespace = element.uri or ""
    if not namespace:
        raise StanzaError("not-acceptable", text="private XML is qualified by its own namespace")
    if reserved(namespace):
        raise StanzaError("not-acceptable", text=f"{namespace} is a reserved namespace")
    return namespace


def _empty(element: domish.Element) -> bool:
    return not element.children and not element.attributes


class PrivateStorage:
    def __init__(self, sessions: SessionManager, quota: Quota = QUOTA,
                 max_fragment_bytes: int = MAX_FRAGMENT_BYTES) -> None:
        self.sessions = sessions
        self.quota = quota
        self.max_fragment_bytes = max_fragment_bytes

    def answer(self, iq: domish.Element, owner: str, session: ClientSession | None) -> Deferred:
        if session is None:
            raise StanzaError("forbidden", text="private XML is its owner's alone")  # section 2.3, example 3
        query = next(iq.elements(NS_PRIVATE, "query"))
        elements = list(query.elements())
        if iq.getAttribute("type") == "get":
            return self._get(owner, elements)
        return self._set(owner, elements)

    def _get(self, owner: str, elements: list[domish.Element]) -> Deferred:
        if not elements:
            raise StanzaError("bad-request", text="name the namespace to read with an element of it")
        namespaces = {_namespace_of(element) for element in elements}
        if len(namespaces) != 1:
            raise StanzaError("bad-request", text="one namespace per get")
        [namespace] = namespaces

        def answered(xml: str | None) -> domish.Element:
            query = domish.Element((NS_PRIVATE, "query"))
            if xml is None:
                append_child(query, elements[0])  # nothing kept: the element as asked
            else:
                query.addRawXml(xml)  # serialised by this server, each element with its namespace
            return query

        return self.sessions.store.run_read(partial(fragment, owner=owner, namespace=namespace)).addCallback(answered)

    def _set(self, owner: str, elements: list[domish.Element]) -> Deferred:
        if not elements:
            raise StanzaError("not-acceptable", text="a set holds at least one element")
        grouped: dict[str, list[domish.Element]] = {}
        for element in elements:
            grouped.setdefault(_namespace_of(element), []).append(element)
        fragments: dict[str, str | None] = {}
        for namespace, group in grouped.items():
            if len(group) == 1 and _empty(group[0]):
                fragments[namespace] = None
                continue
            xml = "".join(element.toXml() for element in group)
            if len(xml.encode()) > self.max_fragment_bytes:
                raise StanzaError("not-acceptable", text=f"at most {self.max_fragment_bytes} bytes per namespace")
            fragments[namespace] = xml

        def refused(reason: Failure) -> None:
            reason.trap(OverQuota)
            self.sessions.metrics.limit("private-storage")
            log.warn("private_storage.over_quota {owner}", owner=owner)
            raise StanzaError("resource-constraint", text="your private storage is full")

        d = self.sessions.store.run(partial(put_fragments, owner=owner, fragments=fragments, quota=self.quota))
        return d.addCallbacks(lambda _: None, refused)


def install(registry: FeatureRegistry) -> None:
    storage = PrivateStorage(registry.sessions)
    registry.account_iq(NS_PRIVATE, "query", storage.answer)
    registry.account_disco_feature(NS_PRIVATE)
    registry.disco_feature(NS_PRIVATE)  # on the server too, where Prosody and ejabberd announce it
    registry.stores("private_storage", per_account=True, what="private XML fragments (XEP-0049), bookmarks among them")


FEATURE = Feature("private-storage", install)
