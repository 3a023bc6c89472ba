"""Personal eventing (XEP-0163) with slixmpp's own plugins (xep_0030, 0060, 0115, 0163, 0084, 0172,
0223, 0402) against the daemon, between a social user and a local user who are each other's
contacts: the account's disco identities, notifications by +notify from verified caps, the last
item on presence, whitelist nodes kept private, publish-options preconditions, and the data
surviving a restart."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest_twisted
from slixmpp.exceptions import IqError
from slixmpp.jid import JID
from slixmpp.xmlstream import ET, ElementBase

from sns_xmpp.service import FeatureStop
from sns_xmpp.xmpp.features.caps import entity_caps
from tests.conftest import DEMO_SITE, make_config
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

PLUGINS = ("xep_0004", "xep_0060", "xep_0115", "xep_0163", "xep_0084", "xep_0172", "xep_0223", "xep_0402")
ERRORS = "http://jabber.org/protocol/pubsub#errors"
BOOKMARKS = "urn:xmpp:bookmarks:1"
PRIVATE = "urn:example:private-notes"
STATUS = "urn:example:status"
# A small PNG's worth of bytes: XEP-0084's data node holds it as base64.
PICTURE = bytes(range(256)) * 40


async def pep_client(server: Any, jid: str, password: str, mechanism: str | None = None) -> Client:
    """A logged-in client with the PEP plugins and a queue of the PEP events it hears."""
    client = Client(jid, password, mechanism=mechanism)
    for plugin in PLUGINS:
        client.register_plugin(plugin)
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    client.pep_events = events  # type: ignore[attr-defined]
    for name in ("user_nick_publish", "avatar_metadata_publish"):
        client.add_event_handler(name, lambda message, name=name: events.put_nowait((name, message)))
    await wait(client.log_in(server.c2s_port))
    return client


async def befriend(one: Client, other: Client) -> None:
    """Mutual presence subscription (RFC 6121 3.1): PEP's default access model is presence."""
    for asking, answering in ((one, other), (other, one)):
        asking.send_presence(pto=answering.boundjid.bare, ptype="subscribe")
        request = await wait(answering.subscription_requests.get())
        assert request["from"].bare == asking.boundjid.bare
        answering.send_presence(pto=asking.boundjid.bare, ptype="subscribed")

    async def presence_from(client: Client, bare: str) -> None:
        while True:
            presence = await client.presences.get()
            if presence["from"].bare == bare and presence["type"] != "unavailable":
                return

    await wait(presence_from(one, other.boundjid.bare))  # the subscriptions hold: presence flows
    await wait(presence_from(other, one.boundjid.bare))


async def next_event(client: Client, name: str, publisher: str, item_id: str | None = None,
                     nick: str | None = None) -> Any:
    """The next PEP event *name* from *publisher* (with that item id, or that nick); others are
    passed over: the last items sent on presence, and the nickname the vCard feature publishes
    from the site's name at a social user's first login, which may come before or after."""
    async def find() -> Any:
        while True:
            kind, message = await client.pep_events.get()  # type: ignore[attr-defined]
            item = message["pubsub_event"]["items"]["item"]
            if kind == name and message["from"].bare == publisher and item_id in (None, item["id"]) \
                    and nick in (None, item["nick"]["nick"] if kind == "user_nick_publish" else None):
                return message
    return await wait(find())


def publish_options(client: Client, **fields: str) -> Any:
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
    for name, value in fields.items():
        form.add_field(var=f"pubsub#{name}", value=value)
    return form


class Notes(ElementBase):
    """A private payload for XEP-0223's store (slixmpp publishes an ElementBase)."""

    namespace = PRIVATE
    name = "notes"
    plugin_attrib = "notes"


def pubsub_condition(error: IqError) -> str | None:
    found = error.iq.xml.find(f"{{jabber:client}}error/{{{ERRORS}}}*")
    return found.tag.split("}")[1] if found is not None else None


def conference(name: str) -> ET.Element:
    element = ET.Element(f"{{{BOOKMARKS}}}conference", {"name": name, "autojoin": "true"})
    ET.SubElement(element, f"{{{BOOKMARKS}}}nick").text = "rosa"
    return element


BOOKMARK_OPTIONS = {"access_model": "whitelist", "persist_items": "true", "max_items": "max",
                    "send_last_published_item": "never"}


@pytest_twisted.ensureDeferred
async def test_pep_between_a_social_user_and_a_local_contact(server) -> None:
    """rosa (a demo-site user) and bob (local) are contacts. bob sees rosa's bare JID as
    account/registered and pubsub/pep; rosa's nickname (XEP-0172) and avatar (XEP-0084) reach bob
    through +notify; her private notes (XEP-0223) and bookmarks (XEP-0402, whitelist) are
    neither readable nor listed for bob; publish-options that do not match are
    precondition-not-met; and bob, logging in again, gets the last avatar on his presence."""
    credentials = await demo_credentials(server, "rosa")
    await server.add_user("bob@localhost", "secret")
    rosa = await pep_client(server, credentials["jid"], credentials["password"], mechanism="PLAIN")
    bob = await pep_client(server, "bob@localhost", "secret")
    await befriend(rosa, bob)
    rosa_jid = rosa.boundjid.bare

    info = await wait(bob.plugin["xep_0030"].get_info(jid=JID(rosa_jid)))
    identities = {(category, kind) for category, kind, _lang, _name in info["disco_info"]["identities"]}
    assert {("account", "registered"), ("pubsub", "pep")} <= identities
    assert "http://jabber.org/protocol/pubsub#publish-options" in info["disco_info"]["features"]

    await wait(rosa.plugin["xep_0172"].publish_nick("Rosa from the demo site"))
    await next_event(bob, "user_nick_publish", rosa_jid, nick="Rosa from the demo site")
    caps = entity_caps(next(s.registry for s in server.server.top if isinstance(s, FeatureStop)))
    assert caps is not None
    bobs_features = caps.seen(rosa_jid)[bob.boundjid.full]
    assert "http://jabber.org/protocol/nick+notify" in bobs_features
    assert bobs_features in caps.cache.values()  # slixmpp's own ver verified, so cached

    avatar_id = hashlib.sha1(PICTURE).hexdigest()  # noqa: S324 (XEP-0084's id)
    await wait(rosa.plugin["xep_0084"].publish_avatar(PICTURE))
    await wait(rosa.plugin["xep_0084"].publish_avatar_metadata(
        [{"id": avatar_id, "type": "image/png", "bytes": len(PICTURE)}]))
    await next_event(bob, "avatar_metadata_publish", rosa_jid, item_id=avatar_id)
    data = await wait(bob.plugin["xep_0084"].retrieve_avatar(JID(rosa_jid), avatar_id))
    assert data["pubsub"]["items"]["item"]["avatar_data"]["value"] == PICTURE

    note = Notes()
    note.xml.text = "not for bob"
    await wait(rosa.plugin["xep_0223"].store(note, node=PRIVATE, id="current"))  # whitelist, persistent
    mine = await wait(rosa.plugin["xep_0223"].retrieve(PRIVATE, id="current"))
    assert mine["pubsub"]["items"]["item"]["payload"].text == "not for bob"
    await wait(rosa.plugin["xep_0060"].publish(None, BOOKMARKS, id="room@muc.localhost", payload=conference("Room"),
                                               options=publish_options(rosa, **BOOKMARK_OPTIONS)))
    for node in (PRIVATE, BOOKMARKS):
        try:
            await wait(bob.plugin["xep_0060"].get_items(jid=rosa_jid, node=node))
        except IqError as refused:
            assert (refused.condition, pubsub_condition(refused)) == ("not-allowed", "closed-node")
        else:
            raise AssertionError(f"bob read rosa's whitelist node {node}")
    seen_by_bob = await wait(bob.plugin["xep_0030"].get_items(jid=JID(rosa_jid)))
    seen_by_rosa = await wait(rosa.plugin["xep_0030"].get_items(jid=JID(rosa_jid)))
    bobs = {node for _jid, node, _name in seen_by_bob["disco_items"]["items"]}
    rosas = {node for _jid, node, _name in seen_by_rosa["disco_items"]["items"]}
    assert {"http://jabber.org/protocol/nick", "urn:xmpp:avatar:metadata"} <= bobs and not bobs & {PRIVATE, BOOKMARKS}
    assert {PRIVATE, BOOKMARKS} <= rosas
    own = await wait(rosa.plugin["xep_0060"].get_items(jid=rosa_jid, node=BOOKMARKS))
    assert [item["id"] for item in own["pubsub"]["items"]] == ["room@muc.localhost"]

    try:
        await wait(rosa.plugin["xep_0060"].publish(None, BOOKMARKS, id="other@muc.localhost",
                                                   payload=conference("Other"),
                                                   options=publish_options(rosa, access_model="open")))
    except IqError as refused:
        assert (refused.condition, pubsub_condition(refused)) == ("conflict", "precondition-not-met")
    else:
        raise AssertionError("publish-options that the node does not meet were accepted")

    await wait(bob.log_out())
    bob = await pep_client(server, "bob@localhost", "secret")
    # Nobody publishes now: the last avatar comes on bob's presence. (Not the nick: the vCard
    # feature's own, from the site's name, may be the last one.)
    await next_event(bob, "avatar_metadata_publish", rosa_jid, item_id=avatar_id)
    for client in (rosa, bob):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_pep_data_survive_a_restart(start_server: Any, store_config: str, tmp_path: Path) -> None:
    """persist_items, on SQLite and PostgreSQL: an item rosa published with PEP's defaults and her
    whitelist bookmarks, published before the daemon stops, are there after it starts again, for
    bob (the first, by presence access) and for rosa (the bookmarks)."""
    config = make_config(tmp_path, DEMO_SITE + store_config)
    server = await start_server(config)
    credentials = await demo_credentials(server, "rosa")
    await server.add_user("bob@localhost", "secret")
    rosa = await pep_client(server, credentials["jid"], credentials["password"], mechanism="PLAIN")
    bob = await pep_client(server, "bob@localhost", "secret")
    await befriend(rosa, bob)
    rosa_jid = rosa.boundjid.bare
    status = ET.Element(f"{{{STATUS}}}status")
    status.text = "before the restart"
    await wait(rosa.plugin["xep_0060"].publish(None, STATUS, id="current", payload=status))
    await wait(rosa.plugin["xep_0060"].publish(None, BOOKMARKS, id="room@muc.localhost", payload=conference("Room"),
                                               options=publish_options(rosa, **BOOKMARK_OPTIONS)))
    for client in (rosa, bob):
        await wait(client.log_out())
    await start_server.stop(server)

    server = await start_server(config)
    bob = await pep_client(server, "bob@localhost", "secret")
    kept = await wait(bob.plugin["xep_0060"].get_items(jid=rosa_jid, node=STATUS))
    assert [item["payload"].text for item in kept["pubsub"]["items"]] == ["before the restart"]
    rosa = await pep_client(server, credentials["jid"], credentials["password"], mechanism="PLAIN")
    bookmarks = await wait(rosa.plugin["xep_0060"].get_items(jid=rosa_jid, node=BOOKMARKS))
    assert [(item["id"], item["conference"]["name"]) for item in bookmarks["pubsub"]["items"]] == [
        ("room@muc.localhost", "Room")]
    for client in (rosa, bob):
        await wait(client.log_out())
