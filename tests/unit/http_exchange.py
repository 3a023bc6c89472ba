"""Raw HTTP/1.1 against the HTTP side's real Site, over StringTransport: no sockets, no global reactor."""

from __future__ import annotations

from dataclasses import dataclass, field
from http.cookies import SimpleCookie

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import StringTransport
from twisted.web.server import Site


@dataclass
class Response:
    code: int
    headers: dict[str, list[str]]
    body: bytes
    raw: bytes = field(repr=False, default=b"")

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for line in self.headers.get("set-cookie", []):
            jar.load(line)
        return {name: morsel.value for name, morsel in jar.items()}


def parse_response(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split(" ")[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if headers.get("transfer-encoding") == ["chunked"]:
        chunks, rest = [], body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            chunks.append(rest[:size])
            rest = rest[size + 2:]
        body = b"".join(chunks)
    return Response(code, headers, body, raw)


class Connection:
    """One client connection to *site* from *host*."""

    def __init__(self, site: Site, host: str = "198.51.100.7", port: int = 40000) -> None:
        self.peer = IPv4Address("TCP", host, port)
        self.transport = StringTransport(peerAddress=self.peer)
        protocol = site.buildProtocol(self.peer)
        self.refused = protocol is None
        self.protocol: IProtocol | None = protocol
        if protocol is not None:
            protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(data)

    def close(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        if self.protocol is not None:
            self.protocol.connectionLost(Failure(ConnectionDone()))
            self.protocol = None

    @property
    def closed(self) -> bool:
        """Whether the server has closed (or we closed) the connection; a close the server asked
        for is completed here, as a real transport would report it."""
        if self.protocol is not None and (self.transport.disconnecting or self.transport.disconnected):
            self.close()
        return self.protocol is None


def request(site: Site, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"",
            host: str = "198.51.100.7") -> Response:
    """One request on its own connection (``Connection: close``), answered synchronously."""
    connection = Connection(site, host)
    lines = [f"{method} {target} HTTP/1.1", "Host: xmpp.example", "Connection: close"]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    connection.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    raw = connection.transport.value()
    connection.close()
    assert raw, f"no answer to {method} {target}"
    return parse_response(raw)
