"""SASLprep (RFC 4013), the stringprep profile SCRAM and PLAIN apply to names and passwords."""

from __future__ import annotations

import stringprep
import unicodedata

__all__ = ["SASLprepError", "saslprep"]

# RFC 4013 section 2.3, with the non-ASCII spaces of C.1.2 checked too: NFKC
# can turn a character into one of them after the mapping step has run.
_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


class SASLprepError(ValueError):
    """The string is not allowed by SASLprep; the message says why."""


def saslprep(text: str, *, allow_unassigned: bool = False) -> str:
    """Prepare *text* per RFC 4013.

    ``allow_unassigned`` picks the RFC 3454 section 7 "query" semantics, as for a
    user name a client sends; the default is the "stored string" semantics, as
    for a password being set.
    """
    # Printable ASCII is never mapped, normalised or prohibited.
    if text.isascii() and text.isprintable():
        return text

    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c))
    # The stringprep tables are Unicode 3.2, so normalise with that version too:
    # a newer NFKC could differ for characters that 3.2 did not yet know.
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)

    for c in prepared:
        if any(table(c) for table in _PROHIBITED):
            raise SASLprepError(f"prohibited character U+{ord(c):04X}")
        if not allow_unassigned and stringprep.in_table_a1(c):
            raise SASLprepError(f"unassigned code point U+{ord(c):04X}")

    # RFC 3454 section 6: right-to-left text must be wholly so, and start and
    # end with a right-to-left character, so that it cannot display ambiguously.
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared):
            raise SASLprepError("mixes right-to-left and left-to-right characters")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise SASLprepError("right-to-left text must start and end with a right-to-left character")

    return prepared
