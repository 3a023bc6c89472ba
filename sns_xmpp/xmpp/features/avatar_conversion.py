"""XEP-0398: the vCard's photo (XEP-0153) and the PEP avatar (XEP-0084) kept in step, both ways,
and a social user's name from the site as their XEP-0172 nickname. Part of the vCard feature
(features/vcard.py installs it when PEP is on); it talks to PEP through PEP's in-process API
(xmpp/pubsub/service.py) only.

- From PEP to vCard (section 3.1): when the owner publishes to 'urn:xmpp:avatar:metadata', the
  first <info/> without a 'url' names the item of 'urn:xmpp:avatar:data' whose image becomes the
  vCard's PHOTO, its 'type' the PHOTO's TYPE; an image whose SHA-1 is not the id it was published
  under is refused (the SHOULD of the same section). Empty metadata (XEP-0084 section 3.5,
  publishing disabled) takes the photo out.
- From vCard to PEP (section 3.2): a vCard set with a new photo publishes the image to the data
  node, then one <info/> for it to the metadata node, each under the image's SHA-1, as the owner
  (PEP notifies the subscribers); a vCard set without one, when there was one, publishes empty
  metadata. The vCard set's answer waits for both.
- Each side's change reaches the other once: a metadata item whose id is the vCard's photo hash
  already (this conversion's own publish among them) changes nothing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.xmpp.stanzas import add_element

if TYPE_CHECKING:  # importing PEP's service imports wokkel, which waits for the start-up's compat names
    from sns_xmpp.xmpp.pubsub.service import PEPItem, PEPService

log = GatedLogger()

NS_AVATAR_DATA = "urn:xmpp:avatar:data"
NS_AVATAR_METADATA = "urn:xmpp:avatar:metadata"
NS_NICK = "http://jabber.org/protocol/nick"
NS_CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
# XEP-0084's <info/> must have a 'type'; a vCard PHOTO may lack a TYPE: the image's own
# first bytes then tell the common ones.
MAGIC_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))

ReplacePhoto = Callable[[str, "bytes | None", str], Deferred[bool]]
"""(owner, image or None, type) -> whether the vCard changed (VCards.replace_photo)."""


def image_type(image: bytes, declared: str) -> str:
    if declared:
        return declared
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in MAGIC_TYPES if image.startswith(magic)), "application/octet-stream")


def metadata_of(avatar_id: str, image: bytes, kind: str) -> domish.Element:
    """XEP-0084's metadata for one image (section 3.2)."""
    metadata = domish.Element((NS_AVATAR_METADATA, "metadata"))
    info = add_element(metadata, "info")
    info["id"], info["bytes"], info["type"] = avatar_id, str(len(image)), image_type(image, kind)
    return metadata


class AvatarConversion:
    def __init__(self, pep: PEPService, known_hash: Callable[[str], str | None], replace_photo: ReplacePhoto,
                 photo_hash: Callable[[bytes], str]) -> None:
        self.pep = pep
        self.known_hash = known_hash  # the owner's vCard photo hash, when its sessions here know it
        self.replace_photo = replace_photo
        self.photo_hash = photo_hash

    # -- from PEP to vCard (section 3.1) -----------------------------------------------------------

    def published(self, owner: str, node: str, item: PEPItem) -> None:
        """PEP's listener, called after every publish: only avatar metadata concerns it."""
        metadata = item.payload
        if node != NS_AVATAR_METADATA or metadata is None or (metadata.uri, metadata.name) != (
                NS_AVATAR_METADATA, "metadata"):
            return
        infos = list(metadata.elements(NS_AVATAR_METADATA, "info"))
        if not infos:
            self._converted(self.replace_photo(owner, None, ""), owner)
            return
        inline = [info for info in infos if not info.getAttribute("url")]
        if not inline:
            return  # only images elsewhere (section 3.1: the vCard takes an image we hold)
        avatar_id, kind = inline[0].getAttribute("id", ""), inline[0].getAttribute("type", "")
        if not avatar_id or self.known_hash(owner) == avatar_id:
            return
        found = self.pep.items(owner, NS_AVATAR_DATA, ids=[avatar_id])
        self._converted(found.addCallback(self._data_found, owner, avatar_id, kind), owner)

    def _data_found(self, items: list[PEPItem], owner: str, avatar_id: str, kind: str) -> Deferred[bool] | bool:
        data = items[0].payload if items else None
        if data is None or (data.uri, data.name) != (NS_AVATAR_DATA, "data"):
            log.warn("vcard.avatar_data_missing jid={jid}", jid=owner)
            return False
        try:
            image = base64.b64decode("".join(str(data).split()), validate=True)
        except (binascii.Error, ValueError):
            log.warn("vcard.avatar_data_not_base64 jid={jid}", jid=owner)
            return False
        if self.photo_hash(image) != avatar_id:
            log.warn("vcard.avatar_hash_mismatch jid={jid}", jid=owner)
            return False
        return self.replace_photo(owner, image, kind)

    def _converted(self, done: Deferred[bool], owner: str) -> None:
        def failed(reason: Failure) -> None:
            if isinstance(reason.value, StanzaError):  # no data item (item-not-found), a vCard too big...
                log.warn("vcard.avatar_not_converted jid={jid} reason={reason}", jid=owner,
                         reason=reason.value.condition)
            else:
                log.failure("vcard.avatar_conversion_failed jid={jid}", reason, jid=owner)

        done.addErrback(failed)

    # -- from vCard to PEP (section 3.2) -----------------------------------------------------------

    def vcard_photo(self, owner: str, image: bytes | None, kind: str) -> Deferred[str]:
        """The vCard feature's photo listener: the new photo (None: none) as the PEP avatar."""
        if image is None:
            return self.pep.publish(owner, NS_AVATAR_METADATA, domish.Element((NS_AVATAR_METADATA, "metadata")))
        avatar_id = self.photo_hash(image)
        data = domish.Element((NS_AVATAR_DATA, "data"))
        data.addContent(base64.b64encode(image).decode())
        published = self.pep.publish(owner, NS_AVATAR_DATA, data, item_id=avatar_id)
        return published.addCallback(lambda _: self.pep.publish(
            owner, NS_AVATAR_METADATA, metadata_of(avatar_id, image, kind), item_id=avatar_id))

    # -- the site's name as the nickname (XEP-0172, published in PEP) ------------------------------

    def first_name(self, owner: str, name: str) -> None:
        """The vCard feature's name listener: the name that made the first vCard, as the nick."""
        nick = domish.Element((NS_NICK, "nick"))
        nick.addContent(name)
        self.pep.publish(owner, NS_NICK, nick).addErrback(
            lambda reason: log.failure("vcard.nick_publish_failed jid={jid}", reason, jid=owner))
