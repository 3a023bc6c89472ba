"""XEP-0045's names, and the small elements every part of the MUC service builds."""

from __future__ import annotations

import datetime

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.xmpp.stanzas import NS_CLIENT, add_element

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
NS_ADMIN = NS_MUC + "#admin"
NS_OWNER = NS_MUC + "#owner"
NS_REQUEST = NS_MUC + "#request"
NS_ROOMCONFIG = NS_MUC + "#roomconfig"
NS_ROOMINFO = NS_MUC + "#roominfo"
NS_SELF_PING = NS_MUC + "#self-ping-optimization"  # XEP-0410 section 3.3
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"  # XEP-0421
NS_CONFERENCE = "jabber:x:conference"  # XEP-0249 direct invitations (routed, not handled here)
NS_DATA = "jabber:x:data"
NS_DELAY = "urn:xmpp:delay"
NS_PING = "urn:xmpp:ping"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"

# Affiliations and roles, lowest first (section 5).
AFFILIATIONS = ("outcast", "none", "member", "admin", "owner")
ROLES = ("none", "visitor", "participant", "moderator")
RANK = {name: n for n, name in enumerate(AFFILIATIONS)}

# Status codes (section 15.6.2).
NON_ANONYMOUS = "100"
CONFIG_CHANGED = "104"
SELF = "110"
LOGGED = "170"
NOW_NON_ANONYMOUS = "172"
NOW_SEMI_ANONYMOUS = "173"
CREATED = "201"
BANNED = "301"
NEW_NICK = "303"
KICKED = "307"
AFFILIATION_CHANGED = "321"
MEMBERS_ONLY_NOW = "322"
GONE = "333"  # removed for a technical reason: the occupant's session ended without leaving


def stamp(seconds: float) -> str:
    """XEP-0082 DateTime in UTC, as XEP-0203's delay carries it."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_stamp(text: str) -> float | None:
    """A XEP-0082 DateTime as seconds; None if it is not one."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def stanza(name: str, sender: str, to: str | None = None, kind: str | None = None) -> domish.Element:
    element = domish.Element((NS_CLIENT, name), NS_CLIENT)
    element["from"] = sender
    if to is not None:
        element["to"] = to
    if kind is not None:
        element["type"] = kind
    return element


def user_x(parent: domish.Element, codes: tuple[str, ...] = ()) -> domish.Element:
    """<x xmlns='...#user'/> with its <status code/>s, added to *parent*."""
    x = add_element(parent, (NS_USER, "x"))
    for code in codes:
        add_element(x, "status")["code"] = code
    return x


def item(parent: domish.Element, affiliation: str, role: str, jid: str | None = None,
         nick: str | None = None) -> domish.Element:
    element = add_element(parent, "item")
    element["affiliation"] = affiliation
    element["role"] = role
    if jid is not None:
        element["jid"] = jid
    if nick is not None:
        element["nick"] = nick
    return element


def refusal(condition: str, text: str | None = None) -> StanzaError:
    """The error of XEP-0045 (section 15.5 maps its old codes to RFC 6120 conditions; the
    condition's default type, as RFC 6120 section 8.3.3 gives it, is the XEP's)."""
    return StanzaError(condition, text=text)


def first(element: domish.Element, uri: str, name: str) -> domish.Element | None:
    for child in element.elements(uri, name):
        return child
    return None


def text_of(element: domish.Element | None) -> str:
    return str(element) if element is not None else ""
