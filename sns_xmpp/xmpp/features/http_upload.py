"""HTTP File Upload (XEP-0363, urn:xmpp:http:upload:0): a service at upload.<domain> hands out
slots over XMPP; the files go up (PUT) and come down (GET) on the HTTP listener, under
``[http] public_url``/upload (`features/http_upload_web.py`, mounted with `registry.http_resource`).

What the XEP asks, section by section:
- 3 (Discovering Support): the service is listed in the server's disco#items (service_domains);
  its disco#info has the identity store/file, the feature, and the XEP-0128 form with
  max-file-size (example 4);
- 4 (Requesting a slot): an IQ-get with <request filename size [content-type]/> is answered with
  <slot><put url/><get url/></slot> (examples 5 and 6). The file name is kept, ending included
  (what could not be a path segment or a header taken out), in a URL under a random 192-bit slot
  id; the PUT URL carries its expiry and an HMAC-SHA-256 over the slot, name, size, content type
  and expiry (no <header/>: every client passes a URL on as it is);
- 5 (Error conditions): a file over max-file-size is not-acceptable with <file-too-large/> and
  <max-file-size/> (example 7); an account past its quota (bytes or files, open slots counted)
  hears resource-constraint, type wait, with <retry stamp/> when something of its frees room
  (example 8); anyone but a hosted account not-allowed (example 9); a malformed request
  bad-request;
- 6 (Upload) and 7 (Implementation Notes): the PUT URL is good for ``slot_lifetime`` seconds
  (the XEP recommends a short one); the rest is the HTTP side's.

Social users get the service exactly as local ones: it asks only that the sender be an account
of a hosted domain. Files expire after ``file_lifetime_days``; a periodic clean-up (the injected
clock) removes closed slots, expired files and files whose rows are gone (a deleted account's).
Without a folder (a configuration not read from a file, as in other features' unit tests) the
feature keeps its table's declaration and serves nothing.
"""

from __future__ import annotations

import datetime
import re
import secrets
import unicodedata
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.config import UploadConfig
from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.keyfiles import ensure_secret, private_directory
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.store.upload import OverQuota, Quota, Upload, open_slot
from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.features.http_upload_web import Sweeper, UploadResource, put_signature
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import add_element, iq_result

log = GatedLogger()

NS_UPLOAD = "urn:xmpp:http:upload:0"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DATA = "jabber:x:data"
IDENTITY_NAME = "HTTP File Upload"
DEFAULT_TYPE = "application/octet-stream"  # section 6: what a slot without a content type holds
MAX_NAME_CHARACTERS = 200
# type/subtype with optional parameters, as RFC 9110 section 8.3.1 spells a media type.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # noqa: S105 (RFC 9110's token, not a secret)
# Quoted parameter values in printable ASCII only: the type goes back out as a header.
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=({_TOKEN}|\"[ !#-\[\]-~]*\"))*")
MAX_TYPE_LENGTH = 255
CLEANUP_INTERVAL = 600.0  # seconds between sweeps of closed slots, expired files and orphans


def safe_name(filename: str) -> str:
    """The name a file keeps in its URLs and its Content-Disposition: the last path segment,
    without control or formatting characters (an RTL override could disguise an ending), not
    '.' or '..', at most MAX_NAME_CHARACTERS with its ending kept."""
    name = unicodedata.normalize("NFC", filename).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] not in "CZ" or ch == " ").strip()
    if name in ("", ".", ".."):
        return "file"
    if len(name) > MAX_NAME_CHARACTERS:
        stem, dot, ending = name.rpartition(".")
        if dot and 0 < len(ending) <= 16:
            name = stem[:MAX_NAME_CHARACTERS - len(ending) - 1] + "." + ending
        else:
            name = name[:MAX_NAME_CHARACTERS]
    return name


def media_type(value: str | None) -> str:
    """The slot's content type: as asked, lower-cased, or DEFAULT_TYPE; ValueError if it is not one."""
    if not value:
        return DEFAULT_TYPE
    value = value.strip()
    if len(value) > MAX_TYPE_LENGTH or not _MEDIA_TYPE.fullmatch(value):
        raise ValueError(value)
    return value.lower()


def _stamp(seconds: float) -> str:
    """XEP-0082 date-time, UTC (section 5's <retry stamp/>)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class UploadService:
    """The service's XMPP side: disco and slot requests, answered through the router."""

    def __init__(self, sessions: SessionManager, route: Any, settings: UploadConfig, key: bytes) -> None:
        self.sessions = sessions
        self.route = route
        self.settings = settings
        self.key = key
        self.quota = Quota(max_files=settings.max_files, max_bytes=settings.quota_bytes)

    def deliver(self, stanza: domish.Element) -> None:
        """What the router hands to upload.<domain>: IQs are answered; anything else is dropped
        (a service without messages or presence)."""
        if stanza.name != "iq" or stanza.getAttribute("type") not in ("get", "set"):
            return
        try:
            answered: Any = self._answer(stanza)
        except StanzaError as error:
            self._send(error.toResponse(stanza))
            return
        if isinstance(answered, Deferred):
            answered.addCallbacks(self._send, partial(self._failed, stanza))
        else:
            self._send(answered)

    def _send(self, reply: domish.Element) -> None:
        self.route(reply)

    def _failed(self, stanza: domish.Element, reason: Failure) -> None:
        if reason.check(StanzaError):
            self._send(reason.value.toResponse(stanza))  # type: ignore[union-attr]
            return
        log.failure("upload.failed", reason)
        self._send(StanzaError("internal-server-error").toResponse(stanza))

    def _answer(self, iq: domish.Element) -> domish.Element | Deferred[domish.Element]:
        to = parse_jid(iq.getAttribute("to", ""))
        child = next(iq.elements(), None)
        if to.user is not None or to.resource is not None or child is None:
            raise StanzaError("service-unavailable")
        kind = iq.getAttribute("type")
        if (child.uri, child.name) == (NS_DISCO_INFO, "query") and kind == "get":
            return self._disco_info(iq, child)
        if (child.uri, child.name) == (NS_DISCO_ITEMS, "query") and kind == "get":
            reply = iq_result(iq)
            add_element(reply, (NS_DISCO_ITEMS, "query"))
            return reply
        if (child.uri, child.name) == (NS_UPLOAD, "request"):
            if kind != "get":
                raise StanzaError("bad-request", text="a slot is asked for with an IQ-get")
            return self._slot(iq, child)
        raise StanzaError("service-unavailable")

    def _disco_info(self, iq: domish.Element, query: domish.Element) -> domish.Element:
        """Section 3, example 4: the identity, the feature and the max-file-size form."""
        if query.getAttribute("node"):
            raise StanzaError("item-not-found")
        reply = iq_result(iq)
        answer = add_element(reply, (NS_DISCO_INFO, "query"))
        identity = add_element(answer, "identity")
        identity["category"], identity["type"], identity["name"] = "store", "file", IDENTITY_NAME
        for var in (NS_DISCO_INFO, NS_UPLOAD):
            add_element(answer, "feature")["var"] = var
        form = add_element(answer, (NS_DATA, "x"))
        form["type"] = "result"
        form_type = add_element(form, "field")
        form_type["var"], form_type["type"] = "FORM_TYPE", "hidden"
        add_element(form_type, "value", content=NS_UPLOAD)
        size = add_element(form, "field")
        size["var"] = "max-file-size"
        add_element(size, "value", content=str(self.settings.max_file_bytes))
        return reply

    def _owner(self, iq: domish.Element) -> str:
        """The hosted account asking (section 5, example 9: anyone else is not allowed)."""
        try:
            sender = parse_jid(iq.getAttribute("from", ""))
        except InvalidFormat:
            sender = None
        if sender is None or sender.user is None or sender.host not in self.sessions.domains:
            raise StanzaError("not-allowed", text="uploads are for this server's accounts")
        return sender.userhost()

    def _slot(self, iq: domish.Element, request: domish.Element) -> Deferred[domish.Element]:
        """Section 4: a slot for the file described, if it fits (section 5's errors if not)."""
        owner = self._owner(iq)
        filename = request.getAttribute("filename") or ""
        size_text = request.getAttribute("size") or ""
        if not filename.strip() or not size_text.isascii() or not size_text.isdigit() or len(size_text) > 18:
            raise StanzaError("bad-request", text="a request has a filename and a size in bytes")
        size = int(size_text)
        try:
            content_type = media_type(request.getAttribute("content-type"))
        except ValueError:
            raise StanzaError("bad-request", text="content-type is not a media type") from None
        limit = self.settings.max_file_bytes
        if size > limit:
            self.sessions.metrics.limit("upload-file-size")
            too_large = domish.Element((NS_UPLOAD, "file-too-large"))
            add_element(too_large, "max-file-size", content=str(limit))
            raise StanzaError("not-acceptable", "modify", f"File too large. The maximum file size is {limit} bytes",
                              appCondition=too_large)
        now = self.sessions.clock.seconds()
        put_until = int(now) + self.settings.slot_lifetime
        slot = Upload(secrets.token_urlsafe(24), owner, safe_name(filename), size, content_type, "open", now,
                      float(put_until), None, None)

        def issued(_: object) -> domish.Element:
            log.info("upload.slot {owner} size={size}", owner=owner, size=size)
            return self._slot_result(iq, slot, put_until)

        def refused(reason: Failure) -> domish.Element:
            reason.trap(OverQuota)
            self.sessions.metrics.limit("upload-quota")
            retry_at = reason.value.retry_at  # type: ignore[union-attr]
            log.warn("upload.over_quota {owner}", owner=owner)
            retry = None
            if retry_at is not None:
                retry = domish.Element((NS_UPLOAD, "retry"))
                retry["stamp"] = _stamp(retry_at + 1)
            raise StanzaError("resource-constraint", "wait",
                              f"Quota reached: {self.quota.max_bytes} bytes in {self.quota.max_files} files",
                              appCondition=retry)

        d = self.sessions.store.run(partial(open_slot, slot=slot, quota=self.quota, now=now))
        return d.addCallbacks(issued, refused)

    def _slot_result(self, iq: domish.Element, slot: Upload, put_until: int) -> domish.Element:
        reply = iq_result(iq)
        answer = add_element(reply, (NS_UPLOAD, "slot"))
        get_url = f"{self.settings.base_url}/{slot.slot}/{quote(slot.filename, safe='')}"
        signature = put_signature(self.key, slot.slot, slot.filename, slot.size, slot.content_type, put_until)
        add_element(answer, "put")["url"] = f"{get_url}?expires={put_until}&signature={signature}"
        add_element(answer, "get")["url"] = get_url
        return reply


def install(registry: FeatureRegistry) -> None:
    registry.stores("upload_files", per_account=True, what="HTTP upload slots and files (XEP-0363), files on disk")
    settings = registry.config.upload
    if not settings.folder or not settings.base_url:
        return  # no folder: a configuration not read from a file (see the module's doc)
    folder = private_directory(Path(settings.folder))
    # Beside the files, never served: they are reached only through their rows' slots.
    key = ensure_secret(folder / ".put-signing.key").encode()
    route = registry.router.route if registry.router is not None else registry.sessions.route
    service = UploadService(registry.sessions, route, settings, key)
    registry.service_domains("upload", service.deliver)
    registry.http_resource(b"upload", UploadResource(registry.sessions.store, registry.clock, folder, key,
                                                     registry.sessions.metrics, settings.file_lifetime_days),
                           max_body_bytes=settings.max_file_bytes)  # a larger body: 413 before it is read
    registry.services["http-upload"] = service
    sweeper = Sweeper(registry.sessions.store, registry.clock, folder)
    loop = task.LoopingCall(sweeper.sweep)
    loop.clock = registry.clock
    loop.start(CLEANUP_INTERVAL, now=False)
    registry.on_stop(lambda: loop.stop() if loop.running else None)


FEATURE = Feature("http-upload", install)
