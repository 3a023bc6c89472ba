"""A provider that accepts connections on 127.0.0.1 and never answers: a hung social site."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress, IReactorTCP
from twisted.internet.protocol import Protocol, ServerFactory


class _Silent(Protocol):
    def __init__(self, server: SilentServer) -> None:
        self.server = server

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        pass  # read the request, answer nothing

    def connectionLost(self, reason: Any = None) -> None:
        if self in self.server.connections:
            self.server.connections.remove(self)


class _SilentFactory(ServerFactory):
    def __init__(self, server: SilentServer) -> None:
        self.server = server

    def buildProtocol(self, addr: IAddress | None) -> _Silent:
        return _Silent(self.server)


class SilentServer:
    """Listen on a free loopback port; every connection is accepted and left hanging."""

    def __init__(self) -> None:
        self.connections: list[_Silent] = []
        self._port: Any = None  # the IListeningPort while listening

    def listen(self, reactor: IReactorTCP) -> str:
        """Start listening; return the base URL, ``http://127.0.0.1:<port>``."""
        self._port = reactor.listenTCP(0, _SilentFactory(self), interface="127.0.0.1")
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port.getHost().port}"

    def close(self) -> Deferred[Any]:
        """Stop listening and drop the connections that are still waiting."""
        for connection in list(self.connections):
            transport: Any = connection.transport
            if transport is not None:
                transport.abortConnection()
        port, self._port = self._port, None
        return maybeDeferred(port.stopListening) if port is not None else maybeDeferred(lambda: None)
