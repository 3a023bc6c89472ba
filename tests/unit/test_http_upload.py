"""HTTP File Upload (XEP-0363) with Twisted's doubles and the real SQL: the service's disco (section
3, example 4), slots for a social and a local account (section 4), the errors of section 5 as raw
XML, the PUT against the HTTP side's real Site (section 6: 201 once; 403 for a forged, expired,
misnamed or used slot; 411, 413 and 400 for a body that is not the slot's; nothing written), the
GET's headers that keep an uploaded page from scripting the server's origin, the clean-up on the
injected clock, and the feature's SQL on both engines."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest
from wokkel.generic import parseXml

from sns_xmpp.config import ConfigError, UploadConfig, XMPPConfig, parse_config
from sns_xmpp.http.site import web_site
from sns_xmpp.store.upload import (
    OverQuota,
    Quota,
    Upload,
    claim,
    known,
    open_slot,
    recent,
    stored,
    sweep,
    upload,
    usage_by_owner,
)
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.features import FeatureRegistry
from sns_xmpp.xmpp.features.built_in import install_features
from sns_xmpp.xmpp.features.http_upload import CLEANUP_INTERVAL, media_type, safe_name
from sns_xmpp.xmpp.features.http_upload_web import disposition, put_signature
from sns_xmpp.xmpp.routing import LocalRoute, StanzaRouter
from sns_xmpp.xmpp.sessions import SessionManager
from tests.unit.http_exchange import Connection, Response, parse_response
from tests.unit.synchronous_store import SynchronousStore
from tests.unit.test_limits import factory_and_clock
from tests.unit.test_negotiation import output
from tests.unit.test_roster_versioning import log_in
from tests.unit.test_store import NOW, Backend, backend  # noqa: F401 - the fixture

UPLOAD = "urn:xmpp:http:upload:0"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
HAMLET = "hamlet@localhost"  # a social account
MACBETH = "macbeth@localhost"  # a local one
BASE = "https://files.example/upload"
SMALL = UploadConfig(max_file_bytes=20000, quota_bytes=50000, max_files=5, file_lifetime_days=30, slot_lifetime=300)


class World:
    """A session core with a real router, every built-in feature, upload configured with a folder,
    and hamlet and macbeth bound; the upload resource behind the HTTP side's real Site."""

    def __init__(self, tmp_path: Path, settings: UploadConfig = SMALL) -> None:
        self.folder = tmp_path / "uploads"
        self.store = SynchronousStore()
        for jid in (HAMLET, MACBETH):
            assert self.store.database.create_account(jid, (), NOW, social=jid == HAMLET)
        self.factory, self.clock = factory_and_clock()
        self.clock.advance(NOW)
        self.router = StanzaRouter()
        self.sessions = SessionManager(["localhost"], self.store, self.clock, self.router.route)  # type: ignore[arg-type]
        self.router.addRoute("localhost", LocalRoute(self.sessions.deliver))
        config = XMPPConfig(upload=UploadConfig(**{**settings.__dict__, "folder": str(self.folder),
                                                   "base_url": BASE}))
        self.registry: FeatureRegistry = install_features(self.sessions, self.router, self.clock, config=config)
        self.key = self.registry.services["http-upload"].key
        root = Resource()
        root.putChild(b"upload", self.registry.http_resources[b"upload"])
        self.site = web_site(root, self.clock)
        self.hamlet, self.hamlet_out = log_in(self.sessions, self.factory, HAMLET, "192.0.2.10", "denmark")
        self.macbeth, self.macbeth_out = log_in(self.sessions, self.factory, MACBETH, "192.0.2.11", "castle")

    def ask(self, stream: ClientStream, transport: StringTransport, xml: str) -> str:
        stream.dataReceived(xml.encode())
        return output(transport)

    def slot(self, stream: ClientStream, transport: StringTransport, filename: str = "my-juliet.jpg",
             size: int = 12345, content_type: str = "image/jpeg") -> tuple[str, str]:
        """A slot's PUT and GET URLs, asked as XEP-0363 example 5 asks."""
        answer = self.ask(stream, transport,
                          f"<iq type='get' id='step_03' to='upload.localhost'><request xmlns='{UPLOAD}' "
                          f"filename='{filename}' size='{size}' content-type='{content_type}'/></iq>")
        put = re.search(r"<put url='([^']*)'", answer)
        get = re.search(r"<get url='([^']*)'", answer)
        assert put and get, answer
        return put.group(1).replace("&amp;", "&"), get.group(1)

    def put(self, url: str, body: bytes, headers: dict[str, str] | None = None, length: int | None = None) -> Response:
        """A PUT of *body* to *url*'s path on the real Site; Content-Length *length* (None: the
        body's; -1: none, the body chunked)."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"PUT {target} HTTP/1.1", "Host: files.example", "Connection: close"]
        if length == -1:
            lines.append("Transfer-Encoding: chunked")
            payload = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        else:
            lines.append(f"Content-Length: {len(body) if length is None else length}")
            payload = body
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        connection = Connection(self.site)
        connection.send(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        raw = connection.transport.value()
        connection.close()
        return parse_response(raw)

    def get(self, url: str, method: bytes = b"GET", range_header: str | None = None) -> DummyRequest:
        """A GET (or HEAD) of *url* straight to the resource: DummyRequest runs FileSender, a pull
        producer, to its end, which a Site over StringTransport would leave to the global reactor."""
        path = urlsplit(url).path.split("/")[2:]
        request = DummyRequest([unquote(segment).encode() for segment in path])
        request.method = method
        if range_header is not None:
            request.requestHeaders.setRawHeaders(b"range", [range_header.encode()])
        self.registry.http_resources[b"upload"].render(request)
        return request

    def files(self) -> list[str]:
        return sorted(path.name for path in self.folder.iterdir() if not path.name.startswith("."))

    def rows(self) -> list[tuple[Any, ...]]:
        return self.store.database.query("SELECT owner, filename, size, content_type, state FROM upload_files"
                                         " ORDER BY created_at, owner")


def parsed(answer: str) -> ET.Element:
    return ET.fromstring(answer)


def canonical(xml: str) -> str:
    """*xml* in C14N 2.0: attributes in one order, so that answers compare exactly."""
    return ET.canonicalize(xml)


def test_the_service_is_listed_and_answers_disco_as_example_4(tmp_path: Path) -> None:
    """Section 3: the server's disco#items lists upload.localhost; its disco#info has the identity
    store/file, the feature, and the XEP-0128 form with max-file-size in bytes (example 4)."""
    world = World(tmp_path)
    items = world.ask(world.hamlet, world.hamlet_out, "<iq type='get' id='step_01' to='localhost'>"
                      "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert "<item jid='upload.localhost'/>" in items
    info = world.ask(world.hamlet, world.hamlet_out, "<iq type='get' id='step_02' to='upload.localhost'>"
                     "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert info == (
        f"<iq type='result' id='step_02' to='{HAMLET}/denmark' from='upload.localhost'>"
        "<query xmlns='http://jabber.org/protocol/disco#info'>"
        "<identity category='store' type='file' name='HTTP File Upload'/>"
        "<feature var='http://jabber.org/protocol/disco#info'/><feature var='urn:xmpp:http:upload:0'/>"
        "<x xmlns='jabber:x:data' type='result'>"
        "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:http:upload:0</value></field>"
        "<field var='max-file-size'><value>20000</value></field></x></query></iq>")
    items = world.ask(world.hamlet, world.hamlet_out, "<iq type='get' id='i2' to='upload.localhost'>"
                      "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert items == (f"<iq type='result' id='i2' to='{HAMLET}/denmark' from='upload.localhost'>"
                     "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    other = world.ask(world.hamlet, world.hamlet_out, "<iq type='get' id='v1' to='upload.localhost'>"
                      "<query xmlns='jabber:iq:version'/></iq>")
    assert "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in other


def test_a_social_and_a_local_account_each_get_a_signed_slot(tmp_path: Path) -> None:
    """Section 4, examples 5 and 6: the slot's PUT and GET URLs share a random path under the
    public URL that keeps the file name and its ending; the PUT URL carries its expiry (now + the
    slot lifetime) and the HMAC over slot, name, size, type and expiry. Hamlet, a social account,
    and macbeth, a local one, are served alike; each slot is a row of its own account."""
    world = World(tmp_path)
    answer = world.ask(world.hamlet, world.hamlet_out,
                       f"<iq type='get' id='step_03' to='upload.localhost'><request xmlns='{UPLOAD}' "
                       "filename='très cool.jpg' size='12345' content-type='image/jpeg'/></iq>")
    iq = parsed(answer)
    assert (iq.get("type"), iq.get("id"), iq.get("from"), iq.get("to")) == (
        "result", "step_03", "upload.localhost", f"{HAMLET}/denmark")
    [slot] = list(iq)
    assert slot.tag == f"{{{UPLOAD}}}slot"
    put, get = slot.find(f"{{{UPLOAD}}}put"), slot.find(f"{{{UPLOAD}}}get")
    assert put is not None and get is not None and list(put) == []  # no <header/>: the URL is enough
    match = re.fullmatch(re.escape(BASE) + r"/([A-Za-z0-9_-]{32})/tr%C3%A8s%20cool\.jpg", get.get("url", ""))
    assert match, get.get("url")
    slot_id = match.group(1)
    parts = urlsplit(put.get("url", ""))
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == get.get("url")
    query = parse_qs(parts.query)
    expires = int(NOW) + 300
    assert query == {"expires": [str(expires)],
                     "signature": [put_signature(world.key, slot_id, "très cool.jpg", 12345, "image/jpeg", expires)]}

    _put2, get2 = world.slot(world.macbeth, world.macbeth_out, "notes.txt", 10, "text/plain")
    assert get2.endswith("/notes.txt") and get2 != get.get("url")
    assert world.rows() == [(HAMLET, "très cool.jpg", 12345, "image/jpeg", "open"),
                            (MACBETH, "notes.txt", 10, "text/plain", "open")]


def test_the_errors_of_section_5(tmp_path: Path) -> None:
    """Example 7: a file over max-file-size is not-acceptable with <file-too-large/> and the limit,
    the request echoed. Example 8: past the quota (bytes, or files with open slots) the request
    is resource-constraint, type wait, with <retry/> at the moment the first open slot closes;
    once it has, the account has room again. A request with no size, a size that is not a
    number, a content type that is not a media type, or an IQ-set is a bad request; the domain's
    own address (not an account) is not allowed. Nothing of a refused request is kept."""
    world = World(tmp_path)
    too_large = world.ask(world.hamlet, world.hamlet_out,
                          f"<iq type='get' id='step_03' to='upload.localhost'><request xmlns='{UPLOAD}' "
                          "filename='my-juliet.jpg' size='23456' content-type='image/jpeg'/></iq>")
    assert canonical(too_large) == canonical(
        f"<iq type='error' id='step_03' to='{HAMLET}/denmark' from='upload.localhost'>"
        f"<request xmlns='{UPLOAD}' filename='my-juliet.jpg' size='23456' content-type='image/jpeg'/>"
        f"<error type='modify' code='406'><not-acceptable xmlns='{STANZAS}'/>"
        f"<text xmlns='{STANZAS}'>File too large. The maximum file size is 20000 bytes</text>"
        f"<file-too-large xmlns='{UPLOAD}'><max-file-size>20000</max-file-size></file-too-large></error></iq>")

    for request in ("filename='a.txt'", "filename='a.txt' size='-1'", "filename='a.txt' size='1e3'",
                    "size='10'", "filename='a.txt' size='10' content-type='text/html\r\nX: y'",
                    "filename='a.txt' size='10' content-type='nonsense'"):
        answer = world.ask(world.hamlet, world.hamlet_out,
                           f"<iq type='get' id='b' to='upload.localhost'><request xmlns='{UPLOAD}' {request}/></iq>")
        assert f"<bad-request xmlns='{STANZAS}'/>" in answer and "type='modify'" in answer, request
    answer = world.ask(world.hamlet, world.hamlet_out, f"<iq type='set' id='s' to='upload.localhost'>"
                       f"<request xmlns='{UPLOAD}' filename='a.txt' size='10'/></iq>")
    assert f"<bad-request xmlns='{STANZAS}'/>" in answer
    assert world.rows() == []

    answers: list[Any] = []
    world.registry.services["http-upload"].route = answers.append
    world.registry.services["http-upload"].deliver(parseXml(
        f"<iq type='get' id='n' from='localhost' to='upload.localhost'>"
        f"<request xmlns='{UPLOAD}' filename='a.txt' size='10'/></iq>"))
    assert f"<not-allowed xmlns='{STANZAS}'/>" in answers[0].toXml()
    world.registry.services["http-upload"].route = world.router.route

    for _ in range(2):  # 2 x 20000 of 50000 bytes
        world.slot(world.hamlet, world.hamlet_out, "big.bin", 20000, "application/octet-stream")
    world.clock.advance(100)
    over = world.ask(world.hamlet, world.hamlet_out,
                     f"<iq type='get' id='q' to='upload.localhost'><request xmlns='{UPLOAD}' "
                     "filename='big.bin' size='20000'/></iq>")
    assert canonical(over) == canonical(
        f"<iq type='error' id='q' to='{HAMLET}/denmark' from='upload.localhost'>"
        f"<request xmlns='{UPLOAD}' filename='big.bin' size='20000'/>"
        f"<error type='wait' code='500'><resource-constraint xmlns='{STANZAS}'/>"
        f"<text xmlns='{STANZAS}'>Quota reached: 50000 bytes in 5 files</text>"
        f"<retry xmlns='{UPLOAD}' stamp='2023-11-14T22:18:21Z'/></error></iq>")  # NOW + 300 s, + 1
    assert world.sessions.metrics.limits_hit.labels("upload-quota")._value.get() == 1
    world.slot(world.macbeth, world.macbeth_out, "big.bin", 20000)  # another account's quota is its own
    world.clock.advance(201)  # the first two slots close unused
    world.slot(world.hamlet, world.hamlet_out, "big.bin", 20000)
    for _ in range(4):
        world.slot(world.hamlet, world.hamlet_out, "tiny.txt", 1)
    many = world.ask(world.hamlet, world.hamlet_out, f"<iq type='get' id='m' to='upload.localhost'>"
                     f"<request xmlns='{UPLOAD}' filename='tiny.txt' size='1'/></iq>")
    assert f"<resource-constraint xmlns='{STANZAS}'/>" in many, "five files at most"


def test_a_put_stores_the_file_once_and_a_get_serves_it_safely(tmp_path: Path) -> None:
    """Section 6: the PUT with the slot's Content-Length and Content-Type is answered 201 and the
    file is on disk, whole, under its slot; a second PUT (a replay) is 403 and changes nothing.
    GET serves the same bytes with the slot's type, nosniff and a sandboxing CSP: an HTML page is
    an attachment (it cannot script the login pages' origin), an image is shown inline, an SVG is
    an attachment too. HEAD has the headers and no body; one byte range is served as 206 (several
    as the whole file, one past the end 416). Counted in /metrics."""
    world = World(tmp_path)
    page = b"<html><script>alert(document.cookie)</script></html>"
    put, get = world.slot(world.hamlet, world.hamlet_out, "page.html", len(page), "text/html")
    answer = world.put(put, page, {"Content-Type": "text/html"})
    assert (answer.code, answer.body) == (201, b"")
    [slot_id] = world.files()
    assert (world.folder / slot_id).read_bytes() == page
    assert world.rows() == [(HAMLET, "page.html", len(page), "text/html", "stored")]
    again = world.put(put, b"<html>replaced</html>"[:len(page)].ljust(len(page)), {"Content-Type": "text/html"})
    assert again.code == 403
    assert (world.folder / slot_id).read_bytes() == page

    served = world.get(get)
    assert served.responseCode in (None, 200)
    assert b"".join(served.written) == page
    headers = {name.lower(): values[0] for name, values in served.responseHeaders.getAllRawHeaders()}
    assert headers[b"content-type"] == b"text/html"
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"content-security-policy"] == b"default-src 'none'; sandbox"
    assert headers[b"content-disposition"] == b"attachment; filename=\"page.html\"; filename*=UTF-8''page.html"
    assert b"content-encoding" not in headers

    picture = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    put, get = world.slot(world.macbeth, world.macbeth_out, "me.png", len(picture), "image/png")
    assert world.put(put, picture, {"Content-Type": "image/png"}).code == 201
    served = world.get(get)
    assert b"".join(served.written) == picture
    assert served.responseHeaders.getRawHeaders(b"content-disposition") == [
        b"inline; filename=\"me.png\"; filename*=UTF-8''me.png"]
    head = world.get(get, b"HEAD")
    assert head.written == [] and head.responseHeaders.getRawHeaders(b"content-length") == [str(len(picture)).encode()]
    assert world.get(get.rsplit("/", 1)[0] + "/other.png").responseCode == 404
    for asked, code, part in (("bytes=0-7", 206, picture[:8]), ("bytes=-4", 206, picture[-4:]),
                              ("bytes=1000-", 206, picture[1000:]), ("bytes=0-3,8-9", None, picture),
                              (f"bytes={len(picture)}-", 416, b"range not satisfiable\n")):
        ranged = world.get(get, range_header=asked)
        assert (ranged.responseCode, b"".join(ranged.written)) == (code, part), asked
    ranged = world.get(get, range_header="bytes=-4")
    assert ranged.responseHeaders.getRawHeaders(b"content-range") == [
        f"bytes {len(picture) - 4}-{len(picture) - 1}/{len(picture)}".encode()]
    metrics = world.sessions.metrics
    assert (metrics.uploads._value.get(), metrics.upload_bytes._value.get()) == (2, len(page) + len(picture))
    assert disposition("x.svg", "image/svg+xml").startswith(b"attachment;")


@pytest.mark.parametrize("mistake", ["forged", "expired", "other name", "other slot", "longer", "shorter",
                                     "no length", "other type", "unsigned"])
def test_a_put_that_is_not_the_slots_is_refused_and_writes_nothing(tmp_path: Path, mistake: str) -> None:
    """A forged signature, an expired slot, another name or slot id, no signature: 403. A
    Content-Length above the slot's size: 413; below it: 400; none (a chunked body): 411; another
    Content-Type: 400. Each time nothing is on disk and the slot stays open, so that the honest
    PUT that follows still works."""
    world = World(tmp_path)
    body = b"0123456789"
    put, _get = world.slot(world.hamlet, world.hamlet_out, "digits.txt", len(body), "text/plain")
    headers = {"Content-Type": "text/plain"}
    url, length, sent = put, None, body
    if mistake == "forged":
        url = re.sub(r"signature=([0-9a-f])", lambda m: "signature=" + ("1" if m.group(1) != "1" else "2"), put)
    elif mistake == "expired":
        world.clock.advance(301)
    elif mistake == "other name":
        url = put.replace("/digits.txt?", "/digits.html?")
    elif mistake == "other slot":
        url = re.sub(r"/upload/[^/]+/", "/upload/" + "A" * 32 + "/", put)
    elif mistake == "longer":
        sent = body + b"!"
    elif mistake == "shorter":
        sent = body[:-1]
    elif mistake == "no length":
        length = -1
    elif mistake == "other type":
        headers = {"Content-Type": "text/html"}
    elif mistake == "unsigned":
        url = put.split("?", 1)[0]
    expected = {"longer": 413, "shorter": 400, "no length": 411, "other type": 400}.get(mistake, 403)
    answer = world.put(url, sent, headers, length)
    assert answer.code == expected, answer.body
    assert world.files() == []
    assert [row[4] for row in world.rows()] == ["open"]
    assert world.sessions.metrics.upload_puts_refused.labels(str(expected))._value.get() == 1
    if mistake != "expired":
        assert world.put(put, body, {"Content-Type": "text/plain"}).code == 201


def test_the_clean_up_removes_closed_slots_expired_files_and_a_deleted_accounts_files(tmp_path: Path) -> None:
    """Every CLEANUP_INTERVAL on the injected clock: slots closed unused go; a file past its
    lifetime goes with its row; a deleted account's rows go by ON DELETE CASCADE and the next
    clean-up removes its files from disk. The clean-up stops with the server (on_stop)."""
    world = World(tmp_path, UploadConfig(**{**SMALL.__dict__, "file_lifetime_days": 1}))
    world.slot(world.hamlet, world.hamlet_out, "never.txt", 3)  # never used
    put, _get = world.slot(world.macbeth, world.macbeth_out, "old.txt", 3, "text/plain")
    assert world.put(put, b"old", {"Content-Type": "text/plain"}).code == 201
    world.clock.advance(CLEANUP_INTERVAL)
    assert [row[1] for row in world.rows()] == ["old.txt"], "the unused slot closed and went"
    put, _get = world.slot(world.hamlet, world.hamlet_out, "kept.txt", 4, "text/plain")
    assert world.put(put, b"kept", {"Content-Type": "text/plain"}).code == 201
    world.clock.advance(86400 - CLEANUP_INTERVAL)
    assert [row[1] for row in world.rows()] == ["kept.txt"], "old.txt's day is over"
    assert len(world.files()) == 1

    (world.folder / "README").write_text("an operator's note, not an upload")
    assert world.store.database.delete_account(HAMLET)  # as the admin tool deletes one
    assert world.rows() == []
    assert len(world.files()) == 2, "the rows went with the account; the file waits for the clean-up"
    world.clock.advance(CLEANUP_INTERVAL)
    assert world.files() == ["README"], "what the feature did not write is left alone"

    def sweeps() -> list[Any]:
        return [call for call in world.clock.getDelayedCalls() if "Sweeper.sweep" in repr(call)]

    assert len(sweeps()) == 1
    world.registry.stop()
    assert sweeps() == []


def test_the_configuration_places_the_folder_and_the_urls(tmp_path: Path) -> None:
    """[xmpp.upload] directory is under [server] data_dir and the URLs under [http] public_url; a
    quota smaller than one file is refused with its dotted key."""
    config = parse_config(f"[server]\ndata_dir = '{tmp_path}'\n[http]\npublic_url = 'https://chat.example/'\n")
    assert (config.xmpp.upload.folder, config.xmpp.upload.base_url) == (str(tmp_path / "uploads"),
                                                                        "https://chat.example/upload")
    with pytest.raises(ConfigError) as caught:
        parse_config("[xmpp.upload]\nmax_file_bytes = 2000\nquota_bytes = 1000\n")
    assert caught.value.key == "xmpp.upload.quota_bytes"


def test_names_and_types_kept_in_urls_and_headers() -> None:
    """The file name keeps its ending (section 4) without path separators, control or formatting
    characters (an RTL override could disguise the ending); a content type is a media type."""
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\me\\photo.JPG") == "photo.JPG"
    assert safe_name("evil\u202egpj.exe") == "evilgpj.exe"
    assert safe_name("a\r\nb.txt") == "ab.txt"
    assert safe_name("..") == "file" and safe_name("   ") == "file"
    long = safe_name("x" * 300 + ".tar.gz")
    assert len(long) == 200 and long.endswith(".gz")
    assert media_type(None) == "application/octet-stream"
    assert media_type("Image/JPEG") == "image/jpeg"
    assert media_type('text/plain; charset="utf-8"') == 'text/plain; charset="utf-8"'
    for bad in ("text", "text/html\r\nSet-Cookie: a=b", "a/b; c", "x" * 300 + "/y", 'text/plain; charset="é"'):
        with pytest.raises(ValueError):
            media_type(bad)


def test_the_sql_in_each_engine(backend: Backend) -> None:  # noqa: F811
    """open_slot counts files and open slots against the quota in its transaction (a refused
    slot leaves nothing, and says when room frees); claim succeeds once; stored records the
    file; sweep takes closed slots and expired files; the rows go with their account."""
    db = backend.open()
    for jid in (HAMLET, MACBETH):
        db.create_account(jid, (), NOW, social=jid == HAMLET)
    quota = Quota(max_files=3, max_bytes=100)

    def slot(name: str, owner: str = HAMLET, size: int = 40, until: float = NOW + 300) -> Upload:
        return Upload(name * 16, owner, f"{name}.txt", size, "text/plain", "open", NOW, until, None, None)

    open_slot(db, slot("a"), quota, NOW)
    open_slot(db, slot("b", until=NOW + 600), quota, NOW)
    with pytest.raises(OverQuota) as refused:
        open_slot(db, slot("c"), quota, NOW)
    assert refused.value.retry_at == NOW + 300
    assert upload(db, "c" * 16) is None
    open_slot(db, slot("c", MACBETH), quota, NOW)

    assert claim(db, "a" * 16, NOW + 1) and not claim(db, "a" * 16, NOW + 1), "one PUT per slot"
    assert not claim(db, "b" * 16, NOW + 600), "closed"
    assert stored(db, "a" * 16, NOW + 2, NOW + 1000)
    assert upload(db, "a" * 16) == Upload("a" * 16, HAMLET, "a.txt", 40, "text/plain", "stored", NOW,
                                          NOW + 300, NOW + 2, NOW + 1000)
    assert recent(db, HAMLET) == [upload(db, "a" * 16)]
    assert usage_by_owner(db) == [(HAMLET, 1, 40)]
    assert known(db, ["a" * 16, "z" * 16]) == {"a" * 16}

    assert sweep(db, NOW + 700, 10) == ["b" * 16, "c" * 16]
    assert sweep(db, NOW + 1000, 10) == ["a" * 16]
    open_slot(db, slot("d"), quota, NOW)
    assert backend.rows("SELECT COUNT(*) FROM upload_files WHERE owner = ?", (HAMLET,)) == [(1,)]
    assert db.delete_account(HAMLET)
    assert backend.rows("SELECT COUNT(*) FROM upload_files WHERE owner = ?", (HAMLET,)) == [(0,)]
    db.close()


def test_the_put_urls_signature_never_reaches_the_logs(tmp_path: Path) -> None:
    """The signature is what lets a PUT in: neither the feature's events (slot, stored, refused)
    nor the HTTP side's access log may carry it, whether the PUT is honest or forged."""
    from twisted.logger import LogEvent, formatEvent, globalLogPublisher

    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        world = World(tmp_path)
        world.site.doStart()  # as listening does: the access log goes to Twisted's log from now
        put, _get = world.slot(world.macbeth, world.macbeth_out, "a.txt", 3, "text/plain")
        signature = parse_qs(urlsplit(put).query)["signature"][0]
        assert world.put(put.replace(signature, "f" * 64), b"abc", {"Content-Type": "text/plain"}).code == 403
        assert world.put(put, b"abc", {"Content-Type": "text/plain"}).code == 201
        world.site.doStop()
    finally:
        globalLogPublisher.removeObserver(events.append)
    names = [event.get("log_format", "").split(" ", 1)[0] for event in events]
    assert sum('"PUT /upload/' in formatEvent(event) for event in events) == 2, "both PUTs in the access log"
    assert {"upload.slot", "upload.put_refused", "upload.stored"} <= set(names), names
    for event in events:
        text = formatEvent(event) + repr(sorted((k, v) for k, v in event.items() if isinstance(v, str | bytes)))
        assert signature not in text and "f" * 64 not in text, event


def test_a_clean_up_the_store_refuses_is_logged_and_the_next_one_runs(tmp_path: Path) -> None:
    """A store that fails (closed, or down) costs one logged clean-up, not the loop: the next
    interval's runs again and does its work."""
    from twisted.internet.defer import fail
    from twisted.logger import LogEvent, globalLogPublisher

    from sns_xmpp.xmpp.features.http_upload_web import Sweeper

    world = World(tmp_path)
    sweeper = Sweeper(world.store, world.clock, world.folder)
    orphan = world.folder / ("B" * 32)
    orphan.write_bytes(b"left behind")
    broken = world.store.run
    world.store.run = lambda work: fail(RuntimeError("the store is down"))  # type: ignore[method-assign]
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        sweeper.sweep()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e["log_format"] for e in events if e.get("log_format", "").startswith("upload.")] == ["upload.sweep_failed"]
    assert orphan.exists() and sweeper.running is None
    world.store.run = broken  # type: ignore[method-assign]
    sweeper.sweep()
    assert not orphan.exists()
