"""vcard-temp (XEP-0054), avatar hashes in presence (XEP-0153) and the vCard/PEP avatar conversion
(XEP-0398) with slixmpp's own plugins against the daemon, between a social user of the demo site
and a local user."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from sns_xmpp.store import vcard as vcard_store
from tests.clients import Terminal
from tests.conftest import DEMO_SITE, make_config
from tests.e2e.test_local_im import _need_profanity, profanity, profanity_account, until
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

# Not real pictures: the server hashes and moves bytes, it never decodes an image.
PNG = b"\x89PNG\r\n\x1a\n" + b"rosa's avatar, a PNG as far as the server cares" * 20
JPEG = b"\xff\xd8\xff\xe0" + b"her next one, published with XEP-0084" * 20


async def photo_hash_from(client: Client, sender: str) -> str | None:
    """The XEP-0153 <photo/> of the next available presence from *sender* ('' for an empty one,
    which slixmpp's plugin reads as None), None without one."""
    while True:
        presence = await client.presences.get()
        if presence["from"].bare == sender and presence["type"] != "unavailable":
            photo = presence.xml.find("{vcard-temp:x:update}x/{vcard-temp:x:update}photo")
            return None if photo is None else photo.text or ""


async def avatar_update_from(client: Client, sender: str) -> str:
    """The hash slixmpp's XEP-0153 plugin reports next for *sender* (its 'vcard_avatar_update')."""
    while True:
        presence = await client.avatar_updates.get()  # type: ignore[attr-defined]
        if presence["from"].bare == sender:
            return str(presence["vcard_temp_update"]["photo"])


@pytest_twisted.ensureDeferred
async def test_a_social_users_name_vcard_and_avatar_reach_a_local_contact_and_survive_a_restart(
        start_server: Any, store_config: str, tmp_path: Path) -> None:
    """The demo site's account name (all an hmac site says of the person) is the social user's
    vCard FN after the first login, for her and for a contact, and her XEP-0172 nickname. Her
    vCard photo, set with XEP-0054 alone (her client adds no hash), reaches the contact as the
    XEP-0153 hash in her presence, which the server adds, and as her XEP-0084 avatar in PEP; an
    XEP-0084 avatar she publishes then becomes her vCard photo, with its hash in presence. After
    a restart the vCard is there. On SQLite and on PostgreSQL."""
    config = make_config(tmp_path, DEMO_SITE + store_config)
    server = await start_server(config)
    credentials = await demo_credentials(server, "rosa")
    rosa_jid = credentials["jid"]
    await server.add_user("bob@localhost", "secret")
    rosa = Client(rosa_jid, credentials["password"], mechanism="PLAIN")
    for plugin in ("xep_0054", "xep_0084"):
        rosa.register_plugin(plugin)
    bob = Client("bob@localhost", "secret")
    for plugin in ("xep_0054", "xep_0084", "xep_0153"):
        bob.register_plugin(plugin)
    bob.avatar_updates = asyncio.Queue()  # type: ignore[attr-defined]
    bob.add_event_handler("vcard_avatar_update", bob.avatar_updates.put_nowait)  # type: ignore[attr-defined]
    await wait(rosa.log_in(server.c2s_port))
    await wait(bob.log_in(server.c2s_port))

    own = await wait(rosa.plugin["xep_0054"].get_vcard(rosa_jid))
    assert own["vcard_temp"]["FN"] == "rosa"
    seen_by_bob = await wait(bob.plugin["xep_0054"].get_vcard(rosa_jid))
    assert seen_by_bob["vcard_temp"]["FN"] == "rosa" and seen_by_bob["from"].bare == rosa_jid
    features = (await wait(rosa.plugin["xep_0030"].get_info(jid=rosa_jid)))["disco_info"]["features"]
    assert {"vcard-temp", "urn:xmpp:pep-vcard-conversion:0"} <= set(features)

    bob.send_presence(pto=rosa_jid, ptype="subscribe")
    await wait(rosa.subscription_requests.get())
    rosa.send_presence(pto="bob@localhost", ptype="subscribed")
    rosa.send_presence(pto="bob@localhost", ptype="subscribe")
    await wait(bob.subscription_requests.get())
    bob.send_presence(pto=rosa_jid, ptype="subscribed")
    assert await wait(photo_hash_from(bob, rosa_jid)) == ""  # her presence after the subscription: no photo yet
    nick = await wait(bob.plugin["xep_0060"].get_items(rosa_jid, "http://jabber.org/protocol/nick"))
    assert nick.xml.findtext(".//{http://jabber.org/protocol/nick}nick") == "rosa"  # XEP-0172, in her PEP

    card = own["vcard_temp"]
    card["PHOTO"]["TYPE"] = "image/png"
    card["PHOTO"]["BINVAL"] = PNG
    await wait(rosa.plugin["xep_0054"].publish_vcard(card))
    png_hash = hashlib.sha1(PNG).hexdigest()
    assert await wait(photo_hash_from(bob, rosa_jid)) == png_hash
    assert await wait(avatar_update_from(bob, rosa_jid)) == png_hash
    avatar = await wait(bob.plugin["xep_0084"].retrieve_avatar(rosa_jid, png_hash))
    assert avatar["pubsub"]["items"]["item"]["avatar_data"]["value"] == PNG
    metadata = await wait(bob.plugin["xep_0060"].get_items(rosa_jid, "urn:xmpp:avatar:metadata"))
    [info] = metadata.xml.findall(".//{urn:xmpp:avatar:metadata}metadata/{urn:xmpp:avatar:metadata}info")
    assert (info.get("id"), info.get("type"), info.get("bytes")) == (png_hash, "image/png", str(len(PNG)))

    jpeg_hash = hashlib.sha1(JPEG).hexdigest()
    await wait(rosa.plugin["xep_0084"].publish_avatar(JPEG))
    await wait(rosa.plugin["xep_0084"].publish_avatar_metadata(
        {"id": jpeg_hash, "type": "image/jpeg", "bytes": len(JPEG)}))
    assert await wait(photo_hash_from(bob, rosa_jid)) == jpeg_hash
    assert await wait(avatar_update_from(bob, rosa_jid)) == jpeg_hash
    converted = (await wait(bob.plugin["xep_0054"].get_vcard(rosa_jid)))["vcard_temp"]
    assert (converted["FN"], converted["PHOTO"]["TYPE"], converted["PHOTO"]["BINVAL"]) == ("rosa", "image/jpeg", JPEG)
    for client in (rosa, bob):
        await wait(client.log_out())

    await start_server.stop(server)
    server = await start_server(make_config(tmp_path, DEMO_SITE + store_config))
    bob = Client("bob@localhost", "secret")
    bob.register_plugin("xep_0054")
    await wait(bob.log_in(server.c2s_port))
    kept = (await wait(bob.plugin["xep_0054"].get_vcard(rosa_jid)))["vcard_temp"]
    assert (kept["FN"], kept["PHOTO"]["BINVAL"]) == ("rosa", JPEG)
    await wait(bob.log_out())


def png(width: int = 16, height: int = 16) -> bytes:
    """A real PNG (Profanity decodes and scales the picture before it publishes it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in (x * 16 % 256, y * 16 % 256, 128))
                    for y in range(height))  # each row: filter 0, then RGB pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_profanity_gets_a_vcard_photo_as_an_avatar_and_its_avatar_becomes_a_vcard_photo(
        server: Any, tmp_path: Path) -> None:
    """XEP-0398 both ways with a client from another stack (Profanity 0.13: C, libstrophe; it has
    XEP-0084 avatars but no vCard commands), as the local user: the photo the social user set in
    her vCard (slixmpp's xep_0054 alone) is what Profanity's /avatar get fetches from her PEP
    avatar; the avatar Profanity publishes with /avatar set is what the social user's slixmpp
    finds as the local user's vCard photo, under the hash Profanity published it with."""
    _need_profanity()
    credentials = await demo_credentials(server, "rosa")
    rosa_jid = credentials["jid"]
    await server.add_user("bob@localhost", "secret")
    rosa = Client(rosa_jid, credentials["password"], mechanism="PLAIN")
    for plugin in ("xep_0054", "xep_0060"):
        rosa.register_plugin(plugin)
    bob = Client("bob@localhost", "secret")
    for client in (rosa, bob):
        await wait(client.log_in(server.c2s_port))
    for asking, answering in ((bob, rosa), (rosa, bob)):  # PEP's default access: contacts only
        asking.send_presence(pto=answering.boundjid.bare, ptype="subscribe")
        await wait(answering.subscription_requests.get())
        answering.send_presence(pto=asking.boundjid.bare, ptype="subscribed")
    await wait(bob.plugin["xep_0199"].ping(jid="localhost"))
    await wait(bob.log_out())
    own = (await wait(rosa.plugin["xep_0054"].get_vcard(rosa_jid)))["vcard_temp"]
    own["PHOTO"]["TYPE"] = "image/png"
    rosas_photo = png(8, 8)
    own["PHOTO"]["BINVAL"] = rosas_photo
    await wait(rosa.plugin["xep_0054"].publish_vcard(own))
    picture = tmp_path / "avatar.png"
    picture.write_bytes(png())
    home = tmp_path / "bob"
    home.mkdir()
    terminal = Terminal(home / "tmux.sock")
    with profanity(home, "bob@localhost", profanity_account("bob@localhost", server.c2s_port)):
        await until(lambda: bool(server.sessions.available("bob@localhost")))
        terminal.type(f"/avatar get {rosa_jid}")
        saved = home / "data" / "profanity" / "avatars" / f"{rosa_jid.replace('@', '_at_')}.png"
        await until(saved.exists)  # Profanity fetches the data once her metadata reaches it
        await until(lambda: saved.read_bytes() == rosas_photo)
        terminal.type(f"/avatar set {picture}")
        photos: list[str | None] = [None]

        def converted() -> bool:  # Profanity's publish is no event here: the store is polled
            server.store.run_read(partial(vcard_store.photo_hash, jid="bob@localhost")).addCallback(
                lambda found: photos.__setitem__(0, found))
            return bool(photos[0])

        await until(converted)
    metadata = await wait(rosa.plugin["xep_0060"].get_items("bob@localhost", "urn:xmpp:avatar:metadata"))
    [info] = metadata.xml.findall(".//{urn:xmpp:avatar:metadata}metadata/{urn:xmpp:avatar:metadata}info")
    card = (await wait(rosa.plugin["xep_0054"].get_vcard("bob@localhost")))["vcard_temp"]
    image = card["PHOTO"]["BINVAL"]
    assert hashlib.sha1(image).hexdigest() == info.get("id") == photos[0]
    # The type as the metadata said it (Profanity 0.13 writes 'img/png'): XEP-0398 takes it as given.
    assert image.startswith(b"\x89PNG") and card["PHOTO"]["TYPE"] == info.get("type")
    await wait(rosa.log_out())
