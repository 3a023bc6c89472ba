"""Server Dialback (XEP-0220): the namespaces, the keys and the elements, as text.

The key is XEP-0185's recommendation, computed by wokkel's `generateKey`:
HMAC-SHA256(SHA256(secret), receiving + ' ' + originating + ' ' + stream id), in hex. The
secret is this install's own (data_dir/dialback.key): the authoritative server checks a key
by computing it again, so a key it never issued (another secret, another stream id, another
pair of domains) is invalid, and keys need no table.

The elements are written as text, as the stream writes them, with the ``db`` prefix the
stream header binds (XEP-0220 2.1.1): both sides of a negotiation are short, and the unit
tests hold them to the exact bytes.
"""

from __future__ import annotations

import hmac

from twisted.words.xish import domish
from wokkel.server import generateKey

from sns_xmpp.xmpp.serialization import escape_attribute, escape_text

NS_SERVER = "jabber:server"
NS_DIALBACK = "jabber:server:dialback"
NS_DIALBACK_FEATURE = "urn:xmpp:features:dialback"  # XEP-0220 2.1.1: offered in <stream:features/>
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def dialback_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0185 section 2: the key the originating server sends in <db:result/>."""
    return str(generateKey(secret, receiving, originating, stream_id))


def key_is_valid(secret: str, receiving: str, originating: str, stream_id: str, key: str) -> bool:
    """Whether *key* is the one this secret issues for the stream (XEP-0185 section 3), in
    constant time."""
    expected = dialback_key(secret, receiving, originating, stream_id)
    return hmac.compare_digest(expected.encode(), key.strip().lower().encode())


def result_request(originating: str, receiving: str, key: str) -> str:
    """XEP-0220 2.1.1, Example 2: the originating server asks to send from *originating*."""
    return (f"<db:result from='{escape_attribute(originating)}' to='{escape_attribute(receiving)}'>"
            f"{escape_text(key)}</db:result>")


def result_answer(receiving: str, originating: str, valid: bool) -> str:
    """XEP-0220 2.1.2 / 2.1.3: the receiving server's verdict on a <db:result/>."""
    kind = "valid" if valid else "invalid"
    return f"<db:result from='{escape_attribute(receiving)}' to='{escape_attribute(originating)}' type='{kind}'/>"


def result_error(receiving: str, originating: str, condition: str, kind: str = "cancel") -> str:
    """XEP-0220 2.4: a <db:result/> that could not be judged (sent only to peers that said
    they understand errors, with <errors/> in the dialback feature)."""
    return (f"<db:result from='{escape_attribute(receiving)}' to='{escape_attribute(originating)}' type='error'>"
            f"<error type='{kind}'><{condition} xmlns='{NS_STANZAS}'/></error></db:result>")


def verify_request(receiving: str, originating: str, stream_id: str, key: str) -> str:
    """XEP-0220 2.1.2, Example 4: the receiving server asks the authoritative server."""
    return (f"<db:verify from='{escape_attribute(receiving)}' to='{escape_attribute(originating)}' "
            f"id='{escape_attribute(stream_id)}'>{escape_text(key)}</db:verify>")


def verify_answer(originating: str, receiving: str, stream_id: str, valid: bool) -> str:
    """XEP-0220 2.1.2, Examples 5 and 6: the authoritative server's answer (from and to swapped)."""
    kind = "valid" if valid else "invalid"
    return (f"<db:verify from='{escape_attribute(originating)}' to='{escape_attribute(receiving)}' "
            f"id='{escape_attribute(stream_id)}' type='{kind}'/>")


def dialback_offered(features: domish.Element) -> bool:
    return any(child.uri == NS_DIALBACK_FEATURE and child.name == "dialback" for child in features.elements())


def dialback_errors_understood(features: domish.Element) -> bool:
    for child in features.elements(NS_DIALBACK_FEATURE, "dialback"):
        return any(grand.name == "errors" for grand in child.elements())
    return False


def mechanisms_offered(features: domish.Element) -> list[str]:
    for mechanisms in features.elements(NS_SASL, "mechanisms"):
        return [str(mechanism).strip() for mechanism in mechanisms.elements(NS_SASL, "mechanism")]
    return []


def starttls_offered(features: domish.Element) -> bool:
    return any(True for _ in features.elements(NS_TLS, "starttls"))
