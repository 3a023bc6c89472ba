"""XEP-0156 discovery of the WebSocket endpoint: ``/.well-known/host-meta`` (an XRD, RFC 6415) and
``/.well-known/host-meta.json`` (its JSON form), built from ``[http] public_url``. Browser clients
(Converse.js, Movim, xmpp.js) read one of them to find where to connect for a domain."""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

from twisted.web import resource, server

NS_XRD = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
WEBSOCKET_LINK_REL = "urn:xmpp:alt-connections:websocket"  # XEP-0156 section 3


def websocket_url(public_url: str, path: str) -> str:
    """The WebSocket endpoint's URL at *path* under *public_url*: wss:// for https://, ws://
    for http://."""
    parts = urlsplit(public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/" + path.lstrip("/"), "", ""))


def _escaped(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")
            .replace('"', "&quot;"))


class HostMeta(resource.Resource):
    """Both documents; public and the same for every domain this server hosts."""

    isLeaf = True

    def __init__(self, url: str, as_json: bool) -> None:
        super().__init__()
        if as_json:
            self.body = json.dumps({"links": [{"rel": WEBSOCKET_LINK_REL, "href": url}]}).encode("utf-8")
            self.content_type = b"application/json"
        else:
            self.body = (f"<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='{NS_XRD}'>\n"
                         f"  <Link rel='{WEBSOCKET_LINK_REL}' href='{_escaped(url)}'/>\n</XRD>\n").encode()
            self.content_type = b"application/xrd+xml"

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802 - Twisted's name
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"x-content-type-options", b"nosniff")
        # XEP-0156 section 3: web clients on other origins read it (CORS), and it is public.
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"cache-control", b"max-age=3600")
        return self.body


def well_known(public_url: str, websocket_path: str) -> resource.Resource:
    """The ``/.well-known`` folder with host-meta and host-meta.json, naming the WebSocket endpoint
    served at *websocket_path*."""
    url = websocket_url(public_url, websocket_path)
    folder = resource.Resource()
    folder.putChild(b"host-meta", HostMeta(url, as_json=False))
    folder.putChild(b"host-meta.json", HostMeta(url, as_json=True))
    return folder
