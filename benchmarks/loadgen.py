"""The load generator: a small asyncio XMPP client, run by `benchmarks.run` in a process of its own.

It speaks just enough of RFC 6120/6121 for the benchmark: the stream, STARTTLS, SASL PLAIN and
SCRAM-SHA-256/SCRAM-SHA-1, resource binding, the legacy session, presence and chat messages; and
of SASL2, Bind2 and FAST (XEP-0388, XEP-0386, XEP-0484) what a FAST login with ``HT-SHA-256-NONE``
needs. Credentials come from a provider named in the job: pre-created local accounts, social
logins with tokens made here (``hmac`` signatures, ``oidc`` RS256 ID tokens), or devices set up
before the timed part (``fast`` tokens, ``device`` passwords).
Incoming XML goes through expat (``XMLPullParser``) and outgoing stanzas are preformatted
strings, so the generator spends much less CPU per stanza than the server it measures.

The runner and the generator talk in JSON lines. The runner writes the job as the first line
of stdin. A job has one or more timed stages. For each, the generator prepares what the stage
needs and prints ``{"event": "ready"}``; the runner samples CPU times and memory and answers
``go``; the generator runs the timed part and prints ``{"event": "measured", "more": ..., ...}``
with its figures; the runner samples again and answers ``next`` when ``more`` says another
stage follows, else ``stop``. After the last stage the generator tears down and prints
``{"event": "done"}``. A fatal problem is printed as ``{"event": "error", "message": ...}``
and ends the process with status 1.

Stages let one set-up serve several measurements: the message phase's open-loop run follows
its closed-loop run on the same logged-in clients (at a rate taken from the closed loop), and
the idle phase grows its held connections stage by stage (2,000, then 10,000) on one daemon,
then lets a few pairs chat while all of them are held.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import base64
import hashlib
import hmac
import http.client
import itertools
import json
import math
import resource
import secrets
import socket
import ssl
import sys
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_CLIENT = "jabber:client"
NS_SASL2 = "urn:xmpp:sasl:2"
NS_BIND2 = "urn:xmpp:bind:0"
NS_FAST = "urn:xmpp:fast:0"

FEATURES = f"{{{NS_STREAMS}}}features"
STREAM_ERROR = f"{{{NS_STREAMS}}}error"
STARTTLS = f"{{{NS_TLS}}}starttls"
PROCEED = f"{{{NS_TLS}}}proceed"
MECHANISMS = f"{{{NS_SASL}}}mechanisms"
MECHANISM = f"{{{NS_SASL}}}mechanism"
CHALLENGE = f"{{{NS_SASL}}}challenge"
SUCCESS = f"{{{NS_SASL}}}success"
BIND = f"{{{NS_BIND}}}bind"
BOUND_JID = f"{{{NS_BIND}}}jid"
SESSION = f"{{{NS_SESSION}}}session"
IQ = f"{{{NS_CLIENT}}}iq"
MESSAGE = f"{{{NS_CLIENT}}}message"
PRESENCE = f"{{{NS_CLIENT}}}presence"
BODY = f"{{{NS_CLIENT}}}body"
AUTHENTICATION = f"{{{NS_SASL2}}}authentication"
SASL2_MECHANISM = f"{{{NS_SASL2}}}mechanism"
SASL2_SUCCESS = f"{{{NS_SASL2}}}success"
AUTHORIZATION_IDENTIFIER = f"{{{NS_SASL2}}}authorization-identifier"
ADDITIONAL_DATA = f"{{{NS_SASL2}}}additional-data"
FAST_OFFER = f"{{{NS_SASL2}}}inline/{{{NS_FAST}}}fast/{{{NS_FAST}}}mechanism"
FAST_TOKEN = f"{{{NS_FAST}}}token"
HT_SHA_256_NONE = "HT-SHA-256-NONE"
# Bind2 inline in <authenticate/>: the session is bound in the same round trip.
BIND2 = f"<bind xmlns='{NS_BIND2}'><tag>bench</tag></bind>"

# Most errors worth reporting are of a few kinds; beyond this many distinct
# messages the rest are counted under one key.
MAX_ERROR_KINDS = 20


class XMPPError(Exception):
    """The server answered something a well-behaved login or session does not expect."""


# -- credentials -------------------------------------------------------------------------


@dataclass
class FastDevice:
    """One simulated device of a social account that logs in with FAST (XEP-0484).

    It keeps what its last login gave it: the token (a login that rotates it hands over the new one) and the count
    to send next (it grows from login to login with one token and starts at 1 with a new one).
    While one of its logins is under way it is out of its pool (``free``), so that no two
    logins race for its token.
    """

    user: str  # the FAST authcid: the localpart of the JID the social login bound
    agent: str  # its <user-agent id>, under which the server keeps its token
    token: str
    free: deque[FastDevice] = field(repr=False, compare=False)
    count: int = 1

    def rotated(self, token: str | None) -> None:
        """A login with the token went through; *token*: the new one it carried, if any."""
        if token:
            self.token, self.count = token, 1
        else:
            self.count += 1


@dataclass(frozen=True)
class Credentials:
    """What one login attempt authenticates with: the SASL user name, its password and mechanism.

    A FAST login has a *device* instead: its token is the secret, and the login updates it.
    """

    username: str
    password: str
    mechanism: str
    device: FastDevice | None = None


CredentialsProvider = Callable[[int], Credentials]
"""Gives the credentials for the n-th login attempt of a phase (n counts from 0)."""


def local_accounts(spec: Mapping[str, Any]) -> CredentialsProvider:
    """Pre-created local accounts ``<prefix><i>``, i cycling through ``count``, all with one password."""
    prefix, count = str(spec["prefix"]), int(spec["count"])
    password, mechanism = str(spec["password"]), str(spec["mechanism"])

    def credentials(attempt: int) -> Credentials:
        return Credentials(f"{prefix}{attempt % count}", password, mechanism)

    return credentials


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_json(value: Any) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


def hmac_tokens(spec: Mapping[str, Any]) -> CredentialsProvider:
    """Social logins at an ``hmac`` site (docs/sites.md), signed here afresh for every attempt.

    The identifier is ``<prefix><i>.<session>.<expires>.<kid>`` with i cycling through
    ``users``, a new random session id each time and ``expires`` ``lifetime`` seconds ahead;
    the password is the unpadded base64url HMAC-SHA256, under ``key``, of
    ``"sns-xmpp-hmac-v1:" + site + ":" + identifier``. The user name is ``<identifier>@<site>``.
    """
    site, kid, key = str(spec["site"]), str(spec["kid"]), str(spec["key"]).encode()
    prefix, users, lifetime = str(spec["prefix"]), int(spec["users"]), int(spec["lifetime"])
    mechanism = str(spec["mechanism"])

    def credentials(attempt: int) -> Credentials:
        identifier = f"{prefix}{attempt % users}.{secrets.token_hex(8)}.{int(time.time()) + lifetime}.{kid}"
        mac = hmac.digest(key, f"sns-xmpp-hmac-v1:{site}:{identifier}".encode(), "sha256")
        return Credentials(f"{identifier}@{site}", _b64url(mac), mechanism)

    return credentials


def oidc_tokens(spec: Mapping[str, Any]) -> CredentialsProvider:
    """Social logins at an ``oidc`` site with RS256 ID tokens, all minted here before the timed part.

    ``tokens`` tokens, the n-th for subject ``<prefix><n % users>``, signed with the RSA key in
    ``key_file`` (published by the benchmark's provider under ``kid``), with ``iss``, ``aud``,
    ``sub``, ``iat``, ``exp`` (``lifetime`` seconds ahead), ``name`` and a fresh ``nonce``
    each. The daemon accepts only nonces it issued: ``<random>.<HMAC-SHA256>`` of the random
    bytes under the install's secret (``nonce_secret``, hex, which the runner wrote into the
    daemon's data folder), as `sns_xmpp.sites.oidc_tokens.NonceKey` makes them. Attempts cycle through
    the tokens; the user name is ``<sub>@<site>``.
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    site, kid, mechanism = str(spec["site"]), str(spec["kid"]), str(spec["mechanism"])
    prefix, users, count, lifetime = str(spec["prefix"]), int(spec["users"]), int(spec["tokens"]), int(spec["lifetime"])
    with open(str(spec["key_file"]), "rb") as pem:
        key = serialization.load_pem_private_key(pem.read(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{spec['key_file']} does not hold an RSA private key")
    secret = bytes.fromhex(str(spec["nonce_secret"]))
    nonce_context = b"sns-xmpp oidc nonce\0" + site.encode() + b"\0"
    header = _b64url_json({"alg": "RS256", "typ": "JWT", "kid": kid})
    now = int(time.time())
    minted = []
    for index in range(max(1, count)):
        random = secrets.token_bytes(16)
        nonce = f"{_b64url(random)}.{_b64url(hmac.digest(secret, nonce_context + random, 'sha256'))}"
        sub = f"{prefix}{index % users}"
        claims = {"iss": spec["issuer"], "aud": spec["client_id"], "sub": sub, "iat": now, "exp": now + lifetime,
                  "nonce": nonce, "name": f"Bench User {index % users}"}
        signing_input = f"{header}.{_b64url_json(claims)}"
        signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        minted.append(Credentials(f"{sub}@{site}", f"{signing_input}.{_b64url(signature)}", mechanism))

    def credentials(attempt: int) -> Credentials:
        return minted[attempt % len(minted)]

    return credentials


# Credentials providers by the name a job gives in ``credentials.provider``;
# each takes the job's ``credentials`` table.
PROVIDERS: dict[str, Callable[[Mapping[str, Any]], CredentialsProvider]] = {
    "local": local_accounts,
    "hmac": hmac_tokens,
    "oidc": oidc_tokens,
}


def credentials_provider(spec: Mapping[str, Any]) -> CredentialsProvider:
    name = spec.get("provider")
    if name not in PROVIDERS:
        raise ValueError(f"unknown credentials provider {name!r}; known: {', '.join(PROVIDERS)}")
    return PROVIDERS[name](spec)


# -- SASL --------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}

# PBKDF2 results by (hash, password, salt, iterations). Real clients keep the
# salted password too; here it keeps thousands of logins of accounts that share
# one password and salt from costing the generator a PBKDF2 each.
_salted_passwords: dict[tuple[str, str, bytes, int], bytes] = {}


def _salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    key = (hash_name, password, salt, iterations)
    salted = _salted_passwords.get(key)
    if salted is None:
        salted = _salted_passwords[key] = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)
    return salted


class ScramClient:
    """The client side of SCRAM-SHA-1/-256 (RFC 5802, RFC 7677) without channel binding.

    The password is used as UTF-8 without SASLprep, which is right for the ASCII
    passwords the benchmark uses.
    """

    def __init__(self, mechanism: str, username: str, password: str) -> None:
        self.hash_name = _SCRAM_HASHES[mechanism]
        self.password = password
        self.nonce = secrets.token_urlsafe(18)
        name = username.replace("=", "=3D").replace(",", "=2C")
        self.client_first_bare = f"n={name},r={self.nonce}"
        self.expected_verifier = b""

    def first(self) -> bytes:
        return f"n,,{self.client_first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attributes = dict(part.split("=", 1) for part in text.split(","))
        nonce = attributes.get("r", "")
        if not nonce.startswith(self.nonce) or nonce == self.nonce:
            raise XMPPError("SCRAM: the server's nonce does not extend ours")
        salted = _salted_password(self.hash_name, self.password, base64.b64decode(attributes["s"]),
                                  int(attributes["i"]))
        client_key = hmac.digest(salted, b"Client Key", self.hash_name)
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        without_proof = f"c={_b64(b'n,,')},r={nonce}"
        auth_message = f"{self.client_first_bare},{text},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, self.hash_name)
        proof = bytes(k ^ s for k, s in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", self.hash_name)
        self.expected_verifier = b"v=" + _b64(hmac.digest(server_key, auth_message, self.hash_name)).encode()
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify(self, server_final: bytes) -> None:
        if not hmac.compare_digest(server_final, self.expected_verifier):
            raise XMPPError("SCRAM: the server's signature is wrong")


# -- the XML stream ----------------------------------------------------------------------


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _describe(element: ET.Element) -> str:
    """``failure/not-authorized`` and the like, for error messages."""
    children = [_local_name(child.tag) for child in element if _local_name(child.tag) != "text"]
    return _local_name(element.tag) + (f"/{children[0]}" if children else "")


def _stream_parser() -> ET.XMLPullParser[ET.Element]:
    return ET.XMLPullParser(("start", "end"))


def _events(parser: ET.XMLPullParser[ET.Element]) -> Iterator[tuple[str, ET.Element]]:
    # Only "start" and "end" were asked for, and both come with an element.
    return cast(Iterator[tuple[str, ET.Element]], parser.read_events())


class Connection(asyncio.Protocol):
    """One client stream: bytes in through an incremental parser, top-level elements out.

    Elements arrive either in an inbox that coroutines read with `next_element`, or,
    once `on_stanza` is set, straight at that callback (the cheap path for traffic).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_stanza: Callable[[ET.Element], None] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox: deque[ET.Element] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._problem: Exception | None = None
        self._parser = _stream_parser()
        self._root: ET.Element | None = None
        self._depth = 0
        self.domain: str | None = None  # the stream's, once opened

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # As real clients do (and asyncio already does for TCP): a small request is not held
        # back by Nagle's algorithm, so a login's latency is the daemon's, not our stack's.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed(data)
        except ET.ParseError as error:
            self._stop(XMPPError(f"not well-formed XML from the server: {error}"))
            if self.transport is not None:
                self.transport.abort()
            return
        for event, element in _events(self._parser):
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self._root = element
            else:
                self._depth -= 1
                if self._depth == 1:
                    assert self._root is not None
                    self._root.remove(element)  # the stream document must not grow
                    self._received(element)
                elif self._depth == 0:
                    self._stop(XMPPError("the server closed the stream"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop(XMPPError(f"connection lost: {exc}" if exc else "connection closed"))
        if not self.lost.done():
            self.lost.set_result(None)

    # elements

    def _received(self, element: ET.Element) -> None:
        if self.on_stanza is not None:
            self.on_stanza(element)
            return
        self._inbox.append(element)
        self._wake()

    def _stop(self, problem: Exception) -> None:
        if self._problem is None:
            self._problem = problem
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_element(self) -> ET.Element:
        while not self._inbox:
            if self._problem is not None:
                raise self._problem
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._inbox.popleft()

    async def expect(self, tag: str) -> ET.Element:
        element = await self.next_element()
        if element.tag != tag:
            raise XMPPError(f"expected {_local_name(tag)}, got {_describe(element)}")
        return element

    # output and stream restarts

    def send(self, data: str) -> None:
        assert self.transport is not None
        self.transport.write(data.encode())

    def stanza_writer(self) -> Callable[[bytes], None]:
        """What the traffic writes one stanza's bytes with: the transport's own write here."""
        assert self.transport is not None
        return self.transport.write

    async def open_stream(self, domain: str) -> ET.Element:
        """Send a stream header on a fresh parser; return the server's features."""
        self.domain = domain
        self._parser = _stream_parser()
        self._root, self._depth = None, 0
        self.send(f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}'"
                  f" to='{domain}' version='1.0'>")
        return await self.expect(FEATURES)

    async def start_tls(self, context: ssl.SSLContext, domain: str) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(self.transport, self, context, server_hostname=domain)
        assert transport is not None
        self.transport = transport

    async def close(self) -> None:
        """End the stream and wait until the server has closed the connection."""
        if self.transport is not None and not self.lost.done():
            self.send("</stream:stream>")
            await self.lost

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
OPEN = f"{{{NS_FRAMING}}}open"
CLOSE = f"{{{NS_FRAMING}}}close"


class WebSocketConnection(Connection):
    """A client stream over XMPP's WebSocket subprotocol (RFC 7395), as browser clients connect:
    websockets' sans-I/O protocol for the framing, each message one element. The rest of the
    generator sees a `Connection`."""

    def __init__(self, url: str) -> None:
        from websockets.client import ClientProtocol
        from websockets.typing import Subprotocol
        from websockets.uri import parse_uri

        super().__init__()
        self.protocol = ClientProtocol(parse_uri(url), subprotocols=[Subprotocol("xmpp")],
                                       max_size=1 << 20)
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode
        from websockets.http11 import Response

        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                if event.status_code != 101 and not self.opened.done():
                    self.opened.set_exception(XMPPError(f"WebSocket refused: {event.status_code}"))
                elif not self.opened.done():
                    self.opened.set_result(None)
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                try:
                    element = ET.fromstring(event.data)  # noqa: S314 - our own daemon, on loopback
                except ET.ParseError as error:
                    self._stop(XMPPError(f"not well-formed XML from the server: {error}"))
                    continue
                if element.tag == CLOSE:
                    self._stop(XMPPError("the server closed the stream"))
                elif element.tag != OPEN:
                    self._received(element)
        self._flush()  # pongs and close frames the protocol answers itself

    def connection_lost(self, exc: Exception | None) -> None:
        # Closed before the upgrade's answer (the daemon's per-address cap on HTTP connections
        # closes them as they are accepted): open_stream must fail, not wait for ever.
        if not self.opened.done():
            self.opened.set_exception(XMPPError("the connection closed before the WebSocket opened"))
        super().connection_lost(exc)

    def send(self, data: str) -> None:
        self.protocol.send_text(data.encode())
        self._flush()

    def stanza_writer(self) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            self.protocol.send_text(data)
            self._flush()
        return write

    async def open_stream(self, domain: str) -> ET.Element:
        """RFC 7395's <open/>, then the server's features (its own <open/> is passed by)."""
        await self.opened
        self.domain = domain
        self.send(f"<open xmlns='{NS_FRAMING}' to='{domain}' version='1.0'/>")
        return await self.expect(FEATURES)

    async def close(self) -> None:
        if self.transport is not None and not self.lost.done():
            self.send(f"<close xmlns='{NS_FRAMING}'/>")
            await self.lost


# asyncio's TLS protocol gives every connection a read buffer of this class attribute's size,
# 256 KiB by default, allocated and zeroed at STARTTLS: with 10,000 connections held, 2.5 GiB
# and a fifth of the generator's CPU while it logs them in. One TLS record (16 KiB) at a time
# is all a client reading small stanzas needs.
TLS_READ_BUFFER = 32 * 1024


def use_small_tls_buffers() -> None:
    """Make this process's asyncio TLS connections use `TLS_READ_BUFFER` (the generator's own tweak)."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def client_ssl_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    # The benchmark server's certificate is self-signed and made on its first start.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- logging in --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    domain: str
    tls: bool
    websocket: str | None = None  # ws:// URL: the stream over RFC 7395 on the HTTP listener instead


@dataclass
class Session:
    """A logged-in client: bound, session established, initial presence sent and echoed."""

    connection: Connection
    jid: str  # full JID

    @property
    def bare(self) -> str:
        return self.jid.split("/", 1)[0]


async def authenticate(connection: Connection, features: ET.Element, credentials: Credentials) -> None:
    offered = [element.text for element in features.iterfind(f"{MECHANISMS}/{MECHANISM}")]
    mechanism = credentials.mechanism
    if mechanism not in offered:
        raise XMPPError(f"{mechanism} not offered (offered: {', '.join(str(m) for m in offered)})")
    if mechanism == "PLAIN":
        initial = f"\x00{credentials.username}\x00{credentials.password}".encode()
        connection.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{_b64(initial)}</auth>")
        reply = await connection.next_element()
        if reply.tag != SUCCESS:
            raise XMPPError(f"PLAIN refused: {_describe(reply)}")
        return
    scram = ScramClient(mechanism, credentials.username, credentials.password)
    connection.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{_b64(scram.first())}</auth>")
    challenge = await connection.next_element()
    if challenge.tag != CHALLENGE:
        raise XMPPError(f"{mechanism} refused: {_describe(challenge)}")
    response = scram.final(base64.b64decode(challenge.text or ""))
    connection.send(f"<response xmlns='{NS_SASL}'>{_b64(response)}</response>")
    success = await connection.next_element()
    if success.tag != SUCCESS:
        raise XMPPError(f"{mechanism} refused: {_describe(success)}")
    scram.verify(base64.b64decode(success.text or ""))


async def _iq(connection: Connection, stanza_id: str, payload: str) -> ET.Element:
    connection.send(f"<iq type='set' id='{stanza_id}'>{payload}</iq>")
    reply = await connection.expect(IQ)
    if reply.get("type") != "result" or reply.get("id") != stanza_id:
        raise XMPPError(f"{stanza_id} refused: {_describe(reply)} {reply.attrib}")
    return reply


async def connect(target: Target, context: ssl.SSLContext) -> tuple[Connection, ET.Element]:
    """A connection with its stream open (after STARTTLS, for a TLS target); the features offered."""
    loop = asyncio.get_running_loop()
    if target.websocket is not None:
        url = target.websocket
        from websockets.uri import parse_uri
        where = parse_uri(url)
        _, made = await loop.create_connection(lambda: WebSocketConnection(url), where.host, where.port)
        connection: Connection = made
    else:
        _, connection = await loop.create_connection(Connection, target.host, target.port)
    try:
        features = await connection.open_stream(target.domain)
        if target.tls:
            if features.find(STARTTLS) is None:
                raise XMPPError("STARTTLS not offered")
            connection.send(f"<starttls xmlns='{NS_TLS}'/>")
            await connection.expect(PROCEED)
            await connection.start_tls(context, target.domain)
            features = await connection.open_stream(target.domain)
    except BaseException:
        connection.abort()
        raise
    return connection, features


async def sasl2_authenticate(connection: Connection, features: ET.Element, mechanism: str, initial: bytes,
                             agent: str, extra: str = "") -> ET.Element:
    """One XEP-0388 <authenticate/> with an initial response (PLAIN, HT-SHA-256-NONE); its <success/>."""
    offered = {element.text for element in features.iterfind(f"{AUTHENTICATION}/{SASL2_MECHANISM}")}
    offered |= {element.text for element in features.iterfind(f"{AUTHENTICATION}/{FAST_OFFER}")}
    if mechanism not in offered:
        raise XMPPError(f"{mechanism} not offered in SASL2 (offered: {', '.join(sorted(map(str, offered)))})")
    connection.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='{mechanism}'>"
                    f"<initial-response>{_b64(initial)}</initial-response>"
                    f"<user-agent id='{agent}'><software>sns-xmpp-bench</software></user-agent>{extra}</authenticate>")
    reply = await connection.next_element()
    if reply.tag != SASL2_SUCCESS:
        raise XMPPError(f"{mechanism} refused: {_describe(reply)} {reply.findtext(f'{{{NS_SASL2}}}text') or ''}")
    return reply


def ht_proof(token: str, role: bytes) -> bytes:
    """HMAC-SHA-256(token, role) of draft-schmaus-kitten-sasl-ht without channel binding."""
    return hmac.digest(token.encode(), role, "sha256")


async def fast_login(connection: Connection, features: ET.Element, device: FastDevice) -> str:
    """A FAST login of *device* by HT-SHA-256-NONE with Bind2 inline; the bound full JID.

    The device keeps the token the answer carries (and its count), as a real client does.
    """
    initial = device.user.encode() + b"\0" + ht_proof(device.token, b"Initiator")
    try:
        success = await sasl2_authenticate(connection, features, HT_SHA_256_NONE, initial, device.agent,
                                           f"<fast xmlns='{NS_FAST}' count='{device.count}'/>{BIND2}")
    except XMPPError:
        device.count += 1  # the server may have taken the count before it refused
        raise
    expected = _b64(ht_proof(device.token, b"Responder"))
    if success.findtext(ADDITIONAL_DATA) != expected:
        raise XMPPError("FAST: the server's HT-SHA-256-NONE answer is wrong")
    token = success.find(FAST_TOKEN)
    device.rotated(token.get("token") if token is not None else None)
    jid = success.findtext(AUTHORIZATION_IDENTIFIER)
    if not jid or "/" not in jid:
        raise XMPPError(f"FAST: Bind2 bound no resource ({jid!r})")
    return jid


async def bind(connection: Connection) -> str:
    """RFC 6120 binding after SASL1's restart, and the legacy session where offered; the full JID."""
    features = await connection.open_stream(connection_domain(connection))
    bound = await _iq(connection, "bind", f"<bind xmlns='{NS_BIND}'/>")
    jid = bound.findtext(f"{BIND}/{BOUND_JID}")
    if not jid:
        raise XMPPError("bind result without a JID")
    if features.find(SESSION) is not None:
        await _iq(connection, "session", f"<session xmlns='{NS_SESSION}'/>")
    return jid


def connection_domain(connection: Connection) -> str:
    assert connection.domain is not None
    return connection.domain


async def log_in(target: Target, credentials: Credentials, context: ssl.SSLContext) -> Session:
    """The whole login of a client: stream, [STARTTLS,] SASL, bind, session, initial presence.

    A FAST login (credentials with a device) is SASL2 instead, with Bind2 inline: no restart,
    no separate bind or session.
    """
    device = credentials.device
    try:
        connection, features = await connect(target, context)
        try:
            if device is not None:
                jid = await fast_login(connection, features, device)
            else:
                await authenticate(connection, features, credentials)
                jid = await bind(connection)
            connection.send("<presence/>")
            # The server sends the initial presence back to the client's own resource.
            while True:
                element = await connection.next_element()
                if element.tag == PRESENCE and element.get("from") == jid:
                    break
        except BaseException:
            connection.abort()
            raise
    finally:
        if device is not None:
            device.free.append(device)
    return Session(connection, jid)


# -- measuring ---------------------------------------------------------------------------


def percentiles_ms(samples_ns: Sequence[int]) -> dict[str, float | None]:
    """p50, p90, p99 and max of *samples_ns*, in milliseconds (nearest rank)."""
    if not samples_ns:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(samples_ns)

    def rank(fraction: float) -> float:
        index = max(0, math.ceil(fraction * len(ordered)) - 1)
        return round(ordered[index] / 1e6, 3)

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": round(ordered[-1] / 1e6, 3)}


@dataclass
class Errors:
    """Failed attempts counted by message."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"[:200]
        if message not in self.counts and len(self.counts) >= MAX_ERROR_KINDS:
            message = "(other errors)"
        self.counts[message] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def run_concurrently(count: int, concurrency: int, attempt: Callable[[int], Awaitable[None]]) -> None:
    """Run attempt(0) ... attempt(count - 1), at most *concurrency* at a time."""
    indexes = iter(range(count))

    async def worker() -> None:
        for index in indexes:
            await attempt(index)

    await asyncio.gather(*(worker() for _ in range(min(count, concurrency))))


async def open_sessions(target: Target, provider: CredentialsProvider, count: int, concurrency: int,
                        timeout: float, errors: Errors, first: int = 0) -> list[Session]:
    """Log in *count* clients with the credentials of attempts *first*, *first* + 1, ...

    Failures are counted in *errors* and leave out their session. *first* lets a phase add
    clients to those it holds without reusing their accounts.
    """
    context = client_ssl_context()
    sessions: list[Session | None] = [None] * count

    async def attempt(index: int) -> None:
        try:
            async with asyncio.timeout(timeout):
                sessions[index] = await log_in(target, provider(first + index), context)
        except (OSError, XMPPError, TimeoutError, ValueError) as error:
            errors.add(error)

    await run_concurrently(count, concurrency, attempt)
    return [session for session in sessions if session is not None]


async def close_sessions(sessions: Sequence[Session], timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(session.connection.close() for session in sessions))
    except TimeoutError:
        for session in sessions:
            session.connection.abort()


def teardown_timeout(job_timeout: float, sessions: int) -> float:
    """How long closing *sessions* streams may take: the daemon ends thousands of them one by one."""
    return max(job_timeout, sessions / 100)


# -- devices set up before the timed part ------------------------------------------------


async def set_up_all(count: int, concurrency: int, set_up: Callable[[int], Awaitable[None]], what: str) -> None:
    """set_up(0) ... set_up(count - 1), *concurrency* at a time; any failure fails the job."""
    errors = Errors()

    async def attempt(index: int) -> None:
        try:
            await set_up(index)
        except (OSError, XMPPError, TimeoutError, ValueError, KeyError) as error:
            errors.add(error)

    await run_concurrently(count, concurrency, attempt)
    if errors.total:
        raise RuntimeError(f"{errors.total} of {count} {what} failed: {dict(errors.counts)}")


def fast_provider(free: deque[FastDevice]) -> CredentialsProvider:
    """A free device for each attempt; `log_in` puts it back when its login ends."""

    def credentials(attempt: int) -> Credentials:
        if not free:
            raise XMPPError("no FAST device free: more logins at once than devices")
        device = free.popleft()
        return Credentials(device.user, device.token, HT_SHA_256_NONE, device)

    return credentials


async def fast_devices(job: Job, context: ssl.SSLContext) -> CredentialsProvider:
    """Devices of social accounts at an ``hmac`` site, each with a FAST token, made before the timed part.

    Each device logs in once as a phone would after the browser hand-over: SASL2 PLAIN with the
    site's signed credentials, a ``<user-agent id>`` of its own and ``<request-token
    mechanism='HT-SHA-256-NONE'/>``, over STARTTLS (the server offers SASL2 only after TLS). There
    are ``users`` devices, at least one more than ``concurrency``, one account each.
    """
    spec = job.credentials
    social = hmac_tokens({**spec, "mechanism": "PLAIN"})
    count = max(int(spec["users"]), job.concurrency + 1)
    free: deque[FastDevice] = deque()
    secure = replace(job.target, tls=True)
    request = f"<request-token xmlns='{NS_FAST}' mechanism='{HT_SHA_256_NONE}'/>"

    async def set_up(index: int) -> None:
        credentials, agent = social(index), str(uuid.uuid4())
        async with asyncio.timeout(job.timeout):
            connection, features = await connect(secure, context)
            try:
                success = await sasl2_authenticate(
                    connection, features, "PLAIN", f"\0{credentials.username}\0{credentials.password}".encode(),
                    agent, request)
                token, jid = success.find(FAST_TOKEN), success.findtext(AUTHORIZATION_IDENTIFIER) or ""
                if token is None or not token.get("token") or "@" not in jid:
                    raise XMPPError(f"no FAST token or no JID in the social login's answer ({jid!r})")
                free.append(FastDevice(jid.split("@", 1)[0], agent, str(token.get("token")), free))
            except BaseException:
                connection.abort()
                raise
            await connection.close()

    await set_up_all(count, job.concurrency, set_up, "FAST set-up logins")
    return fast_provider(free)


def handover(http_url: str, site: str, credentials: Credentials, label: str) -> tuple[str, str]:
    """The patent's browser flow for one ``hmac`` social login, then a device password made with the
    hand-over's account token (docs/protocol.md); (the JID handed over, the device password).

    Blocking, with `http.client`: the entry's 302, the site's signed return to the callback (with
    the entry's state cookie) as JSON, then ``POST devices_url`` with ``action=create``.
    """
    address = urllib.parse.urlsplit(http_url)
    web = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
    json_accept = {"Accept": "application/json"}

    def call(method: str, path: str, body: str | None = None, **headers: str) -> tuple[int, Any, bytes]:
        web.request(method, path, body=body, headers=headers)
        answer = web.getresponse()
        return answer.status, answer.headers, answer.read()

    try:
        status, headers, _ = call("GET", f"/login-using-{site}")
        if status != 302:
            raise XMPPError(f"login entry answered {status}")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(headers["location"]).query)
        cookie = "; ".join(value.split(";", 1)[0] for value in headers.get_all("set-cookie") or ())
        callback = urllib.parse.urlsplit(query["callback"][0])
        identifier = credentials.username.rsplit("@", 1)[0]
        fields = urllib.parse.urlencode({"identifier": identifier, "signature": credentials.password,
                                         "state": query["state"][0]})
        status, _, body = call("GET", f"{callback.path}?{fields}", Cookie=cookie, **json_accept)
        if status != 200:
            raise XMPPError(f"callback answered {status}: {body[:200]!r}")
        handed = json.loads(body)
        form = urllib.parse.urlencode({"token": handed["account_token"], "action": "create", "label": label})
        status, _, body = call("POST", urllib.parse.urlsplit(handed["devices_url"]).path, form,
                               **{"Content-Type": "application/x-www-form-urlencoded"}, **json_accept)
        if status != 200:
            raise XMPPError(f"devices_url answered {status}: {body[:200]!r}")
        return str(handed["jid"]), str(json.loads(body)["password"])
    finally:
        web.close()


async def device_passwords(job: Job, context: ssl.SSLContext) -> CredentialsProvider:
    """Device passwords of social accounts at an ``hmac`` site, made before the timed part.

    For each of ``users`` accounts: the browser hand-over (`handover`) and a device password,
    then one untimed login with it (the generator's PBKDF2 of each password is then cached, as a
    real client keeps its salted password). Attempts cycle through the accounts; the user name is
    the JID's localpart, the mechanism ``mechanism`` (SCRAM-SHA-256).
    """
    spec = job.credentials
    social = hmac_tokens({**spec, "mechanism": "PLAIN"})
    count, mechanism = int(spec["users"]), str(spec["mechanism"])
    minted: list[Credentials | None] = [None] * count

    async def set_up(index: int) -> None:
        jid, password = await asyncio.to_thread(handover, str(spec["http_url"]), str(spec["site"]), social(index),
                                                f"bench {index}")
        minted[index] = Credentials(jid.split("@", 1)[0], password, mechanism)

    # The HTTP side runs in threads, a few at a time: each password is two PBKDF2s in the daemon.
    await set_up_all(count, 4, set_up, "device password hand-overs")
    made = [credentials for credentials in minted if credentials is not None]

    def credentials(attempt: int) -> Credentials:
        return made[attempt % len(made)]

    warm = Errors()
    await close_sessions(await open_sessions(job.target, credentials, count, job.concurrency, job.timeout, warm),
                         job.timeout)
    if warm.total:
        raise RuntimeError(f"{warm.total} of {count} first device-password logins failed: {dict(warm.counts)}")
    return credentials


# Providers that set devices up on the running daemon before the timed part, by the name a job
# gives in ``credentials.provider``.
SET_UP_PROVIDERS: dict[str, Callable[[Job, ssl.SSLContext], Awaitable[CredentialsProvider]]] = {
    "fast": fast_devices,
    "device": device_passwords,
}


async def prepared_provider(job: Job, context: ssl.SSLContext) -> CredentialsProvider:
    """The job's credentials provider, its devices set up first where it has any."""
    set_up = SET_UP_PROVIDERS.get(str(job.credentials.get("provider")))
    return credentials_provider(job.credentials) if set_up is None else await set_up(job, context)


# -- the control channel -----------------------------------------------------------------


class Control:
    """The JSON-lines conversation with the runner on stdin and stdout."""

    def emit(self, event: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    async def expect(self, command: str) -> None:
        line = await asyncio.to_thread(sys.stdin.readline)
        if line.strip() != command:
            raise RuntimeError(f"expected {command!r} from the runner, got {line.strip()!r}")

    async def ready(self) -> None:
        """Say a stage is set up; return once the runner has sampled and answered ``go``."""
        self.emit("ready")
        await self.expect("go")

    async def measured(self, more: bool, **figures: Any) -> None:
        """Give a stage's figures; return once the runner has sampled again.

        The runner answers ``next`` when *more* says another stage follows, else ``stop``;
        until then the stage's load goes on, so the runner's sample still sees it.
        """
        self.emit("measured", more=more, **figures)
        await self.expect("next" if more else "stop")


# -- phases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    phase: str
    target: Target
    credentials: Mapping[str, Any]
    count: int = 0  # logins
    counts: tuple[int, ...] = ()  # idle connections to hold, stage by stage, ascending
    concurrency: int = 1
    pairs: int = 0  # chatting pairs (msgs; idle: beside the held connections)
    window: int = 1
    duration: float = 0.0
    open_fraction: float = 0.0  # msgs: the open loop's rate as a share of the closed loop's; 0: none
    open_duration: float = 0.0
    timeout: float = 30.0  # for one login, or one teardown
    occupants: int = 0  # room: clients in the one chat room
    peer: Target | None = None  # s2s: the federated daemon whose clients the target's clients chat with;
    # login and cluster: the cluster's second node
    layout: str = "one"  # cluster: where the pairs' clients are (cluster_phase)

    @classmethod
    def from_json(cls, text: str) -> Job:
        raw = json.loads(text)
        target = Target(**raw.pop("target"))
        peer = Target(**raw.pop("peer")) if raw.get("peer") else None
        raw.pop("peer", None)
        counts = tuple(int(count) for count in raw.pop("counts", ()))
        return cls(target=target, counts=counts, peer=peer, **raw)

    @property
    def connections(self) -> int:
        """About the most connections the job holds at once."""
        return max(self.counts, default=0) + 2 * self.pairs + self.concurrency + self.occupants


# An oidc site refuses logins (provider unavailable) until it has loaded its provider's keys.
# The runner waits until the provider has served them, and the daemon takes a moment more to
# read them: the first, untimed login tries again a few times should it come in that moment.
FIRST_LOGIN_TRIES = 20
FIRST_LOGIN_RETRY_S = 0.25


async def first_login(job: Job, provider: CredentialsProvider, context: ssl.SSLContext) -> None:
    """One untimed login, so neither side's one-time costs land in the figures."""
    for attempt in range(1, FIRST_LOGIN_TRIES + 1):
        try:
            session = await log_in(job.target, provider(0), context)
        except XMPPError:
            if attempt == FIRST_LOGIN_TRIES:
                raise
            await asyncio.sleep(FIRST_LOGIN_RETRY_S)
        else:
            await close_sessions([session], job.timeout)
            return


async def login_phase(job: Job, control: Control) -> None:
    """``count`` complete logins, each closed again, ``concurrency`` at a time.

    With a ``peer`` (the cluster phase's second node), attempts alternate between the target and
    the peer: even ones on the target, odd ones on the peer.
    """
    context = client_ssl_context()
    provider = await prepared_provider(job, context)
    targets = [job.target] if job.peer is None else [job.target, job.peer]
    for target in targets:
        await first_login(replace(job, target=target), provider, context)
    errors = Errors()
    login_ns: list[int] = []

    async def attempt(index: int) -> None:
        start = time.perf_counter_ns()
        try:
            async with asyncio.timeout(job.timeout):
                session = await log_in(targets[index % len(targets)], provider(index), context)
                logged_in = time.perf_counter_ns()
                await session.connection.close()
        except (OSError, XMPPError, TimeoutError, ValueError) as error:
            errors.add(error)
            return
        login_ns.append(logged_in - start)

    await control.ready()
    start = time.perf_counter()
    await run_concurrently(job.count, job.concurrency, attempt)
    elapsed = time.perf_counter() - start
    await control.measured(False, elapsed=elapsed, ok=len(login_ns), failed=errors.total,
                           errors=dict(errors.counts), latency_ms=percentiles_ms(login_ns))


@dataclass
class Traffic:
    """The counters of a set of chatters."""

    running: bool = True  # False once teardown begins: connections closed then are no loss
    answering: bool = True  # a closed loop: every delivery is answered with a new message
    lost: int = 0  # connections closed under a chatter
    sent: int = 0
    received: int = 0
    errors: int = 0
    delivered: int = 0  # in the timed window
    latencies_ns: list[int] = field(default_factory=list)

    async def window(self, duration: float) -> dict[str, Any]:
        """*duration* seconds of traffic: messages sent and delivered, and the deliveries' latencies."""
        self.delivered, self.latencies_ns = 0, []
        sent = self.sent
        start = time.perf_counter()
        await asyncio.sleep(duration)
        elapsed = time.perf_counter() - start
        delivered, latencies, sent = self.delivered, self.latencies_ns, self.sent - sent
        if self.lost:
            raise RuntimeError(f"{self.lost} chatting connections were lost")
        return {"elapsed": elapsed, "delivered": delivered, "sent": sent, "errors": self.errors,
                "latency_ms": percentiles_ms(latencies)}

    async def drain(self, timeout: float) -> None:
        """Stop answering, and wait until every message sent has arrived (or bounced)."""
        self.answering = False
        async with asyncio.timeout(timeout):
            while self.received < self.sent:
                await asyncio.sleep(0.05)


class Chatter:
    """One side of a pair: sends its partner messages, and in a closed loop answers each one.

    Each body is the send time in nanoseconds, so the receiver measures the latency;
    both ends live in this process and read the same monotonic clock.
    """

    def __init__(self, session: Session, partner: str, traffic: Traffic, kind: str = "chat") -> None:
        assert session.connection.transport is not None
        self.transport = session.connection.transport
        self.write = session.connection.stanza_writer()  # framed, over a WebSocket
        self.traffic = traffic
        self.head = f"<message to='{partner}' type='{kind}'><body>".encode()
        session.connection.on_stanza = self.received
        session.connection.lost.add_done_callback(self.lost)

    def send(self) -> None:
        if self.transport.is_closing():
            return
        self.write(self.head + str(time.monotonic_ns()).encode() + b"</body></message>")
        self.traffic.sent += 1

    def lost(self, _: asyncio.Future[None]) -> None:
        if self.traffic.running:
            self.traffic.lost += 1

    def received(self, element: ET.Element) -> None:
        if element.tag != MESSAGE:
            return
        traffic = self.traffic
        traffic.received += 1
        if element.get("type") == "error":
            traffic.errors += 1
            return
        latency = time.monotonic_ns() - int(element.findtext(BODY) or 0)
        traffic.delivered += 1
        traffic.latencies_ns.append(latency)
        if traffic.answering:
            self.send()


def pair_up(sessions: Sequence[Session], traffic: Traffic) -> list[Chatter]:
    """Chatters for sessions 0 and 1, 2 and 3, ...: the two of a pair write to each other."""
    chatters = []
    for a, b in zip(sessions[0::2], sessions[1::2], strict=True):
        chatters += [Chatter(a, b.bare, traffic), Chatter(b, a.bare, traffic)]
    return chatters


def start_closed_loop(chatters: Sequence[Chatter], window: int) -> None:
    """*window* messages from each chatter; each delivery is then answered with a new one."""
    for chatter in chatters:
        for _ in range(window):
            chatter.send()


async def measure_closed_loop(job: Job, control: Control, traffic: Traffic, sessions: Sequence[Session],
                              in_flight: int) -> None:
    """After a warm-up, the timed window of a closed loop already started (what the daemons' CPU is
    measured over, told to *control*); then the traffic stops, what is in flight drains and the
    sessions close."""
    await asyncio.sleep(warm_up_s(job.duration))
    await control.ready()
    closed = await traffic.window(job.duration)
    await control.measured(False, clients=len(sessions), in_flight=in_flight, **closed)
    traffic.running = False
    await traffic.drain(job.timeout)
    await close_sessions(sessions, job.timeout)


def warm_up_s(duration: float) -> float:
    """Traffic before the timed window: queues and caches at their steady state."""
    return min(1.0, duration / 5)


# How often the open loop sends what is due. Finer ticks cost the generator more CPU;
# coarser ones send bigger bursts, whose queueing shows as latency.
OPEN_LOOP_TICK_S = 0.001


async def send_at_rate(chatters: Sequence[Chatter], rate: float) -> None:
    """*rate* messages per second in all, from the chatters in turn, until cancelled.

    An open loop: sending does not wait for deliveries, so a daemon that falls behind shows
    as growing latency rather than as a lower rate. Each tick sends all that is due since the
    start, so a late tick catches up instead of lowering the rate.
    """
    turns = itertools.cycle(chatters)
    start, sent = time.monotonic(), 0
    while True:
        due = int(rate * (time.monotonic() - start)) - sent
        for _ in range(due):
            next(turns).send()
        sent += due
        await asyncio.sleep(OPEN_LOOP_TICK_S)


async def log_in_all(job: Job, provider: CredentialsProvider, count: int, first: int = 0) -> list[Session]:
    """*count* sessions for chatting; a failed login fails the phase, as its pairs would be incomplete."""
    errors = Errors()
    sessions = await open_sessions(job.target, provider, count, job.concurrency, job.timeout, errors, first)
    if errors.total:
        raise RuntimeError(f"{errors.total} of {count} logins failed: {dict(errors.counts)}")
    return sessions


async def start_chatting(job: Job, provider: CredentialsProvider,
                         first: int = 0) -> tuple[list[Session], Traffic, list[Chatter]]:
    """``job.pairs`` pairs logged in from account ``first`` on, in a closed loop, past its warm-up."""
    sessions = await log_in_all(job, provider, 2 * job.pairs, first=first)
    traffic = Traffic()
    chatters = pair_up(sessions, traffic)
    start_closed_loop(chatters, job.window)
    await asyncio.sleep(warm_up_s(job.duration))
    return sessions, traffic, chatters


async def msgs_phase(job: Job, control: Control) -> None:
    """``pairs`` pairs of clients chatting: a closed loop, then (with ``open_fraction``) an open one.

    In the closed loop each client keeps ``window`` messages in flight to its partner, so the
    rate is what the daemon can carry. The open loop then sends, from the same clients,
    ``open_fraction`` times the rate the closed loop has just reached, for ``open_duration``
    seconds: the latency of a daemon with headroom, which a closed loop cannot show (its
    latency is its queue: in-flight messages divided by the rate).
    """
    provider = credentials_provider(job.credentials)
    sessions, traffic, chatters = await start_chatting(job, provider)

    await control.ready()
    closed = await traffic.window(job.duration)
    more = job.open_fraction > 0 and job.open_duration > 0
    await control.measured(more, clients=len(sessions), in_flight=len(chatters) * job.window, **closed)
    if more:
        await traffic.drain(job.timeout)
        rate = job.open_fraction * closed["delivered"] / closed["elapsed"]
        pacer = asyncio.create_task(send_at_rate(chatters, rate))
        try:
            await asyncio.sleep(warm_up_s(job.open_duration))
            await control.ready()
            opened = await traffic.window(job.open_duration)
            await control.measured(False, clients=len(sessions), offered_per_s=rate, **opened)
        finally:
            pacer.cancel()

    traffic.running = False
    await traffic.drain(job.timeout)
    await close_sessions(sessions, job.timeout)


def count_lost(sessions: Sequence[Session]) -> int:
    return sum(1 for session in sessions if session.connection.lost.done())


async def idle_phase(job: Job, control: Control) -> None:
    """Logged-in clients that hold their connections without a word, ``counts`` of them in turn.

    Each stage logs in clients until ``counts[i]`` have been tried (the timed part; the runner
    reads the daemon's memory at its end). Then, with ``pairs``, that many pairs of further
    clients chat in a closed loop for ``duration`` seconds while all the others are held: the
    daemon must still serve the few that talk.
    """
    if not job.counts:
        raise ValueError("an idle job needs counts")
    provider = credentials_provider(job.credentials)
    await close_sessions(await open_sessions(job.target, provider, 10, 10, job.timeout, Errors()), job.timeout)
    held: list[Session] = []
    tried = 0
    for stage, count in enumerate(job.counts):
        await control.ready()
        errors = Errors()
        start = time.perf_counter()
        held += await open_sessions(job.target, provider, count - tried, job.concurrency, job.timeout, errors, tried)
        elapsed = time.perf_counter() - start
        more = stage + 1 < len(job.counts) or job.pairs > 0
        await control.measured(more, elapsed=elapsed, opened=count - tried - errors.total, held=len(held),
                               failed=errors.total, errors=dict(errors.counts), lost=count_lost(held))
        tried = count
    if job.pairs > 0:
        sessions, traffic, chatters = await start_chatting(job, provider, first=tried)
        await control.ready()
        chat = await traffic.window(job.duration)
        await control.measured(False, clients=len(sessions), in_flight=len(chatters) * job.window,
                               held=len(held) - count_lost(held), lost=count_lost(held), **chat)
        traffic.running = False
        await traffic.drain(job.timeout)
        await close_sessions(sessions, job.timeout)
    await close_sessions(held, teardown_timeout(job.timeout, len(held)))


# -- the room phase: one chat room (XEP-0045), every message to every occupant --------------

NS_MUC = "http://jabber.org/protocol/muc"
MUC_STATUS = f"{{{NS_MUC}#user}}x/{{{NS_MUC}#user}}status"
BENCH_ROOM = "bench"


class Talker(Chatter):
    """One occupant: counts (and times) every groupchat delivery, and in a closed loop sends its
    next message when its own comes back from the room (XEP-0045 section 7.4 reflects it)."""

    def __init__(self, session: Session, room: str, nick: str, traffic: Traffic) -> None:
        super().__init__(session, room, traffic, kind="groupchat")
        self.own = f"{room}/{nick}"

    def received(self, element: ET.Element) -> None:
        if element.tag != MESSAGE:
            return
        traffic = self.traffic
        if element.get("type") == "error":
            traffic.errors += 1
            traffic.received += 1
            return
        text = element.findtext(BODY)
        if not text:
            return  # the subject, or anything else the room says
        traffic.delivered += 1
        traffic.latencies_ns.append(time.monotonic_ns() - int(text))
        if element.get("from") == self.own:
            traffic.received += 1  # the sender's own copy: this message has gone round
            if traffic.answering:
                self.send()


async def enter_room(session: Session, room: str, nick: str, timeout: float) -> None:
    """Join *room* as *nick* with no history and wait for the self-presence (status 110)."""
    connection = session.connection
    connection.send(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>")
    async with asyncio.timeout(timeout):
        while True:
            element = await connection.next_element()
            if element.tag == PRESENCE and element.get("from") == f"{room}/{nick}":
                if element.get("type") == "error":
                    raise XMPPError(f"the room refused {nick}: {_describe(element)}")
                if any(status.get("code") == "110" for status in element.iterfind(MUC_STATUS)):
                    return


async def room_phase(job: Job, control: Control) -> None:
    """``occupants`` clients in one room at conference.<domain>, each keeping ``window`` of its
    messages in flight (a closed loop): every message goes to every occupant, so the daemon's
    work is the fan-out. The first client creates the room and accepts the instant room
    (section 10.1.2); the others then enter, ``concurrency`` at a time."""
    provider = credentials_provider(job.credentials)
    sessions = await log_in_all(job, provider, job.occupants)
    room = f"{BENCH_ROOM}@conference.{job.target.domain}"
    await enter_room(sessions[0], room, "n0", job.timeout)
    owner = sessions[0].connection
    owner.send(f"<iq type='set' id='instant' to='{room}'><query xmlns='{NS_MUC}#owner'>"
               "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
    async with asyncio.timeout(job.timeout):
        while (element := await owner.next_element()).tag != IQ or element.get("id") != "instant":
            pass
    if element.get("type") != "result":
        raise XMPPError(f"the instant room was refused: {_describe(element)}")

    async def join(index: int) -> None:
        await enter_room(sessions[index + 1], room, f"n{index + 1}", job.timeout)

    await run_concurrently(len(sessions) - 1, job.concurrency, join)
    traffic = Traffic()
    talkers = [Talker(session, room, f"n{n}", traffic) for n, session in enumerate(sessions)]
    for talker in talkers:
        for _ in range(job.window):
            talker.send()
    await measure_closed_loop(job, control, traffic, sessions, len(talkers) * job.window)


async def s2s_phase(job: Job, control: Control) -> None:
    """``pairs`` clients of the target daemon, each chatting in a closed loop with a client of the
    peer daemon: every message crosses the server-to-server link."""
    assert job.peer is not None
    provider = credentials_provider(job.credentials)
    here = await log_in_all(job, provider, job.pairs)
    there = await log_in_all(replace(job, target=job.peer), provider, job.pairs)
    traffic = Traffic()
    chatters = []
    for a, b in zip(here, there, strict=True):
        chatters += [Chatter(a, b.bare, traffic), Chatter(b, a.bare, traffic)]
    start_closed_loop(chatters, job.window)
    await measure_closed_loop(job, control, traffic, here + there, len(chatters) * job.window)


# How often the cluster phase's clients greet partners that have not heard from them yet.
GREETING_INTERVAL_S = 0.1


async def greet_partners(pairs: Sequence[tuple[Session, Session]], timeout: float) -> None:
    """Until each client of every pair has had a headline from its partner.

    A node knows another node's resource once the directory's announcement of its initial
    presence has arrived (docs/scaling.md). A chat message sent before that goes to offline
    storage, and a closed loop that loses its first messages stalls; a headline for an account
    with no available resource is dropped (RFC 6121 8.5.2.2.1), so greetings are sent again until
    they arrive, and nothing is left behind.
    """
    heard: set[tuple[str, str]] = set()  # (to, from) bare JIDs

    def listener(session: Session) -> Callable[[ET.Element], None]:
        def received(element: ET.Element) -> None:
            if element.tag == MESSAGE and element.get("type") == "headline":
                heard.add((session.bare, (element.get("from") or "").split("/", 1)[0]))
        return received

    for a, b in pairs:
        a.connection.on_stanza, b.connection.on_stanza = listener(a), listener(b)
    waiting = [(a, b) for x, y in pairs for a, b in ((x, y), (y, x))]  # (from, to)
    async with asyncio.timeout(timeout):
        while waiting:
            for sender, to in waiting:
                sender.connection.send(f"<message to='{to.bare}' type='headline'/>")
            await asyncio.sleep(GREETING_INTERVAL_S)
            waiting = [(sender, to) for sender, to in waiting if (to.bare, sender.bare) not in heard]


async def cluster_phase(job: Job, control: Control) -> None:
    """``pairs`` pairs of clients chatting in a closed loop, laid out on one or two nodes of a
    cluster (the same domain) by ``layout``:

    - ``one``: all ``2 * pairs`` clients on the target, as in the msgs phase;
    - ``local``: clients 0 .. pairs - 1 on the target and the others on the peer, each pair on
      one node (2k with 2k + 1), so no message crosses nodes;
    - ``cross``: the same clients on the same nodes, client i paired with client pairs + i, so
      every message crosses from one node to the other.

    Before the loop starts, every pair greets each other until both have heard (greet_partners).
    """
    provider = credentials_provider(job.credentials)
    if job.layout == "one":
        sessions = await log_in_all(job, provider, 2 * job.pairs)
    else:
        assert job.peer is not None
        if job.layout == "local" and job.pairs % 2:
            raise ValueError("the local layout needs an even number of pairs (each node holds whole pairs)")
        sessions = await log_in_all(job, provider, job.pairs)
        sessions += await log_in_all(replace(job, target=job.peer), provider, job.pairs, first=job.pairs)
    if job.layout == "cross":
        pairs = list(zip(sessions[:job.pairs], sessions[job.pairs:], strict=True))
    else:
        pairs = list(zip(sessions[0::2], sessions[1::2], strict=True))
    await greet_partners(pairs, job.timeout)
    traffic = Traffic()
    chatters = []
    for a, b in pairs:
        chatters += [Chatter(a, b.bare, traffic), Chatter(b, a.bare, traffic)]
    start_closed_loop(chatters, job.window)
    await measure_closed_loop(job, control, traffic, sessions, len(chatters) * job.window)


PHASES: dict[str, Callable[[Job, Control], Awaitable[None]]] = {
    "login": login_phase,
    "msgs": msgs_phase,
    "s2s": s2s_phase,
    "cluster": cluster_phase,
    "idle": idle_phase,
    "room": room_phase,
}


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


async def run(job: Job) -> None:
    use_small_tls_buffers()
    control = Control()
    await PHASES[job.phase](job, control)
    control.emit("done")


def main() -> int:
    control = Control()
    try:
        job = Job.from_json(sys.stdin.readline())
        open_files = raise_open_files_limit()
        if job.connections + 64 > open_files:
            raise RuntimeError(f"the open files limit ({open_files}) is too low for this job")
        asyncio.run(run(job))
    except Exception as error:
        control.emit("error", message=f"{type(error).__name__}: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
