"""Name comparison as the register's users write names: accents, case, hyphens, apostrophes and spacing
do not matter; given names compare as a set; a purpose may allow close spellings (Jaro-Winkler)."""

from __future__ import annotations

import unicodedata

from rapidfuzz.distance import JaroWinkler

# Apostrophes and their look-alikes (written as escapes: several are invisible twins of each other).
_APOSTROPHES = dict.fromkeys(map(ord, "'\u2019\u02bc\u2018`\u00b4\u02b9"), None)
_SEPARATORS = dict.fromkeys(map(ord, "-\u2010\u2011\u2012\u2013\u2014_.,/"), " ")


# ASCII needs none of the Unicode work: one byte table folds case and reads separators as spaces, and
# control characters and apostrophes go (the same rules as below, restricted to ASCII).
_ASCII_DROPPED = bytes([*range(32), 127]) + bytes(c for c in _APOSTROPHES if c < 128)
_ASCII_TABLE = bytes(32 if c in _SEPARATORS else c + 32 if 65 <= c <= 90 else c for c in range(256))


def normalise(text: str) -> str:
    """NFKD, combining marks and invisible format characters dropped, case folded, hyphens read as
    spaces, apostrophes dropped, spaces folded. Idempotent."""
    if text.isascii():  # most claims: the same result without decomposing, at byte speed
        return " ".join(text.encode().translate(_ASCII_TABLE, _ASCII_DROPPED).decode().split())
    return normalise_unicode(text)


_DROPPED_CATEGORIES = frozenset({"Mn", "Me", "Cf", "Cc"})  # combining marks, invisible format, control
_CACHED_BELOW = 0x3000  # Latin, Arabic, N'Ko, Tifinagh, combining marks: what names here are written in


class _Dropping(dict[int, int | None]):
    """A `str.translate` table that drops the characters of `_DROPPED_CATEGORIES` and keeps the rest,
    each code point's category looked up once. Kept only below `_CACHED_BELOW`, so no text can grow it
    past a few thousand entries."""

    def __missing__(self, code: int) -> int | None:
        kept = None if unicodedata.category(chr(code)) in _DROPPED_CATEGORIES else code
        if code < _CACHED_BELOW:
            self[code] = kept
        return kept


_DROPPING = _Dropping()


def normalise_unicode(text: str) -> str:
    """`normalise` for any text; the reference its ASCII shortcut is tested against."""
    kept = unicodedata.normalize("NFKD", text).translate(_DROPPING)
    folded = kept.casefold().translate(_APOSTROPHES).translate(_SEPARATORS)
    return " ".join(unicodedata.normalize("NFKD", folded).split())


def given_names_key(text: str) -> tuple[str, ...]:
    """Given names as an order-free multiset."""
    return tuple(sorted(normalise(text).split()))


def same_name(claim: str, record: str, threshold: float | None = None) -> bool:
    a, b = normalise(claim), normalise(record)
    if a == b:
        return True
    return threshold is not None and bool(a) and JaroWinkler.similarity(a, b) >= threshold


def same_given_names(claim: str, record: str, threshold: float | None = None) -> bool:
    a, b = given_names_key(claim), given_names_key(record)
    if a == b:
        return True
    if threshold is None or len(a) != len(b) or not a:
        return False
    return all(JaroWinkler.similarity(x, y) >= threshold for x, y in zip(a, b, strict=True))
