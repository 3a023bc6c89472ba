"""The elements of SASL2 (XEP-0388), Bind2 (XEP-0386) and FAST (XEP-0484), free of stream I/O.

`negotiation.ClientNegotiator` drives the exchange; this module reads an <authenticate/> and
writes the stream feature, challenges, <success/> and <failure/>. The SASL mechanisms are the
same objects as SASL1's (`xmpp/sasl.py`), so a SASL2 login is checked, refused and throttled as a
SASL1 one.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL
from twisted.internet.interfaces import ISystemHandle
from twisted.words.xish import domish

from sns_xmpp.auth.checker import AuthenticationFailed
from sns_xmpp.auth.fast import HT_SHA_256_ENDP, HT_SHA_256_EXPR, HT_SHA_256_NONE, NS_FAST, IssuedToken
from sns_xmpp.xmpp.sasl import NS_SASL, decode_payload, encode_payload
from sns_xmpp.xmpp.serialization import escape_attribute, escape_text
from sns_xmpp.xmpp.stanzas import add_element, append_child

NS_SASL2 = "urn:xmpp:sasl:2"
NS_BIND2 = "urn:xmpp:bind:0"
MAX_AGENT_ID_CHARS = 256
MAX_TAG_CHARS = 64


@dataclass(frozen=True)
class Authenticate:
    """What a client's <authenticate/> asks for."""

    mechanism: str
    initial: bytes | None
    agent: str | None  # <user-agent id=...>: the client installation, for FAST and Bind2
    bind: domish.Element | None  # <bind xmlns='urn:xmpp:bind:0'/>
    request_token: str | None  # <request-token mechanism=...>: a FAST token is wanted
    fast: bool  # <fast/>: this is a FAST login
    count: int | None  # <fast count=...>
    invalidate: bool  # <fast invalidate='true'>
    # Children in other namespaces (XEP-0388's inline features: XEP-0198's <resume/>), for the
    # features that registered them; () for the usual login, which carries none.
    extensions: tuple[domish.Element, ...] = ()


def parse_authenticate(element: domish.Element) -> Authenticate:
    """Read an <authenticate/>; AuthenticationFailed('malformed-request') if it makes no sense.
    Of each child element it takes the first (one pass over the children)."""
    mechanism = element.getAttribute("mechanism")
    if not mechanism:
        raise AuthenticationFailed("invalid-mechanism", "no mechanism")
    initial_element: domish.Element | None = None
    agent_element: domish.Element | None = None
    request: domish.Element | None = None
    fast: domish.Element | None = None
    bind: domish.Element | None = None
    extensions: list[domish.Element] | None = None
    for child in element.children:
        if not isinstance(child, domish.Element):
            continue
        uri, name = child.uri, child.name
        if uri == NS_SASL2:
            if name == "initial-response":
                initial_element = initial_element or child
            elif name == "user-agent":
                agent_element = agent_element or child
        elif uri == NS_FAST:
            if name == "fast":
                fast = fast or child
            elif name == "request-token":
                request = request or child
        elif uri == NS_BIND2:
            if name == "bind":
                bind = bind or child
        elif extensions is None:
            extensions = [child]
        else:
            extensions.append(child)
    initial = decode_payload(str(initial_element) or "=") if initial_element is not None else None
    agent = agent_element.getAttribute("id") if agent_element is not None else None
    if agent is not None and (not agent or len(agent) > MAX_AGENT_ID_CHARS):
        raise AuthenticationFailed("malformed-request", "bad <user-agent id>")
    count = None
    if fast is not None and fast.getAttribute("count") is not None:
        try:
            count = int(fast.getAttribute("count", ""))
        except ValueError:
            raise AuthenticationFailed("malformed-request", "bad FAST count") from None
    return Authenticate(
        mechanism=mechanism,
        initial=initial,
        agent=agent,
        bind=bind,
        request_token=request.getAttribute("mechanism") if request is not None else None,
        fast=fast is not None,
        count=count,
        invalidate=fast is not None and fast.getAttribute("invalidate") in ("true", "1"),
        extensions=tuple(extensions) if extensions is not None else (),
    )


def authentication_feature(mechanisms: Sequence[str], fast_mechanisms: Sequence[str],
                           inline_vars: Sequence[str], offers: Sequence[domish.Element] = ()) -> domish.Element:
    """<authentication xmlns='urn:xmpp:sasl:2'/> for the stream features: the mechanisms, and
    inline, the features' own *offers* (XEP-0198's <sm/>), Bind2 with the features that can ride
    in it, and FAST's mechanisms."""
    feature = domish.Element((NS_SASL2, "authentication"))
    for name in mechanisms:
        add_element(feature, "mechanism", content=name)
    inline = add_element(feature, "inline")
    for offer in offers:
        append_child(inline, offer)
    bind = add_element(inline, (NS_BIND2, "bind"))
    if inline_vars:
        offered = add_element(bind, "inline")
        for var in inline_vars:
            add_element(offered, "feature")["var"] = var
    if fast_mechanisms:
        fast = add_element(inline, (NS_FAST, "fast"))
        for name in fast_mechanisms:
            add_element(fast, "mechanism", content=name)
    return feature


def challenge_xml(data: bytes) -> str:
    return f"<challenge xmlns='{NS_SASL2}'>{encode_payload(data)}</challenge>"


def failure_element(condition: str, text: str | None) -> domish.Element:
    """XEP-0388's <failure/>: the RFC 6120 SASL condition, in its own namespace, and the text."""
    failure = domish.Element((NS_SASL2, "failure"))
    add_element(failure, (NS_SASL, condition))
    if text:
        add_element(failure, "text", content=text)
    return failure


def success_element(identifier: str, additional_data: bytes | None, bound: Sequence[domish.Element] | None,
                    token: IssuedToken | None, answers: Sequence[domish.Element] = ()) -> domish.Element:
    """XEP-0388's <success/>, with SASL2's inline features' *answers* (XEP-0198's <resumed/> or
    <failed/>), Bind2's <bound/> (its inline features' answers) and FAST's <token/> when there are."""
    success = domish.Element((NS_SASL2, "success"))
    if additional_data is not None:
        add_element(success, "additional-data", content=encode_payload(additional_data))
    add_element(success, "authorization-identifier", content=identifier)
    for answer in answers:
        append_child(success, answer)
    if bound is not None:
        element = add_element(success, (NS_BIND2, "bound"))
        for child in bound:
            append_child(element, child)
    if token is not None:
        token_element = add_element(success, (NS_FAST, "token"))
        token_element["expiry"] = timestamp(token.expires_at)
        token_element["token"] = token.token
    return success


def success_xml(identifier: str, additional_data: bytes | None, bound: Sequence[domish.Element] | None,
                token: IssuedToken | None) -> str | None:
    """The text of `success_element` on a jabber:client stream, written directly (a tenth of the cost
    of building and serialising the elements), where Bind2's <bound/> has no children; None
    otherwise, for the caller to serialise the element. A test holds the two to the same text."""
    if bound:
        return None
    parts = [f"<success xmlns='{NS_SASL2}'>"]
    if additional_data is not None:
        parts.append(f"<additional-data>{encode_payload(additional_data)}</additional-data>")
    parts.append(f"<authorization-identifier>{escape_text(identifier)}</authorization-identifier>")
    if bound is not None:
        parts.append(f"<bound xmlns='{NS_BIND2}'/>")
    if token is not None:
        parts.append(f"<token xmlns='{NS_FAST}' expiry='{timestamp(token.expires_at)}'"
                     f" token='{escape_attribute(token.token)}'/>")
    parts.append("</success>")
    return "".join(parts)


def timestamp(seconds: float) -> str:
    """XEP-0082 date-time, as <token expiry=.../> carries it."""
    return datetime.datetime.fromtimestamp(int(seconds), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resource_for(bind: domish.Element, jid: str, agent: str | None) -> str:
    """Bind2's resource: the client's <tag> and a suffix. With a <user-agent id> the suffix is
    the same at every login of that client (its old session is replaced, as XEP-0386 asks);
    without one it is random."""
    tag = str(next(bind.elements(NS_BIND2, "tag"), "") or "").strip()[:MAX_TAG_CHARS]
    if agent:
        suffix = hashlib.sha256(f"{jid}\x00{agent}".encode()).hexdigest()[:8]
    else:
        suffix = secrets.token_hex(4)
    return f"{tag}.{suffix}" if tag else suffix


# -- channel binding -------------------------------------------------------------------------

EXPORTER_LABEL = b"EXPORTER-Channel-Binding"  # RFC 9266 section 2


def tls_connection(transport: object) -> SSL.Connection | None:
    """The stream's pyOpenSSL connection once TLS is on (STARTTLS or direct TLS), else None."""
    handle = ISystemHandle(transport, None)
    if handle is None:
        return None
    connection = handle.getHandle()
    return connection if isinstance(connection, SSL.Connection) else None


def channel_bindings(connection: SSL.Connection | None) -> tuple[str, ...]:
    """The HT mechanisms this TLS connection can bind to, best first."""
    offered = []
    if connection is not None:
        if connection.get_protocol_version_name() == "TLSv1.3":
            offered.append(HT_SHA_256_EXPR)  # RFC 9266 defines tls-exporter for TLS 1.3
        if connection.get_certificate() is not None:
            offered.append(HT_SHA_256_ENDP)
    offered.append(HT_SHA_256_NONE)
    return tuple(offered)


def channel_binding(connection: SSL.Connection | None, mechanism: str) -> bytes | None:
    """The cb-data of *mechanism* on this connection: b"" for -NONE, None where it cannot bind."""
    if mechanism == HT_SHA_256_NONE:
        return b""
    if connection is None or mechanism not in channel_bindings(connection):
        return None
    if mechanism == HT_SHA_256_EXPR:
        return bytes(connection.export_keying_material(EXPORTER_LABEL, 32))
    certificate = connection.get_certificate()
    assert certificate is not None
    return server_end_point(certificate.to_cryptography())


NS_SASL_CB = "urn:xmpp:sasl-cb:0"  # XEP-0440: the channel binding types the server can do
SCRAM_PLUS = {"SCRAM-SHA-1": "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256": "SCRAM-SHA-256-PLUS"}


def channel_binding_types(connection: SSL.Connection | None) -> tuple[str, ...]:
    """The channel binding types (RFC 5056 names) this TLS connection can give, best first."""
    mechanisms = channel_bindings(connection)
    return tuple(name for name, mechanism in (("tls-exporter", HT_SHA_256_EXPR),
                                              ("tls-server-end-point", HT_SHA_256_ENDP)) if mechanism in mechanisms)


def channel_binding_data(connection: SSL.Connection | None, cb_type: str) -> bytes | None:
    """The data of a channel binding type on this connection, None where it cannot give it."""
    mechanism = {"tls-exporter": HT_SHA_256_EXPR, "tls-server-end-point": HT_SHA_256_ENDP}.get(cb_type)
    return channel_binding(connection, mechanism) if mechanism is not None else None


def channel_binding_feature(cb_types: Sequence[str]) -> domish.Element:
    """XEP-0440's stream feature: which channel binding types a -PLUS mechanism may use here."""
    feature = domish.Element((NS_SASL_CB, "sasl-channel-binding"))
    for cb_type in cb_types:
        add_element(feature, "channel-binding")["type"] = cb_type
    return feature


def with_plus(mechanisms: Sequence[str], cb_types: Sequence[str]) -> list[str]:
    """*mechanisms* with each SCRAM one's -PLUS form before it, where the channel can bind."""
    if not cb_types:
        return list(mechanisms)
    offered: list[str] = []
    for name in mechanisms:
        if name in SCRAM_PLUS:
            offered.append(SCRAM_PLUS[name])
        offered.append(name)
    return offered


def server_end_point(certificate: x509.Certificate) -> bytes:
    """RFC 5929 section 4.1: the certificate's hash under its signature's hash function, SHA-256
    where that is MD5 or SHA-1 (or there is none, as for Ed25519)."""
    algorithm = certificate.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate.public_bytes(serialization.Encoding.DER))
    return digest.finalize()
