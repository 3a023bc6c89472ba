"""What OMEMO (XEP-0384, as clients deploy it: namespace ``eu.siacs.conversations.axolotl``) needs
of PEP (XEP-0163), shown with slixmpp's own plugins (xep_0060, xep_0163, xep_0115) between a
social user and a local user, and a stranger who shares no presence with either.

- A device list published without publish-options (Profanity, when the server's domain does not
  announce them) gets PEP's default access model, presence: a contact reads it, a stranger gets
  ``not-authorized`` with ``presence-subscription-required`` (XEP-0060 6.5.9); a bundle published
  with ``pubsub#access_model=open`` (Conversations, Dino, Gajim, and Profanity where announced) is
  read by anyone, so that a stranger can start a session.
- No list yet is ``item-not-found`` with the legacy ``code="404"`` (XEP-0086), which Profanity needs.
- Republishing the item ``current`` replaces it: one device list, never two.
- Publish-options that an existing node does not meet are refused with ``conflict`` and
  ``precondition-not-met`` (XEP-0060 7.1.5); Conversations then reconfigures the node (8.2) and
  publishes again, which must work.
- A submitted form's FORM_TYPE without type='hidden' (XEP-0068 1.3.0 allows it; Profanity's node
  configuration has it) still names the form: its publish-options and configuration are applied.
- A contact whose entity capabilities (XEP-0115) show ``devicelist+notify`` is told of each new
  list, and is sent the last one when it comes online (XEP-0163 4.3).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest_twisted
from slixmpp import ET
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0004 import Form

from tests.conftest import RunningServer
from tests.e2e.test_omemo_profanity import AXOLOTL, DEVICE_LIST, befriend
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
PUBSUB_ERRORS = f"{NS_PUBSUB}#errors"


def device_list(*devices: int) -> ET.Element:
    listed = ET.Element(f"{{{AXOLOTL}}}list")
    for device in devices:
        ET.SubElement(listed, f"{{{AXOLOTL}}}device", id=str(device))
    return listed


def bundle(device: int) -> ET.Element:
    """A bundle's shape (XEP-0384 0.3 section 4.3); the keys need not be real for the server."""
    made = ET.Element(f"{{{AXOLOTL}}}bundle")
    ET.SubElement(made, f"{{{AXOLOTL}}}signedPreKeyPublic", signedPreKeyId="1").text = "BXp7jwXYuwCax0Zz"
    ET.SubElement(made, f"{{{AXOLOTL}}}signedPreKeySignature").text = "IrpRof+SgSxKqy2k"
    ET.SubElement(made, f"{{{AXOLOTL}}}identityKey").text = "BWFheToj1uYmiNmI"
    prekeys = ET.SubElement(made, f"{{{AXOLOTL}}}prekeys")
    for n in range(100):
        ET.SubElement(prekeys, f"{{{AXOLOTL}}}preKeyPublic", preKeyId=str(device * 100 + n)).text = "BWNh5zUUTBqY"
    return made


def publish_options(**fields: str) -> Form:
    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
    for var, value in fields.items():
        form.add_field(var=f"pubsub#{var}", value=value)
    return form


def listed_devices(answer: Any) -> list[set[int]]:
    """Each item's device ids, in the order the items came."""
    return [{int(device.get("id")) for device in item["payload"]} for item in answer["pubsub"]["items"]]


async def refusal(request: Any) -> tuple[str, str, list[str]]:
    """The error type, condition and pubsub#errors conditions of a request that must fail."""
    try:
        await request
    except IqError as failure:
        error = failure.iq["error"]
        specific = [child.tag.split("}")[1] for child in error.xml if child.tag.startswith(f"{{{PUBSUB_ERRORS}}}")]
        return error["type"], error["condition"], specific
    raise AssertionError("the request succeeded")


async def pubsub_client(server: RunningServer, jid: str, password: str, **kwargs: Any) -> Client:
    client = Client(jid, password, **kwargs)
    for plugin in ("xep_0004", "xep_0060", "xep_0115", "xep_0163"):
        client.register_plugin(plugin)
    await wait(client.log_in(server.c2s_port, presence=False))
    return client


@pytest_twisted.ensureDeferred
async def test_device_lists_reach_contacts_bundles_reach_anyone_and_current_is_replaced(
        server_on_each_store: RunningServer) -> None:
    """On SQLite and on PostgreSQL: a bundle is the biggest item OMEMO keeps, and 'current' is
    replaced in place (each engine's own upsert)."""
    server = server_on_each_store
    credentials = await demo_credentials(server, "oona")
    social = credentials["jid"]
    await server.add_user("bob@localhost", "secret")
    await server.add_user("carol@localhost", "secret")
    await befriend(server.c2s_port, (social, credentials["password"]), ("bob@localhost", "secret"))
    oona = await pubsub_client(server, social, credentials["password"], mechanism="PLAIN")
    bob = await pubsub_client(server, "bob@localhost", "secret")
    carol = await pubsub_client(server, "carol@localhost", "secret")
    pubsub = oona.plugin["xep_0060"]

    # No list yet: item-not-found, with XEP-0086's legacy code 404, the one thing Profanity (0.13
    # and its master today) reads to tell "no list yet" from a failure: without it, it never
    # publishes its first device.
    try:
        await wait(bob.plugin["xep_0060"].get_items(social, DEVICE_LIST))
        raise AssertionError("a list that was never published")
    except IqError as failure:
        assert (failure.condition, failure.iq["error"].xml.get("code")) == ("item-not-found", "404")

    await wait(pubsub.publish(None, DEVICE_LIST, id="current", payload=device_list(1111)))
    await wait(pubsub.publish(None, f"{AXOLOTL}.bundles:1111", id="current", payload=bundle(1111),
                              options=publish_options(persist_items="true", access_model="open")))

    answer = await wait(bob.plugin["xep_0060"].get_items(social, DEVICE_LIST))
    assert listed_devices(answer) == [{1111}]
    assert await wait(refusal(carol.plugin["xep_0060"].get_items(social, DEVICE_LIST))) == (
        "auth", "not-authorized", ["presence-subscription-required"])
    answer = await wait(carol.plugin["xep_0060"].get_items(social, f"{AXOLOTL}.bundles:1111"))
    [item] = answer["pubsub"]["items"]
    assert item["id"] == "current" and len(item["payload"].find(f"{{{AXOLOTL}}}prekeys")) == 100

    # A second device joins: the item 'current' is replaced (max_items 1), not added to.
    await wait(pubsub.publish(None, DEVICE_LIST, id="current", payload=device_list(1111, 2222)))
    answer = await wait(bob.plugin["xep_0060"].get_items(social, DEVICE_LIST))
    assert listed_devices(answer) == [{1111, 2222}]
    for client in (oona, bob, carol):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_options_a_node_does_not_meet_are_refused_until_the_owner_reconfigures_it(server) -> None:
    """Conversations' way: publish with access_model=open; on precondition-not-met, fetch the
    node's configuration form, set access_model=open, submit it, and publish again."""
    credentials = await demo_credentials(server, "pia")
    social = credentials["jid"]
    await server.add_user("carol@localhost", "secret")
    pia = await pubsub_client(server, social, credentials["password"], mechanism="PLAIN")
    carol = await pubsub_client(server, "carol@localhost", "secret")
    pubsub = pia.plugin["xep_0060"]
    await wait(pubsub.publish(None, DEVICE_LIST, id="current", payload=device_list(7)))  # presence

    opened = publish_options(access_model="open")
    assert await wait(refusal(pubsub.publish(None, DEVICE_LIST, id="current", payload=device_list(7, 8),
                                             options=opened))) == ("cancel", "conflict", ["precondition-not-met"])
    configuration = await wait(pubsub.get_node_config(None, DEVICE_LIST))
    form = configuration["pubsub_owner"]["configure"]["form"]
    assert form["values"]["pubsub#access_model"] == "presence"
    submitted = Form()
    submitted["type"] = "submit"
    submitted.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#node_config")
    submitted.add_field(var="pubsub#access_model", value="open")
    await wait(pubsub.set_node_config(None, DEVICE_LIST, submitted))
    await wait(pubsub.publish(None, DEVICE_LIST, id="current", payload=device_list(7, 8), options=opened))
    answer = await wait(carol.plugin["xep_0060"].get_items(social, DEVICE_LIST))
    assert listed_devices(answer) == [{7, 8}]
    for client in (pia, carol):
        await wait(client.log_out())


@pytest_twisted.ensureDeferred
async def test_a_contact_with_devicelist_notify_gets_each_list_and_the_last_one_on_coming_online(server) -> None:
    credentials = await demo_credentials(server, "quill")
    social = credentials["jid"]
    await server.add_user("bob@localhost", "secret")
    await befriend(server.c2s_port, (social, credentials["password"]), ("bob@localhost", "secret"))
    quill = await pubsub_client(server, social, credentials["password"], mechanism="PLAIN")
    await wait(quill.plugin["xep_0060"].publish(None, DEVICE_LIST, id="current", payload=device_list(41)))

    async def interested(resource: str) -> tuple[Client, asyncio.Queue[Any]]:
        """bob's resource, its caps showing devicelist+notify (as every OMEMO client's do)."""
        bob = await pubsub_client(server, f"bob@localhost/{resource}", "secret")
        events: asyncio.Queue[Any] = asyncio.Queue()
        bob.add_event_handler("pubsub_publish", events.put_nowait)
        bob.plugin["xep_0030"].add_feature(f"{DEVICE_LIST}+notify")
        await wait(bob.plugin["xep_0115"].update_caps(broadcast=False))
        bob.send_presence()
        return bob, events

    async def next_list(events: asyncio.Queue[Any]) -> set[int]:
        while True:
            event = await events.get()
            if event["from"].bare == social and event["pubsub_event"]["items"]["node"] == DEVICE_LIST:
                return {int(device.get("id")) for device in event["pubsub_event"]["items"]["item"]["payload"]}

    phone, phone_events = await interested("phone")
    assert await wait(next_list(phone_events)) == {41}  # the last item, on coming online
    await wait(quill.plugin["xep_0060"].publish(None, DEVICE_LIST, id="current", payload=device_list(41, 42)))
    assert await wait(next_list(phone_events)) == {41, 42}  # the new list, as it is published
    laptop, laptop_events = await interested("laptop")
    assert await wait(next_list(laptop_events)) == {41, 42}
    for client in (quill, phone, laptop):
        await wait(client.log_out())


def typeless_form(form_type: str, **fields: str) -> Form:
    """A submitted form as XEP-0068 1.3.0 allows it: FORM_TYPE without type='hidden'."""
    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", value=form_type)
    for var, value in fields.items():
        form.add_field(var=f"pubsub#{var}", value=value)
    return form


@pytest_twisted.ensureDeferred
async def test_a_submitted_form_type_without_a_type_still_names_its_form(server) -> None:
    """XEP-0068 1.3.0: the FORM_TYPE of a submitted form may come without type='hidden' (Profanity's
    node configuration does). Publish-options and a node configuration sent so are applied: not
    ignored (a bundle left closed to strangers) nor refused as a missing form."""
    await server.add_user("carol@localhost", "secret")
    await server.add_user("dave@localhost", "secret")
    carol = await pubsub_client(server, "carol@localhost", "secret")
    dave = await pubsub_client(server, "dave@localhost", "secret")
    pubsub = carol.plugin["xep_0060"]
    await wait(pubsub.publish(None, DEVICE_LIST, id="current", payload=device_list(5),
                              options=typeless_form(f"{NS_PUBSUB}#publish-options", access_model="open")))
    answer = await wait(dave.plugin["xep_0060"].get_items("carol@localhost", DEVICE_LIST))
    assert listed_devices(answer) == [{5}]
    await wait(pubsub.set_node_config(None, DEVICE_LIST,
                                      typeless_form(f"{NS_PUBSUB}#node_config", access_model="presence")))
    assert await wait(refusal(dave.plugin["xep_0060"].get_items("carol@localhost", DEVICE_LIST))) == (
        "auth", "not-authorized", ["presence-subscription-required"])
    for client in (carol, dave):
        await wait(client.log_out())
