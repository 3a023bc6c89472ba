"""vcard-temp (XEP-0054), with the avatar hash in presence (XEP-0153, as XEP-0398 section 4 has
servers do it), and a social user's name from the site as their first vCard.

- The vCard lives on the account's bare JID: anyone may get it, only the owner may set it
  (XEP-0054 section 3.2: others hear <forbidden/>). The owner asking for a vCard never set gets
  an empty <vCard/> (section 3.1); anyone else gets <service-unavailable/> for that and for an
  absent account alike (section 3.3 allows it), so that the answer tells nobody which accounts
  exist. A vCard is kept whole, as XML, up to [xmpp.vcard] max_bytes (the XEP has no limit; a
  larger one hears <not-acceptable/>).
- XEP-0398 section 4: the server puts <x xmlns='vcard-temp:x:update'><photo>SHA-1</photo></x>
  in every available presence the account's clients send (broadcast and directed), the hash of
  the vCard's PHOTO image ('' for none: an empty <photo/>). A presence whose <x/> already holds
  a <photo/> is the client's word and left alone; an <x/> without one gets it. The hash is read
  from the store once while the account has sessions here, not per presence.
- When the owner sets a vCard whose photo hash differs, each available resource's presence goes
  out again with the new hash (XEP-0153 section 3.2 has the client do this; clients that leave it
  to the server, as XEP-0398 expects, would otherwise show the old avatar until they next send
  presence), as ejabberd's mod_vcard_xupdate does.
- A social login carries the site's name for the person (`LoginResult.display_name`: OpenID's
  `name`, an hmac site's account name). The first time such an account binds with no vCard
  stored, that name becomes its vCard's FN. The same store read that brings the photo hash tells
  whether there is a vCard, so no login pays a read of its own; and a vCard the user set, even an
  empty one, is never replaced.
- With PEP on, XEP-0398's conversion between the vCard's photo and the XEP-0084 avatar, and the
  site's name as the XEP-0172 nickname too (features/avatar_conversion.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from functools import partial

from twisted.internet import defer
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from wokkel.generic import parseXml

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store import vcard as vcard_store
from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.features.avatar_conversion import NS_CONVERSION, AvatarConversion
from sns_xmpp.xmpp.hooks import PRESENCE_FROM_CLIENT, SESSION_BOUND, SESSION_UNBOUND, run
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import add_element, append_child

log = GatedLogger()

NS_VCARD = "vcard-temp"
NS_VCARD_UPDATE = "vcard-temp:x:update"

# The largest vCard kept by default ([xmpp.vcard] max_bytes), as serialised XML, its base64 PHOTO
# included: room for an avatar of about 45 KiB (XEP-0153 section 3.1 asks clients for much smaller
# ones), well under a stanza's limit ([xmpp.c2s] max_stanza_bytes, 256 KiB by default).
MAX_VCARD_BYTES = 64 * 1024
MAX_DISPLAY_NAME_CHARS = 256
PRESENCE_PRIORITY = 20  # before the presence feature (0), which sends the presence on
MAX_SHARED_UPDATES = 4096  # distinct hashes' <x/> elements kept for presence


def photo_of(vcard: domish.Element) -> tuple[bytes, str] | None:
    """The PHOTO's image and its TYPE, or None for a vCard without an inline one (none, an
    EXTVAL, an empty BINVAL). Raises StanzaError(bad-request) for a BINVAL that is not base64."""
    photo = _child(vcard, "PHOTO")
    binval = _child(photo, "BINVAL") if photo is not None else None
    if photo is None or binval is None:
        return None
    text = "".join(str(binval).split())  # XEP-0153 section 3.1: line breaks in BINVAL are allowed
    if not text:
        return None
    try:
        image = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise StanzaError("bad-request", text="the PHOTO's BINVAL is not base64") from None
    kind = _child(photo, "TYPE")
    return image, str(kind).strip() if kind is not None else ""


def photo_hash(image: bytes) -> str:
    """XEP-0153 section 4: the hex SHA-1 of the image data (also XEP-0084's item id)."""
    return hashlib.sha1(image).hexdigest()  # noqa: S324 - the protocol's identifier, not security


def first_vcard(display_name: str) -> str:
    """The vCard made from the site's name for the person: their FN."""
    card = domish.Element((NS_VCARD, "vCard"))
    add_element(card, "FN", content=display_name)
    return card.toXml()


def update_element(hash_: str) -> domish.Element:
    """<x xmlns='vcard-temp:x:update'><photo>hash</photo></x> ('' for none: an empty <photo/>)."""
    update = domish.Element((NS_VCARD_UPDATE, "x"))
    photo = append_child(update, domish.Element((NS_VCARD_UPDATE, "photo")))
    if hash_:
        photo.children.append(hash_)
    return update


def stamp(presence: domish.Element, update: domish.Element) -> None:
    """XEP-0398 section 4: *update* (from `update_element`) in *presence*, unless its client put
    an <x/> there; an <x/> without a <photo/> gets *update*'s, one with a <photo/> is left alone.
    *update* itself may be shared by many presences: it is never changed."""
    for child in presence.children:
        if isinstance(child, domish.Element) and child.name == "x" and child.uri == NS_VCARD_UPDATE:
            if next(child.elements(NS_VCARD_UPDATE, "photo"), None) is None:
                child.children.extend(update.children)
            return
    presence.children.append(update)


def _child(parent: domish.Element, name: str) -> domish.Element | None:
    return next(parent.elements(NS_VCARD, name), None)


class VCards:
    def __init__(self, sessions: SessionManager, clock_seconds: Callable[[], float],
                 max_bytes: int = MAX_VCARD_BYTES) -> None:
        self.sessions = sessions
        self.store = sessions.store
        self.seconds = clock_seconds
        self.max_bytes = max_bytes
        # The photo hash of each account with a session here ('' for none), read once per stay.
        self.hashes: dict[str, str] = {}
        # The <x/> each hash goes into presence as, made once and shared (a presence gains it
        # for the price of a list append: no element is built per presence).
        self.updates: dict[str, domish.Element] = {}
        # Accounts whose hash is being read, and what waits for it (presence sent meanwhile).
        self.loading: dict[str, list[Callable[[str | None], object]]] = {}
        # What runs after this feature on a client's presence: a presence held for the hash
        # goes on through these once it is known.
        self.presence_chain = sessions.hooks.chain(PRESENCE_FROM_CLIENT)
        # Told of each new vCard photo the owner sets (XEP-0398's conversion to PEP): (owner, image
        # or None for none, its type); what they return (a Deferred) the set's answer waits for.
        self.photo_listeners: list[Callable[[str, bytes | None, str], object]] = []
        # Told when the site's name made an account's first vCard (XEP-0172's nickname): (owner, name).
        self.name_listeners: list[Callable[[str, str], object]] = []
        # Tells a cluster's other nodes that an account's photo hash changed, once it is in the
        # store (registry.shared_account_state): they hold the hash too, for their own sessions.
        self.changed: Callable[[str], Deferred[None] | None] = lambda owner: None

    # -- the IQ (XEP-0054) ----------------------------------------------------------------------

    def answer(self, iq: domish.Element, owner: str, session: ClientSession | None) -> object:
        vcard = next(iq.elements(NS_VCARD, "vCard"))
        if iq.getAttribute("type") == "get":
            if owner in self.loading:
                # The first session's read is on its way, and with it maybe the vCard made from
                # the site's name: read after that, so the owner's first look finds it.
                after: Deferred[None] = Deferred()
                self.loading[owner].append(lambda hash_: after.callback(None))
                return after.addCallback(lambda _: self._get(owner, session is not None))
            return self._get(owner, session is not None)
        if session is None:
            raise StanzaError("forbidden", text="only the owner may set a vCard")  # section 3.2
        return self._set(owner, vcard)

    def _get(self, owner: str, own: bool) -> Deferred[domish.Element | domish.SerializedXML]:
        return self.store.run_read(partial(vcard_store.get_vcard, jid=owner)).addCallback(self._got, own)

    def _got(self, stored: vcard_store.StoredVCard | None, own: bool) -> domish.Element | domish.SerializedXML:
        if stored is not None:
            return domish.SerializedXML(stored.xml)  # serialised by this module when it was set
        if own:
            return domish.Element((NS_VCARD, "vCard"))  # section 3.1: none yet
        raise StanzaError("service-unavailable")  # section 3.3: no vCard, or no such account

    def _set(self, owner: str, vcard: domish.Element) -> Deferred[None]:
        xml = vcard.toXml()
        size = len(xml.encode("utf-8"))
        if size > self.max_bytes:
            self.sessions.metrics.limit("vcard-size")
            raise StanzaError("not-acceptable", text=f"a vCard may be at most {self.max_bytes} bytes")
        photo = photo_of(vcard)
        new_hash = photo_hash(photo[0]) if photo is not None else ""
        written = self.store.run(partial(vcard_store.put_vcard, jid=owner, xml=xml, photo_hash=new_hash,
                                         now=self.seconds()))

        def stored(_: None) -> Deferred[None] | None:
            log.info("vcard.set jid={jid} bytes={size} photo={photo}", jid=owner, size=size, photo=bool(new_hash))
            if not self._photo_changed(owner, new_hash):
                return None
            image, kind = photo if photo is not None else (None, "")
            # The answer waits for the listeners (XEP-0398 section 3.2's PEP avatar), so that the
            # client finds the avatar in PEP once its set is answered; their failures are theirs.
            told = [defer.maybeDeferred(listener, owner, image, kind) for listener in self.photo_listeners]
            return gatherResults(told, consumeErrors=True).addCallbacks(lambda _: None, self._listener_failed)

        return written.addCallback(stored)

    def _listener_failed(self, reason: Failure) -> None:
        log.failure("vcard.photo_listener_failed", reason)

    def _photo_changed(self, owner: str, new_hash: str, here: bool = True) -> bool:
        """Keep *new_hash* as the owner's, and send its resources' presence again if it changed
        (*here*: the change was this node's, which tells the other nodes of a cluster)."""
        old_hash = self.hashes.get(owner)
        if owner in self.hashes or self.sessions.resources(owner):
            self.hashes[owner] = new_hash
        self._loaded(owner, new_hash)  # anything waiting for the old hash takes the new one
        if old_hash == new_hash:
            return False
        if here:
            self.changed(owner)
        self.resend_presence(owner)
        return True

    def changed_elsewhere(self, owner: str) -> None:
        """Another node of the cluster changed the owner's vCard photo: the hash this node puts in
        its own sessions' presence is read again, and their presence goes out again with it."""
        if owner not in self.hashes and owner not in self.loading:
            return  # nothing held here: a session that binds here reads it then
        read = self.store.run_read(partial(vcard_store.photo_hash, jid=owner))
        read.addCallbacks(lambda found: self._changed_to(owner, found or ""),
                          lambda reason: log.failure("vcard.hash_read_failed jid={jid}", reason, jid=owner))

    def _changed_to(self, owner: str, new_hash: str) -> None:
        if owner in self.hashes or self.sessions.local_resources(owner):  # (its sessions here may have ended)
            self._photo_changed(owner, new_hash, here=False)

    def replace_photo(self, owner: str, image: bytes | None, kind: str) -> Deferred[bool]:
        """Make *image* (None: none) the photo of the owner's vCard, keeping the rest of it, as
        XEP-0398 section 3.1 converts a PEP avatar. Fires with whether the vCard changed. The photo
        listeners are not told: the photo came from where they would send it."""
        new_hash = photo_hash(image) if image is not None else ""
        limit = self.max_bytes

        def change(current: vcard_store.StoredVCard | None) -> vcard_store.StoredVCard | None:
            """On the store's worker, between the read and the write of one transaction."""
            if (current.photo_hash if current is not None else "") == new_hash:
                return None
            card = parseXml(current.xml) if current is not None else domish.Element((NS_VCARD, "vCard"))
            card.children = [child for child in card.children if not (
                isinstance(child, domish.Element) and (child.uri, child.name) == (NS_VCARD, "PHOTO"))]
            if image is not None:
                photo = add_element(card, "PHOTO")
                if kind:
                    add_element(photo, "TYPE", content=kind)
                add_element(photo, "BINVAL", content=base64.b64encode(image).decode())
            xml = card.toXml()
            if len(xml.encode("utf-8")) > limit:
                raise StanzaError("not-acceptable", text=f"the vCard with this photo would be over {limit} bytes")
            return vcard_store.StoredVCard(xml, new_hash)

        def changed(stored: vcard_store.StoredVCard | None) -> bool:
            if stored is None:
                return False
            log.info("vcard.photo_converted jid={jid} photo={photo}", jid=owner, photo=bool(new_hash))
            self._photo_changed(owner, stored.photo_hash)
            return True

        return self.store.run(partial(vcard_store.change_vcard, jid=owner, change=change,
                                      now=self.seconds())).addCallback(changed)

    # -- the hash in presence (XEP-0153, XEP-0398 section 4) -----------------------------------

    def bound(self, session: ClientSession) -> None:
        """Read the account's photo hash while its first session starts (not per presence); with
        no vCard stored, a social login's display name becomes its first vCard."""
        if session.bare not in self.hashes:
            self._load(session.bare, session.login.display_name)

    def _load(self, owner: str, display_name: str | None) -> None:
        if owner in self.loading:
            return
        self.loading[owner] = []
        read = self.store.run_read(partial(vcard_store.photo_hash, jid=owner))
        read.addCallbacks(lambda found: self._found(owner, found, display_name),
                          lambda reason: self._not_found(owner, reason))

    def _found(self, owner: str, found: str | None, display_name: str | None) -> None:
        if found is None and display_name:
            self._first_vcard(owner, display_name)
        if owner not in self.hashes and self.sessions.resources(owner):
            self.hashes[owner] = found or ""
        self._loaded(owner, found or "")

    def _not_found(self, owner: str, reason: Failure) -> None:
        log.failure("vcard.hash_read_failed jid={jid}", reason, jid=owner)
        self._loaded(owner, None)  # presence goes on without a hash rather than not at all

    def _loaded(self, owner: str, hash_: str | None) -> None:
        for waiting in self.loading.pop(owner, ()):
            waiting(hash_)

    def _first_vcard(self, owner: str, display_name: str) -> None:
        name = display_name.strip()[:MAX_DISPLAY_NAME_CHARS]
        made = self.store.run(partial(vcard_store.put_first_vcard, jid=owner, xml=first_vcard(name),
                                      photo_hash="", now=self.seconds()))

        def stored(first: bool) -> None:
            log.info("vcard.from_site jid={jid} stored={stored}", jid=owner, stored=first)
            if first:
                for listener in self.name_listeners:
                    listener(owner, name)

        made.addCallback(stored).addErrback(lambda reason: log.failure("vcard.from_site_failed jid={jid}", reason,
                                                                       jid=owner))

    def update_for(self, hash_: str) -> domish.Element:
        update = self.updates.get(hash_)
        if update is None:
            if len(self.updates) >= MAX_SHARED_UPDATES:
                self.updates.clear()  # a bound on memory, not a cache policy: they are cheap to make
            update = self.updates[hash_] = update_element(hash_)
        return update

    def outgoing(self, session: ClientSession, presence: domish.Element) -> Deferred[object] | None:
        if presence.getAttribute("type") is not None:
            return None  # only available presence carries the hash (unavailable, subscriptions...)
        known = self.hashes.get(session.bare)
        if known is None:
            self._load(session.bare, None)
            known = self.hashes.get(session.bare)  # a read the store answered at once
        if known is not None:
            stamp(presence, self.update_for(known))
            return None
        waiting = self.loading.get(session.bare)
        if waiting is None:
            return None  # the read failed at once (logged): the presence goes on without a hash
        # The read is still on its way (PostgreSQL): the presence waits for it, then goes on.
        held: Deferred[object] = Deferred()

        def go_on(hash_: str | None) -> None:
            if self.sessions.session(session.jid) is not session:
                held.callback(None)  # the session ended meanwhile: its presence is no one's news
                return
            if hash_ is not None:
                stamp(presence, self.update_for(hash_))
            chain = self.presence_chain
            rest = chain[chain.index(self.outgoing) + 1:]
            try:
                held.callback(run(rest, session, presence))
            except Exception:
                held.errback()

        waiting.append(go_on)
        return held

    def resend_presence(self, owner: str) -> None:
        """Each available resource's presence again, with the new hash (see the module's doc).
        Only this node's: in a cluster, each node sends its own resources' (`changed_elsewhere`)."""
        for session in self.sessions.available(owner):
            if session.presence is None or session.remote:
                continue
            again = domish.Element((None, "presence"))
            again.attributes = {key: value for key, value in session.presence.attributes.items() if key != "to"}
            again.children = [child for child in session.presence.children
                              if not (isinstance(child, domish.Element)
                                      and (child.uri, child.name) == (NS_VCARD_UPDATE, "x"))]
            run(self.presence_chain, session, again)

    def unbound(self, session: ClientSession, replaced: bool) -> None:
        if not self.sessions.resources(session.bare):
            self.hashes.pop(session.bare, None)


def install(registry: FeatureRegistry) -> None:
    vcards = VCards(registry.sessions, registry.clock.seconds, registry.config.vcard.max_bytes)
    # A resync reads each hash held here again (one per account with a session here, or being
    # read): the hash changes in memory only once its write is done, so no read undoes it.
    vcards.changed = registry.shared_account_state("vcard", vcards.changed_elsewhere,
                                                   held=lambda: [*vcards.hashes, *vcards.loading])
    registry.account_iq(NS_VCARD, "vCard", vcards.answer)
    registry.hook(SESSION_BOUND, vcards.bound)
    registry.hook(SESSION_UNBOUND, vcards.unbound)
    registry.hook(PRESENCE_FROM_CLIENT, vcards.outgoing, priority=PRESENCE_PRIORITY)
    registry.disco_feature(NS_VCARD)  # XEP-0054 section 4
    registry.account_disco_feature(NS_VCARD)
    registry.stores("vcards", per_account=True, what="each account's vCard and its photo's hash")
    # PEP's in-process service (features.pep.pep_service), installed before this feature when it
    # is on; taken from the registry rather than imported, as importing PEP imports wokkel, which
    # must wait for the start-up's compatibility names (sns_xmpp/startup.py).
    pep = registry.services.get("pep")
    if pep is not None:
        conversion = AvatarConversion(pep, vcards.hashes.get, vcards.replace_photo, photo_hash)
        pep.on_publish(conversion.published)
        vcards.photo_listeners.append(conversion.vcard_photo)
        vcards.name_listeners.append(conversion.first_name)
        registry.account_disco_feature(NS_CONVERSION)  # XEP-0398 section 2


FEATURE = Feature("vcard", install)
