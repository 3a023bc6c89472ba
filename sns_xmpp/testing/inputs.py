"""The strings the contract suite attacks a site with: one-character changes and malformed input."""

from __future__ import annotations

from collections.abc import Iterator

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
HUGE = 100_000
GARBAGE = "\x00\x01\x7f\u0085\u00e9\u202e\ufffd\U0001f600"


def positions(text: str, limit: int) -> list[int]:
    """Every position of *text*, or a sample of about *limit*: both ends, every separator and the characters
    on either side of it (the ends of base64 segments), and evenly spread between."""
    if len(text) <= limit:
        return list(range(len(text)))
    ends = max(1, min(8, limit // 4))
    chosen = set(range(ends)) | set(range(len(text) - ends, len(text)))
    separators = [i for i, char in enumerate(text) if char not in B64URL][:limit]
    chosen |= {near for i in separators for near in (i - 1, i, i + 1) if 0 <= near < len(text)}
    spread = max(limit - 2 * ends, 1)
    chosen |= {round(k * (len(text) - 1) / spread) for k in range(spread + 1)}
    return sorted(i for i in chosen if 0 <= i < len(text))


def replacements(char: str) -> list[str]:
    """A near and a far substitute: for base64url, the value with its lowest bit flipped (the change a
    lenient decoder ignores in a last character) and with a high bit flipped."""
    index = B64URL.find(char)
    if index >= 0:
        found = [B64URL[index ^ 1], B64URL[index ^ 32]]
    else:
        near = chr(ord(char) ^ 1)
        found = [near if near.isprintable() else "A", "A" if char != "A" else "B"]
    return [r for r in dict.fromkeys(found) if r != char]


def tampered(text: str, limit: int, ignore_case: bool = False) -> Iterator[tuple[str, str]]:
    """(description, text with one character changed) for a sample of positions."""
    for position in positions(text, limit):
        original = text[position]
        for replacement in replacements(original):
            if ignore_case and replacement.casefold() == original.casefold():
                continue
            changed = text[:position] + replacement + text[position + 1:]
            yield f"character {position + 1} of {len(text)} changed from {original!r} to {replacement!r}", changed


def _wrong_separators(text: str) -> Iterator[tuple[str, str]]:
    separators = [c for c in dict.fromkeys(text) if not c.isalnum()][:3]
    for separator in separators:
        for other in ".,;:|/+-_~ ":
            if other != separator:
                yield f"{separator!r} replaced by {other!r}", text.replace(separator, other)
                break
    if separators:
        yield f"{separators[0]!r} doubled", text.replace(separators[0], separators[0] * 2, 1)


def _other_script_digit(text: str) -> Iterator[tuple[str, str]]:
    for i, char in enumerate(text):
        if char in "0123456789":
            yield "a digit written in Arabic-Indic script", text[:i] + chr(0x660 + int(char)) + text[i + 1:]
            return


def malformed_tokens(token: str) -> list[tuple[str, str]]:
    found = [
        ("an empty token", ""),
        ("a one-character token", "x"),
        ("a huge token", "A" * HUGE),
        ("the token repeated to a huge length", (token * (HUGE // max(len(token), 1) + 1))[:HUGE]),
        ("garbage characters", GARBAGE),
        ("the token with garbage in the middle", token[:len(token) // 2] + GARBAGE + token[len(token) // 2:]),
        ("the token with a leading space", " " + token),
        ("the token with a trailing newline", token + "\n"),
        ("the token with a trailing NUL", token + "\x00"),
        ("the token cut short by one character", token[:-1]),
        ("the token with its last character doubled", token + token[-1:]),
    ]
    found += [(f"the token with {what}", text) for what, text in _wrong_separators(token)]
    found += [(f"the token with {what}", text) for what, text in _other_script_digit(token)]
    return [(what, text) for what, text in found if text != token]


def malformed_identifiers(identifier: str) -> list[tuple[str, str]]:
    found = [
        ("an empty identifier", ""),
        ("a huge identifier", "a" * HUGE),
        ("garbage characters", GARBAGE),
        ("the identifier with a leading space", " " + identifier),
        ("the identifier with a trailing newline", identifier + "\n"),
        ("the identifier with a trailing NUL", identifier + "\x00"),
        ("a lone '@'", "@"),
        ("the identifier behind '../'", "../" + identifier),
    ]
    found += [(f"the identifier with {what}", text) for what, text in _wrong_separators(identifier)]
    found += [(f"the identifier with {what}", text) for what, text in _other_script_digit(identifier)]
    return [(what, text) for what, text in found if text != identifier]
