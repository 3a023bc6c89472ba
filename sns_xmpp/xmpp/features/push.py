"""Push Notifications (XEP-0357, urn:xmpp:push:0): a phone's client names its app server, and a
message the phone would miss becomes a pubsub publish to that app server, which wakes the phone
through Google's or Apple's push service.

Sections of XEP-0357 (version 0.4.1) as this module follows them:
- 4.1: the account's disco#info announces urn:xmpp:push:0 (Conversations' server-info screen and
  Monal look for it there).
- 5, enabling: the client's own account IQ-set ``<enable jid node>``, maybe with a data form of
  FORM_TYPE pubsub#publish-options (the app server's credentials), kept as sent (opaque). A
  registration is the account's, keyed by the service's JID and node: enabling the same pair again
  replaces its publish options (the last request wins); another node is another registration. The
  resource that enabled it is kept with it: that is the device, and while its session is up and
  awake it gets its messages itself and needs no push (Prosody's mod_cloud_notify does the same).
  A missing 'jid' is a bad request; a 'node' is only SHOULD, so one without is kept too. Only the
  account itself may enable or disable (forbidden for anyone else).
- 6, disabling: ``<disable jid [node]>`` forgets that pair, or without a node every registration
  of that service; after it nothing is published there. Disabling what is not enabled succeeds.
- 7, publishing: from the server's JID (the account's domain, as since version 0.3), to the
  service's JID, a publish to its node of one item holding ``<notification/>`` with the
  urn:xmpp:push:summary form: message-count always, last-message-sender and last-message-body
  only as [xmpp.push] include_sender and include_body allow (section 9: "servers SHOULD allow
  users to limit the information sent"; both are off by default). The publish options the client
  gave go along as ``<publish-options/>``. It goes through the router, so it reaches a local
  XEP-0114 component or, over server-to-server, a remote domain alike.
- 7.1, publish errors: an error answer disables the registration (row and memory), except a
  transient one (type 'wait', or the path to the app server failing: remote-server-not-found,
  remote-server-timeout, service-unavailable, internal-server-error), which disables it only after
  `MAX_TRANSIENT_ERRORS` in a row: a component restarting must not cost every device its push.
- 8, remote disabling: a message from a registered service with a pubsub affiliation of 'none'
  for the account disables that registration.

What warrants a notification: a chat or normal message with a body, an OMEMO-encrypted one, or a
call proposal (XEP-0353), for an account with a registration whose device (the enabling resource)
has no session, or a session holding stanzas back (XEP-0352 inactive), or one detached and waiting
for a XEP-0198 resumption. It is decided on MESSAGE_TO_LOCAL, before delivery, and never changes
or delays the message: the handler returns None, and a failure in it is logged, not raised.

Limits: `max_registrations` per account (resource-constraint past it, checked in the write's
transaction), publish options of at most `MAX_OPTIONS_BYTES`, nodes of at most `MAX_NODE_CHARS`,
one publish in flight per device and at least `min_interval_ms` between two: what arrives meanwhile
is counted into the next notification (sent when the interval ends), so a busy conversation costs
a device one publish per interval, and the count tells how many messages wait.

The registrations are all read once at start and kept in memory (a few per account that uses push),
so that a message costs one dict lookup when its recipient has none: with nobody registered, one
truth test. In a cluster, a node that changes an account's registrations says so once they are
written, and the other nodes read that account's again (`FeatureRegistry.shared_account_state`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.config import PushConfig
from sns_xmpp.jid import JID, InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store.push import (
    StoredRegistration,
    TooManyRegistrations,
    all_registrations,
    delete_registrations,
    put_registration,
    registrations_of,
)
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import ChangedMeanwhile, Feature, FeatureRegistry
from sns_xmpp.xmpp.hooks import MESSAGE_TO_LOCAL, SESSION_BOUND
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import NS_CLIENT, NS_STANZAS, add_element

log = GatedLogger()

NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
SUMMARY = "urn:xmpp:push:summary"
NS_OMEMO = "eu.siacs.conversations.axolotl"
NS_CALL = "urn:xmpp:jingle-message:0"

MAX_OPTIONS_BYTES = 4096  # an app server's secret and a few settings
MAX_NODE_CHARS = 1024  # Conversations' nodes are 43 characters, Monal's and Siskin's shorter
MAX_BODY_CHARS = 1024  # of a body in a notification, when bodies go at all (phones show a line)
ANSWER_TIMEOUT = 60  # seconds an app server has to answer a publish before the next may go
MAX_TRANSIENT_ERRORS = 5  # transient errors in a row before a registration is disabled
TRANSIENT_CONDITIONS = frozenset({"remote-server-not-found", "remote-server-timeout", "service-unavailable",
                                  "internal-server-error"})


@dataclass(eq=False)
class Registration:
    """One enabled (service, node) of an account, and its device's notification state."""

    owner: str
    service: str
    node: str  # "" when the client named none
    resource: str  # the enabling resource: the device
    options: str | None  # the publish-options form as the client sent it
    waiting: int = 0  # messages for the device since it was last seen awake
    last_sender: str = ""
    last_body: str = ""
    sent_at: float | None = None  # when the last publish went
    published: int = 0  # `waiting` as the publish in flight (or the last one) told it
    timer: IDelayedCall | None = None  # the next publish, at the end of the interval
    in_flight: tuple[str, str] | None = None  # the publish awaiting its answer: (from, id)
    deadline: IDelayedCall | None = None  # when that publish stops being awaited
    errors: int = 0  # transient errors in a row

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.node)


def _field(form: domish.Element, var: str, value: str) -> None:
    field = add_element(form, "field")
    field["var"] = var
    add_element(field, "value", content=value)


def form_type(form: domish.Element) -> str | None:
    """The FORM_TYPE of a data form (XEP-0068), or None."""
    for field in form.elements(NS_DATA, "field"):
        if field.getAttribute("var") == "FORM_TYPE":
            value = next(field.elements(NS_DATA, "value"), None)
            return str(value) if value is not None else ""
    return None


def warrants_push(message: domish.Element) -> str | None:
    """The body to tell of, "" for a message worth a push with no body to tell (encrypted, a
    call), or None for one that is not worth waking a phone for (chat states, receipts,
    groupchat, headlines, errors)."""
    if message.getAttribute("type", "normal") not in ("normal", "chat"):
        return None
    worth: str | None = None
    for child in message.elements():
        if child.name == "body" and child.uri == NS_CLIENT:
            return str(child)
        if (child.uri == NS_OMEMO and child.name == "encrypted") or (child.uri == NS_CALL and child.name == "propose"):
            worth = ""
    return worth


def _service_of(element: domish.Element) -> str:
    text = element.getAttribute("jid")
    if not text:
        raise StanzaError("bad-request", text="the push service's 'jid' is required")
    try:
        return parse_jid(text).full()
    except InvalidFormat:
        raise StanzaError("jid-malformed", text="the push service's 'jid' is not a JID") from None


def _own_request(iq: domish.Element, session: ClientSession | None) -> None:
    if session is None:
        raise StanzaError("forbidden", text="only the account itself enables or disables its push services")
    if iq.getAttribute("type") != "set":
        raise StanzaError("bad-request", text="enable and disable are IQ-sets")


class Push:
    """The registrations in memory, the enabling and disabling IQs, and the notifications."""

    def __init__(self, sessions: SessionManager, route: Any, config: PushConfig) -> None:
        self.sessions = sessions
        self.clock = sessions.clock
        self.route = route  # the router's route: local components and remote domains alike
        self.config = config
        self.interval = config.min_interval_ms / 1000
        self.by_owner: dict[str, dict[tuple[str, str], Registration]] = {}
        # In a cluster, every node holds every account's registrations (a message is judged on the
        # node that routes it): a change here is announced once it is in the store, and the other
        # nodes read that account's again (shared_account_state).
        self.changed: Callable[[str], Deferred[None] | None] = lambda owner: None
        self.meanwhile = ChangedMeanwhile()  # what a resync must leave as it is

    # -- the registrations ------------------------------------------------------

    def load(self) -> Deferred[None]:
        """Read every registration (once, at start)."""
        return self.sessions.store.run_read(all_registrations).addCallback(self._loaded)

    def _loaded(self, stored: Iterable[StoredRegistration]) -> None:
        count = 0
        for row in stored:
            registrations = self.by_owner.setdefault(row.owner, {})
            # One enabled meanwhile is newer than the row read.
            registrations.setdefault((row.service, row.node), Registration(
                row.owner, row.service, row.node, row.resource, row.options))
            count += 1
        log.info("push.loaded registrations={count}", count=count)

    def changed_elsewhere(self, owner: str) -> None:
        """Another node of the cluster enabled or disabled a registration of *owner*: read the
        account's again. (A change of this node's lands in memory once written, after any read
        begun before it, so the read cannot undo it.)"""
        read = self.sessions.store.run_read(partial(registrations_of, owner=owner))
        read.addCallbacks(lambda rows: self._replace(owner, rows),
                          lambda reason: log.failure("push.read_failed owner={owner}", reason, owner=owner))

    def resync(self) -> Deferred[None]:
        """A cluster's node may have missed announcements of changes (its subscriber was away):
        read every registration again and make each account's what the store holds (one disabled
        elsewhere goes too), those still there keeping their notification state. An account
        whose registration this node forgot after an error meanwhile is left as it is (its
        delete is written after this read)."""
        def read(stored: Iterable[StoredRegistration], meanwhile: set[str]) -> None:
            rows: dict[str, list[StoredRegistration]] = {}
            for row in stored:
                rows.setdefault(row.owner, []).append(row)
            for owner in (set(self.by_owner) | set(rows)) - meanwhile:
                self._replace(owner, rows.get(owner, []))
            log.info("push.resynced accounts={count}", count=len(rows))

        return self.meanwhile.resync(partial(self.sessions.store.run_read, all_registrations), read)

    def _replace(self, owner: str, rows: list[StoredRegistration]) -> None:
        """The account's registrations are *rows*: those still there keep their notification
        state (what waits, the publish in flight, the errors counted here), the others go."""
        kept = {(row.service, row.node) for row in rows}
        for registration in list(self.by_owner.get(owner, {}).values()):
            if registration.key not in kept:
                self._drop(owner, registration.service, registration.node)
        held = self.by_owner.get(owner, {})
        for row in rows:
            old = held.get((row.service, row.node))
            if old is None or (old.resource, old.options) != (row.resource, row.options):
                self._keep(row)  # new, or enabled again (section 5: the last request's options)

    def _keep(self, row: StoredRegistration) -> None:
        registrations = self.by_owner.setdefault(row.owner, {})
        old = registrations.get((row.service, row.node))
        if old is not None:  # section 5: the last request's options; the device is the one that asked now
            old.resource, old.options, old.errors = row.resource, row.options, 0
            return
        registrations[(row.service, row.node)] = Registration(row.owner, row.service, row.node, row.resource,
                                                              row.options)

    def _drop(self, owner: str, service: str, node: str | None) -> list[Registration]:
        registrations = self.by_owner.get(owner, {})
        gone = [r for key, r in registrations.items() if key[0] == service and (node is None or key[1] == node)]
        for registration in gone:
            del registrations[registration.key]
            self._settle(registration)
        if not registrations:
            self.by_owner.pop(owner, None)
        return gone

    def _settle(self, registration: Registration) -> None:
        """Stop the registration's timers and its awaited answer (it is gone)."""
        if registration.timer is not None:
            if registration.timer.active():
                registration.timer.cancel()
            registration.timer = None
        self._answer_over(registration)

    def _answer_over(self, registration: Registration) -> None:
        if registration.deadline is not None:
            if registration.deadline.active():
                registration.deadline.cancel()
            registration.deadline = None
        if registration.in_flight is not None:
            self.sessions.hooks.responses.pop(registration.in_flight, None)
            registration.in_flight = None

    def disable_after_error(self, registration: Registration, why: str) -> None:
        """Forget a registration the app server refused (section 7.1) or gave up (section 8)."""
        if self.by_owner.get(registration.owner, {}).get(registration.key) is not registration:
            return
        self.meanwhile.note(registration.owner)  # forgotten before the delete is written
        self._drop(registration.owner, registration.service, registration.node)
        log.info("push.disabled owner={owner} service={service} why={why}", owner=registration.owner,
                 service=registration.service, why=why)
        d = self.sessions.store.run(partial(delete_registrations, owner=registration.owner,
                                            service=registration.service, node=registration.node))
        d.addCallbacks(lambda _: self.changed(registration.owner),
                       lambda reason: log.failure("push.delete_failed", reason))

    # -- sections 5 and 6: the client's IQs --------------------------------------

    def enable(self, iq: domish.Element, owner: str, session: ClientSession | None) -> Deferred[None]:
        _own_request(iq, session)
        assert session is not None
        element = next(iq.elements(NS_PUSH, "enable"))
        service = _service_of(element)
        node = element.getAttribute("node", "")
        if len(node) > MAX_NODE_CHARS:
            raise StanzaError("not-acceptable", text=f"a node of at most {MAX_NODE_CHARS} characters")
        forms = list(element.elements(NS_DATA, "x"))
        options = None
        if len(forms) > 1:
            raise StanzaError("bad-request", text="one publish-options form at most")
        if forms:
            if form_type(forms[0]) != PUBLISH_OPTIONS:
                raise StanzaError("bad-request", text=f"the form's FORM_TYPE must be {PUBLISH_OPTIONS}")
            options = forms[0].toXml()
            if len(options.encode()) > MAX_OPTIONS_BYTES:
                raise StanzaError("not-acceptable", text=f"publish options of at most {MAX_OPTIONS_BYTES} bytes")
        row = StoredRegistration(owner, service, node, session.resource, options)

        def kept(_: None) -> None:
            self._keep(row)
            self.changed(owner)
            log.info("push.enabled owner={owner} service={service} resource={resource}", owner=owner,
                     service=service, resource=session.resource)

        def refused(reason: Failure) -> None:
            reason.trap(TooManyRegistrations)
            self.sessions.metrics.limit("push-registrations")
            raise StanzaError("resource-constraint",
                              text=f"at most {self.config.max_registrations} push registrations per account")

        d = self.sessions.store.run(partial(put_registration, registration=row, now=self.clock.seconds(),
                                            most=self.config.max_registrations))
        return d.addCallbacks(kept, refused)

    def disable(self, iq: domish.Element, owner: str, session: ClientSession | None) -> Deferred[None]:
        _own_request(iq, session)
        element = next(iq.elements(NS_PUSH, "disable"))
        service = _service_of(element)
        node = element.getAttribute("node")

        def forgotten(_: None) -> None:
            self._drop(owner, service, node)
            self.changed(owner)
            log.info("push.disabled owner={owner} service={service} why=client", owner=owner, service=service)

        d = self.sessions.store.run(partial(delete_registrations, owner=owner, service=service, node=node))
        return d.addCallback(forgotten)

    # -- section 7: notifications -------------------------------------------------

    def message_to_local(self, message: domish.Element, to: JID) -> None:
        """MESSAGE_TO_LOCAL: note the message for each registered device that will not see it now."""
        if not self.by_owner:
            return None
        registrations = self.by_owner.get(to.userhost())
        if registrations is None:
            return None
        try:
            self._consider(registrations, message)
        except Exception:
            log.failure("push.failed owner={owner}", Failure(), owner=to.userhost())
        return None

    def _consider(self, registrations: dict[tuple[str, str], Registration], message: domish.Element) -> None:
        sender = message.getAttribute("from", "")
        if self._remote_disable(registrations, message, sender):
            return
        body = warrants_push(message)
        if body is None:
            return
        owner = next(iter(registrations.values())).owner
        resources = self.sessions.users.get(owner, {})
        for registration in list(registrations.values()):
            session = resources.get(registration.resource)
            if session is not None and not session.detached and session.holder is None:
                self._seen(registration)  # awake: the device has it
                continue
            registration.waiting += 1
            registration.last_sender = sender
            registration.last_body = body
            self._due(registration)

    def _remote_disable(self, registrations: dict[tuple[str, str], Registration], message: domish.Element,
                        sender: str) -> bool:
        """Section 8: the service took the account's affiliation away."""
        pubsub = next(message.elements(NS_PUBSUB, "pubsub"), None)
        if pubsub is None:
            return False
        affiliation = next(pubsub.elements(NS_PUBSUB, "affiliation"), None)
        registration = registrations.get((sender, pubsub.getAttribute("node", "")))
        if registration is None or affiliation is None or affiliation.getAttribute("affiliation") != "none":
            return False
        self.disable_after_error(registration, "affiliation-none")
        return True

    def _seen(self, registration: Registration) -> None:
        registration.waiting = 0
        if registration.timer is not None:
            if registration.timer.active():
                registration.timer.cancel()
            registration.timer = None

    def bound(self, session: ClientSession) -> None:
        """SESSION_BOUND: a device back online has its messages; nothing waits for it any more."""
        if not self.by_owner:
            return
        for registration in self.by_owner.get(session.bare, {}).values():
            if registration.resource == session.resource:
                self._seen(registration)

    def _due(self, registration: Registration) -> None:
        if registration.timer is not None or registration.in_flight is not None:
            return  # the next publish (at the interval's end, or after the answer) tells of it too
        now = self.clock.seconds()
        if registration.sent_at is not None and now - registration.sent_at < self.interval:
            registration.timer = self.clock.callLater(registration.sent_at + self.interval - now,
                                                      self._publish_later, registration)
            return
        self._publish(registration)

    def _publish_later(self, registration: Registration) -> None:
        registration.timer = None
        if registration.waiting:
            self._publish(registration)

    def notification(self, registration: Registration, iq_id: str) -> domish.Element:
        """The publish of section 7 (examples 9 and 10) for the device's waiting messages."""
        iq = domish.Element((NS_CLIENT, "iq"))
        iq["type"], iq["from"], iq["to"], iq["id"] = ("set", registration.owner.split("@", 1)[1],
                                                      registration.service, iq_id)
        pubsub = add_element(iq, (NS_PUBSUB, "pubsub"))
        publish = add_element(pubsub, "publish")
        if registration.node:
            publish["node"] = registration.node
        item = add_element(publish, "item")
        form = add_element(add_element(item, (NS_PUSH, "notification")), (NS_DATA, "x"))
        form["type"] = "submit"
        _field(form, "FORM_TYPE", SUMMARY)
        _field(form, "message-count", str(registration.waiting))
        if self.config.include_sender and registration.last_sender:
            _field(form, "last-message-sender", registration.last_sender)
        if self.config.include_body and registration.last_body:
            _field(form, "last-message-body", registration.last_body[:MAX_BODY_CHARS])
        if registration.options is not None:
            add_element(pubsub, "publish-options").addRawXml(registration.options)  # as the client sent it
        return iq

    def _publish(self, registration: Registration) -> None:
        iq_id = "push-" + secrets.token_hex(8)
        iq = self.notification(registration, iq_id)
        awaited = (registration.service, iq_id)
        registration.in_flight = awaited
        registration.sent_at = self.clock.seconds()
        registration.published = registration.waiting
        registration.deadline = self.clock.callLater(ANSWER_TIMEOUT, self._unanswered, registration, awaited)
        self.sessions.hooks.responses[awaited] = partial(self._answered, registration, awaited)
        log.debug("push.publish owner={owner} service={service} count={count}", owner=registration.owner,
                  service=registration.service, count=registration.waiting)
        self.route(iq)  # an unroutable domain's error comes back at once, to _answered

    def _unanswered(self, registration: Registration, awaited: tuple[str, str]) -> None:
        registration.deadline = None
        if registration.in_flight == awaited:
            self._answer_over(registration)
            log.info("push.unanswered owner={owner} service={service}", owner=registration.owner,
                     service=registration.service)
            self._more(registration)

    def _answered(self, registration: Registration, awaited: tuple[str, str], answer: domish.Element) -> None:
        if registration.in_flight != awaited:
            return
        self._answer_over(registration)
        if answer.getAttribute("type") == "result":
            registration.errors = 0
            self._more(registration)
            return
        kind, condition = error_of(answer)
        if kind == "wait" or condition in TRANSIENT_CONDITIONS:
            registration.errors += 1
            if registration.errors < MAX_TRANSIENT_ERRORS:
                log.info("push.transient_error owner={owner} service={service} condition={condition}",
                         owner=registration.owner, service=registration.service, condition=condition)
                self._more(registration)
                return
        self.disable_after_error(registration, condition or "error")

    def _more(self, registration: Registration) -> None:
        """Messages that came while the publish was in flight go in the next one."""
        if registration.waiting > registration.published:
            self._due(registration)


def error_of(answer: domish.Element) -> tuple[str, str]:
    """An error answer's type and defined condition ("" when absent)."""
    error = next((child for child in answer.elements() if child.name == "error"), None)  # jabber:client or a
    # component's namespace, as the answer came
    if error is None:
        return ("", "")
    condition = next((child.name for child in error.elements() if child.uri == NS_STANZAS and child.name != "text"),
                     "")
    return (error.getAttribute("type", ""), condition)


def install(registry: FeatureRegistry) -> None:
    push = Push(registry.sessions, registry.sessions.route, registry.config.push)  # the router's route
    push.changed = registry.shared_account_state("push", push.changed_elsewhere, resync=push.resync)
    registry.account_iq(NS_PUSH, "enable", push.enable)
    registry.account_iq(NS_PUSH, "disable", push.disable)
    registry.account_disco_feature(NS_PUSH)
    registry.hook(MESSAGE_TO_LOCAL, push.message_to_local, priority=-20)  # after blocking and MAM
    registry.hook(SESSION_BOUND, push.bound)
    registry.stores("push_registrations", per_account=True,
                    what="the app servers the account's devices enabled for push notifications (XEP-0357)")
    registry.services["push"] = push
    if registry.sessions.store is not None:  # (unit tests of other features run without one)
        push.load().addErrback(lambda reason: log.failure("push.load_failed", reason))


FEATURE = Feature("push", install)
