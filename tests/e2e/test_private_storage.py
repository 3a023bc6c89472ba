"""Private XML storage (XEP-0049), and XEP-0048 bookmarks kept in it, against the daemon with
slixmpp's own xep_0049 and xep_0048 plugins, between a social user (the demo site's) and a local
user: each reads only their own, a reserved namespace is refused, and the data survive a restart."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest_twisted
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0048.stanza import Bookmarks
from slixmpp.plugins.xep_0049.stanza import PrivateXML
from slixmpp.xmlstream import ElementBase, register_stanza_plugin

from tests.conftest import DEMO_SITE, make_config
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait


class Exodus(ElementBase):
    """The XEP's own example fragment: <exodus xmlns='exodus:prefs'><defaultnick/></exodus>."""

    name = "exodus"
    namespace = "exodus:prefs"
    plugin_attrib = "exodus"
    interfaces = {"defaultnick"}
    sub_interfaces = interfaces


def private_client(jid: str, password: str) -> Client:
    client = Client(jid, password, mechanism="PLAIN")
    client.register_plugin("xep_0049")
    client.register_plugin("xep_0048")
    client.plugin["xep_0049"].register(Exodus)
    register_stanza_plugin(PrivateXML, Bookmarks)
    return client


@pytest_twisted.ensureDeferred
async def test_private_data_and_bookmarks_are_the_owners_and_survive_a_restart(start_server, tmp_path: Path) -> None:
    """XEP-0049 with slixmpp's xep_0049 and xep_0048 (which keeps bookmarks in private storage):
    the social user rosa stores the XEP's example fragment and her bookmarks, the local user bob
    his own fragment of the same namespace; bob asking for rosa's data hears forbidden; a reserved
    namespace is refused (not-acceptable); after the server restarts, each reads their own."""
    config = make_config(tmp_path, DEMO_SITE)
    first = await start_server(config)
    credentials = await demo_credentials(first, "rosa")
    rosa_jid = credentials["jid"]
    await first.add_user("bob@localhost", "secret")
    rosa = private_client(f"{rosa_jid}/phone", credentials["password"])
    bob = private_client("bob@localhost/desk", "secret")
    for client in (rosa, bob):
        await wait(client.log_in(first.c2s_port))

    prefs = Exodus()
    prefs["defaultnick"] = "Hamlet"
    await wait(rosa.plugin["xep_0049"].store(prefs))
    bookmarks = Bookmarks()
    bookmarks.add_conference("council@conference.localhost", "rosa", name="The council", autojoin=True)
    await wait(rosa.plugin["xep_0048"].set_bookmarks(bookmarks))
    mine = Exodus()
    mine["defaultnick"] = "Bob"
    await wait(bob.plugin["xep_0049"].store(mine))

    prying = bob.make_iq_get(ito=rosa_jid)  # xep_0049's retrieve, addressed to rosa
    prying["private"].enable("exodus")
    try:
        await wait(prying.send())
        raise AssertionError("bob read rosa's private data")
    except IqError as refused:
        assert refused.iq["error"]["condition"] == "forbidden"
    vcard = ET.Element("{vcard-temp}vCard")
    ET.SubElement(vcard, "{vcard-temp}FN").text = "Hamlet"
    try:
        await wait(rosa.plugin["xep_0049"].store(ElementBase(vcard)))
        raise AssertionError("a reserved namespace was stored")
    except IqError as refused:
        assert refused.iq["error"]["condition"] == "not-acceptable"
    for client in (rosa, bob):
        await wait(client.log_out())
    await start_server.stop(first)

    second = await start_server(config)
    rosa = private_client(f"{rosa_jid}/tablet", credentials["password"])
    bob = private_client("bob@localhost/desk", "secret")
    for client in (rosa, bob):
        await wait(client.log_in(second.c2s_port))
    kept = await wait(rosa.plugin["xep_0049"].retrieve("exodus"))
    assert kept["private"]["exodus"]["defaultnick"] == "Hamlet"
    marks = await wait(rosa.plugin["xep_0048"].get_bookmarks())
    [conference] = marks["private"]["bookmarks"]["conferences"]
    assert conference["jid"] == "council@conference.localhost" and conference["nick"] == "rosa"
    assert conference["autojoin"] is True and conference["name"] == "The council"
    assert (await wait(bob.plugin["xep_0049"].retrieve("exodus")))["private"]["exodus"]["defaultnick"] == "Bob"
    for client in (rosa, bob):
        await wait(client.log_out())
