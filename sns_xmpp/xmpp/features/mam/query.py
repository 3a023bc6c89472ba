"""The archive's protocol: a query's data form and RSM set in, result messages and <fin/> out
(XEP-0313 section 4, XEP-0059), and the preferences' element both ways (XEP-0441)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.store.mam import ArchiveQuery, Page, Prefs
from sns_xmpp.xmpp.stanzas import NS_CLIENT, NS_DELAY, add_element, append_child

NS_MAM = "urn:xmpp:mam:2"
NS_MAM_EXTENDED = "urn:xmpp:mam:2#extended"
NS_DATA = "jabber:x:data"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
MODES = ("always", "never", "roster")
MAX_PREFS_JIDS = 1000  # JIDs in each of <always/> and <never/>
FIELDS = ("FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids")


@dataclass(frozen=True)
class Asked:
    """A parsed query: what to read, and how to send it."""

    query: ArchiveQuery
    queryid: str | None
    flip: bool  # XEP-0313 section 4.3.4 (#extended): the page's results newest first


def stamp_text(seconds: float) -> str:
    """XEP-0082 DateTime, in UTC, to the microsecond."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _timestamp(field: str, text: str) -> float:
    """A XEP-0082 DateTime (a date, a time and a zone: 'Z' or an offset) as seconds."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        moment = None
    if moment is None or "T" not in text or moment.tzinfo is None:
        raise StanzaError("bad-request", text=f"'{field}' is not a XEP-0082 DateTime")
    return moment.timestamp()


def _text(element: domish.Element) -> str:
    return "".join(child for child in element.children if isinstance(child, str))


def _form_fields(form: domish.Element) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for field in form.elements(NS_DATA, "field"):
        var = field.getAttribute("var")
        if not var:
            raise StanzaError("bad-request", text="a field without 'var'")
        fields[var] = [_text(value) for value in field.elements(NS_DATA, "value")]
    return fields


def _one(fields: dict[str, list[str]], var: str) -> str | None:
    values = fields.get(var)
    if not values:
        return None
    if len(values) != 1 or not values[0].strip():
        raise StanzaError("bad-request", text=f"'{var}' takes one value")
    return values[0].strip()


def _number(element: domish.Element | None, what: str) -> int | None:
    if element is None:
        return None
    text = _text(element).strip()
    if not text.isdigit() or len(text) > 9:
        raise StanzaError("bad-request", text=f"RSM <{what}/> is not a number")
    return int(text)


def parse_query(query: domish.Element, owner: str, default_page: int, max_page: int) -> Asked:
    """The query's filters (section 4.1) and page (XEP-0059). Raises StanzaError: a field this
    server does not know is feature-not-implemented (section 4.1.5), anything malformed
    bad-request."""
    fields: dict[str, list[str]] = {}
    for form in query.elements(NS_DATA, "x"):
        if fields:
            raise StanzaError("bad-request", text="one data form per query")
        if form.getAttribute("type", "submit") != "submit":
            raise StanzaError("bad-request", text="the form's type must be 'submit'")
        fields = _form_fields(form) or {"FORM_TYPE": [NS_MAM]}
    unknown = [var for var in fields if var not in FIELDS]
    if unknown:
        raise StanzaError("feature-not-implemented", text=f"no field '{unknown[0]}' here")
    if fields and _one(fields, "FORM_TYPE") != NS_MAM:
        raise StanzaError("bad-request", text=f"FORM_TYPE must be {NS_MAM}")
    with_bare = with_resource = None
    with_text = _one(fields, "with")
    if with_text is not None:
        try:
            with_jid = parse_jid(with_text)
        except InvalidFormat:
            raise StanzaError("jid-malformed", text="'with' is not a JID") from None
        with_bare, with_resource = with_jid.userhost(), with_jid.resource
    start, end = _one(fields, "start"), _one(fields, "end")
    ids = tuple(value.strip() for value in fields.get("ids", []) if value.strip())
    if len(ids) > max_page:
        raise StanzaError("policy-violation", text=f"at most {max_page} ids at once")

    page = None
    for child in query.elements(NS_RSM, "set"):
        page = child
    size, after, before, index, last_page = default_page, None, None, None, False
    if page is not None:
        for child in page.elements():
            if child.uri != NS_RSM:
                continue
            if child.name == "max":
                size = _number(child, "max") or 0  # <max>0</max>: the count alone (XEP-0059 2.6)
            elif child.name == "after":
                after = _text(child).strip() or None
                if after is None:
                    raise StanzaError("bad-request", text="RSM <after/> needs a UID")
            elif child.name == "before":
                before = _text(child).strip() or None
                last_page = before is None
            elif child.name == "index":
                index = _number(child, "index")
    if after is not None and (before is not None or last_page):
        raise StanzaError("bad-request", text="RSM <after/> and <before/> together: use after-id and before-id")
    flip = any(True for _ in query.elements(NS_MAM, "flip-page"))
    asked = ArchiveQuery(
        owner=owner, max=min(size, max_page), with_bare=with_bare, with_resource=with_resource,
        start=_timestamp("start", start) if start is not None else None,
        end=_timestamp("end", end) if end is not None else None,
        after_id=_one(fields, "after-id"), before_id=_one(fields, "before-id"), ids=ids,
        after=after, before=before, last_page=last_page, index=index)
    return Asked(asked, query.getAttribute("queryid"), flip)


def form() -> domish.Element:
    """The fields a query may use (section 4.1.5), for an IQ get."""
    query = domish.Element((NS_MAM, "query"))
    x = add_element(query, (NS_DATA, "x"))
    x["type"] = "form"
    for var, kind in (("FORM_TYPE", "hidden"), ("with", "jid-single"), ("start", "text-single"),
                      ("end", "text-single"), ("before-id", "text-single"), ("after-id", "text-single"),
                      ("ids", "list-multi")):
        field = add_element(x, "field")
        field["var"], field["type"] = var, kind
        if var == "FORM_TYPE":
            add_element(field, "value", content=NS_MAM)
        if var == "ids":
            validate = add_element(field, ("http://jabber.org/protocol/xdata-validate", "validate"))
            validate["datatype"] = "xs:string"
            add_element(validate, "open")
    return query


def result_message(owner: str, to: str, queryid: str | None, uid: str, stamp: float,
                   stanza: str) -> domish.Element:
    """One archived message as a result (section 4.2): the stored text goes in as it is."""
    message = domish.Element((NS_CLIENT, "message"))
    message["from"], message["to"] = owner, to
    result = append_child(message, domish.Element((NS_MAM, "result")))
    if queryid is not None:
        result["queryid"] = queryid
    result["id"] = uid
    forwarded = append_child(result, domish.Element((NS_FORWARD, "forwarded")))
    delay = append_child(forwarded, domish.Element((NS_DELAY, "delay")))
    delay["stamp"] = stamp_text(stamp)
    forwarded.addRawXml(stanza)
    return message


def fin(page: Page) -> domish.Element:
    """The IQ result's <fin/>: the page's first and last UIDs, the count, and whether the results
    are complete (section 4.3.2)."""
    element = domish.Element((NS_MAM, "fin"))
    if page.complete:
        element["complete"] = "true"
    rsm = add_element(element, (NS_RSM, "set"))
    if page.rows:
        first = add_element(rsm, "first", content=page.rows[0][0])
        if page.first_index is not None:
            first["index"] = str(page.first_index)
        add_element(rsm, "last", content=page.rows[-1][0])
    add_element(rsm, "count", content=str(page.count))
    return element


def prefs_element(prefs: Prefs) -> domish.Element:
    element = domish.Element((NS_MAM, "prefs"))
    element["default"] = prefs.default
    for name, jids in (("always", prefs.always), ("never", prefs.never)):
        listed = add_element(element, name)
        for jid in sorted(jids):
            add_element(listed, "jid", content=jid)
    return element


def parse_prefs(element: domish.Element) -> Prefs:
    """A <prefs/> set (XEP-0441 section 4): the default and the two lists, each JID normalised."""
    default = element.getAttribute("default")
    if default not in MODES:
        raise StanzaError("bad-request", text="'default' must be always, never or roster")
    lists: dict[str, set[str]] = {"always": set(), "never": set()}
    for child in element.elements(NS_MAM):
        if child.name not in lists:
            continue
        for jid in child.elements(NS_MAM, "jid"):
            try:
                lists[child.name].add(parse_jid(_text(jid).strip()).full())
            except InvalidFormat:
                raise StanzaError("jid-malformed", text="not a JID in the preferences") from None
            if len(lists[child.name]) > MAX_PREFS_JIDS:
                raise StanzaError("policy-violation", text=f"at most {MAX_PREFS_JIDS} JIDs per list")
    return Prefs(default, frozenset(lists["always"]), frozenset(lists["never"]))
