"""JID parsing for the stanza path: checked, prepared once, remembered in a bounded cache.

Twisted's ``internJID`` caches every JID ever seen without bound, which a
client can turn into a memory leak; stringprep is also the costliest step of
routing, so a bounded LRU keeps both in check. Parts longer than RFC 7622
allows are refused before stringprep, whose cost grows with the input
(about a second per 250 kB, on the reactor thread), and before the cache.
Every malformed JID raises `InvalidFormat`: Twisted's parser also raises
RuntimeError, IndexError or UnicodeError for some (``''``, ``a..b``).
"""

from __future__ import annotations

import re
from functools import lru_cache

from twisted.words.protocols.jabber.jid import JID, InvalidFormat

__all__ = ["InvalidFormat", "JID", "parse_jid", "bare", "escape_node", "unescape_node", "before_domain"]


MAX_PART_BYTES = 1023  # RFC 7622 3.2, 3.3.1, 3.4: each of localpart, domainpart and resourcepart


def _part_too_long(part: str) -> bool:
    # Four bytes per character at most, so short parts need no encoding.
    return len(part) > MAX_PART_BYTES // 4 and len(part.encode("utf-8", "surrogatepass")) > MAX_PART_BYTES


def _a_part_too_long(user: str | None, host: str, resource: str | None) -> bool:
    return _part_too_long(user or "") or _part_too_long(host) or _part_too_long(resource or "")


def parse_jid(text: str) -> JID:
    """Return the prepared JID for *text*; raises InvalidFormat for anything RFC 7622 refuses."""
    if len(text) > 3 * MAX_PART_BYTES + 2:
        raise InvalidFormat("too long")  # before hashing it for the cache
    return _prepared(text)


# Localpart characters nodeprep leaves alone but for case (printable ASCII without RFC 7622's
# " & ' / : < > @), domain labels of letters, digits and inner hyphens (STD 3), and printable
# ASCII resources, which resourceprep leaves as they are. Most JIDs are of this form, and
# stringprep is otherwise the dearest step of parsing one.
_NODE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "\"&'/:<>@")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE_JID = re.compile(
    rf"(?:([{re.escape(_NODE_CHARS)}]+)@)?({_LABEL}(?:\.{_LABEL})*)(?:/([ -~]+))?")


def _simple(text: str) -> JID | None:
    """The prepared JID for text of the common ASCII form, without stringprep; None otherwise."""
    match = _SIMPLE_JID.fullmatch(text)
    if match is None:
        return None
    user, host, resource = match.groups()
    if _a_part_too_long(user, host, resource):
        return None  # refused below, with the reason
    jid = JID.__new__(JID)
    jid.user = user.lower() if user else None
    jid.host = host.lower()
    jid.resource = resource
    return jid


@lru_cache(maxsize=65536)
def _prepared(text: str) -> JID:
    simple = _simple(text)
    if simple is not None:
        return simple
    if not text:
        raise InvalidFormat("empty")
    address, slash, resource = text.partition("/")
    local, at, domain = address.partition("@")
    if not at:
        local, domain = "", address
    if (at and not local) or (slash and not resource):
        raise InvalidFormat("an empty localpart or resourcepart")  # Twisted would drop the separator
    if _a_part_too_long(local, domain, resource):
        raise InvalidFormat("a part is longer than 1023 bytes")  # before stringprep, whose cost grows with it
    try:
        jid = JID(text)
    except InvalidFormat:
        raise
    except (RuntimeError, IndexError, UnicodeError, ValueError) as error:
        raise InvalidFormat(str(error)) from None
    # Preparation can lengthen a part (case folding, NFKC).
    if _a_part_too_long(jid.user, jid.host, jid.resource):
        raise InvalidFormat("a prepared part is longer than 1023 bytes")
    return jid


def bare(text: str) -> str:
    return parse_jid(text).userhost()


# XEP-0106: characters a localpart cannot hold, escaped as \XX.
_ESCAPES = {" ": r"\20", '"': r"\22", "&": r"\26", "'": r"\27", "/": r"\2f", ":": r"\3a",
            "<": r"\3c", ">": r"\3e", "@": r"\40", "\\": r"\5c"}
_UNESCAPES = {code: char for char, code in _ESCAPES.items()}


_ESCAPE_TABLE = str.maketrans(_ESCAPES)


def before_domain(name: str, domain: str) -> str | None:
    """What *name* holds before ``@<domain>``, the domain compared without regard to case (a
    domainpart is case-insensitive, RFC 7622 3.2); None when *name* does not end so."""
    before, at, host = name.rpartition("@")
    return before if at and host.lower() == domain.lower() else None


def escape_node(node: str) -> str:
    return node.translate(_ESCAPE_TABLE)


def unescape_node(node: str) -> str:
    """Undo XEP-0106 escaping; sequences that are not escapes stay as they are."""
    if "\\" not in node:
        return node
    out: list[str] = []
    index = 0
    while index < len(node):
        code = node[index:index + 3].lower()
        if code in _UNESCAPES:
            out.append(_UNESCAPES[code])
            index += 3
        else:
            out.append(node[index])
            index += 1
    return "".join(out)
