"""Protocol features as modules, registered in one place (Prosody's mod_*).

A feature is a module with a `FEATURE` object providing `IFeature`: its ``install`` receives the
`FeatureRegistry` and registers there what the feature handles (IQs, stanza and session hooks,
stream-level elements, stream features, disco features, storage, Bind2 inline actions).
`built_in.BUILT_IN` is the one list of them and `built_in.install_features` installs those the
configuration leaves on. Adding a XEP adds a module here and a line to `BUILT_IN`; the session core
(`xmpp/sessions.py`) knows none of them by name. `entity_time` (XEP-0202) is the worked example in
docs/architecture.md.

Features send stanzas to a client through `ClientSession.send` (or `SessionManager.route`), the
path stream management counts; never through the stream itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.words.xish import domish
from zope.interface import Attribute, Interface, implementer

from sns_xmpp.config import XMPPConfig
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.hooks import (
    AccountIQHandler,
    BeforeBindHandler,
    Hooks,
    InlineAction,
    IQHandler,
    NonzaHandler,
    SASL2Inline,
    SASL2InlineHandler,
    Storage,
    StreamFeature,
)
from sns_xmpp.xmpp.routing import LocalRoute, StanzaRouter
from sns_xmpp.xmpp.sessions import SessionManager

_log = GatedLogger()


class SiteListing(Protocol):
    """What the social-sites feature reads of the HTTP side's site list (`http.login.SocialWeb`
    provides it): the XMPP side takes it as a parameter instead of importing the HTTP side."""

    public_url: str

    @property
    def sites(self) -> Any: ...  # the registry, for its `generation`

    def site_list(self) -> dict[str, Any]: ...


TakeOver = Callable[[str], "Deferred[None] | None"]
"""(entity's bare JID) -> a Deferred the entity's stanzas wait for, or None (see service_domains)."""

Resync = Callable[[], "Deferred[None] | None"]
"""Read again, from the store, all the shared account state a feature holds (see
shared_account_state); a Deferred that fires once it has, or None."""


class ChangedMeanwhile:
    """The accounts whose shared state changes while a re-read of all of it (a resync) is in
    flight, here or announced from elsewhere. A feature that changes its memory before the store
    write needs it: the store runs calls in order, so a read asked for before that write answers
    without it, and applying the answer would undo the change here; and one whose own read of an
    account changed elsewhere would be set aside by the resync's older answer. The resync leaves
    those accounts as memory has them."""

    def __init__(self) -> None:
        self._watching: list[set[str]] = []  # one set per resync in flight (usually none)

    def note(self, account: str) -> None:
        """*account*'s state changed (here: in memory, its write asked for; or elsewhere: its
        read asked for)."""
        for watched in self._watching:
            watched.add(account)

    def watch(self) -> set[str]:
        """Begin a resync: the set fills with the accounts changed here until `done`."""
        watched: set[str] = set()
        self._watching.append(watched)
        return watched

    def done(self, watched: set[str]) -> None:
        self._watching.remove(watched)

    def resync(self, read: Callable[[], Deferred[Any]], apply: Callable[[Any, set[str]], None]) -> Deferred[None]:
        """A feature's resync: *read()* asked for now, and its answer handed to *apply(answer,
        changed)* with the accounts changed meanwhile (`watch` to `done`), which *apply* leaves
        as memory has them."""
        watched = self.watch()

        def over(result: object) -> object:
            self.done(watched)
            return result

        return read().addCallback(apply, watched).addBoth(over)


class ListingAcrossNodes(Protocol):
    """What a cluster offers a `SharedListing` (cluster/listings.py provides it): the xmpp side
    takes it once the node starts, instead of importing the cluster."""

    def put(self, listing: str, entity: str, name: str | None) -> None:
        """This node lists *entity* under *name* now (None: it no longer lists it)."""

    def others(self, listing: str) -> Deferred[dict[str, str]]:
        """What the other live nodes list: entity -> name."""


class SharedListing:
    """A list of entities that live in the memory of one node each (MUC's temporary public rooms),
    which every node of a cluster answers whole. On a server alone it costs one test per change,
    and `elsewhere()` is None: the node's memory is the whole list."""

    def __init__(self, name: str, listed_here: Callable[[], dict[str, str]]) -> None:
        self.name = name
        self.listed_here = listed_here  # entity -> name, what this node lists (read again after Redis lost it)
        self.across: ListingAcrossNodes | None = None  # set by a cluster's node as it starts

    def changed(self, entity: str, name: str | None) -> None:
        """*entity*, of this node, is listed under *name* now (None: no longer listed)."""
        if self.across is not None:
            self.across.put(self.name, entity, name)

    def elsewhere(self) -> Deferred[dict[str, str]] | None:
        """What the other nodes list (entity -> name), or None on a server alone."""
        return None if self.across is None else self.across.others(self.name)


@dataclass
class FeatureRegistry:
    """What a feature's ``install`` receives: the server's parts, and the ways to register."""

    sessions: SessionManager
    clock: IReactorTime
    router: StanzaRouter | None = None  # its routes name the connected components
    config: XMPPConfig = field(default_factory=XMPPConfig)
    sites: SiteListing | None = None  # the social sites, when the HTTP side serves them
    installed: list[str] = field(default_factory=list)
    installing: str = ""  # the feature being installed, named in what it registers
    stopping: list[Callable[[], Any]] = field(default_factory=list)  # what to do as the server stops
    # What a feature offers other features in process, by its name (pep: its PEPService); read
    # it through the offering module's accessor (features.pep.pep_service).
    services: dict[str, Any] = field(default_factory=dict)
    # HTTP resources features serve on the HTTP listener, by their first path segment; the
    # service mounts them beside the login pages (XEP-0363's upload URLs).
    http_resources: dict[bytes, Any] = field(default_factory=dict)
    http_body_limits: dict[bytes, int] = field(default_factory=dict)  # their longest request bodies
    # Service domains whose entities (MUC rooms) keep state in one node's memory: in a cluster,
    # each entity's stanzas go to the one node that holds its lease (cluster/leases.py). Each
    # domain's take-over: what that node does before it serves an entity it has just taken.
    entity_services: dict[str, TakeOver] = field(default_factory=dict)
    # Lists of such entities that every node answers whole (MUC's public rooms), by name; a
    # cluster's node fills in each one's `across` as it starts.
    listings: dict[str, SharedListing] = field(default_factory=dict)

    @property
    def hooks(self) -> Hooks:
        return self.sessions.hooks

    @property
    def disco_features(self) -> list[str]:
        """The server's disco#info features, as announced (the live list)."""
        return self.hooks.disco_features

    # -- IQs ---------------------------------------------------------------

    def iq(self, namespace: str, name: str, handler: IQHandler) -> None:
        """Answer IQs to a hosted domain whose child is ``{namespace}name`` with *handler*: it
        returns the result's child, None for an empty result, a Deferred of either, or raises
        StanzaError."""
        _claim(self.hooks.server_iqs, (namespace, name), handler)

    def account_iq(self, namespace: str, name: str, handler: AccountIQHandler) -> None:
        """Answer IQs to an account's bare JID (and a client's IQs with no 'to') on the account's
        behalf: ``handler(iq, owner, session)``, *session* being the owner's own asking session or
        None for anyone else. Answers as for `iq`."""
        _claim(self.hooks.account_iqs, (namespace, name), handler)

    # -- stanzas and sessions ------------------------------------------------

    def hook(self, event: str, handler: Callable[..., Any], priority: int = 0) -> None:
        """Run *handler* on *event* (xmpp/hooks.py lists them and what handlers receive)."""
        self.hooks.hook(event, handler, priority)

    def nonza(self, namespace: str, handler: NonzaHandler) -> None:
        """Take the stream-level elements in *namespace* of a bound client's stream."""
        _claim(self.hooks.nonzas, namespace, handler)

    def before_bind(self, namespace: str, name: str, handler: BeforeBindHandler) -> None:
        """Take ``{namespace}name`` on an authenticated stream before a resource is bound."""
        _claim(self.hooks.before_bind, (namespace, name), handler)

    # -- what the feature announces ------------------------------------------

    def stream_feature(self, make: StreamFeature, *, after_auth: bool) -> None:
        """Add ``make(domain)`` to <stream:features/> before or after authentication."""
        (self.hooks.features_after_auth if after_auth else self.hooks.features_before_auth).append(make)

    def disco_feature(self, var: str) -> None:
        """Announce *var* in the server's disco#info (XEP-0030)."""
        if var not in self.hooks.disco_features:
            self.hooks.disco_features.append(var)

    def account_disco_feature(self, var: str) -> None:
        """Announce *var* in the disco#info of every account's bare JID (XEP-0030 section 3.1)."""
        if var not in self.hooks.account_disco_features:
            self.hooks.account_disco_features.append(var)

    def account_disco_identity(self, category: str, kind: str) -> None:
        """Announce the identity *category*/*kind* in every account's disco#info (XEP-0030
        section 3.1; XEP-0163 section 6: pubsub/pep)."""
        if (category, kind) not in self.hooks.account_disco_identities:
            self.hooks.account_disco_identities.append((category, kind))

    def on_stop(self, action: Callable[[], Any]) -> None:
        """Call *action* as the server stops, before the store closes, and wait for the Deferred it
        may return: a feature writes what it still holds in memory (MAM's unwritten batch)."""
        self.stopping.append(action)

    def stop(self) -> Deferred[None]:
        """Run every feature's stop action (the service does, once, as it stops)."""
        done = [maybeDeferred(action).addErrback(lambda reason: _log.failure("features.stop_failed", reason))
                for action in self.stopping]
        return DeferredList(done).addCallback(lambda _: None)

    def service_domains(self, label: str, deliver: Callable[[domish.Element], Any], *,
                        one_node_per_entity: bool = False, take_over: TakeOver | None = None) -> list[str]:
        """Host an in-process service at ``<label>.<domain>`` for each hosted domain (MUC's
        conference.example.org): the router hands *deliver* every stanza addressed there, and the
        server's disco#items lists the domains (XEP-0030 section 4). The service answers through
        ``router.route``. Returns the service's domains. Two services, or a service and a hosted
        domain, claiming one domain is a start-up error. (Without a router, as in unit tests of
        other features, nothing reaches the service.) *one_node_per_entity*: the service keeps each
        entity's state (a room's occupants) in memory, so a cluster sends an entity's stanzas to
        one node; *take_over(entity)* is called when a node takes an entity over (its node died,
        or it is the first stanza for it), and the entity's stanzas wait for the Deferred it may
        return (a persistent room read from the store)."""
        made = [f"{label}.{domain}" for domain in sorted(self.sessions.domains)]
        if one_node_per_entity:
            for service_domain in made:
                self.entity_services[service_domain] = take_over or _nothing_to_take_over
        for service_domain in made:
            if service_domain in self.sessions.domains:
                raise ValueError(f"{self.installing}: {service_domain} is a hosted domain")
            if self.router is not None:
                _claim(self.router.routes, service_domain, LocalRoute(deliver))
        return made

    def http_resource(self, segment: bytes, resource: Any, max_body_bytes: int | None = None) -> None:
        """Serve *resource* (a twisted.web IResource) at ``/<segment>`` on the HTTP listener; its
        requests' bodies may be *max_body_bytes* long instead of the listener's usual limit."""
        _claim(self.http_resources, segment, resource)
        if max_body_bytes is not None:
            self.http_body_limits[segment] = max_body_bytes

    def shared_account_state(self, name: str, changed_elsewhere: Callable[[str], None], *,
                             resync: Resync | None = None,
                             held: Callable[[], Iterable[str]] | None = None
                             ) -> Callable[[str], Deferred[None] | None]:
        """Per-account state this feature keeps in memory (blocklists) that another node of a
        cluster may change: *changed_elsewhere(account)* is called when one did; call the returned
        ``changed(account)`` once a change of this node's is in the store. In a cluster it returns
        a Deferred that fires (never fails) once the other nodes have been told: a feature that
        answers its client only then makes the change hold on every node as soon as the client
        knows of it (None on a server alone).

        An announcement is missed while a node's subscriber is away (Redis restarted, the network
        failed), so after it comes back the cluster calls the feature's *resync()*: read
        everything the feature holds again, replacing it (what was removed elsewhere goes too),
        without undoing a change this node makes meanwhile (`ChangedMeanwhile`). A feature that holds
        a few accounts' state gives *held()* instead, the accounts it holds state for:
        *changed_elsewhere* is then called for each of them. One of the two is required."""
        if resync is None:
            if held is None:
                raise ValueError(f"{self.installing}: shared state {name!r} says neither how to "
                                 "resync nor what it holds")
            resync = partial(_each_changed, held, changed_elsewhere)
        _claim(self.hooks.shared_state, name, changed_elsewhere)
        self.hooks.resyncs[name] = resync
        watchers = self.hooks.state_changed

        def changed(account: str) -> Deferred[None] | None:
            told = [d for d in (watch(name, account) for watch in watchers) if d is not None]
            if not told:
                return None
            return told[0] if len(told) == 1 else gatherResults(told).addCallback(lambda _: None)

        return changed

    def shared_listing(self, name: str, listed_here: Callable[[], dict[str, str]]) -> SharedListing:
        """A list of entities (MUC's temporary public rooms: entity -> name) of which each node of
        a cluster holds its own in memory, *listed_here()*; call the returned listing's
        ``changed(entity, name)`` when one of this node's enters, changes or leaves the list, and
        merge its ``elsewhere()`` (None on a server alone) into what this node answers."""
        listing = SharedListing(name, listed_here)
        _claim(self.listings, name, listing)
        return listing

    def stores(self, table: str, *, per_account: bool, what: str) -> None:
        """Declare a table of the store this feature keeps (per account: it goes with the account)."""
        self.hooks.storage.append(Storage(self.installing, table, per_account, what))

    def inline(self, var: str, act: Callable[[ClientSession, domish.Element], domish.Element | None]) -> None:
        """Offer ``act(session, element)`` inside a Bind2 request (XEP-0386), announced as *var*."""
        _claim(self.hooks.inline, var, InlineAction(self.installing, var, act))

    def sasl2_inline(self, offer: domish.Element, name: str, handle: SASL2InlineHandler) -> None:
        """List *offer* among SASL2's inline features (XEP-0388) and answer the <authenticate/>'s
        child ``{offer's namespace}name`` with ``handle(stream, login, element)`` once the login
        succeeded, inside <success/>."""
        key = (offer.uri or "", name)
        _claim(self.hooks.sasl2_inline, key, SASL2Inline(self.installing, offer, name, handle))


def _nothing_to_take_over(entity: str) -> None:
    return None


def _each_changed(held: Callable[[], Iterable[str]], changed_elsewhere: Callable[[str], None]) -> None:
    """The default resync: every account the feature holds state for, as if changed elsewhere."""
    for account in list(held()):  # (a copy: changed_elsewhere may change what is held)
        changed_elsewhere(account)


def _claim(table: dict[Any, Any], key: object, value: object) -> None:
    if key in table:
        raise ValueError(f"two features claim {key!r}")
    table[key] = value


class IFeature(Interface):
    name = Attribute("A stable name, for logs and configuration (e.g. 'entity-time')")

    def install(registry: FeatureRegistry) -> None:
        """Register with *registry* what this feature handles."""


@implementer(IFeature)
@dataclass(frozen=True)
class Feature:
    """The usual provider of IFeature: a name and an install function."""

    name: str
    install: Callable[[FeatureRegistry], None]
