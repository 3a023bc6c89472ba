"""Hypothesis strategies for the c2s fuzz suite: stream headers, SASL messages, stanzas and byte mutations.

Everything here builds text or bytes a client could send; nothing touches the server. Strategies that
need real credentials (a valid token, a password) take them as arguments, because tokens are minted
per example on the test's clock.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass, field, replace

from hypothesis import strategies as st

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_SM = "urn:xmpp:sm:3"
NS_PING = "urn:xmpp:ping"
NS_ROSTER = "jabber:iq:roster"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_VERSION = "jabber:iq:version"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DELAY = "urn:xmpp:delay"

KNOWN_NAMESPACES = (NS_CLIENT, NS_SASL, NS_TLS, NS_BIND, NS_SESSION, NS_SM, NS_PING, NS_ROSTER, NS_DISCO_INFO,
                    NS_DISCO_ITEMS, NS_VERSION, NS_STANZAS, NS_DELAY, NS_STREAMS, "jabber:server",
                    "jabber:x:data", "vcard-temp", "urn:xmpp:carbons:2", "urn:x-sns-xmpp:sites:0")
# With ' < & and blanks, which must reach a recipient escaped (test_namespace_uris_are_relayed_escaped).
UNKNOWN_NAMESPACES = ("urn:example:unknown", "", "http://example.com/ns?x=y>z", 'urn:"quoted"', "jabber:client ",
                      "urn:xmpp:sm:2", "JABBER:CLIENT", "urn:\u00e9\u2028", "urn:a'/><x", "urn:a&b<c",
                      "urn:tab\tnl\ncr\r")

# -- text -----------------------------------------------------------------------------------------

# XML 1.0 Char: no C0 controls but tab, newline and carriage return, no surrogates, no U+FFFE/U+FFFF.
xml_char = st.one_of(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff"),
    st.sampled_from("\t\n\r"),
)

INTERESTING_TEXT = (
    "", " ", "0", "-1", "1.0", "localhost", "LOCALHOST", "example.org", "alice", "alice@localhost",
    "alice@localhost/r", "@localhost", "localhost/", "/", "@", "a@b@c", "\\40", "\\5c", "alice\\40demo@localhost",
    "\u00e4", "\u0130", "\u200b", "\ufb00", "\u05d0a", "\U0001d4b3", "a b", "x" * 1024, "x" * 1100, "&", "<", "'",
    '"', "]]>", "=", "==", "=2C", "=3D", "=41", ",", "\t", "\n",
)


@functools.cache
def xml_text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(xml_char, max_size=max_size)


@functools.cache
def huge_text() -> st.SearchStrategy[str]:
    """One character repeated many times: long attribute values and bodies."""
    return st.builds(lambda char, count: char * count, st.sampled_from(["a", "\u00e9", "@", "\U0001d4b3", " ", "&"]),
                     st.sampled_from([300, 1100, 3000, 10_000, 30_000, 70_000]))


@functools.cache
def weird_value(huge: bool = True) -> st.SearchStrategy[str]:
    choices = [st.sampled_from(INTERESTING_TEXT), xml_text(), xml_text(4)]
    if huge:  # about one value in ten
        choices = choices * 3 + [huge_text()]
    return st.one_of(*choices)


def escape_attribute(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;").replace('"', "&quot;")
            .replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;"))


def escape_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,15}", fullmatch=True)

# -- bytes: mutations and chunking ----------------------------------------------------------------

INVALID_UTF8 = (b"\xff", b"\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc",
                b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc3", b"\x00", b"\x01", b"\x1b")


POSITION = st.integers(0, 1 << 20)


@st.composite
def mutated(draw: st.DrawFn, data: bytes, max_mutations: int = 3) -> bytes:
    """*data* with up to *max_mutations* byte-level edits: flips, cuts, insertions, invalid UTF-8."""
    for _ in range(draw(st.integers(0, max_mutations))):
        op = draw(st.sampled_from(["flip", "replace", "delete", "insert", "duplicate", "truncate", "bad-utf8"]))
        at = draw(POSITION) % (len(data) + 1)  # not a range of len(data): tokens differ in length per run
        if op == "flip" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
        elif op == "replace" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
        elif op == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)):]
        elif op == "insert":
            data = data[:at] + draw(st.one_of(st.binary(min_size=1, max_size=8),
                                              st.sampled_from([b"<", b">", b"'", b"&", b"/>", b"</", b"<![CDATA[",
                                                               b"]]>", b"<!--", b"<?", b"&#0;", b"&lt;"]))) + data[at:]
        elif op == "duplicate":
            end = min(len(data), at + draw(st.integers(0, 64)))
            data = data[:end] + data[at:end] + data[end:]
        elif op == "truncate":
            data = data[:at]
        elif op == "bad-utf8":
            data = data[:at] + draw(st.sampled_from(INVALID_UTF8)) + data[at:]
    return data


@st.composite
def split(draw: st.DrawFn, data: bytes, must: tuple[int, ...] = ()) -> list[bytes]:
    """*data* cut at random points (and at every offset in *must*), as successive reads would deliver it."""
    if not data:
        return [data]
    points = {point % len(data) for point in draw(st.lists(POSITION, max_size=8))}
    points.update(p for p in must if 0 < p < len(data))
    cuts = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


# -- stream headers -------------------------------------------------------------------------------

DECLARATIONS = ("", "<?xml version='1.0'?>", '<?xml version="1.0" encoding="UTF-8"?>', "<?xml version='1.1'?>",
                "<?xml version='1.0' encoding='ISO-8859-1'?>", "<?xml version='1.0' encoding='UTF-16'?>",
                "<?xml version='1.0' standalone='yes'?>", "\ufeff<?xml version='1.0'?>", "\ufeff", " ",
                "<?xml version='2.0'?>", "<?xml?>", "\n\n")
HOSTS = ("localhost", "example.org", "LOCALHOST", "Example.Org", "localhost.", "elsewhere.example", "alice@localhost",
         "localhost/res", "@localhost", "", " localhost", "[::1]", "127.0.0.1", "xn--bcher-kva.example",
         "b\u00fccher.example", "localhost\u3002", "l" * 300, "a." * 150 + "org", "local host", "a..b", ".",
         "\u200b", "localhost..")
CLAIMS = ("alice@localhost", "alice", "alice.s1.1700000600.demo1\\40demo@localhost", "100200\\40facebook@localhost",
          "User-42\\40idp@localhost", "x\\40nowhere@localhost", "@localhost", "alice@example.org/r", "\\40@localhost",
          "a.b.99.k\\40sns@localhost", "\\40demo@localhost", "alice@", "", "alice@a..b", "x@.")
VERSIONS = ("1.0", "0.9", "1", "2.0", "1.1", "01.0", "", "a.b", "-1.0", "1e3", "9" * 30 + ".0", "\uff11.0", " 1.0",
            "1.0 ", ".", "1.", "\u0661.0", "+1.0", "1_0.0", "0x1.0")


@st.composite
def stream_header(draw: st.DrawFn) -> str:
    """An opening <stream:stream>, usually close to right, with its namespaces and attributes varied."""
    decl = draw(st.sampled_from(DECLARATIONS))
    prefix = draw(st.sampled_from(["stream", "stream", "stream", "s", "", "xml", "stream:x"]))
    streams_ns = draw(st.one_of(st.just(NS_STREAMS), st.just(NS_STREAMS), st.sampled_from(
        [NS_STREAMS + "/", "urn:wrong", "", NS_CLIENT]), xml_text(10)))
    default_ns = draw(st.one_of(st.just(NS_CLIENT), st.just(NS_CLIENT), st.none(), st.sampled_from(
        ["jabber:server", "jabber:component:accept", "", NS_STREAMS, "JABBER:CLIENT"]), xml_text(10)))
    attributes: list[tuple[str, str]] = []
    for name, values in (("to", HOSTS), ("from", CLAIMS), ("version", VERSIONS)):
        value = draw(st.one_of(st.none(), st.sampled_from(values), st.sampled_from(values), st.sampled_from(values),
                               weird_value(huge=False)))
        if value is not None:
            attributes.append((name, value))
    if draw(st.booleans()):
        attributes.append(("xml:lang", draw(st.sampled_from(["en", "", "x-\u00e9", "en" * 100]))))
    attributes += draw(st.lists(st.tuples(NAME, weird_value(huge=False)), max_size=3))
    if draw(st.sampled_from([False] * 20 + [True])):
        attributes += [(f"a{n}", "1") for n in range(draw(st.integers(60, 70)))]
    tag = f"{prefix}:stream" if prefix and ":" not in prefix else (prefix or "stream")
    declarations = ""
    if prefix:
        declarations += f" xmlns:{prefix}='{escape_attribute(streams_ns)}'" if ":" not in prefix else ""
    else:
        declarations += f" xmlns='{escape_attribute(streams_ns)}'"
    if default_ns is not None and prefix:
        declarations += f" xmlns='{escape_attribute(default_ns)}'"
    seen: set[str] = set()
    text = ""
    for name, value in attributes:
        if name in seen and draw(st.booleans()):
            continue  # duplicate attributes are a parse error; keep some
        seen.add(name)
        quote = draw(st.sampled_from(["'", '"']))
        escaped = escape_attribute(value)
        text += f" {name}={quote}{escaped}{quote}"
    end = draw(st.sampled_from([">", ">", ">", ">", "/>", " >", ""]))
    return f"{decl}<{tag}{declarations}{text}{end}"


def good_header(to: str = "localhost", sender: str | None = None) -> bytes:
    claim = f" from='{escape_attribute(sender)}'" if sender else ""
    return (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}' to='{to}'"
            f"{claim} version='1.0'>").encode()


# -- SASL -----------------------------------------------------------------------------------------

MECHANISMS = ("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256", "OAUTHBEARER")
OTHER_MECHANISMS = ("SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-512", "EXTERNAL", "ANONYMOUS", "DIGEST-MD5",
                    "X-OAUTH2", "plain", "PLAIN ", " PLAIN", "", "scram-sha-1", "PLAIN\u0000")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii") if data else "="


def sasl_element(name: str, text: str | None, mechanism: str | None = None, namespace: str = NS_SASL,
                 extra: str = "") -> bytes:
    """A SASL element; *text* None means no content at all (RFC 6120: no initial response)."""
    attributes = f" xmlns='{escape_attribute(namespace)}'"
    if mechanism is not None:
        attributes += f" mechanism='{escape_attribute(mechanism)}'"
    if text is None:
        return f"<{name}{attributes}{extra}/>".encode()
    return f"<{name}{attributes}{extra}>{escape_text(text)}</{name}>".encode()


@functools.cache
def payload_text(message: st.SearchStrategy[bytes]) -> st.SearchStrategy[str | None]:
    """The element text carrying *message*, or one of the malformed encodings around it."""
    return st.one_of(
        message.map(b64), message.map(b64), message.map(b64),
        st.none(), st.just(""), st.just("="), st.just("=="), st.just("===="),
        message.map(lambda m: b64(m).rstrip("=")),
        message.map(lambda m: " " + b64(m) + "\n"),
        message.map(lambda m: base64.urlsafe_b64encode(m).decode()),
        st.sampled_from(["not base64!", "AGFsaWNl\u00e9", "A", "AB", "ABC=D", "=AAA", "AA==AA==", "\t"]),
        st.builds(lambda n: "A" * n, st.integers(21_000, 30_000)),
        xml_text(20),
    )


def plain_message(names: list[str], secrets: list[str]) -> st.SearchStrategy[bytes]:
    """``authzid NUL authcid NUL password`` with right and wrong parts and wrong numbers of NULs."""
    part = st.one_of(st.sampled_from(names + secrets).map(str.encode), st.just(b""), st.binary(max_size=12),
                     st.sampled_from(INVALID_UTF8), xml_text(12).map(str.encode))
    well_formed = st.tuples(st.one_of(st.just(b""), part), part, part).map(b"\0".join)
    return st.one_of(well_formed, well_formed, st.lists(part, max_size=6).map(b"\0".join))


@dataclass(frozen=True)
class FieldEdit:
    """One change to a comma-separated SASL message: which field, and what happens to it."""

    kind: str  # "none", "replace", "delete", "duplicate", "swap", "letter", "empty", "insert", "append"
    index: int = 0
    text: str = ""

    def apply(self, fields: list[str]) -> list[str]:
        fields = list(fields)
        if self.kind == "none" or not fields:
            return fields
        at = self.index % len(fields)
        if self.kind == "replace":
            fields[at] = self.text
        elif self.kind == "delete":
            del fields[at]
        elif self.kind == "duplicate":
            fields.insert(at, fields[at])
        elif self.kind == "swap":
            other = (at + 1) % len(fields)
            fields[at], fields[other] = fields[other], fields[at]
        elif self.kind == "letter":
            fields[at] = (self.text[:1] or "x") + fields[at][1:]
        elif self.kind == "empty":
            fields[at] = fields[at][:2] if len(fields[at]) > 1 and fields[at][1] == "=" else ""
        elif self.kind == "insert":
            fields.insert(at, self.text)
        elif self.kind == "append":
            fields[at] += self.text
        return fields


SCRAM_TEXT = st.one_of(st.sampled_from(["=", "==", "=2C", "=3D", "=2c", "=41", ",", "m=x", "n=", "r=", "x=y",
                                        "\u00a0", "\u200b", "\u0340", "\U000e0001", "\u05d0a", "p=tls-unique",
                                        "y", "n", "a=", "v=abc"]),
                       xml_text(8), st.text(max_size=6))


@functools.cache
def field_edit() -> st.SearchStrategy[FieldEdit]:
    return st.builds(FieldEdit, st.sampled_from(["none", "none", "replace", "delete", "duplicate", "swap", "letter",
                                                 "empty", "insert", "append"]),
                     st.integers(0, 7), SCRAM_TEXT)


@dataclass(frozen=True)
class ScramFirst:
    """A client-first-message as fields, and the edit made to it."""

    gs2_flag: str
    authzid: str
    username: str
    nonce: str
    extensions: tuple[str, ...] = ()
    edit: FieldEdit = field(default_factory=lambda: FieldEdit("none"))

    @property
    def gs2_header(self) -> str:
        return f"{self.gs2_flag},{self.authzid},"

    def fields(self) -> list[str]:
        return [self.gs2_flag, self.authzid, f"n={self.username}", f"r={self.nonce}", *self.extensions]

    def message(self) -> bytes:
        return ",".join(self.edit.apply(self.fields())).encode()

    @property
    def untouched(self) -> bool:
        return self.edit.kind == "none" and not self.extensions


def scram_name(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


NONCE = st.from_regex(r"[!-+\--~]{1,40}", fullmatch=True)


@st.composite
def scram_first(draw: st.DrawFn, usernames: list[str]) -> ScramFirst:
    """A valid-looking client-first-message for one of *usernames*, often with one field changed."""
    username = scram_name(draw(st.sampled_from(usernames)))
    first = ScramFirst("n", "", username, draw(NONCE))
    change = draw(st.sampled_from(["none", "none", "none", "flag", "authzid", "username", "nonce", "extension",
                                   "edit"]))
    if change == "flag":
        return replace(first, gs2_flag=draw(st.sampled_from(["y", "p=tls-unique", "", "x", "N", "n "])))
    if change == "authzid":
        return replace(first, authzid=draw(st.one_of(st.sampled_from(usernames).map(
            lambda u: "a=" + scram_name(u)), st.sampled_from(["a=", "a=x=y", "b=alice", "a=alice@localhost"]))))
    if change == "username":
        return replace(first, username=draw(st.one_of(SCRAM_TEXT, st.just(username.upper()),
                                                       st.just(username + "=2C"))))
    if change == "nonce":
        return replace(first, nonce=draw(st.sampled_from(["", "a,b", "\u00e9", "x" * 5000, " "])))
    if change == "extension":
        return replace(first, extensions=tuple(draw(st.lists(st.sampled_from(["m=ext", "x=1", "e=", "zz"]),
                                                             min_size=1, max_size=2))))
    if change == "edit":
        return replace(first, edit=draw(field_edit()))
    return first


@dataclass(frozen=True)
class ScramFinal:
    """How to answer the server-first-message: the password used and at most one change afterwards."""

    right_password: bool = True
    edit: FieldEdit = field(default_factory=lambda: FieldEdit("none"))
    proof_edit: str = "none"  # "none", "flip", "truncate", "extend", "not-base64", "empty", "pad"
    flip_at: int = 0
    channel_binding: str | None = None  # None: the right c=; otherwise this header is encoded instead


@st.composite
def scram_final(draw: st.DrawFn) -> ScramFinal:
    change = draw(st.sampled_from(["none", "none", "none", "password", "proof", "binding", "edit"]))
    if change == "password":
        return ScramFinal(right_password=False)
    if change == "proof":
        return ScramFinal(proof_edit=draw(st.sampled_from(["flip", "truncate", "extend", "not-base64", "empty",
                                                           "pad"])), flip_at=draw(st.integers(0, 255)))
    if change == "binding":
        return ScramFinal(channel_binding=draw(st.sampled_from(["y,,", "n,a=x,", "p=tls-unique,,", "", "n,,x"])))
    if change == "edit":
        return ScramFinal(edit=draw(field_edit()))
    return ScramFinal()


def oauthbearer_message(tokens: list[str]) -> st.SearchStrategy[bytes]:
    """RFC 7628 initial client responses: gs2 headers and key/value pairs, right and wrong."""
    gs2 = st.one_of(st.just("n,,"), st.just("n,,"), st.sampled_from(
        ["y,,", "p=tls-unique,,", "n,a=alice@localhost,", "n,a=,", "n,x,", "n,,x", "", "n", "n,", ",,", "n,,,",
         "N,,", "n,a=User-42@idp,"]), xml_text(6))
    token = st.one_of(st.sampled_from(tokens), st.sampled_from(tokens), st.sampled_from(tokens).flatmap(
        lambda t: mutated(t.encode(), 2).map(lambda b: b.decode("utf-8", "replace"))),
        st.just(""), xml_text(30), st.builds(lambda n: "e" * n, st.integers(5000, 20_000)))
    pair = st.one_of(
        token.map(lambda t: f"auth=Bearer {t}"), token.map(lambda t: f"auth=Bearer {t}"),
        token.map(lambda t: f"auth=bearer {t}"), token.map(lambda t: f"auth=Bearer  {t} "),
        st.sampled_from(["auth=Bearer", "auth=", "auth=Basic Zm9vOmJhcg==", "host=localhost", "port=5222", "=",
                         "x", "auth", "\x02", "auth=Bearer \x01"]),
        xml_text(10))
    end = st.sampled_from(["\x01\x01", "\x01\x01", "\x01\x01", "\x01", "", "\x01\x01\x01", "\x01\x00"])
    return st.builds(lambda header, pairs, tail: (header + "\x01" + "\x01".join(pairs) + tail).encode(
        "utf-8", "surrogatepass"), gs2, st.lists(pair, min_size=0, max_size=4), end)


# -- stanzas --------------------------------------------------------------------------------------

ADDRESSES = ("localhost", "example.org", "alice@localhost", "alice@localhost/fuzz", "bob@localhost",
             "bob@localhost/honest", "nobody@localhost", "x@elsewhere.example", "elsewhere.example", "", "@", "a@",
             "@localhost", "localhost/", "localhost/res", "ALICE@LOCALHOST", "alice\\40demo@localhost",
             "a" * 1100 + "@localhost", "alice@" + "l" * 300, "\u00e9@localhost", "\u0130@localhost", "a b@localhost",
             "user@[::1]", "user@127.0.0.1", "bob@localhost/" + "r" * 1100, "x@y@localhost", "/r", "localhost@x",
             "bob@example.org", "\ufb00@localhost", "bob@LOCALHOST/Honest", "a..b", "bob@.localhost", "\u200b")
TYPES = ("get", "set", "result", "error", "chat", "normal", "groupchat", "headline", "subscribe", "subscribed",
         "unsubscribe", "unsubscribed", "probe", "unavailable", "invisible", "", "GET")
CHILD_NAMES = ("query", "item", "body", "subject", "thread", "priority", "show", "status", "x", "error", "ping",
               "bind", "resource", "session", "group", "delay", "feature", "identity", "enable", "r", "a", "jid")


@dataclass
class Node:
    """An element to serialise: its namespace (None: inherit), attributes and children (text or nodes)."""

    name: str
    namespace: str | None = None
    attributes: list[tuple[str, str]] = field(default_factory=list)
    children: list[Node | str] = field(default_factory=list)
    prefixed: bool = False  # declare the namespace with a prefix instead of as the default

    def xml(self) -> str:
        name = self.name
        declaration = ""
        if self.namespace is not None:
            if self.prefixed:
                name = f"p:{self.name}"
                declaration = f" xmlns:p='{escape_attribute(self.namespace)}'"
            else:
                declaration = f" xmlns='{escape_attribute(self.namespace)}'"
        seen: set[str] = set()
        attributes = ""
        for key, value in self.attributes:
            if key not in seen and key not in ("xmlns", "xmlns:p"):
                seen.add(key)
                attributes += f" {key}='{escape_attribute(value)}'"
        if not self.children:
            return f"<{name}{declaration}{attributes}/>"
        inner = "".join(escape_text(child) if isinstance(child, str) else child.xml() for child in self.children)
        return f"<{name}{declaration}{attributes}>{inner}</{name}>"


@functools.cache
def attributes(huge: bool) -> st.SearchStrategy[list[tuple[str, str]]]:
    key = st.one_of(st.sampled_from(["to", "from", "type", "id", "xml:lang", "jid", "node", "var", "h", "previd",
                                     "resume", "subscription", "ask", "name", "stamp"]), NAME)
    return st.lists(st.tuples(key, weird_value(huge)), max_size=4)


@functools.cache
def node_tree(depth: int) -> st.SearchStrategy[Node]:
    namespace = st.one_of(st.none(), st.none(), st.sampled_from(KNOWN_NAMESPACES), st.sampled_from(UNKNOWN_NAMESPACES))
    leaf = st.builds(Node, st.one_of(st.sampled_from(CHILD_NAMES), NAME), namespace, attributes(False),
                     st.lists(weird_value(huge=False), max_size=1), st.booleans())
    if depth <= 0:
        return leaf
    inner = node_tree(depth - 1)
    return st.one_of(leaf, st.builds(Node, st.one_of(st.sampled_from(CHILD_NAMES), NAME), namespace,
                                     attributes(False), st.lists(st.one_of(inner, weird_value(huge=False)),
                                                                 max_size=3), st.booleans()))


@functools.cache
def deep_chain() -> st.SearchStrategy[Node]:
    """Nesting around the parser's depth limit."""

    def chain(depth: int) -> Node:
        node = Node("x", children=["deep"])
        for _ in range(depth):
            node = Node("x", children=[node])
        return node

    return st.integers(40, 60).map(chain)


@functools.cache
def known_payload() -> st.SearchStrategy[Node]:
    """Children the server handles, with their content varied."""
    item = st.builds(lambda jid, sub, name, groups: Node("item", None, [(k, v) for k, v in (
        ("jid", jid), ("subscription", sub), ("name", name)) if v is not None], [Node("group", children=[g])
                                                                               for g in groups]),
                     st.one_of(st.sampled_from(ADDRESSES), xml_text(10)),
                     st.one_of(st.none(), st.sampled_from(["remove", "none", "both", "from", "bogus"])),
                     st.one_of(st.none(), weird_value()), st.lists(weird_value(huge=False), max_size=3))
    return st.one_of(
        st.builds(lambda items: Node("query", NS_ROSTER, children=items), st.lists(item, max_size=3)),
        st.builds(lambda node: Node("query", NS_DISCO_INFO, [("node", node)] if node else []),
                  st.one_of(st.none(), weird_value())),
        st.just(Node("query", NS_DISCO_ITEMS)), st.just(Node("ping", NS_PING)), st.just(Node("query", NS_VERSION)),
        st.just(Node("session", NS_SESSION)),
        st.builds(lambda r: Node("bind", NS_BIND, children=[Node("resource", children=[r])]), weird_value()),
        st.builds(lambda name, ns: Node(name, ns), st.one_of(st.sampled_from(CHILD_NAMES), NAME),
                  st.sampled_from(KNOWN_NAMESPACES)),
        st.builds(lambda n: Node("priority", children=[n]), st.one_of(st.integers(-300, 300).map(str), weird_value())),
        st.builds(lambda b: Node("body", children=[b]), weird_value()),
    )


@st.composite
def stanza(draw: st.DrawFn) -> Node:
    """A top-level element after binding: mostly message/presence/iq, with odd addressing and junk children."""
    kind = draw(st.sampled_from(["message", "presence", "iq"] * 6 + ["sm", "other"]))
    namespace: str | None = None
    if kind == "sm":
        name = draw(st.sampled_from(["enable", "r", "a", "resume", "enabled", "failed"]))
        namespace = NS_SM
    elif kind == "other":
        name = draw(st.one_of(st.sampled_from(["auth", "starttls", "features", "error", "stream", "x", "bind"]), NAME))
        namespace = draw(st.one_of(st.none(), st.sampled_from(KNOWN_NAMESPACES), st.sampled_from(UNKNOWN_NAMESPACES)))
    else:
        name = kind
        namespace = draw(st.sampled_from([None] * 30 + ["jabber:server", "urn:example:unknown", NS_STREAMS, ""]))
    pairs: list[tuple[str, str]] = []
    for key, values in (("to", ADDRESSES), ("from", ADDRESSES), ("type", TYPES)):
        value = draw(st.one_of(st.none(), st.sampled_from(values), st.sampled_from(values), weird_value()))
        if value is not None:
            pairs.append((key, value))
    identifier = draw(st.one_of(st.none(), st.sampled_from(["1", "x", ""]), weird_value()))
    if identifier is not None:
        pairs.append(("id", identifier))
    if kind == "sm":
        pairs += draw(st.lists(st.tuples(st.sampled_from(["h", "previd", "resume", "max"]), st.one_of(
            st.integers(-2, 2**33).map(str), st.sampled_from(["true", "1", "", "x"]), weird_value(False))),
            max_size=3))
    pairs += draw(attributes(True))
    children = draw(st.lists(st.one_of(*[known_payload()] * 6, *[node_tree(2)] * 3, *[weird_value(huge=False)] * 2,
                                       deep_chain()), max_size=3))
    return Node(name, namespace, pairs, children, draw(st.sampled_from([False] * 15 + [True])))


# -- hostile XML: DTDs, entities, and text in many pieces ------------------------------------------

NS_COMPONENT = "jabber:component:accept"


@st.composite
def doctype(draw: st.DrawFn) -> str:
    """A document type declaration: billion laughs, one large entity used many times, external and
    parameter entities, an empty one. RFC 6120 11.1 forbids them all."""
    kind = draw(st.sampled_from(["laughs", "quadratic", "external", "parameter", "empty", "notation"]))
    root = draw(st.sampled_from(["stream:stream", "stream", "x", "handshake"]))
    if kind == "laughs":
        levels, width = draw(st.integers(2, 9)), draw(st.integers(2, 10))
        entities = "<!ENTITY l0 'lol'>" + "".join(f"<!ENTITY l{n} '{f'&l{n - 1};' * width}'>"
                                                    for n in range(1, levels))
        return f"<!DOCTYPE {root} [{entities}]>"
    if kind == "quadratic":
        return f"<!DOCTYPE {root} [<!ENTITY a '{'a' * draw(st.integers(1, 50_000))}'>]>"
    if kind == "external":
        target = draw(st.sampled_from(["file:///etc/passwd", "http://127.0.0.1:1/x", "/dev/zero", "x"]))
        return f"<!DOCTYPE {root} [<!ENTITY a SYSTEM '{target}'>]>"
    if kind == "parameter":
        return f"<!DOCTYPE {root} [<!ENTITY % p '<!ENTITY a \"x\">'> %p;]>"
    if kind == "notation":
        return f"<!DOCTYPE {root} [<!NOTATION n SYSTEM 'x'><!ENTITY u SYSTEM 'y' NDATA n>]>"
    return f"<!DOCTYPE {root}>"


ENTITY_USES = ("&a;", "&l1;", "&l8;", "&u;", "&p;", "&amp;", "&lt;", "&#65;", "&#x10FFFF;", "&#0;", "&undeclared;")


@st.composite
def hostile_xml(draw: st.DrawFn) -> bytes:
    """What a hostile peer sends inside a stream: a DTD, comments, processing instructions, entity
    references (declared, predefined, undeclared), long text made of many references, deep nesting."""
    kind = draw(st.sampled_from(["doctype", "comment", "pi", "entities", "many-references", "cdata", "deep", "huge"]))
    if kind == "doctype":
        return draw(doctype()).encode()
    if kind == "comment":
        return b"<!--" + draw(xml_text()).replace("--", "-").encode() + b"-->"
    if kind == "pi":
        return b"<?" + draw(st.sampled_from([b"php", b"xml-stylesheet", b"x"])) + b" data?>"
    if kind == "entities":
        return ("<handshake>" + "".join(draw(st.lists(st.sampled_from(ENTITY_USES), min_size=1, max_size=5)))
                + "</handshake>").encode()
    if kind == "many-references":
        return b"<message from='echo.localhost' to='echo.localhost'><body>" + b"&amp;" * draw(
            st.integers(1, 20_000)) + b"</body></message>"
    if kind == "cdata":
        return b"<handshake><![CDATA[" + draw(xml_text()).replace("]]>", "").encode() + b"]]></handshake>"
    if kind == "deep":
        depth = draw(st.integers(40, 60))
        return b"<x>" * depth + b"</x>" * depth
    return b"<handshake>" + draw(huge_text()).encode() + b"</handshake>"
