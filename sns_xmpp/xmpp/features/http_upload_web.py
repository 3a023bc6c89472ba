"""HTTP File Upload's HTTP side (XEP-0363 section 6): the twisted.web resource at /upload that takes
each slot's one PUT and serves its file to GET and HEAD, and the clean-up of the upload folder.
The XMPP side (`features/http_upload.py`) hands out the slots and mounts this resource with
`registry.http_resource`; the HTTP layer (`sns_xmpp.http`) and this one never import each other.

A PUT is refused with 403, and nothing written, unless its URL names an open slot whose file
name matches, carries the slot's unexpired expiry and its HMAC (compared in constant time); a
second PUT to a used slot (a replay) gets 403 too. Its Content-Length must be the slot's size
(section 6: 411 without one, 413 above it, 400 below), and its Content-Type, when given, the
slot's (400). The body, which twisted.web has already received (in memory, or in a temporary file
past 100 kB), is copied to ``<folder>/<slot>.part`` and renamed into place only whole: 201.

GET and HEAD serve the bytes with the slot's content type, ``X-Content-Type-Options: nosniff``,
``Content-Security-Policy: default-src 'none'; sandbox`` and, for anything but a raster image,
audio or video, ``Content-Disposition: attachment``: an uploaded HTML or SVG page cannot run in
the login pages' origin. The file goes out through Twisted's FileSender, as fast as the
connection takes it; a single byte range is honoured (206), as browsers' players seek with one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.web import resource, server

from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.observe.metrics import Metrics
from sns_xmpp.store.upload import STORED, Upload, claim, forget, known, stored, sweep, upload

log = GatedLogger()

SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"content-security-policy": b"default-src 'none'; sandbox",
    b"cache-control": b"private, max-age=86400",
}
# Shown in the browser rather than downloaded: media a page cannot script. SVG is an image that
# can carry script, so it is downloaded like any document.
INLINE_PREFIXES = ("image/", "audio/", "video/")
NEVER_INLINE = ("image/svg+xml",)
SWEEP_BATCH = 500
SWEEP_BATCHES = 20  # per run: a backlog is worked off over several runs, never in one long stall
COPY_CHUNK = 1 << 16


def inline(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip()
    return kind.startswith(INLINE_PREFIXES) and kind not in NEVER_INLINE and "xml" not in kind


def disposition(filename: str, content_type: str) -> bytes:
    """RFC 6266: the name in UTF-8 (filename*) and an ASCII fallback without quotes."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in filename)
    kind = "inline" if inline(content_type) else "attachment"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}".encode("ascii")


def put_signature(key: bytes, slot: str, filename: str, size: int, content_type: str, expires: int) -> str:
    """The HMAC-SHA-256 a PUT URL carries (the XMPP side signs, this side checks), bound to
    everything the slot allows: its id, file name, size, content type and expiry."""
    message = "\0".join((slot, filename, str(size), content_type, str(expires))).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _watch(request: server.Request) -> list[bool]:
    """A list that gets an entry once the request is over (answered, or the client gone)."""
    over: list[bool] = []
    request.notifyFinish().addBoth(lambda _: over.append(True))
    return over


def _is_slot_id(text: str) -> bool:
    return 16 <= len(text) <= 64 and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in text)


def _status(request: server.Request, code: int, text: str) -> None:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.write(f"{text}\n".encode())
    request.finish()


class Refused(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


class UploadResource(resource.Resource):
    """/upload/<slot>/<name>: PUT once, with the signed URL; GET and HEAD after."""

    isLeaf = True

    def __init__(self, store: Any, clock: IReactorTime, folder: Path, key: bytes, metrics: Metrics,
                 file_lifetime_days: int) -> None:
        super().__init__()
        self.store = store
        self.clock = clock
        self.folder = folder
        self.key = key
        self.metrics = metrics
        self.file_lifetime = file_lifetime_days * 86400.0

    def _target(self, request: server.Request) -> tuple[str, str] | None:
        """(slot, name) from /upload/<slot>/<name>, or None for any other path."""
        path = request.postpath or []
        if len(path) != 2:
            return None
        try:
            slot, name = path[0].decode("ascii"), path[1].decode("utf-8")
        except UnicodeDecodeError:
            return None
        return (slot, name) if _is_slot_id(slot) and name else None

    # -- PUT ------------------------------------------------------------------

    def render_PUT(self, request: server.Request) -> Any:
        target = self._target(request)
        now = self.clock.seconds()
        try:
            if target is None:
                raise Refused(403, "not an upload slot")
            expires_text = (request.args or {}).get(b"expires", [b""])[0]
            signature = (request.args or {}).get(b"signature", [b""])[0]
            if not expires_text.isdigit() or not signature:
                raise Refused(403, "the PUT URL is not signed")
            expires = int(expires_text)
            if expires <= now:
                raise Refused(403, "the slot has expired: ask for another")
        except Refused as refusal:
            return self._refuse(request, refusal)
        slot, name = target
        over = _watch(request)

        def check(found: Upload | None) -> Deferred[Any]:
            if found is None or found.filename != name:
                raise Refused(403, "no such slot")
            wanted = put_signature(self.key, slot, found.filename, found.size, found.content_type, expires)
            if not hmac.compare_digest(wanted.encode(), signature):  # constant time
                raise Refused(403, "the PUT URL's signature is wrong")
            if found.state != "open":
                raise Refused(403, "the slot has been used")
            self._check_body(request, found)
            claimed: Deferred[Any] = self.store.run(partial(claim, slot=slot, now=now))
            return claimed.addCallback(write, found)

        def write(claimed: bool, found: Upload) -> Deferred[Any]:
            if not claimed:
                raise Refused(403, "the slot has been used")
            try:
                self._write(request, found)
            except OSError:
                log.failure("upload.write_failed slot={slot}", slot=slot)
                self.store.run(partial(forget, slot=slot))
                raise Refused(500, "the file could not be kept") from None
            expires_at = now + self.file_lifetime if self.file_lifetime else None
            done: Deferred[Any] = self.store.run(partial(stored, slot=slot, now=now, expires_at=expires_at))
            return done.addCallback(recorded, found)

        def recorded(still_there: bool, found: Upload) -> None:
            if not still_there:  # the account went while the file was written
                self._remove(slot)
                raise Refused(403, "no such slot")
            self.metrics.upload_stored(found.size)
            log.info("upload.stored {owner} size={size}", owner=found.owner, size=found.size)
            request.setResponseCode(201)
            request.setHeader(b"content-length", b"0")
            request.finish()

        def failed(reason: Failure) -> None:
            if reason.check(Refused):
                self._refuse(request, reason.value, over)  # type: ignore[arg-type]
                return
            log.failure("upload.put_failed", reason)
            if not over:
                _status(request, 500, "internal error")

        d: Deferred[Any] = self.store.run_read(partial(upload, slot=slot))
        d.addCallback(check).addErrback(failed)
        return server.NOT_DONE_YET

    def _check_body(self, request: server.Request, found: Upload) -> None:
        """Section 6: the Content-Length is the slot's size, the Content-Type (if any) its type."""
        length = request.getHeader(b"content-length")
        if length is None:
            raise Refused(411, "Content-Length is required")
        if not length.isdigit():
            raise Refused(400, "bad Content-Length")
        declared = int(length)
        if declared > found.size:
            raise Refused(413, f"the slot is for {found.size} bytes")
        content = request.content
        received = content.seek(0, os.SEEK_END) if content is not None else 0
        if declared != found.size or received != declared:
            raise Refused(400, f"the slot is for {found.size} bytes")
        given = request.getHeader(b"content-type")
        if given is not None and given.decode("latin-1").strip().lower() != found.content_type:
            raise Refused(400, f"the slot is for {found.content_type}")

    def _write(self, request: server.Request, found: Upload) -> None:
        """The body to ``<slot>.part``, then renamed: a file is on disk whole or not at all."""
        content = request.content
        assert content is not None
        content.seek(0)
        final = self.folder / found.slot
        partial_file = self.folder / f"{found.slot}.part"
        descriptor = os.open(partial_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as out:
                shutil.copyfileobj(content, out, COPY_CHUNK)
            os.replace(partial_file, final)
        except OSError:
            partial_file.unlink(missing_ok=True)
            raise

    def _refuse(self, request: server.Request, refusal: Refused, over: list[bool] | None = None) -> Any:
        self.metrics.upload_refused(refusal.code)
        log.info("upload.put_refused code={code} reason={reason}", code=refusal.code, reason=refusal.text)
        if not over:
            _status(request, refusal.code, refusal.text)
        return server.NOT_DONE_YET

    def _remove(self, slot: str) -> None:
        for path in (self.folder / slot, self.folder / f"{slot}.part"):
            path.unlink(missing_ok=True)

    # -- GET and HEAD -----------------------------------------------------------

    def render_GET(self, request: server.Request) -> Any:
        target = self._target(request)
        if target is None:
            _status(request, 404, "not found")
            return server.NOT_DONE_YET
        slot, name = target
        now = self.clock.seconds()
        over = _watch(request)

        def serve(found: Upload | None) -> None:
            if over:
                return
            if (found is None or found.filename != name or found.state != STORED
                    or (found.expires_at is not None and found.expires_at <= now)):
                _status(request, 404, "not found")
                return
            try:
                handle = open(self.folder / found.slot, "rb")  # noqa: SIM115 - closed when sent
            except OSError:
                _status(request, 404, "not found")
                return
            size = os.fstat(handle.fileno()).st_size
            wanted = byte_range(request.getHeader(b"range"), size)
            for header, value in SECURITY_HEADERS.items():
                request.setHeader(header, value)
            request.setHeader(b"accept-ranges", b"bytes")
            if wanted == UNSATISFIABLE:
                handle.close()
                request.setHeader(b"content-range", b"bytes */%d" % size)
                _status(request, 416, "range not satisfiable")
                return
            request.setHeader(b"content-type", found.content_type.encode("ascii"))
            request.setHeader(b"content-disposition", disposition(found.filename, found.content_type))
            body: Any = handle
            if wanted is None:
                request.setHeader(b"content-length", b"%d" % size)
            else:
                first, last = wanted
                request.setResponseCode(206)
                request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, last, size))
                request.setHeader(b"content-length", b"%d" % (last - first + 1))
                handle.seek(first)
                body = _Slice(handle, last - first + 1)
            if request.method == b"HEAD":
                handle.close()
                request.finish()
                return

            def sent(_: object) -> None:
                handle.close()
                if not over:
                    request.finish()

            FileSender().beginFileTransfer(body, request).addBoth(sent)  # paced by the connection

        def failed(reason: Failure) -> None:
            log.failure("upload.get_failed", reason)
            if not over:
                _status(request, 500, "internal error")

        d: Deferred[Any] = self.store.run_read(partial(upload, slot=slot))
        d.addCallback(serve).addErrback(failed)
        return server.NOT_DONE_YET

    render_HEAD = render_GET


UNSATISFIABLE = (-1, -1)


def byte_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """RFC 9110 section 14: the one range of a ``Range: bytes=...`` header as (first, last), None
    to send the whole file (no header, one not understood, or several ranges: a server may ignore
    Range), UNSATISFIABLE for a range past the end. Browsers' players seek with it."""
    if header is None or not header.startswith(b"bytes=") or b"," in header:
        return None
    first_text, dash, last_text = header[6:].strip().partition(b"-")
    if not dash or not (first_text.isdigit() or first_text == b"") or not (last_text.isdigit() or last_text == b""):
        return None
    if first_text == b"":  # the last N bytes
        if last_text == b"" or int(last_text) == 0:
            return None if last_text == b"" else UNSATISFIABLE
        return (max(size - int(last_text), 0), size - 1) if size else UNSATISFIABLE
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
    if first >= size:
        return UNSATISFIABLE
    return None if last < first else (first, last)


class _Slice:
    """A file read from where it stands for *length* bytes at most (a range's body for FileSender)."""

    def __init__(self, handle: Any, length: int) -> None:
        self.handle = handle
        self.left = length

    def read(self, size: int) -> bytes:
        data = self.handle.read(min(size, self.left)) if self.left > 0 else b""
        self.left -= len(data)
        return bytes(data)


class Sweeper:
    """The periodic clean-up: rows that are due (slots closed unused, abandoned claims, expired
    files) go with their files; then files on disk with no row (a deleted account's: its rows
    went by ON DELETE CASCADE) go too."""

    def __init__(self, store: Any, clock: IReactorTime, folder: Path) -> None:
        self.store = store
        self.clock = clock
        self.folder = folder
        self.running: Deferred[Any] | None = None

    def sweep(self) -> Deferred[Any] | None:
        if self.running is not None:
            return None  # the last run has not finished: skip this one
        self.running = d = maybeDeferred(self._rows, 0)  # a store that refuses at once is logged too
        d.addCallback(lambda _: self._orphans())
        d.addErrback(lambda reason: log.failure("upload.sweep_failed", reason))
        d.addBoth(self._done)
        return d

    def _done(self, result: object) -> None:
        self.running = None

    def _rows(self, batches: int) -> Deferred[Any]:
        d: Deferred[list[str]] = self.store.run(partial(sweep, now=self.clock.seconds(), limit=SWEEP_BATCH))

        def removed(slots: list[str]) -> Deferred[Any] | None:
            for slot in slots:
                self._unlink(slot)
            if slots:
                log.info("upload.swept rows={rows}", rows=len(slots))
            if len(slots) == SWEEP_BATCH and batches + 1 < SWEEP_BATCHES:
                return self._rows(batches + 1)
            return None

        return d.addCallback(removed)

    def _orphans(self) -> Deferred[Any]:
        try:
            names = os.listdir(self.folder)
        except OSError:
            names = []
        # Only what this feature writes there: a slot id, or one with ".part" (never the key file,
        # nor anything an operator put in the folder).
        slots = sorted({slot for slot in (name.removesuffix(".part") for name in names) if _is_slot_id(slot)})
        d: Deferred[set[str]] = self.store.run_read(partial(known, slots=slots))

        def remove_unknown(found: set[str]) -> None:
            gone = [slot for slot in slots if slot not in found]
            for slot in gone:
                self._unlink(slot)
            if gone:
                log.info("upload.orphans_removed files={files}", files=len(gone))

        return d.addCallback(remove_unknown)

    def _unlink(self, slot: str) -> None:
        for path in (self.folder / slot, self.folder / f"{slot}.part"):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                log.failure("upload.unlink_failed slot={slot}", slot=slot)

