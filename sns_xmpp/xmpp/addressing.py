"""JID parsing for the stanza path: prepared once, remembered in a bounded cache.

Twisted's ``internJID`` caches every JID ever seen without bound, which a
client can turn into a memory leak; stringprep is also the costliest step of
routing, so a bounded LRU keeps both in check.
"""

from __future__ import annotations

from functools import lru_cache

from twisted.words.protocols.jabber.jid import JID, InvalidFormat

__all__ = ["InvalidFormat", "JID", "parse_jid", "bare", "escape_node", "unescape_node"]


@lru_cache(maxsize=65536)
def parse_jid(text: str) -> JID:
    """Return the prepared JID for *text*; raises InvalidFormat."""
    return JID(text)


def bare(text: str) -> str:
    return parse_jid(text).userhost()


# XEP-0106: characters a localpart cannot hold, escaped as \XX.
_ESCAPES = {" ": r"\20", '"': r"\22", "&": r"\26", "'": r"\27", "/": r"\2f", ":": r"\3a",
            "<": r"\3c", ">": r"\3e", "@": r"\40", "\\": r"\5c"}
_UNESCAPES = {code: char for char, code in _ESCAPES.items()}


def escape_node(node: str) -> str:
    return "".join(_ESCAPES.get(char, char) for char in node)


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
