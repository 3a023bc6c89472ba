"""A bare XMPP client for what slixmpp cannot do (SASL OAUTHBEARER) or hides (raw stream answers)."""

from __future__ import annotations

import asyncio
import base64
import ssl

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>")


class RawStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, domain: str) -> None:
        self.reader = reader
        self.writer = writer
        self.domain = domain

    @classmethod
    async def open_tls(cls, port: int, domain: str = "localhost") -> RawStream:
        """Connect, STARTTLS, and return the stream after the second stream header's features."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream = cls(reader, writer, domain)
        await stream.restart()
        await stream.send_and_read("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", b"/>")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        await writer.start_tls(context, server_hostname=domain)
        stream.features = await stream.restart()
        return stream

    async def restart(self) -> str:
        self.writer.write(HEADER.format(domain=self.domain).encode())
        return (await self.reader.readuntil(b"</stream:features>")).decode()

    async def send_and_read(self, xml: str, until: bytes) -> str:
        self.writer.write(xml.encode())
        return (await self.reader.readuntil(until)).decode()

    async def auth(self, mechanism: str, payload: bytes) -> str:
        """Send <auth/>; return the server's first answer (challenge, success or failure)."""
        encoded = base64.b64encode(payload).decode() if payload else "="
        answer = await self.send_and_read(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{encoded}</auth>", b">")
        return answer + await self._rest_of(answer)

    async def respond(self, payload: bytes) -> str:
        encoded = base64.b64encode(payload).decode() if payload else "="
        answer = await self.send_and_read(
            f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{encoded}</response>", b">")
        return answer + await self._rest_of(answer)

    async def _rest_of(self, start: str) -> str:
        for name in ("challenge", "failure"):
            if start.startswith(f"<{name}") and not start.endswith("/>"):
                return (await self.reader.readuntil(f"</{name}>".encode())).decode()
        return ""

    async def log_in_plain(self, user: str, password: str, resource: str = "raw") -> str:
        """PLAIN, stream restart and resource binding; returns the bound JID."""
        answer = await self.auth("PLAIN", f"\0{user}\0{password}".encode())
        assert answer.startswith("<success"), answer
        await self.restart()
        bound = await self.send_and_read(
            f"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}"
            "</resource></bind></iq>", b"</iq>")
        return bound.split("<jid>")[1].split("</jid>")[0]

    def close(self) -> None:
        self.writer.close()
