"""HTTP File Upload (XEP-0363) against the daemon: slixmpp's own xep_0363 plugin finds the service
(disco#items, then the max-file-size form), gets a slot and PUTs the file; the other user GETs the
same bytes from the link. Between a social user (the demo site's) and a local user; an over-size
request gets the XEP's error, and a PUT to a forged, an expired or a used slot gets 403 and
writes nothing. go-sendxmpp (Go) sends a file with -h/--http-upload as a client of another stack.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
import treq
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0363.http_upload import FileTooBig

from sns_xmpp.ops.console import namespace
from tests.clients import require_client
from tests.conftest import DEMO_SITE, make_config
from tests.e2e.test_go_clients import go_sendxmpp
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

MAX = 300_000
UPLOAD_CONFIG = DEMO_SITE + f"""
[xmpp.upload]
max_file_bytes = {MAX}
"""
UPLOAD = "urn:xmpp:http:upload:0"


def upload_client(jid: str, password: str) -> Client:
    client = Client(jid, password, mechanism="PLAIN")
    client.register_plugin("xep_0363")  # with xep_0030 and xep_0128, its dependencies
    return client


async def fetch(url: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    response = await treq.request(method, url, persistent=False,  # a server restarted answers anew
                                  headers={name: [value] for name, value in headers.items()})
    headers = {name.decode().lower(): values[0].decode() for name, values in response.headers.getAllRawHeaders()}
    return response.code, headers, await response.content()


def folder_files(server) -> list[str]:  # type: ignore[no-untyped-def]
    folder = Path(server.server.config.xmpp.upload.folder)
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


@pytest_twisted.ensureDeferred
async def test_a_social_and_a_local_user_share_files_through_the_upload_service(start_server, store_config: str,
                                                                               tmp_path: Path) -> None:
    """rosa (demo site) uploads a PDF with xep_0363's upload_file, which finds the upload service
    through the server's disco#items and reads max-file-size from its form; she sends bob (local)
    the link, and bob's GET returns her bytes, as an attachment with nosniff and the sandboxing
    CSP, and a range of them on asking. bob uploads a picture, served inline; HEAD has its
    length. A slot for one byte over the maximum is refused with not-acceptable and
    <file-too-large/> (section 5, example 7), and the plugin itself refuses a larger file from the
    form's figure. /metrics and the console's uploads() count both files. After a restart
    (SQLite, then PostgreSQL) the link still serves her file."""
    config = make_config(tmp_path, UPLOAD_CONFIG + store_config)
    server = await start_server(config)
    credentials = await demo_credentials(server, "rosa")
    rosa_jid = credentials["jid"]
    await server.add_user("bob@localhost", "secret")
    rosa = upload_client(f"{rosa_jid}/phone", credentials["password"])
    bob = upload_client("bob@localhost/desk", "secret")
    for client in (rosa, bob):
        await wait(client.log_in(server.c2s_port))

    document = os.urandom(150_000) + b"%PDF-1.7 the end"
    url = await wait(rosa.plugin["xep_0363"].upload_file("minutes of the council.pdf", input_file=io.BytesIO(document),
                                                         size=len(document), content_type="application/pdf"))
    # The server's disco#items lists the services of every hosted domain; either serves rosa.
    assert rosa.plugin["xep_0363"].upload_service in ("upload.localhost", "upload.example.org")
    assert rosa.plugin["xep_0363"].max_file_size == MAX
    assert url.startswith(f"{server.http_url}/upload/") and url.endswith("/minutes%20of%20the%20council.pdf")
    rosa.send_message(mto="bob@localhost", mbody=url, mtype="chat")
    received = await wait(bob.next_message())
    assert received["body"] == url
    code, headers, body = await fetch(received["body"])
    assert (code, body) == (200, document)
    assert headers["content-type"] == "application/pdf"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert headers["content-disposition"].startswith("attachment;")

    picture = b"GIF89a" + os.urandom(2000)
    picture_url = await wait(bob.plugin["xep_0363"].upload_file("cat.gif", input_file=io.BytesIO(picture),
                                                                size=len(picture), content_type="image/gif"))
    code, headers, body = await fetch(picture_url)
    assert (code, body, headers["content-type"]) == (200, picture, "image/gif")
    assert headers["content-disposition"].startswith("inline;")
    code, headers, body = await fetch(picture_url, "HEAD")
    assert (code, body, headers["content-length"]) == (200, b"", str(len(picture)))
    code, headers, body = await fetch(url, Range="bytes=150000-")  # a player seeking
    assert (code, body, headers["content-range"]) == (206, document[150000:], f"bytes 150000-{len(document) - 1}/"
                                                                             f"{len(document)}")

    try:
        await wait(rosa.plugin["xep_0363"].request_slot("upload.localhost", "huge.bin", MAX + 1,
                                                        "application/octet-stream"))
        raise AssertionError("a slot over max-file-size was given")
    except IqError as refused:
        assert refused.iq["error"]["condition"] == "not-acceptable"
        assert refused.iq["error"]["type"] == "modify"
        limit = refused.iq.xml.find(f".//{{{UPLOAD}}}file-too-large/{{{UPLOAD}}}max-file-size")
        assert limit is not None and limit.text == str(MAX)
    with pytest.raises(FileTooBig):
        await wait(rosa.plugin["xep_0363"].upload_file("huge.bin", input_file=io.BytesIO(b"x"), size=MAX + 1))

    metrics = (await (await treq.get(f"{server.http_url}/metrics")).text())
    assert "sns_xmpp_uploads_total 2.0" in metrics
    assert f"sns_xmpp_upload_bytes_total {float(len(document) + len(picture))}" in metrics
    kept = await namespace(server.server)["uploads"]()
    assert (kept["files"], kept["bytes"]) == (2, len(document) + len(picture))
    assert {row["jid"] for row in kept["by_account"]} == {rosa_jid, "bob@localhost"}
    [mine] = await namespace(server.server)["uploads"](rosa_jid)
    assert (mine["name"], mine["bytes"], mine["type"]) == ("minutes of the council.pdf", len(document),
                                                           "application/pdf")
    for client in (rosa, bob):
        await wait(client.log_out())

    await start_server.stop(server)
    again = await start_server(config)
    code, headers, body = await fetch(url)
    assert (code, body, headers["content-type"]) == (200, document, "application/pdf")
    assert (await namespace(again.server)["uploads"]())["files"] == 2


@pytest_twisted.ensureDeferred
async def test_a_put_to_a_forged_an_expired_or_a_used_slot_is_403_and_writes_nothing(server) -> None:
    """With a slot from xep_0363's request_slot: a PUT whose signature is altered, and one with the
    slot's URL signed by the server's own key for an expiry already past (the expiry check, without
    waiting out the slot), are 403; nothing is on disk and the GET URL is 404. The honest PUT is
    201, and its replay is 403 with the file unchanged."""
    await server.add_user("bob@localhost", "secret")
    bob = upload_client("bob@localhost/desk", "secret")
    await wait(bob.log_in(server.c2s_port))
    body = b"the honest file\n"
    slot_iq = await wait(bob.plugin["xep_0363"].request_slot("upload.localhost", "note.txt", len(body), "text/plain"))
    put_url, get_url = slot_iq["http_upload_slot"]["put"]["url"], slot_iq["http_upload_slot"]["get"]["url"]
    headers = {"Content-Type": ["text/plain"]}

    forged = re.sub(r"signature=[0-9a-f]{8}", "signature=00000000", put_url)
    assert forged != put_url
    response = await treq.put(forged, data=body, headers=headers)
    assert response.code == 403, await response.text()

    parts = urlsplit(put_url)
    slot_id = parts.path.split("/")[2]
    key = (Path(server.server.config.xmpp.upload.folder) / ".put-signing.key").read_text().strip().encode()
    past = int(parse_qs(parts.query)["expires"][0]) - 3600
    signature = hmac.new(key, "\0".join((slot_id, "note.txt", str(len(body)), "text/plain", str(past))).encode(),
                         hashlib.sha256).hexdigest()
    expired = f"{parts.scheme}://{parts.netloc}{parts.path}?expires={past}&signature={signature}"
    response = await treq.put(expired, data=body, headers=headers)
    assert response.code == 403 and "expired" in await response.text()
    assert folder_files(server) == []
    assert (await fetch(get_url))[0] == 404

    response = await treq.put(put_url, data=body, headers=headers)
    assert response.code == 201
    response = await treq.put(put_url, data=b"the replayed one\n"[:len(body)], headers=headers)
    assert response.code == 403
    assert (await fetch(get_url))[2] == body
    assert folder_files(server) == [slot_id]
    await wait(bob.log_out())


@pytest_twisted.ensureDeferred
async def test_go_sendxmpp_sends_a_file_by_http_upload(server, tmp_path: Path) -> None:
    """go-sendxmpp (Go) with -h: it finds the upload service, PUTs the file and sends the link to
    bob, who fetches the same bytes."""
    require_client("go-sendxmpp")
    await server.add_user("alice@localhost", "secret")
    await server.add_user("bob@localhost", "secret")
    bob = Client("bob@localhost/desk", "secret")
    await wait(bob.log_in(server.c2s_port))
    data = os.urandom(5000)
    sent = tmp_path / "photo.jpg"
    sent.write_bytes(b"\xff\xd8\xff\xe0" + data)
    status, printed = await wait(go_sendxmpp(tmp_path, server.c2s_port, "--username", "alice@localhost",
                                             "--password", "secret", "--http-upload", str(sent), "bob@localhost"), 30)
    assert status == 0, printed
    received = await wait(bob.next_message())
    url = received["body"].strip()
    assert url.startswith(f"{server.http_url}/upload/") and url.endswith("/photo.jpg"), url
    code, _headers, body = await fetch(url)
    assert (code, body) == (200, sent.read_bytes())
    await wait(bob.log_out())
