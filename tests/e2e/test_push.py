"""Push Notifications (XEP-0357) end to end: an app server is a XEP-0114 component (slixmpp's
ComponentXMPP) at push.localhost, the devices are slixmpp clients, one a social user (the demo
site's browser flow) and one a local user. Each enables push for its own node with publish
options, goes offline, and the other's message reaches the app server as the XEP's publish, with
the count and the options and without the body; so does one for a device connected but inactive
(XEP-0352, slixmpp's plugin). Then the app server is a component of another
sns-xmpp server, reached over s2s. (slixmpp has no XEP-0357 plugin: the enable IQ is built with its
Iq stanza; the component is slixmpp's own ComponentXMPP.)"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import Any

import pytest_twisted
import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.conftest import DEMO_SITE, free_port, make_config
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

PUSH = "urn:xmpp:push:0"
PUBSUB = "http://jabber.org/protocol/pubsub"
DATA = "jabber:x:data"
SECRET = "app-server-secret-0123"
CONFIG = """
[xmpp.components]
port = {port}

[components."push.localhost"]
secret = "push-secret-0123456789"
"""

COMPONENT_ON_B = """
[xmpp.components]
port = {port}

[components."push.b.test"]
secret = "push-secret-0123456789"
"""


class AppServer(slixmpp.ComponentXMPP):
    """A push app server's XMPP side: answers every publish with a result, and keeps it."""

    def __init__(self, port: int, domain: str = "push.localhost") -> None:
        super().__init__(domain, "push-secret-0123456789", "127.0.0.1", port)
        self.connected_event = asyncio.Event()
        self.published: asyncio.Queue[ET.Element] = asyncio.Queue()
        self.add_event_handler("session_start", lambda _: self.connected_event.set())
        self.register_handler(Callback("push publish", MatchXPath(
            f"{{{self.default_ns}}}iq/{{{PUBSUB}}}pubsub"), self.publish))

    def publish(self, iq: slixmpp.xmlstream.StanzaBase) -> None:
        self.published.put_nowait(iq.xml)
        iq.reply(clear=True).send()


async def enable_push(client: Client, node: str, service: str = "push.localhost") -> None:
    """Section 5, example 6: enable *service*'s *node* with a publish-options form."""
    iq = client.Iq(stype="set")
    iq.append(ET.fromstring(
        f"<enable xmlns='{PUSH}' jid='{service}' node='{node}'><x xmlns='{DATA}' type='submit'>"
        f"<field var='FORM_TYPE'><value>{PUBSUB}#publish-options</value></field>"
        f"<field var='secret'><value>{SECRET}</value></field></x></enable>"))
    await iq.send()


def summary(publish: ET.Element) -> tuple[str, str, str, dict[str, str], str]:
    """What a notification says: from, node, the summary form's fields, the publish options' secret."""
    node = publish.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish")
    form = publish.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish/{{{PUBSUB}}}item/{{{PUSH}}}notification/{{{DATA}}}x")
    options = publish.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish-options/{{{DATA}}}x")
    assert node is not None and form is not None and options is not None, ET.tostring(publish)
    fields = {f.get("var", ""): f.findtext(f"{{{DATA}}}value", "") for f in form.findall(f"{{{DATA}}}field")}
    secret = {f.get("var", ""): f.findtext(f"{{{DATA}}}value", "") for f in options.findall(f"{{{DATA}}}field")}
    return publish.get("from", ""), publish.get("type", ""), node.get("node", ""), fields, secret["secret"]


@pytest_twisted.ensureDeferred
async def test_an_offline_device_of_a_social_and_of_a_local_user_is_notified(start_server, tmp_path) -> None:
    port = free_port()
    server = await start_server(make_config(tmp_path, DEMO_SITE + CONFIG.format(port=port)))
    app_server = AppServer(port)
    app_server.connect()
    await wait(app_server.connected_event.wait())
    credentials = await demo_credentials(server, "rosa")
    rosa_jid = credentials["jid"]
    await server.add_user("bob@localhost", "secret")
    bob = Client("bob@localhost/desk", "secret")
    rosa = Client(f"{rosa_jid}/phone", credentials["password"], mechanism="PLAIN")
    await wait(bob.log_in(server.c2s_port))
    await wait(rosa.log_in(server.c2s_port))
    info = await wait(rosa.plugin["xep_0030"].get_info(jid=rosa_jid))
    assert PUSH in info["disco_info"]["features"]  # section 4.1, on the account's own bare JID

    await wait(enable_push(rosa, "rosa-phone"))
    await wait(rosa.log_out())
    bob.send_message(mto=slixmpp.JID(rosa_jid), mbody="Wherefore art thou, Rosa?", mtype="chat")
    published = await wait(app_server.published.get())
    assert summary(published) == ("localhost", "set", "rosa-phone", {
        "FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1"}, SECRET)
    assert b"Wherefore" not in ET.tostring(published) and b"bob@" not in ET.tostring(published)

    await wait(enable_push(bob, "bob-desk"))
    await wait(bob.log_out())
    rosa = Client(f"{rosa_jid}/phone", credentials["password"], mechanism="PLAIN")
    rosa.register_plugin("xep_0352")
    await wait(rosa.log_in(server.c2s_port))
    assert (await wait(rosa.next_message()))["body"] == "Wherefore art thou, Rosa?"  # kept offline as ever
    rosa.send_message(mto=slixmpp.JID("bob@localhost"), mbody="Here, bob", mtype="chat")
    published = await wait(app_server.published.get())
    assert summary(published) == ("localhost", "set", "bob-desk", {
        "FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1"}, SECRET)

    # XEP-0352: rosa's phone, connected but inactive, gets bob's message and a notification too.
    rosa.plugin["xep_0352"].send_inactive()
    bob = Client("bob@localhost/desk", "secret")
    await wait(bob.log_in(server.c2s_port))
    assert (await wait(bob.next_message()))["body"] == "Here, bob"
    bob.send_message(mto=slixmpp.JID(rosa_jid), mbody="Asleep?", mtype="chat")
    assert (await wait(rosa.next_message()))["body"] == "Asleep?"
    published = await wait(app_server.published.get())
    assert summary(published) == ("localhost", "set", "rosa-phone", {
        "FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1"}, SECRET)
    assert app_server.published.empty()
    for client in (rosa, bob):
        await wait(client.log_out())
    app_server.disconnect()
    await wait(app_server.wait_until("disconnected", 10))


@pytest_twisted.ensureDeferred
async def test_a_notification_reaches_an_app_server_on_another_server_over_s2s(start_server, tmp_path) -> None:
    """The issue's case: the app server lives elsewhere. a.test's user enables push at
    push.b.test, a component of the federated server b.test; the publish for her offline device
    leaves a.test over s2s (dialback over TLS), from a.test, and the app server's result comes back
    the same way."""
    from tests.e2e.test_s2s import A_ADDRESS, B_ADDRESS, federated_config, free_port_on

    port_a, port_b, component_port = free_port_on(A_ADDRESS), free_port_on(B_ADDRESS), free_port()
    a = await start_server(federated_config(tmp_path, "a.test", A_ADDRESS, port_a, {
        "b.test": f"{B_ADDRESS}:{port_b}", "push.b.test": f"{B_ADDRESS}:{port_b}"}))
    await start_server(federated_config(tmp_path, "b.test", B_ADDRESS, port_b, {"a.test": f"{A_ADDRESS}:{port_a}"},
                                            COMPONENT_ON_B.format(port=component_port)))
    app_server = AppServer(component_port, "push.b.test")
    app_server.connect()
    await wait(app_server.connected_event.wait())
    credentials = await demo_credentials(a, "rosa")
    await a.add_user("bob@a.test", "secret")
    rosa = Client(f"{credentials['jid']}/phone", credentials["password"], mechanism="PLAIN")
    bob = Client("bob@a.test/desk", "secret")
    await wait(rosa.log_in(a.c2s_port))
    await wait(bob.log_in(a.c2s_port))
    await wait(enable_push(rosa, "rosa-phone", "push.b.test"))
    await wait(rosa.log_out())
    bob.send_message(mto=slixmpp.JID(credentials["jid"]), mbody="over the border", mtype="chat")
    published = await wait(app_server.published.get(), 40)  # a first s2s link: TLS and dialback both ways
    assert summary(published) == ("a.test", "set", "rosa-phone", {
        "FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1"}, SECRET)
    out_of_a = a.server.federation.domains()["push.b.test"]["out"]
    assert [link["state"] for link in out_of_a] == ["authenticated"]
    push = a.server.features.services["push"]
    [registration] = push.by_owner[credentials["jid"]].values()
    awaited = registration.in_flight
    if awaited is not None:  # the app server's answer, on its way back over s2s
        answered: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        handler = a.sessions.hooks.responses[awaited]

        def seen(answer: Any) -> None:
            handler(answer)
            answered.set_result(answer.getAttribute("type"))

        a.sessions.hooks.responses[awaited] = seen
        assert await wait(answered) == "result"
    assert (registration.in_flight, registration.errors) == (None, 0)
    await wait(bob.log_out())
    app_server.disconnect()
    await wait(app_server.wait_until("disconnected", 10))
