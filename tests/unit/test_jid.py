"""JID parsing: the ASCII fast path agrees with Twisted's stringprep wherever it applies."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.words.protocols.jabber.jid import JID

from sns_xmpp.jid import _simple, parse_jid

ASCII_JIDS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40) | st.builds(
    lambda node, host, resource: f"{node}@{host}/{resource}",
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=8),
    st.from_regex(r"[A-Za-z0-9.\-_]{1,12}", fullmatch=True),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=8))


@given(ASCII_JIDS)
@example("Alice@LocalHost/Phone")
@example("a\\40b@x.org")
@example("a@-x.org")
@example("A@1.2.3.4/ x")
def test_fast_path_agrees_with_stringprep(text: str) -> None:
    fast = _simple(text)
    if fast is None:
        return
    prepared = JID(text)
    assert (fast.user, fast.host, fast.resource) == (prepared.user, prepared.host, prepared.resource)
    assert parse_jid(text) == prepared


def test_fast_path_covers_the_usual_forms() -> None:
    for text in ("bench17@localhost/r3f9a0b1c2d4e", "acct\\40demo@localhost", "localhost", "a-b.example.org"):
        assert _simple(text) is not None, text
