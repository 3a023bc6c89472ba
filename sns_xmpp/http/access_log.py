"""The HTTP access log, without query strings: callbacks carry tokens, signatures and codes there."""

from __future__ import annotations

from twisted.web import http


def query_free_log_line(timestamp: str, request: http.Request) -> str:
    peer = request.getClientAddress()
    method = request.method.decode("ascii", "replace")
    path = (request.path or b"").decode("ascii", "replace")
    return f'"{getattr(peer, "host", "-")}" - - {timestamp} "{method} {path}" {request.code} {request.sentLength}'

