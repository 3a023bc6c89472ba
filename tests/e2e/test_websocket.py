"""XMPP over WebSocket (RFC 7395) against the daemon, with a raw client (PyPI websockets): no
XMPP library between the test and the framing."""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET

import pytest
import pytest_twisted
import websockets

from tests.e2e.test_local_im import logged_in
from tests.rawxmpp import RawStream
from tests.xmppclient import wait

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
STREAMS = "http://etherx.jabber.org/streams"
CLIENT = "jabber:client"
OPEN = f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"


def _url(server) -> str:  # type: ignore[no-untyped-def]
    return server.http_url.replace("http://", "ws://") + "/xmpp-websocket"


async def _receive(socket: websockets.ClientConnection) -> ET.Element:
    """The next message, which must be an XML document of its own (section 3.3.3)."""
    message = await wait(socket.recv())
    assert isinstance(message, str), "RFC 7395 sends text messages"
    return ET.fromstring(message)


async def _until(socket: websockets.ClientConnection, tag: str) -> ET.Element:
    for _ in range(20):
        element = await _receive(socket)
        if element.tag == tag:
            return element
    raise AssertionError(f"no {tag}")


@pytest_twisted.ensureDeferred
async def test_a_websocket_client_negotiates_logs_in_binds_and_chats_with_a_tcp_client(server) -> None:
    """Open, features, SASL PLAIN (a loopback WebSocket is private), the restart's open, bind,
    presence, a message each way with a slixmpp client over TCP, close: every message a document
    with its namespaces declared."""
    await server.add_user("erin@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    bob = await logged_in(server, "bob@localhost")
    socket = await wait(websockets.connect(_url(server), subprotocols=["xmpp"]))
    assert socket.subprotocol == "xmpp"

    await wait(socket.send(OPEN))
    opened = await _receive(socket)
    assert opened.tag == f"{{{FRAMING}}}open"
    assert opened.get("from") == "localhost" and opened.get("version") == "1.0" and opened.get("id")
    features = await _receive(socket)
    assert features.tag == f"{{{STREAMS}}}features"
    mechanisms = [m.text for m in features.iter("{urn:ietf:params:xml:ns:xmpp-sasl}mechanism")]
    assert "PLAIN" in mechanisms and features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None

    credentials = base64.b64encode(b"\0erin\0secret").decode()
    await wait(socket.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>"))
    assert (await _receive(socket)).tag == "{urn:ietf:params:xml:ns:xmpp-sasl}success"
    await wait(socket.send(OPEN))
    assert (await _receive(socket)).tag == f"{{{FRAMING}}}open"
    features = await _receive(socket)
    assert features.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None

    await wait(socket.send(f"<iq xmlns='{CLIENT}' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                           "<resource>browser</resource></bind></iq>"))
    bound = await _until(socket, f"{{{CLIENT}}}iq")
    assert bound.get("type") == "result"
    assert bound.findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid") == "erin@localhost/browser"
    await wait(socket.send(f"<presence xmlns='{CLIENT}'/>"))

    await wait(socket.send(f"<message xmlns='{CLIENT}' to='bob@localhost' type='chat' id='w1'>"
                           "<body>über WebSocket</body></message>"))
    heard = await wait(bob.next_message())
    assert (heard["body"], str(heard["from"])) == ("über WebSocket", "erin@localhost/browser")
    bob.send_message(mto="erin@localhost/browser", mbody="and back <over> TCP", mtype="chat")
    reply = await _until(socket, f"{{{CLIENT}}}message")
    assert reply.findtext(f"{{{CLIENT}}}body") == "and back <over> TCP"
    assert reply.get("from") == "bob@localhost/" + str(bob.boundjid.resource)

    # The upgrade gave the connection's place in the HTTP cap back (512 per address would refuse
    # the 513th browser behind a carrier-grade NAT): the client streams' caps count it now.
    http = server.server.listener("http").factory
    assert http.connections["127.0.0.1"] == 0
    await wait(socket.send(f"<close xmlns='{FRAMING}'/>"))
    closing = await _until(socket, f"{{{FRAMING}}}close")
    assert closing.tag == f"{{{FRAMING}}}close"
    await wait(socket.wait_closed())
    assert socket.close_code == 1000
    await wait(bob.log_out())


@pytest_twisted.ensureDeferred
async def test_more_people_than_the_old_cap_log_in_from_one_address(server) -> None:
    """Carrier-grade NAT puts thousands behind one address. With the shipped limits, 60 accounts
    bind from 127.0.0.1 at once (the old cap of 50 streams per address refused the 51st with
    policy-violation), over STARTTLS, and one more then logs in over a WebSocket."""
    people = [f"user{n}@localhost" for n in range(60)]
    for jid in people:
        await server.add_user(jid, "secret")

    async def bind(jid: str) -> tuple[RawStream, str]:
        stream = await RawStream.open_tls(server.c2s_port)
        return stream, await stream.log_in_plain(jid.split("@")[0], "secret")

    streams = await wait(asyncio.gather(*(bind(jid) for jid in people)), timeout=60)
    assert [bound for _, bound in streams] == [f"{jid}/raw" for jid in people]
    await server.add_user("erin@localhost", "secret")
    socket = await wait(websockets.connect(_url(server), subprotocols=["xmpp"]))
    await wait(socket.send(OPEN))
    await _until(socket, f"{{{STREAMS}}}features")
    credentials = base64.b64encode(b"\0erin\0secret").decode()
    await wait(socket.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>"))
    assert (await _receive(socket)).tag == "{urn:ietf:params:xml:ns:xmpp-sasl}success"
    for stream, _ in streams:
        stream.close()
    await wait(socket.close())


@pytest_twisted.ensureDeferred
async def test_a_bad_open_and_a_missing_subprotocol_get_rfc_7395s_answers(server) -> None:
    """No xmpp subprotocol: the handshake is refused (400). An open for a domain not served:
    <open/>, the stream error host-unknown, <close/>. A TCP-style stream header instead of <open/>:
    invalid-namespace. Each time the WebSocket then closes."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        await wait(websockets.connect(_url(server), subprotocols=["chat"]))
    assert refused.value.response.status_code == 400

    for first, condition in (
            (f"<open xmlns='{FRAMING}' to='nowhere.example' version='1.0'/>", "host-unknown"),
            (f"<stream:stream xmlns='{CLIENT}' xmlns:stream='{STREAMS}' to='localhost' version='1.0'>",
             "invalid-namespace")):
        socket = await wait(websockets.connect(_url(server), subprotocols=["xmpp"]))
        await wait(socket.send(first))
        assert (await _receive(socket)).tag == f"{{{FRAMING}}}open"
        error = await _receive(socket)
        assert error.tag == f"{{{STREAMS}}}error"
        assert error.find(f"{{urn:ietf:params:xml:ns:xmpp-streams}}{condition}") is not None, ET.tostring(error)
        assert (await _receive(socket)).tag == f"{{{FRAMING}}}close"
        await wait(socket.wait_closed())


@pytest_twisted.ensureDeferred
async def test_host_meta_names_the_websocket_endpoint_in_xrd_and_json(server) -> None:
    """XEP-0156: both documents parse and name the endpoint a client then connects to."""
    import json

    import treq

    endpoint = _url(server)
    xrd = await treq.get(server.http_url + "/.well-known/host-meta")
    assert xrd.code == 200 and xrd.headers.getRawHeaders("content-type") == ["application/xrd+xml"]
    document = ET.fromstring(await xrd.content())
    links = document.findall("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")
    assert [(link.get("rel"), link.get("href")) for link in links] == [
        ("urn:xmpp:alt-connections:websocket", endpoint)]
    answer = await treq.get(server.http_url + "/.well-known/host-meta.json")
    assert json.loads(await answer.content()) == {
        "links": [{"rel": "urn:xmpp:alt-connections:websocket", "href": endpoint}]}
    assert answer.headers.getRawHeaders("access-control-allow-origin") == ["*"]
    socket = await wait(websockets.connect(endpoint, subprotocols=["xmpp"]))
    await wait(socket.close())


@pytest_twisted.ensureDeferred
async def test_xmpp_js_logs_in_over_websocket_and_chats_with_a_tcp_client(server) -> None:
    """xmpp.js (@xmpp/client 0.14, Node.js, pinned by tests/js/package-lock.json) finds its own way
    through the framing: it picks SASL2 with SCRAM-SHA-1, Bind2 with stream management, asks for a
    FAST token, then a message to a slixmpp user over TCP and the reply back."""
    import asyncio
    import json

    from tests.clients import js_clients

    folder = js_clients()
    await server.add_user("erin@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    bob = await logged_in(server, "bob@localhost")
    process = await wait(asyncio.create_subprocess_exec(
        "node", str(folder / "ws_chat.mjs"), _url(server), "localhost", "erin", "secret", "bob@localhost",
        "from xmpp.js", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE))
    heard = await wait(bob.next_message())
    assert (heard["body"], heard["from"].bare) == ("from xmpp.js", "erin@localhost")
    bob.send_message(mto=heard["from"], mbody="hello, Node", mtype="chat")
    output, errors = await wait(process.communicate())
    assert process.returncode == 0, (output, errors)
    result = json.loads(output.decode().strip().splitlines()[-1])
    assert result["jid"].startswith("erin@localhost/xmppjs"), result  # Bind2: the client's tag, then ours
    assert result["reply"] == {"from": str(bob.boundjid), "body": "hello, Node"}, result
    assert "<token xmlns=\"urn:xmpp:fast:0\"" in errors.decode()  # the FAST token it asked for
    await wait(bob.log_out())


@pytest_twisted.ensureDeferred
async def test_a_node_being_drained_sends_websocket_clients_elsewhere(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """[http] websocket_see_other: the answer to <open/> is RFC 7395's <close see-other-uri/> (section
    3.6.1), and the WebSocket closes; no stream starts here."""
    from sns_xmpp.config import parse_config
    from tests.conftest import BASE_CONFIG, DEMO_SITE, free_port

    elsewhere = "wss://chat.example.org/xmpp-websocket"
    base = BASE_CONFIG.format(data=tmp_path / "data", http_port=free_port()).replace(
        "[http]\n", f'[http]\nwebsocket_see_other = "{elsewhere}"\n')
    server = await start_server(parse_config(base + DEMO_SITE))
    socket = await wait(websockets.connect(_url(server), subprotocols=["xmpp"]))
    await wait(socket.send(OPEN))
    closing = await _receive(socket)
    assert (closing.tag, closing.get("see-other-uri")) == (f"{{{FRAMING}}}close", elsewhere)
    await wait(socket.wait_closed())
    assert not server.sessions.all_sessions()
