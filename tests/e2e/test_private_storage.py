"""Private XML storage (XEP-0049), and XEP-0048 bookmarks kept in it, against the daemon with
slixmpp's own xep_0049 and xep_0048 plugins, between a social user (the demo site's) and a local
user: each reads only their own, a reserved namespace is refused, and the data survive a restart."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path

import pytest
import pytest_twisted
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0048.stanza import Bookmarks
from slixmpp.plugins.xep_0049.stanza import PrivateXML
from slixmpp.xmlstream import ElementBase, register_stanza_plugin

from sns_xmpp.store.private_storage import fragment
from tests.clients import Terminal
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
async def test_private_data_and_bookmarks_are_the_owners_and_survive_a_restart(start_server, store_config: str,
                                                                                tmp_path: Path) -> None:
    """XEP-0049 with slixmpp's xep_0049 and xep_0048 (which keeps bookmarks in private storage):
    the social user rosa stores the XEP's example fragment and her bookmarks, the local user bob
    his own fragment of the same namespace; bob asking for rosa's data hears forbidden; a reserved
    namespace is refused (not-acceptable); after the server restarts, each reads their own."""
    config = make_config(tmp_path, DEMO_SITE + store_config)  # SQLite, then PostgreSQL
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


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_profanity_reads_and_writes_its_bookmarks_in_private_storage(server, tmp_path: Path) -> None:
    """A client from another stack: Profanity (C, libstrophe), whose bookmarks are XEP-0048's in
    private storage (jabber:iq:private, storage:bookmarks), logged in as the social user rosa.
    The bookmark her slixmpp resource stored is in Profanity's '/bookmark list' (Profanity's get),
    and the one added in Profanity is in the server's store beside it (Profanity's set, the whole
    list at once)."""
    from tests.e2e.test_local_im import profanity, until
    from tests.e2e.test_omemo_profanity import accounts_file

    credentials = await demo_credentials(server, "rosa")
    rosa_jid = credentials["jid"]
    phone = private_client(f"{rosa_jid}/phone", credentials["password"])
    await wait(phone.log_in(server.c2s_port))
    bookmarks = Bookmarks()
    bookmarks.add_conference("council@conference.localhost", "rosa", name="The council", autojoin=False)
    await wait(phone.plugin["xep_0048"].set_bookmarks(bookmarks))
    await wait(phone.log_out())

    seen = [""]

    def kept() -> str:
        """Rosa's bookmarks in the store, as last read (a read may finish after the poll that asks)."""
        read = server.store.run_read(partial(fragment, owner=rosa_jid, namespace="storage:bookmarks"))
        read.addCallback(lambda xml: seen.__setitem__(0, xml or ""))
        return seen[0]

    home = tmp_path / "rosa"
    home.mkdir()
    terminal = Terminal(home / "tmux.sock")
    with profanity(home, "rosa", accounts_file("rosa", rosa_jid, credentials["password"], server.c2s_port)):
        log = home / "profanity.log"
        # Profanity asks for its bookmarks once logged in: its debug log says when they came.
        await until(lambda: log.exists() and "Handle bookmark for council@conference.localhost" in log.read_text())
        terminal.type("/bookmark list")
        await until(lambda: "council@conference.localhost" in terminal.screen())
        terminal.type("/bookmark add garden@conference.localhost autojoin off")
        await until(lambda: "garden@conference.localhost" in kept())
    stored = await server.store.run_read(partial(fragment, owner=rosa_jid, namespace="storage:bookmarks"))
    assert "council@conference.localhost" in stored and stored.startswith("<storage xmlns='storage:bookmarks'>")
